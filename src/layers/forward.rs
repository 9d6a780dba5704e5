//! The innermost service: send a request built for Google (the pooled key already in it)
//! through the upstream client ([`crate::upstream::client`]), and hand back the answer's head
//! with its body unread. Its errors say whether the request can have left ([`ForwardError`]);
//! how long to wait for the head is the quota step's to bound.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::Full;
use tower::Service;

use crate::config::UpstreamConfig;
use crate::upstream::{self, HttpClient, ResponseBody};
pub use crate::upstream::{ForwardError, ForwardErrorKind};

/// One attempt, as the quota step sends it: the request built for Google (the pooled key in
/// it).
#[derive(Debug)]
pub struct Outbound {
    pub request: http::Request<Full<Bytes>>,
    /// The key's position in the pool.
    pub key: usize,
    /// The client of the backend it goes to, when not the Gemini API's (a Vertex entry's).
    pub via: Option<Arc<HttpClient>>,
}

/// Sends requests to the Gemini API.
#[derive(Clone)]
pub struct Forward {
    client: Arc<HttpClient>,
}

impl Forward {
    /// An upstream client with the section's settings (built once; connections are pooled).
    pub fn new(cfg: &UpstreamConfig) -> Forward {
        Forward {
            client: Arc::new(upstream::build_client(cfg)),
        }
    }

    /// Through `client` (a generation's, shared with the one before when `[upstream]` did not
    /// change).
    pub fn with_client(client: Arc<HttpClient>) -> Forward {
        Forward { client }
    }
}

impl Service<Outbound> for Forward {
    type Response = http::Response<ResponseBody>;
    type Error = ForwardError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, ForwardError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), ForwardError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, out: Outbound) -> Self::Future {
        let client = out.via.unwrap_or_else(|| self.client.clone());
        crate::boxed::pinned(|| client.request(out.request))
    }
}
