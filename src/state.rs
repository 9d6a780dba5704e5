//! `AppState`: what every step and endpoint shares: the config, the key pool (with what this
//! replica knows of its keys' health), the quota store and the metrics.

use std::sync::Arc;

use crate::config::Config;
use crate::ledger::{Billing, KeyInfo, Ledger, LedgerSetup};
use crate::metrics::Metrics;
use crate::pool::Pool;
use crate::quota::memory::MemoryStore;
use crate::quota::redis::{RedisStore, SharedIo};
use crate::quota::resilient::ResilientStore;
use crate::quota::{Clock, QuotaStore, StoreError, SystemClock};

pub struct AppState {
    pub config: Arc<Config>,
    pub pool: Pool,
    pub store: Arc<dyn QuotaStore>,
    pub metrics: Metrics,
    /// The usage ledger: history, cost, forecast (in the same Redis as the store, if any).
    pub ledger: Arc<Ledger>,
    /// When `/metrics` last refreshed the store-derived gauges.
    pub gauges_refreshed: tokio::sync::Mutex<Option<std::time::Instant>>,
}

impl AppState {
    /// Build the state with the store the config names (needs a Tokio runtime for Redis).
    pub fn new(config: Config, metrics: Metrics) -> Result<Arc<AppState>, StoreError> {
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let store = build_store(&config, clock)?;
        Ok(Self::with_store(config, store, metrics))
    }

    /// Build the state around a given store (tests inject clocks this way).
    pub fn with_store(
        config: Config,
        store: Arc<dyn QuotaStore>,
        metrics: Metrics,
    ) -> Arc<AppState> {
        let pool = Pool::new(&config.pool, &config.limits);
        let ledger = build_ledger(&config, &pool, store.shared_io());
        Arc::new(AppState {
            pool,
            config: Arc::new(config),
            store,
            metrics,
            ledger,
            gauges_refreshed: tokio::sync::Mutex::new(None),
        })
    }

    /// At start: when the configured shared store does not work (a typo in `REDIS_URL`, a
    /// Cluster node that does not serve the namespace), say so at once as an error naming it
    /// (without its password) and the policy now in force, not only later in `/readyz`.
    pub async fn check_store_at_start(&self) {
        let Some(url) = &self.config.store.redis_url else {
            return;
        };
        match self.store.ping().await {
            Ok(()) => tracing::info!(
                url = %crate::quota::redis::redact_url(url.expose()),
                "quota store reachable"
            ),
            Err(e) => tracing::error!(
                url = %crate::quota::redis::redact_url(url.expose()),
                policy = self.config.store.on_error.as_str(),
                error = %e,
                "the quota store does not work at start-up: serving under the store.on_error policy until it does"
            ),
        }
    }
}

/// The ledger beside the store: in the store's Redis when it has one, else in memory.
fn build_ledger(config: &Config, pool: &Pool, shared: Option<SharedIo>) -> Arc<Ledger> {
    let billing = config
        .limits
        .projects
        .iter()
        .filter(|(_, p)| p.billing != Billing::Paid)
        .map(|(name, p)| (name.clone(), p.billing))
        .collect();
    Ledger::new(LedgerSetup {
        prices: config.prices.clone(),
        billing,
        keys: pool
            .keys
            .iter()
            .map(|k| KeyInfo {
                kid: k.kid.clone(),
                masked: k.masked.clone(),
                project: k.project.clone(),
            })
            .collect(),
        clients: config.auth.client_keys.len(),
        timezone: config.limits.timezone,
        shared,
        clock: Arc::new(SystemClock),
    })
}

/// Memory by default; Redis (behind the failure policy) when a URL is configured.
pub fn build_store(
    config: &Config,
    clock: Arc<dyn Clock>,
) -> Result<Arc<dyn QuotaStore>, StoreError> {
    let tz = config.limits.timezone;
    if config.store.redis_url.is_none() {
        return Ok(Arc::new(MemoryStore::new(clock, tz)));
    }
    let redis = RedisStore::new(&config.store, tz)?;
    Ok(Arc::new(ResilientStore::new(
        Arc::new(redis),
        MemoryStore::new(clock, tz),
        config.store.on_error,
    )))
}
