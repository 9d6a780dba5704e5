//! The forecast of when a daily quota runs out: requests projected to the next quota-day reset
//! and the moment the daily limit is reached, from the ledger's per-minute and per-hour history.
//!
//! The method, in plain words (`forecast`):
//! 1. The recent rate is the requests per minute of the last hour, recent minutes weighing more
//!    (exponential weights, half-life 15 min).
//! 2. When earlier days were recorded at this time of day (up to 7, 24 h apart), the rest of the
//!    day follows their average hour-by-hour shape, scaled by how the last 6 hours compare with
//!    the same 6 hours on those days (recent hours weighing more, half-life 2 h; pulled toward 1
//!    by a few requests' worth so that a quiet night does not swing it); that shaped projection
//!    and the flat recent rate are blended n : 1 for n such days.
//! 3. The limit is reached where the cumulative projection crosses it, walking hour by hour.
//!
//! Under an hour of recording it falls back to the straight line (`linear`), and under
//! `MIN_HISTORY_MS` it says nothing. Pure functions: no clock, no allocation, no I/O.

use crate::quota::clock::DAY_MS;

const MINUTE_MS: i64 = 60_000;
const HOUR_MS: i64 = 3_600_000;

/// Under this much recording the forecast is `Insufficient`.
pub const MIN_HISTORY_MS: i64 = 10 * MINUTE_MS;
/// Under this much recording (or recent minutes missing from the history) the forecast is the
/// straight line: the recent rate needs its hour.
pub const MIN_RATE_HISTORY_MS: i64 = HOUR_MS;

/// The recent rate: the last hour's complete minutes, weights halving every 15 minutes.
const RECENT_WINDOW_MIN: i64 = 60;
const RECENT_HALF_LIFE_MIN: f64 = 15.0;
/// Below this many minutes of recent history (unweighted) the recent rate is not trusted.
const MIN_RECENT_MINUTES: f64 = 10.0;
/// Today's level against the profile: the last 6 hours, weights halving every 2 hours. Longer
/// than the recent rate's window because a day's level moves slowly and counts are noisy: on the
/// back-test's flat traffic, 3 h / 1 h made the forecast 1.3x the straight line's error, 6 h / 2 h
/// 1.05x; longer still would be smoother but slower to follow a day unlike the others.
const LEVEL_WINDOW_MIN: i64 = 360;
const LEVEL_HALF_LIFE_MIN: f64 = 120.0;
/// Pseudo-requests pulling the level toward 1 (today like the earlier days) when traffic is thin.
const LEVEL_PRIOR: f64 = 5.0;
/// Beyond this (36 million years) a time is nonsense: `forecast` answers with `linear`.
const SANE_MS: i64 = 1 << 60;
/// At most this many earlier days form the time-of-day profile.
const PROFILE_DAYS: i64 = 7;
/// Hour slots from the level window's start to the reset: 6 h + a 25 h day + rounding.
const MAX_SLOTS: usize = 34;

/// `Projection::method` values.
pub const METHOD_LINEAR: &str = "linear";
pub const METHOD_EWMA: &str = "ewma_1h";
/// `ewma_1h+time_of_day_{n}d` for a profile of n earlier days.
pub const METHOD_TIME_OF_DAY: [&str; PROFILE_DAYS as usize] = [
    "ewma_1h+time_of_day_1d",
    "ewma_1h+time_of_day_2d",
    "ewma_1h+time_of_day_3d",
    "ewma_1h+time_of_day_4d",
    "ewma_1h+time_of_day_5d",
    "ewma_1h+time_of_day_6d",
    "ewma_1h+time_of_day_7d",
];

/// Request counts the ledger holds for one series, both dense and oldest first.
#[derive(Debug, Clone, Copy)]
pub struct History<'a> {
    /// Start (Unix ms, minute-aligned) of `minutes[0]`.
    pub minutes_start_ms: i64,
    /// Requests per minute, up to the last 48 h; the last entry is the current (partial) minute.
    pub minutes: &'a [f64],
    /// Start (Unix ms, hour-aligned) of `hours[0]`.
    pub hours_start_ms: i64,
    /// Requests per hour, up to the last 35 days; the last entry is the current (partial) hour.
    pub hours: &'a [f64],
    /// Since when the ledger has been recording (Unix ms): before it, zeros mean "unknown", not
    /// "no traffic".
    pub recording_since_ms: i64,
}

/// The quota day being forecast.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Day {
    pub now_ms: i64,
    /// Start of the current quota day.
    pub start_ms: i64,
    /// The next reset.
    pub reset_ms: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Forecast {
    /// Under `MIN_HISTORY_MS` (10 min) of recording.
    Insufficient,
    Projected(Projection),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Projection {
    /// Requests expected from now until the reset (not counting those already made).
    pub remaining: f64,
    /// Requests by the reset: `used_today` + `remaining`.
    pub total: f64,
    /// When the daily limit is reached, if before the reset (Unix ms). A limit already reached
    /// (`used_today >= limit`, a limit of 0 included) gives `now`: the moment it was crossed is
    /// not known here.
    pub exhausted_at_ms: Option<i64>,
    /// Which method produced it: `METHOD_LINEAR`, `METHOD_EWMA` (no profile in history) or one
    /// of `METHOD_TIME_OF_DAY`.
    pub method: &'static str,
}

/// Project the day's requests. `used_today`: the quota day's count so far (authoritative; the
/// history may lag it). `limit`: the daily limit (None: just project).
///
/// Never panics: empty or short slices, NaN or negative counts (read as 0), a limit of 0, `now`
/// at or past the reset (nothing remains) all give an answer.
pub fn forecast(h: &History, day: &Day, used_today: u64, limit: Option<u64>) -> Forecast {
    let now = day.now_ms;
    let recorded = now.saturating_sub(h.recording_since_ms);
    if recorded < MIN_HISTORY_MS {
        return Forecast::Insufficient;
    }
    if recorded < MIN_RATE_HISTORY_MS || now >= day.reset_ms {
        return Forecast::Projected(linear(day, used_today, limit));
    }
    if !(-SANE_MS..=SANE_MS).contains(&now) || !(-SANE_MS..=SANE_MS).contains(&day.reset_ms) {
        // Times no clock gives: answer without the calendar arithmetic that could overflow.
        return Forecast::Projected(linear(day, used_today, limit));
    }
    // The current minute is partial: left out.
    let end = now.div_euclid(MINUTE_MS) * MINUTE_MS;
    let (weighted, exposure, minutes) =
        ewma(h, end, RECENT_WINDOW_MIN, RECENT_HALF_LIFE_MIN, |_| 1.0);
    if minutes < MIN_RECENT_MINUTES || exposure <= 0.0 {
        return Forecast::Projected(linear(day, used_today, limit));
    }
    let recent_per_ms = weighted / exposure / MINUTE_MS as f64;

    let Some(profile) = Profile::build(h, end, day.reset_ms) else {
        let flat = std::iter::once((now, day.reset_ms, recent_per_ms));
        return Forecast::Projected(project(
            now,
            day.reset_ms,
            used_today,
            limit,
            flat,
            METHOD_EWMA,
        ));
    };
    let (seen, expected, _) = ewma(h, end, LEVEL_WINDOW_MIN, LEVEL_HALF_LIFE_MIN, |m| {
        profile.per_hour_at(m) / 60.0
    });
    let level = (seen + LEVEL_PRIOR) / (expected + LEVEL_PRIOR);
    let n = profile.days as f64;
    let (w_profile, w_flat) = (n / (n + 1.0), 1.0 / (n + 1.0));
    let segments = (0..profile.slots).map(|j| {
        let lo = profile.base_ms.saturating_add(j as i64 * HOUR_MS);
        let rate =
            w_profile * level * profile.per_hour[j] / HOUR_MS as f64 + w_flat * recent_per_ms;
        (
            lo.max(now),
            lo.saturating_add(HOUR_MS).min(day.reset_ms),
            rate,
        )
    });
    let method = METHOD_TIME_OF_DAY[profile.days - 1];
    Forecast::Projected(project(
        now,
        day.reset_ms,
        used_today,
        limit,
        segments,
        method,
    ))
}

/// The straight-line projection (today's rate so far, extended to the reset) — the baseline the
/// back-test compares against; also returned by `forecast` as method "linear" when nothing
/// better is possible (under an hour of history). Under a minute into the day, the rate so far
/// is taken over one minute.
pub fn linear(day: &Day, used_today: u64, limit: Option<u64>) -> Projection {
    let elapsed = day.now_ms.saturating_sub(day.start_ms).max(MINUTE_MS);
    let rate = used_today as f64 / elapsed as f64;
    let line = std::iter::once((day.now_ms, day.reset_ms, rate));
    project(
        day.now_ms,
        day.reset_ms,
        used_today,
        limit,
        line,
        METHOD_LINEAR,
    )
}

/// Sum constant-rate segments `(from_ms, to_ms, requests per ms)`, in time order, into the
/// projection; the limit is reached inside the segment where the running sum crosses it, if
/// that is before `reset`.
fn project(
    now: i64,
    reset: i64,
    used: u64,
    limit: Option<u64>,
    segments: impl Iterator<Item = (i64, i64, f64)>,
    method: &'static str,
) -> Projection {
    let need = limit.map(|l| l as f64 - used as f64);
    let mut exhausted_at_ms = need.filter(|&n| n <= 0.0).map(|_| now);
    let mut remaining = 0.0;
    for (from, to, rate) in segments {
        if to <= from || !(rate.is_finite() && rate > 0.0) {
            continue;
        }
        let adds = rate * (to as f64 - from as f64);
        if exhausted_at_ms.is_none()
            && let Some(need) = need
            && remaining + adds >= need
        {
            // `as` saturates: a far-off instant cannot wrap.
            exhausted_at_ms = Some((from as f64 + (need - remaining) / rate).ceil() as i64);
        }
        remaining += adds;
    }
    Projection {
        remaining,
        total: used as f64 + remaining,
        // Reached exactly at the reset is not reached: the quota is fresh then.
        exhausted_at_ms: exhausted_at_ms.filter(|&t| t == now || t < reset),
        method,
    }
}

/// Exponentially weighted sums over the `window` complete minutes before `end` (minute-aligned)
/// that the ledger recorded: (sum of weight x count, sum of weight x covered fraction x
/// `expected(minute start)`, unweighted covered minutes). Minutes missing from the slice or
/// before `recording_since_ms` count for nothing (unknown, not zero).
fn ewma(
    h: &History,
    end: i64,
    window: i64,
    half_life_min: f64,
    expected: impl Fn(i64) -> f64,
) -> (f64, f64, f64) {
    let decay = 0.5f64.powf(1.0 / half_life_min);
    let mut w = 0.5f64.powf(0.5 / half_life_min); // at the middle of the newest minute
    let (mut seen, mut exposure, mut covered) = (0.0, 0.0, 0.0);
    for j in 1..=window {
        let m = end.saturating_sub(j * MINUTE_MS);
        let from = m.max(h.recording_since_ms);
        if from >= m.saturating_add(MINUTE_MS) {
            break; // before recording, and so is every older minute
        }
        if let Some(c) = at(h.minutes, h.minutes_start_ms, MINUTE_MS, m) {
            let d = (m + MINUTE_MS - from) as f64 / MINUTE_MS as f64;
            seen += w * c;
            exposure += w * d * expected(m);
            covered += d;
        }
        w *= decay;
    }
    (seen, exposure, covered)
}

/// The entry of a dense series covering `t`, cleaned (NaN, infinite, negative: 0); None outside.
fn at(series: &[f64], start_ms: i64, step_ms: i64, t: i64) -> Option<f64> {
    let i = usize::try_from(t.checked_sub(start_ms)?.div_euclid(step_ms)).ok()?;
    let x = *series.get(i)?;
    Some(if x.is_finite() && x > 0.0 { x } else { 0.0 })
}

/// The earlier days' average requests per hour, slot by slot, from the start of the level window
/// (hour-aligned) to the reset.
struct Profile {
    base_ms: i64,
    slots: usize,
    per_hour: [f64; MAX_SLOTS],
    /// How many earlier days it averages (1..=PROFILE_DAYS).
    days: usize,
}

impl Profile {
    /// None when no earlier day is fully recorded over the span, or they had no traffic in it.
    fn build(h: &History, end: i64, reset_ms: i64) -> Option<Profile> {
        let base_ms = end
            .checked_sub(LEVEL_WINDOW_MIN * MINUTE_MS)?
            .div_euclid(HOUR_MS)
            .checked_mul(HOUR_MS)?;
        let span = reset_ms.checked_sub(base_ms)?;
        let slots = usize::try_from(span / HOUR_MS + i64::from(span % HOUR_MS != 0)).ok()?;
        if slots == 0 || slots > MAX_SLOTS {
            return None; // not a quota day: no profile
        }
        // Only complete hours: the one holding `end` is still filling.
        let complete_until = end.div_euclid(HOUR_MS) * HOUR_MS;
        let mut per_hour = [0.0; MAX_SLOTS];
        let mut days = 0;
        for k in 1..=PROFILE_DAYS {
            let lo = base_ms - k * DAY_MS;
            let hi = lo + slots as i64 * HOUR_MS;
            let last = at(h.hours, h.hours_start_ms, HOUR_MS, hi - HOUR_MS);
            if lo < h.recording_since_ms
                || hi > complete_until
                || at(h.hours, h.hours_start_ms, HOUR_MS, lo).is_none()
                || last.is_none()
            {
                continue;
            }
            for (j, p) in per_hour[..slots].iter_mut().enumerate() {
                *p +=
                    at(h.hours, h.hours_start_ms, HOUR_MS, lo + j as i64 * HOUR_MS).unwrap_or(0.0);
            }
            days += 1;
        }
        if days == 0 || per_hour[..slots].iter().sum::<f64>() <= 0.0 {
            return None;
        }
        for p in &mut per_hour[..slots] {
            *p /= days as f64;
        }
        Some(Profile {
            base_ms,
            slots,
            per_hour,
            days,
        })
    }

    fn per_hour_at(&self, t: i64) -> f64 {
        let j = (t - self.base_ms).div_euclid(HOUR_MS);
        usize::try_from(j)
            .ok()
            .and_then(|j| self.per_hour[..self.slots].get(j))
            .copied()
            .unwrap_or(0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-04-06 00:00 PDT (a Monday; no daylight-saving change in the weeks after).
    const T0: i64 = 1_775_458_800_000;

    /// A ledger that recorded `per_minute(minute index since T0)` from T0 on.
    struct Sim {
        counts: Vec<f64>,
    }

    impl Sim {
        fn new(minutes: usize, per_minute: impl FnMut(usize) -> f64) -> Sim {
            Sim {
                counts: (0..minutes).map(per_minute).collect(),
            }
        }

        /// The ledger's view at `now`: its minutes (48 h) and hours, the current ones partial.
        fn view(&self, now: i64) -> (Vec<f64>, i64, Vec<f64>, i64) {
            let cur = ((now - T0) / MINUTE_MS) as usize;
            let frac = ((now - T0) % MINUTE_MS) as f64 / MINUTE_MS as f64;
            let mut upto: Vec<f64> = self.counts[..cur].to_vec();
            upto.push((self.counts[cur] * frac).floor());
            let first = upto.len().saturating_sub(48 * 60);
            let hours: Vec<f64> = upto.chunks(60).map(|c| c.iter().sum()).collect();
            (
                upto[first..].to_vec(),
                T0 + first as i64 * MINUTE_MS,
                hours,
                T0,
            )
        }

        fn day(now: i64) -> Day {
            let start_ms = T0 + (now - T0).div_euclid(DAY_MS) * DAY_MS;
            Day {
                now_ms: now,
                start_ms,
                reset_ms: start_ms + DAY_MS,
            }
        }

        fn used(&self, now: i64) -> u64 {
            let (minutes, _, _, _) = self.view(now);
            let since_start = ((now - Self::day(now).start_ms) / MINUTE_MS) as usize;
            minutes[minutes.len() - 1 - since_start..]
                .iter()
                .sum::<f64>() as u64
        }

        fn forecast(&self, now: i64, limit: Option<u64>) -> (Forecast, Projection) {
            let (minutes, minutes_start_ms, hours, hours_start_ms) = self.view(now);
            let h = History {
                minutes_start_ms,
                minutes: &minutes,
                hours_start_ms,
                hours: &hours,
                recording_since_ms: T0,
            };
            let day = Self::day(now);
            let used = self.used(now);
            (forecast(&h, &day, used, limit), linear(&day, used, limit))
        }
    }

    fn projected(f: Forecast) -> Projection {
        match f {
            Forecast::Projected(p) => p,
            Forecast::Insufficient => panic!("expected a projection"),
        }
    }

    #[test]
    fn under_ten_minutes_of_recording_is_insufficient() {
        let sim = Sim::new(60, |_| 2.0);
        let (f, _) = sim.forecast(T0 + 9 * MINUTE_MS + 59_999, Some(100));
        assert_eq!(f, Forecast::Insufficient);
        // A recording start in the future (a clock step back) is not history either.
        let h = History {
            minutes_start_ms: T0,
            minutes: &[],
            hours_start_ms: T0,
            hours: &[],
            recording_since_ms: T0 + HOUR_MS,
        };
        assert_eq!(forecast(&h, &Sim::day(T0), 0, None), Forecast::Insufficient);
    }

    #[test]
    fn under_an_hour_of_recording_is_the_straight_line() {
        let sim = Sim::new(120, |_| 2.0);
        let now = T0 + 30 * MINUTE_MS;
        let (f, lin) = sim.forecast(now, None);
        assert_eq!(f, Forecast::Projected(lin.clone()));
        assert_eq!(lin.method, METHOD_LINEAR);
        // 60 requests in 30 min, 23.5 h to go: 2 per minute.
        assert!((lin.remaining - 2.0 * 1410.0).abs() < 1e-6, "{lin:?}");
    }

    #[test]
    fn without_earlier_days_the_recent_rate_is_extended_flat() {
        // 1/min for 3 h, then 4/min for the last hour: the recent rate leans toward 4.
        let sim = Sim::new(300, |m| if m < 180 { 1.0 } else { 4.0 });
        let now = T0 + 240 * MINUTE_MS;
        let (f, lin) = sim.forecast(now, None);
        let p = projected(f);
        assert_eq!(p.method, METHOD_EWMA);
        let per_minute = p.remaining / (20.0 * 60.0);
        assert!(per_minute > 3.0 && per_minute <= 4.0, "{per_minute}");
        assert!(lin.remaining < p.remaining);
        assert_eq!(p.total, 420.0 + p.remaining);
    }

    #[test]
    fn a_limit_already_reached_is_exhausted_now() {
        let sim = Sim::new(2 * 1440, |_| 2.0);
        let now = T0 + 3 * HOUR_MS;
        for limit in [0, 100, 360] {
            let (f, lin) = sim.forecast(now, Some(limit));
            assert_eq!(projected(f).exhausted_at_ms, Some(now), "limit {limit}");
            assert_eq!(lin.exhausted_at_ms, Some(now));
        }
        let (f, _) = sim.forecast(now, Some(361));
        assert!(projected(f).exhausted_at_ms.unwrap() > now);
    }

    #[test]
    fn no_limit_projects_without_an_exhaustion() {
        let sim = Sim::new(3 * 1440, |_| 2.0);
        let now = T0 + DAY_MS + 12 * HOUR_MS;
        let p = projected(sim.forecast(now, None).0);
        assert_eq!(p.exhausted_at_ms, None);
        assert_eq!(p.method, "ewma_1h+time_of_day_1d");
        assert!((p.remaining - 2.0 * 720.0).abs() < 5.0, "{p:?}");
    }

    #[test]
    fn a_limit_is_reached_where_the_running_sum_crosses_it() {
        let sim = Sim::new(3 * 1440, |_| 2.0);
        let now = T0 + DAY_MS + 12 * HOUR_MS;
        // 1440 made; 2/min: 1,000 more in 500 minutes.
        let p = projected(sim.forecast(now, Some(2440)).0);
        let at = p.exhausted_at_ms.unwrap();
        assert!(
            (at - (now + 500 * MINUTE_MS)).abs() < 5 * MINUTE_MS,
            "{}",
            at - now
        );
        // One request beyond the whole day's projection: not before the reset.
        let p = projected(sim.forecast(now, Some(2880 + 10)).0);
        assert_eq!(p.exhausted_at_ms, None);
    }

    #[test]
    fn near_and_past_the_reset_little_or_nothing_remains() {
        let sim = Sim::new(3 * 1440, |_| 2.0);
        let reset = T0 + 2 * DAY_MS;
        let p = projected(sim.forecast(reset - 30_000, Some(2880)).0);
        assert!(p.remaining <= 1.0 + 1e-9, "{p:?}");
        assert_eq!(p.exhausted_at_ms, None);
        // A stale `Day` whose reset has passed: nothing remains, no panic.
        let day = Day {
            now_ms: reset + 5 * MINUTE_MS,
            ..Sim::day(reset - 1)
        };
        let h = History {
            minutes_start_ms: T0,
            minutes: &sim.counts,
            hours_start_ms: T0,
            hours: &[],
            recording_since_ms: T0,
        };
        let p = projected(forecast(&h, &day, 2870, Some(2880)));
        assert_eq!((p.remaining, p.exhausted_at_ms), (0.0, None));
    }

    #[test]
    fn garbage_in_the_history_gives_an_answer() {
        let nan = [f64::NAN; 3000];
        let inf = [f64::INFINITY, -1.0, f64::NEG_INFINITY, 5.0];
        let now = T0 + 2 * DAY_MS + 7 * HOUR_MS;
        for (minutes, hours, start) in [
            (&nan[..], &nan[..], T0),
            (&inf[..], &inf[..], T0),
            (&[][..], &[][..], T0),
            (&nan[..], &nan[..], i64::MIN),
            (&inf[..], &nan[..], i64::MAX),
        ] {
            let h = History {
                minutes_start_ms: start,
                minutes,
                hours_start_ms: start,
                hours,
                recording_since_ms: T0,
            };
            for limit in [None, Some(0), Some(u64::MAX)] {
                let p = projected(forecast(&h, &Sim::day(now), 10, limit));
                assert!(p.remaining.is_finite() && p.remaining >= 0.0, "{p:?}");
            }
        }
        let weird = Day {
            now_ms: 0,
            start_ms: i64::MAX,
            reset_ms: i64::MAX,
        };
        assert!(linear(&weird, u64::MAX, Some(1)).remaining.is_finite());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]
        /// Any times, any counts (NaN, infinite, negative), any limit: an answer, never a panic.
        #[test]
        fn any_input_gives_an_answer_without_panicking(
            times in proptest::array::uniform6(proptest::prelude::any::<i64>()),
            near in proptest::array::uniform5(-3 * DAY_MS..3 * DAY_MS),
            pick in proptest::array::uniform5(proptest::prelude::any::<bool>()),
            minutes in proptest::collection::vec(proptest::num::f64::ANY, 0..200),
            hours in proptest::collection::vec(proptest::num::f64::ANY, 0..200),
            used in proptest::prelude::any::<u64>(),
            limit in proptest::prelude::any::<Option<u64>>(),
        ) {
            // Half the times near `now` (where the arithmetic is exercised), half anywhere.
            let now = T0 + times[0] % (40 * DAY_MS);
            let t = |i: usize| if pick[i] { now + near[i] } else { times[i + 1] };
            let h = History {
                minutes_start_ms: t(0),
                minutes: &minutes,
                hours_start_ms: t(1),
                hours: &hours,
                recording_since_ms: t(2),
            };
            let day = Day { now_ms: if pick[4] { now } else { times[5] }, start_ms: t(3), reset_ms: t(4) };
            if let Forecast::Projected(p) = forecast(&h, &day, used, limit) {
                proptest::prop_assert!(p.remaining >= 0.0, "{:?}", p);
            }
            proptest::prop_assert!(linear(&day, used, limit).remaining >= 0.0);
        }
    }

    /// Poisson draws from a seeded generator (Knuth's method: rates here are under ~20/min).
    fn poisson(rng: &mut fastrand::Rng, lambda: f64) -> f64 {
        let l = (-lambda).exp();
        let (mut k, mut p) = (0.0, rng.f64());
        while p > l {
            k += 1.0;
            p *= rng.f64();
        }
        k
    }

    const DAYS: usize = 14;

    /// Low at night (20 % of the peak around 02:30), peak at 14:30 Pacific, +3 %/day growth over
    /// the 14 days, each day's level +-10 % and each hour's +-20 % at random, Poisson counts.
    fn rhythm_and_ramp() -> Sim {
        let mut rng = fastrand::Rng::with_seed(20260406);
        let day_level: Vec<f64> = (0..DAYS).map(|_| 0.9 + 0.2 * rng.f64()).collect();
        let hour_level: Vec<f64> = (0..DAYS * 24).map(|_| 0.8 + 0.4 * rng.f64()).collect();
        Sim::new(DAYS * 1440, |m| {
            let hour_of_day = (m % 1440) as f64 / 60.0;
            let shape = 0.2
                + 0.8 * (1.0 + (std::f64::consts::TAU * (hour_of_day - 14.5) / 24.0).cos()) / 2.0;
            let growth = 1.03f64.powf(m as f64 / 1440.0);
            let lambda = 4.0 * growth * day_level[m / 1440] * hour_level[m / 60] * shape;
            poisson(&mut rng, lambda)
        })
    }

    fn flat() -> Sim {
        let mut rng = fastrand::Rng::with_seed(7);
        Sim::new(DAYS * 1440, |_| poisson(&mut rng, 3.0))
    }

    /// When the day's running count first reaches `limit` (interpolated in its minute), or the
    /// reset.
    fn actual_exhaustion(sim: &Sim, day: usize, limit: u64) -> i64 {
        let mut cum = 0.0;
        for m in day * 1440..(day + 1) * 1440 {
            let c = sim.counts[m];
            if cum + c >= limit as f64 {
                let within = ((limit as f64 - cum) / c * MINUTE_MS as f64).ceil() as i64;
                return T0 + m as i64 * MINUTE_MS + within;
            }
            cum += c;
        }
        T0 + (day as i64 + 1) * DAY_MS
    }

    #[derive(Default)]
    struct Errors {
        n: usize,
        forecast: f64,
        linear: f64,
    }

    impl Errors {
        fn add(&mut self, forecast: f64, linear: f64) {
            self.n += 1;
            self.forecast += forecast;
            self.linear += linear;
        }
        fn mean(&self) -> (f64, f64) {
            let n = self.n.max(1) as f64;
            (self.forecast / n, self.linear / n)
        }
    }

    /// The forecast moments: every hour of the last 7 days, at a different minute each hour.
    fn moments() -> impl Iterator<Item = (usize, i64)> {
        (DAYS - 7..DAYS).flat_map(|day| {
            (0..24).map(move |hour| {
                let minute = 20 + (hour * 7) % 40;
                let now = T0 + day as i64 * DAY_MS + hour * HOUR_MS + minute * MINUTE_MS + 13_000;
                (day, now)
            })
        })
    }

    /// The end-of-day total's absolute percentage error, overall and by time of day.
    fn total_errors(sim: &Sim) -> [Errors; 4] {
        let mut ape: [Errors; 4] = Default::default();
        for (day, now) in moments() {
            let actual: f64 = sim.counts[day * 1440..(day + 1) * 1440].iter().sum();
            let (f, lin) = sim.forecast(now, None);
            let f = projected(f);
            assert!(f.method.starts_with("ewma_1h+time_of_day_"), "{}", f.method);
            let (ef, el) = (
                (f.total - actual).abs() / actual,
                (lin.total - actual).abs() / actual,
            );
            let period = ((now - T0) % DAY_MS / HOUR_MS / 8) as usize;
            ape[0].add(ef, el);
            ape[1 + period].add(ef, el);
        }
        ape
    }

    /// The error on `exhausted_at` in hours ("not before the reset" counts as the reset), at the
    /// moments when the limit is not reached yet; and on how many of the 7 days it is reached.
    fn exhaustion_errors(sim: &Sim, limit: u64) -> (Errors, usize) {
        let mut errors = Errors::default();
        for (day, now) in moments() {
            let at = actual_exhaustion(sim, day, limit);
            if now >= at {
                continue;
            }
            let (f, lin) = sim.forecast(now, Some(limit));
            let reset = Sim::day(now).reset_ms;
            let hours = |p: Option<i64>| (p.unwrap_or(reset) - at).abs() as f64 / HOUR_MS as f64;
            errors.add(
                hours(projected(f).exhausted_at_ms),
                hours(lin.exhausted_at_ms),
            );
        }
        let reached = (DAYS - 7..DAYS)
            .filter(|&d| actual_exhaustion(sim, d, limit) < T0 + (d as i64 + 1) * DAY_MS)
            .count();
        (errors, reached)
    }

    fn sim_cumulative(sim: &Sim, day: usize, minutes: usize) -> f64 {
        sim.counts[day * 1440..day * 1440 + minutes].iter().sum()
    }

    /// Run with `cargo test --lib ledger::forecast::tests::backtest -- --nocapture`.
    #[test]
    fn backtest_beats_the_straight_line_on_a_daily_rhythm_and_matches_it_on_a_flat_rate() {
        let rhythm = rhythm_and_ramp();
        let ape = total_errors(&rhythm);
        let flat_ape = total_errors(&flat());
        // Two limits: the count at 15:00 on day 10 (reached in the afternoon), and 95 % of the
        // mean day (reached late on the busier days only).
        let mean_day = sim_cumulative(&rhythm, DAYS - 7, 7 * 1440) / 7.0;
        let limits = [
            sim_cumulative(&rhythm, 10, 15 * 60) as u64,
            (0.95 * mean_day) as u64,
        ];

        println!("forecast back-test, 7 days x 24 forecasts (MAPE of the end-of-day total)");
        println!(
            "{:<36} {:>9} {:>9} {:>7}",
            "", "forecast", "linear", "ratio"
        );
        let rows = [
            ("rhythm+ramp, all hours", &ape[0]),
            ("  forecast at 00:00-08:00", &ape[1]),
            ("  forecast at 08:00-16:00", &ape[2]),
            ("  forecast at 16:00-24:00", &ape[3]),
            ("flat rate", &flat_ape[0]),
        ];
        for (name, e) in rows {
            let (f, l) = e.mean();
            println!(
                "{name:<36} {:>8.1}% {:>8.1}% {:>7.2}",
                f * 100.0,
                l * 100.0,
                f / l
            );
        }
        let mut exhaustion = Vec::new();
        for limit in limits {
            let (e, reached) = exhaustion_errors(&rhythm, limit);
            let (f, l) = e.mean();
            let name = format!("exhausted_at, limit {limit} ({reached}/7 d)");
            println!("{name:<36} {f:>8.2}h {l:>8.2}h {:>7.2}", f / l);
            exhaustion.push((e, reached));
        }
        let now = T0 + 13 * DAY_MS + 9 * HOUR_MS + 30 * MINUTE_MS;
        let (minutes, minutes_start_ms, hours, hours_start_ms) = rhythm.view(now);
        let h = History {
            minutes_start_ms,
            minutes: &minutes,
            hours_start_ms,
            hours: &hours,
            recording_since_ms: T0,
        };
        let started = std::time::Instant::now();
        for _ in 0..1000 {
            std::hint::black_box(forecast(&h, &Sim::day(now), 2000, Some(limits[0])));
        }
        println!("one forecast: {:?} (this build)", started.elapsed() / 1000);

        let (f, l) = ape[0].mean();
        assert!(f <= 0.6 * l, "forecast MAPE {f} vs linear {l}");
        let (f, l) = flat_ape[0].mean();
        assert!(
            f < 0.03 && f <= l + 0.005,
            "flat: forecast MAPE {f} vs linear {l}"
        );
        let (afternoon, late) = (&exhaustion[0], &exhaustion[1]);
        assert!(afternoon.1 >= 3 && (1..7).contains(&late.1), "days reached");
        let (f, l) = afternoon.0.mean();
        assert!(f <= 0.6 * l, "exhausted_at error {f} h vs {l} h");
        // Reached late in the day, a "not before the reset" is never far off: a smaller margin.
        let (f, l) = late.0.mean();
        assert!(f < l, "exhausted_at error {f} h vs {l} h");
    }
}
