//! A Live session's part in Redis beyond its project slot: its client's concurrent slot (a
//! member `live:SESSION` of the client's in-flight set, scored by lease end like a request's,
//! renewed with the project slots) and the usage Google reports as the session runs.

use std::sync::Arc;

use super::RedisStore;
use crate::quota::client::{ClientAdmit, ClientLimit, limit_from_code};
use crate::quota::{LiveUsage, MAX_HOLD_MS, StoreError};

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

    pub(super) async fn client_session_open(
        &self,
        c: &ClientAdmit,
        session: &str,
    ) -> Result<Option<(ClientLimit, u64, u64)>, StoreError> {
        let mut inv = self.live_client.prepare_invoke();
        for key in self.keys.client(&c.name, c.period.day, c.period.month) {
            inv.key(key);
        }
        super::admit::client_args(&mut inv, c);
        inv.arg(member(session)).arg(self.now_arg());
        let v: Vec<i64> = self.run(inv).await?;
        match v.as_slice() {
            [0] => Ok(None),
            [code, value, wait] => {
                let limit = limit_from_code(*code).ok_or_else(|| {
                    StoreError::Protocol(format!("live client script answered {v:?}"))
                })?;
                Ok(Some((limit, (*value).max(0) as u64, (*wait).max(1) as u64)))
            }
            _ => Err(StoreError::Protocol(format!(
                "live client script answered {v:?}"
            ))),
        }
    }

    pub(super) async fn client_session_renew(
        &self,
        held: &[(Arc<str>, String)],
        lease_ms: u64,
    ) -> Result<(), StoreError> {
        for chunk in held.chunks(256) {
            let mut inv = super::live::RENEW.prepare_invoke();
            inv.arg(lease_ms.clamp(1, MAX_HOLD_MS)).arg(self.now_arg());
            for (client, session) in chunk {
                inv.key(self.in_flight(client)).arg(member(session));
            }
            let _: i64 = self.run(inv).await?;
        }
        Ok(())
    }

    pub(super) async fn client_session_close(
        &self,
        client: &str,
        session: &str,
    ) -> Result<(), StoreError> {
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

    pub(super) async fn session_usage(&self, u: &LiveUsage) -> Result<(u64, u64), StoreError> {
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
