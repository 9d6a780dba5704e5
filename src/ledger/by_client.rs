//! Each client's usage today and this month (its own day and month, in its own time zone),
//! for the clients API, the status page's clients table and the `client_budget` alert rule.

use std::collections::HashMap;
use std::sync::Arc;

use serde::Serialize;

use super::Ledger;
use super::book::{Counters, HOUR_MS, MINUTE_MS, field};
use super::outlook::local_midnight;
use super::query::usd;

/// A client's usage over one period.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Period {
    pub requests: u64,
    /// Input, output and thinking tokens.
    pub tokens: u64,
    /// Billed cost in USD at the configured prices.
    pub cost_usd: f64,
}

impl From<&Counters> for Period {
    fn from(c: &Counters) -> Period {
        Period {
            requests: c.0[field::REQUESTS],
            tokens: c.0[field::INPUT] + c.0[field::OUTPUT] + c.0[field::THINKING],
            cost_usd: usd(c.0[field::COST]),
        }
    }
}

/// A client's today and this month.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ClientUsage {
    pub today: Period,
    pub month: Period,
}

impl Ledger {
    /// The usage of each of `clients` (name, time zone of its days) today and this month,
    /// reading Redis first when the ledger is shared (a store error leaves what this replica
    /// holds). A client that never called is absent.
    pub async fn client_usage(
        &self,
        clients: &[(Arc<str>, chrono_tz::Tz)],
    ) -> HashMap<Arc<str>, ClientUsage> {
        let now = self.clock.now_ms();
        // Client id -> (name, start of its day, first hour of its month).
        let mut wanted: HashMap<u32, (Arc<str>, i64, i64)> = HashMap::new();
        for (name, tz) in clients {
            if let Some(id) = self.clients.get(name) {
                let day = local_midnight(*tz, now, false);
                let month = local_midnight(*tz, now, true).div_euclid(HOUR_MS);
                wanted.insert(id, (name.clone(), day, month));
            }
        }
        if wanted.is_empty() {
            return HashMap::new();
        }
        let day0 = wanted.values().map(|w| w.1).min().unwrap_or(now);
        let h0 = wanted.values().map(|w| w.2).min().unwrap_or(now / HOUR_MS);
        if let Err(e) = self
            .refresh(
                Some(day0.div_euclid(MINUTE_MS) * MINUTE_MS),
                Some(h0 * HOUR_MS),
            )
            .await
        {
            tracing::warn!(error = %e, "usage history could not be read from Redis: client usage shows what this replica holds");
        }
        let mut today: HashMap<u32, Counters> = HashMap::new();
        let mut month: HashMap<u32, Counters> = HashMap::new();
        let m_last = now.div_euclid(MINUTE_MS);
        self.each_bucket(
            false,
            day0.div_euclid(MINUTE_MS),
            m_last,
            |_, index, bucket| {
                for (s, c) in bucket {
                    if let Some(w) = wanted.get(&s.client)
                        && index * MINUTE_MS >= w.1
                    {
                        today.entry(s.client).or_default().add(c);
                    }
                }
            },
        );
        self.each_bucket(true, h0, now.div_euclid(HOUR_MS), |_, index, bucket| {
            for (s, c) in bucket {
                if let Some(w) = wanted.get(&s.client)
                    && index >= w.2
                {
                    month.entry(s.client).or_default().add(c);
                }
            }
        });
        wanted
            .into_iter()
            .map(|(id, (name, _, _))| {
                let usage = ClientUsage {
                    today: today.get(&id).map(Period::from).unwrap_or_default(),
                    month: month.get(&id).map(Period::from).unwrap_or_default(),
                };
                (name, usage)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quota::ManualClock;

    #[tokio::test]
    async fn a_clients_usage_today_and_this_month_is_its_own() {
        let clock = Arc::new(ManualClock::new(1_767_000_000_000));
        let ledger = Ledger::in_memory_at(clock.clone());
        let a = ledger.series(Some("p"), "gemini-2.5-flash", Some("k"), "a", true);
        let b = ledger.series(Some("p"), "gemini-2.5-flash", Some("k"), "b", true);
        let mut c = Counters::one(field::REQUESTS);
        c.0[field::INPUT] = 10;
        c.0[field::OUTPUT] = 5;
        c.0[field::COST] = 2_000_000_000;
        ledger.add(a, &c);
        ledger.add(a, &c);
        ledger.add(b, &Counters::one(field::REQUESTS));
        let utc = chrono_tz::UTC;
        let got = ledger
            .client_usage(&[("a".into(), utc), ("nobody".into(), utc)])
            .await;
        assert_eq!(got.len(), 1, "a client that never called is absent");
        let u = &got[&Arc::<str>::from("a")];
        assert_eq!(u.today.requests, 2);
        assert_eq!(u.today.tokens, 30);
        assert!((u.today.cost_usd - 4.0).abs() < 1e-9);
        assert_eq!(u.month, u.today);
    }
}
