//! Clients' budgets in Redis ([`ClientBudgets`]), in the same keys admission reads: their use
//! read in one `MGET`, a batch job's budget reservation alone, and a move when a job's real
//! cost is known. Also a client's step outside admission (client_alone.lua), which a Live
//! session's client slot takes too.

use std::sync::{Arc, LazyLock};

use async_trait::async_trait;
use redis::Script;

use super::RedisStore;
use crate::quota::StoreError;
use crate::quota::client::{ClientAdmit, ClientBudgets, ClientLimit, limit_from_code};

static ADJUST: LazyLock<Script> = LazyLock::new(|| Script::new(lua!("client_adjust.lua")));

impl RedisStore {
    /// client_alone.lua: the client's check and reservation outside an admission, `member` its
    /// entry in flight (`"0"`: none), its cost added to its budgets when `add_cost` (else only
    /// checked). `Some`: the limit it is at, that limit's value and when to try again.
    pub(super) async fn client_alone(
        &self,
        c: &ClientAdmit,
        member: &str,
        add_cost: bool,
    ) -> Result<Option<(ClientLimit, u64, u64)>, StoreError> {
        let keys = self.keys.client(&c.name, c.period.day, c.period.month);
        let mut cmd = Self::evalsha(&self.client_alone, keys.len());
        for key in keys {
            cmd.arg(key);
        }
        super::admit::client_args(&mut cmd, c);
        cmd.arg(member)
            .arg(if add_cost { "1" } else { "0" })
            .arg(self.now_arg());
        let v: Vec<i64> = self.eval(&self.client_alone, &cmd).await?;
        let answered = || StoreError::Protocol(format!("client script answered {v:?}"));
        match v.as_slice() {
            [0] => Ok(None),
            [code, value, wait] => {
                let limit = limit_from_code(*code).ok_or_else(answered)?;
                Ok(Some((limit, (*value).max(0) as u64, (*wait).max(1) as u64)))
            }
            _ => Err(answered()),
        }
    }
}

#[async_trait]
impl ClientBudgets for RedisStore {
    /// One `MGET` of every client's day and month spend (all under the namespace's slot).
    async fn client_spend(
        &self,
        clients: &[(Arc<str>, i64, i64)],
    ) -> Result<Vec<(u64, u64)>, StoreError> {
        if clients.is_empty() {
            return Ok(Vec::new());
        }
        let mut cmd = redis::cmd("MGET");
        for (name, day, month) in clients {
            let [_, _, _, _, d, m] = self.keys.client(name, *day, *month);
            cmd.arg(d).arg(m);
        }
        let v: Vec<Option<i64>> = self.cmd(cmd).await?;
        let at = |i: usize| v.get(i).copied().flatten().unwrap_or(0).max(0) as u64;
        Ok((0..clients.len())
            .map(|i| (at(2 * i), at(2 * i + 1)))
            .collect())
    }

    /// Its budgets only: every other limit is passed as none.
    async fn client_budget_reserve(
        &self,
        c: &ClientAdmit,
    ) -> Result<Option<(ClientLimit, u64, u64)>, StoreError> {
        self.client_alone(&c.budgets_only(), "0", true).await
    }

    async fn client_budget_adjust(
        &self,
        name: &str,
        day: i64,
        month: i64,
        delta: i64,
    ) -> Result<(), StoreError> {
        if delta == 0 {
            return Ok(());
        }
        let [_, _, _, _, d, m] = self.keys.client(name, day, month);
        let mut inv = ADJUST.prepare_invoke();
        inv.key(d).key(m).arg(delta);
        let _: i64 = self.run(inv).await?;
        Ok(())
    }
}
