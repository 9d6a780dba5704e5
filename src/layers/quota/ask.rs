//! One question to the store for a request's admission, on the backend `pool.order` puts
//! first and, without room there, the other; and what its answer means for a request that may
//! wait (`Until`).

use std::time::Duration;

use tokio::time::Instant;

use super::client;
use super::question::Tiered;
use super::refusal::refusal_error;
use crate::error::{ApiError, LimitKind};
use crate::quota::queue::{self, Refusal};
use crate::quota::{AdmitOutcome, Reservation};
use crate::route::Route;
use crate::state::Core;

/// What one question to the store came to.
pub(super) enum Try {
    Admitted(Reservation),
    /// No room now; a wait could help (a per-minute limit, or cooldowns ending at `free_at`).
    Wait(Refusal),
    /// No room, and waiting would not help in time: the answer.
    Fail(ApiError),
}

/// Until when room may free for a wait to be worth it (the boundary rule of
/// [`queue::BOUNDARY`]).
#[derive(Clone, Copy)]
pub(super) enum Until {
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

/// One question to the store. A refusal that a wait `until` cannot cure (the day limit, every
/// key disabled, the store down) is the answer at once.
pub(super) async fn ask(state: &Core, route: &Route, request: &Tiered, until: Until) -> Try {
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
