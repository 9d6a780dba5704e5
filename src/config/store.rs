//! `[store]`: where quota counters live (memory, or a Redis shared by replicas).

use std::time::Duration;

use serde::Deserialize;

use super::check::{ConfigError, bad, check_name, load_ca_file};
use crate::quota::resilient::StoreFailurePolicy;
use crate::quota::{RedisTls, StoreConfig};
use crate::secret::Secret;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Raw {
    redis_url: Secret,
    namespace: String,
    timeout_ms: u64,
    on_error: String,
    tls_ca_file: String,
    tls_cert_file: String,
    tls_key_file: String,
}

/// Validate `[store]` into the quota store's own [`StoreConfig`].
pub(super) fn from_raw(raw: Raw) -> Result<StoreConfig, ConfigError> {
    let on_error = match raw.on_error.as_str() {
        "local" => StoreFailurePolicy::Local,
        "fail-closed" => StoreFailurePolicy::FailClosed,
        "fail-open" => StoreFailurePolicy::FailOpen,
        other => {
            return Err(bad(
                "store.on_error",
                format!("expected \"local\", \"fail-closed\" or \"fail-open\", got {other:?}"),
            ));
        }
    };
    if raw.timeout_ms == 0 {
        return Err(bad("store.timeout_ms", "must be at least 1"));
    }
    check_name("store.namespace", &raw.namespace)?;
    let redis_url = Some(raw.redis_url).filter(|u| !u.is_empty());
    if let Some(u) = &redis_url
        && !["redis://", "rediss://", "redis+unix://", "unix://"]
            .iter()
            .any(|p| u.expose().starts_with(p))
    {
        return Err(bad(
            "store.redis_url (REDIS_URL)",
            "expected a URL starting with redis://, rediss:// (TLS) or unix://",
        ));
    }
    // A comma-separated list names Redis Cluster seed nodes: all over TCP, all plain or all TLS.
    if let Some(u) = &redis_url {
        let seeds = crate::quota::redis::nodes::seed_urls(u.expose());
        let tls = |s: &String| s.starts_with("rediss://");
        if seeds.len() > 1
            && (seeds.iter().any(|s| !s.starts_with("redis://") && !tls(s))
                || seeds.iter().any(tls) != seeds.iter().all(tls))
        {
            return Err(bad(
                "store.redis_url (REDIS_URL)",
                "a comma-separated list of Redis Cluster seeds must be all redis:// or all rediss:// (host:port after the first takes its scheme)",
            ));
        }
    }
    let tls_url = redis_url
        .as_ref()
        .is_some_and(|u| u.expose().starts_with("rediss://"));
    let tls = tls_from_raw(&raw.tls_ca_file, &raw.tls_cert_file, &raw.tls_key_file)?;
    if !tls_url && tls != RedisTls::default() {
        return Err(bad(
            "store.tls_ca_file / tls_cert_file / tls_key_file",
            "set, but store.redis_url (REDIS_URL) is not a rediss:// URL: TLS settings apply only to rediss://",
        ));
    }
    Ok(StoreConfig {
        redis_url,
        namespace: raw.namespace,
        timeout: Duration::from_millis(raw.timeout_ms),
        on_error,
        tls,
    })
}

/// The TLS files of a `rediss://` store: extra trust roots, and a client certificate with its
/// key for mutual TLS (both or neither), each read and checked now so a bad file stops start-up.
fn tls_from_raw(ca: &str, cert: &str, key: &str) -> Result<RedisTls, ConfigError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let ca = load_ca_file("store.tls_ca_file (REDIS_TLS_CA_FILE)", ca)?;
    let (cert, key) = (cert.trim(), key.trim());
    let client = match (cert.is_empty(), key.is_empty()) {
        (true, true) => None,
        (false, true) | (true, false) => {
            return Err(bad(
                "store.tls_cert_file / store.tls_key_file",
                "a client certificate needs its key, and a key its certificate: set both or neither",
            ));
        }
        (false, false) => {
            let name = "store.tls_cert_file (REDIS_TLS_CERT_FILE)";
            let cert_pem =
                std::fs::read(cert).map_err(|e| bad(name, format!("cannot read {cert:?}: {e}")))?;
            let certs = CertificateDer::pem_slice_iter(&cert_pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| bad(name, format!("{cert:?} is not a PEM certificate file: {e}")))?;
            if certs.is_empty() {
                return Err(bad(name, format!("{cert:?} holds no PEM certificate")));
            }
            let name = "store.tls_key_file (REDIS_TLS_KEY_FILE)";
            let key_pem = std::fs::read_to_string(key)
                .map_err(|e| bad(name, format!("cannot read {key:?}: {e}")))?;
            // The error says where, never what the key holds.
            PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
                .map_err(|_| bad(name, format!("{key:?} holds no PEM private key")))?;
            Some((cert_pem, Secret::new(key_pem)))
        }
    };
    Ok(RedisTls { ca, client })
}

#[cfg(test)]
mod tests {
    use crate::config::try_for_test;

    #[test]
    fn a_list_of_cluster_seeds_loads_and_a_mixed_one_is_refused_naming_the_setting() {
        let ok = |url: &str| try_for_test("", &[("REDIS_URL", url)]);
        assert!(ok("redis://10.0.0.1:7000,10.0.0.2:7000,redis://10.0.0.3:7000").is_ok());
        assert!(ok("rediss://:pw@a:7000,b:7000").is_ok());
        for mixed in [
            "redis://a:7000,rediss://b:7000",
            "redis://a:7000,unix:///tmp/r.sock",
        ] {
            let e = ok(mixed).unwrap_err().to_string();
            assert!(e.contains("REDIS_URL") && e.contains("Cluster"), "{e}");
        }
    }
}
