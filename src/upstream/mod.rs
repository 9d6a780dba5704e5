//! The upstream side: the HTTP client to Google ([`client`]), the request it sends and the
//! answer's headers ([`request`]), and what Google's error answers mean ([`verdict`]).

pub mod client;
pub mod request;
pub mod verdict;

pub use client::{HttpClient, Timed, build_client, describe_error, is_timeout};
pub use request::{
    KeyHeaders, Upstream, build_request, response_headers, strip_credentials_from_query,
};
pub use verdict::{Verdict, classify, max_hold_ms, parse_duration_ms};
