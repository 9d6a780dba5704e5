//! An attempt's request and its sending: written for the key (an API key's headers, or a
//! Vertex entry's URL, body and access token), sent through the inner service within the
//! head timeout, and a connection that failed tried again as the retry table says.

use bytes::Bytes;
use http_body_util::Full;
use tokio::time::Instant;
use tower::ServiceExt;

use super::answer::keep_counted;
use super::react;
use super::step::{Attempt, Forward, Step, UpBody};
use super::trace;
use crate::error::ApiError;
use crate::layers::forward::{ForwardError, ForwardErrorKind, Outbound};
use crate::layers::retry::{self, Failure};
use crate::upstream::{self, vertex::VertexError};

impl<S> Step<'_, S> {
    /// The attempt's request for an AI Studio key: its API key's headers on the client's
    /// request. Made without waiting, so without a future of its own.
    pub fn studio_request(&self, at: &Attempt) -> Result<http::Request<Full<Bytes>>, ApiError> {
        let cx = self.cx;
        let parts = cx.parts;
        let key = &cx.state.pool.keys[at.index];
        let outgoing = upstream::Outgoing {
            method: &parts.method,
            path: &self.path,
            query: parts.uri.query(),
            headers: &parts.headers,
            body: self.body.clone(),
            bearer: cx.est.route.openai,
        };
        let original = parts.uri.path_and_query();
        upstream::build_request_from(cx.upstream, outgoing, &key.headers, original)
            .ok_or_else(unforwardable)
    }

    /// The attempt's request for a Vertex entry: its URL, body and access token (`Ok(None)`:
    /// the entry could not take it, having no token, and the request is tried again
    /// elsewhere).
    pub async fn vertex_request(
        &mut self,
        at: &mut Attempt,
    ) -> Result<Option<http::Request<Full<Bytes>>>, ApiError> {
        let cx = self.cx;
        let parts = cx.parts;
        let Some(v) = &cx.state.pool.keys[at.index].vertex else {
            return self.studio_request(at).map(Some);
        };
        let route = &cx.est.route;
        let query = parts.uri.query();
        let body = self.body.clone();
        match v
            .request(&parts.method, route, query, &parts.headers, body)
            .await
        {
            Ok(r) => Ok(Some(r)),
            Err(VertexError::Path) => Err(unforwardable()),
            Err(VertexError::Token(e)) => {
                // Held (not retried in a loop) and avoided: the request goes elsewhere if it
                // can.
                react::hold_entry(cx.state, at.index, &e.0).await;
                let plan = retry::plan(Failure::EntryRefused, self.idempotent());
                let hold = at.release();
                if self.retrying(&plan) {
                    self.again(at.index, &plan, hold).await;
                    return Ok(None);
                }
                Err(ApiError::Unavailable(
                    "The Vertex AI entry chosen for this request has no access token; retry shortly.".into(),
                ))
            }
        }
    }

    /// Send the attempt: its answer's head and when it was sent, or `Ok(None)` when the
    /// connection failed and the request is tried again.
    pub async fn send<B: UpBody>(
        &mut self,
        at: &mut Attempt,
        mut request: http::Request<Full<Bytes>>,
    ) -> Result<Option<(http::Response<B>, Instant)>, ApiError>
    where
        S: Forward<B>,
    {
        let state = self.cx.state;
        let key = &state.pool.keys[at.index];
        at.span = trace::attempt(
            self.trace.as_ref(),
            self.attempt,
            key,
            request.headers_mut(),
        );
        let sent_at = Instant::now();
        // Counted as sent from here: a client that leaves while Google works on it still had
        // the request run (and billed). Taken back below if it never left.
        let was_sent = self.served.sent;
        self.served.sent |= at.settlement.is_some();
        let outbound = Outbound {
            request,
            key: at.index,
            via: key.vertex.as_ref().map(|v| v.client.clone()),
        };
        match self.forward(outbound).await {
            Ok(r) => {
                // Time to the answer's head, for answered attempts only.
                self.served.upstream = sent_at.elapsed();
                Ok(Some((r, sent_at)))
            }
            // Boxed apart, as every rare path here: the attempt's future and its poll stay small.
            Err(e) => crate::boxed::apart(|| self.unanswered(at, e, was_sent))
                .await
                .map(|()| None),
        }
    }

    /// An attempt that got no answer: tried again as the retry table says (`Ok(())`), or the
    /// client's answer.
    async fn unanswered(
        &mut self,
        at: &mut Attempt,
        e: ForwardError,
        was_sent: bool,
    ) -> Result<(), ApiError> {
        let state = self.cx.state;
        let key = &state.pool.keys[at.index];
        state.pool.health.failure();
        if e.kind == ForwardErrorKind::Unsent {
            self.served.sent = was_sent;
        }
        let failure = match e.kind {
            ForwardErrorKind::Unsent => Failure::Unsent,
            ForwardErrorKind::Lost => Failure::Lost,
            ForwardErrorKind::Silent => Failure::Silent,
        };
        let plan = retry::plan(failure, self.idempotent());
        let retrying = self.retrying(&plan);
        trace::unanswered(&mut at.span, &e.detail, retrying.then_some(plan.reason));
        let attempt = self.attempt;
        if retrying {
            tracing::warn!(key = %key.masked, attempt, error = %e.detail, "upstream unreachable: retrying");
            let hold = at.release();
            self.again(at.index, &plan, hold).await;
            return Ok(());
        }
        if plan.keep_counted {
            // It may have run: it stays counted, estimate included.
            keep_counted(at.settlement.take());
        }
        tracing::warn!(key = %key.masked, attempt, kind = ?e.kind, error = %e.detail, "upstream request failed");
        Err(network_error(&e))
    }

    /// Through the inner service, once it is ready, within the head timeout (a stream's idle
    /// timeout when shorter).
    async fn forward<B>(&mut self, outbound: Outbound) -> Result<http::Response<B>, ForwardError>
    where
        S: Forward<B>,
    {
        let cfg = &self.cx.state.config.upstream;
        let head_timeout = if self.cx.est.streaming() {
            cfg.stream_idle_timeout.min(cfg.request_timeout)
        } else {
            cfg.request_timeout
        };
        let mut inner = self.inner.clone();
        let sending = inner.ready().await?.call(outbound);
        match tokio::time::timeout(head_timeout, sending).await {
            Ok(answered) => answered,
            Err(_) => Err(ForwardError {
                kind: ForwardErrorKind::Silent,
                timed_out: true,
                detail: format!("no answer within {}s", head_timeout.as_secs()),
            }),
        }
    }
}

/// A request whose path the upstream cannot take.
fn unforwardable() -> ApiError {
    ApiError::InvalidArgument("the request path cannot be forwarded".into())
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
