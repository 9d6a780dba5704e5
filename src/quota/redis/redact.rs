//! Redis URLs fit for a log line: users and passwords hidden, in each seed of a Cluster list.

/// A Redis URL fit for a log line: any user and password replaced by `***`, in each URL of a
/// comma-separated list of Cluster seeds. A piece that is not a plausible `host:port` (what is
/// left of a password holding a comma) is hidden whole.
pub fn redact_url(url: &str) -> String {
    url.split(',')
        .enumerate()
        .map(|(i, u)| match (i, u.trim()) {
            // A bare `host:port` seed after the first URL (it borrows the first's password).
            (1.., bare) if !bare.contains("://") => redact_authority(bare),
            (_, one) => match one.split_once("://") {
                Some((scheme, rest)) => {
                    let end = rest.find('/').unwrap_or(rest.len());
                    format!(
                        "{scheme}://{}{}",
                        redact_authority(&rest[..end]),
                        &rest[end..]
                    )
                }
                None => "(not a URL)".into(),
            },
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// `user:password@host:port` as `***@host:port`; anything but a plausible host and port as `***`.
fn redact_authority(a: &str) -> String {
    if a.is_empty() {
        return String::new();
    }
    let (hidden, host) = match a.rfind('@') {
        Some(at) => ("***@", &a[at + 1..]),
        None => ("", a),
    };
    let port_ok = |p: &str| p.is_empty() || p.chars().all(|c| c.is_ascii_digit());
    let plausible = match host.strip_prefix('[') {
        Some(v6) => v6.split_once(']').is_some_and(|(addr, rest)| {
            addr.chars()
                .all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.')
                && (rest.is_empty() || rest.strip_prefix(':').is_some_and(port_ok))
        }),
        None => {
            let (name, port) = host.split_once(':').unwrap_or((host, ""));
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || ".-_".contains(c))
                && port_ok(port)
        }
    };
    if plausible {
        format!("{hidden}{host}")
    } else {
        "***".into()
    }
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn urls_are_logged_without_user_or_password() {
        assert_eq!(
            redact_url("redis://ops:hunter2@10.0.0.1:6379/0"),
            "redis://***@10.0.0.1:6379/0"
        );
        assert_eq!(
            redact_url("rediss://:p@ss@host:6380"),
            "rediss://***@host:6380"
        );
        assert_eq!(redact_url("redis://host:6379"), "redis://host:6379");
        assert_eq!(redact_url("host:6379"), "(not a URL)");
    }

    #[test]
    fn every_seed_of_a_cluster_list_is_logged_without_its_password() {
        assert_eq!(
            redact_url("redis://:pw1@a:7000,redis://u:pw2@b:7001,c:7002,:pw3@d:7003"),
            "redis://***@a:7000,redis://***@b:7001,c:7002,***@d:7003"
        );
        // A comma inside a password splits it: neither half is shown.
        let shown = redact_url("redis://:pass,word@10.0.0.1:6379/0");
        assert!(
            !shown.contains("pass") && !shown.contains("word"),
            "{shown}"
        );
        assert_eq!(redact_url("redis://[::1]:6379"), "redis://[::1]:6379");
    }
}
