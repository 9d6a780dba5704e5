//! One configuration's generation: its [`Core`] (what the request path reads: the config, the
//! key pool with what this replica knows of its keys' health, the quota store, the metrics, the
//! ledger, ...) and the [`AppState`] around it (what the admin endpoints and background tasks
//! read besides). Each generation: a reload builds the next with [`AppState::successor`], keeping
//! what outlives a configuration (the store and its counters, the ledger, the queue, firing
//! alerts), and requests finish on the generation they started with.

use std::sync::Arc;

mod generation;
mod store;
pub use generation::{Generation, RestartRequired};
pub use store::build_store;

use crate::config::Config;
use crate::ledger::outlook::Outlook;
use crate::ledger::{Billing, KeyInfo, Ledger, LedgerSetup};
use crate::metrics::Metrics;
use crate::pool::Pool;
use crate::quota::queue::Queues;
use crate::quota::redis::SharedIo;
use crate::quota::{Clock, QuotaStore, StoreError, SystemClock};
use crate::upstream::HttpClient;

/// What the request path reads of one generation: the quota step takes this, not the whole
/// [`AppState`] (which adds what the admin endpoints and background tasks read).
pub struct Core {
    pub config: Arc<Config>,
    pub pool: Arc<Pool>,
    pub store: Arc<dyn QuotaStore>,
    pub metrics: Metrics,
    /// The usage ledger: history, cost, forecast (in the same Redis as the store, if any).
    pub ledger: Arc<Ledger>,
    /// Requests waiting for quota, per model (`[queue]`).
    pub queues: Arc<Queues>,
    /// The projects' monthly spend caps, watching the ledger's costs (kept across reloads).
    pub spend: Arc<crate::pool::spend::SpendCaps>,
    /// The bound on request bodies held in memory (`server.max_buffered_bytes`), shared by
    /// every generation.
    pub bodies: Arc<crate::budget::BodyBudget>,
    /// The client to Google (`[upstream]`; its connections are pooled).
    pub upstream: Arc<HttpClient>,
    /// Every client (configured and runtime) with its limits, shared by every generation.
    pub clients: Arc<crate::clients::Registry>,
}

impl Core {
    /// A first generation's core on `config`, around `store`, its usage ledger on `clock`.
    pub fn build(
        config: Config,
        store: Arc<dyn QuotaStore>,
        metrics: Metrics,
        clock: Arc<dyn Clock>,
    ) -> Core {
        let pool = Arc::new(Pool::new(&config.pool, &config.limits, &config.upstream));
        let ledger = build_ledger(&config, &pool, store.shared_io(), clock);
        let spend = crate::pool::spend::SpendCaps::new(&config.limits, store.clone(), &ledger);
        let queues = Arc::new(Queues::new(queue_limits(&config.queue)));
        let bodies = Arc::new(crate::budget::BodyBudget::new(
            config.server.max_buffered_bytes,
            config.server.max_buffered_client_share,
        ));
        let upstream = Arc::new(crate::upstream::build_client(&config.upstream));
        let clients = Arc::new(crate::clients::Registry::new(crate::clients::configured(
            &config.auth,
        )));
        Core {
            config: Arc::new(config),
            pool,
            store,
            metrics,
            ledger,
            queues,
            spend,
            bodies,
            upstream,
            clients,
        }
    }

    /// The usage ledger's client id of `caller` (by its configured name; never its credential).
    pub fn ledger_client(&self, caller: Option<&crate::auth::Caller>) -> u32 {
        crate::auth::ledger_client(&self.ledger, caller)
    }
}

/// One generation: its [`Core`] (reached through `Deref`: `state.pool`, `state.store`, ...) and
/// what the admin endpoints and background tasks read besides.
pub struct AppState {
    core: Arc<Core>,
    /// The alert engine and its channels.
    pub alerts: Arc<crate::alerts::Alerts>,
    /// The response cache, when `cache.enabled`.
    pub cache: Option<Arc<crate::cache::ResponseCache>>,
    /// Which configuration this is: its number, when and how it was loaded.
    pub generation: Generation,
    /// Where the runtime clients are kept (Redis or `auth.clients_file`), shared by every
    /// generation.
    pub client_store: Arc<crate::client_store::ClientStore>,
    /// When `/metrics` last refreshed the store-derived gauges.
    pub gauges_refreshed: tokio::sync::Mutex<Option<std::time::Instant>>,
    /// The status page's cost and forecast, as last computed, and when.
    outlook: parking_lot::Mutex<Option<(std::time::Instant, Arc<Outlook>)>>,
    /// When the status page was last asked for (the outlook is kept fresh while it is).
    status_viewed: parking_lot::Mutex<Option<std::time::Instant>>,
}

impl std::ops::Deref for AppState {
    type Target = Core;

    fn deref(&self) -> &Core {
        &self.core
    }
}

/// A computed outlook serves the status page this long.
pub const OUTLOOK_FRESH: std::time::Duration = std::time::Duration::from_secs(10);
/// The background refresh recomputes the outlook this often while the status page is watched.
pub const OUTLOOK_REFRESH: std::time::Duration = std::time::Duration::from_secs(4);
/// The status page counts as watched this long after it was last asked for.
pub const STATUS_WATCHED: std::time::Duration = std::time::Duration::from_secs(60);

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
        Self::with_store_at(config, store, metrics, Arc::new(SystemClock))
    }

    /// [`AppState::with_store`], the usage ledger on `clock` (tests and benchmarks fill its
    /// history in the past this way).
    pub fn with_store_at(
        config: Config,
        store: Arc<dyn QuotaStore>,
        metrics: Metrics,
        clock: Arc<dyn Clock>,
    ) -> Arc<AppState> {
        let core = Arc::new(Core::build(config, store, metrics, clock));
        let (config, store) = (&core.config, &core.store);
        let alerts = Arc::new(crate::alerts::Alerts::new(config, store.shared_io()));
        let cache = build_cache(config, store.as_ref());
        let client_store = Arc::new(crate::client_store::ClientStore::new(
            config.auth.clients_file.clone(),
            store.shared_io(),
            core.clients.clone(),
        ));
        Arc::new(AppState {
            core,
            client_store,
            alerts,
            cache,
            generation: Generation::new(1, "start", RestartRequired::default()),
            gauges_refreshed: tokio::sync::Mutex::new(None),
            outlook: parking_lot::Mutex::new(None),
            status_viewed: parking_lot::Mutex::new(None),
        })
    }

    /// The next generation, on `config` (validated, its restart-only settings already those
    /// of this one): the same store and counters, ledger, queue and alert engine; a new pool
    /// that keeps what was seen of the keys both hold; the upstream client, alert channels and
    /// response cache kept unless their settings changed.
    pub fn successor(&self, config: Config, generation: Generation) -> AppState {
        let kept = |section: &str| config.prints.same_under(&self.config.prints, section);
        let pool = Arc::new(
            Pool::new(&config.pool, &config.limits, &config.upstream).carry_from(&self.pool),
        );
        self.ledger
            .reconfigure(config.prices.clone(), billing(&config), &key_infos(&pool));
        self.queues.set_limits(queue_limits(&config.queue));
        self.spend.reconfigure(&config.limits);
        let alerts = if kept("alerts") && kept("server.public_url") {
            self.alerts.clone()
        } else {
            Arc::new(self.alerts.reconfigured(&config, self.store.shared_io()))
        };
        let cache = if kept("cache") {
            self.cache.clone()
        } else {
            build_cache(&config, self.store.as_ref())
        };
        let upstream = if kept("upstream") {
            self.upstream.clone()
        } else {
            Arc::new(crate::upstream::build_client(&config.upstream))
        };
        let viewed = *self.status_viewed.lock();
        self.clients.set(
            crate::clients::Origin::Config,
            crate::clients::configured(&config.auth),
        );
        let core = Arc::new(Core {
            clients: self.clients.clone(),
            config: Arc::new(config),
            pool,
            store: self.store.clone(),
            // Fresh handles: the request counters are cached by key and client position.
            metrics: self.metrics.renewed(),
            ledger: self.ledger.clone(),
            queues: self.queues.clone(),
            spend: self.spend.clone(),
            bodies: self.bodies.clone(),
            upstream,
        });
        AppState {
            core,
            client_store: self.client_store.clone(),
            alerts,
            cache,
            generation,
            gauges_refreshed: tokio::sync::Mutex::new(None),
            outlook: parking_lot::Mutex::new(None),
            status_viewed: parking_lot::Mutex::new(viewed),
        }
    }

    /// What the request path reads of this generation.
    pub fn core(&self) -> &Arc<Core> {
        &self.core
    }

    /// The last outlook, if computed within [`OUTLOOK_FRESH`].
    pub fn cached_outlook(&self) -> Option<Arc<Outlook>> {
        let o = self.outlook.lock();
        o.as_ref()
            .filter(|(at, _)| at.elapsed() < OUTLOOK_FRESH)
            .map(|(_, o)| o.clone())
    }

    pub fn keep_outlook(&self, o: Arc<Outlook>) {
        *self.outlook.lock() = Some((std::time::Instant::now(), o));
    }

    /// The status page was asked for now.
    pub fn status_viewed(&self) {
        *self.status_viewed.lock() = Some(std::time::Instant::now());
    }

    /// Whether the status page was asked for within [`STATUS_WATCHED`].
    pub fn status_watched(&self) -> bool {
        self.status_viewed
            .lock()
            .is_some_and(|at| at.elapsed() < STATUS_WATCHED)
    }
}

/// The response cache `config` asks for, in the store's Redis when it has one.
fn build_cache(
    config: &Config,
    store: &dyn QuotaStore,
) -> Option<Arc<crate::cache::ResponseCache>> {
    config.cache.enabled.then(|| {
        Arc::new(crate::cache::ResponseCache::new(
            &config.cache,
            store.shared_io(),
        ))
    })
}

/// The projects not billed at list price.
fn billing(config: &Config) -> std::collections::HashMap<String, Billing> {
    config
        .limits
        .projects
        .iter()
        .filter(|(_, p)| p.billing != Billing::Paid)
        .map(|(name, p)| (name.clone(), p.billing))
        .collect()
}

/// The pooled keys as the ledger shows them.
fn key_infos(pool: &Pool) -> Vec<KeyInfo> {
    pool.keys
        .iter()
        .map(|k| KeyInfo {
            kid: k.kid.clone(),
            masked: k.masked.clone(),
            project: k.project.clone(),
            vertex: k.vertex.is_some(),
        })
        .collect()
}

/// The ledger beside the store: in the store's Redis when it has one, else in memory.
fn build_ledger(
    config: &Config,
    pool: &Pool,
    shared: Option<SharedIo>,
    clock: Arc<dyn Clock>,
) -> Arc<Ledger> {
    Ledger::new(LedgerSetup {
        prices: config.prices.clone(),
        billing: billing(config),
        keys: key_infos(pool),
        clients: config.auth.clients.iter().map(|c| c.name.clone()).collect(),
        timezone: config.limits.timezone,
        shared,
        clock,
    })
}

/// The queue's bounds from `[queue]` (here, not in `quota`, which knows no configuration).
fn queue_limits(c: &crate::config::QueueConfig) -> crate::quota::queue::QueueLimits {
    crate::quota::queue::QueueLimits {
        max_length: c.max_length.max(1),
        max_waiters_total: c.max_waiters_total.max(1),
        max_waiting_bytes: c.max_waiting_bytes,
        max_client_share: c.max_client_share,
    }
}
