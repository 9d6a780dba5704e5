//! The request log line: what is known at the answer's head (method, path, model, key, client,
//! status, attempts, wait), written once its body has ended or been dropped, with the time to
//! the head, to the first body byte and in total. A stream's head comes long before its last
//! byte, so a line at the head alone would say nothing of how long the answer took.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use tokio::time::Instant;

use crate::auth::Caller;
use crate::state::AppState;

/// Milliseconds rounded to the microsecond: `0.459`, not `0.45876100000000003`.
pub fn millis(d: Duration) -> f64 {
    d.as_micros() as f64 / 1000.0
}

/// The fields of one request's line, taken at the answer's head.
pub struct RequestLine {
    pub state: Arc<AppState>,
    pub method: http::Method,
    pub uri: http::Uri,
    pub model: Option<String>,
    /// The model the request asked for, when a fallback model served it.
    pub asked_model: Option<String>,
    /// Pool index of the key that served.
    pub key: Option<usize>,
    pub caller: Option<Caller>,
    pub status: u16,
    pub attempts: u32,
    pub est_tokens: u64,
    pub waited: Option<Duration>,
    pub started: Instant,
    /// From the request's arrival to the answer's head.
    pub head: Duration,
}

impl RequestLine {
    /// The answer with its body wrapped: the line is written when the body ends or is dropped.
    pub fn attach(self, resp: axum::response::Response) -> axum::response::Response {
        let (parts, body) = resp.into_parts();
        axum::response::Response::from_parts(
            parts,
            Body::new(LoggedBody {
                inner: body,
                line: Some(self),
                first_byte: None,
                complete: false,
            }),
        )
    }

    /// `first_byte`: when the first body byte was handed on (`None`: the body had none).
    /// `complete`: the body reached its end (false: the client went away or it failed).
    fn write(self, first_byte: Option<Duration>, complete: bool) {
        let total = self.started.elapsed();
        let state = &self.state;
        let key = self.key.and_then(|i| state.pool.keys.get(i));
        // The caller's configured name, never its credential; `-` before authentication.
        let client = self.caller.as_ref().map_or("-", |c| c.name());
        tracing::info!(
            method = %self.method,
            path = self.uri.path(),
            model = self.model.as_deref().unwrap_or("-"),
            asked_model = self.asked_model.as_deref(),
            status = self.status,
            latency_ms = millis(self.head),
            first_byte_ms = millis(first_byte.unwrap_or(total)),
            total_ms = millis(total),
            complete,
            key = key.map_or("-", |k| k.masked.as_str()),
            client,
            attempts = self.attempts,
            est_tokens = self.est_tokens,
            waited_ms = self.waited.map_or(0, |w| w.as_millis() as u64),
            "request"
        );
    }
}

/// The answer's body, untouched, timing its first byte and its end.
struct LoggedBody {
    inner: Body,
    /// Taken when written (once).
    line: Option<RequestLine>,
    first_byte: Option<Duration>,
    complete: bool,
}

impl LoggedBody {
    fn finish(&mut self) {
        if let Some(line) = self.line.take() {
            line.write(self.first_byte, self.complete);
        }
    }
}

impl HttpBody for LoggedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if this.first_byte.is_none()
                    && frame.data_ref().is_some_and(|d| !d.is_empty())
                    && let Some(line) = &this.line
                {
                    this.first_byte = Some(line.started.elapsed());
                }
                if this.inner.is_end_stream() {
                    this.complete = true;
                    this.finish();
                }
            }
            Poll::Ready(None) => {
                this.complete = true;
                this.finish();
            }
            Poll::Ready(Some(Err(_))) => this.finish(),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for LoggedBody {
    /// An empty body hyper never polls, or a client that went away mid-stream: written here.
    fn drop(&mut self) {
        if self.inner.is_end_stream() {
            self.complete = true;
        }
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn milliseconds_are_rounded_to_the_microsecond() {
        assert_eq!(millis(Duration::from_nanos(458_761_000)), 458.761);
        assert_eq!(millis(Duration::from_nanos(458_761)), 0.458);
        assert_eq!(
            format!("{}", millis(Duration::from_nanos(458_761))),
            "0.458"
        );
        assert_eq!(millis(Duration::ZERO), 0.0);
    }
}
