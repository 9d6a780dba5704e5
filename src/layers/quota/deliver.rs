//! A success's way to the client: the upload and created-resource affinity recorded, the
//! rate-limit headers, the ledger's tally and the client's pricer riding the body to its end,
//! batch jobs' states read, a listing cut to the caller's own entries, and everything else
//! streamed through as it comes.

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use tokio::time::Instant;

use super::answer::{Answer, read_upto};
use super::step::{Attempt, Step, UpBody};
use super::{batch, client, trace};
use crate::auth::Caller;
use crate::body::{AtEnd, ProxyBody};
use crate::error::ApiError;
use crate::ledger::{ImageCounter, TokenUsage};
use crate::pool::affinity;
use crate::route::QuotaFamily;
use crate::state::Core;

/// What is left in the 60 s window of the (project, model) that served a request.
const REMAINING_REQUESTS: HeaderName = HeaderName::from_static("x-ratelimit-remaining-requests");
const REMAINING_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-remaining-tokens");

/// Largest create-call answer read whole to learn the name of what it created.
const CREATE_BODY_LIMIT: usize = 4 * 1024 * 1024;

impl<S> Step<'_, S> {
    /// Whether delivering the success waits on something first (rare): an upload session's
    /// affinity, a batch job's state, a created resource's name, a listing cut to the
    /// caller's own entries, a results file's cost. Everything else streams at once
    /// ([`Step::deliver_now`]), with no future of its own.
    pub fn delivery_waits(&self) -> bool {
        let (est, route) = (self.cx.est, &self.cx.est.route);
        route.upload
            || crate::batch::named(route).is_some()
            || (!est.streaming() && route.creates_resource)
            || (route.lists.is_some() && *self.cx.caller != Caller::Admin)
            || route.action.as_deref() == Some("download")
    }

    /// Deliver the attempt's success, streaming; its settlement and tally end with the body.
    pub fn deliver_now<B: UpBody>(
        &mut self,
        mut at: Attempt,
        resp: http::Response<B>,
        sent_at: Instant,
    ) -> Response {
        let (resp, mut headers) = self.head(&mut at, resp);
        self.remaining(&at, &mut headers);
        let at_end = self.at_end(&mut at);
        self.stream(resp, at.index, headers, at_end, sent_at, None)
    }

    /// [`Step::deliver_now`] for an answer whose delivery waits ([`Step::delivery_waits`]).
    pub async fn deliver<B: UpBody>(
        &mut self,
        mut at: Attempt,
        resp: http::Response<B>,
        sent_at: Instant,
    ) -> Result<Response, ApiError> {
        let cx = self.cx;
        let (state, est, caller) = (cx.state, cx.est, cx.caller);
        let route = &est.route;
        let key = &state.pool.keys[at.index];
        let (resp, mut headers) = self.head(&mut at, resp);
        if route.upload {
            self.remember_upload(&mut headers, &key.kid).await;
        }
        self.remaining(&at, &mut headers);
        let at_end = self.at_end(&mut at);
        let batch_job = crate::batch::named(route);
        if let Some(name) = batch_job
            && cx.parts.method == http::Method::DELETE
        {
            batch::forget(state, name).await;
        }
        let read_whole = !est.streaming()
            && (route.creates_resource
                || batch_job.is_some() && cx.parts.method != http::Method::DELETE);
        let listing = route.lists.filter(|_| *caller != Caller::Admin);
        if read_whole || listing.is_some() {
            return self.whole(resp, at.index, batch_job, headers, at_end).await;
        }
        // A batch job's results file is costed as it is downloaded.
        let costing = match route.action.as_deref() == Some("download") {
            true => super::batch_cost::results_download(state, route, resp.status()).await,
            false => None,
        };
        Ok(self.stream(resp, at.index, headers, at_end, sent_at, costing))
    }

    /// The answer's head read: its own header map kept (hop-by-hop headers removed), not
    /// copied; the attempt's span and the key's health told of the success.
    fn head<B>(
        &mut self,
        at: &mut Attempt,
        resp: http::Response<B>,
    ) -> (http::Response<B>, http::HeaderMap) {
        let state = self.cx.state;
        let key = &state.pool.keys[at.index];
        let (mut head, body) = resp.into_parts();
        let mut headers = std::mem::take(&mut head.headers);
        crate::upstream::strip_response_headers(&mut headers);
        trace::answered(&mut at.span, head.status, None, None);
        state.pool.health.success();
        state.pool.health.project_ok(&key.project);
        (http::Response::from_parts(head, body), headers)
    }

    /// The rate-limit headers: what the admission left in the project's window.
    fn remaining(&self, at: &Attempt, headers: &mut http::HeaderMap) {
        if let Some(r) = at.settlement.as_ref().and_then(|s| s.reservation()) {
            headers.insert(REMAINING_REQUESTS, HeaderValue::from(r.remaining_requests));
            headers.insert(REMAINING_TOKENS, HeaderValue::from(r.remaining_tokens));
        }
    }

    /// The answer streamed through, its settlement and tally riding its body to the end (a
    /// Vertex entry's answer rewritten to the form the request came in).
    fn stream<B: UpBody>(
        &mut self,
        resp: http::Response<B>,
        index: usize,
        mut headers: http::HeaderMap,
        at_end: AtEnd,
        sent_at: Instant,
        costing: Option<crate::batch::results::OnEnd>,
    ) -> Response {
        let cx = self.cx;
        let (state, est) = (cx.state, cx.est);
        let cfg = &state.config.upstream;
        let status = resp.status();
        let body_deadline = (!est.streaming()).then(|| sent_at + cfg.request_timeout);
        let stream = ProxyBody::new(
            crate::batch::results::Costed::new(resp.into_body(), costing),
            cfg.stream_idle_timeout,
            body_deadline,
            at_end,
        );
        // An object held to be rewritten counts against the buffered-bytes bound.
        let mut out = match state.pool.keys[index].vertex.is_some() {
            true => {
                let client = self.account.as_deref().map_or(0, |a| a.client);
                let held = (state.bodies.clone(), client);
                let route = &est.route;
                crate::upstream::vertex::answer::response(
                    stream,
                    route,
                    cx.parts,
                    &mut headers,
                    held,
                )
            }
            false => Response::new(Body::new(stream)),
        };
        *out.status_mut() = status;
        *out.headers_mut() = headers;
        out
    }

    /// An answer read whole before it is passed on: a created resource's (its name remembered
    /// with the key and creator; a batch job's hold opened), a batch job's (whether it ended),
    /// or a listing cut to the caller's own entries.
    async fn whole<B: UpBody>(
        &mut self,
        resp: http::Response<B>,
        index: usize,
        batch_job: Option<&str>,
        headers: http::HeaderMap,
        at_end: AtEnd,
    ) -> Result<Response, ApiError> {
        let cx = self.cx;
        let (state, caller, route) = (cx.state, cx.caller, &cx.est.route);
        let cfg = &state.config.upstream;
        let key = &state.pool.keys[index];
        let status = resp.status();
        if route.creates_resource {
            let answer = read_upto(resp, CREATE_BODY_LIMIT, cfg.request_timeout).await?;
            match &answer {
                Answer::Whole(bytes) => {
                    let creator = affinity::creator(&*state.store, route, caller, caller.name());
                    let creator = creator.await;
                    affinity::remember_created(&*state.store, bytes, &key.kid, &creator).await;
                    if let Some(hold) = self.batch_hold.take() {
                        batch::created(*hold, bytes, &creator).await;
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
        if let Some(name) = batch_job {
            let answer = read_upto(resp, CREATE_BODY_LIMIT, cfg.request_timeout).await?;
            if let Answer::Whole(bytes) = &answer {
                batch::observed(state, name, bytes).await;
            }
            return Ok(answer.into_response(status, headers, cfg, at_end));
        }
        let collection = route.lists.unwrap_or_default();
        Ok(own_listing(state, resp, collection, caller, headers, at_end).await)
    }

    /// What rides the body to its end: the settlement, the ledger's tally of what the answer
    /// used (an answer without usage, an embedding's, an image's, ..., its estimate), the
    /// image counter of an image call (Google bills the images it returned) and the pricer of
    /// a client with budgets.
    fn at_end(&mut self, at: &mut Attempt) -> AtEnd {
        let cx = self.cx;
        let (state, est) = (cx.state, cx.est);
        let route = &est.route;
        let key = &state.pool.keys[at.index];
        let mut tally = self.account.as_deref().map(|a| {
            let fallback = route
                .unreported_usage
                .then(|| unreported_usage(route.family, est.estimate.tokens));
            let series = a.series(state, Some(at.index), true);
            self.served.tallied = Some(series);
            state
                .ledger
                .tally(series, a.model.clone(), &key.project, fallback)
        });
        trace::usage(self.trace.as_ref(), tally.as_mut());
        let pricer = match (self.serving.as_deref(), &self.client_part) {
            (Some(model), Some(c)) if c.has_budgets() => {
                Some(client::pricer(state, model, key.vertex.is_some()))
            }
            _ => None,
        };
        AtEnd {
            settlement: at.settlement.take(),
            tally,
            images: (route.family == QuotaFamily::Image).then(ImageCounter::default),
            pricer,
        }
    }

    /// An upload session's answer: the upload URL rewritten to come back through the proxy,
    /// with the key (by id) and the creator it belongs to.
    async fn remember_upload(&mut self, headers: &mut http::HeaderMap, kid: &str) {
        let cx = self.cx;
        let (state, parts, caller) = (cx.state, cx.parts, cx.caller);
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
        let route = &cx.est.route;
        let creator = affinity::creator(&*state.store, route, caller, caller.name()).await;
        affinity::remember_upload(&*state.store, headers, &base, kid, &creator).await;
        affinity::end_upload_session(&*state.store, route, headers).await;
    }
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

/// A listing's answer with only `caller`'s own entries (see [`affinity::own_listing`]). An
/// answer over [`CREATE_BODY_LIMIT`], or not JSON, is refused rather than shown whole: it
/// could hold other clients' resources.
async fn own_listing<B: UpBody>(
    state: &Core,
    resp: http::Response<B>,
    collection: &str,
    caller: &Caller,
    mut headers: http::HeaderMap,
    at_end: AtEnd,
) -> Response {
    let status = resp.status();
    let cfg = &state.config.upstream;
    let filtered = match read_upto(resp, CREATE_BODY_LIMIT, cfg.request_timeout).await {
        Ok(Answer::Whole(bytes)) => {
            affinity::own_listing(&*state.store, collection, &bytes, caller, caller.name()).await
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
