//! What the status page adds from the ledger: the cost of today and of this month (billed and
//! at list price), and the forecast of each daily quota: per (project, model) with a daily
//! limit, and per model for the whole pool, with a warning when one runs out before the reset.

use std::collections::HashMap;

use chrono::{Datelike, TimeZone, Utc};

use super::Ledger;
use super::book::{HOUR_MS, MINUTE_MS, field};
use super::forecast::{self, Day, Forecast, History};
use super::query::{rfc3339, usd};

mod view;

pub use self::view::{
    CostView, ForecastLine, ForecastView, MAX_PAIRS, Money, Outlook, PairInput, PoolInput,
};

/// Pair warnings listed one by one at most; the rest are counted in one more line.
const PAIR_WARNINGS: usize = 5;
/// Minutes of history the forecast reads: its level window (6 h) and the current hour.
const FORECAST_MINUTES: usize = 7 * 60;
/// Hours of history the forecast reads: its profile's 7 earlier days, today and a margin.
const FORECAST_HOURS: usize = 9 * 24;

/// Requests, billed cost of one (project, model) or model today, from the hour ring.
#[derive(Default, Clone, Copy)]
struct Today {
    requests: u64,
    cost_nano: u64,
}

impl Ledger {
    /// Cost and forecast for the status page (reading Redis first when shared). A store error
    /// leaves what this replica already holds. Pairs past [`MAX_PAIRS`] (the least used) are
    /// counted, not forecast.
    pub async fn outlook(&self, pairs: &[PairInput], pools: &[PoolInput]) -> Outlook {
        let mut pairs = pairs.to_vec();
        let pairs_omitted = pairs.len().saturating_sub(MAX_PAIRS);
        if pairs_omitted > 0 {
            pairs.sort_by_key(|p| std::cmp::Reverse(p.used_today));
            pairs.truncate(MAX_PAIRS);
        }
        let pairs = &pairs[..];
        let now = self.clock.now_ms();
        let tz = self.timezone;
        let day_start = local_midnight(tz, now, false);
        let month_start = local_midnight(tz, now, true);
        let reset = crate::quota::DayInfo::at(tz, now).next_midnight_ms;
        // What the forecast reads: the level window's minutes, the profile's days of hours.
        let m_last = now.div_euclid(MINUTE_MS);
        let m0 = m_last - FORECAST_MINUTES as i64 + 1;
        let h_last = now.div_euclid(HOUR_MS);
        let f0 = h_last - FORECAST_HOURS as i64 + 1;
        // The month's cost needs up to 31 days of hours.
        let h0 = f0.min(month_start.div_euclid(HOUR_MS));
        if let Err(e) = self.refresh(Some(m0 * MINUTE_MS), Some(h0 * HOUR_MS)).await {
            tracing::warn!(error = %e, "usage history could not be read from Redis: the status shows what this replica holds");
        }
        let since = self.recording_since().await;

        // Ids of what is forecast. A model the ledger has not seen has no history yet; one it
        // cannot keep apart (past its cap) has none of its own.
        let untracked = |model: &str| self.models.get(model).is_none() && self.models.is_full();
        let mut pair_ids: HashMap<(u32, u32), usize> = HashMap::new();
        for (i, p) in pairs.iter().enumerate() {
            if let (Some(project), Some(model)) =
                (self.projects.get(&p.project), self.models.get(&p.model))
            {
                pair_ids.insert((project, model), i);
            }
        }
        let mut pool_ids: HashMap<u32, usize> = HashMap::new();
        for (i, p) in pools.iter().enumerate() {
            if let Some(model) = self.models.get(&p.model) {
                pool_ids.insert(model, i);
            }
        }
        let pair_tracked: Vec<bool> = pairs.iter().map(|p| !untracked(&p.model)).collect();
        let pool_tracked: Vec<bool> = pools.iter().map(|p| !untracked(&p.model)).collect();
        let mut pair_min = vec![vec![0f64; FORECAST_MINUTES]; pairs.len()];
        let mut pool_min = vec![vec![0f64; FORECAST_MINUTES]; pools.len()];
        let mut pair_hour = vec![vec![0f64; FORECAST_HOURS]; pairs.len()];
        let mut pool_hour = vec![vec![0f64; FORECAST_HOURS]; pools.len()];
        let mut pair_today = vec![Today::default(); pairs.len()];
        let mut pool_today = vec![Today::default(); pools.len()];
        let mut today = super::Counters::default();
        let mut month = super::Counters::default();
        // Minutes: the forecast's window, and today (from midnight, in minutes so a zone whose
        // offset is not whole hours still starts its day on time).
        let today_m0 = day_start.div_euclid(MINUTE_MS);
        self.each_bucket(false, m0.min(today_m0), m_last, |_, index, bucket| {
            let fi = (index >= m0).then(|| (index - m0) as usize);
            let is_today = index * MINUTE_MS >= day_start;
            for (s, c) in bucket {
                let r = c.0[field::REQUESTS];
                let pair = pair_ids.get(&(s.project, s.model));
                let pool = pool_ids.get(&s.model);
                if let Some(i) = fi {
                    if let Some(p) = pair {
                        pair_min[*p][i] += r as f64;
                    }
                    if let Some(p) = pool {
                        pool_min[*p][i] += r as f64;
                    }
                }
                if is_today {
                    today.add(c);
                    let t = Today {
                        requests: r,
                        cost_nano: c.0[field::COST],
                    };
                    if let Some(p) = pair {
                        add_today(&mut pair_today[*p], t);
                    }
                    if let Some(p) = pool {
                        add_today(&mut pool_today[*p], t);
                    }
                }
            }
        });
        // Hours: the forecast's days, and the month (from the hour its first midnight falls in).
        let month_h0 = month_start.div_euclid(HOUR_MS);
        self.each_bucket(true, h0, h_last, |_, index, bucket| {
            let fi = (index >= f0).then(|| (index - f0) as usize);
            for (s, c) in bucket {
                if let Some(i) = fi {
                    let r = c.0[field::REQUESTS] as f64;
                    if let Some(p) = pair_ids.get(&(s.project, s.model)) {
                        pair_hour[*p][i] += r;
                    }
                    if let Some(p) = pool_ids.get(&s.model) {
                        pool_hour[*p][i] += r;
                    }
                }
                if index >= month_h0 {
                    month.add(c);
                }
            }
        });

        let day = Day {
            now_ms: now,
            start_ms: day_start,
            reset_ms: reset,
        };
        let line = |project: Option<&str>,
                    model: &str,
                    limit: u64,
                    used: u64,
                    minutes: &[f64],
                    hours: &[f64],
                    t: Today,
                    tracked: bool| {
            let history = History {
                minutes_start_ms: m0 * MINUTE_MS,
                minutes,
                hours_start_ms: f0 * HOUR_MS,
                hours,
                recording_since_ms: since,
            };
            let mut l = ForecastLine {
                project: project.map(str::to_string),
                model: model.to_string(),
                daily_limit: limit,
                used_today: used,
                projected_requests: None,
                exhausted_at: None,
                resets_at: rfc3339(reset),
                projected_cost_usd: None,
                method: None,
                reason: None,
            };
            let mut runs_out = None;
            let projected = if tracked {
                forecast::forecast(&history, &day, used, (limit > 0).then_some(limit))
            } else {
                Forecast::Insufficient
            };
            match projected {
                Forecast::Insufficient if !tracked => {
                    l.reason = Some("model not tracked by the ledger (past its cap)")
                }
                Forecast::Insufficient => l.reason = Some("insufficient data"),
                Forecast::Projected(p) => {
                    let per_request = if t.requests > 0 {
                        t.cost_nano as f64 / t.requests as f64
                    } else {
                        0.0
                    };
                    l.projected_requests = Some(p.total.max(0.0).round() as u64);
                    l.exhausted_at = p.exhausted_at_ms.map(rfc3339);
                    l.projected_cost_usd =
                        Some(usd(t.cost_nano) + p.remaining.max(0.0) * per_request / 1e9);
                    l.method = Some(p.method);
                    // Worth a warning: a limit not yet used up, running out before the reset.
                    if used < limit {
                        runs_out = p.exhausted_at_ms.filter(|at| *at < day.reset_ms);
                    }
                }
            }
            (l, runs_out)
        };
        let mut warnings = Vec::new();
        let mut pool_lines = Vec::with_capacity(pools.len());
        for (i, p) in pools.iter().enumerate() {
            let (l, at) = line(
                None,
                &p.model,
                p.daily_limit,
                p.used_today,
                &pool_min[i],
                &pool_hour[i],
                pool_today[i],
                pool_tracked[i],
            );
            if let Some(at) = at {
                warnings.push(self.exhaustion_warning(&p.model, None, p.daily_limit, at, reset));
            }
            pool_lines.push(l);
        }
        let mut pair_lines = Vec::with_capacity(pairs.len());
        let mut pair_warnings = Vec::new();
        for (i, p) in pairs.iter().enumerate() {
            let (l, at) = line(
                Some(&p.project),
                &p.model,
                p.daily_limit,
                p.used_today,
                &pair_min[i],
                &pair_hour[i],
                pair_today[i],
                pair_tracked[i],
            );
            if let Some(at) = at {
                pair_warnings.push(self.exhaustion_warning(
                    &p.model,
                    Some(&p.project),
                    p.daily_limit,
                    at,
                    reset,
                ));
            }
            pair_lines.push(l);
        }
        let more = pair_warnings.len().saturating_sub(PAIR_WARNINGS);
        warnings.extend(pair_warnings.into_iter().take(PAIR_WARNINGS));
        if more > 0 {
            warnings.push(format!(
                "{more} more projects are projected to reach a daily limit before the reset"
            ));
        }
        Outlook {
            cost: CostView {
                today: money(&today),
                month: money(&month),
                unpriced_requests_today: today.0[field::UNPRICED],
                source: self.backend(),
            },
            forecast: ForecastView {
                pairs: pair_lines,
                pairs_omitted,
                pool: pool_lines,
            },
            warnings,
        }
    }

    fn exhaustion_warning(
        &self,
        model: &str,
        project: Option<&str>,
        limit: u64,
        at_ms: i64,
        reset_ms: i64,
    ) -> String {
        let local = Utc
            .timestamp_millis_opt(at_ms)
            .single()
            .unwrap_or_default()
            .with_timezone(&self.timezone);
        let hours = (reset_ms - at_ms) as f64 / HOUR_MS as f64;
        let whose = match project {
            Some(p) => format!("project {p}'s"),
            None => "the pool's".to_string(),
        };
        format!(
            "{model}: {whose} daily limit of {limit} requests is projected to run out at {} ({}), {hours:.1} h before the quota resets",
            local.format("%H:%M %Z"),
            self.timezone.name()
        )
    }
}

fn add_today(t: &mut Today, o: Today) {
    t.requests += o.requests;
    t.cost_nano = t.cost_nano.saturating_add(o.cost_nano);
}

fn money(c: &super::Counters) -> Money {
    Money {
        cost_usd: usd(c.0[field::COST]),
        list_cost_usd: usd(c.0[field::LIST_COST]),
    }
}

/// The last local midnight at or before `now` (of the month's first day when `month`).
pub(crate) fn local_midnight(tz: chrono_tz::Tz, now: i64, month: bool) -> i64 {
    let local = Utc
        .timestamp_millis_opt(now)
        .single()
        .unwrap_or_default()
        .with_timezone(&tz);
    let mut date = local.date_naive();
    if month {
        date = date.with_day(1).unwrap_or(date);
    }
    crate::quota::clock::midnight_ms(tz, date).unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::ledger::Counters;
    use crate::quota::{Clock, ManualClock};

    fn ledger_at(clock: Arc<ManualClock>) -> Arc<Ledger> {
        Ledger::in_memory_at(clock)
    }

    fn pair(used: u64) -> (Vec<PairInput>, Vec<PoolInput>) {
        (
            vec![PairInput {
                project: "p1".into(),
                model: "gemini-2.5-pro".into(),
                daily_limit: 1500,
                used_today: used,
            }],
            vec![PoolInput {
                model: "gemini-2.5-pro".into(),
                daily_limit: 1500,
                used_today: used,
            }],
        )
    }

    #[tokio::test]
    async fn a_quota_running_out_before_the_reset_is_forecast_and_warned_about() {
        // 2026-03-16 16:00 UTC = 09:00 PDT; the reset is 15 hours away.
        let t0 = 1_773_676_800_000;
        let clock = Arc::new(ManualClock::new(t0 - 3 * HOUR_MS));
        let ledger = ledger_at(clock.clone());
        let (pairs, pools) = pair(0);
        let early = ledger.outlook(&pairs, &pools).await;
        assert_eq!(early.forecast.pool[0].reason, Some("insufficient data"));
        assert!(early.forecast.pool[0].projected_requests.is_none());
        assert!(early.warnings.is_empty());

        // Three hours at 4 requests a minute, each costing something.
        let series = ledger.series(Some("p1"), "gemini-2.5-pro", Some("kid1"), "client1", true);
        let mut one = Counters::one(field::REQUESTS);
        one.0[field::COST] = 1_000_000;
        while clock.now_ms() < t0 {
            for _ in 0..4 {
                ledger.add(series, &one);
            }
            clock.advance(MINUTE_MS);
        }
        // 1,200 used by 09:00: 300 left at 4 a minute is 75 minutes, far before midnight.
        let (pairs, pools) = pair(1200);
        let o = ledger.outlook(&pairs, &pools).await;
        let line = &o.forecast.pairs[0];
        assert_eq!(line.reason, None);
        let method = line.method.unwrap();
        assert!(method.starts_with("ewma"), "{method}");
        let at = line.exhausted_at.as_deref().unwrap();
        let at_ms = chrono::DateTime::parse_from_rfc3339(at)
            .unwrap()
            .timestamp_millis();
        let minutes = (at_ms - t0) / MINUTE_MS;
        assert!(
            (60..=90).contains(&minutes),
            "runs out {minutes} min from now"
        );
        assert!(line.projected_requests.unwrap() > 1500);
        // The ledger saw 720 requests (06:00 to 09:00 Pacific, all today) at 0.001 USD: the
        // projection adds the rest of the day at that cost per request.
        let cost = line.projected_cost_usd.unwrap();
        assert!(cost > 0.72, "{cost}");
        assert_eq!(o.warnings.len(), 2, "{:?}", o.warnings);
        let w = &o.warnings[0];
        assert!(
            w.starts_with("gemini-2.5-pro: the pool's daily limit of 1500"),
            "{w}"
        );
        assert!(w.contains("PDT (America/Los_Angeles)"), "{w}");
        assert!(w.contains(" h before the quota resets"), "{w}");
        assert!(o.warnings[1].contains("project p1's"), "{}", o.warnings[1]);
        assert!((o.cost.today.cost_usd - 0.72).abs() < 1e-9, "{:?}", o.cost);

        // A limit already used up is no forecast warning (the status has its own error).
        let (pairs, pools) = pair(1500);
        assert!(ledger.outlook(&pairs, &pools).await.warnings.is_empty());
    }

    #[test]
    fn local_midnights_are_in_the_quota_zone() {
        let tz = chrono_tz::America::Los_Angeles;
        // 2026-03-15 10:00 UTC = 03:00 PDT.
        let now = 1_773_568_800_000;
        let day = local_midnight(tz, now, false);
        assert_eq!(rfc3339(day), "2026-03-15T07:00:00Z");
        let month = local_midnight(tz, now, true);
        // March 1st was still standard time (PST, UTC-8).
        assert_eq!(rfc3339(month), "2026-03-01T08:00:00Z");
    }
}
