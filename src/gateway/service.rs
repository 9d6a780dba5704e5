//! The Gemini surface as one tower service: each request through the stack of the generation
//! serving when it came (a Vertex-form path taken as its AI Studio form first), then one log
//! line and its metrics.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use arc_swap::ArcSwap;
use axum::body::Body;
use axum::response::Response;
use tokio::time::Instant;
use tower::{Layer, Service};

use crate::access_log::RequestLine;
use crate::layers::{
    Authenticate, AuthenticateLayer, CacheLayer, CacheStep, EstimateLayer, EstimateStep, Forward,
    Outcome, Quota, QuotaLayer,
};
use crate::reload::Live;
use crate::state::AppState;
use crate::telemetry::span::RequestTrace;

use super::readied::Readied;

/// The assembled stack, outermost first.
type Stack = Authenticate<EstimateStep<CacheStep<Quota<Forward>>>>;

/// The Gemini surface: every request through the stack of the generation serving when it
/// came, then one log line and its metrics.
pub struct GeminiService {
    live: Live,
    /// This replica's Live API sessions (they outlive a reload).
    sessions: Arc<crate::live::LiveSessions>,
    /// The stack of the generation that last served, built again when a reload swapped it.
    built: Arc<ArcSwap<Built>>,
    /// The stack `poll_ready` readied, and its generation's state, for the next `call`.
    ready: Readied<Stack, Arc<AppState>>,
}

impl Clone for GeminiService {
    /// A clone starts unreadied (tower's habit: readiness belongs to the instance polled).
    fn clone(&self) -> Self {
        GeminiService {
            live: self.live.clone(),
            sessions: self.sessions.clone(),
            built: self.built.clone(),
            ready: Readied(None),
        }
    }
}

/// One generation's stack.
struct Built {
    state: Arc<AppState>,
    stack: Stack,
}

impl Built {
    fn new(state: Arc<AppState>) -> Built {
        let forward = Forward::with_client(state.upstream.clone());
        let quota = QuotaLayer::new(state.core().clone()).layer(forward);
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
    pub(super) fn new(live: Live, sessions: Arc<crate::live::LiveSessions>) -> GeminiService {
        let built = Arc::new(ArcSwap::from_pointee(Built::new(live.current())));
        GeminiService {
            live,
            sessions,
            built,
            ready: Readied(None),
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
}

/// The stack of the generation serving now, and its state; built again when a reload swapped
/// the generation since the last one was built.
fn stack_of(live: &Live, built: &ArcSwap<Built>) -> (Stack, Arc<AppState>) {
    let state = live.current();
    let last = built.load();
    if Arc::ptr_eq(&last.state, &state) {
        return (last.stack.clone(), state);
    }
    let fresh = Built::new(state.clone());
    let stack = fresh.stack.clone();
    built.store(Arc::new(fresh));
    (stack, state)
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
    /// The stack, readied by [`GeminiService`]'s `poll_ready` (or, for a caller that skipped
    /// it, asked here), then called (tower's contract).
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
        let Poll::Ready(Ok(mut resp)) = Pin::new(&mut this.answer).poll(cx) else {
            return Poll::Pending;
        };
        let mut line = log_request(
            &this.state,
            std::mem::take(&mut this.method),
            std::mem::take(&mut this.uri),
            &mut resp,
            this.started,
        );
        if let Some((t, span)) = &this.trace {
            line.trace = Some(t.clone());
            // A span the log filter turned off (or a trace sampled out) is not entered at
            // each poll of the body.
            line.log_span = (!span.is_disabled()).then(|| span.clone());
        }
        Poll::Ready(Ok(line.attach(resp)))
    }
}

impl Service<http::Request<Body>> for GeminiService {
    type Response = Response;
    type Error = Infallible;
    type Future = Logged;

    /// The serving generation's stack, readied: a layer with back-pressure in the stack holds
    /// the caller here. The stack readied is the one the next `call` uses.
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        let (live, built) = (&self.live, &self.built);
        self.ready.poll_ready(|| stack_of(live, built), cx)
    }

    fn call(&mut self, mut req: http::Request<Body>) -> Logged {
        let started = Instant::now();
        if crate::upstream::vertex::form::maybe(req.uri().path()) {
            vertex_form(&mut req);
        }
        // Kept for the log line: the method is a small enum, the URI shares its bytes.
        let (method, uri) = (req.method().clone(), req.uri().clone());
        let (live, built) = (&self.live, &self.built);
        let (stack, state) = self.ready.take(|| stack_of(live, built));
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
    resp: &mut Response,
    started: Instant,
) -> RequestLine {
    let head = started.elapsed();
    // The outcome's parts the line keeps are taken, not copied; the caller stays on the
    // response for the sign-in throttle.
    let (traced, fell, served, caller) = match resp.extensions_mut().get_mut::<Outcome>() {
        Some(o) => (
            o.traced.take(),
            o.fell.take(),
            o.served.unwrap_or_default(),
            o.caller.clone(),
        ),
        None => Default::default(),
    };
    let est_tokens = traced.as_ref().map_or(0, |t| t.tokens);
    // A fallback model's answer is logged and counted under the model that served it.
    let model = match &fell {
        Some(f) => Some(f.served.to_string()),
        None => traced.and_then(|t| t.model),
    };
    let key = served.key.map(|i| (i, state.pool.keys[i].masked.as_str()));
    let status = resp.status().as_u16();
    let client = caller.as_ref().map_or((0, "-"), |c| (c.slot(), c.name()));
    state.metrics.request(
        model.as_deref(),
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
        model,
        asked_model: fell.map(|f| f.asked.to_string()),
        key: served.key,
        caller,
        status,
        attempts: served.attempts,
        est_tokens,
        waited: served.waited,
        started,
        head,
        trace: None,
        log_span: None,
    }
}
