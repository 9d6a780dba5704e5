//! Holds and key states in Redis ([`KeyHealth`]): a (project, model) held with its reason (a
//! key that expires with the hold, listed in the held set), the holds read back with their time
//! left, and keys disabled for 30 days; and the resources pinned to a key ([`Pins`]).

use std::sync::Arc;

use async_trait::async_trait;
use redis::{FromRedisValue, Value};

use super::{RedisStore, int};
use crate::quota::{Cooldown, KeyHealth, KeyState, Pins, StoreError};

#[async_trait]
impl KeyHealth for RedisStore {
    async fn cool_down(
        &self,
        project: &str,
        model: &str,
        ms: u64,
        reason: &str,
    ) -> Result<(), StoreError> {
        let mut inv = self.cooldown.prepare_invoke();
        inv.key(self.keys.cooldown(project, model))
            .key(self.keys.held())
            .arg(ms.clamp(1, crate::quota::MAX_HOLD_MS))
            .arg(reason)
            .arg(self.now_arg())
            .arg(format!("{project}|{model}"));
        let _: i64 = self.run(inv).await?;
        Ok(())
    }

    async fn cooldowns(&self) -> Result<Vec<Cooldown>, StoreError> {
        let held = self.members(self.keys.held()).await?;
        if held.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for (p, m) in &held {
            let k = self.keys.cooldown(p, m);
            pipe.cmd("PTTL").arg(&k).cmd("GET").arg(&k);
        }
        let mut conn = self.conn.clone();
        let v: Vec<Value> = self.deadline(pipe.query_async(&mut conn)).await?;
        let mut out = Vec::new();
        for ((p, m), pair) in held.iter().zip(v.chunks(2)) {
            let ttl = pair.first().map(int).transpose()?.unwrap_or(-2);
            if ttl > 0 {
                // The value is "until_ms|reason".
                let reason = pair
                    .get(1)
                    .and_then(|r| String::from_redis_value(r.clone()).ok())
                    .map(|v| v.split_once('|').map_or(v.clone(), |(_, r)| r.to_string()))
                    .unwrap_or_default();
                out.push(Cooldown {
                    project: p.to_string(),
                    model: m.to_string(),
                    remaining_ms: ttl as u64,
                    reason,
                });
            }
        }
        out.sort_by(|a, b| (&a.project, &a.model).cmp(&(&b.project, &b.model)));
        Ok(out)
    }

    async fn disable_key(&self, kid: &str, reason: &str) -> Result<(), StoreError> {
        // Thirty days: long enough to mean "until an admin acts", short enough to expire.
        let _: () = self
            .cmd(
                redis::cmd("SET")
                    .arg(self.keys.disabled(kid))
                    .arg(reason)
                    .arg("PX")
                    .arg(30u64 * 86_400_000)
                    .clone(),
            )
            .await?;
        Ok(())
    }

    async fn key_states(&self, kids: &[Arc<str>]) -> Result<Vec<KeyState>, StoreError> {
        if kids.is_empty() {
            return Ok(Vec::new());
        }
        let mut cmd = redis::cmd("MGET");
        for k in kids {
            cmd.arg(self.keys.disabled(k));
        }
        let v: Vec<Option<String>> = self.cmd(cmd).await?;
        Ok(v.into_iter()
            .map(|r| match r {
                Some(reason) => KeyState::Disabled { reason },
                None => KeyState::Active,
            })
            .collect())
    }
}

#[async_trait]
impl Pins for RedisStore {
    async fn set_affinity(&self, resource: &str, kid: &str, ttl_ms: u64) -> Result<(), StoreError> {
        let _: () = self
            .cmd(
                redis::cmd("SET")
                    .arg(self.keys.affinity(resource))
                    .arg(kid)
                    .arg("PX")
                    .arg(ttl_ms.max(1))
                    .clone(),
            )
            .await?;
        Ok(())
    }

    async fn affinity(&self, resource: &str) -> Result<Option<String>, StoreError> {
        self.cmd(redis::cmd("GET").arg(self.keys.affinity(resource)).clone())
            .await
    }
}
