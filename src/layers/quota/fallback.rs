//! The quota step's side of fallback chains ([`crate::fallback`]): the models left to try for
//! one request, and the first of them with room (now, or within the request's allowance),
//! admitted before anything is sent, with the request rewritten for it.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use super::admit::{self, Within};
use super::client;
use super::question::{self, Want};
use super::step::Ctx;
use crate::auth::Caller;
use crate::fallback::{self, Fellback, Reason};
use crate::layers::estimate::Estimated;
use crate::quota::limits::Unpriced;
use crate::quota::queue::Lane;
use crate::quota::{AdmitOutcome, ClientAdmit, Reservation, Settlement};
use crate::state::Core;

/// The fallback models one request may still be served by, in order.
pub(super) struct Chain {
    asked: Option<Arc<str>>,
    rest: VecDeque<Arc<str>>,
    /// Set once a fallback model was admitted: the answer says so.
    pub fell: Option<Fellback>,
}

/// A fallback model with room, admitted, and the request as it must be sent to it.
pub(super) struct Switched {
    pub model: Arc<str>,
    pub reservation: Reservation,
    /// Its client's part of the admission for this model (its cost differs).
    pub client_part: Option<ClientAdmit>,
    /// The path to send (Gemini surface: the model is in it).
    pub path: String,
    /// The body to send (OpenAI surface: the model is in it).
    pub body: Bytes,
    /// Time spent in the fallback model's line of the queue (`None`: not queued).
    pub waited: Option<Duration>,
}

/// How a fallback model is asked for room: at once, or in its line of the queue.
#[derive(Clone, Copy)]
pub(super) enum Ask {
    /// Room now or not at all (after Google's overload answer: the request already waited
    /// and was tried).
    Now,
    /// Within what is left of the request's allowance, waiting in the fallback model's line
    /// like any request for it (the asked model was refused without using it up).
    Within(Within),
}

/// The request as it is written now: for `model`, with this path and body.
pub(super) struct Written<'a> {
    pub model: &'a str,
    pub path: &'a str,
    pub body: &'a Bytes,
}

impl Chain {
    /// The chain for a request: none for a call that cannot change model, else the configured
    /// chain as the client and the request allow it, without the models the client may not
    /// call or the proxy refuses to send unpriced.
    pub(super) fn of(
        state: &Core,
        caller: &Caller,
        headers: &http::HeaderMap,
        est: &Estimated,
        path: &str,
    ) -> Chain {
        let mut chain = Chain {
            asked: None,
            rest: VecDeque::new(),
            fell: None,
        };
        let Some(asked) = est.quota_model() else {
            return chain;
        };
        // Most requests have no chain: nothing more is looked at for them.
        if state.config.fallbacks.chain(asked).is_empty()
            || !fallback::eligible(&est.route, est.pinned.is_some())
        {
            return chain;
        }
        // The model must be where it is rewritten: the path's, or the OpenAI body's.
        if !est.route.openai && fallback::rewrite_path(path, asked, asked).is_none() {
            return chain;
        }
        let setting = caller.client().and_then(|c| c.limits.fallbacks);
        let refuse_unpriced = state.config.limits.unpriced == Unpriced::Refuse;
        chain.rest = fallback::chain(&state.config.fallbacks, setting, headers, asked)
            .into_iter()
            .filter(|m| caller.client().is_none_or(|c| c.limits.allows_model(m)))
            .filter(|m| !refuse_unpriced || state.ledger.is_priced(m))
            .collect();
        chain.asked = Some(asked.into());
        chain
    }

    /// The first model left in the chain with room (as `ask` says: now, asked once, never
    /// overtaking requests waiting for it; or within what is left of the request's allowance,
    /// in that model's line of the queue), admitted; `None` when none has room.
    /// `now` is the request as written for the model serving now; `with_client`: the client's
    /// part is admitted anew (not when an earlier attempt's part is carried).
    pub(super) async fn next_with_room(
        &mut self,
        cx: Ctx<'_>,
        now: Written<'_>,
        with_client: bool,
        reason: Reason,
        ask: Ask,
    ) -> Option<Switched> {
        let Ctx {
            state, caller, est, ..
        } = cx;
        let Written {
            model: current,
            path,
            body,
        } = now;
        let asked = self.asked.clone()?;
        let route = &est.route;
        while let Some(model) = self.rest.pop_front() {
            let part =
                client::part(state, caller, route, &est.estimate, &model).filter(|_| with_client);
            let (reservation, waited) = match ask {
                Ask::Now => match admit_now(state, est, &model, part.clone()).await {
                    Some(r) => (r, None),
                    None => continue,
                },
                Ask::Within(within) => {
                    let want = Want {
                        route,
                        est: &est.estimate,
                        model: &model,
                        pinned: None,
                        avoid: &[],
                        client: part.clone(),
                        // A fallback goes to AI Studio keys: a Vertex request is built from
                        // the route, which names the model asked for.
                        vertex_ok: false,
                    };
                    match admit::admit(state, want, within).await {
                        Ok(a) => (a.reservation, a.waited),
                        Err(_) => continue,
                    }
                }
            };
            let rewritten = if route.openai {
                fallback::rewrite_body(body, &model).map(|b| (path.to_string(), b))
            } else {
                fallback::rewrite_path(path, current, &model).map(|p| (p, body.clone()))
            };
            let Some((path, body)) = rewritten else {
                // Refunded as it drops.
                drop(Settlement::new(state.store.clone(), reservation));
                continue;
            };
            state.metrics.fallback(&asked, &model, reason.as_str());
            tracing::info!(asked = %asked, served = %model, reason = reason.as_str(), "served by a fallback model");
            self.fell = Some(Fellback {
                asked: asked.clone(),
                served: model.clone(),
                reason,
            });
            return Some(Switched {
                model,
                reservation,
                client_part: part,
                path,
                body,
                waited,
            });
        }
        None
    }
}

/// One admission for `model` on any key with room now: no wait, and none while others wait
/// in its line of the queue (they came first).
async fn admit_now(
    state: &Core,
    est: &Estimated,
    model: &str,
    client: Option<ClientAdmit>,
) -> Option<Reservation> {
    let route = &est.route;
    let lane = Lane {
        model,
        family: route.family,
        project: None,
    };
    if state.queues.busy(lane) {
        return None;
    }
    let want = Want {
        route,
        est: &est.estimate,
        model,
        pinned: None,
        avoid: &[],
        client,
        vertex_ok: false,
    };
    let request = question::request(state, want).ok()?;
    let t0 = Instant::now();
    let outcome = state.store.admit(&request.first).await;
    state.metrics.store_admit(t0.elapsed(), outcome.is_ok());
    match outcome {
        Ok(AdmitOutcome::Admitted(r)) => Some(r),
        _ => None,
    }
}
