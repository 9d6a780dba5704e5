//! The proxy as a library: [`Gateway::builder`] turns a [`Config`] into the Gemini service (the
//! tower stack of [`crate::layers`] behind one log line per request) and the router of the
//! proxy's own endpoints, for [`crate::serve`] or for mounting in another axum application.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use axum::body::Body;
use axum::response::Response;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::time::Instant;
use tower::{Layer, Service};

use crate::access_log::RequestLine;
use crate::auth::CallerTag;
use crate::config::{Config, Sources};
use crate::layers::{
    Authenticate, AuthenticateLayer, CacheLayer, CacheStep, EstimateLayer, EstimateStep, Forward,
    Quota, QuotaLayer, Served, Traced,
};
use crate::metrics::Metrics;
use crate::quota::{QuotaStore, StoreError};
use crate::reload::{Live, WeakLive};
use crate::state::AppState;
use crate::telemetry::span::RequestTrace;

/// The assembled stack, outermost first.
type Stack = Authenticate<EstimateStep<CacheStep<Quota<Forward>>>>;

/// The Gemini surface: every request through the stack of the generation serving when it
/// came, then one log line and its metrics.
#[derive(Clone)]
pub struct GeminiService {
    live: Live,
    /// This replica's Live API sessions (they outlive a reload).
    sessions: Arc<crate::live::LiveSessions>,
    /// The stack of the generation that last served, built again when a reload swapped it.
    built: Arc<ArcSwap<Built>>,
}

/// One generation's stack.
struct Built {
    state: Arc<AppState>,
    stack: Stack,
}

impl Built {
    fn new(state: Arc<AppState>) -> Built {
        let forward = Forward::with_client(state.upstream.clone());
        let quota = QuotaLayer::new(state.clone()).layer(forward);
        let cache = CacheLayer::new(crate::layers::cache::Parts {
            cache: state.cache.clone(),
            auth: state.config.auth.clone(),
            request_timeout: state.config.upstream.request_timeout,
            metrics: state.metrics.clone(),
            ledger: state.ledger.clone(),
        })
        .layer(quota);
        let estimate = EstimateLayer::new(crate::layers::estimate::Parts {
            server: state.config.server.clone(),
            bodies: state.bodies.clone(),
            ledger: state.ledger.clone(),
            store: state.store.clone(),
            pool: state.pool.clone(),
        })
        .layer(cache);
        let stack = AuthenticateLayer::new(crate::layers::authenticate::Parts {
            auth: state.config.auth.clone(),
            clients: state.clients.clone(),
            store: state.store.clone(),
        })
        .layer(estimate);
        Built { state, stack }
    }
}

impl GeminiService {
    fn new(live: Live, sessions: Arc<crate::live::LiveSessions>) -> GeminiService {
        let built = Arc::new(ArcSwap::from_pointee(Built::new(live.current())));
        GeminiService {
            live,
            sessions,
            built,
        }
    }

    /// This replica's Live API sessions.
    pub fn live_sessions(&self) -> Arc<crate::live::LiveSessions> {
        self.sessions.clone()
    }

    /// The state of the generation serving now.
    pub fn state(&self) -> Arc<AppState> {
        self.live.current()
    }

    /// The stack of the generation serving now, and its state.
    fn stack(&self) -> (Stack, Arc<AppState>) {
        let state = self.live.current();
        let built = self.built.load();
        if Arc::ptr_eq(&built.state, &state) {
            return (built.stack.clone(), state);
        }
        let fresh = Built::new(state.clone());
        let stack = fresh.stack.clone();
        self.built.store(Arc::new(fresh));
        (stack, state)
    }
}

/// A Vertex-form model method (`google-genai` with `vertexai=True`) as its AI Studio form, the
/// path the client sent kept as the original URI.
fn vertex_form(req: &mut http::Request<Body>) {
    let Some(path) = crate::upstream::vertex::form::to_ai_studio(req.uri().path()) else {
        return;
    };
    let pq = match req.uri().query() {
        Some(q) => format!("{path}?{q}"),
        None => path,
    };
    let mut parts = req.uri().clone().into_parts();
    let Ok(pq) = pq.parse() else {
        return;
    };
    parts.path_and_query = Some(pq);
    let Ok(uri) = http::Uri::from_parts(parts) else {
        return;
    };
    let original = std::mem::replace(req.uri_mut(), uri);
    req.extensions_mut()
        .insert(crate::upstream::vertex::answer::VertexForm);
    if req
        .extensions()
        .get::<axum::extract::OriginalUri>()
        .is_none()
    {
        req.extensions_mut()
            .insert(axum::extract::OriginalUri(original));
    }
}

/// The stack's answer, logged when it comes. A plain struct future: one allocation fewer than
/// an `async` block per request.
pub struct Logged {
    /// The stack is asked `poll_ready` before `call` (tower's contract): a layer with
    /// back-pressure put in the stack holds the request here instead of being called unready.
    answer: tower::util::Oneshot<Stack, http::Request<Body>>,
    state: Arc<AppState>,
    method: http::Method,
    uri: http::Uri,
    started: Instant,
    /// The request's server span and the log span carrying its `trace_id` (trace export on).
    trace: Option<(RequestTrace, tracing::Span)>,
}

impl Future for Logged {
    type Output = Result<Response, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        // Log lines written on the request's way carry its trace id.
        let _entered = this.trace.as_ref().map(|(_, s)| s.enter());
        let Poll::Ready(Ok(resp)) = Pin::new(&mut this.answer).poll(cx) else {
            return Poll::Pending;
        };
        let mut line = log_request(
            &this.state,
            std::mem::take(&mut this.method),
            std::mem::take(&mut this.uri),
            &resp,
            this.started,
        );
        if let Some((t, span)) = &this.trace {
            line.trace = Some(t.clone());
            line.log_span = Some(span.clone());
        }
        Poll::Ready(Ok(line.attach(resp)))
    }
}

impl Service<http::Request<Body>> for GeminiService {
    type Response = Response;
    type Error = Infallible;
    type Future = Logged;

    /// The generation's stack is taken in `call` (a reload may swap it between the two), so
    /// its readiness is awaited in the answer's future ([`Logged`]), not here.
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: http::Request<Body>) -> Logged {
        let started = Instant::now();
        if crate::upstream::vertex::form::maybe(req.uri().path()) {
            vertex_form(&mut req);
        }
        // Kept for the log line: the method is a small enum, the URI shares its bytes.
        let (method, uri) = (req.method().clone(), req.uri().clone());
        let (stack, state) = self.stack();
        // Export off: `None` at the cost of one load, no span made.
        let trace = RequestTrace::start(req.headers(), method.as_str(), uri.path()).map(|t| {
            req.extensions_mut().insert(t.clone());
            // Log lines carry the id of a trace the collector will have (sampled in).
            let span = if t.is_recording() {
                tracing::info_span!("request", trace_id = %t.trace_id())
            } else {
                tracing::Span::none()
            };
            (t, span)
        });
        Logged {
            answer: tower::util::Oneshot::new(stack, req),
            state,
            method,
            uri,
            started,
            trace,
        }
    }
}

/// The request metrics, at the answer's head, and the fields of its log line, written when
/// its body ends ([`crate::access_log`]).
fn log_request(
    state: &Arc<AppState>,
    method: http::Method,
    uri: http::Uri,
    resp: &Response,
    started: Instant,
) -> RequestLine {
    let head = started.elapsed();
    let traced = resp.extensions().get::<Traced>();
    let served = resp
        .extensions()
        .get::<Served>()
        .copied()
        .unwrap_or_default();
    // A fallback model's answer is logged and counted under the model that served it.
    let fell = resp.extensions().get::<crate::fallback::Fellback>();
    let model = fell
        .map(|f| &*f.served)
        .or(traced.and_then(|t| t.model.as_deref()));
    let key = served.key.map(|i| (i, state.pool.keys[i].masked.as_str()));
    let status = resp.status().as_u16();
    let caller = resp.extensions().get::<CallerTag>().map(|c| c.0.clone());
    let client = caller.as_ref().map_or((0, "-"), |c| (c.slot(), c.name()));
    state.metrics.request(
        model,
        key,
        client,
        status,
        head,
        served.upstream,
        served.waited.unwrap_or_default(),
    );
    RequestLine {
        state: state.clone(),
        method,
        uri,
        model: model.map(str::to_string),
        asked_model: fell.map(|f| f.asked.to_string()),
        key: served.key,
        caller,
        status,
        attempts: served.attempts,
        est_tokens: traced.map_or(0, |t| t.tokens),
        waited: served.waited,
        started,
        head,
        trace: None,
        log_span: None,
    }
}

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

/// The exporter keeps histogram samples raw until upkeep folds them in: without it memory grows
/// with every request between scrapes (or for ever, where nobody scrapes). Runs while the
/// gateway's state lives.
fn spawn_upkeep(live: WeakLive) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
        loop {
            tick.tick().await;
            let Some(live) = live.upgrade() else {
                return;
            };
            live.current().metrics.upkeep();
        }
    });
}

/// While the status page is watched (a dashboard open), its cost and forecast are computed
/// here every [`crate::state::OUTLOOK_REFRESH`], so the page itself answers from what is ready.
/// Runs while the gateway's state lives.
fn spawn_outlook_refresh(live: WeakLive) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(crate::state::OUTLOOK_REFRESH);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(state) = live.upgrade().map(|l| l.current()) else {
                return;
            };
            if state.status_watched() {
                crate::status::snapshot(&state, crate::status::Extras::Fresh).await;
            }
        }
    });
}

/// Every [`crate::client_store::POLL_EVERY`]: the runtime clients brought up to date (another
/// replica's change read from Redis; a rotation's ended grace dropped). Runs while the gateway
/// lives.
fn spawn_client_sync(live: WeakLive) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(crate::client_store::POLL_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(store) = live.upgrade().map(|l| l.current().client_store.clone()) else {
                return;
            };
            store.refresh().await;
        }
    });
}

/// Every serving `batch.poll_secs` (when not 0), from one period after start (the store is
/// first asked by the start-up check): Google asked about the open batch jobs the store holds
/// ([`crate::layers::quota::batch::poll_once`]). Runs while the gateway lives.
fn spawn_batch_poll(live: WeakLive) {
    tokio::spawn(async move {
        let mut polls = false;
        loop {
            let Some(state) = live.upgrade().map(|l| l.current()) else {
                return;
            };
            let every = state.config.batch.poll;
            if polls && !every.is_zero() {
                crate::layers::quota::batch::poll_once(&state).await;
            }
            polls = true;
            drop(state);
            // A poll of 0 looks again later, in case a reload turns it on.
            let pause = if every.is_zero() {
                Duration::from_secs(5)
            } else {
                every
            };
            tokio::time::sleep(pause).await;
        }
    });
}

/// Renew every Live API slot this replica holds, every third of the serving `live.lease_secs`,
/// while the gateway lives: a replica that stops renewing (it died) frees its slots within a
/// lease. Also sets the open-session gauges.
fn spawn_live_renewal(live: WeakLive, sessions: Arc<crate::live::LiveSessions>) {
    tokio::spawn(async move {
        loop {
            let Some(state) = live.upgrade().map(|l| l.current()) else {
                return;
            };
            let lease = state.config.live.lease;
            let held = sessions.held();
            crate::live::slots::refresh_gauges(&state, &held);
            if !held.is_empty()
                && let Err(e) = state
                    .store
                    .live_renew(&held, lease.as_millis() as u64)
                    .await
            {
                tracing::warn!(error = %e, sessions = held.len(), "live: session leases not renewed");
            }
            let clients = sessions.held_clients();
            if !clients.is_empty()
                && let Err(e) = state
                    .store
                    .live_client_renew(&clients, lease.as_millis() as u64)
                    .await
            {
                tracing::warn!(error = %e, sessions = clients.len(), "live: client slot leases not renewed");
            }
            drop(state);
            tokio::time::sleep(lease / 3).await;
        }
    });
}

/// How often the alert evaluator recomputes the ledger's outlook (cost and forecast) for the
/// `daily_quota_forecast` and `daily_budget` rules: both move slowly, and the outlook reads a
/// day of history, so it is not worth a runtime worker every evaluation when nobody watches.
pub const ALERT_OUTLOOK_EVERY: Duration = Duration::from_secs(60);

/// The alert evaluator looks at the serving `alerts.evaluate_every` at least this often.
const ALERT_PERIOD_CHECK: Duration = Duration::from_secs(1);

/// The alert evaluator: every `alerts.evaluate_every`, the rules over a status snapshot of the
/// counters, with the ledger's outlook (as cached for the status page) refreshed every
/// [`ALERT_OUTLOOK_EVERY`] and the last one carried in between (so the outlook's rules neither
/// resolve nor re-fire between refreshes), and the run of upstream failures, handed to the
/// alert engine, which sends in tasks of its own. Each evaluation on the generation serving
/// then; the period is the serving generation's `alerts.evaluate_every` (checked at least
/// every [`ALERT_PERIOD_CHECK`], so a reload that shortens it takes effect at once). Runs
/// while the gateway lives.
fn spawn_alerts(live: WeakLive) {
    tokio::spawn(async move {
        // The first evaluation one period after start: nothing has been used yet, and the
        // store is not asked for a snapshot before anyone else asks.
        let mut outlook_at: Option<Instant> = None;
        let mut outlook = (None, None);
        let mut last = Instant::now();
        loop {
            let Some(every) = live
                .upgrade()
                .map(|l| l.current().config.alerts.evaluate_every)
            else {
                return;
            };
            let due = last + every;
            if Instant::now() < due {
                tokio::time::sleep_until(due.min(Instant::now() + ALERT_PERIOD_CHECK)).await;
                continue;
            }
            last = Instant::now();
            let Some(state) = live.upgrade().map(|l| l.current()) else {
                return;
            };
            let refresh = outlook_at.is_none_or(|at| at.elapsed() >= ALERT_OUTLOOK_EVERY);
            let extras = if refresh {
                crate::status::Extras::Cached
            } else {
                crate::status::Extras::None
            };
            let mut snap = crate::status::snapshot(&state, extras).await;
            if refresh {
                outlook_at = Some(Instant::now());
                outlook = (
                    snap.quota_status.cost.clone(),
                    snap.quota_status.forecast.clone(),
                );
            } else {
                snap.quota_status.cost = outlook.0.clone();
                snap.quota_status.forecast = outlook.1.clone();
                // The clients' budgets move with every answer: read at every evaluation.
                crate::status::client_rows::add_usage(&state, &mut snap.quota_status.clients).await;
            }
            let cfg = &state.config.alerts;
            let active = crate::status::alert_rules::evaluate(
                cfg,
                &snap.quota_status,
                state.pool.health.failures(),
            );
            state.alerts.observe(cfg, active, &state.metrics).await;
        }
    });
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
            spawn_upkeep(live.downgrade());
        }
        spawn_outlook_refresh(live.downgrade());
        spawn_alerts(live.downgrade());
        spawn_client_sync(live.downgrade());
        spawn_batch_poll(live.downgrade());
        let sessions = Arc::new(crate::live::LiveSessions::default());
        spawn_live_renewal(live.downgrade(), sessions.clone());
        let service = GeminiService::new(live.clone(), sessions);
        Ok(Gateway { live, service })
    }
}
