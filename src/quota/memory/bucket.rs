//! One (project, model)'s counters in memory: the sliding 60 s log of admissions (8 bytes
//! each) with their tokens, and the quota day's request count.

use std::collections::VecDeque;

use super::super::{DayInfo, Limits, MINUTE_MS, Usage};
use crate::error::LimitKind;

/// One admission in 8 bytes, so even a log of millions of admissions a minute stays small.
/// Its id is implicit: the log holds consecutive ids, the first being `Bucket::first_id`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Entry {
    /// Milliseconds since `Bucket::epoch_ms`.
    pub(super) at: u32,
    /// Reserved (then settled) input tokens. A request is capped at the body size limit, so
    /// its count is far below u32::MAX; larger values are clamped.
    pub(super) tokens: u32,
}

/// Rebase entry times before they could overflow `Entry::at` (about 24 days).
pub(super) const REBASE_MS: i64 = 1 << 31;

pub(super) fn clamp_tokens(tokens: u64) -> u32 {
    u32::try_from(tokens).unwrap_or(u32::MAX)
}

/// The counters of one (project, model).
#[derive(Debug)]
pub(super) struct Bucket {
    /// Admissions of the last 60 s, oldest first.
    pub(super) log: VecDeque<Entry>,
    /// Where entry times count from.
    pub(super) epoch_ms: i64,
    /// The id of the log's first entry.
    pub(super) first_id: u64,
    pub(super) tokens: u64,
    pub(super) day: i64,
    pub(super) day_requests: u64,
    pub(super) next_id: u64,
    /// Length of the sliding window (`limits.window_secs`; Google's is 60 s).
    pub(super) window_ms: i64,
}

impl Default for Bucket {
    fn default() -> Self {
        Bucket {
            log: VecDeque::new(),
            epoch_ms: 0,
            first_id: 0,
            tokens: 0,
            day: 0,
            day_requests: 0,
            next_id: 0,
            window_ms: MINUTE_MS,
        }
    }
}

impl Bucket {
    pub(super) fn at_ms(&self, e: &Entry) -> i64 {
        self.epoch_ms + i64::from(e.at)
    }

    /// Forget admissions that are 60 s old or older: the window is (now - 60 s, now].
    pub(super) fn prune(&mut self, now: i64, day: i64) {
        while let Some(e) = self.log.front() {
            if self.at_ms(e) > now - self.window_ms {
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

    pub(super) fn usage(&self) -> Usage {
        Usage {
            minute_requests: self.log.len() as u64,
            minute_tokens: self.tokens,
            daily_requests: self.day_requests,
        }
    }

    /// `None` if there is room; else the limit holding the request back and how long until
    /// it would fit.
    pub(super) fn refusal(
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
            let wait = (self.at_ms(&e) + self.window_ms - now).max(1) as u64;
            worst = Some((LimitKind::RequestsPerMinute, l.minute, wait));
        }
        if self.tokens + tokens > l.token_minute {
            let need = self.tokens + tokens - l.token_minute;
            let mut freed = 0;
            let mut wait = self.window_ms as u64;
            for e in &self.log {
                freed += u64::from(e.tokens);
                if freed >= need {
                    wait = (self.at_ms(e) + self.window_ms - now).max(1) as u64;
                    break;
                }
            }
            if worst.is_none_or(|w| wait > w.2) {
                worst = Some((LimitKind::TokensPerMinute, l.token_minute, wait));
            }
        }
        worst
    }

    pub(super) fn reserve(&mut self, tokens: u64, now: i64) -> u64 {
        let id = self.push(tokens, now);
        self.day_requests += 1;
        id
    }

    /// An entry in the minute window, not counted in the day (a Live session's usage).
    pub(super) fn push(&mut self, tokens: u64, now: i64) -> u64 {
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
        self.next_id
    }

    /// The entry of admission `id`, while it is in the window.
    pub(super) fn entry_mut(&mut self, id: u64) -> Option<&mut Entry> {
        let i = id.checked_sub(self.first_id)?;
        self.log.get_mut(usize::try_from(i).ok()?)
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
}
