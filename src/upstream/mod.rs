//! The upstream side: the HTTP client to Google ([`client`], over [`connect`] and the pools of
//! [`h1pool`] and [`h2pool`], whose answers' [`body`] holds what it took of them), the request
//! it sends and the answer's headers ([`request`]), and what Google's error answers mean
//! ([`verdict`]); Vertex AI entries, the other backend ([`vertex`]).

pub mod body;
pub mod client;
pub mod connect;
pub mod h1pool;
pub mod h2pool;
pub mod request;
pub mod verdict;
pub mod vertex;

pub use body::ResponseBody;
pub use client::{ForwardError, ForwardErrorKind, HttpClient, build_client};
pub use connect::{BoxError, Timed, describe_error, is_timeout};
pub use request::{
    KeyHeaders, Outgoing, Upstream, build_request, build_request_from, response_headers,
    strip_credentials_from_query, strip_response_headers,
};
pub use verdict::{Verdict, classify, max_hold_ms, parse_duration_ms};
