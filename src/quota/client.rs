//! A client's own part in admission: its limits as both stores count them, its budget periods
//! (its day and calendar month in its time zone), and what a reservation holds for it until
//! settlement frees its slot and replaces its budget reservation by the real cost.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{Datelike, NaiveDate, TimeZone, Utc};
use chrono_tz::Tz;

use super::{DayInfo, StoreError};

/// How long a concurrency refusal says to wait: a slot frees when any request of the client
/// ends, which no store can foresee, so it asks again after this.
pub const CONCURRENCY_RETRY_MS: u64 = 1_000;

/// Micro-dollars per dollar: money is counted in integer micro-dollars.
pub const MICROS_PER_USD: f64 = 1_000_000.0;

pub use crate::error::ClientLimit;

/// A client limit by its code in the admission script's answer (client.lua).
pub(crate) fn limit_from_code(code: i64) -> Option<ClientLimit> {
    Some(match code {
        11 => ClientLimit::Rpm,
        12 => ClientLimit::Tpm,
        13 => ClientLimit::Rpd,
        14 => ClientLimit::Concurrent,
        15 => ClientLimit::DailyBudget,
        16 => ClientLimit::MonthlyBudget,
        _ => return None,
    })
}

/// A client's budget periods at one moment: its day and its calendar month, in its zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientPeriod {
    /// Local calendar day as days since 1970-01-01.
    pub day: i64,
    /// When that day ends (Unix ms).
    pub day_end_ms: i64,
    /// Local calendar month as `year * 12 + month - 1`.
    pub month: i64,
    /// When that month ends (Unix ms).
    pub month_end_ms: i64,
}

impl ClientPeriod {
    pub fn at(tz: Tz, now_ms: i64) -> ClientPeriod {
        let d = DayInfo::at(tz, now_ms);
        let local = Utc
            .timestamp_millis_opt(now_ms)
            .single()
            .unwrap_or_else(Utc::now)
            .with_timezone(&tz);
        let (y, m) = (local.year(), local.month());
        let month = i64::from(y) * 12 + i64::from(m) - 1;
        let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
        // The first instant of the next month's first day (a zone skipping midnight: an hour
        // later); a date chrono cannot represent falls back to a month of 31 days.
        let month_end_ms = NaiveDate::from_ymd_opt(ny, nm, 1)
            .and_then(|d| super::clock::midnight_ms(tz, d))
            .unwrap_or(now_ms + 31 * super::clock::DAY_MS);
        ClientPeriod {
            day: d.day,
            day_end_ms: d.next_midnight_ms,
            month,
            month_end_ms,
        }
    }
}

/// A client's part of an [`super::AdmitRequest`]: its name, its limits as they were when the
/// request arrived, its periods now, and what the request is estimated to cost.
#[derive(Debug, Clone)]
pub struct ClientAdmit {
    pub name: Arc<str>,
    pub caps: ClientCaps,
    pub period: ClientPeriod,
    /// Estimated cost in micro-dollars (reserved against its budgets).
    pub cost_micros: u64,
    /// How long its concurrency slot lasts if it is never freed (a replica that died):
    /// `upstream.request_timeout` and a margin.
    pub lease_ms: u64,
}

impl ClientAdmit {
    /// The same with every limit but its budgets lifted ([`ClientBudgets::client_budget_reserve`]).
    pub(crate) fn budgets_only(&self) -> ClientAdmit {
        ClientAdmit {
            caps: ClientCaps {
                daily_micros: self.caps.daily_micros,
                monthly_micros: self.caps.monthly_micros,
                ..ClientCaps::default()
            },
            ..self.clone()
        }
    }
}

/// A client's limits in the units the stores count (`None`, or 0 in a script: no limit).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientCaps {
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
    pub rpd: Option<u64>,
    pub max_concurrent: Option<u64>,
    pub daily_micros: Option<u64>,
    pub monthly_micros: Option<u64>,
}

/// Dollars as micro-dollars (rounded; budgets are validated positive and finite).
pub fn micros(usd: f64) -> u64 {
    (usd * MICROS_PER_USD).round().max(0.0) as u64
}

impl ClientAdmit {
    /// Whether it has a budget (its requests are priced at admission and settlement).
    pub fn has_budgets(&self) -> bool {
        self.caps.daily_micros.is_some() || self.caps.monthly_micros.is_some()
    }

    /// The limit's value, for `quotaValue` (dollars for a budget).
    pub fn limit_value(&self, limit: ClientLimit) -> String {
        let c = &self.caps;
        let n = |v: Option<u64>| v.unwrap_or(0).to_string();
        let usd = |v: Option<u64>| format!("{}", v.unwrap_or(0) as f64 / MICROS_PER_USD);
        match limit {
            ClientLimit::Rpm => n(c.rpm),
            ClientLimit::Tpm => n(c.tpm),
            ClientLimit::Rpd => n(c.rpd),
            ClientLimit::Concurrent => n(c.max_concurrent),
            ClientLimit::DailyBudget => usd(c.daily_micros),
            ClientLimit::MonthlyBudget => usd(c.monthly_micros),
        }
    }
}

/// What an admitted request holds for its client until settled: a place in its minute window
/// and its concurrency slot (both by `id`), and `cost_micros` reserved in its day's and month's
/// budgets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientHold {
    pub name: Arc<str>,
    /// The admission's id in the client's counters.
    pub id: u64,
    pub day: i64,
    pub month: i64,
    /// Reserved at admission (the estimate).
    pub cost_micros: u64,
    /// The real cost, once known (set by settlement; `None`: refunded, unless the tokens
    /// settled keep the estimate).
    pub actual_cost_micros: Option<u64>,
}

/// Clients' budgets in the store: their use read, reserved alone (a batch job's) and moved
/// when the real cost is known. A store that keeps none answers zeros and reserves nothing.
#[async_trait]
pub trait ClientBudgets: Send + Sync {
    /// Each client's budget use, (today's, this month's) micro-dollars spent and reserved, for
    /// `(name, day, month)` in that order (a store that keeps none answers zeros).
    async fn client_spend(
        &self,
        clients: &[(Arc<str>, i64, i64)],
    ) -> Result<Vec<(u64, u64)>, StoreError> {
        Ok(vec![(0, 0); clients.len()])
    }
    /// Add `c.cost_micros` to client `c.name`'s day's and month's budget use when it fits its
    /// budgets (`c.caps`' other limits are not looked at), in one atomic step. `Some`: the
    /// budget it is at, its value and when to try again; nothing was written.
    async fn client_budget_reserve(
        &self,
        _c: &ClientAdmit,
    ) -> Result<Option<(ClientLimit, u64, u64)>, StoreError> {
        Ok(None)
    }
    /// Move client `name`'s budget use of `day` and `month` by `delta` micro-dollars (a
    /// period already over stays as it was).
    async fn client_budget_adjust(
        &self,
        _name: &str,
        _day: i64,
        _month: i64,
        _delta: i64,
    ) -> Result<(), StoreError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(s: &str) -> i64 {
        chrono::DateTime::parse_from_rfc3339(s)
            .unwrap()
            .timestamp_millis()
    }

    #[test]
    fn a_client_s_month_ends_at_its_own_midnight_on_the_first() {
        let tz: Tz = "Europe/Berlin".parse().unwrap();
        // 2026-01-31 23:30 UTC is already February 1st in Berlin.
        let p = ClientPeriod::at(tz, ms("2026-01-31T23:30:00Z"));
        assert_eq!(p.month, 2026 * 12 + 1);
        assert_eq!(p.month_end_ms, ms("2026-02-28T23:00:00Z"));
        assert_eq!(p.day_end_ms, ms("2026-02-01T23:00:00Z"));
        let dec = ClientPeriod::at(tz, ms("2026-12-15T12:00:00Z"));
        assert_eq!(dec.month_end_ms, ms("2026-12-31T23:00:00Z"));
    }
}
