//! The admission question: what one admission asks the store for (`Want`), and the request
//! made of it (`Tiered`): the keys that may serve it, without those it must avoid or whose caps
//! it would pass, on the backend `pool.order` puts first and the one it spills over to.

use crate::error::ApiError;
use crate::estimate::Estimate;
use crate::quota::{AdmitRequest, ClientAdmit};
use crate::route::Route;
use crate::state::Core;

/// What one admission asks for: room for `model` on a key that may serve the request.
pub(super) struct Want<'a> {
    pub route: &'a Route,
    pub est: &'a Estimate,
    pub model: &'a str,
    /// The one key the request must go to (an upload's, a created resource's).
    pub pinned: Option<usize>,
    /// Keys that failed this request: left out while others remain.
    pub avoid: &'a [usize],
    /// The client's part of the admission (its own limits and budgets).
    pub client: Option<ClientAdmit>,
    /// Whether a Vertex entry may serve it.
    pub vertex_ok: bool,
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

/// The admission question for `model`: the keys that may serve it (without those in `avoid`
/// while others remain, without those whose per-request cap or spend cap it would pass); a
/// request no project could ever take is a client error, not a wait.
pub(super) fn request(state: &Core, want: Want<'_>) -> Result<Tiered, ApiError> {
    let Want {
        route,
        est,
        model,
        pinned,
        avoid,
        client,
        vertex_ok,
    } = want;
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
