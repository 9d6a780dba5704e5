//! The quota layer: admit the request on a key whose project has room (or take a free key for
//! a call that spends nothing), send it through the inner service with that key, read Google's
//! answer, react (hold, learn, disable) and try again on another key as the [`retry`] table
//! says, all before the first byte reaches the client. A success streams through, settling
//! the reservation to Google's usage as it ends. The parts: [`step`] (the loop and the retry
//! decision), `reserve` (room and key), `send`, `verdict` (an error answer), `deliver` (a
//! success).
//!
//! [`retry`]: crate::layers::retry

mod account;
mod admit;
mod answer;
mod ask;
pub mod batch;
mod batch_cost;
mod client;
mod deliver;
mod fallback;
mod question;
mod react;
mod refusal;
mod reserve;
mod send;
mod step;
mod trace;
mod verdict;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use tower::{Layer, Service};

use self::account::{Account, Recording};
use self::step::{Ctx, Step};
use crate::auth::{Caller, CallerTag};
use crate::error::ApiError;
use crate::fallback::MODEL_HEADER;
use crate::layers::estimate::Estimated;
use crate::layers::forward::{ForwardError, Outbound};
use crate::ledger::Series;
use crate::state::Core;
use crate::upstream::Upstream;

/// On an answer that waited in the admission queue: for how long, in milliseconds.
const WAITED_MS: HeaderName = HeaderName::from_static("x-gemini-quota-proxy-waited-ms");

/// Wraps a forwarding service in admission and retries.
#[derive(Clone)]
pub struct QuotaLayer {
    state: Arc<Core>,
    upstream: Arc<Upstream>,
}

impl QuotaLayer {
    pub fn new(state: Arc<Core>) -> QuotaLayer {
        let upstream = Arc::new(Upstream::new(&state.config.upstream.url));
        QuotaLayer { state, upstream }
    }
}

impl<S> Layer<S> for QuotaLayer {
    type Service = Quota<S>;

    fn layer(&self, inner: S) -> Quota<S> {
        Quota {
            inner,
            state: self.state.clone(),
            upstream: self.upstream.clone(),
        }
    }
}

/// The quota step (see the module docs).
#[derive(Clone)]
pub struct Quota<S> {
    inner: S,
    state: Arc<Core>,
    upstream: Arc<Upstream>,
}

/// What the quota step did, on the response, for the request's log line.
#[derive(Debug, Clone, Copy, Default)]
pub struct Served {
    /// Pool index of the key used last.
    pub key: Option<usize>,
    pub attempts: u32,
    /// From sending to the answer's head, on the last attempt.
    pub upstream: Duration,
    /// An admitted attempt went out (it may have run upstream).
    pub sent: bool,
    /// The proxy answered for its own limits: 429, or 400 for a request over every limit.
    pub refused: bool,
    /// The ledger series of a success, whose answer records the request as it ends.
    pub tallied: Option<Series>,
    /// Time spent in the admission queue (`None`: never queued).
    pub waited: Option<Duration>,
}

impl<S, B> Service<http::Request<Bytes>> for Quota<S>
where
    S: Service<Outbound, Response = http::Response<B>, Error = ForwardError>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
    B: hyper::body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    /// Always ready: the step holds no capacity of its own, and waits for the inner service's
    /// readiness (`ServiceExt::ready`) before each attempt it sends.
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Bytes>) -> Self::Future {
        let this = self.clone();
        // Both futures are built in their boxes (`boxed::pinned`), not copied in: this one
        // stays small (the step's run, about 4 KB, is boxed on its own below), and the step is
        // made here rather than in one more `async fn` level.
        crate::boxed::pinned(|| async move {
            let mut rec = Recording {
                account: Account::of(&this.state, &req),
                state: this.state.clone(),
                served: Served::default(),
                status: None,
            };
            let mut fell = None;
            let (parts, body) = req.into_parts();
            // Who created a resource this call makes, and whose entries a listing shows.
            let caller = parts
                .extensions
                .get::<CallerTag>()
                .map_or(Caller::Anonymous, |c| c.0.clone());
            let step = match parts.extensions.get::<Estimated>() {
                Some(est) => {
                    let cx = Ctx {
                        state: &this.state,
                        parts: &parts,
                        est,
                        caller: &caller,
                        upstream: &this.upstream,
                    };
                    let (served, account) = (&mut rec.served, rec.account.as_mut());
                    Step::new(cx, this.inner.clone(), body, served, account, &mut fell)
                }
                None => Err(ApiError::Internal(
                    "the request reached the quota step unestimated".into(),
                )),
            };
            let answered = match step {
                Ok(step) => crate::boxed::pinned(|| step.run()).await,
                Err(e) => Err(e),
            };
            let mut resp = answered.unwrap_or_else(IntoResponse::into_response);
            rec.status = Some(resp.status());
            if let Some(v) = fell
                .as_ref()
                .and_then(|f| HeaderValue::from_str(&f.served).ok())
            {
                resp.headers_mut().insert(MODEL_HEADER, v);
            }
            if let Some(w) = rec.served.waited {
                resp.headers_mut()
                    .insert(WAITED_MS, HeaderValue::from(w.as_millis() as u64));
            }
            let outcome = crate::layers::Outcome::on(&mut resp);
            outcome.served = Some(rec.served);
            outcome.fell = fell;
            Ok(resp)
        })
    }
}

#[cfg(test)]
mod tests;
