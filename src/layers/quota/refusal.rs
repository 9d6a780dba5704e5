//! Admission's refusals: the 429 (or 503) a request gets when no project has room for it,
//! worded for the limit, the queue's bound or the cooldown that kept it out.

use std::time::Duration;

use tokio::time::Instant;

use crate::error::{ApiError, LimitKind};
use crate::quota::queue::{Bound, Full, Refusal};
use crate::route::{QuotaFamily, Route};
use crate::state::Core;
/// The 429 for a request the queue would not take, by the bound that kept it out.
pub(super) fn queue_refusal(
    state: &Core,
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
/// The 429 for a refusal: Google's quota error for a limit, the pool's for cooldowns.
pub(super) fn refusal_error(route: &Route, model: &str, r: Refusal) -> ApiError {
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
pub(super) enum Why {
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
pub(super) fn refused_now(route: &Route, model: &str, last: Option<Refusal>, why: Why) -> ApiError {
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

/// Whether admission's error says the pool has no room for the model (a limit reached in every
/// project, or every key cooling down): what a fallback model may cure, unlike the client's
/// own limits or a request no project could take.
pub(super) fn is_pool_refusal(e: &ApiError) -> bool {
    matches!(
        e,
        ApiError::QuotaExceeded { .. } | ApiError::PoolExhausted { .. }
    )
}
