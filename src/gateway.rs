//! The proxy as a library: [`Gateway::builder`] turns a [`Config`] into the Gemini service (the
//! tower stack of [`crate::layers`] behind one log line per request) and the router of the
//! proxy's own endpoints, for [`crate::serve`] or for mounting in another axum application.

use std::sync::Arc;

use metrics_exporter_prometheus::PrometheusHandle;

use crate::config::{Config, Sources};
use crate::metrics::Metrics;
use crate::quota::{QuotaStore, StoreError};
use crate::reload::Live;
use crate::state::AppState;

mod readied;
mod service;
mod tasks;

pub use service::{GeminiService, Logged};
pub use tasks::ALERT_OUTLOOK_EVERY;

/// A running proxy's parts: its live configuration, the Gemini service and its own endpoints.
#[derive(Clone)]
pub struct Gateway {
    live: Live,
    service: GeminiService,
}

impl Gateway {
    /// Start building a gateway from a loaded [`Config`].
    pub fn builder(config: Config) -> GatewayBuilder {
        GatewayBuilder {
            config,
            sources: None,
            store: None,
            prometheus: None,
            ledger_clock: None,
        }
    }

    /// The state of the generation serving now (config, pool, store, metrics).
    pub fn state(&self) -> Arc<AppState> {
        self.live.current()
    }

    /// The running configuration and its reload.
    pub fn live(&self) -> &Live {
        &self.live
    }

    /// The Gemini surface (`/v1beta/...`, `/v1/...`, `/upload/...`) as a tower service, to
    /// mount at the root or under a prefix (`Router::nest_service("/gemini", ...)`).
    pub fn service(&self) -> GeminiService {
        self.service.clone()
    }

    /// The proxy's own endpoints: `/healthz`, `/readyz`, `/metrics`, `/api/ai/quota-status/`.
    pub fn router(&self) -> axum::Router {
        crate::status::router(self.live.clone())
    }
}

/// Builds a [`Gateway`].
pub struct GatewayBuilder {
    config: Config,
    sources: Option<Sources>,
    store: Option<Arc<dyn QuotaStore>>,
    prometheus: Option<PrometheusHandle>,
    ledger_clock: Option<Arc<dyn crate::quota::Clock>>,
}

impl GatewayBuilder {
    /// Where `config` was loaded from: reloads read it again (without, reloads are refused).
    pub fn sources(mut self, sources: Sources) -> Self {
        self.sources = Some(sources);
        self
    }

    /// Use this quota store instead of the one the config names (tests inject clocks so).
    pub fn store(mut self, store: Arc<dyn QuotaStore>) -> Self {
        self.store = Some(store);
        self
    }

    /// Run the usage ledger on this clock (with [`GatewayBuilder::store`]; tests and
    /// benchmarks fill its history in the past).
    pub fn ledger_clock(mut self, clock: Arc<dyn crate::quota::Clock>) -> Self {
        self.ledger_clock = Some(clock);
        self
    }

    /// Render `/metrics` from this Prometheus recorder (installed by the application, see
    /// [`crate::metrics::install_prometheus`]); without one `/metrics` is empty.
    pub fn prometheus(mut self, handle: PrometheusHandle) -> Self {
        self.prometheus = Some(handle);
        self
    }

    /// Build the state and the service. Needs a Tokio runtime (the Redis store starts its
    /// background tasks).
    pub fn build(self) -> Result<Gateway, StoreError> {
        let upkeep = self.prometheus.is_some();
        let metrics = Metrics::new(self.prometheus);
        let state = match self.store {
            Some(store) => match self.ledger_clock {
                Some(clock) => AppState::with_store_at(self.config, store, metrics, clock),
                None => AppState::with_store(self.config, store, metrics),
            },
            None => AppState::new(self.config, metrics)?,
        };
        state.metrics.config_generation(state.generation.number);
        let live = Live::new(state, self.sources);
        if upkeep {
            tasks::spawn_upkeep(live.downgrade());
        }
        tasks::spawn_outlook_refresh(live.downgrade());
        tasks::spawn_alerts(live.downgrade());
        tasks::spawn_client_sync(live.downgrade());
        tasks::spawn_batch_poll(live.downgrade());
        let sessions = Arc::new(crate::live::LiveSessions::default());
        tasks::spawn_live_renewal(live.downgrade(), sessions.clone());
        let service = GeminiService::new(live.clone(), sessions);
        Ok(Gateway { live, service })
    }
}
