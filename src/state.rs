//! `AppState`: what every handler shares (config, pool, store, HTTP client, metrics) and the
//! little this replica remembers on its own (disabled keys seen, backoff for bare 429s).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::config::Config;
use crate::metrics::Metrics;
use crate::pool::Pool;
use crate::proxy::DisabledKeys;
use crate::quota::memory::MemoryStore;
use crate::quota::redis::RedisStore;
use crate::quota::resilient::ResilientStore;
use crate::quota::{Clock, QuotaStore, StoreError, SystemClock};

pub struct AppState {
    pub config: Arc<Config>,
    pub pool: Pool,
    pub store: Arc<dyn QuotaStore>,
    pub client: crate::upstream::HttpClient,
    pub upstream: crate::upstream::Upstream,
    pub metrics: Metrics,
    pub disabled: DisabledKeys,
    /// Upstream 5xx and network failures in a row (any key); a success resets it.
    pub upstream_failures: std::sync::atomic::AtomicU32,
    /// Consecutive bare 429s per project and when the last one came, for their growing cooldown.
    bare_429: Mutex<HashMap<String, (u32, std::time::Instant)>>,
    /// When `/metrics` last refreshed the store-derived gauges.
    pub gauges_refreshed: tokio::sync::Mutex<Option<std::time::Instant>>,
}

impl AppState {
    /// Build the state with the store the config names (needs a Tokio runtime for Redis).
    pub fn new(config: Config) -> Result<Arc<AppState>, StoreError> {
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let store = build_store(&config, clock)?;
        Ok(Self::with_store(config, store))
    }

    /// Build the state around a given store (tests inject clocks this way).
    pub fn with_store(config: Config, store: Arc<dyn QuotaStore>) -> Arc<AppState> {
        Arc::new(AppState {
            pool: Pool::new(&config),
            client: crate::upstream::build_client(&config),
            upstream: crate::upstream::Upstream::new(&config.upstream_url)
                .expect("upstream.url was validated at load"),
            config: Arc::new(config),
            store,
            metrics: Metrics::new(),
            disabled: Mutex::new(HashMap::new()),
            upstream_failures: std::sync::atomic::AtomicU32::new(0),
            bare_429: Mutex::new(HashMap::new()),
            gauges_refreshed: tokio::sync::Mutex::new(None),
        })
    }

    /// At start: when the configured shared store does not work (a typo in `REDIS_URL`, a
    /// Cluster node that does not serve the namespace), say so at once as an error naming it
    /// (without its password) and the policy now in force, not only later in `/readyz`.
    pub async fn check_store_at_start(&self) {
        let Some(url) = &self.config.redis_url else {
            return;
        };
        match self.store.ping().await {
            Ok(()) => tracing::info!(
                url = %crate::quota::redis::redact_url(url.expose()),
                "quota store reachable"
            ),
            Err(e) => tracing::error!(
                url = %crate::quota::redis::redact_url(url.expose()),
                policy = self.config.store_on_error.as_str(),
                error = %e,
                "the quota store does not work at start-up: serving under the store.on_error policy until it does"
            ),
        }
    }

    /// Cooldown for a 429 without details: 1 s, doubling while they repeat (within a minute),
    /// at most 60 s.
    pub fn bare_429_backoff(&self, project: &str) -> u64 {
        let mut m = self.bare_429.lock().unwrap_or_else(|p| p.into_inner());
        let now = std::time::Instant::now();
        let e = m.entry(project.to_string()).or_insert((0, now));
        if now.duration_since(e.1) > std::time::Duration::from_secs(60) {
            e.0 = 0;
        }
        e.0 = (e.0 + 1).min(7);
        e.1 = now;
        (1000u64 << (e.0 - 1)).min(60_000)
    }

    /// True when most of the pool's projects got a 429 without details in the last 10 s: Google
    /// is throttling this proxy's address, not one project, so rotating keys only burns them.
    pub fn throttled_globally(&self) -> bool {
        let m = self.bare_429.lock().unwrap_or_else(|p| p.into_inner());
        let recent = m
            .values()
            .filter(|(_, at)| at.elapsed() < std::time::Duration::from_secs(10))
            .count();
        let projects: std::collections::HashSet<&str> =
            self.pool.keys.iter().map(|k| &*k.project).collect();
        recent >= 2 && recent * 2 > projects.len()
    }
}

/// Memory by default; Redis (behind the failure policy) when a URL is configured.
pub fn build_store(
    config: &Config,
    clock: Arc<dyn Clock>,
) -> Result<Arc<dyn QuotaStore>, StoreError> {
    let tz = config.limits.timezone;
    match &config.redis_url {
        None => Ok(Arc::new(MemoryStore::new(clock, tz))),
        Some(url) => {
            let redis = RedisStore::new(url, &config.store_namespace, config.store_timeout, tz)?;
            Ok(Arc::new(ResilientStore::new(
                Arc::new(redis),
                MemoryStore::new(clock, tz),
                config.store_on_error,
            )))
        }
    }
}
