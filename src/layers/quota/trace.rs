//! The quota step's spans, children of the request's (trace export on only): the admission
//! (the store's answer, and the time in the queue as a span of its own), each upstream attempt
//! (its status, Google's verdict, why it was tried again; its `traceparent` sent to Google),
//! and the usage and cost the ledger's tally records, on the request's span.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use opentelemetry::trace::SpanKind;

use crate::error::ApiError;
use crate::ledger::{Tally, TokenUsage};
use crate::pool::PooledKey;
use crate::state::Core;
use crate::telemetry::span::{self, Attr, Child, RequestTrace, Value, attr};
use crate::upstream::Verdict;

/// The request's trace (trace export on).
pub(super) fn of(parts: &http::request::Parts) -> Option<RequestTrace> {
    // Export off: not even a look at the extensions.
    crate::telemetry::otel::installed()?;
    parts.extensions.get::<RequestTrace>().cloned()
}

/// The trace, when it records (sampled in): worth spans and attributes.
fn recording(trace: Option<&RequestTrace>) -> Option<&RequestTrace> {
    trace.filter(|t| t.is_recording())
}

/// The prompt on the request's span, only with `otel.record_content`.
pub(super) fn prompt(trace: Option<&RequestTrace>, body: &Bytes) {
    if let Some(t) = recording(trace)
        && crate::telemetry::otel::record_content()
    {
        t.set([Attr::new(attr::INPUT_MESSAGES, span::content(body))]);
    }
}

/// The admission's span: asking the store for room, waiting in the queue.
pub(super) fn admission(trace: Option<&RequestTrace>, state: &Core) -> Option<Child> {
    let mut s = recording(trace)?.child("gqp.admit", SpanKind::Internal, None);
    s.set(Attr::new(attr::STORE, state.store.backend()));
    Some(s)
}

/// The admission's outcome; a wait in the queue becomes a child span of its own, dated back.
pub(super) fn admitted(span: Option<Child>, waited: Option<Duration>, refused: Option<&ApiError>) {
    let Some(mut span) = span else { return };
    if let Some(w) = waited {
        span.set(Attr::new(attr::QUEUE_WAIT_MS, w.as_secs_f64() * 1000.0));
        let start = SystemTime::now().checked_sub(w);
        drop(span.child("gqp.queue.wait", SpanKind::Internal, start));
    }
    if let Some(e) = refused {
        span.fail(e.to_string());
    }
}

/// One upstream attempt's span; its trace context replaces the client's on the way out.
pub(super) fn attempt(
    trace: Option<&RequestTrace>,
    number: u32,
    key: &PooledKey,
    headers: &mut http::HeaderMap,
) -> Option<Child> {
    let trace = trace?;
    if !trace.is_recording() {
        trace.inject(headers);
        return None;
    }
    let mut s = trace.child("gqp.upstream.attempt", SpanKind::Client, None);
    s.set(Attr::new(attr::ATTEMPT, i64::from(number)));
    s.record(|r| r.set_shared(key.trace_attributes()));
    s.inject(headers);
    Some(s)
}

/// An attempt that got no answer.
pub(super) fn unanswered(span: &mut Option<Child>, detail: &str, retry: Option<&'static str>) {
    if let Some(s) = span.as_mut() {
        s.set(Attr::new(attr::ERROR_TYPE, "network"));
        if let Some(r) = retry {
            s.set(Attr::new(attr::RETRY_REASON, r));
        }
        s.fail(detail.to_string());
    }
}

/// An attempt Google answered: its status, and for an error its verdict and whether it was
/// tried again.
pub(super) fn answered(
    span: &mut Option<Child>,
    status: http::StatusCode,
    verdict: Option<&Verdict>,
    retry: Option<&'static str>,
) {
    let Some(s) = span.as_mut() else { return };
    s.set(Attr::new(attr::STATUS, i64::from(status.as_u16())));
    if let Some(v) = verdict {
        s.set(Attr::new(attr::VERDICT, verdict_name(v)));
        s.set(Attr::new(attr::ERROR_TYPE, Value::text(status.as_str())));
        s.fail(format!("answered {}", status.as_u16()));
    }
    if let Some(r) = retry {
        s.set(Attr::new(attr::RETRY_REASON, r));
    }
}

fn verdict_name(v: &Verdict) -> &'static str {
    match v {
        Verdict::Deliver => "deliver",
        Verdict::QuotaExhausted { .. } => "quota_exhausted",
        Verdict::RateLimited { .. } => "rate_limited",
        Verdict::SpendCapped { .. } => "spend_capped",
        Verdict::DeadKey { .. } => "dead_key",
        Verdict::Transient => "transient",
    }
}

/// The request's span learns the usage and cost its tally records.
pub(super) fn usage(trace: Option<&RequestTrace>, tally: Option<&mut Tally>) {
    let (Some(trace), Some(tally)) = (recording(trace), tally) else {
        return;
    };
    let trace = trace.clone();
    tally.on_record(Box::new(move |u: &TokenUsage, nano: u64| {
        trace.set([
            Attr::new(attr::INPUT_TOKENS, u.input as i64),
            Attr::new(attr::OUTPUT_TOKENS, (u.output + u.thinking) as i64),
            Attr::new(attr::REASONING_TOKENS, u.thinking as i64),
            Attr::new(attr::CACHED_TOKENS, u.cached as i64),
            Attr::new(attr::COST_USD, nano as f64 / 1e9),
        ]);
    }));
}
