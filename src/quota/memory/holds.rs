//! Holds on a (project, model) after Google's 429, keys disabled on Google's verdict, and the
//! resources pinned to the key that created them, in memory ([`KeyHealth`], [`Pins`]).

use std::sync::Arc;

use async_trait::async_trait;

use super::super::{Cooldown, KeyHealth, KeyState, Pins, StoreError};
use super::{Hold, MemoryStore};

#[async_trait]
impl KeyHealth for MemoryStore {
    async fn cool_down(
        &self,
        project: &str,
        model: &str,
        ms: u64,
        reason: &str,
    ) -> Result<(), StoreError> {
        // Numbers from outside are clamped where they enter; this never wraps either way.
        let until_ms = self
            .clock
            .now_ms()
            .saturating_add(i64::try_from(ms.min(super::super::MAX_HOLD_MS)).unwrap_or(i64::MAX));
        let mut holds = self.cooldowns.lock();
        let e = holds
            .entry((project.to_string(), model.to_string()))
            .or_insert(Hold {
                until_ms,
                reason: reason.to_string(),
            });
        // The longest hold wins.
        if until_ms >= e.until_ms {
            e.until_ms = until_ms;
            e.reason = reason.to_string();
        }
        Ok(())
    }

    async fn cooldowns(&self) -> Result<Vec<Cooldown>, StoreError> {
        let now = self.clock.now_ms();
        let mut holds = self.cooldowns.lock();
        holds.retain(|_, h| h.until_ms > now);
        let mut out: Vec<Cooldown> = holds
            .iter()
            .map(|((p, m), h)| Cooldown {
                project: p.clone(),
                model: m.clone(),
                remaining_ms: (h.until_ms - now) as u64,
                reason: h.reason.clone(),
            })
            .collect();
        out.sort_by(|a, b| (&a.project, &a.model).cmp(&(&b.project, &b.model)));
        Ok(out)
    }

    async fn disable_key(&self, kid: &str, reason: &str) -> Result<(), StoreError> {
        self.disabled
            .lock()
            .insert(kid.to_string(), reason.to_string());
        Ok(())
    }

    async fn key_states(&self, kids: &[Arc<str>]) -> Result<Vec<KeyState>, StoreError> {
        let d = self.disabled.lock();
        Ok(kids
            .iter()
            .map(|k| match d.get(&**k) {
                Some(reason) => KeyState::Disabled {
                    reason: reason.clone(),
                },
                None => KeyState::Active,
            })
            .collect())
    }
}

#[async_trait]
impl Pins for MemoryStore {
    async fn set_affinity(&self, resource: &str, kid: &str, ttl_ms: u64) -> Result<(), StoreError> {
        let until = self
            .clock
            .now_ms()
            .saturating_add(i64::try_from(ttl_ms).unwrap_or(i64::MAX));
        self.affinity
            .insert(resource.to_string(), (Arc::from(kid), until));
        Ok(())
    }

    async fn affinity(&self, resource: &str) -> Result<Option<String>, StoreError> {
        let now = self.clock.now_ms();
        Ok(self
            .affinity
            .get(resource)
            .filter(|(_, until)| *until > now)
            .map(|(kid, _)| kid.to_string()))
    }
}
