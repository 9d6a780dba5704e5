//! Admission: a key whose project has room for the request, waiting in its line of the queue
//! (`quota::queue`) for room that frees within the request's allowance (the question made in
//! `question`, the store's answer read in `ask`, a refusal worded in `refusal`).

use std::time::Duration;

use tokio::time::Instant;

use super::ask::{Try, Until, ask};
use super::client;
use super::question::{Tiered, Want, request};
use super::refusal::{Why, queue_refusal, refusal_error, refused_now};
use crate::error::{ApiError, LimitKind};
use crate::quota::Reservation;
use crate::quota::queue::{Claim, Lane, Pace, Refusal, Ticket, Turn};
use crate::route::Route;
use crate::state::Core;

/// How long this request may wait for quota: the configured `queue.max_wait_secs`, or its
/// client's `max_wait_secs` when set (never longer), shortened (never lengthened) by the
/// request's `x-gemini-max-wait: SECONDS`; a bad value is a 400.
pub(super) fn allowance(
    state: &Core,
    client: Option<&std::sync::Arc<crate::clients::Client>>,
    headers: &http::HeaderMap,
) -> Result<Duration, ApiError> {
    crate::upstream::request::allowance(
        state.config.queue.max_wait,
        client.and_then(|c| c.limits.max_wait_secs),
        headers,
    )
    .map_err(ApiError::InvalidArgument)
}

/// How long an admission may wait in the queue, and what the request holds while it does.
#[derive(Clone, Copy)]
pub(super) struct Within {
    /// The request's retry deadline.
    pub deadline: Instant,
    /// What is left of its allowed wait.
    pub allowance: Duration,
    pub claim: Claim,
}

/// A granted admission, and how long it waited in the queue for it (`None`: not queued).
pub(super) struct Admitted {
    pub reservation: Reservation,
    pub waited: Option<Duration>,
}

/// A refused admission, and how long it waited in the queue first (`None`: not queued), so
/// the answer and its log line say how long the request really waited.
pub(super) struct NotAdmitted {
    pub error: ApiError,
    pub waited: Option<Duration>,
}

impl From<ApiError> for NotAdmitted {
    fn from(error: ApiError) -> NotAdmitted {
        NotAdmitted {
            error,
            waited: None,
        }
    }
}

/// How fast `model`'s line can move at best: the candidate projects' per-minute limits
/// together, per window.
fn pace(state: &Core, request: &Tiered) -> Pace {
    let mut per_window = 0u64;
    let mut seen: Vec<&str> = Vec::new();
    let spill = request.spill.as_ref().map(|s| s.candidates.as_slice());
    for c in request
        .first
        .candidates
        .iter()
        .chain(spill.unwrap_or_default())
    {
        if !seen.contains(&&*c.project) {
            seen.push(&c.project);
            per_window = per_window.saturating_add(c.limits.minute);
        }
    }
    Pace {
        per_window,
        window: Duration::from_millis(state.config.limits.window_ms),
    }
}

/// Admit on a key with room. With the queue on (`queue.max_wait_secs` above zero), a request
/// that finds none waits in its line for up to `allowance` (its model's, or for a request
/// pinned to one key, its project's for the model); with it off, it waits only for a cooldown
/// that ends within `upstream.max_wait_secs`.
///
/// A client over its own limits waits on its own, out of the line, when its limit frees
/// within its allowance, and asks again; else that is the answer.
pub(super) async fn admit(
    state: &Core,
    want: Want<'_>,
    within: Within,
) -> Result<Admitted, NotAdmitted> {
    let (route, pinned) = (want.route, want.pinned);
    let request = request(state, want)?;
    // The usual way: nobody in the line and room at the first question. Anything else goes
    // the whole way, boxed: its future would make every admission's larger.
    let asked = match first_question(state, route, &request, pinned, within) {
        Some(until) => match ask(state, route, &request, until).await {
            Try::Admitted(r) => {
                return Ok(Admitted {
                    reservation: r,
                    waited: None,
                });
            }
            other => Some(other),
        },
        None => None,
    };
    crate::boxed::apart(|| admit_waiting(state, route, request, pinned, within, asked)).await
}

/// When room must free for the first question's refusal to be worth a wait; `None`: the
/// request's line has waiters, and it goes to its end without asking.
fn first_question(
    state: &Core,
    route: &Route,
    request: &Tiered,
    pinned: Option<usize>,
    within: Within,
) -> Option<Until> {
    if state.config.queue.max_wait.is_zero() {
        let wait_until = (Instant::now() + state.config.upstream.max_wait).min(within.deadline);
        return Some(Until::Exactly(wait_until));
    }
    let lane = lane(state, route, request, pinned);
    (!state.queues.busy(lane)).then(|| Until::Start(Instant::now() + within.allowance))
}

/// The line a request waits in: its model's, or for a request pinned to one key (which only
/// that key's project can serve) its project's for the model, behind nobody who could go
/// elsewhere and in front of nobody.
fn lane<'a>(
    state: &'a Core,
    route: &Route,
    request: &'a Tiered,
    pinned: Option<usize>,
) -> Lane<'a> {
    Lane {
        model: request.model.as_str(),
        family: route.family,
        project: pinned.map(|i| &*state.pool.keys[i].project),
    }
}

/// [`admit`] past a first question that did not admit (`asked`, its answer; `None`: not
/// asked, the line has waiters): waiting in the line, and a client over its own limits
/// waiting on its own, out of the line, when its limit frees within its allowance.
async fn admit_waiting(
    state: &Core,
    route: &Route,
    request: Tiered,
    pinned: Option<usize>,
    within: Within,
    mut asked: Option<Try>,
) -> Result<Admitted, NotAdmitted> {
    let Within {
        deadline,
        allowance,
        claim,
    } = within;
    // The allowance already holds the client's own `max_wait_secs` ([`allowance`]).
    let client_until = Instant::now() + allowance;
    let started = Instant::now();
    let mut paused = Duration::ZERO;
    loop {
        let now = Within {
            deadline: deadline + paused,
            allowance: allowance.saturating_sub(started.elapsed()),
            claim,
        };
        let mut outcome = pooled(state, route, &request, pinned, now, asked.take()).await;
        if let Err(n) = &outcome
            && let Some(at) = client::wait_for(state, &n.error, client_until)
        {
            // Its time in line before the refusal and its own sleep: waited, not tried.
            paused += n.waited.unwrap_or_default();
            let t0 = Instant::now();
            tokio::time::sleep_until(at).await;
            paused += t0.elapsed();
            continue;
        }
        // Time spent waiting for the client's own limits counts as waiting too.
        if !paused.is_zero() {
            let waited = match &mut outcome {
                Ok(a) => &mut a.waited,
                Err(n) => &mut n.waited,
            };
            *waited = Some(waited.unwrap_or_default() + paused);
        }
        return outcome;
    }
}

/// One admission through the pool's queue (or without it): [`admit`] without the client's
/// own waits. `asked`: the answer to a first question already asked (the line was empty).
async fn pooled(
    state: &Core,
    route: &Route,
    request: &Tiered,
    pinned: Option<usize>,
    within: Within,
    asked: Option<Try>,
) -> Result<Admitted, NotAdmitted> {
    let Within {
        deadline,
        allowance,
        claim,
    } = within;
    let model = request.model.as_str();
    if state.config.queue.max_wait.is_zero() {
        return Ok(unqueued(state, route, request, deadline, asked).await?);
    }
    let wait_until = Instant::now() + allowance;
    let lane = lane(state, route, request, pinned);
    // Nobody overtakes a waiter in the same line: with a line, go to its end at once (the
    // first question's rule, as in `admit`).
    let asked = match asked {
        Some(answer) => Some(answer),
        None => match first_question(state, route, request, pinned, within) {
            Some(until) => Some(ask(state, route, request, until).await),
            None => None,
        },
    };
    let mut first = None;
    if let Some(answer) = asked {
        match answer {
            Try::Admitted(r) => {
                return Ok(Admitted {
                    reservation: r,
                    waited: None,
                });
            }
            Try::Fail(e) => return Err(e.into()),
            Try::Wait(r) => first = Some(r),
        }
    } else if allowance.is_zero() {
        state.metrics.refused("no_wait");
        let last = state.queues.last_refusal(lane);
        return Err(refused_now(route, model, last, Why::NoWait).into());
    }
    let pace = pace(state, request);
    let ticket = match state.queues.join(lane, wait_until, claim, Some(pace)) {
        Ok(t) => t,
        Err(full) => return Err(queue_refusal(state, route, model, first, full).into()),
    };
    // The refusal that sent it here tells the line's head when to ask again; anyone else
    // learns that when its turn comes.
    let known = first.filter(|_| ticket.is_head());
    let outcome = wait_in_line(state, route, request, &ticket, known).await;
    let waited = ticket.waited();
    // Leaving the line hands its front to the next waiter, who asks the store at once.
    drop(ticket);
    state.metrics.queue_wait(waited);
    match outcome {
        Ok(r) => Ok(Admitted {
            reservation: r,
            waited: Some(waited),
        }),
        Err(error) => Err(NotAdmitted {
            error,
            waited: Some(waited),
        }),
    }
}

/// the moment the store said room frees; the others wait for their turn.
async fn wait_in_line(
    state: &Core,
    route: &Route,
    request: &Tiered,
    ticket: &Ticket<'_>,
    mut known: Option<Refusal>,
) -> Result<Reservation, ApiError> {
    let model = request.model.as_str();
    loop {
        match ticket.turn().await {
            Turn::Head => {}
            Turn::Hopeless(last) => {
                state.metrics.refused("queue_predicted");
                return Err(refused_now(route, model, last, Why::OutOfTime));
            }
            Turn::TimedOut(last) => {
                state.metrics.refused("queue_timeout");
                return Err(refused_now(route, model, last, Why::OutOfTime));
            }
        }
        let answer = match known.take() {
            Some(r) => Try::Wait(r),
            None => ask(state, route, request, Until::Keep(ticket.deadline())).await,
        };
        match answer {
            Try::Admitted(r) => {
                ticket.admitted();
                return Ok(r);
            }
            Try::Fail(e) => return Err(e),
            Try::Wait(refusal) => {
                if !ticket.expect(refusal) {
                    state.metrics.refused("queue_timeout");
                    return Err(refusal_error(route, model, refusal));
                }
                ticket.sleep_until(refusal.free_at).await;
            }
        }
    }
}

/// Admission with the queue off: refused at once for a limit; a cooldown that ends within
/// `upstream.max_wait_secs` (and the request's deadline) is slept through.
async fn unqueued(
    state: &Core,
    route: &Route,
    request: &Tiered,
    deadline: Instant,
    mut asked: Option<Try>,
) -> Result<Admitted, ApiError> {
    let wait_until = (Instant::now() + state.config.upstream.max_wait).min(deadline);
    loop {
        let answer = match asked.take() {
            Some(answer) => answer,
            None => ask(state, route, request, Until::Exactly(wait_until)).await,
        };
        match answer {
            Try::Admitted(r) => {
                return Ok(Admitted {
                    reservation: r,
                    waited: None,
                });
            }
            Try::Fail(e) => return Err(e),
            Try::Wait(r) if r.limit.is_none() => tokio::time::sleep_until(r.free_at).await,
            Try::Wait(r) => {
                state
                    .metrics
                    .refused(r.limit.map_or("cooldown", LimitKind::as_str));
                return Err(refusal_error(route, &request.model, r));
            }
        }
    }
}
