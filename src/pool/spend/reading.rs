//! The spend caps' readings: each capped project's settled spend this month read from the
//! ledger (at most once a second while answers keep coming, again while the shared ledger lags
//! behind this replica's costs), a project at its cap held until the month turns; and between
//! readings, this replica's own billed costs, kept in short time slots.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::{HOLD_REASON, SpendCaps, month_bounds};
use crate::ledger::CostWatch;
use crate::ledger::query::usd;

/// Readings at most this often while answers on capped projects keep coming.
const CHECK_EVERY: Duration = Duration::from_secs(1);
/// Readings taken again, at most, while this replica's costs say a cap is reached and the
/// shared ledger does not show it yet.
const CATCH_UP_TRIES: u32 = 5;
/// This replica's costs since the last reading are kept in slots this wide (bounded).
const SLOT_MS: i64 = 100;
const SLOTS_KEPT: usize = 256;

/// One capped project as this replica sees it.
#[derive(Debug, Default)]
pub(super) struct Seen {
    /// The month the numbers belong to (its start, Unix ms).
    pub(super) month_start: i64,
    /// Settled spend this month at the last reading (nano-USD), and when it was read.
    pub(super) read_nano: u64,
    pub(super) read_at: i64,
    /// This replica's billed costs by time slot, since a little before the last reading.
    pub(super) recent: VecDeque<(i64, u64)>,
}

impl Seen {
    /// Spend as best known now, for holding back: the reading, plus this replica's costs it
    /// may not hold yet (those of `lag_ms` before it counted again: early rather than late).
    pub(super) fn at_most(&self, lag_ms: i64) -> u64 {
        let from = self.read_at - lag_ms;
        // A slot that ends after `from` may hold costs the reading lacks.
        self.sum_from(|at| at + SLOT_MS > from)
    }

    /// Spend as shown: the reading, plus this replica's costs recorded after it.
    pub(super) fn shown(&self) -> u64 {
        self.sum_from(|at| at >= self.read_at)
    }

    fn sum_from(&self, counts: impl Fn(i64) -> bool) -> u64 {
        self.recent
            .iter()
            .filter(|(at, _)| counts(*at))
            .fold(self.read_nano, |sum, (_, n)| sum.saturating_add(*n))
    }
}

impl SpendCaps {
    /// Start a reading task unless one runs (it reads again while answers keep coming).
    pub(super) fn check_soon(&self) {
        self.dirty.store(true, Ordering::Release);
        if self.caps.load().is_empty() || self.checking.swap(true, Ordering::AcqRel) {
            return;
        }
        let (Some(me), Ok(rt)) = (self.me.upgrade(), tokio::runtime::Handle::try_current()) else {
            self.checking.store(false, Ordering::Release);
            return;
        };
        rt.spawn(async move {
            loop {
                let mut tries = 0;
                while me.dirty.swap(false, Ordering::AcqRel) || tries > 0 {
                    let behind = me.check().await;
                    if behind && tries < CATCH_UP_TRIES {
                        // This replica's costs reach a cap the shared ledger does not show
                        // yet: read again once they are written.
                        tries += 1;
                        tokio::time::sleep(Duration::from_millis(me.lag_ms.max(500) as u64)).await;
                        continue;
                    }
                    tries = 0;
                    tokio::time::sleep(CHECK_EVERY).await;
                }
                me.checking.store(false, Ordering::Release);
                // An answer recorded between the last look and the flag's release.
                if !me.dirty.load(Ordering::Acquire) || me.checking.swap(true, Ordering::AcqRel) {
                    return;
                }
            }
        });
    }

    /// Read each capped project's settled spend this month; hold the ones at their cap until
    /// the month turns. True when this replica's costs put a project at its cap that the
    /// reading does not (the shared ledger is behind).
    async fn check(&self) -> bool {
        let caps = self.caps.load_full();
        let Some(ledger) = self.ledger.upgrade() else {
            return false;
        };
        let (month_start, next) = month_bounds(self.tz, self.clock.now_ms());
        let projects: Vec<&str> = caps.keys().map(|p| &**p).collect();
        let read = match ledger.project_costs_since(month_start, &projects).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "the month's spend could not be read for the spend caps: the last reading stays");
                return false;
            }
        };
        // Dated when it returned, not when it was asked: a cost billed while the shared ledger
        // was read, and written there before the read ran, is in the reading, and counted
        // again after it would show it twice (a slow Redis showed $0.90 for $0.60 spent). A
        // cost billed then and not yet written shows at the next reading instead, as any cost
        // the shared ledger has not caught up with does.
        let now = self.clock.now_ms();
        let mut behind = false;
        let mut reached = Vec::new();
        {
            let mut seen = self.seen.lock();
            for ((project, cap), spent) in caps.iter().zip(read) {
                let s = seen.entry(project.clone()).or_default();
                if s.month_start != month_start {
                    *s = Seen {
                        month_start,
                        ..Seen::default()
                    };
                }
                s.read_nano = spent;
                s.read_at = now;
                let keep_from = now - self.lag_ms;
                s.recent.retain(|(at, _)| at + SLOT_MS > keep_from);
                metrics::gauge!("gqp_project_spend_cap_ratio", "project" => project.to_string())
                    .set(s.shown() as f64 / (*cap).max(1) as f64);
                if spent >= *cap {
                    reached.push((project.clone(), *cap, spent));
                } else if s.at_most(self.lag_ms) >= *cap {
                    behind = true;
                }
            }
        }
        let hold_ms = u64::try_from(next - now).unwrap_or(0).max(1);
        for (project, cap, spent) in reached {
            let reason = format!(
                "{HOLD_REASON} of ${:.2} reached (${:.2} spent)",
                usd(cap),
                usd(spent)
            );
            tracing::warn!(project = %project, hold_ms, "{reason}: no more requests on it until the month turns");
            if let Err(e) = self.store.cool_down(&project, "*", hold_ms, &reason).await {
                tracing::warn!(error = %e, "could not record a spend cap's hold");
            }
        }
        behind
    }
}

impl CostWatch for SpendCaps {
    fn watches(&self, project: &str) -> bool {
        self.caps.load().contains_key(project)
    }

    fn billed(&self, project: &Arc<str>, nano: u64) {
        let now = self.clock.now_ms();
        let month_start = month_bounds(self.tz, now).0;
        {
            let mut seen = self.seen.lock();
            let s = seen.entry(project.clone()).or_default();
            if s.month_start != month_start {
                *s = Seen {
                    month_start,
                    ..Seen::default()
                };
            }
            let slot = now - now.rem_euclid(SLOT_MS);
            match s.recent.back_mut() {
                Some((at, n)) if *at == slot => *n = n.saturating_add(nano),
                _ => {
                    if s.recent.len() >= SLOTS_KEPT {
                        // Readings failing for long: fold the oldest slot into the next.
                        if let Some((_, oldest)) = s.recent.pop_front()
                            && let Some((_, n)) = s.recent.front_mut()
                        {
                            *n = n.saturating_add(oldest);
                        }
                    }
                    s.recent.push_back((slot, nano));
                }
            }
        }
        self.check_soon();
    }
}
