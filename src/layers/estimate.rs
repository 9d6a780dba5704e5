//! The route-and-estimate step: parse the path (model, action, quota family, resource), read
//! the body once within its size and time limits and the process's budget of buffered bytes
//! ([`budget`](crate::budget)), estimate its input tokens, and find the key a
//! referenced resource belongs to. What it learns travels inward as [`Estimated`], and back out
//! on the response for the request's log line.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use tower::{Layer, Service};

use crate::auth::{Caller, CallerTag};
use crate::budget::BodyBudget;
use crate::config::ServerConfig;
use crate::error::ApiError;
use crate::estimate::{Estimate, estimate};
use crate::ledger::Ledger;
use crate::pool::Pool;
use crate::pool::affinity;
use crate::quota::QuotaStore;
use crate::route::{QuotaFamily, Route};

/// What this step learned, for the steps inside it.
#[derive(Debug, Clone)]
pub struct Estimated {
    pub route: Route,
    pub estimate: Estimate,
    /// The key a resource the request names belongs to.
    pub pinned: Option<usize>,
}

impl Estimated {
    /// The model whose quota this call spends, if it spends any.
    pub fn quota_model(&self) -> Option<&str> {
        match self.route.family {
            QuotaFamily::Generate
            | QuotaFamily::Embed
            | QuotaFamily::Image
            | QuotaFamily::Video => self.model(),
            QuotaFamily::Free => None,
        }
    }

    /// The model: from the path, else (OpenAI surface) from the body.
    pub fn model(&self) -> Option<&str> {
        self.route
            .model
            .as_deref()
            .or(self.estimate.model.as_deref())
    }

    /// Whether the answer is a stream.
    pub fn streaming(&self) -> bool {
        self.route.streaming || self.estimate.stream
    }
}

/// What this step tells the request's log line (on the response): the model as soon as it is
/// known, so a request refused on the way is still logged with it, and the estimate.
#[derive(Debug, Clone, Default)]
pub struct Traced {
    pub model: Option<String>,
    pub tokens: u64,
}

/// What the route-and-estimate step reads: `[server]`'s body limits, the buffered-bytes
/// budget, the ledger (whose body it is), the store and the pool (key affinity).
pub struct Parts {
    pub server: ServerConfig,
    pub bodies: Arc<BodyBudget>,
    pub ledger: Arc<Ledger>,
    pub store: Arc<dyn QuotaStore>,
    pub pool: Arc<Pool>,
}

/// Adds the route-and-estimate step.
#[derive(Clone)]
pub struct EstimateLayer {
    state: Arc<Parts>,
}

impl EstimateLayer {
    pub fn new(parts: Parts) -> EstimateLayer {
        EstimateLayer {
            state: Arc::new(parts),
        }
    }
}

impl<S> Layer<S> for EstimateLayer {
    type Service = EstimateStep<S>;

    fn layer(&self, inner: S) -> EstimateStep<S> {
        EstimateStep {
            inner,
            state: self.state.clone(),
        }
    }
}

/// The route-and-estimate step (see the module docs).
#[derive(Clone)]
pub struct EstimateStep<S> {
    inner: S,
    state: Arc<Parts>,
}

impl<S> Service<http::Request<Body>> for EstimateStep<S>
where
    S: Service<http::Request<Bytes>, Response = Response, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let mut traced = Traced::default();
        // What needs no waiting is checked before the future is made.
        let checked = route_of(&self.state, &req, &mut traced);
        let state = self.state.clone();
        // The ready service goes with the future; a clone stays for the next request.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        crate::boxed::pinned(|| async move {
            let mut resp = match checked {
                Ok(route) => {
                    let (parts, body) = req.into_parts();
                    let server = &state.server;
                    let announced = parts
                        .headers
                        .get(http::header::CONTENT_LENGTH)
                        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
                    let caller = parts
                        .extensions
                        .get::<CallerTag>()
                        .map_or(Caller::Anonymous, |c| c.0.clone());
                    // Whose body it is, for the client's share of the budget.
                    let client = crate::auth::ledger_client(&state.ledger, Some(&caller));
                    let read = state.bodies.read(
                        client,
                        body,
                        announced,
                        server.max_body_bytes,
                        server.body_read_timeout,
                    );
                    match read.await {
                        Ok((body, reserved)) => match estimated(route, body, &mut traced).await {
                            Ok((mut est, body)) => match pinned(&state, &est, &caller).await {
                                Ok(pin) => {
                                    est.pinned = pin;
                                    let mut req = http::Request::from_parts(parts, body);
                                    req.extensions_mut().insert(est);
                                    let resp = inner.call(req).await?;
                                    // The body is done with once the answer's head is here
                                    // (it was sent, or waited in the queue and was refused).
                                    drop(reserved);
                                    resp
                                }
                                Err(e) => e.into_response(),
                            },
                            Err(e) => e.into_response(),
                        },
                        Err(e) => e.into_response(),
                    }
                }
                Err(e) => e.into_response(),
            };
            super::Outcome::on(&mut resp).traced = Some(traced);
            Ok(resp)
        })
    }
}

/// The route of a request, refused when its announced body is over the limit; `traced` learns
/// the model from the path.
fn route_of(
    state: &Parts,
    req: &http::Request<Body>,
    traced: &mut Traced,
) -> Result<Route, ApiError> {
    let limit = state.server.max_body_bytes;
    let route = Route::parse(req.method(), req.uri().path(), req.uri().query())?;
    traced.model = route.model.clone();
    if let Some(len) = req
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        && len > limit as u64
    {
        return Err(ApiError::PayloadTooLarge(format!(
            "Request payload size exceeds the limit: {limit} bytes."
        )));
    }
    Ok(route)
}

/// Bodies at least this large are estimated on the blocking pool: parsing 20 MB of JSON (and
/// counting an inline PDF's pages) takes tens of milliseconds, too long to hold an async worker
/// every other connection shares; small bodies stay inline, where a hop would cost more.
const BLOCKING_ESTIMATE_BYTES: usize = 256 * 1024;

/// Large estimates at once: a parse holds about its body's size again in memory, outside the
/// buffered-bytes budget, so a burst of 20 MB bodies parses two at a time instead of dozens on
/// the blocking pool's hundreds of threads.
static LARGE_ESTIMATES: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);

/// The estimate of a body read whole; `traced` learns the model (OpenAI: from the body) and
/// the tokens.
async fn estimated(
    route: Route,
    body: Bytes,
    traced: &mut Traced,
) -> Result<(Estimated, Bytes), ApiError> {
    let (route, body, est) = if body.len() < BLOCKING_ESTIMATE_BYTES {
        let est = estimate(&route, &body)?;
        (route, body, est)
    } else {
        // Never closed, so this only waits its turn.
        let _turn = LARGE_ESTIMATES.acquire().await.ok();
        tokio::task::spawn_blocking(move || estimate(&route, &body).map(|e| (route, body, e)))
            .await
            .map_err(|_| ApiError::Internal("the request body could not be estimated".into()))??
    };
    // OpenAI-compatible calls name the model in the body.
    if traced.model.is_none() {
        traced.model = est.model.clone();
    }
    traced.tokens = est.tokens;
    Ok((
        Estimated {
            route,
            estimate: est,
            pinned: None,
        },
        body,
    ))
}

/// Most distinct resources (files, cached contents) one request may name: each is looked up.
const MAX_REFERENCES: usize = 1000;

/// Key affinity: a resource lives in the project of the key that created it, and belongs to
/// the client that created it: a request naming another client's resource (in its path or its
/// body) is refused as Google refuses a resource that is not yours, and never gets its key.
async fn pinned(
    state: &Parts,
    est: &Estimated,
    caller: &Caller,
) -> Result<Option<usize>, ApiError> {
    // Most requests name nothing: no set, no list, no lookups.
    if est.route.resource.is_none() && est.estimate.references.is_empty() {
        return Ok(None);
    }
    let name = caller.name();
    // One store lookup per distinct name (the path's first, its key wins), and a bound on them
    // (a body may repeat a name, or list thousands).
    let mut seen = std::collections::HashSet::new();
    let named: Vec<&String> = est
        .route
        .resource
        .iter()
        .chain(est.estimate.references.iter())
        .filter(|r| seen.insert(*r))
        .collect();
    if named.len() > MAX_REFERENCES {
        return Err(ApiError::InvalidArgument(format!(
            "A request may name at most {MAX_REFERENCES} distinct files and cached contents; this one names {}.",
            named.len()
        )));
    }
    // Looked up together (one round trip's wait, not one per name), checked in order.
    let pins = futures_util::future::join_all(
        named
            .iter()
            .map(|resource| affinity::pin(&*state.store, resource)),
    )
    .await;
    let mut first = None;
    for (resource, pin) in named.into_iter().zip(pins) {
        let Some(pin) = pin else {
            continue;
        };
        if !pin.allows(resource, caller, name) {
            return Err(affinity::not_yours(resource));
        }
        first.get_or_insert(pin.kid);
    }
    Ok(first.and_then(|kid| state.pool.by_kid(&kid).map(|(i, _)| i)))
}

/// Read a request body whole: at most `limit` bytes, within `timeout`.
pub async fn read_body(body: Body, limit: usize, timeout: Duration) -> Result<Bytes, ApiError> {
    match tokio::time::timeout(timeout, axum::body::to_bytes(body, limit)).await {
        Ok(Ok(b)) => Ok(b),
        Ok(Err(e)) => {
            let too_big = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>())
                || e.to_string().contains("length limit");
            if too_big {
                Err(ApiError::PayloadTooLarge(format!(
                    "Request payload size exceeds the limit: {limit} bytes."
                )))
            } else {
                Err(ApiError::InvalidArgument(
                    "the request body could not be read".into(),
                ))
            }
        }
        Err(_) => Err(ApiError::RequestTimeout(format!(
            "the request body was not received within {}s",
            timeout.as_secs()
        ))),
    }
}
