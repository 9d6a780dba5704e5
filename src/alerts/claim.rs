//! One notification per transition across replicas: the replica that moves an alert's shared
//! state (`{ns}:alert:FINGERPRINT`, compare-and-set in one script) sends it; a repeat is
//! claimed with `SET NX PX` on `{ns}:alert:FINGERPRINT:repeat`. A firing state lives a few
//! evaluations and each evaluation refreshes the ones still firing ([`Claims::refresh`]), so
//! stale states expire. Keys name the fingerprint (a hash of rule and labels), never a secret.
//! In memory mode the one replica holds the states.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::LazyLock;
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

/// Extend the life of each firing state in `KEYS` that still exists (by `ARGV[1]` ms).
const REFRESH: &str = r"
local n = 0
for _, k in ipairs(KEYS) do
  n = n + redis.call('PEXPIRE', k, ARGV[1])
end
return n
";

/// The shortest life of a firing state between refreshes.
const KEEP_AT_LEAST: Duration = Duration::from_secs(5);

/// How long a firing state lives without an evaluation refreshing it (about three
/// evaluations, so a replica that misses one does not lose it, and a state left behind by
/// replicas that stopped cannot hide the next firing for long), and how long a repeat
/// marker lives (the interval less one evaluation: the replicas' evaluations may be one
/// period apart, and the next repeat must be claimable when it is due).
pub fn lifetimes(cfg: &AlertsConfig) -> (Duration, Duration) {
    let keep = (cfg.evaluate_every * 3).max(KEEP_AT_LEAST);
    let repeat = cfg
        .repeat_interval
        .saturating_sub(cfg.evaluate_every)
        .max(Duration::from_secs(1));
    (keep, repeat)
}

/// The scripts, hashed once per process (not held by each [`Claims`]).
static STATE_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(STATE));
static REPEAT_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(REPEAT));
static REFRESH_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(REFRESH));

/// Where transitions are claimed.
pub enum Claims {
    /// This replica alone: the last state sent per firing alert.
    Local(Mutex<HashMap<String, String>>),
    /// The store's Redis, shared by the replicas.
    Shared {
        io: SharedIo,
        /// How long a firing state is kept without an evaluation refreshing it.
        keep_ms: u64,
        /// The repeat marker's life: the interval less one evaluation.
        repeat_ms: u64,
    },
}

impl Claims {
    pub fn new(shared: Option<SharedIo>, cfg: &AlertsConfig) -> Claims {
        match shared {
            None => Claims::Local(Mutex::new(HashMap::new())),
            Some(io) => {
                let (keep, repeat) = lifetimes(cfg);
                Claims::Shared {
                    io,
                    keep_ms: keep.as_millis() as u64,
                    repeat_ms: repeat.as_millis() as u64,
                }
            }
        }
    }

    /// Move the alert `fp` to `state`; true when this replica moved it (and so sends it).
    /// While Redis cannot be asked, each replica sends its own: better twice than never.
    pub async fn state(&self, fp: &str, state: &str) -> bool {
        match self {
            Claims::Local(m) => {
                let mut m = m.lock();
                if state == "resolved" {
                    m.remove(fp).is_some()
                } else if m.get(fp).is_some_and(|s| s == state) {
                    false
                } else {
                    m.insert(fp.to_string(), state.to_string());
                    true
                }
            }
            Claims::Shared { io, keep_ms, .. } => {
                let keys = [format!("alert:{fp}")];
                let args = [state.to_string(), keep_ms.to_string()];
                match io.run_script(&STATE_SCRIPT, &keys, &args).await {
                    Ok(n) => n == 1,
                    Err(e) => {
                        tracing::warn!(error = %e, "alert claim failed: sending from this replica");
                        true
                    }
                }
            }
        }
    }

    /// Keep the shared states of the alerts firing here (`fps`) alive for another
    /// [`lifetimes`], in one script call. A state no replica refreshes expires, so one left
    /// behind by replicas that stopped while the alert cleared cannot hide its next firing.
    pub async fn refresh(&self, fps: &[String]) {
        let Claims::Shared { io, keep_ms, .. } = self else {
            return;
        };
        if fps.is_empty() {
            return;
        }
        let keys: Vec<String> = fps.iter().map(|fp| format!("alert:{fp}")).collect();
        if let Err(e) = io
            .run_script(&REFRESH_SCRIPT, &keys, &[keep_ms.to_string()])
            .await
        {
            tracing::warn!(error = %e, "alert states could not be refreshed");
        }
    }

    /// Claim the repeat of the firing alert `fp`.
    pub async fn repeat(&self, fp: &str) -> bool {
        match self {
            Claims::Local(_) => true,
            Claims::Shared {
                io,
                keep_ms,
                repeat_ms,
            } => {
                let keys = [format!("alert:{fp}:repeat"), format!("alert:{fp}")];
                let args = [repeat_ms.to_string(), keep_ms.to_string()];
                match io.run_script(&REPEAT_SCRIPT, &keys, &args).await {
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

    #[test]
    fn a_firing_state_lives_a_few_evaluations_and_a_repeat_marker_one_less_than_the_interval() {
        let cfg = |toml: &str| crate::config::for_test(toml, &[]).alerts;
        let c = cfg("[alerts]\nevaluate_every_secs = 10\nrepeat_interval_secs = 14400\n");
        assert_eq!(
            lifetimes(&c),
            (Duration::from_secs(30), Duration::from_secs(14_390))
        );
        let c = cfg("[alerts]\nevaluate_every_secs = 1\nrepeat_interval_secs = 1\n");
        assert_eq!(
            lifetimes(&c),
            (Duration::from_secs(5), Duration::from_secs(1))
        );
    }

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
