//! Holds on a (project, model) after Google's 429, keys disabled on Google's verdict, and the
//! resources pinned to the key that created them, in memory.

use std::sync::Arc;

use super::super::{Cooldown, KeyState};
use super::{Hold, MemoryStore};

impl MemoryStore {
    pub(super) fn cool_down_now(&self, project: &str, model: &str, ms: u64, reason: &str) {
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
    }

    pub(super) fn cooldowns_now(&self) -> Vec<Cooldown> {
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
        out
    }

    pub(super) fn disable_key_now(&self, kid: &str, reason: &str) {
        self.disabled
            .lock()
            .insert(kid.to_string(), reason.to_string());
    }

    pub(super) fn key_states_now(&self, kids: &[Arc<str>]) -> Vec<KeyState> {
        let d = self.disabled.lock();
        kids.iter()
            .map(|k| match d.get(&**k) {
                Some(reason) => KeyState::Disabled {
                    reason: reason.clone(),
                },
                None => KeyState::Active,
            })
            .collect()
    }

    pub(super) fn set_affinity_now(&self, resource: &str, kid: &str, ttl_ms: u64) {
        let until = self
            .clock
            .now_ms()
            .saturating_add(i64::try_from(ttl_ms).unwrap_or(i64::MAX));
        self.affinity
            .insert(resource.to_string(), (Arc::from(kid), until));
    }

    pub(super) fn affinity_now(&self, resource: &str) -> Option<String> {
        let now = self.clock.now_ms();
        self.affinity
            .get(resource)
            .filter(|(_, until)| *until > now)
            .map(|(kid, _)| kid.to_string())
    }
}
