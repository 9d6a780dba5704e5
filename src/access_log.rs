//! The request log line: what is known at the answer's head (method, path, model, key, client,
//! status, attempts, wait), written once its body has ended or been dropped, with the time to
//! the head, to the first body byte and in total. A stream's head comes long before its last
//! byte, so a line at the head alone would say nothing of how long the answer took. With trace
//! export on, the request's server span takes the same facts and ends with the line.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use tokio::time::Instant;

use crate::auth::Caller;
use crate::layers::cache::{self, CACHE_HEADER};
use crate::state::AppState;
use crate::telemetry::scan::AnswerFacts;
use crate::telemetry::span::{self, Attr, Name, RequestTrace, Value, attr};

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
    /// The request's server span (trace export on), ended with the line.
    pub trace: Option<RequestTrace>,
    /// The log span carrying the request's `trace_id` (trace export on), entered while the
    /// body is read, so a line about the stream (cut, idle) carries it too.
    pub log_span: Option<tracing::Span>,
}

impl RequestLine {
    /// The answer with its body wrapped: the line is written when the body ends or is dropped.
    pub fn attach(self, resp: axum::response::Response) -> axum::response::Response {
        let (parts, body) = resp.into_parts();
        let facts = self.trace.as_ref().filter(|t| t.is_recording()).map(|t| {
            self.trace_head(t, &parts.headers);
            AnswerFacts::new(crate::telemetry::otel::record_content())
        });
        axum::response::Response::from_parts(
            parts,
            Body::new(LoggedBody {
                log_span: self.log_span.clone(),
                inner: body,
                line: Some(self),
                first_byte: None,
                complete: false,
                facts,
            }),
        )
    }

    /// What the answer's head tells the request's span: the GenAI call, who made it, which
    /// key and project served it, how long it waited, whether the cache answered.
    fn trace_head(&self, trace: &RequestTrace, headers: &http::HeaderMap) {
        let key = self.key.and_then(|i| self.state.pool.keys.get(i));
        let op = span::operation(self.uri.path());
        trace.record(|s| {
            s.set(Attr::new(attr::STATUS, i64::from(self.status)));
            s.set(Attr::new(attr::ATTEMPTS, i64::from(self.attempts)));
            s.set(Attr::new(attr::ESTIMATED_TOKENS, self.est_tokens as i64));
            s.set_preset(&span::GEMINI);
            if let Some(op) = op {
                let stream = self.uri.path().ends_with(":streamGenerateContent");
                s.set_preset(op.attributes(stream));
            }
            // The model's text made once, for its attribute and the span's name.
            let model = self.model.as_deref().map(Value::text);
            if let Some(m) = &model {
                s.set(Attr::new(attr::REQUEST_MODEL, m.clone()));
            }
            if let Some(c) = &self.caller {
                s.set(Attr::new(attr::CLIENT, Value::text(c.name())));
            }
            if let Some(k) = key {
                s.set_shared(k.trace_attributes());
            }
            if let Some(w) = self.waited {
                s.set(Attr::new(attr::QUEUE_WAIT_MS, millis(w)));
            }
            // The answer's few headers looked at in turn: cheaper than hashing the name.
            if let Some((_, c)) = headers.iter().find(|(k, _)| **k == CACHE_HEADER) {
                s.set(Attr::new(attr::CACHE, cache::verdict(c)));
            }
            // Named and failed under the same lock; a span of another call keeps the name it
            // started with, its method.
            if let Some(op) = op {
                s.name = match model {
                    Some(m) => Name::Pair(op.name(), m),
                    None => Name::from(op.name()),
                };
            }
            if self.status >= 500 {
                s.error = Some(format!("answered {}", self.status).into());
            }
        });
    }

    /// The span's end, at the body's: time to the first chunk, what the answer said of itself.
    fn trace_end(
        trace: &RequestTrace,
        facts: Option<AnswerFacts>,
        first_byte: Option<Duration>,
        complete: bool,
    ) {
        trace.record(|s| {
            s.set(Attr::new(attr::COMPLETE, complete));
            if !complete {
                s.error = Some("the answer did not reach its end".into());
            }
            if let Some(f) = first_byte {
                s.set(Attr::new(attr::TIME_TO_FIRST_CHUNK, f.as_secs_f64()));
            }
            if let Some(f) = facts {
                if !f.finish_reasons.is_empty() {
                    s.set(Attr::new(
                        attr::FINISH_REASONS,
                        span::strings(f.finish_reasons),
                    ));
                }
                if let Some(m) = f.model {
                    s.set(Attr::new(attr::RESPONSE_MODEL, m));
                }
                if let Some(c) = f.content {
                    s.set(Attr::new(attr::OUTPUT_MESSAGES, span::content(&c)));
                }
            }
        });
        trace.end();
    }

    /// `first_byte`: when the first body byte was handed on (`None`: the body had none).
    /// `complete`: the body reached its end (false: the client went away or it failed).
    fn write(self, first_byte: Option<Duration>, complete: bool, facts: Option<AnswerFacts>) {
        let total = self.started.elapsed();
        // The id itself, formatted only if the line is written (export on, `RUST_LOG=warn`:
        // never).
        let trace_id = self.trace.as_ref().map(|t| {
            Self::trace_end(t, facts, first_byte, complete);
            t.trace_id()
        });
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
            // Only with trace export on (an absent value writes no field).
            trace_id = trace_id.map(tracing::field::display),
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
    /// A sampled request's answer, read as it passes for its span.
    facts: Option<AnswerFacts>,
    log_span: Option<tracing::Span>,
}

impl LoggedBody {
    fn finish(&mut self) {
        if let Some(line) = self.line.take() {
            line.write(self.first_byte, self.complete, self.facts.take());
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
        let log_span = this.log_span.clone();
        let _entered = log_span.as_ref().map(tracing::Span::enter);
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if this.first_byte.is_none()
                    && frame.data_ref().is_some_and(|d| !d.is_empty())
                    && let Some(line) = &this.line
                {
                    this.first_byte = Some(line.started.elapsed());
                }
                let end = this.inner.is_end_stream();
                if let (Some(f), Some(d)) = (this.facts.as_mut(), frame.data_ref()) {
                    if end {
                        f.feed_last(d);
                    } else {
                        f.feed(d);
                    }
                }
                if end {
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
