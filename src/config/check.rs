//! What every config section shares: the error that names the setting at fault, and the checks
//! for durations, URLs and names.

use std::time::Duration;

/// A setting that stops start-up: which one, and what is wrong with it.
#[derive(Debug, thiserror::Error)]
#[error("invalid setting `{setting}`: {problem}")]
pub struct ConfigError {
    pub setting: String,
    pub problem: String,
}

/// A [`ConfigError`] for `setting`.
pub fn bad(setting: impl Into<String>, problem: impl Into<String>) -> ConfigError {
    ConfigError {
        setting: setting.into(),
        problem: problem.into(),
    }
}

/// A positive number of seconds, below about 116 days.
pub fn secs(name: &str, v: f64) -> Result<Duration, ConfigError> {
    if v.is_finite() && v > 0.0 && v < 1.0e7 {
        Ok(Duration::from_secs_f64(v))
    } else {
        Err(bad(
            name,
            format!("expected a positive number of seconds, got {v}"),
        ))
    }
}

/// A share of a whole: above 0, at most 1.
pub fn fraction(name: &str, v: f64) -> Result<f64, ConfigError> {
    if v > 0.0 && v <= 1.0 {
        Ok(v)
    } else {
        Err(bad(
            name,
            format!("expected a fraction above 0 and at most 1, got {v}"),
        ))
    }
}

/// Like [`secs`], with 0 allowed (meaning "never").
pub fn secs_or_zero(name: &str, v: f64) -> Result<Duration, ConfigError> {
    if v == 0.0 {
        Ok(Duration::ZERO)
    } else {
        secs(name, v)
    }
}

/// Names that end up in store keys (projects, models, namespaces): a safe alphabet.
pub fn check_name(setting: &str, name: &str) -> Result<(), ConfigError> {
    if name.is_empty()
        || name.len() > 128
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(bad(
            setting,
            format!("{name:?} must be 1-128 characters of letters, digits, '-', '_' or '.'"),
        ));
    }
    Ok(())
}

/// An absolute http(s) URL without credentials or query, parsed once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseUrl {
    pub scheme: http::uri::Scheme,
    pub authority: http::uri::Authority,
    /// The path, without a trailing `/` (empty for the root).
    pub path: String,
    /// The URL as written (trailing `/` removed).
    pub text: String,
}

impl BaseUrl {
    /// Parse an http(s) base URL for `setting`; credentials (`user:password@`) are refused
    /// without echoing them.
    pub fn parse(setting: &str, url: &str) -> Result<BaseUrl, ConfigError> {
        base_url(setting, url)
    }
}

fn base_url(name: &str, url: &str) -> Result<BaseUrl, ConfigError> {
    let url = url.trim().trim_end_matches('/');
    if url
        .split_once("://")
        .is_some_and(|(_, rest)| rest.split('/').next().unwrap_or("").contains('@'))
    {
        // Not echoed: the part before @ is a credential.
        return Err(bad(
            name,
            "credentials in the URL (user:password@host) are not supported; the upstream \
             client would not send them",
        ));
    }
    let invalid = || {
        bad(
            name,
            format!(
                "expected an http(s) URL such as https://generativelanguage.googleapis.com, got {url:?}"
            ),
        )
    };
    let uri: http::Uri = url.parse().map_err(|_| invalid())?;
    match (uri.scheme(), uri.authority()) {
        (Some(scheme), Some(authority))
            if matches!(uri.scheme_str(), Some("http") | Some("https"))
                && uri.host().is_some_and(|h| !h.is_empty())
                && uri.query().is_none() =>
        {
            Ok(BaseUrl {
                scheme: scheme.clone(),
                authority: authority.clone(),
                path: uri.path().trim_end_matches('/').to_string(),
                text: url.to_string(),
            })
        }
        _ => Err(invalid()),
    }
}

/// A variable's value, trimmed; `None` when unset or empty.
pub fn env_value<'a>(
    env: &'a std::collections::HashMap<String, String>,
    name: &str,
) -> Option<&'a str> {
    env.get(name).map(|s| s.trim()).filter(|s| !s.is_empty())
}

/// The entries of a comma list, trimmed, empty ones dropped.
pub fn comma_list(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').map(str::trim).filter(|s| !s.is_empty())
}

/// A PEM file of extra trust roots (the upstream's, Redis'): every certificate in it must be one rustls can
/// anchor trust on; an empty path means none.
pub fn load_ca_file(
    name: &str,
    path: &str,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, ConfigError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let path = path.trim();
    if path.is_empty() {
        return Ok(Vec::new());
    }
    let pem = std::fs::read(path).map_err(|e| bad(name, format!("cannot read {path:?}: {e}")))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(name, format!("{path:?} is not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(bad(
            name,
            format!("{path:?} holds no PEM certificate (-----BEGIN CERTIFICATE-----)"),
        ));
    }
    let mut roots = rustls::RootCertStore::empty();
    for (i, cert) in certs.iter().enumerate() {
        roots.add(cert.clone()).map_err(|e| {
            bad(
                name,
                format!(
                    "certificate {} in {path:?} cannot be a trust root: {e}",
                    i + 1
                ),
            )
        })?;
    }
    Ok(certs)
}
