//! Admission: a key whose project has room for the request (waiting for a hold that ends within
//! `upstream.max_wait_secs`), or, for a call that spends nothing, the next usable key.

use std::time::Duration;

use tokio::time::Instant;

use crate::error::{ApiError, LimitKind};
use crate::estimate::Estimate;
use crate::quota::{AdmitOutcome, AdmitRequest, Reservation};
use crate::route::{QuotaFamily, Route};
use crate::state::AppState;

/// Admit on a key with room, waiting for a cooldown that ends within `max_wait`.
pub(super) async fn admit(
    state: &AppState,
    route: &Route,
    est: &Estimate,
    model: &str,
    pinned: Option<usize>,
    avoid: &[usize],
    deadline: Instant,
) -> Result<Reservation, ApiError> {
    let cfg = &state.config.upstream;
    let mut candidates = state.pool.candidates(model, route.family, pinned);
    if candidates.len() > avoid.len() {
        candidates.retain(|c| !avoid.contains(&c.index));
    }
    // A request no project could ever take is a client error, not a wait.
    let largest = candidates
        .iter()
        .map(|c| c.limits.max_request_tokens.min(c.limits.token_minute))
        .max()
        .unwrap_or(0);
    if est.tokens > largest {
        state.metrics.refused("max_request_tokens");
        return Err(ApiError::InvalidArgument(format!(
            "The request is estimated at {} input tokens, over this proxy's limit of {} tokens per request for {}.",
            est.tokens, largest, model
        )));
    }
    let request = AdmitRequest {
        model: model.to_string(),
        tokens: est.tokens,
        candidates,
        strategy: state.pool.strategy,
        rotation: state.pool.next_turn(),
    };
    let wait_until = (Instant::now() + cfg.max_wait).min(deadline);
    loop {
        let t0 = Instant::now();
        let outcome = state.store.admit(&request).await;
        state.metrics.store_admit(t0.elapsed(), outcome.is_ok());
        match outcome {
            Ok(AdmitOutcome::Admitted(r)) => return Ok(r),
            Ok(AdmitOutcome::Refused {
                limit,
                limit_value,
                retry_after_ms,
            }) => {
                state.metrics.refused(limit.as_str());
                return Err(ApiError::QuotaExceeded {
                    message: format!(
                        "Quota exceeded for {}: {} limit of {} reached in every project of this proxy's pool. Retry in {}.",
                        model,
                        describe(limit),
                        limit_value,
                        crate::error::format_retry_delay(retry_after_ms)
                    ),
                    limit,
                    model: model.to_string(),
                    embed: route.family == QuotaFamily::Embed,
                    limit_value,
                    retry_after_ms,
                });
            }
            Ok(AdmitOutcome::Unavailable { retry_after_ms }) => {
                let wake = retry_after_ms.map(|ms| Instant::now() + Duration::from_millis(ms));
                match wake {
                    Some(w) if w <= wait_until => {
                        tokio::time::sleep_until(w).await;
                        continue;
                    }
                    _ => {
                        state.metrics.refused("cooldown");
                        return Err(match retry_after_ms {
                            Some(ms) => ApiError::PoolExhausted {
                                message: format!(
                                    "Every key for {model} is cooling down after Gemini API rate limits. Retry in {}.",
                                    crate::error::format_retry_delay(ms)
                                ),
                                retry_after_ms: ms,
                            },
                            None => ApiError::Unavailable(
                                "Every pooled key is disabled; an admin must re-enable one.".into(),
                            ),
                        });
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "admission failed: quota store unavailable");
                return Err(ApiError::Unavailable(
                    "The quota store is unavailable; retry shortly.".into(),
                ));
            }
        }
    }
}

/// Whether admission's error is the proxy refusing for its own limits (429, or a request
/// over every limit), not a failure.
pub(super) fn is_refusal(e: &ApiError) -> bool {
    matches!(
        e,
        ApiError::QuotaExceeded { .. }
            | ApiError::PoolExhausted { .. }
            | ApiError::InvalidArgument(_)
    )
}

fn describe(limit: LimitKind) -> &'static str {
    match limit {
        LimitKind::RequestsPerMinute => "requests-per-minute",
        LimitKind::TokensPerMinute => "input-tokens-per-minute",
        LimitKind::RequestsPerDay => "requests-per-day",
    }
}

/// A key for a call that spends no quota: the pinned one, else the next usable in turn.
pub(super) fn free_key(state: &AppState, pinned: Option<usize>, avoid: &[usize]) -> usize {
    if let Some(p) = pinned {
        return p;
    }
    let n = state.pool.keys.len();
    // What this replica saw die recently (the store stays the truth).
    let disabled = state.pool.health.recently_dead();
    let start = state.pool.next_turn() as usize;
    (0..n)
        .map(|i| (start + i) % n)
        .find(|i| !avoid.contains(i) && !disabled.contains(i))
        .unwrap_or(start % n)
}
