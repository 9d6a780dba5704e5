//! The usage ledger's way into the quota store's Redis ([`SharedIo`]): the same connection,
//! namespace and deadline, its sums riding with settlement batches.

use std::sync::Arc;
use std::time::Duration;

use redis::Script;

use super::keys::Keys;
use super::settle::{RideOutcome, RiderBatch, RiderSlot, ride_outcome, settle_call};
use super::{RedisConn, Rider, store_err};
use crate::quota::StoreError;

/// The usage ledger's way into the same Redis: its sums ride with settlement batches (see
/// [`Rider`]) and it reads its buckets back with [`SharedIo::read_hashes`]. Cheap to clone.
#[derive(Clone)]
pub struct SharedIo {
    pub(super) conn: RedisConn,
    pub(super) keys: Keys,
    pub(super) timeout: Duration,
    pub(super) rider: RiderSlot,
    pub(super) settle: Script,
}

impl std::fmt::Debug for SharedIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedIo")
            .field("prefix", &self.keys.prefix())
            .finish()
    }
}

/// Hashes read per pipeline (one round trip each, under the store's deadline): a busy minute
/// of the ledger holds thousands of fields, so a pipeline stays small enough to answer in time.
const READ_CHUNK: usize = 8;

impl SharedIo {
    /// Attach the rider (once; a second call is ignored and returns false).
    pub fn attach(&self, rider: Arc<dyn Rider>) -> bool {
        self.rider.set(rider).is_ok()
    }

    /// `HGETALL` of every `{ns}:SUFFIX`, pipelined; a missing hash reads as empty.
    pub async fn read_hashes(
        &self,
        suffixes: &[String],
    ) -> Result<Vec<Vec<(String, String)>>, StoreError> {
        let mut out = Vec::with_capacity(suffixes.len());
        for chunk in suffixes.chunks(READ_CHUNK) {
            let mut pipe = redis::pipe();
            for s in chunk {
                pipe.cmd("HGETALL").arg(self.keys.named(s));
            }
            let mut conn = self.conn.clone();
            let got: Vec<Vec<(String, String)>> =
                match tokio::time::timeout(self.timeout, pipe.query_async(&mut conn)).await {
                    Ok(r) => r.map_err(store_err)?,
                    Err(_) => return Err(StoreError::Timeout(self.timeout.as_millis() as u64)),
                };
            out.extend(got);
        }
        Ok(out)
    }

    /// Add `batch` now, in a call of its own (at shutdown: the last sums, not waiting for the
    /// next settlement batch).
    pub async fn write_now(&self, batch: &RiderBatch) -> (RideOutcome, Option<String>) {
        let inv = settle_call(&self.settle, &self.keys, &[], Some(batch));
        let mut conn = self.conn.clone();
        match tokio::time::timeout(self.timeout, inv.invoke_async::<i64>(&mut conn)).await {
            Ok(Ok(_)) => (RideOutcome::Written, None),
            Ok(Err(e)) => (ride_outcome(&e), Some(e.to_string())),
            Err(_) => (RideOutcome::Retry, Some("timed out".into())),
        }
    }

    /// Run `script` with `KEYS` = `{ns}:SUFFIX` for each suffix (so every key shares the
    /// namespace's hash tag) and `args`, under the store's deadline.
    pub async fn run_script(
        &self,
        script: &Script,
        suffixes: &[String],
        args: &[String],
    ) -> Result<i64, StoreError> {
        let mut inv = script.prepare_invoke();
        for s in suffixes {
            inv.key(self.keys.named(s));
        }
        for a in args {
            inv.arg(a);
        }
        let mut conn = self.conn.clone();
        match tokio::time::timeout(self.timeout, inv.invoke_async::<i64>(&mut conn)).await {
            Ok(r) => r.map_err(store_err),
            Err(_) => Err(StoreError::Timeout(self.timeout.as_millis() as u64)),
        }
    }

    /// The connection (shared with the store; cloning it is cheap).
    pub fn connection(&self) -> RedisConn {
        self.conn.clone()
    }

    /// `{namespace}`: the hash tag every key of this store starts with.
    pub fn prefix(&self) -> &str {
        self.keys.prefix()
    }

    /// The deadline of one call.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// `GET {ns}:SUFFIX`.
    pub async fn get(&self, suffix: &str) -> Result<Option<String>, StoreError> {
        let mut conn = self.conn.clone();
        let mut cmd = redis::cmd("GET");
        cmd.arg(self.keys.named(suffix));
        match tokio::time::timeout(self.timeout, cmd.query_async(&mut conn)).await {
            Ok(r) => r.map_err(store_err),
            Err(_) => Err(StoreError::Timeout(self.timeout.as_millis() as u64)),
        }
    }
}
