//! Redis `QuotaStore`: one `EVALSHA` of a Lua script (Redis `TIME`, one `{hash tag}`) admits a
//! request, or several that met in flight (`gather`); every call has a deadline; raw API keys
//! never reach Redis (key ids only). One Redis node or a Redis Cluster ([`conn`]): every key a
//! script touches is named in `KEYS`. Admission and its counters here; the other concerns' trait
//! impls in `holds` (holds, disabled keys, pins), `live`, `batch` and `budget` (clients'
//! budgets).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use redis::{FromRedisValue, Script, Value};

use super::{
    AdmitOutcome, AdmitRequest, Clock, DayCache, DayInfo, QuotaStore, Reservation, ResetKind,
    ResetScope, StoreError, SystemClock, Usage,
};

mod admit;
pub mod conn;
mod gather;
mod io;
mod keys;
pub mod nodes;
mod pairs;
mod redact;
mod settle;

pub use self::conn::RedisConn;
pub use self::io::SharedIo;
use self::keys::Keys;
pub use self::redact::redact_url;
pub use self::settle::{HashAdd, RideOutcome, Rider, RiderBatch};
use self::settle::{PendingSettle, RiderSlot, settle_call};

macro_rules! lua {
    ($file:literal) => {
        concat!(
            include_str!("lua/prelude.lua"),
            include_str!(concat!("lua/", $file))
        )
    };
    // A script calling the client part (client.lua).
    (client $file:literal) => {
        concat!(
            include_str!("lua/prelude.lua"),
            include_str!("lua/client.lua"),
            include_str!(concat!("lua/", $file))
        )
    };
    // The admission script, with the client part it calls and the choice of key.
    (admit) => {
        concat!(
            include_str!("lua/prelude.lua"),
            include_str!("lua/client.lua"),
            include_str!("lua/choice.lua"),
            include_str!("lua/admit.lua")
        )
    };
    // Admissions gathered (no client part), with the choice of key.
    (admit_many) => {
        concat!(
            include_str!("lua/prelude.lua"),
            include_str!("lua/choice.lua"),
            include_str!("lua/admit_many.lua")
        )
    };
}

// After the macro: the scripts' module uses it.
mod batch;
mod budget;
mod build;
mod holds;
mod live;
/// Most `project|model` pairs the set of pairs lists (`admit.lua` carries the same figure):
/// model names are the client's choice, and every status read, `/metrics` scrape and alert
/// evaluation walks the set. A pair past it is still counted, only not listed (the status page
/// and an admin reset do not see it); the usage scan removes idle pairs, making room again.
pub const PAIRS_CAP: usize = 4096;

/// Quota state shared by every replica pointed at one Redis.
pub struct RedisStore {
    conn: RedisConn,
    /// Every key's name, each starting with `{namespace}`, so all keys share one Cluster slot.
    keys: Keys,
    timeout: Duration,
    days: DayCache,
    /// `None` in production (Redis `TIME`); tests inject a clock to travel in time.
    clock: Option<Arc<dyn Clock>>,
    /// `None`: the day is named by `clock`, else the system clock. Tests set a clock that is on
    /// another day than Redis's `TIME`, as a replica's may be around midnight.
    day_clock: Option<Arc<dyn Clock>>,
    admit: Script,
    /// Admissions gathered while one was running (admit_many.lua, `gather`).
    admit_many: Script,
    gather: gather::Gather,
    settle: Script,
    usage: Script,
    /// The window and the pairs cap the scripts were loaded with.
    window_ms: u64,
    pairs_cap: usize,
    cooldown: Script,
    reset: Script,
    /// A client's step outside admission, a Live session's slot or a batch job's budget
    /// (client_alone.lua); a Live session's usage (live_usage.lua).
    client_alone: Script,
    live_usage: Script,
    /// Settlements waiting for the batch writer.
    settle_queue: tokio::sync::mpsc::Sender<PendingSettle>,
    /// What rides along with settlement batches (the usage ledger), once attached.
    rider: RiderSlot,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.keys.prefix())
            .field("mode", &self.conn.mode())
            .finish()
    }
}

fn store_err(e: redis::RedisError) -> StoreError {
    if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() || e.is_timeout() {
        StoreError::Unreachable(e.to_string())
    } else {
        StoreError::Protocol(e.to_string())
    }
}

impl RedisStore {
    fn now_arg(&self) -> String {
        self.clock
            .as_ref()
            .map(|c| c.now_ms().to_string())
            .unwrap_or_default()
    }

    fn day(&self) -> DayInfo {
        let now = match self.day_clock.as_ref().or(self.clock.as_ref()) {
            Some(c) => c.now_ms(),
            None => SystemClock.now_ms(),
        };
        self.days.at(now)
    }

    /// The head of a script's call built whole: `EVALSHA <script's hash> <keys>`, its `keys`
    /// key names and then its arguments to follow, run by [`Self::eval`].
    fn evalsha(script: &redis::Script, keys: usize) -> redis::Cmd {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(script.get_hash()).arg(keys);
        cmd
    }

    /// A script's call built whole as `cmd` (an `EVALSHA` of `script`), with what the
    /// invocation does when Redis lost its scripts (a restart, `SCRIPT FLUSH`): load it, call
    /// again.
    async fn eval<T: FromRedisValue>(
        &self,
        script: &redis::Script,
        cmd: &redis::Cmd,
    ) -> Result<T, StoreError> {
        let mut conn = self.conn.clone();
        self.deadline(async {
            match cmd.query_async(&mut conn).await {
                Err(e)
                    if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
                {
                    script.load_async(&mut conn).await?;
                    cmd.query_async(&mut conn).await
                }
                r => r,
            }
        })
        .await
    }

    async fn run<T: FromRedisValue>(
        &self,
        inv: redis::ScriptInvocation<'_>,
    ) -> Result<T, StoreError> {
        let mut conn = self.conn.clone();
        self.deadline(inv.invoke_async(&mut conn)).await
    }

    /// Every store call gets `timeout`; Redis errors become `StoreError`s.
    async fn deadline<T>(
        &self,
        call: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(r) => r.map_err(store_err),
            Err(_) => Err(StoreError::Timeout(self.timeout.as_millis() as u64)),
        }
    }

    async fn cmd<T: FromRedisValue>(&self, cmd: redis::Cmd) -> Result<T, StoreError> {
        let mut conn = self.conn.clone();
        self.deadline(cmd.query_async(&mut conn)).await
    }
}

/// An integer in a script's answer.
fn int(v: &Value) -> Result<i64, StoreError> {
    match v {
        Value::Int(i) => Ok(*i),
        other => Err(StoreError::Protocol(format!(
            "expected an integer, got {other:?}"
        ))),
    }
}

/// Pairs per usage or reset call: a day's pairs are bounded by configuration, but a call stays
/// a bounded command however many there are.
const PAIRS_PER_CALL: usize = 512;

#[async_trait]
impl QuotaStore for RedisStore {
    async fn admit(&self, req: &AdmitRequest) -> Result<AdmitOutcome, StoreError> {
        self.admit_gathered(req).await
    }

    async fn settle(&self, r: &Reservation, actual_tokens: u64) -> Result<(), StoreError> {
        if r.uncounted {
            return Ok(());
        }
        let one = [PendingSettle::of(r, actual_tokens)];
        let inv = settle_call(&self.settle, &self.keys, &one, None);
        let _: i64 = self.run(inv).await?;
        Ok(())
    }

    fn settle_later(&self, r: &Reservation, actual_tokens: u64) -> bool {
        if r.uncounted {
            return true;
        }
        let pending = PendingSettle::of(r, actual_tokens);
        if self.settle_queue.try_send(pending).is_err() {
            tracing::warn!("settlement queue full: this request's estimate stays counted");
        }
        true
    }

    /// Two calls: the set of pairs, then their counters (windows pruned) in one script.
    async fn usage(&self) -> Result<Vec<(String, String, Usage)>, StoreError> {
        let pairs = self.pairs().await?;
        let args = [self.day().offset_ms.to_string(), self.now_arg()];
        let mut out = Vec::new();
        for chunk in pairs.chunks(PAIRS_PER_CALL) {
            let v = self.run_on_pairs(&self.usage, chunk, &args, true).await?;
            let counts = &v[1..];
            if counts.len() != 3 * chunk.len() {
                return Err(StoreError::Protocol(
                    "usage script answered a partial row".into(),
                ));
            }
            for ((project, model), row) in chunk.iter().zip(counts.chunks(3)) {
                let u = Usage {
                    minute_requests: int(&row[0])?.max(0) as u64,
                    minute_tokens: int(&row[1])?.max(0) as u64,
                    daily_requests: int(&row[2])?.max(0) as u64,
                };
                if u.minute_requests > 0 || u.minute_tokens > 0 || u.daily_requests > 0 {
                    out.push((project.clone(), model.clone(), u));
                }
            }
        }
        Ok(out)
    }

    /// Reads the sets of pairs first, then clears the named ones in one call: a pair first
    /// counted between the two (an admission in that moment) is counted after the reset.
    async fn reset(&self, kind: ResetKind, scope: &ResetScope) -> Result<(), StoreError> {
        self.reset_pairs(kind, scope).await
    }

    /// Reads a key of the namespace rather than sending PING: a node that answers PING but
    /// does not serve the namespace's slot (a Cluster node: `MOVED`, `CLUSTERDOWN`) or is
    /// still loading its data (`LOADING`) is not a working store.
    async fn ping(&self) -> Result<(), StoreError> {
        let _: Option<String> = self
            .cmd(redis::cmd("GET").arg(self.keys.named("ping")).clone())
            .await?;
        Ok(())
    }

    fn backend(&self) -> &'static str {
        "redis"
    }

    fn shared_io(&self) -> Option<SharedIo> {
        Some(RedisStore::shared_io(self))
    }
}
