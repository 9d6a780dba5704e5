//! In-memory `QuotaStore`: one sliding log per (project, model), each behind its own mutex
//! (sharded; no lock is ever held across an `.await`).
//!
//! Model names come from clients, so the table must not grow with them (invariant 9): a
//! bucket whose minute window has emptied is dropped by an amortised sweep, and what is left
//! of it, a day count, waits in a compact side table until the quota day changes.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, RwLock};

use async_trait::async_trait;
use chrono_tz::Tz;

use super::Strategy;
use super::{
    AdmitOutcome, AdmitRequest, Candidate, Clock, Cooldown, DayCache, DayInfo, KeyState, Limits,
    MINUTE_MS, QuotaStore, Reservation, ResetKind, ResetScope, StoreError, Usage, headroom,
};
use crate::error::LimitKind;

/// One admission in 8 bytes, so even a log of millions of admissions a minute stays small.
/// Its id is implicit: the log holds consecutive ids, the first being `Bucket::first_id`.
#[derive(Debug, Clone, Copy)]
struct Entry {
    /// Milliseconds since `Bucket::epoch_ms`.
    at: u32,
    /// Reserved (then settled) input tokens. A request is capped at the body size limit, so
    /// its count is far below u32::MAX; larger values are clamped.
    tokens: u32,
}

/// Rebase entry times before they could overflow `Entry::at` (about 24 days).
const REBASE_MS: i64 = 1 << 31;

fn clamp_tokens(tokens: u64) -> u32 {
    u32::try_from(tokens).unwrap_or(u32::MAX)
}

/// The counters of one (project, model).
#[derive(Debug, Default)]
struct Bucket {
    /// Admissions of the last 60 s, oldest first.
    log: VecDeque<Entry>,
    /// Where entry times count from.
    epoch_ms: i64,
    /// The id of the log's first entry.
    first_id: u64,
    tokens: u64,
    day: i64,
    day_requests: u64,
    next_id: u64,
}

impl Bucket {
    fn at_ms(&self, e: &Entry) -> i64 {
        self.epoch_ms + i64::from(e.at)
    }

    /// Forget admissions that are 60 s old or older: the window is (now - 60 s, now].
    fn prune(&mut self, now: i64, day: i64) {
        while let Some(e) = self.log.front() {
            if self.at_ms(e) > now - MINUTE_MS {
                break;
            }
            self.tokens -= u64::from(e.tokens);
            self.log.pop_front();
            self.first_id += 1;
        }
        if self.day != day {
            self.day = day;
            self.day_requests = 0;
        }
    }

    fn usage(&self) -> Usage {
        Usage {
            minute_requests: self.log.len() as u64,
            minute_tokens: self.tokens,
            daily_requests: self.day_requests,
        }
    }

    /// `None` if there is room; else the limit holding the request back and how long until
    /// it would fit.
    fn refusal(
        &self,
        l: &Limits,
        tokens: u64,
        now: i64,
        di: &DayInfo,
    ) -> Option<(LimitKind, u64, u64)> {
        if self.day_requests >= l.daily {
            let wait = (di.next_midnight_ms - now).max(1) as u64;
            return Some((LimitKind::RequestsPerDay, l.daily, wait));
        }
        let mut worst: Option<(LimitKind, u64, u64)> = None;
        let n = self.log.len() as u64;
        if n >= l.minute {
            // The (n - limit + 1)-th oldest entry must leave the window.
            let e = self.log[(n - l.minute) as usize];
            let wait = (self.at_ms(&e) + MINUTE_MS - now).max(1) as u64;
            worst = Some((LimitKind::RequestsPerMinute, l.minute, wait));
        }
        if self.tokens + tokens > l.token_minute {
            let need = self.tokens + tokens - l.token_minute;
            let mut freed = 0;
            let mut wait = MINUTE_MS as u64;
            for e in &self.log {
                freed += u64::from(e.tokens);
                if freed >= need {
                    wait = (self.at_ms(e) + MINUTE_MS - now).max(1) as u64;
                    break;
                }
            }
            if worst.is_none_or(|w| wait > w.2) {
                worst = Some((LimitKind::TokensPerMinute, l.token_minute, wait));
            }
        }
        worst
    }

    fn reserve(&mut self, tokens: u64, now: i64) -> u64 {
        if self.log.is_empty() {
            self.epoch_ms = now;
            self.first_id = self.next_id + 1;
        } else if now - self.epoch_ms >= REBASE_MS {
            // Weeks of uninterrupted traffic: move the epoch to the oldest entry.
            let shift = self.log.front().map_or(0, |e| e.at);
            for e in self.log.iter_mut() {
                e.at = e.at.saturating_sub(shift);
            }
            self.epoch_ms += i64::from(shift);
        }
        let tokens = clamp_tokens(tokens);
        self.next_id += 1;
        self.log.push_back(Entry {
            at: u32::try_from((now - self.epoch_ms).max(0)).unwrap_or(u32::MAX),
            tokens,
        });
        self.tokens += u64::from(tokens);
        self.day_requests += 1;
        self.next_id
    }

    /// The entry of admission `id`, while it is in the window.
    fn entry_mut(&mut self, id: u64) -> Option<&mut Entry> {
        let i = id.checked_sub(self.first_id)?;
        self.log.get_mut(usize::try_from(i).ok()?)
    }
}

/// Today's admissions of a (project, model) whose bucket was dropped with an empty window.
#[derive(Debug, Clone, Copy)]
struct DayCount {
    day: i64,
    requests: u64,
}

/// Sweep no more often than once per this many live buckets: a sweep scans them all, and
/// doubling the threshold from what survives keeps its cost amortised O(1) per new bucket.
const MIN_SWEEP_AT: usize = 1024;

/// Every (project, model) the store knows of.
#[derive(Debug)]
struct Tables {
    /// project -> model -> counters: two lookups by `&str`, no key built per request.
    live: HashMap<Arc<str>, HashMap<String, Arc<Mutex<Bucket>>>>,
    live_len: usize,
    /// Day counts of pairs whose bucket was dropped, until their quota day ends: no log, no
    /// mutex, a few dozen bytes each.
    days: HashMap<Arc<str>, HashMap<Box<str>, DayCount>>,
    /// Every id a dropped bucket handed out is at most this. A bucket made later starts above
    /// it, so a late settlement of a dropped bucket's admission can never match a new entry.
    retired_ids: u64,
    /// Sweep when `live_len` reaches this, or when the quota day changes.
    sweep_at: usize,
    swept_day: i64,
}

impl Tables {
    fn new() -> Self {
        Tables {
            live: HashMap::new(),
            live_len: 0,
            days: HashMap::new(),
            retired_ids: 0,
            sweep_at: MIN_SWEEP_AT,
            swept_day: i64::MIN,
        }
    }

    /// Drop every bucket whose window is empty, keeping a non-zero day count aside, and every
    /// day count of a past day. A bucket another task holds a handle to is left for the next
    /// sweep: we hold the write lock, so no new handle can be taken while we look, and an
    /// unshared bucket can be read and dropped without anyone admitting on it meanwhile.
    fn sweep(&mut self, now: i64, day: i64) {
        let Tables {
            live,
            days,
            retired_ids,
            ..
        } = self;
        for (project, models) in live.iter_mut() {
            models.retain(|model, bucket| {
                let Some(b) = Arc::get_mut(bucket) else {
                    return true;
                };
                let b = b.get_mut().unwrap_or_else(|p| p.into_inner());
                b.prune(now, day);
                if !b.log.is_empty() {
                    // A burst leaves a large buffer behind; give most of it back.
                    if b.log.capacity() > 4 * b.log.len() + 64 {
                        b.log.shrink_to(2 * b.log.len());
                    }
                    return true;
                }
                *retired_ids = (*retired_ids).max(b.next_id);
                if b.day_requests > 0 {
                    days.entry(project.clone()).or_default().insert(
                        model.as_str().into(),
                        DayCount {
                            day: b.day,
                            requests: b.day_requests,
                        },
                    );
                }
                false
            });
        }
        live.retain(|_, models| !models.is_empty());
        for models in days.values_mut() {
            models.retain(|_, d| d.day == day);
        }
        days.retain(|_, models| !models.is_empty());
        self.live_len = self.live.values().map(HashMap::len).sum();
        self.sweep_at = (2 * self.live_len).max(MIN_SWEEP_AT);
        self.swept_day = day;
    }

    fn get(&self, project: &str, model: &str) -> Option<Arc<Mutex<Bucket>>> {
        self.live.get(project)?.get(model).cloned()
    }
}

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
    affinity: Mutex<HashMap<String, (String, i64)>>,
}

/// See [`MemoryStore::tracked`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tracked {
    pub buckets: usize,
    pub day_counts: usize,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic elsewhere while holding the lock leaves plain counters behind: keep using them.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl MemoryStore {
    pub fn new(clock: Arc<dyn Clock>, tz: Tz) -> Self {
        MemoryStore {
            clock,
            days: DayCache::new(tz),
            tables: RwLock::new(Tables::new()),
            cooldowns: Mutex::new(HashMap::new()),
            disabled: Mutex::new(HashMap::new()),
            affinity: Mutex::new(HashMap::new()),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Tables> {
        self.tables.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Tables> {
        self.tables.write().unwrap_or_else(|p| p.into_inner())
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
        let holds = lock(&self.cooldowns);
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
        // No bucket: it was dropped because its window emptied, so this admission has left
        // the window and there is nothing to correct.
        let Some(bucket) = self.read().get(&r.project, &r.model) else {
            return true;
        };
        let mut b = lock(&bucket);
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
            let mut b = lock(&b);
            b.prune(now, di.day);
            let u = b.usage();
            if u != Usage::default() {
                out.push((project.to_string(), model, u));
            }
        }
        out.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        Ok(out)
    }

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
            .saturating_add(i64::try_from(ms.min(super::MAX_HOLD_MS)).unwrap_or(i64::MAX));
        let mut holds = lock(&self.cooldowns);
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
        let mut holds = lock(&self.cooldowns);
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
        lock(&self.disabled).insert(kid.to_string(), reason.to_string());
        Ok(())
    }

    async fn key_states(&self, kids: &[Arc<str>]) -> Result<Vec<KeyState>, StoreError> {
        let d = lock(&self.disabled);
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

    async fn set_affinity(&self, resource: &str, kid: &str, ttl_ms: u64) -> Result<(), StoreError> {
        let until = self
            .clock
            .now_ms()
            .saturating_add(i64::try_from(ttl_ms).unwrap_or(i64::MAX));
        let mut a = lock(&self.affinity);
        let now = self.clock.now_ms();
        if a.len() > 100_000 {
            a.retain(|_, (_, t)| *t > now);
        }
        a.insert(resource.to_string(), (kid.to_string(), until));
        Ok(())
    }

    async fn affinity(&self, resource: &str) -> Result<Option<String>, StoreError> {
        let now = self.clock.now_ms();
        Ok(lock(&self.affinity)
            .get(resource)
            .filter(|(_, until)| *until > now)
            .map(|(kid, _)| kid.clone()))
    }

    async fn reset(&self, kind: ResetKind, scope: &ResetScope) -> Result<(), StoreError> {
        // As in reset.lua: a model filter also takes in holds on the whole project (`*`).
        let in_scope = |project: &str, model: &str| {
            scope
                .projects
                .as_ref()
                .is_none_or(|ps| ps.iter().any(|p| p == project))
                && scope
                    .model
                    .as_ref()
                    .is_none_or(|m| m == model || model == "*")
        };
        if kind == ResetKind::Cooldowns {
            lock(&self.cooldowns).retain(|(p, m), _| !in_scope(p, m));
            let mut d = lock(&self.disabled);
            match &scope.kids {
                Some(kids) => kids.iter().for_each(|k| {
                    d.remove(k);
                }),
                None => d.clear(),
            }
            return Ok(());
        }
        for (_, _, b) in self
            .all_buckets()
            .into_iter()
            .filter(|(p, m, _)| in_scope(p, m))
        {
            let mut b = lock(&b);
            if matches!(kind, ResetKind::Minute | ResetKind::All) {
                b.log.clear();
                b.tokens = 0;
            }
            if kind == ResetKind::Tokens {
                for e in b.log.iter_mut() {
                    e.tokens = 0;
                }
                b.tokens = 0;
            }
            if matches!(kind, ResetKind::Daily | ResetKind::All) {
                b.day_requests = 0;
            }
        }
        if matches!(kind, ResetKind::Daily | ResetKind::All) {
            for (project, models) in self.write().days.iter_mut() {
                models.retain(|model, _| !in_scope(project, model));
            }
        }
        Ok(())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn backend(&self) -> &'static str {
        "memory"
    }
}

impl MemoryStore {
    /// One pass of admission: `None` when every project that had room lost it to a concurrent
    /// admission between the look and the reservation.
    fn admit_pass(&self, req: &AdmitRequest) -> Option<AdmitOutcome> {
        let now = self.clock.now_ms();
        let di = self.days.at(now);
        // Usable keys by project, read under the disabled-keys lock and no longer.
        let groups: Vec<(Arc<str>, Vec<&Candidate>)> = {
            let disabled = lock(&self.disabled);
            by_project(&req.candidates)
                .into_iter()
                .map(|(p, keys)| {
                    let keys = if disabled.is_empty() {
                        keys
                    } else {
                        keys.into_iter()
                            .filter(|c| !disabled.contains_key(&*c.kid))
                            .collect()
                    };
                    (p, keys)
                })
                .collect()
        };
        let mut earliest_hold: Option<u64> = None;
        // (project position, usable keys, bucket, headroom)
        let mut open = Vec::new();
        let mut refused: Option<(LimitKind, u64, u64)> = None;
        for (pos, (project, keys)) in groups.into_iter().enumerate() {
            if keys.is_empty() {
                continue;
            }
            if let Some(left) = self.held(&project, &req.model, now) {
                earliest_hold = Some(earliest_hold.map_or(left, |e| e.min(left)));
                continue;
            }
            let limits = keys[0].limits;
            let bucket = self.bucket(&project, &req.model, di.day);
            let mut b = lock(&bucket);
            b.prune(now, di.day);
            match b.refusal(&limits, req.tokens, now, &di) {
                Some(r) => {
                    if refused.is_none_or(|w| r.2 < w.2) {
                        refused = Some(r);
                    }
                }
                None => {
                    let h = headroom(&limits, &b.usage(), req.tokens);
                    drop(b);
                    open.push((pos, keys, bucket, h, limits));
                }
            }
        }
        if open.is_empty() {
            return Some(match (refused, earliest_hold) {
                (Some((limit, limit_value, wait)), hold) => AdmitOutcome::Refused {
                    limit,
                    limit_value,
                    retry_after_ms: hold.map_or(wait, |h| h.min(wait)),
                },
                (None, hold) => AdmitOutcome::Unavailable {
                    retry_after_ms: hold,
                },
            });
        }
        // Order the open projects: most headroom first (ties in turn), or configuration order.
        let n = open.len();
        let start = (req.rotation % n as u64) as usize;
        let mut order: Vec<usize> = (0..n).map(|i| (start + i) % n).collect();
        if req.strategy == Strategy::Headroom {
            order.sort_by(|&a, &b| open[b].3.total_cmp(&open[a].3));
        } else {
            order.sort_by_key(|&i| open[i].0);
        }
        for i in order {
            let (_, keys, bucket, _, limits) = &open[i];
            let mut b = lock(bucket);
            b.prune(now, di.day);
            // Another task may have taken the room since we looked: check again under the lock.
            if b.refusal(limits, req.tokens, now, &di).is_some() {
                continue;
            }
            let id = b.reserve(req.tokens, now);
            let u = b.usage();
            let key = if req.strategy == Strategy::Ordered {
                keys[0]
            } else {
                keys[(req.rotation % keys.len() as u64) as usize]
            };
            return Some(AdmitOutcome::Admitted(Reservation {
                index: key.index,
                kid: key.kid.clone(),
                project: key.project.clone(),
                model: req.model.clone(),
                id,
                tokens: req.tokens,
                remaining_requests: limits.minute.saturating_sub(u.minute_requests),
                remaining_tokens: limits.token_minute.saturating_sub(u.minute_tokens),
                uncounted: false,
                local: false,
            }));
        }
        // Every open project filled up while we chose: the caller asks again.
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_times_survive_a_rebase_and_ids_stay_addressable() {
        let mut b = Bucket::default();
        let t0 = 1_700_000_000_000;
        let first = b.reserve(5, t0);
        // Traffic every 30 s for longer than an entry's time range: the log is never empty.
        let (mut now, mut last) = (t0, first);
        while now - t0 < REBASE_MS + 120_000 {
            now += 30_000;
            b.prune(now, 0);
            last = b.reserve(7, now);
        }
        assert!(b.epoch_ms > t0, "the epoch should have moved");
        let times: Vec<i64> = b.log.iter().map(|e| b.at_ms(e)).collect();
        assert_eq!(times, vec![now - 30_000, now]);
        assert_eq!(b.tokens, 14);
        b.entry_mut(last).expect("the newest admission").tokens = 1;
        assert!(b.entry_mut(last - 1).is_some());
        assert!(b.entry_mut(last - 2).is_none(), "pruned");
        assert!(b.entry_mut(first).is_none());
        assert!(b.entry_mut(last + 1).is_none());
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
        lock(&held).reserve(1, t0);
        assert!(Arc::ptr_eq(&held, &store.bucket(&p, "held", day)));
    }
}
