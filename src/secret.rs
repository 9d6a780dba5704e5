//! `Secret`: a string that cannot be printed by accident (Debug and Display show `***`).

use serde::{Deserialize, Deserializer};
use sha2::{Digest, Sha256};
use subtle::ConditionallySelectable;
use subtle::ConstantTimeEq;

/// A credential: a pooled Gemini key, a client key or the admin token.
///
/// It has no `Display`, and its `Debug` prints `Secret(***)`, so a `{:?}` of a config or a
/// request context never leaks it. Read the value with [`Secret::expose`] only where it is sent.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Secret(String, [u8; 32]);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        let value = value.into();
        let digest = Sha256::digest(value.as_bytes()).into();
        Secret(value, digest)
    }

    /// The raw value. Call sites are the few places that put it on the wire.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// SHA-256 of the value (computed once): used for constant-time comparison and for stable
    /// key ids.
    pub fn digest(&self) -> [u8; 32] {
        self.1
    }

    /// Constant-time equality against a presented credential, hashed with [`presented_digest`]
    /// (both sides hashed, so neither the content nor the length of the secret shows in the
    /// timing; one hash of the credential serves every comparison).
    pub fn matches(&self, presented: &[u8; 32]) -> bool {
        bool::from(self.digest().ct_eq(presented))
    }

    /// `AIza...0001`: the first four and last four characters, for display. Keys shorter than
    /// 12 characters show only `...` and their last two, so most of a short secret stays hidden.
    pub fn masked(&self) -> String {
        let chars: Vec<char> = self.0.chars().collect();
        if chars.len() >= 12 {
            let head: String = chars[..4].iter().collect();
            let tail: String = chars[chars.len() - 4..].iter().collect();
            format!("{head}...{tail}")
        } else if chars.len() >= 4 {
            let tail: String = chars[chars.len() - 2..].iter().collect();
            format!("...{tail}")
        } else {
            "...".to_string()
        }
    }
}

impl Default for Secret {
    /// The empty secret (a setting left out).
    fn default() -> Self {
        Secret::new("")
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // `deserialize_any`, not `deserialize_string`: the `config` crate turns a number or a
        // boolean into a string when asked for one, so `admin_token = 42` would quietly become
        // the token "42". A secret must be written as a string.
        d.deserialize_any(SecretVisitor)
    }
}

/// Takes a string and refuses anything else by its kind only: serde's own message would quote
/// the value, and the value is the secret.
struct SecretVisitor;

impl SecretVisitor {
    fn refuse<E: serde::de::Error>(kind: &str) -> E {
        E::custom(format!("a secret must be a string (in quotes), got {kind}"))
    }
}

impl<'de> serde::de::Visitor<'de> for SecretVisitor {
    type Value = Secret;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a string")
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Secret, E> {
        Ok(Secret::new(v))
    }
    fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Secret, E> {
        Ok(Secret::new(v))
    }
    fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<Secret, E> {
        Err(Self::refuse("a boolean"))
    }
    fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<Secret, E> {
        Err(Self::refuse("an integer"))
    }
    fn visit_i128<E: serde::de::Error>(self, _: i128) -> Result<Secret, E> {
        Err(Self::refuse("an integer"))
    }
    fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<Secret, E> {
        Err(Self::refuse("an integer"))
    }
    fn visit_u128<E: serde::de::Error>(self, _: u128) -> Result<Secret, E> {
        Err(Self::refuse("an integer"))
    }
    fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<Secret, E> {
        Err(Self::refuse("a number"))
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<Secret, E> {
        Err(Self::refuse("nothing"))
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, _: A) -> Result<Secret, A::Error> {
        Err(Self::refuse("a list"))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, _: A) -> Result<Secret, A::Error> {
        Err(Self::refuse("a table"))
    }
}

/// The SHA-256 of a presented credential, for [`Secret::matches`] and [`matches_any`].
pub fn presented_digest(presented: &str) -> [u8; 32] {
    Sha256::digest(presented.as_bytes()).into()
}

/// A SHA-256 digest from its 64 hex digits (`None` for anything else).
pub fn digest_from_hex(hex: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex, &mut out).ok()?;
    Some(out)
}

/// True if the presented credential (hashed with [`presented_digest`]) equals any of
/// `secrets`, checking every one (no early exit).
pub fn matches_any(secrets: &[Secret], presented: &[u8; 32]) -> bool {
    position(secrets, presented).is_some()
}

/// Which of `secrets` the presented credential equals, comparing with every one (no early
/// exit, no branch on a secret byte).
pub fn position(secrets: &[Secret], presented: &[u8; 32]) -> Option<usize> {
    let mut found = subtle::Choice::from(0u8);
    let mut at = 0u64;
    for (i, s) in secrets.iter().enumerate() {
        let hit = s.digest().ct_eq(presented);
        // Keeps the first match; the index is not secret, only the comparison is.
        at = u64::conditional_select(&at, &(i as u64), hit & !found);
        found |= hit;
    }
    bool::from(found).then_some(at as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_value() {
        let s = Secret::new("AIzaSyTopSecret0001");
        assert_eq!(format!("{s:?}"), "Secret(***)");
        assert!(!format!("{:?}", vec![s.clone()]).contains("TopSecret"));
    }

    #[test]
    fn masked_keeps_only_head_and_tail() {
        assert_eq!(Secret::new("AIzaSyTopSecret0001").masked(), "AIza...0001");
        assert_eq!(Secret::new("short1").masked(), "...t1");
    }

    #[test]
    fn matches_compares_whole_values() {
        let keys = vec![Secret::new("alpha"), Secret::new("beta")];
        assert!(matches_any(&keys, &presented_digest("beta")));
        assert!(!matches_any(&keys, &presented_digest("bet")));
        assert!(!matches_any(&keys, &presented_digest("")));
        assert_eq!(position(&keys, &presented_digest("beta")), Some(1));
        assert_eq!(position(&keys, &presented_digest("alpha")), Some(0));
        assert_eq!(position(&keys, &presented_digest("gamma")), None);
        assert!(Secret::new("alpha").matches(&presented_digest("alpha")));
        assert!(!Secret::new("alpha").matches(&presented_digest("alphb")));
    }
}
