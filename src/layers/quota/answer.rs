//! Google's answer as the quota layer handles it: read a small one to learn from it, pass it on
//! unchanged (the unread rest of a large one streamed after it), and the backoff between tries.

use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use http_body_util::BodyExt;
use tokio::time::Instant;

use crate::body::{AtEnd, ProxyBody};
use crate::config::UpstreamConfig;
use crate::error::ApiError;
use crate::ledger::UsageScanner;
use crate::quota::Settlement;
use crate::upstream;

/// An upstream answer read to learn something from it.
pub(super) enum Answer<B> {
    /// The whole body, within the limit.
    Whole(Bytes),
    /// Over the limit: what was read, and the rest still to come.
    Over(Bytes, B),
}

impl<B> Answer<B> {
    /// What was read (all of it, or its start).
    pub(super) fn head(&self) -> &[u8] {
        match self {
            Answer::Whole(b) | Answer::Over(b, _) => b,
        }
    }
}

impl<B> Answer<B>
where
    B: hyper::body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    /// Pass the answer on unchanged, the unread rest streamed after what was read; the
    /// settlement and tally (if any) close with the usage in it.
    pub(super) fn into_response(
        self,
        status: http::StatusCode,
        headers: http::HeaderMap,
        cfg: &UpstreamConfig,
        at_end: AtEnd,
    ) -> Response {
        let body = match self {
            Answer::Whole(bytes) => {
                if !at_end.is_empty() {
                    let mut at_end = at_end;
                    at_end.feed(&bytes);
                    at_end.close(UsageScanner::scan_all(&bytes));
                }
                Body::from(bytes)
            }
            Answer::Over(head, rest) => Body::new(
                ProxyBody::new(
                    rest,
                    cfg.stream_idle_timeout,
                    Some(Instant::now() + cfg.request_timeout),
                    at_end,
                )
                .with_prefix(head),
            ),
        };
        let mut out = Response::new(body);
        *out.status_mut() = status;
        *out.headers_mut() = headers;
        out
    }
}

/// Read an answer whole if it fits in `limit` bytes, within `timeout`; a larger one stops at
/// the first chunk over the limit and keeps the rest unread.
pub(super) async fn read_upto<B>(
    resp: http::Response<B>,
    limit: usize,
    timeout: Duration,
) -> Result<Answer<B>, ApiError>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let mut body = resp.into_body();
    let read = async {
        let mut out = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| {
                ApiError::BadGateway(format!(
                    "the Gemini API answer broke off: {}",
                    upstream::describe_error(&e)
                ))
            })?;
            let Ok(chunk) = frame.into_data() else {
                continue;
            };
            out.extend_from_slice(&chunk);
            if out.len() > limit {
                return Ok((false, out));
            }
        }
        Ok::<_, ApiError>((true, out))
    };
    let (whole, head) = match tokio::time::timeout(timeout, read).await {
        Ok(r) => r?,
        Err(_) => {
            return Err(ApiError::GatewayTimeout(format!(
                "the Gemini API answer did not finish within {}s",
                timeout.as_secs()
            )));
        }
    };
    Ok(if whole {
        Answer::Whole(Bytes::from(head))
    } else {
        Answer::Over(Bytes::from(head), body)
    })
}

/// An answer that may have been run upstream stays counted as admitted, estimate included
/// (dropping the settlement would refund the estimate).
pub(super) fn keep_counted(settlement: Option<Settlement>) {
    if let Some(s) = settlement {
        let estimate = s.reservation().map(|r| r.tokens);
        s.settle(estimate);
    }
}

/// Exponential backoff with full jitter (100 ms base, 2 s cap), never past the deadline.
pub(super) async fn backoff(attempt: u32, deadline: Instant) {
    let cap = 100u64.saturating_mul(1 << attempt.min(5)).min(2_000);
    let wait = Duration::from_millis(fastrand::u64(0..=cap));
    let until = (Instant::now() + wait).min(deadline);
    tokio::time::sleep_until(until).await;
}
