//! `[cache]`: the response cache (off by default): how long answers are kept, how large they
//! and the whole memory cache may grow, where entries live and whom they are shared with.

use std::time::Duration;

use serde::Deserialize;

use super::check::{ConfigError, bad};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Raw {
    enabled: bool,
    ttl_secs: u64,
    max_entry_bytes: u64,
    max_memory_bytes: u64,
    backend: String,
    scope: String,
    nondeterministic: bool,
}

/// Where cache entries live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheBackend {
    /// Redis when the quota store is Redis, else memory.
    Auto,
    Memory,
    Redis,
}

/// Whom an entry is shared with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheScope {
    /// Each client credential has its own entries.
    Client,
    /// Every caller shares them.
    Shared,
}

/// The response cache's settings.
#[derive(Debug, Clone)]
pub struct CacheConfig {
    pub enabled: bool,
    pub ttl: Duration,
    pub max_entry_bytes: usize,
    pub max_memory_bytes: u64,
    pub backend: CacheBackend,
    pub scope: CacheScope,
    pub nondeterministic: bool,
}

/// Longest time an entry may be kept: 30 days (also the cap on a request's `max-age`).
pub const MAX_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// `PROXY_CACHE`'s value as a switch.
pub(super) fn switch(value: &str) -> Result<bool, ConfigError> {
    match value.trim().to_ascii_lowercase().as_str() {
        "on" | "true" | "1" | "yes" => Ok(true),
        "off" | "false" | "0" | "no" => Ok(false),
        other => Err(bad(
            "PROXY_CACHE",
            format!(
                "expected \"on\" or \"off\", got {:?}",
                other.chars().take(40).collect::<String>()
            ),
        )),
    }
}

/// Validate `[cache]`; `redis`: whether the quota store is Redis (`backend = "redis"` needs it).
pub(super) fn from_raw(raw: Raw, redis: bool) -> Result<CacheConfig, ConfigError> {
    if raw.ttl_secs == 0 || raw.ttl_secs > MAX_TTL.as_secs() {
        return Err(bad(
            "cache.ttl_secs (PROXY_CACHE_TTL_SECS)",
            format!(
                "expected 1 to {} seconds, got {}",
                MAX_TTL.as_secs(),
                raw.ttl_secs
            ),
        ));
    }
    if raw.max_entry_bytes == 0 || raw.max_entry_bytes > u64::from(u32::MAX) {
        return Err(bad(
            "cache.max_entry_bytes",
            format!(
                "expected 1 to {} bytes, got {}",
                u32::MAX,
                raw.max_entry_bytes
            ),
        ));
    }
    if raw.max_memory_bytes < raw.max_entry_bytes {
        return Err(bad(
            "cache.max_memory_bytes",
            format!(
                "must hold at least one entry: {} is below cache.max_entry_bytes ({})",
                raw.max_memory_bytes, raw.max_entry_bytes
            ),
        ));
    }
    let backend = match raw.backend.as_str() {
        "auto" => CacheBackend::Auto,
        "memory" => CacheBackend::Memory,
        "redis" if redis => CacheBackend::Redis,
        "redis" => {
            return Err(bad(
                "cache.backend",
                "\"redis\" needs the quota store in Redis: set store.redis_url (REDIS_URL)",
            ));
        }
        other => {
            return Err(bad(
                "cache.backend",
                format!(
                    "expected \"auto\", \"memory\" or \"redis\", got {:?}",
                    other.chars().take(40).collect::<String>()
                ),
            ));
        }
    };
    let scope = match raw.scope.as_str() {
        "client" => CacheScope::Client,
        "shared" => CacheScope::Shared,
        other => {
            return Err(bad(
                "cache.scope",
                format!(
                    "expected \"client\" or \"shared\", got {:?}",
                    other.chars().take(40).collect::<String>()
                ),
            ));
        }
    };
    Ok(CacheConfig {
        enabled: raw.enabled,
        ttl: Duration::from_secs(raw.ttl_secs),
        max_entry_bytes: raw.max_entry_bytes as usize,
        max_memory_bytes: raw.max_memory_bytes,
        backend,
        scope,
        nondeterministic: raw.nondeterministic,
    })
}

impl CacheConfig {
    /// Whether entries go to the quota store's Redis when it has one (`auto` and `redis`).
    pub fn uses_redis(&self) -> bool {
        match self.backend {
            CacheBackend::Auto => true,
            CacheBackend::Memory => false,
            CacheBackend::Redis => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{for_test, try_for_test};

    use super::*;

    #[test]
    fn off_by_default_and_switched_on_by_env() {
        let c = for_test("", &[]);
        assert!(!c.cache.enabled);
        assert_eq!(c.cache.ttl, Duration::from_secs(3600));
        assert_eq!(c.cache.max_entry_bytes, 1 << 20);
        assert_eq!(c.cache.max_memory_bytes, 256 << 20);
        assert_eq!(c.cache.scope, CacheScope::Client);
        assert_eq!(c.cache.backend, CacheBackend::Auto);
        let c = for_test("", &[("PROXY_CACHE", "on"), ("PROXY_CACHE_TTL_SECS", "60")]);
        assert!(c.cache.enabled);
        assert_eq!(c.cache.ttl, Duration::from_secs(60));
    }

    #[test]
    fn bad_settings_name_themselves() {
        for (toml, env, setting) in [
            ("", ("PROXY_CACHE", "maybe"), "PROXY_CACHE"),
            ("", ("PROXY_CACHE_TTL_SECS", "0"), "cache.ttl_secs"),
            (
                "[cache]\nbackend = \"redis\"\n",
                ("PROXY_CACHE", "on"),
                "cache.backend",
            ),
            (
                "[cache]\nbackend = \"disk\"\n",
                ("PROXY_CACHE", "on"),
                "cache.backend",
            ),
            (
                "[cache]\nscope = \"team\"\n",
                ("PROXY_CACHE", "on"),
                "cache.scope",
            ),
            (
                "[cache]\nmax_memory_bytes = 10\n",
                ("PROXY_CACHE", "on"),
                "cache.max_memory_bytes",
            ),
        ] {
            let e = try_for_test(toml, &[env]).unwrap_err();
            assert!(e.setting.starts_with(setting), "{toml} {env:?}: {e}");
        }
    }
}
