//! Admission: a key whose project has room for the request, waiting in its line of the queue
//! (`quota::queue`) for room that frees within the request's allowance, or, for a call that
//! spends nothing, the next usable key.

use std::time::Duration;

use tokio::time::Instant;

use super::client;
use crate::error::{ApiError, LimitKind};
use crate::estimate::Estimate;
use crate::quota::queue::{self, Bound, Claim, Full, Lane, Pace, Refusal, Ticket, Turn};
use crate::quota::{AdmitOutcome, AdmitRequest, ClientAdmit, Reservation};
use crate::route::{QuotaFamily, Route};
use crate::state::AppState;

/// How long this request may wait for quota: the configured `queue.max_wait_secs`, or its
/// client's `max_wait_secs` when set (never longer), shortened (never lengthened) by the
/// request's `x-gemini-max-wait: SECONDS`; a bad value is a 400.
pub(super) fn allowance(
    state: &AppState,
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

/// The admission request on the backend `pool.order` puts first, and the one it spills over
/// to when the first has no room (asked at once, before any wait).
pub(super) struct Tiered {
    pub(super) first: AdmitRequest,
    pub(super) spill: Option<AdmitRequest>,
}

impl std::ops::Deref for Tiered {
    type Target = AdmitRequest;

    fn deref(&self) -> &AdmitRequest {
        &self.first
    }
}

/// Of two refusals, the one whose room frees first; an admission wins, as does the first
/// answer when the second is an error (or a client's own limit, which the first would have
/// named).
fn sooner(
    first: Result<AdmitOutcome, crate::quota::StoreError>,
    second: Result<AdmitOutcome, crate::quota::StoreError>,
) -> Result<AdmitOutcome, crate::quota::StoreError> {
    let wait = |o: &AdmitOutcome| match o {
        AdmitOutcome::Refused { retry_after_ms, .. } => Some(*retry_after_ms),
        AdmitOutcome::Unavailable { retry_after_ms } => Some(retry_after_ms.unwrap_or(u64::MAX)),
        _ => None,
    };
    match (&first, &second) {
        (_, Ok(AdmitOutcome::Admitted(_))) => second,
        (Ok(a), Ok(b)) if wait(b).unwrap_or(u64::MAX) < wait(a).unwrap_or(u64::MAX) => second,
        _ => first,
    }
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

/// What one question to the store came to.
enum Try {
    Admitted(Reservation),
    /// No room now; a wait could help (a per-minute limit, or cooldowns ending at `free_at`).
    Wait(Refusal),
    /// No room, and waiting would not help in time: the answer.
    Fail(ApiError),
}

/// Until when room may free for a wait to be worth it (the boundary rule of
/// [`queue::BOUNDARY`]).
#[derive(Clone, Copy)]
enum Until {
    /// A request that has not waited yet: room must free before its allowance ends.
    Start(Instant),
    /// The head of a line, asking again: it keeps waiting up to the boundary's slack.
    Keep(Instant),
    /// The queue off: up to this moment exactly.
    Exactly(Instant),
}

impl Until {
    fn allows(self, free_at: Instant) -> bool {
        match self {
            Until::Start(d) => queue::starts_in_time(free_at, d),
            Until::Keep(d) => queue::still_in_time(free_at, d),
            Until::Exactly(d) => free_at <= d,
        }
    }
}

/// How fast `model`'s line can move at best: the candidate projects' per-minute limits
/// together, per window.
fn pace(state: &AppState, request: &Tiered) -> Pace {
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
#[allow(clippy::too_many_arguments)]
pub(super) async fn admit(
    state: &AppState,
    route: &Route,
    est: &Estimate,
    model: &str,
    pinned: Option<usize>,
    avoid: &[usize],
    deadline: Instant,
    allowance: Duration,
    claim: Claim,
    client: Option<ClientAdmit>,
    vertex_ok: bool,
) -> Result<Admitted, NotAdmitted> {
    let request = request(state, route, est, model, pinned, avoid, client, vertex_ok)?;
    // The allowance already holds the client's own `max_wait_secs` ([`allowance`]).
    let client_until = Instant::now() + allowance;
    let started = Instant::now();
    let mut paused = Duration::ZERO;
    loop {
        let mut outcome = pooled(
            state,
            route,
            &request,
            pinned,
            deadline + paused,
            allowance.saturating_sub(started.elapsed()),
            claim,
        )
        .await;
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

/// The admission question for `model`: the keys that may serve it (without those in `avoid`
/// while others remain, without those whose per-request cap or spend cap it would pass); a
/// request no project could ever take is a client error, not a wait.
#[allow(clippy::too_many_arguments)]
pub(super) fn request(
    state: &AppState,
    route: &Route,
    est: &Estimate,
    model: &str,
    pinned: Option<usize>,
    avoid: &[usize],
    client: Option<ClientAdmit>,
    vertex_ok: bool,
) -> Result<Tiered, ApiError> {
    let mut candidates = state.pool.candidates(model, route.family, pinned);
    if state.pool.has_vertex && !vertex_ok {
        candidates.retain(|c| state.pool.keys[c.index].vertex.is_none());
    }
    if candidates.len() > avoid.len() {
        candidates.retain(|c| !avoid.contains(&c.index));
    }
    // A request no project could ever take is a client error, not a wait; one over a
    // project's own per-request cap never lands on that project.
    let cap = |c: &crate::quota::Candidate| c.limits.max_request_tokens.min(c.limits.token_minute);
    let largest = candidates.iter().map(cap).max().unwrap_or(0);
    candidates.retain(|c| est.tokens <= cap(c));
    if let Some(capped) = state.spend.screen(&mut candidates, model, est.tokens) {
        state.metrics.refused("spend_cap");
        return Err(capped);
    }
    if candidates.is_empty() {
        state.metrics.refused("max_request_tokens");
        return Err(ApiError::InvalidArgument(format!(
            "The request is estimated at {} input tokens, over this proxy's limit of {} tokens per request for {}.",
            est.tokens, largest, model
        )));
    }
    let spill = if state.pool.has_vertex {
        state.pool.split_by_order(&mut candidates)
    } else {
        Vec::new()
    };
    let rotation = state.pool.next_turn();
    let ask = |candidates, client| AdmitRequest {
        model: model.to_string(),
        tokens: est.tokens,
        candidates,
        strategy: state.pool.strategy,
        rotation,
        client,
    };
    Ok(Tiered {
        spill: (!spill.is_empty()).then(|| ask(spill, client.clone())),
        first: ask(candidates, client),
    })
}

/// One admission through the pool's queue (or without it): [`admit`] without the client's
/// own waits.
async fn pooled(
    state: &AppState,
    route: &Route,
    request: &Tiered,
    pinned: Option<usize>,
    deadline: Instant,
    allowance: Duration,
    claim: Claim,
) -> Result<Admitted, NotAdmitted> {
    let model = request.model.as_str();
    if state.config.queue.max_wait.is_zero() {
        return Ok(unqueued(state, route, request, deadline).await?);
    }
    let wait_until = Instant::now() + allowance;
    // A pinned request can only be served by its key's project: it waits in that project's
    // line, behind nobody who could go elsewhere and in front of nobody.
    let lane = Lane {
        model,
        family: route.family,
        project: pinned.map(|i| &*state.pool.keys[i].project),
    };
    // Nobody overtakes a waiter in the same line: with a line, go to its end at once.
    let mut first = None;
    if !state.queues.busy(lane) {
        match ask(state, route, request, Until::Start(wait_until)).await {
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

/// The 429 for a request the queue would not take, by the bound that kept it out.
fn queue_refusal(
    state: &AppState,
    route: &Route,
    model: &str,
    first: Option<Refusal>,
    full: Full,
) -> ApiError {
    let last = first.or(full.last_refusal);
    let why = match full.bound {
        Bound::Line => Why::Full,
        Bound::Predicted { ahead, earliest } => {
            state.metrics.refused("queue_predicted");
            // Retry-After: the earliest this request could have been admitted.
            let r = last.map(|r| Refusal {
                free_at: earliest.unwrap_or(r.free_at).max(r.free_at),
                ..r
            });
            return refused_now(route, model, r, Why::Predicted(ahead));
        }
        Bound::Lines | Bound::Waiters | Bound::Bytes => Why::Crowded,
        Bound::ClientShare => Why::Share,
    };
    state.metrics.refused(match full.bound {
        Bound::ClientShare => "queue_client_share",
        Bound::Line => "queue_full",
        _ => "queue_bound",
    });
    refused_now(route, model, last, why)
}

/// In line until admitted, refused, or out of time. The head asks the store (the first time
/// with the refusal that sent the request here, if it is the line's first), then sleeps until
/// the moment the store said room frees; the others wait for their turn.
async fn wait_in_line(
    state: &AppState,
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

/// One question to the store. A refusal that a wait `until` cannot cure (the day limit, every
/// key disabled, the store down) is the answer at once.
async fn ask(state: &AppState, route: &Route, request: &Tiered, until: Until) -> Try {
    let model = request.model.as_str();
    let t0 = Instant::now();
    let mut outcome = state.store.admit(&request.first).await;
    state.metrics.store_admit(t0.elapsed(), outcome.is_ok());
    // No room on the first backend: the other, before any wait (`pool.order`).
    if let Some(spill) = &request.spill
        && matches!(
            outcome,
            Ok(AdmitOutcome::Refused { .. } | AdmitOutcome::Unavailable { .. })
        )
    {
        let t0 = Instant::now();
        let other = state.store.admit(spill).await;
        state.metrics.store_admit(t0.elapsed(), other.is_ok());
        outcome = sooner(outcome, other);
    }
    match outcome {
        Ok(AdmitOutcome::Admitted(r)) => Try::Admitted(r),
        Ok(AdmitOutcome::Refused {
            limit,
            limit_value,
            retry_after_ms,
        }) => {
            let refusal = Refusal {
                limit: Some(limit),
                limit_value,
                free_at: Instant::now() + Duration::from_millis(retry_after_ms),
            };
            if limit == LimitKind::RequestsPerDay || !until.allows(refusal.free_at) {
                state.metrics.refused(limit.as_str());
                Try::Fail(refusal_error(route, model, refusal))
            } else {
                Try::Wait(refusal)
            }
        }
        Ok(AdmitOutcome::ClientRefused {
            limit,
            retry_after_ms,
            ..
        }) => match &request.client {
            Some(c) => Try::Fail(client::refusal(c, model, limit, retry_after_ms)),
            None => Try::Fail(ApiError::Internal(
                "the store refused a client limit for a request without a client".into(),
            )),
        },
        Ok(AdmitOutcome::Unavailable {
            retry_after_ms: Some(ms),
        }) => {
            let refusal = Refusal {
                limit: None,
                limit_value: 0,
                free_at: Instant::now() + Duration::from_millis(ms),
            };
            if !until.allows(refusal.free_at) {
                state.metrics.refused("cooldown");
                Try::Fail(refusal_error(route, model, refusal))
            } else {
                Try::Wait(refusal)
            }
        }
        Ok(AdmitOutcome::Unavailable {
            retry_after_ms: None,
        }) => {
            state.metrics.refused("cooldown");
            Try::Fail(ApiError::Unavailable(
                "Every pooled key is disabled; an admin must re-enable one.".into(),
            ))
        }
        Err(e) => {
            tracing::warn!(error = %e, "admission failed: quota store unavailable");
            Try::Fail(ApiError::Unavailable(
                "The quota store is unavailable; retry shortly.".into(),
            ))
        }
    }
}

/// Admission with the queue off: refused at once for a limit; a cooldown that ends within
/// `upstream.max_wait_secs` (and the request's deadline) is slept through.
async fn unqueued(
    state: &AppState,
    route: &Route,
    request: &Tiered,
    deadline: Instant,
) -> Result<Admitted, ApiError> {
    let wait_until = (Instant::now() + state.config.upstream.max_wait).min(deadline);
    loop {
        match ask(state, route, request, Until::Exactly(wait_until)).await {
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

/// The 429 for a refusal: Google's quota error for a limit, the pool's for cooldowns.
fn refusal_error(route: &Route, model: &str, r: Refusal) -> ApiError {
    let retry_after_ms = r
        .free_at
        .saturating_duration_since(Instant::now())
        .as_millis()
        .max(1) as u64;
    match r.limit {
        Some(limit) => ApiError::QuotaExceeded {
            message: format!(
                "Quota exceeded for {}: {} limit of {} reached in every project of this proxy's pool. Retry in {}.",
                model,
                describe(limit, route.family),
                r.limit_value,
                crate::error::format_retry_delay(retry_after_ms)
            ),
            limit,
            model: model.to_string(),
            embed: route.family == QuotaFamily::Embed,
            limit_value: r.limit_value,
            retry_after_ms,
        },
        None => ApiError::PoolExhausted {
            message: format!(
                "Every key for {model} is cooling down after Gemini API rate limits. Retry in {}.",
                crate::error::format_retry_delay(retry_after_ms)
            ),
            retry_after_ms,
        },
    }
}

/// Why a request got no (more) wait.
#[derive(Clone, Copy)]
enum Why {
    /// Its model's line is at `queue.max_length`.
    Full,
    /// The queue as a whole is at a bound (`queue.max_waiters_total`,
    /// `queue.max_waiting_bytes`, or its number of lines).
    Crowded,
    /// Its client holds its share of the queue (`queue.max_client_share`).
    Share,
    /// It asked not to wait (`x-gemini-max-wait: 0`) and others are waiting.
    NoWait,
    /// This many wait before it, and the line cannot reach it within its allowance.
    Predicted(usize),
    /// Its allowance ran out in line, or will before its turn can come.
    OutOfTime,
}

/// The 429 for a request that is not let wait (longer): the line's last refusal when there is
/// one (its `Retry-After` says when room frees for the line's head).
fn refused_now(route: &Route, model: &str, last: Option<Refusal>, why: Why) -> ApiError {
    let r = last.unwrap_or(Refusal {
        limit: None,
        limit_value: 0,
        free_at: Instant::now() + Duration::from_secs(1),
    });
    let note = match why {
        Why::Full => " Too many requests are already waiting for it in this proxy's queue.".to_string(),
        Why::Crowded => " This proxy's queue is full (all models).".to_string(),
        Why::Share => " This client already holds its share of this proxy's queue.".to_string(),
        Why::NoWait => {
            " Other requests are waiting for it, and this one asked not to wait (x-gemini-max-wait).".to_string()
        }
        Why::Predicted(ahead) => format!(
            " {ahead} requests wait before this one in this proxy's queue, and it could not be admitted within its allowed wait (queue.max_wait_secs, x-gemini-max-wait)."
        ),
        Why::OutOfTime => {
            " The request waited in this proxy's queue as long as it was allowed to.".to_string()
        }
    };
    let mut e = refusal_error(route, model, r);
    if let ApiError::QuotaExceeded { message, .. } | ApiError::PoolExhausted { message, .. } =
        &mut e
    {
        // Without a refusal of its own, the pool's cooldown wording would be wrong.
        if last.is_none() {
            *message = format!("No room for {model} in this proxy's queue now.");
        }
        message.push_str(&note);
    }
    e
}

/// Whether admission's error is the proxy refusing for its own limits (429, or a request
/// over every limit), not a failure.
pub(super) fn is_refusal(e: &ApiError) -> bool {
    matches!(
        e,
        ApiError::QuotaExceeded { .. }
            | ApiError::PoolExhausted { .. }
            | ApiError::ClientLimited { .. }
            | ApiError::InvalidArgument(_)
    )
}

/// The limit's name in a refusal; an image or video call's "tokens" are images or seconds.
fn describe(limit: LimitKind, family: QuotaFamily) -> &'static str {
    match limit {
        LimitKind::RequestsPerMinute => "requests-per-minute",
        LimitKind::TokensPerMinute if family == QuotaFamily::Image => "images-per-minute",
        LimitKind::TokensPerMinute if family == QuotaFamily::Video => "video-seconds-per-minute",
        LimitKind::TokensPerMinute => "input-tokens-per-minute",
        LimitKind::RequestsPerDay => "requests-per-day",
    }
}

/// A key for a call that spends no quota: the pinned one, else the next usable in turn. Vertex
/// entries serve only what they can (`vertex_ok`), and only when `pool.order` does not put AI
/// Studio keys first; `vertex-first` tries them before the keys.
pub(super) fn free_key(
    state: &AppState,
    pinned: Option<usize>,
    avoid: &[usize],
    vertex_ok: bool,
) -> usize {
    if let Some(p) = pinned {
        return p;
    }
    let pool = &state.pool;
    let n = pool.keys.len();
    // What this replica saw die recently (the store stays the truth).
    let health = &pool.health;
    let start = pool.next_turn() as usize;
    let usable = |i: &usize| !avoid.contains(i) && !health.recently_dead(&pool.keys[*i].kid);
    if !pool.has_vertex {
        return (0..n)
            .map(|i| (start + i) % n)
            .find(usable)
            .unwrap_or(start % n);
    }
    let vertex = |i: &usize| pool.keys[*i].vertex.is_some();
    let turn = || (0..n).map(|i| (start + i) % n);
    let studio = turn().filter(|i| !vertex(i)).find(usable);
    // A pool of Vertex entries alone: the next usable entry (what it cannot serve is refused
    // before this).
    let ai_studio_only = || {
        studio
            .or_else(|| turn().find(|i| !vertex(i)))
            .or_else(|| turn().find(usable))
            .unwrap_or(start % n)
    };
    if !vertex_ok {
        return ai_studio_only();
    }
    match pool.order {
        crate::config::Order::AiStudioFirst => ai_studio_only(),
        crate::config::Order::VertexFirst => turn()
            .filter(vertex)
            .find(usable)
            .or(studio)
            .unwrap_or_else(ai_studio_only),
        crate::config::Order::Headroom => turn().find(usable).unwrap_or_else(ai_studio_only),
    }
}

/// Whether admission's error says the pool has no room for the model (a limit reached in every
/// project, or every key cooling down): what a fallback model may cure, unlike the client's
/// own limits or a request no project could take.
pub(super) fn is_pool_refusal(e: &ApiError) -> bool {
    matches!(
        e,
        ApiError::QuotaExceeded { .. } | ApiError::PoolExhausted { .. }
    )
}
