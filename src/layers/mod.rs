//! The Gemini surface as a tower stack, outermost first: [`authenticate`] (who calls) ->
//! [`estimate`] (route, the body read once, its tokens, the key a resource belongs to) ->
//! [`cache`] (answer a repeated request from the response cache, or copy its answer) ->
//! [`quota`] (admit on a key, read Google's answer, react, retry by the [`retry`] table) ->
//! [`forward`] (the upstream client: HTTP/2 over as many connections as Google's stream cap
//! needs, or HTTP/1.1's pool). Each step passes what it learned inward as a
//! typed request extension ([`estimate::Estimated`]; the forward step takes a
//! [`forward::Outbound`]) and outward on the
//! response for the request's log line ([`estimate::Traced`], [`quota::Served`]).

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
