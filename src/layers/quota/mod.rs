//! The quota layer: admit the request on a key whose project has room (or take a free key for
//! a call that spends nothing), send it through the inner service with that key, read Google's
//! answer, react (hold, learn, disable) and try again on another key as the [`retry`] table
//! says, all before the first byte reaches the client. A success streams through, settling
//! the reservation to Google's usage as it ends.
//!
//! [`retry`]: crate::layers::retry

mod admit;
mod answer;
pub mod batch;
mod client;
mod fallback;
mod react;
mod trace;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};

use self::answer::{Answer, backoff, keep_counted, read_upto};
use self::react::ERROR_BODY_LIMIT;
use crate::auth::{Caller, CallerTag};
use crate::body::{AtEnd, ProxyBody};
use crate::error::ApiError;
use crate::fallback::{Fellback, MODEL_HEADER, Reason};
use crate::layers::estimate::Estimated;
use crate::layers::forward::{ForwardError, ForwardErrorKind, Outbound};
use crate::layers::retry::{self, Budget, Failure};
use crate::ledger::{ImageCounter, Series, TokenUsage, field};
use crate::pool::affinity;
use crate::quota::limits::Unpriced;
use crate::quota::queue::Claim;
use crate::quota::{DayInfo, Settlement};
use crate::route::QuotaFamily;
use crate::state::AppState;
use crate::upstream::vertex::VertexError;
use crate::upstream::{self, Upstream, Verdict};

/// What is left in the 60 s window of the (project, model) that served a request.
const REMAINING_REQUESTS: HeaderName = HeaderName::from_static("x-ratelimit-remaining-requests");
const REMAINING_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-remaining-tokens");

/// On an answer that waited in the admission queue: for how long, in milliseconds.
const WAITED_MS: HeaderName = HeaderName::from_static("x-gemini-quota-proxy-waited-ms");

/// Largest create-call answer read whole to learn the name of what it created.
const CREATE_BODY_LIMIT: usize = 4 * 1024 * 1024;

/// Wraps a forwarding service in admission and retries.
#[derive(Clone)]
pub struct QuotaLayer {
    state: Arc<AppState>,
    upstream: Arc<Upstream>,
}

impl QuotaLayer {
    pub fn new(state: Arc<AppState>) -> QuotaLayer {
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
    state: Arc<AppState>,
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

/// Who the ledger counts a quota-spending request under.
struct Account {
    model: Arc<str>,
    /// The model asked for (`model` is the one serving, a fallback's after a switch).
    asked: Arc<str>,
    client: u32,
}

impl Account {
    fn of(state: &AppState, req: &http::Request<Bytes>) -> Option<Account> {
        let model: Arc<str> = req.extensions().get::<Estimated>()?.quota_model()?.into();
        let client = state.ledger_client(req.extensions().get::<CallerTag>().map(|c| &c.0));
        let asked = model.clone();
        Some(Account {
            model,
            asked,
            client,
        })
    }

    /// The ledger series of this request on key `index` (`None`: no key served it).
    fn series(&self, state: &AppState, index: Option<usize>, known: bool) -> Series {
        let key = index.map(|i| &state.pool.keys[i]);
        let series = state.ledger.series_of(
            key.map(|k| &*k.project),
            &self.model,
            key.map(|k| &*k.kid),
            self.client,
            known,
        );
        if self.asked == self.model {
            return series;
        }
        state.ledger.asked_for(series, &self.asked)
    }

    /// Count the request's outcome: sent upstream, refused here, or a 5xx answer (`status`
    /// `None`: the client went away before the answer). A success's request is counted by its
    /// tally, with its tokens, as the answer ends.
    fn record(&self, state: &AppState, served: &Served, status: Option<http::StatusCode>) {
        let server_error = status.is_some_and(|s| s.is_server_error());
        if served.tallied.is_some() && !served.refused && !server_error {
            return;
        }
        let series = self.series(
            state,
            served.key.filter(|_| served.sent),
            status.is_some_and(|s| s.is_success()),
        );
        if served.sent && served.tallied.is_none() {
            state.ledger.count(series, field::REQUESTS);
        }
        if served.refused {
            state.ledger.count(series, field::REFUSED);
        }
        if server_error {
            state.ledger.count(series, field::ERRORS);
        }
    }
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

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Bytes>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let mut rec = Recording {
                account: Account::of(&this.state, &req),
                state: this.state.clone(),
                served: Served::default(),
                status: None,
            };
            let mut fell = None;
            let mut resp = this
                .run(req, &mut rec.served, rec.account.as_mut(), &mut fell)
                .await
                .unwrap_or_else(IntoResponse::into_response);
            rec.status = Some(resp.status());
            if let Some(f) = fell {
                if let Ok(v) = HeaderValue::from_str(&f.served) {
                    resp.headers_mut().insert(MODEL_HEADER, v);
                }
                resp.extensions_mut().insert(f);
            }
            if let Some(w) = rec.served.waited {
                resp.headers_mut()
                    .insert(WAITED_MS, HeaderValue::from(w.as_millis() as u64));
            }
            resp.extensions_mut().insert(rec.served);
            Ok(resp)
        })
    }
}

/// Records a quota-spending request in the ledger when its step ends: with its answer's status,
/// or without one when the client went away first (a request already sent still counts).
struct Recording {
    state: Arc<AppState>,
    account: Option<Account>,
    served: Served,
    status: Option<http::StatusCode>,
}

impl Drop for Recording {
    fn drop(&mut self) {
        if let Some(a) = &self.account {
            a.record(&self.state, &self.served, self.status);
        }
    }
}

impl<S, B> Quota<S>
where
    S: Service<Outbound, Response = http::Response<B>, Error = ForwardError>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
    B: hyper::body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    async fn run(
        self,
        req: http::Request<Bytes>,
        served: &mut Served,
        mut account: Option<&mut Account>,
        fell: &mut Option<Fellback>,
    ) -> Result<Response, ApiError> {
        let state = &*self.state;
        let cfg = &state.config.upstream;
        let (parts, body) = req.into_parts();
        let trace = trace::of(&parts);
        trace::prompt(trace.as_ref(), &body);
        let Some(est) = parts.extensions.get::<Estimated>() else {
            return Err(ApiError::Internal(
                "the request reached the quota step unestimated".into(),
            ));
        };
        let route = &est.route;
        // Who created a resource this call makes, and whose entries a listing shows.
        let caller = parts
            .extensions
            .get::<CallerTag>()
            .map_or(Caller::Anonymous, |c| c.0.clone());
        let caller_name = caller.name();
        let quota_model = est.quota_model();
        // A client's models allowlist, before any quota is spent.
        if let Some(model) = quota_model {
            client::check_model(state, &caller, model).inspect_err(|_| served.refused = true)?;
        }
        let mut client_part =
            quota_model.and_then(|m| client::part(state, &caller, route, &est.estimate, m));
        // A billable call the proxy cannot price goes out only where the configuration says
        // so: never unseen.
        if let Some(model) = quota_model
            && state.config.limits.unpriced == Unpriced::Refuse
            && !state.ledger.is_priced(model)
        {
            served.refused = true;
            state.metrics.refused("unpriced");
            return Err(ApiError::InvalidArgument(format!(
                "{model} has no price in this proxy's price table, and it refuses unpriced calls (limits.unpriced = \"refuse\"). Ask its operator to add [prices.\"{model}\"]."
            )));
        }
        // The models that may serve it instead ([`crate::fallback`]), and the one it is
        // written for now, with the path and body sent for that model.
        let mut chain = fallback::Chain::of(state, &caller, &parts.headers, est, parts.uri.path());
        let mut serving: Option<Arc<str>> = quota_model.map(Arc::from);
        let mut path = std::borrow::Cow::Borrowed(parts.uri.path());
        let mut body = body;
        // A fallback model admitted before the next attempt (after Google's overload answer).
        let mut preadmitted: Option<fallback::Switched> = None;
        // Attempts before the model serving now: its tries are counted from there.
        let mut base: u32 = 0;
        // A batch creation's hold on its project's batch quota ([`crate::batch`]).
        let mut batch_hold: Option<crate::batch::Hold> = None;
        let streaming = est.streaming();
        let head_timeout = if streaming {
            cfg.stream_idle_timeout.min(cfg.request_timeout)
        } else {
            cfg.request_timeout
        };
        let mut deadline = Instant::now() + cfg.retry_deadline;
        // How long this request may still wait in the admission queue.
        let mut allowance = match quota_model {
            Some(_) => admit::allowance(state, caller.client(), &parts.headers)?,
            None => Duration::ZERO,
        };
        // Only a read may be sent again once written: anything else Google may have run (and
        // billed, or created twice).
        let idempotent = matches!(parts.method, http::Method::GET | http::Method::HEAD);
        // Keys that failed this request (dead, or transient errors): avoided while others remain.
        let mut avoid: Vec<usize> = Vec::new();
        // At most one key is disabled per client request, whatever Google answers.
        let mut disabled_one = false;
        let mut attempt: u32 = 0;
        // The client's part of the first admission, carried by a retry: one request counts
        // once against its client's limits, however many keys it is tried on.
        let mut carried: Option<Settlement> = None;
        // Whether a Vertex entry could serve it (looked at only when the pool has one).
        let vertex_ok = state.pool.has_vertex && upstream::vertex::serves(route, &body);
        loop {
            attempt += 1;
            served.attempts = attempt;
            let reservation = match (preadmitted.take(), serving.clone()) {
                (Some(switched), _) => {
                    // Its keys are not the overloaded model's: none avoided, tries anew.
                    avoid.clear();
                    base = attempt - 1;
                    Some(switch(
                        switched,
                        &mut serving,
                        &mut client_part,
                        &mut path,
                        &mut body,
                        account.as_deref_mut(),
                    ))
                }
                (None, Some(model)) => {
                    let model = &*model;
                    // What this request holds while it waits, for the queue's bounds.
                    let claim = Claim {
                        client: account.as_deref().map_or(0, |a| a.client),
                        weight: caller.client().map_or(1, |c| c.limits.weight()),
                        bytes: body.len() as u64,
                    };
                    let admit_span = trace::admission(trace.as_ref(), state);
                    let admitted = admit::admit(
                        state,
                        route,
                        &est.estimate,
                        model,
                        est.pinned,
                        &avoid,
                        deadline,
                        allowance,
                        claim,
                        client_part.clone().filter(|_| carried.is_none()),
                        vertex_ok,
                    )
                    .await;
                    let waited = match &admitted {
                        Ok(a) => a.waited,
                        Err(n) => n.waited,
                    };
                    let refusal = admitted.as_ref().err().map(|n| &n.error);
                    trace::admitted(admit_span, waited, refusal);
                    if let Some(w) = waited {
                        // Time in line is not taken from the tries' budget, nor given twice.
                        served.waited = Some(served.waited.unwrap_or_default() + w);
                        allowance = allowance.saturating_sub(w);
                        deadline += w;
                    }
                    match admitted {
                        Ok(a) => Some(a.reservation),
                        Err(n) => {
                            // No room for it within its allowance: a fallback with room within
                            // what is left of it.
                            let switched = if admit::is_pool_refusal(&n.error) {
                                chain
                                    .next_with_room(
                                        state,
                                        &caller,
                                        est,
                                        model,
                                        &path,
                                        &body,
                                        carried.is_none(),
                                        Reason::NoRoom,
                                        fallback::Ask::Within {
                                            deadline,
                                            allowance,
                                            claim,
                                        },
                                    )
                                    .await
                            } else {
                                None
                            };
                            let Some(switched) = switched else {
                                served.refused = admit::is_refusal(&n.error);
                                return Err(n.error);
                            };
                            *fell = chain.fell.clone();
                            if let Some(w) = switched.waited {
                                served.waited = Some(served.waited.unwrap_or_default() + w);
                                allowance = allowance.saturating_sub(w);
                                deadline += w;
                            }
                            avoid.clear();
                            base = attempt - 1;
                            Some(switch(
                                switched,
                                &mut serving,
                                &mut client_part,
                                &mut path,
                                &mut body,
                                account.as_deref_mut(),
                            ))
                        }
                    }
                }
                (None, None) => None,
            };
            let quota_model = serving.as_deref();
            let index = match &reservation {
                Some(r) => r.index,
                None => match batch::choose(state, &caller, est, &body, &avoid).await {
                    Some(Ok((i, hold))) => {
                        batch_hold = Some(hold);
                        i
                    }
                    Some(Err(e)) => {
                        served.refused = true;
                        return Err(e);
                    }
                    None => admit::free_key(state, est.pinned, &avoid, vertex_ok),
                },
            };
            let key = &state.pool.keys[index];
            served.key = Some(index);
            // Dropped unsettled (an error, a retry) it refunds the estimate by itself. An
            // answer that carries no usage (an embedding's, ...) settles to its estimate.
            let mut settlement = reservation.map(|r| {
                let mut s = Settlement::new(state.store.clone(), r);
                if let Some(c) = carried.take() {
                    s.carry_client(c);
                }
                if route.unreported_usage {
                    s.keeping_estimate_unreported()
                } else {
                    s
                }
            });
            let built = match &key.vertex {
                None => upstream::build_request(
                    &self.upstream,
                    &parts.method,
                    &path,
                    parts.uri.query(),
                    &parts.headers,
                    body.clone(),
                    route.openai,
                    &key.headers,
                ),
                Some(v) => {
                    match v
                        .request(
                            &parts.method,
                            route,
                            parts.uri.query(),
                            &parts.headers,
                            body.clone(),
                        )
                        .await
                    {
                        Ok(r) => Some(r),
                        Err(VertexError::Path) => None,
                        Err(VertexError::Token(e)) => {
                            // Held and avoided; the request goes elsewhere if it can.
                            react::hold_entry(state, index, &e.0).await;
                            carried = settlement.as_mut().and_then(Settlement::take_client);
                            drop(settlement);
                            avoid.push(index);
                            let budget = cfg.max_attempts + state.pool.keys.len() as u32;
                            if attempt < budget && Instant::now() < deadline {
                                continue;
                            }
                            return Err(ApiError::Unavailable(
                                "The Vertex AI entry chosen for this request has no access token; retry shortly.".into(),
                            ));
                        }
                    }
                }
            };
            let Some(mut request) = built else {
                return Err(ApiError::InvalidArgument(
                    "the request path cannot be forwarded".into(),
                ));
            };

            // Tries of the model serving now (a fallback starts its own).
            let tries = attempt - base;
            let last_try = tries >= cfg.max_attempts || Instant::now() >= deadline;
            let mut try_span = trace::attempt(trace.as_ref(), attempt, key, request.headers_mut());
            let sent_at = Instant::now();
            // Counted as sent from here: a client that leaves while Google works on it still
            // had the request run (and billed). Taken back below if it never left.
            let was_sent = served.sent;
            served.sent |= settlement.is_some();
            let mut inner = self.inner.clone();
            let outcome = match inner.ready().await {
                Ok(ready) => {
                    let sending = ready.call(Outbound {
                        request,
                        key: index,
                        via: key.vertex.as_ref().map(|v| v.client.clone()),
                    });
                    match tokio::time::timeout(head_timeout, sending).await {
                        Ok(answered) => answered,
                        Err(_) => Err(ForwardError {
                            kind: ForwardErrorKind::Silent,
                            timed_out: true,
                            detail: format!("no answer within {}s", head_timeout.as_secs()),
                        }),
                    }
                }
                Err(e) => Err(e),
            };
            let resp = match outcome {
                Ok(r) => {
                    // Time to the answer's head, for answered attempts only.
                    served.upstream = sent_at.elapsed();
                    r
                }
                Err(e) => {
                    state.pool.health.failure();
                    if e.kind == ForwardErrorKind::Unsent {
                        served.sent = was_sent;
                    }
                    let failure = match e.kind {
                        ForwardErrorKind::Unsent => Failure::Unsent,
                        ForwardErrorKind::Lost => Failure::Lost,
                        ForwardErrorKind::Silent => Failure::Silent,
                    };
                    let plan = retry::plan(failure, idempotent);
                    let retrying = plan.retry && !last_try;
                    trace::unanswered(&mut try_span, &e.detail, retrying.then_some(plan.reason));
                    if retrying {
                        state.metrics.retry(plan.reason);
                        carried = settlement.as_mut().and_then(Settlement::take_client);
                        drop(settlement);
                        tracing::warn!(key = %key.masked, attempt, error = %e.detail, "upstream unreachable: retrying");
                        avoid.push(index);
                        backoff(attempt, deadline).await;
                        continue;
                    }
                    if plan.keep_counted {
                        // It may have run: it stays counted, estimate included.
                        keep_counted(settlement);
                    }
                    tracing::warn!(key = %key.masked, attempt, kind = ?e.kind, error = %e.detail, "upstream request failed");
                    return Err(network_error(&e));
                }
            };
            let status = resp.status();
            let mut headers = upstream::response_headers(resp.headers());

            if status.as_u16() >= 400 {
                // Error bodies are small: read one to learn what happened, then pass it on
                // unchanged (one over the limit is classified by its start and passed on whole).
                let answer = read_upto(resp, ERROR_BODY_LIMIT, cfg.request_timeout).await?;
                // An error answer carries no usage: refund now, before any backoff (the
                // client's part waits to see whether the request is tried again).
                let client_hold = settlement.as_mut().and_then(Settlement::take_client);
                drop(settlement);
                // A Vertex entry refused its token or its project's permissions: held (not
                // retried in a loop), its token dropped, the request tried elsewhere.
                if let Some(v) = &key.vertex
                    && matches!(status.as_u16(), 401 | 403)
                {
                    v.tokens.forget();
                    let why = format!("Vertex AI answered {status}");
                    react::hold_entry(state, index, &why).await;
                    let budget = cfg.max_attempts + state.pool.keys.len() as u32;
                    if attempt < budget && Instant::now() < deadline {
                        avoid.push(index);
                        carried = client_hold;
                        continue;
                    }
                    drop(client_hold);
                    return Ok(answer.into_response(status, headers, cfg, AtEnd::default()));
                }
                if status == http::StatusCode::TOO_MANY_REQUESTS
                    && let Some(a) = account.as_deref()
                {
                    state
                        .ledger
                        .count(a.series(state, Some(index), true), field::UPSTREAM_429);
                }
                let now = chrono::Utc::now().timestamp_millis();
                let day = DayInfo::at(state.config.limits.timezone, now);
                let verdict = upstream::classify(status.as_u16(), answer.head(), &day, now);
                let mut act = true;
                match &verdict {
                    Verdict::Transient => state.pool.health.failure(),
                    // A Vertex entry has no API key to disable: its answer is delivered.
                    Verdict::DeadKey { .. } if key.vertex.is_some() => act = false,
                    Verdict::DeadKey { reason } => {
                        act = confirm_dead(
                            state,
                            self.inner.clone(),
                            &self.upstream,
                            index,
                            reason,
                            disabled_one,
                        )
                        .await;
                        if act {
                            disabled_one = true;
                            react::disable(state, index, reason).await;
                        }
                    }
                    other => react::hold(state, index, quota_model, route.family, other).await,
                }
                let plan = retry::plan(Failure::Answer(&verdict), idempotent);
                let budget = match plan.budget {
                    Budget::Attempts => cfg.max_attempts,
                    Budget::AttemptsAndPool => cfg.max_attempts + state.pool.keys.len() as u32,
                };
                let retrying = act && plan.retry && tries < budget && Instant::now() < deadline;
                trace::answered(
                    &mut try_span,
                    status,
                    Some(&verdict),
                    retrying.then_some(plan.reason),
                );
                if retrying {
                    state.metrics.retry(plan.reason);
                    // A free call's 429 holds nothing in the store: avoid that key instead.
                    if plan.avoid_key || quota_model.is_none() {
                        avoid.push(index);
                    }
                    carried = client_hold;
                    if plan.backoff {
                        backoff(attempt, deadline).await;
                    }
                    continue;
                }
                // Overloaded on every key tried: a fallback model with room, before any byte
                // reached the client.
                if act
                    && verdict == Verdict::Transient
                    && matches!(status.as_u16(), 500 | 503)
                    && let Some(model) = quota_model
                    && let Some(switched) = chain
                        .next_with_room(
                            state,
                            &caller,
                            est,
                            model,
                            &path,
                            &body,
                            true,
                            Reason::Overloaded,
                            fallback::Ask::Now,
                        )
                        .await
                {
                    drop(client_hold);
                    *fell = chain.fell.clone();
                    state.metrics.retry("fallback");
                    preadmitted = Some(switched);
                    continue;
                }
                drop(client_hold);
                return Ok(answer.into_response(status, headers, cfg, AtEnd::default()));
            }

            // Success: pass the answer through, streaming.
            trace::answered(&mut try_span, status, None, None);
            state.pool.health.success();
            state.pool.health.project_ok(&key.project);
            if route.upload {
                let original = parts
                    .extensions
                    .get::<axum::extract::OriginalUri>()
                    .map(|o| o.0.path());
                let base = affinity::client_base(
                    state.config.server.public_url.as_deref(),
                    &parts.headers,
                    original,
                    parts.uri.path(),
                );
                let creator = affinity::creator(&*state.store, route, &caller, caller_name).await;
                affinity::remember_upload(&*state.store, &mut headers, &base, &key.kid, &creator)
                    .await;
                affinity::end_upload_session(&*state.store, route, &headers).await;
            }
            if let Some(r) = settlement.as_ref().and_then(Settlement::reservation) {
                headers.insert(REMAINING_REQUESTS, HeaderValue::from(r.remaining_requests));
                headers.insert(REMAINING_TOKENS, HeaderValue::from(r.remaining_tokens));
            }
            // What the answer used, recorded as it ends. Embedding, image, video and
            // generateAnswer answers report no usage: their estimate is counted instead.
            let mut tally = account.as_deref().map(|a| {
                let fallback = route
                    .unreported_usage
                    .then(|| unreported_usage(route.family, est.estimate.tokens));
                let series = a.series(state, Some(index), true);
                served.tallied = Some(series);
                state
                    .ledger
                    .tally(series, a.model.clone(), &key.project, fallback)
            });
            trace::usage(trace.as_ref(), tally.as_mut());
            // Google bills the images an image call returned (fewer than asked for when some
            // were filtered): counted from the answer.
            let images = (route.family == QuotaFamily::Image).then(ImageCounter::default);
            let pricer = match (quota_model, &client_part) {
                (Some(model), Some(c)) if c.has_budgets() => Some(client::pricer(state, model)),
                _ => None,
            };
            let at_end = AtEnd {
                settlement,
                tally,
                images,
                pricer,
            };
            if route.creates_resource && !streaming {
                let answer = read_upto(resp, CREATE_BODY_LIMIT, cfg.request_timeout).await?;
                match &answer {
                    Answer::Whole(bytes) => {
                        let creator =
                            affinity::creator(&*state.store, route, &caller, caller_name).await;
                        affinity::remember_created(&*state.store, bytes, &key.kid, &creator).await;
                        if let Some(hold) = batch_hold.take() {
                            batch::created(hold, bytes, &creator).await;
                        }
                    }
                    Answer::Over(..) => tracing::warn!(
                        key = %key.masked,
                        limit = CREATE_BODY_LIMIT,
                        "a create call's answer is larger than the proxy reads to learn the created name: passed on whole, its key affinity not recorded"
                    ),
                }
                return Ok(answer.into_response(status, headers, cfg, at_end));
            }
            // A batch job's answer says whether it ended: its batch quota is released then.
            if let Some(name) = crate::batch::named(route) {
                if parts.method == http::Method::DELETE {
                    batch::forget(state, name).await;
                } else if !streaming {
                    let answer = read_upto(resp, CREATE_BODY_LIMIT, cfg.request_timeout).await?;
                    if let Answer::Whole(bytes) = &answer {
                        batch::observed(state, name, bytes).await;
                    }
                    return Ok(answer.into_response(status, headers, cfg, at_end));
                }
            }
            if let Some(collection) = route.lists.filter(|_| caller != Caller::Admin) {
                return Ok(own_listing(
                    state,
                    resp,
                    collection,
                    &caller,
                    caller_name,
                    headers,
                    at_end,
                )
                .await);
            }
            let body_deadline = (!streaming).then(|| sent_at + cfg.request_timeout);
            // A batch job's results file is costed as it is downloaded.
            let costing = batch::results_download(&self.state, route, status).await;
            let stream = ProxyBody::new(
                crate::batch::results::Costed::new(resp.into_body(), costing),
                cfg.stream_idle_timeout,
                body_deadline,
                at_end,
            );
            let mut out = Response::new(Body::new(stream));
            *out.status_mut() = status;
            *out.headers_mut() = headers;
            return Ok(out);
        }
    }
}

/// Write the request for the fallback model admitted in `switched`: the model it is counted
/// under (its quota, its client's part, its ledger series) and the path and body sent.
fn switch(
    switched: fallback::Switched,
    serving: &mut Option<Arc<str>>,
    client_part: &mut Option<crate::quota::ClientAdmit>,
    path: &mut std::borrow::Cow<'_, str>,
    body: &mut Bytes,
    account: Option<&mut Account>,
) -> crate::quota::Reservation {
    if let Some(a) = account {
        a.model = switched.model.clone();
    }
    *serving = Some(switched.model);
    *client_part = switched.client_part;
    *path = std::borrow::Cow::Owned(switched.path);
    *body = switched.body;
    switched.reservation
}

/// Whether Google's dead-key answer for key `index` may disable it: not when this request
/// already disabled one, and only when a probe with the key alone confirms it.
async fn confirm_dead<S, B>(
    state: &AppState,
    inner: S,
    upstream: &Upstream,
    index: usize,
    reason: &str,
    disabled_one: bool,
) -> bool
where
    S: Service<Outbound, Response = http::Response<B>, Error = ForwardError>,
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let masked = &state.pool.keys[index].masked;
    if disabled_one {
        tracing::warn!(key = %masked, reason, "a second key answered as dead in one request: answer delivered, key kept (at most one key is disabled per request)");
        return false;
    }
    let confirmed = react::probe_confirms_dead(state, inner, upstream, index).await;
    if !confirmed {
        tracing::warn!(key = %masked, reason, "the Gemini API answered as if the key were dead, but a probe with it did not confirm it: answer delivered, key kept");
    }
    confirmed
}

/// What a call whose answer reports no usage is recorded as having used: its estimate, in the
/// unit its family is counted in (images, seconds of video, else input tokens).
fn unreported_usage(family: QuotaFamily, estimate: u64) -> TokenUsage {
    match family {
        QuotaFamily::Image => TokenUsage {
            images: estimate,
            ..TokenUsage::default()
        },
        QuotaFamily::Video => TokenUsage {
            video_seconds: estimate,
            ..TokenUsage::default()
        },
        _ => TokenUsage {
            input: estimate,
            ..TokenUsage::default()
        },
    }
}

/// The client's answer when no upstream answer came.
fn network_error(e: &ForwardError) -> ApiError {
    match e.kind {
        _ if e.timed_out => ApiError::GatewayTimeout(format!(
            "the Gemini API did not answer in time: {}",
            e.detail
        )),
        ForwardErrorKind::Unsent => {
            ApiError::BadGateway(format!("the Gemini API could not be reached: {}", e.detail))
        }
        ForwardErrorKind::Lost | ForwardErrorKind::Silent => ApiError::BadGateway(format!(
            "the connection to the Gemini API failed after the request was sent ({}); it is not retried, since it may have run",
            e.detail
        )),
    }
}

/// A listing's answer with only `caller`'s own entries (see [`affinity::own_listing`]). An
/// answer over [`CREATE_BODY_LIMIT`], or not JSON, is refused rather than shown whole: it
/// could hold other clients' resources.
async fn own_listing<B>(
    state: &AppState,
    resp: http::Response<B>,
    collection: &str,
    caller: &Caller,
    caller_name: &str,
    mut headers: http::HeaderMap,
    at_end: AtEnd,
) -> Response
where
    B: hyper::body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let status = resp.status();
    let cfg = &state.config.upstream;
    let filtered = match read_upto(resp, CREATE_BODY_LIMIT, cfg.request_timeout).await {
        Ok(Answer::Whole(bytes)) => {
            affinity::own_listing(&*state.store, collection, &bytes, caller, caller_name).await
        }
        Ok(Answer::Over(..)) => None,
        Err(e) => return e.into_response(),
    };
    let Some(filtered) = filtered else {
        return ApiError::BadGateway(format!(
            "the upstream's {collection} listing could not be read to show only this client's entries"
        ))
        .into_response();
    };
    headers.remove(http::header::CONTENT_LENGTH);
    Answer::<B>::Whole(Bytes::from(filtered)).into_response(status, headers, cfg, at_end)
}

#[cfg(test)]
mod tests;
