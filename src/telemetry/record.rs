//! What a finished trace is made of, as the proxy keeps it: plain structs filled on the request
//! path (no span objects, processors or contexts of the SDK), handed whole to the export queue
//! when the request's last span ends, and encoded to OTLP only in the export task.

use std::borrow::Cow;
use std::time::SystemTime;

use opentelemetry::KeyValue;
use opentelemetry::trace::{SpanId, SpanKind, TraceId};

/// Attributes a span keeps at most (the SDK's default limit); more are counted as dropped.
pub const MAX_ATTRIBUTES: usize = 128;
/// Events a span keeps at most (the SDK's default limit).
pub const MAX_EVENTS: usize = 128;

/// One request's spans (or a Live session's), sharing its trace id and trace state. Only
/// sampled traces are kept, so their flags are always "sampled".
#[derive(Debug)]
pub struct Finished {
    pub trace_id: TraceId,
    /// The client's `tracestate`, as it is sent on (empty: none).
    pub trace_state: Box<str>,
    /// Children first, in the order they ended; the request's server span last.
    pub spans: Vec<SpanRecord>,
}

/// One span.
#[derive(Debug)]
pub struct SpanRecord {
    pub span_id: SpanId,
    /// `SpanId::INVALID`: a root span.
    pub parent: SpanId,
    /// The parent is the client's span (from its `traceparent`).
    pub parent_remote: bool,
    pub name: Cow<'static, str>,
    pub kind: SpanKind,
    pub start: SystemTime,
    pub end: SystemTime,
    pub attributes: Vec<KeyValue>,
    pub dropped_attributes: u32,
    pub events: Vec<Event>,
    pub dropped_events: u32,
    /// `None`: unset; `Some(why)`: an error.
    pub error: Option<Cow<'static, str>>,
}

/// A point in a span's time (a Live session's setup, `goAway`, close).
#[derive(Debug)]
pub struct Event {
    pub name: &'static str,
    pub at: SystemTime,
    pub attributes: Vec<KeyValue>,
}

impl SpanRecord {
    pub fn new(
        span_id: SpanId,
        parent: SpanId,
        name: Cow<'static, str>,
        kind: SpanKind,
        start: SystemTime,
    ) -> SpanRecord {
        // What the proxy's spans take (a request's about 24, a child's 6), in one allocation.
        let room = if kind == SpanKind::Server { 32 } else { 8 };
        SpanRecord {
            span_id,
            parent,
            parent_remote: false,
            name,
            kind,
            start,
            end: start,
            attributes: Vec::with_capacity(room),
            dropped_attributes: 0,
            events: Vec::new(),
            dropped_events: 0,
            error: None,
        }
    }

    pub fn set(&mut self, kv: KeyValue) {
        if self.attributes.len() < MAX_ATTRIBUTES {
            self.attributes.push(kv);
        } else {
            self.dropped_attributes += 1;
        }
    }

    pub fn event(&mut self, name: &'static str, attributes: Vec<KeyValue>) {
        if self.events.len() < MAX_EVENTS {
            self.events.push(Event {
                name,
                at: SystemTime::now(),
                attributes,
            });
        } else {
            self.dropped_events += 1;
        }
    }
}
