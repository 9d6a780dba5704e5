//! The runtime clients in Redis: the hash `{ns}:clients` and its version counter, the scripts
//! that change one record and bump the version in one step (create unless taken, replace only
//! if unchanged, delete), and the read that takes the hash again only when the version moved.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use redis::Script;

use super::record::Record;
use super::{Backend, ClientStore, Inner, StoreOpError, apply};
use crate::quota::redis::SharedIo;

const HASH: &str = "clients";
const VERSION: &str = "clients:version";

/// Add a client unless its name is taken (-1) or the hash holds `ARGV[3]` already (-2).
pub(super) static CREATE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then return -1 end
if redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[3]) then return -2 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return redis.call('INCR', KEYS[2])
",
    )
});

/// Replace a client's record if it is still `ARGV[2]` (-3: another change came first; -1: gone).
pub(super) static REPLACE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if not cur then return -1 end
if cur ~= ARGV[2] then return -3 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return redis.call('INCR', KEYS[2])
",
    )
});

pub(super) static DELETE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then return -1 end
return redis.call('INCR', KEYS[2])
",
    )
});

impl ClientStore {
    /// Redis: read the records again if the version moved (or was never read), and apply
    /// them. Nothing to do for a file (this replica is its only writer).
    pub(super) async fn sync(&self, inner: &mut Inner) -> Result<(), String> {
        let Backend::Redis(io) = &self.backend else {
            return Ok(());
        };
        let version = io
            .get(VERSION)
            .await
            .map_err(|e| e.to_string())?
            .and_then(|v| v.parse::<i64>().ok())
            .unwrap_or(0);
        if inner.version == Some(version) {
            return Ok(());
        }
        let fields = io
            .read_hashes(&[HASH.to_string()])
            .await
            .map_err(|e| e.to_string())?
            .into_iter()
            .next()
            .unwrap_or_default();
        let mut records = BTreeMap::new();
        for (name, json) in fields {
            match serde_json::from_str::<Record>(&json) {
                Ok(r) if r.name == name => {
                    records.insert(name, r);
                }
                _ => {
                    tracing::warn!(client = %name, "a runtime client in Redis is not readable: left out")
                }
            }
        }
        inner.records = records;
        inner.version = Some(version);
        apply(&self.registry, inner);
        Ok(())
    }
}

pub(super) async fn script(
    io: &SharedIo,
    s: &Script,
    args: &[String],
) -> Result<i64, StoreOpError> {
    io.run_script(s, &[HASH.to_string(), VERSION.to_string()], args)
        .await
        .map_err(|e| StoreOpError::Unavailable(format!("the shared store did not answer: {e}")))
}

pub(super) fn to_json(r: &Record) -> Result<String, StoreOpError> {
    serde_json::to_string(r).map_err(|e| StoreOpError::Unavailable(e.to_string()))
}
