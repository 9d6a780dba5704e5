//! Live API session slots in memory: per project, the open sessions with their lease ends. A
//! project holds at most its limit of sessions, so the table is bounded by configuration.

use std::collections::HashMap;
use std::sync::Arc;

/// project -> session id -> lease end (ms).
#[derive(Debug, Default)]
pub(super) struct Slots(HashMap<String, HashMap<String, i64>>);

fn until(now: i64, lease_ms: u64) -> i64 {
    now.saturating_add(i64::try_from(lease_ms.min(super::super::MAX_HOLD_MS)).unwrap_or(0))
}

impl Slots {
    /// Take a slot when fewer than `limit` unexpired ones are held.
    pub(super) fn open(
        &mut self,
        project: &str,
        session: &str,
        limit: u64,
        now: i64,
        lease_ms: u64,
    ) -> bool {
        let held = self.0.entry(project.to_string()).or_default();
        held.retain(|_, end| *end > now);
        if held.contains_key(session) {
            held.insert(session.to_string(), until(now, lease_ms));
            return true;
        }
        if held.len() as u64 >= limit {
            if held.is_empty() {
                self.0.remove(project);
            }
            return false;
        }
        held.insert(session.to_string(), until(now, lease_ms));
        true
    }

    /// Push the lease end of each slot still held.
    pub(super) fn renew(&mut self, held: &[(Arc<str>, String)], now: i64, lease_ms: u64) {
        for (project, session) in held {
            if let Some(end) = self
                .0
                .get_mut(&**project)
                .and_then(|p| p.get_mut(session.as_str()))
                && *end > now
            {
                *end = until(now, lease_ms);
            }
        }
    }

    pub(super) fn close(&mut self, project: &str, session: &str) {
        if let Some(p) = self.0.get_mut(project) {
            p.remove(session);
            if p.is_empty() {
                self.0.remove(project);
            }
        }
    }

    /// Unexpired slots of `project`.
    pub(super) fn count(&mut self, project: &str, now: i64) -> u64 {
        self.0
            .get(project)
            .map_or(0, |p| p.values().filter(|end| **end > now).count() as u64)
    }
}
