//! One notification per transition across replicas: the replica that moves an alert's shared
//! state (`{ns}:alert:FINGERPRINT`, compare-and-set in one script) sends it; a repeat is
//! claimed with `SET NX PX` on `{ns}:alert:FINGERPRINT:repeat`. Keys name the fingerprint (a
//! hash of rule and labels), never a secret. In memory mode the one replica holds the states.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use redis::Script;

use crate::config::AlertsConfig;
use crate::quota::redis::SharedIo;

/// Compare-and-set of an alert's state: `resolved` deletes the key (1 when it was there), any
/// other state is set (1) unless it is already the value (0).
const STATE: &str = r"
if ARGV[1] == 'resolved' then
  return redis.call('DEL', KEYS[1])
end
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
";

/// The repeat marker, set once per interval; the state key's life is extended with it.
const REPEAT: &str = r"
if redis.call('SET', KEYS[1], '1', 'NX', 'PX', ARGV[1]) then
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
  return 1
end
return 0
";

/// Where transitions are claimed.
pub enum Claims {
    /// This replica alone: the last state sent per firing alert.
    Local(Mutex<HashMap<String, String>>),
    /// The store's Redis, shared by the replicas.
    Shared {
        io: SharedIo,
        state: Script,
        repeat: Script,
        /// How long a firing state is kept without a repeat refreshing it.
        keep_ms: u64,
        /// The repeat marker's life: long enough to cover the replicas' skew, shorter than the
        /// interval.
        repeat_ms: u64,
    },
}

impl Claims {
    pub fn new(shared: Option<SharedIo>, cfg: &AlertsConfig) -> Claims {
        match shared {
            None => Claims::Local(Mutex::new(HashMap::new())),
            Some(io) => {
                let repeat = cfg.repeat_interval;
                let keep = (repeat * 3).max(Duration::from_secs(86_400));
                Claims::Shared {
                    io,
                    state: Script::new(STATE),
                    repeat: Script::new(REPEAT),
                    keep_ms: keep.as_millis() as u64,
                    repeat_ms: (repeat.as_millis() as u64 / 2).max(1),
                }
            }
        }
    }

    /// Move the alert `fp` to `state`; true when this replica moved it (and so sends it).
    /// While Redis cannot be asked, each replica sends its own: better twice than never.
    pub async fn state(&self, fp: &str, state: &str) -> bool {
        match self {
            Claims::Local(m) => {
                let mut m = m.lock().unwrap_or_else(|p| p.into_inner());
                if state == "resolved" {
                    m.remove(fp).is_some()
                } else if m.get(fp).is_some_and(|s| s == state) {
                    false
                } else {
                    m.insert(fp.to_string(), state.to_string());
                    true
                }
            }
            Claims::Shared {
                io,
                state: script,
                keep_ms,
                ..
            } => {
                let keys = [format!("alert:{fp}")];
                let args = [state.to_string(), keep_ms.to_string()];
                match io.run_script(script, &keys, &args).await {
                    Ok(n) => n == 1,
                    Err(e) => {
                        tracing::warn!(error = %e, "alert claim failed: sending from this replica");
                        true
                    }
                }
            }
        }
    }

    /// Claim the repeat of the firing alert `fp`.
    pub async fn repeat(&self, fp: &str) -> bool {
        match self {
            Claims::Local(_) => true,
            Claims::Shared {
                io,
                repeat,
                keep_ms,
                repeat_ms,
                ..
            } => {
                let keys = [format!("alert:{fp}:repeat"), format!("alert:{fp}")];
                let args = [repeat_ms.to_string(), keep_ms.to_string()];
                match io.run_script(repeat, &keys, &args).await {
                    Ok(n) => n == 1,
                    Err(e) => {
                        tracing::warn!(error = %e, "alert claim failed: sending from this replica");
                        true
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn in_memory_each_state_is_claimed_once_and_resolve_only_after_firing() {
        let c = Claims::Local(Mutex::new(HashMap::new()));
        assert!(!c.state("fp", "resolved").await, "never fired");
        assert!(c.state("fp", "firing:warning").await);
        assert!(!c.state("fp", "firing:warning").await);
        assert!(c.state("fp", "firing:critical").await);
        assert!(c.state("fp", "resolved").await);
        assert!(!c.state("fp", "resolved").await);
    }
}
