//! Time for quota windows: an injectable millisecond clock and the quota day (midnight in the
//! configured zone, America/Los_Angeles by default), correct across daylight-saving changes.

use std::sync::atomic::{AtomicI64, Ordering};

use chrono::{Days, NaiveDate, NaiveTime, Offset, TimeZone, Utc};
use chrono_tz::Tz;

pub const DAY_MS: i64 = 86_400_000;

/// The local midnight starting `date` in `tz` (Unix ms); in a zone whose clocks skip midnight
/// that day, the first instant after it.
pub fn midnight_ms(tz: Tz, date: NaiveDate) -> Option<i64> {
    let naive = date.and_time(NaiveTime::MIN);
    tz.from_local_datetime(&naive)
        .earliest()
        .or_else(|| {
            tz.from_local_datetime(&(naive + chrono::Duration::hours(1)))
                .earliest()
        })
        .map(|t| t.timestamp_millis())
}

/// Milliseconds since the Unix epoch.
pub trait Clock: Send + Sync + std::fmt::Debug {
    fn now_ms(&self) -> i64;
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        Utc::now().timestamp_millis()
    }
}

/// A clock tests move by hand.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicI64);

impl ManualClock {
    pub fn new(start_ms: i64) -> Self {
        ManualClock(AtomicI64::new(start_ms))
    }
    pub fn set(&self, ms: i64) {
        self.0.store(ms, Ordering::SeqCst);
    }
    pub fn advance(&self, ms: i64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// Where `now` falls in the quota day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DayInfo {
    /// The zone's UTC offset at `now`, in milliseconds (negative west of Greenwich).
    pub offset_ms: i64,
    /// Local calendar day as days since 1970-01-01: `floor((now + offset) / DAY_MS)`.
    pub day: i64,
    /// The next local midnight, as Unix milliseconds.
    pub next_midnight_ms: i64,
}

impl DayInfo {
    pub fn at(tz: Tz, now_ms: i64) -> DayInfo {
        let utc = Utc
            .timestamp_millis_opt(now_ms)
            .single()
            .unwrap_or_else(Utc::now);
        let local = utc.with_timezone(&tz);
        let offset_ms = i64::from(local.offset().fix().local_minus_utc()) * 1000;
        let day = (now_ms + offset_ms).div_euclid(DAY_MS);
        // The next local midnight. Zones whose clocks skip midnight take the first instant after.
        let tomorrow = local.date_naive().checked_add_days(Days::new(1));
        let next_midnight_ms = tomorrow
            .and_then(|d| midnight_ms(tz, d))
            .unwrap_or((day + 1) * DAY_MS - offset_ms);
        DayInfo {
            offset_ms,
            day,
            next_midnight_ms,
        }
    }
}

/// `DayInfo::at` is a time-zone conversion; admission needs it on every request. This keeps the
/// answer for up to a minute and never past the next midnight, so the day still changes on time.
#[derive(Debug)]
pub struct DayCache {
    tz: Tz,
    /// (computed at, valid until, answer)
    cached: parking_lot::Mutex<Option<(i64, i64, DayInfo)>>,
}

impl DayCache {
    pub fn new(tz: Tz) -> Self {
        DayCache {
            tz,
            cached: parking_lot::Mutex::new(None),
        }
    }

    pub fn at(&self, now_ms: i64) -> DayInfo {
        let mut c = self.cached.lock();
        if let Some((from, until, d)) = *c
            && now_ms >= from
            && now_ms < until
        {
            return DayInfo {
                offset_ms: d.offset_ms,
                day: d.day,
                next_midnight_ms: d.next_midnight_ms,
            };
        }
        let d = DayInfo::at(self.tz, now_ms);
        *c = Some((now_ms, d.next_midnight_ms.min(now_ms + 60_000), d));
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono_tz::America::Los_Angeles;

    fn ms(s: &str) -> i64 {
        chrono::DateTime::parse_from_rfc3339(s)
            .unwrap()
            .timestamp_millis()
    }

    #[test]
    fn next_midnight_is_pacific_in_winter_and_summer() {
        // 2026-01-31 10:30 UTC = 02:30 PST; next midnight 2026-02-01 00:00 PST = 08:00 UTC.
        let d = DayInfo::at(Los_Angeles, ms("2026-01-31T10:30:00Z"));
        assert_eq!(d.next_midnight_ms, ms("2026-02-01T08:00:00Z"));
        assert_eq!(d.offset_ms, -8 * 3_600_000);
        // 2026-07-01 12:00 UTC = 05:00 PDT; next midnight 07-02 00:00 PDT = 07:00 UTC.
        let d = DayInfo::at(Los_Angeles, ms("2026-07-01T12:00:00Z"));
        assert_eq!(d.next_midnight_ms, ms("2026-07-02T07:00:00Z"));
    }

    #[test]
    fn the_cache_changes_day_exactly_at_midnight() {
        let c = DayCache::new(Los_Angeles);
        let d = c.at(ms("2026-01-31T10:30:00Z"));
        assert_eq!(c.at(d.next_midnight_ms - 1).day, d.day);
        assert_eq!(c.at(d.next_midnight_ms).day, d.day + 1);
        // Going back in time (a test clock) recomputes.
        assert_eq!(c.at(ms("2026-01-31T10:30:00Z")).day, d.day);
    }

    #[test]
    fn days_across_daylight_saving_changes_are_23_and_25_hours() {
        // 2026-03-08 is 23 h long in Los Angeles; 2026-11-01 is 25 h long.
        let spring = DayInfo::at(Los_Angeles, ms("2026-03-08T09:00:00Z")); // 01:00 PST
        assert_eq!(spring.next_midnight_ms, ms("2026-03-09T07:00:00Z"));
        let after = DayInfo::at(Los_Angeles, ms("2026-03-09T06:59:59Z"));
        assert_eq!(after.day, spring.day, "still March 8 locally");
        let next = DayInfo::at(Los_Angeles, ms("2026-03-09T07:00:00Z"));
        assert_eq!(next.day, spring.day + 1);
        let fall = DayInfo::at(Los_Angeles, ms("2026-11-01T08:00:00Z")); // 01:00 PDT
        assert_eq!(fall.next_midnight_ms, ms("2026-11-02T08:00:00Z"));
        assert_eq!(
            DayInfo::at(Los_Angeles, ms("2026-11-02T07:59:59Z")).day,
            fall.day
        );
    }
}
