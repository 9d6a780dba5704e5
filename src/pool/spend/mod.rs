//! `limits.projects.P.monthly_spend_cap_usd`: each capped project's spend this calendar month
//! (in `limits.timezone`), as the usage ledger prices it, held like a budget. Spend is read
//! from the ledger at start-up, on reload and (at most once a second) after answers on a
//! capped project were recorded, never per request; between readings this replica adds the
//! cost of its own answers. A project whose settled spend reaches its cap is held whole in the
//! store (`cool_down(project, "*")`, for every replica) until the next month starts, and
//! admission skips a capped project whose spend plus a request's least cost (its input tokens)
//! would pass the cap.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Weak};

use arc_swap::ArcSwap;
use chrono::{Datelike, Months, TimeZone, Utc};
use chrono_tz::Tz;
use serde::Serialize;

use crate::config::LimitsConfig;
use crate::error::ApiError;
use crate::ledger::Ledger;
use crate::ledger::query::usd;
use crate::quota::{Candidate, Clock, QuotaStore};

mod reading;

use self::reading::Seen;

/// With Redis, how long this replica's recorded costs may take to be readable in the shared
/// ledger: its own costs of that long before a reading are counted on top of it (counted twice
/// at worst, which errs towards holding early rather than late).
const SHARED_LAG_MS: i64 = 3_000;

/// A capped project's month on the status page.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SpendCapView {
    pub project: String,
    /// Billed cost this calendar month, as best known to this replica.
    pub month_spend_usd: f64,
    pub cap_usd: f64,
    /// `month_spend_usd` as a percentage of `cap_usd`.
    pub percent: f64,
    /// When the month (and the hold, if the cap is reached) ends, RFC 3339.
    pub resets_at: String,
    /// Whether the spend has reached the cap.
    pub reached: bool,
}

/// The spend caps (see the module docs); one per process, kept across reloads.
pub struct SpendCaps {
    me: Weak<SpendCaps>,
    /// Cap per project, nano-USD (a reload replaces them).
    caps: ArcSwap<HashMap<Arc<str>, u64>>,
    tz: Tz,
    seen: Mutex<HashMap<Arc<str>, Seen>>,
    store: Arc<dyn QuotaStore>,
    ledger: Weak<Ledger>,
    clock: Arc<dyn Clock>,
    /// [`SHARED_LAG_MS`] with Redis, 0 in memory (the ledger holds an answer once recorded).
    lag_ms: i64,
    /// A reading task runs; and answers were recorded since it last read.
    checking: AtomicBool,
    dirty: AtomicBool,
}

impl std::fmt::Debug for SpendCaps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpendCaps")
            .field("projects", &self.caps.load().len())
            .finish()
    }
}

/// The caps configured, in nano-USD.
fn caps_of(limits: &LimitsConfig) -> HashMap<Arc<str>, u64> {
    limits
        .projects
        .iter()
        .filter_map(|(p, l)| {
            let usd = l.monthly_spend_cap_usd?;
            Some((p.as_str().into(), (usd * 1e9).round() as u64))
        })
        .collect()
}

/// The start of the calendar month `now` falls in, and of the next, in `tz` (Unix ms).
pub fn month_bounds(tz: Tz, now: i64) -> (i64, i64) {
    let local = Utc
        .timestamp_millis_opt(now)
        .single()
        .unwrap_or_default()
        .with_timezone(&tz);
    let first = local.date_naive().with_day(1).unwrap_or(local.date_naive());
    let next = first.checked_add_months(Months::new(1)).unwrap_or(first);
    // A midnight skipped by a clock change: the first moment after it.
    let at = |d| crate::quota::clock::midnight_ms(tz, d).unwrap_or(now);
    (at(first), at(next))
}

/// The opening of a spend cap hold's reason (the rest tells the cap and the spend).
const HOLD_REASON: &str = "monthly spend cap";

/// What a client key sees of the spend caps: that a project is held at its cap, not what it
/// spends (the status page shows clients the pool's health, not its cost). `reasons`: the
/// keys' hold reasons.
pub fn hide_spend<'a>(
    caps: &mut Vec<SpendCapView>,
    reasons: impl IntoIterator<Item = &'a mut Option<String>>,
) {
    caps.clear();
    for r in reasons.into_iter().flatten() {
        if r.starts_with(HOLD_REASON) {
            *r = format!("{HOLD_REASON} reached");
        }
    }
}

impl SpendCaps {
    /// The caps of `limits`, watching `ledger`'s costs; reads the month's spend at once when
    /// any project is capped.
    pub fn new(
        limits: &LimitsConfig,
        store: Arc<dyn QuotaStore>,
        ledger: &Arc<Ledger>,
    ) -> Arc<SpendCaps> {
        let caps = Arc::new_cyclic(|me| SpendCaps {
            me: me.clone(),
            caps: ArcSwap::from_pointee(caps_of(limits)),
            tz: limits.timezone,
            seen: Mutex::new(HashMap::new()),
            lag_ms: if ledger.backend() == "redis" {
                SHARED_LAG_MS
            } else {
                0
            },
            store,
            ledger: Arc::downgrade(ledger),
            clock: ledger.clock.clone(),
            checking: AtomicBool::new(false),
            dirty: AtomicBool::new(false),
        });
        ledger.watch_costs(caps.clone());
        caps.check_soon();
        caps
    }

    /// A reloaded configuration's caps (the time zone is restart-only); read again at once.
    pub fn reconfigure(&self, limits: &LimitsConfig) {
        let caps = caps_of(limits);
        self.seen.lock().retain(|p, _| caps.contains_key(p));
        self.caps.store(Arc::new(caps));
        self.check_soon();
    }

    /// Take out of `candidates` the capped projects whose spend, plus what `tokens` input
    /// tokens of `model` cost there, would pass their cap. When that leaves none (of some),
    /// the answer: a 429 until the month turns.
    pub fn screen(
        &self,
        candidates: &mut Vec<Candidate>,
        model: &str,
        tokens: u64,
    ) -> Option<ApiError> {
        let caps = self.caps.load();
        if caps.is_empty() || candidates.is_empty() {
            return None;
        }
        let ledger = self.ledger.upgrade()?;
        let now = self.clock.now_ms();
        let (month_start, next) = month_bounds(self.tz, now);
        {
            let seen = self.seen.lock();
            candidates.retain(|c| {
                let Some(cap) = caps.get(&c.project) else {
                    return true;
                };
                let spent = seen
                    .get(&c.project)
                    .filter(|s| s.month_start == month_start)
                    .map_or(0, |s| s.at_most(self.lag_ms));
                let cost = ledger.input_cost_nano(model, &c.project, tokens);
                spent < *cap && spent.saturating_add(cost) <= *cap
            });
        }
        if !candidates.is_empty() {
            return None;
        }
        let retry_after_ms = u64::try_from(next - now).unwrap_or(0).max(1);
        Some(ApiError::PoolExhausted {
            message: format!(
                "Every project that can serve {model} has reached its monthly spend cap (limits.projects.PROJECT.monthly_spend_cap_usd), or would pass it with this request. Retry in {}.",
                crate::error::format_retry_delay(retry_after_ms)
            ),
            retry_after_ms,
        })
    }

    /// Each capped project's month as best known now, by project name.
    pub fn views(&self) -> Vec<SpendCapView> {
        let caps = self.caps.load();
        let now = self.clock.now_ms();
        let (month_start, next) = month_bounds(self.tz, now);
        let resets_at = crate::ledger::query::rfc3339(next);
        let seen = self.seen.lock();
        let mut out: Vec<SpendCapView> = caps
            .iter()
            .map(|(p, cap)| {
                let spent = seen
                    .get(p)
                    .filter(|s| s.month_start == month_start)
                    .map_or(0, Seen::shown);
                SpendCapView {
                    project: p.to_string(),
                    month_spend_usd: usd(spent),
                    cap_usd: usd(*cap),
                    percent: (spent as f64 * 10_000.0 / (*cap).max(1) as f64).round() / 100.0,
                    resets_at: resets_at.clone(),
                    reached: spent >= *cap,
                }
            })
            .collect();
        out.sort_by(|a, b| a.project.cmp(&b.project));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_month_runs_from_the_first_midnight_to_the_next_in_the_zone() {
        let tz: Tz = "America/Los_Angeles".parse().unwrap();
        // 2026-12-06T19:00Z: December in Los Angeles (UTC-8).
        let now = Utc
            .with_ymd_and_hms(2026, 12, 6, 19, 0, 0)
            .unwrap()
            .timestamp_millis();
        let (start, next) = month_bounds(tz, now);
        assert_eq!(
            start,
            Utc.with_ymd_and_hms(2026, 12, 1, 8, 0, 0)
                .unwrap()
                .timestamp_millis()
        );
        assert_eq!(
            next,
            Utc.with_ymd_and_hms(2027, 1, 1, 8, 0, 0)
                .unwrap()
                .timestamp_millis()
        );
        // 2026-11-01T05:00Z is still October in Los Angeles.
        let oct = Utc
            .with_ymd_and_hms(2026, 11, 1, 5, 0, 0)
            .unwrap()
            .timestamp_millis();
        assert_eq!(
            month_bounds(tz, oct).1,
            Utc.with_ymd_and_hms(2026, 11, 1, 7, 0, 0)
                .unwrap()
                .timestamp_millis(),
            "November starts at PDT midnight"
        );
    }
}
