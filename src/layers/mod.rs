//! The Gemini surface as a tower stack, outermost first: [`authenticate`] (who calls) ->
//! [`estimate`] (route, the body read once, its tokens, the key a resource belongs to) ->
//! [`cache`] (answer a repeated request from the response cache, or copy its answer) ->
//! [`quota`] (admit on a key, read Google's answer, react, retry by the [`retry`] table) ->
//! [`forward`] (the upstream client: HTTP/2 over as many connections as Google's stream cap
//! needs, or HTTP/1.1's pool). Each step passes what it learned inward as a
//! typed request extension ([`estimate::Estimated`]; the forward step takes a
//! [`forward::Outbound`]) and outward on the
//! response for the request's log line, in one [`Outcome`] each step fills its part of.

pub mod authenticate;
pub mod cache;
pub mod estimate;
pub mod forward;
pub mod quota;
pub mod retry;

pub use authenticate::{Authenticate, AuthenticateLayer};
pub use cache::{CacheLayer, CacheStep};
pub use estimate::{EstimateLayer, EstimateStep, Estimated, Traced};
pub use forward::{Forward, ForwardError, ForwardErrorKind, Outbound};
pub use quota::{Quota, QuotaLayer, Served};

use crate::auth::Caller;
use crate::fallback::Fellback;

/// What the steps learned of a request, carried out on its response to the log line, the
/// request counter and the sign-in throttle: one extension that each step fills its part of.
/// (An extension of each part's own cost an allocation and a map insert each, every request.)
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// Who called, as [`authenticate`] found it (`None`: refused before a caller was known).
    pub caller: Option<Caller>,
    /// The model and the estimate, from [`estimate`].
    pub traced: Option<Traced>,
    /// What [`quota`] did (`None`: the request never reached it).
    pub served: Option<Served>,
    /// The fallback model that served the request, if one did.
    pub fell: Option<Fellback>,
}

impl Outcome {
    /// A response's outcome, as far as the steps filled it.
    pub fn of<B>(resp: &http::Response<B>) -> Option<&Outcome> {
        resp.extensions().get()
    }

    /// A response's outcome, to fill a part of (made empty at the first step that fills one).
    pub fn on<B>(resp: &mut http::Response<B>) -> &mut Outcome {
        resp.extensions_mut().get_or_insert_default()
    }
}
