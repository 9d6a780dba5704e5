//! What the stores keep about keys beside admission: holds on a (project, model) after
//! Google's 429s, keys disabled on Google's verdict ([`KeyHealth`]), and the resources pinned
//! to the key that created them ([`Pins`]).

use std::sync::Arc;

use async_trait::async_trait;

use super::StoreError;

/// A key's standing in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyState {
    Active,
    Disabled { reason: String },
}

/// A cooldown on a (project, model), or on a whole project when `model` is `*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cooldown {
    pub project: String,
    pub model: String,
    pub remaining_ms: u64,
    pub reason: String,
}

/// Holds and disabled keys, seen by every replica sharing the store.
#[async_trait]
pub trait KeyHealth: Send + Sync {
    /// Put a (project, model) on hold; `model` `*` holds the whole project.
    async fn cool_down(
        &self,
        project: &str,
        model: &str,
        ms: u64,
        reason: &str,
    ) -> Result<(), StoreError>;
    async fn cooldowns(&self) -> Result<Vec<Cooldown>, StoreError>;
    /// Never use this key again until re-enabled.
    async fn disable_key(&self, kid: &str, reason: &str) -> Result<(), StoreError>;
    async fn key_states(&self, kids: &[Arc<str>]) -> Result<Vec<KeyState>, StoreError>;
}

/// Which key created a resource (file, cache, upload session, ...), so later requests naming
/// it go to the same project.
#[async_trait]
pub trait Pins: Send + Sync {
    /// Remember which key created a resource (file, cache, upload session, ...).
    async fn set_affinity(&self, resource: &str, kid: &str, ttl_ms: u64) -> Result<(), StoreError>;
    async fn affinity(&self, resource: &str) -> Result<Option<String>, StoreError>;
}
