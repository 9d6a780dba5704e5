//! A runtime client as it is kept (in Redis or `auth.clients_file`): its name, the SHA-256 of
//! its key (never the key), the digests a rotation keeps valid for a while, and its limits;
//! and new keys, made here.

use serde::{Deserialize, Serialize};

use crate::clients::{ClientLimits, ClientSpec, Origin};
use crate::secret::digest_from_hex as parse_digest;

/// What every runtime key begins with, so a leaked one is recognisable (secret scanners).
pub const KEY_PREFIX: &str = "gqp_";

/// One runtime client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    pub name: String,
    /// SHA-256 of its key, 64 hex digits.
    pub key_sha256: String,
    /// Keys replaced by a rotation, valid until their `until_ms`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub grace: Vec<Grace>,
    #[serde(default)]
    pub limits: ClientLimits,
    /// RFC 3339.
    pub created_at: String,
}

/// A rotated-out key's digest and the end of its grace (Unix ms).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grace {
    pub key_sha256: String,
    pub until_ms: i64,
}

impl Record {
    /// As the registry takes it at `now_ms`: the key and the graces not yet over.
    pub fn spec(&self, now_ms: i64) -> Option<ClientSpec> {
        let mut digests = vec![parse_digest(&self.key_sha256)?];
        digests.extend(
            self.grace
                .iter()
                .filter(|g| g.until_ms > now_ms)
                .filter_map(|g| parse_digest(&g.key_sha256)),
        );
        Some(ClientSpec {
            name: self.name.as_str().into(),
            digests,
            limits: self.limits.clone(),
            origin: Origin::Runtime,
        })
    }

    /// The earliest grace still running at `now_ms` ends then.
    pub fn next_expiry(&self, now_ms: i64) -> Option<i64> {
        self.grace
            .iter()
            .map(|g| g.until_ms)
            .filter(|u| *u > now_ms)
            .min()
    }

    /// Drop the graces over at `now_ms` (before the record is written again).
    pub fn prune(&mut self, now_ms: i64) {
        self.grace.retain(|g| g.until_ms > now_ms);
    }
}

/// A new key (`gqp_` and 256 random bits from the OS, base64url) and its digest in hex.
pub fn new_key() -> Result<(String, String), getrandom::Error> {
    use base64::Engine;
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)?;
    let key = format!(
        "{KEY_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    );
    let digest = hex::encode(crate::secret::presented_digest(&key));
    Ok((key, digest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_keys_are_prefixed_distinct_and_stored_only_as_their_digest() {
        let (k1, d1) = new_key().unwrap();
        let (k2, _) = new_key().unwrap();
        assert!(k1.starts_with(KEY_PREFIX));
        assert_eq!(k1.len(), KEY_PREFIX.len() + 43, "256 bits in base64url");
        assert_ne!(k1, k2);
        assert_eq!(d1, hex::encode(crate::secret::presented_digest(&k1)));
        let r = Record {
            name: "a".into(),
            key_sha256: d1,
            grace: vec![],
            limits: ClientLimits::default(),
            created_at: String::new(),
        };
        assert!(!serde_json::to_string(&r).unwrap().contains(&k1));
    }

    #[test]
    fn a_grace_counts_until_it_ends() {
        let (_, d1) = new_key().unwrap();
        let (_, d2) = new_key().unwrap();
        let mut r = Record {
            name: "a".into(),
            key_sha256: d1,
            grace: vec![Grace {
                key_sha256: d2,
                until_ms: 1000,
            }],
            limits: ClientLimits::default(),
            created_at: String::new(),
        };
        assert_eq!(r.spec(999).unwrap().digests.len(), 2);
        assert_eq!(r.next_expiry(999), Some(1000));
        assert_eq!(r.spec(1000).unwrap().digests.len(), 1);
        r.prune(1000);
        assert!(r.grace.is_empty());
    }
}
