//! A client's own counters in memory: its sliding minute (requests and input tokens), its day's
//! requests, its requests in flight (each with a lease), and its day's and month's budget use,
//! checked and reserved under its own lock, held across the pool's admission so the two are
//! one step.

use parking_lot::Mutex;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use super::super::client::{CONCURRENCY_RETRY_MS, ClientAdmit, ClientHold, ClientLimit};
use super::super::{AdmitOutcome, AdmitRequest, Reservation};
use super::MemoryStore;

/// One client's counters.
#[derive(Debug, Default)]
pub(super) struct ClientCounters {
    /// (admitted at ms, id, tokens) of the last window, oldest first.
    pub(super) log: VecDeque<(i64, u64, u64)>,
    pub(super) tokens: u64,
    pub(super) day_requests: u64,
    /// id -> lease end (ms).
    pub(super) inflight: HashMap<u64, i64>,
    /// The earliest lease end in `inflight` (or later): lapsed leases are looked for only then.
    pub(super) next_lapse: i64,
    /// The day `day_requests` and `day_micros` count.
    pub(super) budget_day: i64,
    pub(super) day_micros: u64,
    pub(super) budget_month: i64,
    pub(super) month_micros: u64,
    pub(super) next_id: u64,
    /// Live session -> the id of its slot in `inflight` (at most `max_concurrent` entries:
    /// only a client with that limit holds slots).
    pub(super) sessions: HashMap<String, u64>,
}

impl ClientCounters {
    pub(super) fn prune(&mut self, now: i64, window_ms: i64, c: &ClientAdmit) {
        while let Some(&(at, _, t)) = self.log.front() {
            if at > now - window_ms {
                break;
            }
            self.tokens -= t;
            self.log.pop_front();
        }
        if !self.inflight.is_empty() && now >= self.next_lapse {
            self.inflight.retain(|_, until| *until > now);
            self.next_lapse = self.inflight.values().copied().min().unwrap_or(i64::MAX);
            let inflight = &self.inflight;
            self.sessions.retain(|_, id| inflight.contains_key(id));
        }
        let p = &c.period;
        if self.budget_day != p.day {
            self.budget_day = p.day;
            self.day_requests = 0;
            self.day_micros = 0;
        }
        if self.budget_month != p.month {
            self.budget_month = p.month;
            self.month_micros = 0;
        }
    }

    /// `None` if the client has room; else its limit, that limit's value and the wait.
    pub(super) fn refusal(
        &self,
        c: &ClientAdmit,
        tokens: u64,
        now: i64,
        window_ms: i64,
    ) -> Option<(ClientLimit, u64, u64)> {
        let caps = c.caps;
        let p = &c.period;
        if let Some(max) = caps.max_concurrent
            && self.inflight.len() as u64 >= max
        {
            return Some((ClientLimit::Concurrent, max, CONCURRENCY_RETRY_MS));
        }
        if let Some(rpd) = caps.rpd
            && self.day_requests >= rpd
        {
            return Some((ClientLimit::Rpd, rpd, (p.day_end_ms - now).max(1) as u64));
        }
        if let Some(b) = caps.monthly_micros
            && self.month_micros.saturating_add(c.cost_micros) > b
        {
            let wait = (p.month_end_ms - now).max(1) as u64;
            return Some((ClientLimit::MonthlyBudget, b, wait));
        }
        if let Some(b) = caps.daily_micros
            && self.day_micros.saturating_add(c.cost_micros) > b
        {
            return Some((
                ClientLimit::DailyBudget,
                b,
                (p.day_end_ms - now).max(1) as u64,
            ));
        }
        let n = self.log.len() as u64;
        if let Some(rpm) = caps.rpm
            && n >= rpm
        {
            let at = self.log[(n - rpm) as usize].0;
            return Some((ClientLimit::Rpm, rpm, (at + window_ms - now).max(1) as u64));
        }
        if let Some(tpm) = caps.tpm
            && self.tokens + tokens > tpm
        {
            let need = self.tokens + tokens - tpm;
            let (mut freed, mut wait) = (0, window_ms as u64);
            for &(at, _, t) in &self.log {
                freed += t;
                if freed >= need {
                    wait = (at + window_ms - now).max(1) as u64;
                    break;
                }
            }
            return Some((ClientLimit::Tpm, tpm, wait));
        }
        None
    }

    pub(super) fn reserve(&mut self, c: &ClientAdmit, tokens: u64, now: i64) -> ClientHold {
        self.next_id += 1;
        let id = self.next_id;
        self.log.push_back((now, id, tokens));
        self.tokens += tokens;
        self.day_requests += 1;
        if c.caps.max_concurrent.is_some() {
            let lease = i64::try_from(c.lease_ms).unwrap_or(i64::MAX);
            let until = now.saturating_add(lease);
            if self.inflight.is_empty() {
                self.next_lapse = until;
            }
            self.next_lapse = self.next_lapse.min(until);
            self.inflight.insert(id, until);
        }
        self.day_micros = self.day_micros.saturating_add(c.cost_micros);
        self.month_micros = self.month_micros.saturating_add(c.cost_micros);
        ClientHold {
            name: c.name.clone(),
            id,
            day: c.period.day,
            month: c.period.month,
            cost_micros: c.cost_micros,
            actual_cost_micros: None,
        }
    }

    fn settle(&mut self, h: &ClientHold, tokens: u64, cost: u64) {
        // Ids in the log are consecutive (every admission is logged, in order): found by
        // offset from the oldest, not by a scan of the window.
        let at = self
            .log
            .front()
            .and_then(|f| usize::try_from(h.id.checked_sub(f.1)?).ok());
        if let Some(e) = at.and_then(|i| self.log.get_mut(i)).filter(|e| e.1 == h.id) {
            self.tokens = self.tokens - e.2 + tokens;
            e.2 = tokens;
        }
        self.inflight.remove(&h.id);
        if self.budget_day == h.day {
            self.day_micros = self
                .day_micros
                .saturating_add(cost)
                .saturating_sub(h.cost_micros);
        }
        if self.budget_month == h.month {
            self.month_micros = self
                .month_micros
                .saturating_add(cost)
                .saturating_sub(h.cost_micros);
        }
    }
}

impl ClientCounters {
    /// What a Live session's usage adds: its tokens as one entry in the minute window (when
    /// the client has a rate limit) and its cost in the day's and month's budget use.
    pub(super) fn charge(&mut self, c: &ClientAdmit, tokens: u64, now: i64) -> (u64, u64) {
        if c.caps.rpm.is_some() || c.caps.tpm.is_some() {
            self.next_id += 1;
            self.log.push_back((now, self.next_id, tokens));
            self.tokens += tokens;
        }
        self.day_micros = self.day_micros.saturating_add(c.cost_micros);
        self.month_micros = self.month_micros.saturating_add(c.cost_micros);
        (self.day_micros, self.month_micros)
    }
}

impl MemoryStore {
    /// A client's counters, made on first use (one entry per client name ever counted: the
    /// table grows with configuration, not with traffic).
    pub(super) fn client_counters(&self, name: &Arc<str>) -> Arc<Mutex<ClientCounters>> {
        if let Some(c) = self.clients.read().get(name) {
            return c.clone();
        }
        self.clients
            .write()
            .entry(name.clone())
            .or_default()
            .clone()
    }

    /// `f` on the client's counters (pruned to now) when it has room for one more request of
    /// `tokens`, under its lock; else its limit, that limit's value and the wait.
    pub(super) fn with_room<T>(
        &self,
        c: &ClientAdmit,
        tokens: u64,
        f: impl FnOnce(&mut ClientCounters, i64) -> T,
    ) -> Result<T, (ClientLimit, u64, u64)> {
        let counters = self.client_counters(&c.name);
        let mut cc = counters.lock();
        let now = self.clock.now_ms();
        cc.prune(now, self.window_ms, c);
        if let Some(why) = cc.refusal(c, tokens, now, self.window_ms) {
            return Err(why);
        }
        Ok(f(&mut cc, now))
    }

    /// Admission with a client part: its counters checked first, then the pool's admission
    /// under the client's lock, and the client's reservation only if the pool admitted.
    pub(super) fn admit_client(&self, req: &AdmitRequest, c: &ClientAdmit) -> AdmitOutcome {
        let admitted = self.with_room(c, req.tokens, |cc, now| {
            let outcome = loop {
                if let Some(o) = self.admit_pass(req) {
                    break o;
                }
            };
            match outcome {
                AdmitOutcome::Admitted(mut r) => {
                    r.client = Some(cc.reserve(c, req.tokens, now));
                    AdmitOutcome::Admitted(r)
                }
                other => other,
            }
        });
        admitted.unwrap_or_else(|(limit, limit_value, retry_after_ms)| {
            AdmitOutcome::ClientRefused {
                limit,
                limit_value,
                retry_after_ms,
            }
        })
    }

    /// Settle a reservation's client part: its tokens, its slot, its budgets to the real cost.
    pub(super) fn settle_client(&self, r: &Reservation, tokens: u64) {
        let Some(h) = &r.client else { return };
        let counters = self.client_counters(&h.name);
        let cost = h.actual_cost_micros.unwrap_or(0);
        counters.lock().settle(h, tokens, cost);
    }
}
