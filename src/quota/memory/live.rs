//! Live API sessions in memory ([`LiveSlots`]): per project, the open sessions with their
//! lease ends (a project holds at most its limit of sessions, so the table is bounded by
//! configuration); a session's slot among its client's requests in flight; its usage.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;

use super::MemoryStore;
use crate::quota::{ClientAdmit, ClientLimit, LiveSlots, LiveUsage, StoreError};

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

#[async_trait]
impl LiveSlots for MemoryStore {
    async fn live_open(
        &self,
        project: &str,
        session: &str,
        limit: u64,
        lease_ms: u64,
    ) -> Result<bool, StoreError> {
        let now = self.clock.now_ms();
        Ok(self
            .live
            .lock()
            .open(project, session, limit, now, lease_ms))
    }

    async fn live_renew(
        &self,
        held: &[(Arc<str>, String)],
        lease_ms: u64,
    ) -> Result<(), StoreError> {
        let now = self.clock.now_ms();
        self.live.lock().renew(held, now, lease_ms);
        Ok(())
    }

    async fn live_close(&self, project: &str, session: &str) -> Result<(), StoreError> {
        self.live.lock().close(project, session);
        Ok(())
    }

    async fn live_counts(&self, projects: &[Arc<str>]) -> Result<Vec<u64>, StoreError> {
        let now = self.clock.now_ms();
        let mut slots = self.live.lock();
        Ok(projects.iter().map(|p| slots.count(p, now)).collect())
    }

    async fn live_client_open(
        &self,
        c: &ClientAdmit,
        session: &str,
    ) -> Result<Option<(ClientLimit, u64, u64)>, StoreError> {
        let taken = self.with_room(c, 0, |cc, now| {
            // Only checked against the budgets: the usage is charged as it arrives.
            let held = ClientAdmit {
                cost_micros: 0,
                ..c.clone()
            };
            let hold = cc.reserve(&held, 0, now);
            if c.caps.max_concurrent.is_some() {
                cc.sessions.insert(session.to_string(), hold.id);
            }
        });
        Ok(taken.err())
    }

    /// Push the lease end of each (client, session) slot still held.
    async fn live_client_renew(
        &self,
        held: &[(Arc<str>, String)],
        lease_ms: u64,
    ) -> Result<(), StoreError> {
        let now = self.clock.now_ms();
        let lease = i64::try_from(lease_ms.min(super::super::MAX_HOLD_MS)).unwrap_or(0);
        for (name, session) in held {
            let counters = self.client_counters(name);
            let mut cc = counters.lock();
            let Some(id) = cc.sessions.get(session.as_str()).copied() else {
                continue;
            };
            if let Some(until) = cc.inflight.get_mut(&id)
                && *until > now
            {
                *until = now.saturating_add(lease);
            }
        }
        Ok(())
    }

    async fn live_client_close(&self, name: &str, session: &str) -> Result<(), StoreError> {
        let Some(counters) = self.clients.read().get(name).cloned() else {
            return Ok(());
        };
        let mut cc = counters.lock();
        if let Some(id) = cc.sessions.remove(session) {
            cc.inflight.remove(&id);
        }
        Ok(())
    }

    async fn live_usage(&self, u: &LiveUsage) -> Result<(u64, u64), StoreError> {
        let now = self.clock.now_ms();
        let day = self.days.at(now).day;
        {
            let bucket = self.bucket(&u.project, &u.model, day);
            let mut b = bucket.lock();
            b.prune(now, day);
            b.push(u.tokens, now);
        }
        let Some(c) = &u.client else {
            return Ok((0, 0));
        };
        let counters = self.client_counters(&c.name);
        let mut cc = counters.lock();
        cc.prune(now, self.window_ms, c);
        Ok(cc.charge(c, u.tokens, now))
    }
}
