//! Clients' budgets in memory ([`ClientBudgets`]): their use read, a batch job's budget
//! reservation alone, and a move when a job's real cost is known.

use std::sync::Arc;

use async_trait::async_trait;

use super::MemoryStore;
use crate::quota::StoreError;
use crate::quota::client::{ClientAdmit, ClientBudgets, ClientLimit};

#[async_trait]
impl ClientBudgets for MemoryStore {
    async fn client_spend(
        &self,
        clients: &[(Arc<str>, i64, i64)],
    ) -> Result<Vec<(u64, u64)>, StoreError> {
        let table = self.clients.read();
        Ok(clients
            .iter()
            .map(|(name, day, month)| match table.get(name) {
                Some(c) => {
                    let c = c.lock();
                    (
                        if c.budget_day == *day {
                            c.day_micros
                        } else {
                            0
                        },
                        if c.budget_month == *month {
                            c.month_micros
                        } else {
                            0
                        },
                    )
                }
                None => (0, 0),
            })
            .collect())
    }

    /// Its budgets only: `c.caps`' other limits are not looked at.
    async fn client_budget_reserve(
        &self,
        c: &ClientAdmit,
    ) -> Result<Option<(ClientLimit, u64, u64)>, StoreError> {
        let c = &c.budgets_only();
        // No rate limit in a budgets-only admission: `charge` adds to the budgets alone.
        let added = self.with_room(c, 0, |cc, now| {
            cc.charge(c, 0, now);
        });
        Ok(added.err())
    }

    /// A period already over stays as it was.
    async fn client_budget_adjust(
        &self,
        name: &str,
        day: i64,
        month: i64,
        delta: i64,
    ) -> Result<(), StoreError> {
        let Some(counters) = self.clients.read().get(name).cloned() else {
            return Ok(());
        };
        let mut cc = counters.lock();
        let moved = |v: u64| v.saturating_add_signed(delta);
        if cc.budget_day == day {
            cc.day_micros = moved(cc.day_micros);
        }
        if cc.budget_month == month {
            cc.month_micros = moved(cc.month_micros);
        }
        Ok(())
    }
}
