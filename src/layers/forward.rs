//! The innermost service: send a request built for Google (the pooled key already in it)
//! through the upstream client ([`crate::upstream::client`]), and hand back the answer's head
//! with its body unread.
//! Its errors say whether the request can have left ([`ForwardError`]).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use std::sync::Arc;
use tower::Service;

use crate::config::UpstreamConfig;
use crate::upstream::{self, HttpClient, ResponseBody};

/// One attempt, as the quota step sends it: the request built for Google (the pooled key in
/// it) and how long to wait for the answer's head.
#[derive(Debug)]
pub struct Outbound {
    pub request: http::Request<Full<Bytes>>,
    /// The key's position in the pool.
    pub key: usize,
    pub head_timeout: Duration,
}

/// Why no answer came back.
#[derive(Debug, thiserror::Error)]
#[error("{detail}")]
pub struct ForwardError {
    pub kind: ForwardErrorKind,
    /// A timeout ended it (connecting, or waiting for the head).
    pub timed_out: bool,
    /// The error and its causes (no URL, no header).
    pub detail: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardErrorKind {
    /// No connection (TCP, TLS, refused, connect timeout): the request never left.
    Unsent,
    /// The connection failed after the request was written.
    Lost,
    /// No answer head within [`Outbound::head_timeout`].
    Silent,
}

/// Sends requests to the Gemini API.
#[derive(Clone)]
pub struct Forward {
    client: Arc<HttpClient>,
}

impl Forward {
    /// A pooled client with the section's connect timeout (built once).
    pub fn new(cfg: &UpstreamConfig) -> Forward {
        Forward {
            client: Arc::new(upstream::build_client(cfg)),
        }
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
        let (req, head_timeout) = (out.request, out.head_timeout);
        let client = self.client.clone();
        Box::pin(async move {
            match tokio::time::timeout(head_timeout, client.request(req)).await {
                Ok(Ok(resp)) => Ok(resp),
                Ok(Err(e)) => Err(ForwardError {
                    kind: if e.unsent {
                        ForwardErrorKind::Unsent
                    } else if e.timed_out {
                        ForwardErrorKind::Silent
                    } else {
                        ForwardErrorKind::Lost
                    },
                    timed_out: e.timed_out,
                    detail: e.detail,
                }),
                Err(_) => Err(ForwardError {
                    kind: ForwardErrorKind::Silent,
                    timed_out: true,
                    detail: format!("no answer within {}s", head_timeout.as_secs()),
                }),
            }
        })
    }
}
