//! In-memory `QuotaStore`: one sliding log per (project, model), each behind its own mutex
//! (sharded; no lock is ever held across an `.await`). Admission and its counters here; the
//! other concerns' trait impls in `holds` (holds, disabled keys, pins), `live`, `batch` and
//! `budget` (clients' budgets).
//!
//! Model names come from clients, so the table must not grow with them (invariant 9): a
//! bucket whose minute window has emptied is dropped by an amortised sweep, and what is left
//! of it, a day count, waits in a compact side table until the quota day changes.

use parking_lot::{Mutex, RwLock};
use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use chrono_tz::Tz;

use super::{
    AdmitOutcome, AdmitRequest, Candidate, Clock, DayCache, QuotaStore, Reservation, ResetKind,
    ResetScope, StoreError, Usage,
};

mod admit;
mod batch;
mod bucket;
mod budget;
mod client;
mod holds;
mod live;
mod reset;
mod tables;

use self::bucket::{Bucket, clamp_tokens};
use self::tables::Tables;

#[derive(Debug, Clone)]
struct Hold {
    until_ms: i64,
    reason: String,
}

/// Quota state in this process's memory.
#[derive(Debug)]
pub struct MemoryStore {
    clock: Arc<dyn Clock>,
    days: DayCache,
    tables: RwLock<Tables>,
    cooldowns: Mutex<HashMap<(String, String), Hold>>,
    disabled: Mutex<HashMap<String, String>>,
    /// Resource -> (pin, expiry in ms on `clock`), at most [`AFFINITY_CAP`] entries: the least
    /// recently used goes first, in constant time per insert (moka, LRU: a new pin is always
    /// admitted, as a created file must be found again).
    affinity: moka::sync::Cache<String, (Arc<str>, i64)>,
    /// Live API session slots: project -> session -> lease end (ms).
    live: Mutex<live::Slots>,
    /// Clients' own counters, by name (see `client`).
    clients: RwLock<tables::Map<Arc<str>, Arc<Mutex<client::ClientCounters>>>>,
    /// Batch jobs, holds and results files (see `batch`).
    batches: Mutex<batch::Jobs>,
    window_ms: i64,
}

/// Most resources pinned in this replica's memory (files, cached contents, upload sessions).
pub const AFFINITY_CAP: u64 = 100_000;

/// See [`MemoryStore::tracked`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tracked {
    pub buckets: usize,
    pub day_counts: usize,
}

impl MemoryStore {
    pub fn new(clock: Arc<dyn Clock>, tz: Tz) -> Self {
        MemoryStore {
            clock,
            days: DayCache::new(tz),
            tables: RwLock::new(Tables::new()),
            cooldowns: Mutex::new(HashMap::new()),
            disabled: Mutex::new(HashMap::new()),
            affinity: moka::sync::Cache::builder()
                .max_capacity(AFFINITY_CAP)
                .eviction_policy(moka::policy::EvictionPolicy::lru())
                .build(),
            live: Mutex::new(live::Slots::default()),
            clients: RwLock::new(tables::Map::default()),
            batches: Mutex::default(),
            window_ms: super::MINUTE_MS,
        }
    }

    /// Count over a sliding window of `ms` instead of Google's 60 s (`limits.window_secs`,
    /// which tests shorten).
    pub fn with_window(mut self, ms: u64) -> Self {
        self.window_ms = i64::try_from(ms.clamp(1, super::MAX_HOLD_MS)).unwrap_or(super::MINUTE_MS);
        self
    }

    fn read(&self) -> parking_lot::RwLockReadGuard<'_, Tables> {
        self.tables.read()
    }

    fn write(&self) -> parking_lot::RwLockWriteGuard<'_, Tables> {
        self.tables.write()
    }

    /// The counters of (project, model), made on first use (with the day count kept aside,
    /// if any). Making one is the slow path, and where the amortised sweep runs.
    fn bucket(&self, project: &Arc<str>, model: &str, day: i64) -> Arc<Mutex<Bucket>> {
        if let Some(b) = self.read().get(project, model) {
            return b;
        }
        let mut t = self.write();
        if let Some(b) = t.get(project, model) {
            return b;
        }
        if t.live_len >= t.sweep_at || t.swept_day != day {
            self.sweep(&mut t);
        }
        let kept = t.days.get_mut(&**project).and_then(|m| m.remove(model));
        let mut b = Bucket {
            next_id: t.retired_ids,
            window_ms: self.window_ms,
            ..Bucket::default()
        };
        // A count from a past day is cleared by the next prune, like a live bucket's.
        if let Some(d) = kept {
            b.day = d.day;
            b.day_requests = d.requests;
        }
        let b = Arc::new(Mutex::new(b));
        t.live
            .entry(project.clone())
            .or_default()
            .insert(model.to_string(), b.clone());
        t.live_len += 1;
        b
    }

    /// Every bucket with its (project, model).
    fn all_buckets(&self) -> Vec<(Arc<str>, String, Arc<Mutex<Bucket>>)> {
        Self::clone_live(&self.read())
    }

    fn clone_live(t: &Tables) -> Vec<(Arc<str>, String, Arc<Mutex<Bucket>>)> {
        t.live
            .iter()
            .flat_map(|(p, models)| {
                models
                    .iter()
                    .map(move |(m, b)| (p.clone(), m.clone(), b.clone()))
            })
            .collect()
    }

    /// Sweep with the time read under the write lock: every admission made before it saw an
    /// earlier (or equal) time, so no bucket is pruned or reset to a day older than its own.
    fn sweep(&self, t: &mut Tables) {
        let now = self.clock.now_ms();
        t.sweep(now, self.days.at(now).day);
    }

    /// How many (project, model) pairs the store holds: buckets with a minute log, and day
    /// counts kept after their bucket was dropped. For tests and diagnostics.
    pub fn tracked(&self) -> Tracked {
        let t = self.read();
        Tracked {
            buckets: t.live_len,
            day_counts: t.days.values().map(HashMap::len).sum(),
        }
    }

    /// Remaining cooldown of (project, model) or the whole project, in ms.
    fn held(&self, project: &str, model: &str, now: i64) -> Option<u64> {
        let holds = self.cooldowns.lock();
        if holds.is_empty() {
            return None;
        }
        let mut worst: Option<u64> = None;
        for m in [model, "*"] {
            if let Some(h) = holds.get(&(project.to_string(), m.to_string()))
                && h.until_ms > now
            {
                let left = (h.until_ms - now) as u64;
                worst = Some(worst.map_or(left, |w| w.max(left)));
            }
        }
        worst
    }
}

/// Candidates grouped by project, keeping first-appearance order.
pub(crate) fn by_project(cands: &[Candidate]) -> Vec<(Arc<str>, Vec<&Candidate>)> {
    let mut out: Vec<(Arc<str>, Vec<&Candidate>)> = Vec::new();
    for c in cands {
        match out.iter_mut().find(|(p, _)| *p == c.project) {
            Some((_, v)) => v.push(c),
            None => out.push((c.project.clone(), vec![c])),
        }
    }
    out
}

#[async_trait]
impl QuotaStore for MemoryStore {
    async fn admit(&self, req: &AdmitRequest) -> Result<AdmitOutcome, StoreError> {
        if let Some(c) = &req.client {
            return Ok(self.admit_client(req, c));
        }
        // Each pass either decides or follows another task's admission, so this loop ends.
        loop {
            if let Some(outcome) = self.admit_pass(req) {
                return Ok(outcome);
            }
        }
    }

    async fn settle(&self, r: &Reservation, actual_tokens: u64) -> Result<(), StoreError> {
        self.settle_now(r, actual_tokens);
        Ok(())
    }

    fn settle_now(&self, r: &Reservation, actual_tokens: u64) -> bool {
        if r.uncounted {
            return true;
        }
        self.settle_client(r, actual_tokens);
        // No bucket: it was dropped because its window emptied, so this admission has left
        // the window and there is nothing to correct.
        let Some(bucket) = self.read().get(&r.project, &r.model) else {
            return true;
        };
        let mut b = bucket.lock();
        let actual = clamp_tokens(actual_tokens);
        if let Some(e) = b.entry_mut(r.id) {
            let old = std::mem::replace(&mut e.tokens, actual);
            b.tokens = b.tokens - u64::from(old) + u64::from(actual);
        }
        true
    }

    async fn usage(&self) -> Result<Vec<(String, String, Usage)>, StoreError> {
        let now = self.clock.now_ms();
        let di = self.days.at(now);
        // Usage is read per scrape or status call and looks at every bucket anyway: a good
        // moment to drop the idle ones.
        self.sweep(&mut self.write());
        // Buckets and kept day counts read under one lock: a pair moving from one to the other
        // meanwhile is seen exactly once.
        let (buckets, mut out) = {
            let t = self.read();
            let kept: Vec<(String, String, Usage)> = t
                .days
                .iter()
                .flat_map(|(p, models)| models.iter().map(move |(m, d)| (p, m, d)))
                .filter(|(_, _, d)| d.day == di.day)
                .map(|(p, m, d)| {
                    let u = Usage {
                        daily_requests: d.requests,
                        ..Usage::default()
                    };
                    (p.to_string(), m.to_string(), u)
                })
                .collect();
            (Self::clone_live(&t), kept)
        };
        for (project, model, b) in buckets {
            let mut b = b.lock();
            b.prune(now, di.day);
            let u = b.usage();
            if u != Usage::default() {
                out.push((project.to_string(), model, u));
            }
        }
        out.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        Ok(out)
    }

    async fn reset(&self, kind: ResetKind, scope: &ResetScope) -> Result<(), StoreError> {
        self.reset_now(kind, scope);
        Ok(())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn backend(&self) -> &'static str {
        "memory"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quota::Pins;

    /// Past the cap an insert evicts in constant time (the map was scanned whole per insert
    /// once full of live pins: 50,000 inserts past 100,000 took minutes), the map stays
    /// bounded, and the newest pins are kept.
    #[tokio::test]
    async fn the_affinity_map_stays_bounded_and_keeps_the_newest_pins_past_its_cap() {
        use super::super::ManualClock;
        let store = MemoryStore::new(
            Arc::new(ManualClock::new(1_700_000_000_000)),
            chrono_tz::UTC,
        );
        let total = AFFINITY_CAP + 50_000;
        let started = std::time::Instant::now();
        for i in 0..total {
            store
                .set_affinity(&format!("files/f{i}"), "kid", 3_600_000)
                .await
                .unwrap();
        }
        eprintln!(
            "{total} affinity inserts in {:.2} s",
            started.elapsed().as_secs_f64()
        );
        store.affinity.run_pending_tasks();
        assert!(store.affinity.entry_count() <= AFFINITY_CAP);
        let last = format!("files/f{}", total - 1);
        assert_eq!(store.affinity(&last).await.unwrap().as_deref(), Some("kid"));
        assert_eq!(
            store.affinity("files/f0").await.unwrap(),
            None,
            "the oldest went"
        );
        // An ended upload session (expiry now) reads as gone.
        store.set_affinity(&last, "", 0).await.unwrap();
        assert_eq!(store.affinity(&last).await.unwrap(), None);
    }

    /// A task that took a bucket's handle before a sweep may still reserve on it: the sweep
    /// must leave that bucket in the table, or the reservation would land in a detached copy
    /// that nobody else counts.
    #[test]
    fn a_sweep_leaves_buckets_another_task_holds() {
        use super::super::ManualClock;
        let t0 = 1_700_000_000_000;
        let store = MemoryStore::new(Arc::new(ManualClock::new(t0)), chrono_tz::UTC);
        let p: Arc<str> = "p".into();
        let day = store.days.at(t0).day;
        let held = store.bucket(&p, "held", day);
        drop(store.bucket(&p, "idle", day));
        store.sweep(&mut store.write());
        assert_eq!(store.tracked().buckets, 1);
        held.lock().reserve(1, t0);
        assert!(Arc::ptr_eq(&held, &store.bucket(&p, "held", day)));
    }
}
