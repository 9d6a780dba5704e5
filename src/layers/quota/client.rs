//! A client's own limits at admission: the models it may call (403 before any quota is spent),
//! its part of the store's admission (its limits, periods and the request's estimated cost),
//! its 429 when it is over one of them, and whether it waits for that limit instead (its own
//! sleep, outside the pool's queue line, when the wait ends within its allowance).

use std::time::Duration;

use tokio::time::Instant;

use crate::auth::Caller;
use crate::body::Pricer;
use crate::error::ApiError;
use crate::estimate::Estimate;
use crate::ledger::TokenUsage;
use crate::quota::client::{ClientAdmit, ClientLimit, ClientPeriod};
use crate::route::{QuotaFamily, Route};
use crate::state::Core;

/// Output tokens a request is assumed to produce, for its budget reservation, when its body
/// does not bound them (`generationConfig.maxOutputTokens`).
pub const DEFAULT_OUTPUT_TOKENS: u64 = 2_048;

/// How long a concurrency slot outlives `upstream.request_timeout` before it frees itself
/// (its replica died before settling).
const LEASE_MARGIN: Duration = Duration::from_secs(30);

/// 403 when the client's `models` does not allow `model`.
pub(super) fn check_model(state: &Core, caller: &Caller, model: &str) -> Result<(), ApiError> {
    let Some(c) = caller.client() else {
        return Ok(());
    };
    if c.limits.allows_model(model) {
        return Ok(());
    }
    state.clients.note_refusal(&c.name, "models");
    state.metrics.client_refused(&c.name, "models");
    let shown: String = model.chars().take(128).collect();
    Err(ApiError::PermissionDenied(format!(
        "Client {:?} may not call model {shown:?}: it is not in the client's models ([[auth.clients]] models).",
        &*c.name
    )))
}

/// The client's part of the admission, when it has limits the store counts.
pub(super) fn part(
    state: &Core,
    caller: &Caller,
    route: &Route,
    est: &Estimate,
    model: &str,
) -> Option<ClientAdmit> {
    let client = caller.client()?;
    let l = &client.limits;
    if !l.counted() {
        return None;
    }
    let now = chrono::Utc::now().timestamp_millis();
    let period = ClientPeriod::at(l.tz(state.config.limits.timezone), now);
    let budgets = l.daily_budget_usd.is_some() || l.monthly_budget_usd.is_some();
    let cost_micros = if budgets {
        state
            .ledger
            .list_cost_micros(model, &estimated_usage(route.family, est))
    } else {
        0
    };
    let lease = state.config.upstream.request_timeout + LEASE_MARGIN;
    Some(ClientAdmit {
        name: client.name.clone(),
        caps: l.caps(),
        period,
        cost_micros,
        lease_ms: lease.as_millis() as u64,
    })
}

/// What a request is reserved as against its client's budgets: its input estimate, and the
/// output its body allows (else [`DEFAULT_OUTPUT_TOKENS`]); an image or video call's count.
fn estimated_usage(family: QuotaFamily, est: &Estimate) -> TokenUsage {
    match family {
        QuotaFamily::Image => TokenUsage {
            images: est.tokens,
            ..TokenUsage::default()
        },
        QuotaFamily::Video => TokenUsage {
            video_seconds: est.tokens,
            ..TokenUsage::default()
        },
        QuotaFamily::Embed => TokenUsage {
            input: est.tokens,
            ..TokenUsage::default()
        },
        _ => TokenUsage {
            input: est.tokens,
            output: est.max_output.unwrap_or(DEFAULT_OUTPUT_TOKENS),
            ..TokenUsage::default()
        },
    }
}

/// Prices a settled answer for its client's budgets at the prices of the backend that served it
/// (`vertex`: a Vertex AI entry's; its estimate was priced at AI Studio's, before the key was known).
pub(super) fn pricer(state: &Core, model: &str, vertex: bool) -> Pricer {
    let ledger = state.ledger.clone();
    let model = model.to_string();
    Box::new(move |u| ledger.list_cost_served(vertex, &model, u))
}

/// The 429 for a client over its own `limit`.
pub(super) fn refusal(
    c: &ClientAdmit,
    model: &str,
    limit: ClientLimit,
    retry_after_ms: u64,
) -> ApiError {
    let limit_value = c.limit_value(limit);
    let what = match limit {
        ClientLimit::Rpm => format!("{limit_value} requests per minute"),
        ClientLimit::Tpm => format!("{limit_value} input tokens per minute"),
        ClientLimit::Rpd => format!("{limit_value} requests per day"),
        ClientLimit::Concurrent => format!("{limit_value} requests at once"),
        ClientLimit::DailyBudget => format!("a daily budget of {limit_value} USD"),
        ClientLimit::MonthlyBudget => format!("a monthly budget of {limit_value} USD"),
    };
    ApiError::ClientLimited {
        message: format!(
            "Client {:?} is over its own limit ({}: {what}) for {model}. Retry in {}.",
            &*c.name,
            limit.as_str(),
            crate::error::format_retry_delay(retry_after_ms)
        ),
        client: c.name.to_string(),
        limit,
        limit_value,
        retry_after_ms,
    }
}

/// For a client refusal: the moment to ask again when it frees by `until`; else `None` (the
/// refusal is the answer), noted for the client's alerts and metrics.
pub(super) fn wait_for(state: &Core, error: &ApiError, until: Instant) -> Option<Instant> {
    let ApiError::ClientLimited {
        client,
        limit,
        retry_after_ms,
        ..
    } = error
    else {
        return None;
    };
    let free_at = Instant::now() + Duration::from_millis(*retry_after_ms);
    if free_at <= until {
        return Some(free_at);
    }
    let name = state
        .clients
        .load()
        .by_name(client)
        .map(|c| c.name.clone())
        .unwrap_or_else(|| client.as_str().into());
    state.clients.note_refusal(&name, limit.as_str());
    state.metrics.client_refused(&name, limit.as_str());
    None
}
