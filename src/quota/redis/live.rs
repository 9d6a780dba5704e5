//! Live API sessions in Redis ([`LiveSlots`]): a project's open sessions are a sorted set of
//! session ids scored by lease end, so a slot whose replica died (and stopped renewing) drops
//! out of the count once its lease has passed, without anyone cleaning up after it. A session's
//! client slot is a member `live:SESSION` of the client's in-flight set, scored by lease end
//! like a request's and renewed with the project slots; its usage is counted as Google reports
//! it.

use std::sync::{Arc, LazyLock};

use async_trait::async_trait;
use redis::Script;

use super::{PAIRS_PER_CALL, RedisStore};
use crate::quota::{ClientAdmit, ClientLimit, LiveSlots, LiveUsage, MAX_HOLD_MS, StoreError};

/// Take a slot if fewer than the limit are held: KEYS[1] the project's set; ARGV session,
/// limit, lease ms, now override.
static OPEN: LazyLock<Script> = LazyLock::new(|| Script::new(lua!("live_open.lua")));
/// Renew slots still held: KEYS the projects' sets; ARGV lease ms, now override, then one
/// session id per key.
static RENEW: LazyLock<Script> = LazyLock::new(|| Script::new(lua!("live_renew.lua")));
/// Unexpired slots per set: KEYS the projects' sets; ARGV now override.
static COUNT: LazyLock<Script> = LazyLock::new(|| Script::new(lua!("live_count.lua")));

/// A session's member in its client's sets: apart from admission ids (numbers).
fn member(session: &str) -> String {
    format!("live:{session}")
}

impl RedisStore {
    /// The client's in-flight set (named by its name alone).
    fn in_flight(&self, client: &str) -> String {
        let [_, _, _, fl, _, _] = self.keys.client(client, 0, 0);
        fl
    }
}

#[async_trait]
impl LiveSlots for RedisStore {
    async fn live_open(
        &self,
        project: &str,
        session: &str,
        limit: u64,
        lease_ms: u64,
    ) -> Result<bool, StoreError> {
        let mut inv = OPEN.prepare_invoke();
        inv.key(self.keys.live(project))
            .arg(session)
            .arg(limit)
            .arg(lease_ms.clamp(1, MAX_HOLD_MS))
            .arg(self.now_arg());
        Ok(self.run::<i64>(inv).await? == 1)
    }

    async fn live_renew(
        &self,
        held: &[(Arc<str>, String)],
        lease_ms: u64,
    ) -> Result<(), StoreError> {
        for chunk in held.chunks(PAIRS_PER_CALL) {
            let mut inv = RENEW.prepare_invoke();
            inv.arg(lease_ms.clamp(1, MAX_HOLD_MS)).arg(self.now_arg());
            for (project, session) in chunk {
                inv.key(self.keys.live(project)).arg(session.as_str());
            }
            let _: i64 = self.run(inv).await?;
        }
        Ok(())
    }

    async fn live_close(&self, project: &str, session: &str) -> Result<(), StoreError> {
        let _: i64 = self
            .cmd(
                redis::cmd("ZREM")
                    .arg(self.keys.live(project))
                    .arg(session)
                    .clone(),
            )
            .await?;
        Ok(())
    }

    async fn live_counts(&self, projects: &[Arc<str>]) -> Result<Vec<u64>, StoreError> {
        if projects.is_empty() {
            return Ok(Vec::new());
        }
        let mut inv = COUNT.prepare_invoke();
        inv.arg(self.now_arg());
        for p in projects {
            inv.key(self.keys.live(p));
        }
        let counts: Vec<i64> = self.run(inv).await?;
        Ok(counts.into_iter().map(|c| c.max(0) as u64).collect())
    }

    async fn live_client_open(
        &self,
        c: &ClientAdmit,
        session: &str,
    ) -> Result<Option<(ClientLimit, u64, u64)>, StoreError> {
        self.client_alone(c, &member(session), false).await
    }

    async fn live_client_renew(
        &self,
        held: &[(Arc<str>, String)],
        lease_ms: u64,
    ) -> Result<(), StoreError> {
        for chunk in held.chunks(256) {
            let mut inv = RENEW.prepare_invoke();
            inv.arg(lease_ms.clamp(1, MAX_HOLD_MS)).arg(self.now_arg());
            for (client, session) in chunk {
                inv.key(self.in_flight(client)).arg(member(session));
            }
            let _: i64 = self.run(inv).await?;
        }
        Ok(())
    }

    async fn live_client_close(&self, client: &str, session: &str) -> Result<(), StoreError> {
        let _: i64 = self
            .cmd(
                redis::cmd("ZREM")
                    .arg(self.in_flight(client))
                    .arg(member(session))
                    .clone(),
            )
            .await?;
        Ok(())
    }

    async fn live_usage(&self, u: &LiveUsage) -> Result<(u64, u64), StoreError> {
        let (rq, tk) = self.keys.window(&u.project, &u.model);
        let mut inv = self.live_usage.prepare_invoke();
        inv.key(rq)
            .key(tk)
            .key(self.keys.seq())
            .key(self.keys.pairs());
        inv.arg(u.tokens)
            .arg(format!("{}|{}", u.project, u.model))
            .arg(self.now_arg());
        match &u.client {
            Some(c) => {
                let [crq, ctk, _, _, sd, sm] =
                    self.keys.client(&c.name, c.period.day, c.period.month);
                inv.key(crq).key(ctk).key(sd).key(sm);
                let windowed = c.caps.rpm.is_some() || c.caps.tpm.is_some();
                inv.arg("1")
                    .arg(if windowed { "1" } else { "0" })
                    .arg(c.cost_micros)
                    .arg(c.period.day_end_ms)
                    .arg(c.period.month_end_ms);
            }
            None => {
                inv.arg("0");
            }
        }
        let v: Vec<i64> = self.run(inv).await?;
        match v.as_slice() {
            [d, m] => Ok(((*d).max(0) as u64, (*m).max(0) as u64)),
            _ => Err(StoreError::Protocol(format!(
                "live usage script answered {v:?}"
            ))),
        }
    }
}
