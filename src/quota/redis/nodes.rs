//! Redis addresses: the seed list in `store.redis_url`, the nodes a Cluster names in its
//! `CLUSTER SLOTS` answer, and the clients (one node or a Cluster, with TLS roots and a client
//! certificate) built for them. No connection state: [`super::conn`] keeps that.

use std::time::Duration;

use redis::cluster::ClusterClientBuilder;
use redis::{RedisError, Value};

use super::super::{RedisTls, StoreError};
use crate::secret::Secret;

/// The seed URLs of `url`: a comma-separated list, each a full `redis://`/`rediss://` URL or a
/// bare `host:port` that takes the first URL's scheme, user and password. A comma inside a
/// password is not a list: a piece after it holds the rest of the user info (`…@host`), which
/// neither a URL nor a bare `host:port` does, so such a value is one URL.
pub fn seed_urls(url: &str) -> Vec<String> {
    let pieces: Vec<&str> = url
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    let Some((first, rest)) = pieces.split_first() else {
        return Vec::new();
    };
    let seed = |p: &&str| p.contains("://") || !(p.contains('@') || p.contains('/'));
    if !rest.iter().all(seed) {
        return vec![url.trim().to_string()];
    }
    let parts = rest.iter().copied();
    let mut out = vec![first.to_string()];
    for p in parts {
        if p.contains("://") {
            out.push(p.to_string());
        } else {
            out.push(like(first, p));
        }
    }
    out
}

/// `host:port` as a URL with `first`'s scheme, user and password.
pub(super) fn like(first: &str, host_port: &str) -> String {
    let (scheme, rest) = first.split_once("://").unwrap_or(("redis", first));
    let authority = &rest[..rest.find('/').unwrap_or(rest.len())];
    let userinfo = authority.rfind('@').map_or("", |at| &authority[..=at]);
    format!("{scheme}://{userinfo}{host_port}")
}

/// `host:port` of every node in a `CLUSTER SLOTS` answer (each range: start, end, then its
/// nodes, each `[host, port, id, ...]`), once each.
pub(super) fn slot_nodes(v: &Value) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let Value::Array(ranges) = v else {
        return out;
    };
    for r in ranges {
        let Value::Array(parts) = r else { continue };
        for node in parts.iter().skip(2) {
            let Value::Array(f) = node else { continue };
            let host = match f.first() {
                Some(Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
                Some(Value::SimpleString(s)) => s.clone(),
                _ => continue,
            };
            let Some(Value::Int(port)) = f.get(1) else {
                continue;
            };
            // An empty or `?` host means "the address you reached me on": not a seed.
            if host.is_empty() || host == "?" {
                continue;
            }
            let hp = if host.contains(':') {
                format!("[{host}]:{port}")
            } else {
                format!("{host}:{port}")
            };
            if !out.contains(&hp) {
                out.push(hp);
            }
        }
    }
    out
}

/// The Cluster client for `seeds`: every connection and answer bounded by `timeout`, a
/// request's retries (after `MOVED`, a lost node) within that same deadline, and TLS as for
/// one node.
pub(super) fn cluster_client(
    seeds: &[Secret],
    certs: Option<&redis::TlsCertificates>,
    timeout: Duration,
) -> Result<redis::cluster::ClusterClient, StoreError> {
    let mut b = ClusterClientBuilder::new(seeds.iter().map(|s| s.expose().to_string()))
        .connection_timeout(timeout)
        .response_timeout(timeout)
        // A retry (a redirect, a reconnect) waits 5 ms to a tenth of the deadline, never the
        // crate's default of over a second: the whole request is bounded by `timeout`.
        .retries(3)
        .min_retry_wait(5)
        .max_retry_wait((timeout.as_millis() as u64 / 10).max(6));
    if let Some(certs) = certs {
        b = b.certs(certs.clone());
    }
    b.build().map_err(|e| {
        StoreError::Unreachable(format!("invalid Redis Cluster seeds: {:?}", e.kind()))
    })
}

/// The Redis client for one node at `url`: plain, or over rustls with `certs` (from
/// [`tls_certificates`]) for `rediss://`.
pub(super) fn open_client(
    url: &Secret,
    certs: Option<&redis::TlsCertificates>,
) -> Result<redis::Client, StoreError> {
    let invalid =
        |e: RedisError| StoreError::Unreachable(format!("invalid Redis URL: {:?}", e.kind()));
    match certs {
        None => redis::Client::open(url.expose()).map_err(invalid),
        Some(certs) => redis::Client::build_with_tls(url.expose(), certs.clone()).map_err(|e| {
            StoreError::Unreachable(format!("Redis TLS setup failed: {:?}", e.kind()))
        }),
    }
}

/// The TLS material for a `rediss://` URL given any `tls` setting: roots (the system's plus
/// `tls.ca`: the redis crate takes one PEM bundle of roots, so both go into it) and a client
/// certificate. `None`: plain, or the crate's defaults.
pub(super) fn tls_certificates(url: &str, tls: &RedisTls) -> Option<redis::TlsCertificates> {
    if !url.starts_with("rediss://") || *tls == RedisTls::default() {
        return None;
    }
    let root_cert = (!tls.ca.is_empty()).then(|| {
        let mut pem = Vec::new();
        let native = rustls_native_certs::load_native_certs();
        for der in native.certs.iter().chain(tls.ca.iter()) {
            pem_block(&mut pem, der.as_ref());
        }
        pem
    });
    let client_tls = tls
        .client
        .as_ref()
        .map(|(cert, key)| redis::ClientTlsConfig {
            client_cert: cert.clone(),
            client_key: key.expose().as_bytes().to_vec(),
        });
    Some(redis::TlsCertificates {
        client_tls,
        root_cert,
    })
}

/// Append `der` to `out` as one PEM certificate block.
fn pem_block(out: &mut Vec<u8>, der: &[u8]) {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    out.extend_from_slice(b"-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.extend_from_slice(line);
        out.push(b'\n');
    }
    out.extend_from_slice(b"-----END CERTIFICATE-----\n");
}

#[cfg(test)]
mod tests {
    use super::{seed_urls, slot_nodes};
    use redis::Value;

    #[test]
    fn the_nodes_of_a_cluster_slots_answer_are_read_once_each_without_placeholders() {
        let node = |h: &str, p: i64| {
            Value::Array(vec![
                Value::BulkString(h.as_bytes().to_vec()),
                Value::Int(p),
                Value::BulkString(b"id".to_vec()),
            ])
        };
        let range = |a: i64, b: i64, nodes: Vec<Value>| {
            let mut v = vec![Value::Int(a), Value::Int(b)];
            v.extend(nodes);
            Value::Array(v)
        };
        let answer = Value::Array(vec![
            range(
                0,
                5460,
                vec![node("10.0.0.1", 7000), node("10.0.0.4", 7003)],
            ),
            range(5461, 10922, vec![node("10.0.0.2", 7001), node("?", 7004)]),
            range(
                10923,
                16383,
                vec![node("10.0.0.1", 7000), node("::1", 7002)],
            ),
        ]);
        assert_eq!(
            slot_nodes(&answer),
            [
                "10.0.0.1:7000",
                "10.0.0.4:7003",
                "10.0.0.2:7001",
                "[::1]:7002"
            ]
        );
        assert!(slot_nodes(&Value::Nil).is_empty());
    }

    #[test]
    fn a_comma_list_names_cluster_seeds_and_bare_hosts_borrow_the_first_urls_scheme_and_password() {
        assert_eq!(seed_urls("redis://h:1"), vec!["redis://h:1"]);
        assert_eq!(
            seed_urls("rediss://:pw@a:7000, b:7001 ,rediss://c:7002,"),
            vec![
                "rediss://:pw@a:7000",
                "rediss://:pw@b:7001",
                "rediss://c:7002"
            ]
        );
        assert_eq!(
            seed_urls("redis://a:1/0,b:2"),
            vec!["redis://a:1/0", "redis://b:2"]
        );
        assert!(seed_urls(" , ").is_empty());
        // A comma in a password is not a list of seeds.
        assert_eq!(
            seed_urls("redis://:pass,word@127.0.0.1:6399/0"),
            vec!["redis://:pass,word@127.0.0.1:6399/0"]
        );
        assert_eq!(
            seed_urls("rediss://user:a,b,c@h:6380"),
            vec!["rediss://user:a,b,c@h:6380"]
        );
    }
}
