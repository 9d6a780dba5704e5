//! Batch jobs in Redis ([`BatchJobs`], [`crate::quota::batch`]): one hash, `{ns}:bt`, of every open job, every
//! creation's hold and every results file waiting to be costed, shared by the replicas (a job
//! created on one is released by whichever sees it end, once: `HDEL` answers 1 to one caller)
//! and kept across restarts. Fields are job names and `hold:N` / `file:files/ID`; values are
//! the entries' JSON (project, key id, model, tokens, client name, owner, budget reservation),
//! never a key.

use std::sync::LazyLock;

use async_trait::async_trait;
use redis::{FromRedisValue, Script, Value};

use super::{RedisStore, int};
use crate::quota::batch::{self, BatchJob, BatchJobs, BatchReserve};
use crate::quota::{MAX_HOLD_MS, StoreError};

static RESERVE: LazyLock<Script> = LazyLock::new(|| Script::new(lua!("batch_reserve.lua")));
static OPEN: LazyLock<Script> = LazyLock::new(|| Script::new(lua!("batch_open.lua")));
static RESULTS: LazyLock<Script> = LazyLock::new(|| Script::new(lua!("batch_results.lua")));

fn json(job: &BatchJob) -> Result<String, StoreError> {
    serde_json::to_string(job).map_err(|e| StoreError::Protocol(e.to_string()))
}

impl RedisStore {
    fn batch_hash(&self) -> String {
        self.keys.named("bt")
    }

    /// Now on this store's clock (Redis `TIME` is the scripts'; entries read here are judged
    /// by the replica's clock, which only decides whether a lapsed hold is shown).
    fn now_ms(&self) -> i64 {
        use crate::quota::Clock;
        match &self.clock {
            Some(c) => c.now_ms(),
            None => crate::quota::SystemClock.now_ms(),
        }
    }
}

#[async_trait]
impl BatchJobs for RedisStore {
    async fn batch_reserve(
        &self,
        req: &BatchReserve,
    ) -> Result<Option<(usize, String)>, StoreError> {
        if req.candidates.is_empty() {
            return Ok(None);
        }
        // The job's JSON without the project, key id and lease the script writes first.
        let mut map = match serde_json::to_value(&req.job) {
            Ok(serde_json::Value::Object(m)) => m,
            _ => return Err(StoreError::Protocol("a batch job as JSON".into())),
        };
        for k in ["p", "k", "u"] {
            map.remove(k);
        }
        let rest = serde_json::Value::Object(map).to_string();
        let mut inv = RESERVE.prepare_invoke();
        inv.key(self.batch_hash())
            .key(self.keys.named("bt:seq"))
            .arg(self.now_arg())
            .arg(req.concurrent)
            .arg(req.enqueued_tokens)
            .arg(&req.job.model)
            .arg(req.job.tokens)
            .arg(req.lease_ms.clamp(1, MAX_HOLD_MS))
            .arg(&rest[1..]);
        for c in &req.candidates {
            inv.arg(&c.project).arg(&c.kid);
        }
        let v: Vec<Value> = self.run(inv).await?;
        match v.as_slice() {
            [first] if int(first)? == 0 => Ok(None),
            [i, hold] => {
                let i = usize::try_from(int(i)?.max(1) - 1).unwrap_or(0);
                let hold = String::from_redis_value(hold.clone())
                    .map_err(|e| StoreError::Protocol(e.to_string()))?;
                Ok((i < req.candidates.len()).then_some((i, hold)))
            }
            _ => Err(StoreError::Protocol(format!(
                "batch reserve script answered {v:?}"
            ))),
        }
    }

    async fn batch_open(&self, hold: &str, name: &str, job: &BatchJob) -> Result<(), StoreError> {
        let job = BatchJob {
            until_ms: None,
            ..job.clone()
        };
        let mut inv = OPEN.prepare_invoke();
        inv.key(self.batch_hash())
            .arg(hold)
            .arg(name)
            .arg(json(&job)?);
        let _: i64 = self.run(inv).await?;
        Ok(())
    }

    async fn batch_take(&self, field: &str) -> Result<Option<BatchJob>, StoreError> {
        let mut pipe = redis::pipe();
        pipe.cmd("HGET")
            .arg(self.batch_hash())
            .arg(field)
            .cmd("HDEL")
            .arg(self.batch_hash())
            .arg(field);
        let mut conn = self.conn.clone();
        let (value, removed): (Option<String>, i64) =
            self.deadline(pipe.query_async(&mut conn)).await?;
        // Only the caller whose HDEL removed it has it: released once across replicas.
        Ok(value
            .filter(|_| removed == 1)
            .and_then(|v| serde_json::from_str(&v).ok()))
    }

    async fn batch_results(&self, file: &str, job: &BatchJob, cap: u64) -> Result<(), StoreError> {
        let job = BatchJob {
            until_ms: Some(self.now_ms().saturating_add(batch::RESULTS_TTL_MS)),
            ..job.clone()
        };
        let mut inv = RESULTS.prepare_invoke();
        inv.key(self.batch_hash())
            .arg(format!("{}{file}", batch::RESULTS))
            .arg(json(&job)?)
            .arg(cap)
            .arg(&job.project)
            .arg(self.now_arg());
        let _: i64 = self.run(inv).await?;
        Ok(())
    }

    async fn batch_entry(&self, field: &str) -> Result<Option<BatchJob>, StoreError> {
        let v: Option<String> = self
            .cmd(redis::cmd("HGET").arg(self.batch_hash()).arg(field).clone())
            .await?;
        let now = self.now_ms();
        Ok(v.and_then(|v| serde_json::from_str::<BatchJob>(&v).ok())
            .filter(|j| !batch::lapsed(field, j, now)))
    }

    async fn batch_entries(&self) -> Result<Vec<(String, BatchJob)>, StoreError> {
        let all: Vec<(String, String)> = self
            .cmd(redis::cmd("HGETALL").arg(self.batch_hash()).clone())
            .await?;
        let now = self.now_ms();
        Ok(all
            .into_iter()
            .filter_map(|(f, v)| Some((f, serde_json::from_str::<BatchJob>(&v).ok()?)))
            .filter(|(f, j)| !batch::lapsed(f, j, now))
            .collect())
    }
}
