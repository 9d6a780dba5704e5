//! One request's way through the quota step: its state across attempts ([`Step`]) and the
//! loop that runs them: reserve room, choose the key, build and send the attempt, react to an
//! error answer or deliver a success. Whether a failed attempt is tried again is decided in one
//! place ([`Step::retrying`], from the [`retry`] table) and prepared in one ([`Step::again`]).

use std::borrow::Cow;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::response::Response;
use bytes::Bytes;
use tokio::time::Instant;
use tower::Service;

use super::answer::backoff;
use super::{Account, Served, admit, client, fallback, trace};
use crate::auth::Caller;
use crate::batch::Hold;
use crate::error::ApiError;
use crate::fallback::Fellback;
use crate::layers::estimate::Estimated;
use crate::layers::forward::{ForwardError, Outbound};
use crate::layers::retry::{Budget, Plan};
use crate::quota::limits::Unpriced;
use crate::quota::{ClientAdmit, Settlement};
use crate::state::Core;
use crate::telemetry::span::{Child, RequestTrace};
use crate::upstream::{self, Upstream};

/// The forwarding service the quota step sends its attempts through.
pub(super) trait Forward<B>:
    Service<Outbound, Response = http::Response<B>, Error = ForwardError, Future: Send>
    + Clone
    + Send
    + 'static
{
}

impl<S, B> Forward<B> for S where
    S: Service<Outbound, Response = http::Response<B>, Error = ForwardError, Future: Send>
        + Clone
        + Send
        + 'static
{
}

/// The body of an upstream answer.
pub(super) trait UpBody:
    hyper::body::Body<Data = Bytes, Error: std::error::Error + Send + Sync + 'static>
    + Send
    + Unpin
    + 'static
{
}

impl<B> UpBody for B where
    B: hyper::body::Body<Data = Bytes, Error: std::error::Error + Send + Sync + 'static>
        + Send
        + Unpin
        + 'static
{
}

/// What one request's step reads and never changes.
#[derive(Clone, Copy)]
pub(super) struct Ctx<'a> {
    pub state: &'a Core,
    pub parts: &'a http::request::Parts,
    pub est: &'a Estimated,
    pub caller: &'a Caller,
    pub upstream: &'a Upstream,
}

/// One attempt on one key: its admission's settlement (dropped unsettled, it refunds the
/// estimate by itself) and its trace span.
pub(super) struct Attempt {
    pub index: usize,
    pub settlement: Option<Settlement>,
    pub span: Option<Child>,
}

impl Attempt {
    /// Refund the attempt's admission, keeping its client's part (one request counts once
    /// against its client's limits, however many keys it is tried on).
    pub fn release(&mut self) -> Option<Settlement> {
        let hold = self.settlement.as_mut().and_then(Settlement::take_client);
        self.settlement = None;
        hold
    }
}

/// One request's state across its attempts.
pub(super) struct Step<'a, S> {
    pub cx: Ctx<'a>,
    pub inner: S,
    pub trace: Option<RequestTrace>,
    pub served: &'a mut Served,
    pub account: Option<&'a mut Account>,
    /// Set when a fallback model serves the request: the answer says so.
    pub fell: &'a mut Option<Fellback>,
    /// The model the request is written for now (a fallback's after a switch; `None`: a call
    /// that spends no quota).
    pub serving: Option<Arc<str>>,
    /// The client's part of the admission for the model serving.
    pub client_part: Option<ClientAdmit>,
    /// The models that may serve it instead ([`crate::fallback`]).
    pub chain: fallback::Chain,
    /// The path and body sent for the model serving.
    pub path: Cow<'a, str>,
    pub body: Bytes,
    /// A fallback model admitted before the next attempt (after Google's overload answer).
    pub preadmitted: Option<Box<fallback::Switched>>,
    /// Attempts before the model serving now: its tries are counted from there.
    pub base: u32,
    /// A batch creation's hold on its project's batch quota ([`crate::batch`]); boxed, as it
    /// is rare and every request carries the field.
    pub batch_hold: Option<Box<Hold>>,
    pub deadline: Instant,
    /// How long this request may still wait in the admission queue.
    pub allowance: Duration,
    /// Keys that failed this request (dead, or transient errors): avoided while others remain.
    pub avoid: Vec<usize>,
    /// At most one key is disabled per client request, whatever Google answers.
    pub disabled_one: bool,
    pub attempt: u32,
    /// The client's part of the first admission, carried by a retry.
    pub carried: Option<Settlement>,
    /// Whether a Vertex entry could serve it (looked at only when the pool has one).
    pub vertex_ok: bool,
}

impl<'a, S> Step<'a, S> {
    /// The step for a request, after the checks that spend nothing: the client's models
    /// allowlist, and an unpriced model where the configuration refuses those.
    pub fn new(
        cx: Ctx<'a>,
        inner: S,
        body: Bytes,
        served: &'a mut Served,
        account: Option<&'a mut Account>,
        fell: &'a mut Option<Fellback>,
    ) -> Result<Step<'a, S>, ApiError> {
        let Ctx {
            state, est, caller, ..
        } = cx;
        let route = &est.route;
        let quota_model = est.quota_model();
        let mut client_part = None;
        let mut allowance = Duration::ZERO;
        if let Some(model) = quota_model {
            client::check_model(state, caller, model).inspect_err(|_| served.refused = true)?;
            client_part = client::part(state, caller, route, &est.estimate, model);
            // A billable call the proxy cannot price goes out only where the configuration
            // says so: never unseen.
            if state.config.limits.unpriced == Unpriced::Refuse && !state.ledger.is_priced(model) {
                served.refused = true;
                state.metrics.refused("unpriced");
                return Err(ApiError::InvalidArgument(format!(
                    "{model} has no price in this proxy's price table, and it refuses unpriced calls (limits.unpriced = \"refuse\"). Ask its operator to add [prices.\"{model}\"]."
                )));
            }
            allowance = admit::allowance(state, caller.client(), &cx.parts.headers)?;
        }
        let path = cx.parts.uri.path();
        let vertex_ok = state.pool.has_vertex && upstream::vertex::serves(route, &body);
        // A pool of Vertex entries alone: what only AI Studio keys serve is refused, saying why.
        if !vertex_ok && !state.pool.has_ai_studio {
            return Err(upstream::vertex::only::refusal(path, route, &body));
        }
        let trace = trace::of(cx.parts);
        trace::prompt(trace.as_ref(), &body);
        Ok(Step {
            chain: fallback::Chain::of(state, caller, &cx.parts.headers, est, path),
            // The account's name of the model (one allocation per request, not two).
            serving: account.as_deref().map(|a| a.model.clone()),
            client_part,
            path: Cow::Borrowed(path),
            vertex_ok,
            body,
            preadmitted: None,
            base: 0,
            batch_hold: None,
            deadline: Instant::now() + state.config.upstream.retry_deadline,
            allowance,
            avoid: Vec::new(),
            disabled_one: false,
            attempt: 0,
            carried: None,
            cx,
            inner,
            trace,
            served,
            account,
            fell,
        })
    }

    /// Run the attempts until one is delivered or none is left. An `async` block, not an
    /// `async fn`: an `async fn` keeps its arguments twice in its future (as captured and as
    /// locals, rust-lang/rust#62958), which for the step is 688 bytes more, copied at the
    /// first poll.
    #[expect(clippy::manual_async_fn, reason = "an async fn keeps `self` twice")]
    pub fn run<B: UpBody>(mut self) -> impl Future<Output = Result<Response, ApiError>>
    where
        S: Forward<B>,
    {
        async move {
            loop {
                self.attempt += 1;
                self.served.attempts = self.attempt;
                let reservation = self.reserve().await?;
                let index = self.key(reservation.as_ref()).await?;
                let mut at = self.open(index, reservation);
                let request = match self.cx.state.pool.keys[index].vertex {
                    None => self.studio_request(&at)?,
                    Some(_) => match crate::boxed::apart(|| self.vertex_request(&mut at)).await? {
                        Some(r) => r,
                        None => continue,
                    },
                };
                let Some((resp, sent_at)) = self.send(&mut at, request).await? else {
                    continue;
                };
                if resp.status().as_u16() >= 400 {
                    // Boxed apart, as every rare path here: the request's future and its poll
                    // stay small.
                    match crate::boxed::apart(|| self.react(at, resp)).await? {
                        Some(answer) => return Ok(answer),
                        None => continue,
                    }
                }
                if self.delivery_waits() {
                    return crate::boxed::apart(|| self.deliver(at, resp, sent_at)).await;
                }
                return Ok(self.deliver_now(at, resp, sent_at));
            }
        }
    }

    /// Whether a failed attempt is tried again: the retry table's `plan`, within its budget
    /// (counted in tries of the model serving now) and the request's deadline.
    pub fn retrying(&self, plan: &Plan) -> bool {
        let cfg = &self.cx.state.config.upstream;
        let budget = match plan.budget {
            Budget::Attempts => cfg.max_attempts,
            Budget::AttemptsAndPool => cfg.max_attempts + self.cx.state.pool.keys.len() as u32,
        };
        plan.retry && self.attempt - self.base < budget && Instant::now() < self.deadline
    }

    /// Ready the next attempt after key `index` failed, as `plan` says: counted, the key
    /// avoided (a free call's key always: its 429 holds nothing in the store), the client's
    /// part carried, and the backoff slept.
    pub async fn again(&mut self, index: usize, plan: &Plan, client_hold: Option<Settlement>) {
        self.cx.state.metrics.retry(plan.reason);
        if plan.avoid_key || self.serving.is_none() {
            self.avoid.push(index);
        }
        self.carried = client_hold;
        if plan.backoff {
            backoff(self.attempt, self.deadline).await;
        }
    }

    /// Whether the request is a read, which may be sent again once written: anything else
    /// Google may have run (and billed, or created twice).
    pub fn idempotent(&self) -> bool {
        matches!(self.cx.parts.method, http::Method::GET | http::Method::HEAD)
    }
}
