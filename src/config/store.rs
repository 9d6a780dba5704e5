//! `[store]`: where quota counters live (memory, or a Redis shared by replicas).

use std::time::Duration;

use serde::Deserialize;

use super::check::{ConfigError, bad, check_name};
use crate::quota::StoreConfig;
use crate::quota::resilient::StoreFailurePolicy;
use crate::secret::Secret;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Raw {
    redis_url: Secret,
    namespace: String,
    timeout_ms: u64,
    on_error: String,
}

/// Validate `[store]` into the quota store's own [`StoreConfig`].
pub(super) fn from_raw(raw: Raw) -> Result<StoreConfig, ConfigError> {
    let on_error = match raw.on_error.as_str() {
        "local" => StoreFailurePolicy::Local,
        "fail-closed" => StoreFailurePolicy::FailClosed,
        "fail-open" => StoreFailurePolicy::FailOpen,
        other => {
            return Err(bad(
                "store.on_error",
                format!("expected \"local\", \"fail-closed\" or \"fail-open\", got {other:?}"),
            ));
        }
    };
    if raw.timeout_ms == 0 {
        return Err(bad("store.timeout_ms", "must be at least 1"));
    }
    check_name("store.namespace", &raw.namespace)?;
    let redis_url = Some(raw.redis_url).filter(|u| !u.is_empty());
    if let Some(u) = &redis_url {
        if u.expose().starts_with("rediss://") {
            return Err(bad(
                "store.redis_url (REDIS_URL)",
                "rediss:// (TLS) is not built into this proxy: reach Redis over redis:// on a \
                 private network, or through a TLS tunnel such as stunnel",
            ));
        }
        if !(u.expose().starts_with("redis://")
            || u.expose().starts_with("redis+unix://")
            || u.expose().starts_with("unix://"))
        {
            return Err(bad(
                "store.redis_url (REDIS_URL)",
                "expected a URL starting with redis:// or unix://",
            ));
        }
    }
    Ok(StoreConfig {
        redis_url,
        namespace: raw.namespace,
        timeout: Duration::from_millis(raw.timeout_ms),
        on_error,
    })
}
