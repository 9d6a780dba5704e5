//! The response cache step, between estimate and quota: a cacheable request whose answer is
//! stored is answered from the cache (no quota, no key, no upstream; the ledger counts what it
//! saved), else it goes on inward and its 200 answer is copied as it streams ([`tee`]) and
//! stored when it ended cleanly and may be kept ([`policy`]). Identical non-streaming misses in
//! flight at once make one upstream call ([`crate::cache::flight`]). Entries live in memory or in Redis
//! ([`crate::cache::store`]), under a key of the request's method, path, canonical body and
//! scope ([`crate::cache::key`]).

pub mod policy;
pub mod tee;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use tokio::time::Instant;
use tower::{Layer, Service};

use self::policy::{Directives, Kind};
use self::tee::{Pending, Replay, Tee};
use crate::auth::{Caller, CallerTag};
pub use crate::cache::ResponseCache;
use crate::cache::flight::{self, Join, Landed};
use crate::cache::store::Entry;
use crate::cache::{key, now_ms};
use crate::config::{AuthConfig, CacheConfig, CacheScope};
use crate::layers::authenticate::Either;
use crate::layers::estimate::Estimated;
use crate::ledger::Ledger;
use crate::metrics::Metrics;

/// `HIT`, `MISS` or `BYPASS` on every answer to a cacheable call.
pub const CACHE_HEADER: HeaderName = HeaderName::from_static("x-gemini-quota-proxy-cache");
const HIT: &str = "HIT";
const MISS: &str = "MISS";
const BYPASS: &str = "BYPASS";

/// The verdict a [`CACHE_HEADER`] value carries, by its static name (the trace records it
/// without a copy).
pub fn verdict(value: &HeaderValue) -> &'static str {
    match value.as_bytes() {
        b"HIT" => HIT,
        b"MISS" => MISS,
        _ => BYPASS,
    }
}

/// What the cache step reads: the cache (none: the step passes every request on), `[auth]`
/// (a cache key's scope), the upstream timeout (how long a follower waits for its leader),
/// the metrics and the ledger (what a hit saved).
pub struct Parts {
    pub cache: Option<Arc<ResponseCache>>,
    pub auth: AuthConfig,
    pub request_timeout: std::time::Duration,
    pub metrics: Metrics,
    pub ledger: Arc<Ledger>,
}

/// Adds the cache step.
#[derive(Clone)]
pub struct CacheLayer {
    state: Arc<Parts>,
}

impl CacheLayer {
    pub fn new(parts: Parts) -> CacheLayer {
        CacheLayer {
            state: Arc::new(parts),
        }
    }
}

impl<S> Layer<S> for CacheLayer {
    type Service = CacheStep<S>;

    fn layer(&self, inner: S) -> CacheStep<S> {
        CacheStep {
            inner,
            state: self.state.clone(),
        }
    }
}

/// The cache step (see the module docs).
#[derive(Clone)]
pub struct CacheStep<S> {
    inner: S,
    state: Arc<Parts>,
}

/// What the cache does with a cacheable request.
enum Plan {
    /// Neither read nor write (`no-store`, an `x-goog-*` header that shapes the answer, a
    /// nondeterministic generation, a project-bound resource, a body that is not canonical
    /// JSON).
    Bypass,
    Cache(Lookup),
}

struct Lookup {
    key: [u8; 32],
    model: String,
    kind: Kind,
    /// Read the cache first (not under `no-cache`).
    read: bool,
    max_age: Option<std::time::Duration>,
    ttl: std::time::Duration,
    streaming: bool,
    fallback_input: u64,
}

type BoxFuture = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

impl<S> Service<http::Request<Bytes>> for CacheStep<S>
where
    S: Service<http::Request<Bytes>, Response = Response, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + Unpin,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Either<S::Future, BoxFuture>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Bytes>) -> Self::Future {
        let Some(cache) = self.state.cache.clone() else {
            return Either::Left(self.inner.call(req));
        };
        let Some(plan) = plan(&cache.config, &self.state.auth, &req) else {
            return Either::Left(self.inner.call(req));
        };
        let state = self.state.clone();
        // The ready service goes with the future; a clone stays for the next request.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        Either::Right(crate::boxed::pinned(|| run(state, cache, inner, req, plan)))
    }
}

/// The plan for a request; `None` when its call is not cacheable at all. Everything that can
/// say "bypass" cheaply is asked before the body is canonicalized.
fn plan(cfg: &CacheConfig, auth: &AuthConfig, req: &http::Request<Bytes>) -> Option<Plan> {
    let est = req.extensions().get::<Estimated>()?;
    let kind = policy::kind(req.method(), est)?;
    let d = Directives::of(req.headers());
    let model = est.model()?;
    if d.no_store
        || policy::shapes_answer(req.headers())
        // A file, a cached content: lives in one project, and may change under its name.
        // (A request naming one in its path is not cacheable at all, `policy::kind`.)
        || !est.estimate.references.is_empty()
        || !(cfg.nondeterministic
            || d.max_age.is_some()
            || policy::deterministic(kind, est.estimate.temperature_zero))
    {
        return Some(Plan::Bypass);
    }
    let Some(body) = key::canonical(req.body()) else {
        return Some(Plan::Bypass);
    };
    if body.project_bound {
        return Some(Plan::Bypass);
    }
    let caller = req.extensions().get::<CallerTag>().map(|c| c.0.clone());
    let scope = scope(cfg.scope, auth, caller);
    // A Vertex-form request may get Vertex's form of an answer: cached apart from AI Studio's.
    let vertex_form = req
        .extensions()
        .get::<crate::upstream::vertex::answer::VertexForm>()
        .is_some();
    let path = match vertex_form {
        true => std::borrow::Cow::Owned(format!("vertex-form:{}", req.uri().path())),
        false => std::borrow::Cow::Borrowed(req.uri().path()),
    };
    let key = key::key(
        req.method().as_str(),
        &path,
        req.uri().query(),
        &body.digest,
        &scope,
    );
    Some(Plan::Cache(Lookup {
        key,
        model: model.to_string(),
        kind,
        read: !d.no_cache,
        max_age: d.max_age,
        ttl: d.max_age.unwrap_or(cfg.ttl),
        streaming: est.streaming(),
        fallback_input: if kind == Kind::Embed {
            est.estimate.tokens
        } else {
            0
        },
    }))
}

/// What an entry is shared under: the caller's credential digest (never the credential), or
/// everyone's.
fn scope(scope: CacheScope, auth: &AuthConfig, caller: Option<Caller>) -> Vec<u8> {
    let digest = |tag: &[u8], d: [u8; 32]| [tag, &d[..]].concat();
    match (scope, caller) {
        (CacheScope::Shared, _) => b"shared".to_vec(),
        // By name, not key: a rotated key keeps the client's entries.
        (CacheScope::Client, Some(Caller::Client(c))) => [b"client:", c.name.as_bytes()].concat(),
        (CacheScope::Client, Some(Caller::Admin)) => match &auth.admin_token {
            Some(t) => digest(b"admin:", t.digest()),
            None => b"admin".to_vec(),
        },
        (CacheScope::Client, Some(Caller::Anonymous) | None) => b"anonymous".to_vec(),
    }
}

async fn run<S>(
    state: Arc<Parts>,
    cache: Arc<ResponseCache>,
    mut inner: S,
    req: http::Request<Bytes>,
    plan: Plan,
) -> Result<Response, Infallible>
where
    S: Service<http::Request<Bytes>, Response = Response, Error = Infallible>,
{
    let lookup = match plan {
        Plan::Bypass => {
            state.metrics.cache("bypass");
            let mut resp = inner.call(req).await?;
            resp.headers_mut()
                .insert(CACHE_HEADER, HeaderValue::from_static(BYPASS));
            return Ok(resp);
        }
        Plan::Cache(l) => l,
    };
    let mut lead = None;
    if lookup.read {
        let stored_before = cache.stored.load(Ordering::Acquire);
        if let Some(e) = cache.store.get(&lookup.model, &lookup.key).await
            && e.fresh(now_ms(), lookup.max_age)
        {
            return Ok(hit(&state, &req, &e, lookup.streaming));
        }
        // A stream is never shared in flight: a follower would see nothing until the leader's
        // whole stream ended. Each streams its own miss; the first clean one is stored.
        if !lookup.streaming {
            let deadline = Instant::now() + wait_allowance(&state, req.headers());
            loop {
                match cache.flights.join(lookup.key) {
                    Join::Lead(l) => {
                        // A flight may have landed between the lookup above and now: then
                        // this replica stored something since, and the store is asked again.
                        if cache.stored.load(Ordering::Acquire) != stored_before
                            && let Some(e) = cache.store.get(&lookup.model, &lookup.key).await
                            && e.fresh(now_ms(), lookup.max_age)
                        {
                            let resp = hit(&state, &req, &e, lookup.streaming);
                            l.land(Landed::Stored(e));
                            return Ok(resp);
                        }
                        lead = Some(l);
                        break;
                    }
                    Join::Follow(rx) => match flight::wait(rx, deadline).await {
                        Some(Landed::Stored(e)) if e.fresh(now_ms(), lookup.max_age) => {
                            return Ok(hit(&state, &req, &e, lookup.streaming));
                        }
                        // The leader was cancelled or lost its connection: the next one leads.
                        Some(Landed::Failed) => continue,
                        // Not shareable, or not in time: on its own.
                        _ => break,
                    },
                }
            }
        }
    }
    state.metrics.cache("miss");
    let mut resp = inner.call(req).await?;
    resp.headers_mut()
        .insert(CACHE_HEADER, HeaderValue::from_static(MISS));
    let status = resp.status();
    // A fallback model's answer is not the asked model's: never stored under its key.
    if status != http::StatusCode::OK
        || lookup.ttl.is_zero()
        || resp.headers().contains_key(crate::fallback::MODEL_HEADER)
    {
        // Never stored. Google's own answer (a 400, a 429, ...) would be the same for the
        // followers, so they go on their own at once rather than one after another; only the
        // proxy's "could not reach / no answer in time" lets the next one lead.
        if let Some(l) = lead {
            let gateway = matches!(
                status,
                http::StatusCode::BAD_GATEWAY | http::StatusCode::GATEWAY_TIMEOUT
            );
            l.land(if gateway {
                Landed::Failed
            } else {
                Landed::Unstorable
            });
        }
        return Ok(resp);
    }
    let content_type = resp
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let pending = Pending {
        cache,
        key: lookup.key,
        model: lookup.model,
        kind: lookup.kind,
        ttl: lookup.ttl,
        content_type,
        fallback_input: lookup.fallback_input,
        lead,
    };
    let expected = resp
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse().ok());
    let (parts, body) = resp.into_parts();
    Ok(Response::from_parts(
        parts,
        Body::new(Tee::new(body, expected, pending)),
    ))
}

/// How long a follower waits for its flight's leader: the upstream request timeout, shortened
/// by the client's `x-gemini-max-wait` when it gives a valid one (a bad one is answered with a
/// 400 further in, by the quota step).
fn wait_allowance(state: &Parts, headers: &http::HeaderMap) -> std::time::Duration {
    let max = state.request_timeout;
    match crate::upstream::request::max_wait(headers) {
        Some(Ok(asked)) => max.min(asked),
        _ => max,
    }
}

/// The answer from the cache: the stored chunks, as they first came; the ledger counts what
/// it saved. No quota, no key, no upstream.
fn hit(state: &Parts, req: &http::Request<Bytes>, e: &Entry, streaming: bool) -> Response {
    state.metrics.cache("hit");
    let caller = req.extensions().get::<CallerTag>().map(|c| &c.0);
    let client = crate::auth::ledger_client(&state.ledger, caller);
    state.ledger.cache_hit(&e.model, client, &e.usage);
    let mut resp = Response::new(Body::new(Replay::new(e.chunks.clone(), !streaming)));
    *resp.status_mut() = http::StatusCode::from_u16(e.status).unwrap_or(http::StatusCode::OK);
    let h = resp.headers_mut();
    if let Some(ct) = e
        .content_type
        .as_deref()
        .and_then(|c| HeaderValue::from_str(c).ok())
    {
        h.insert(http::header::CONTENT_TYPE, ct);
    }
    h.insert(CACHE_HEADER, HeaderValue::from_static(HIT));
    let age = (now_ms().saturating_sub(e.stored_at_ms).max(0) / 1000) as u64;
    h.insert(http::header::AGE, HeaderValue::from(age));
    resp
}
