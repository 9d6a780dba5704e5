//! What a finished trace is made of, as the proxy keeps it: plain structs filled on the request
//! path (no span objects, processors or contexts of the SDK), handed whole to the export queue
//! when the request's last span ends, and encoded to OTLP only in the export task.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::SystemTime;

use opentelemetry::trace::{SpanId, SpanKind, TraceId};

use super::attr::Key;

/// Attributes a span keeps at most (the SDK's default limit); more are counted as dropped.
pub const MAX_ATTRIBUTES: usize = 128;
/// Events a span keeps at most (the SDK's default limit).
pub const MAX_EVENTS: usize = 128;

/// One attribute: its name (one of [`super::attr`]'s) and its value. Not the API's `KeyValue`:
/// a static or shared string is not copied, a short one is held inline, nothing is allocated
/// for most of a request's attributes.
#[derive(Debug, Clone, PartialEq)]
pub struct Attr {
    pub key: &'static Key,
    pub value: Value,
}

impl Attr {
    #[inline]
    pub fn new(key: &'static Key, value: impl Into<Value>) -> Attr {
        Attr {
            key,
            value: value.into(),
        }
    }
}

/// An attribute's value (OTLP's `AnyValue`): a scalar, a string (however it is held) or a
/// list of strings.
#[derive(Clone, PartialEq)]
pub enum Value {
    Bool(bool),
    I64(i64),
    F64(f64),
    Static(&'static str),
    /// A string the proxy already keeps shared (a key's project).
    Shared(Arc<str>),
    /// A short string, copied in place.
    Inline(Inline),
    Owned(Box<str>),
    /// A list of strings (each of them a string `Value`).
    Strings(Box<[Value]>),
}

const _: () = assert!(std::mem::size_of::<Value>() == 24);

impl Value {
    /// `s` copied: inline when it fits, else in a box of its own.
    #[inline]
    pub fn text(s: &str) -> Value {
        match Inline::new(s) {
            Some(i) => Value::Inline(i),
            None => Value::Owned(s.into()),
        }
    }

    /// `bytes` as text, when they are UTF-8.
    #[inline]
    pub fn from_utf8(bytes: &[u8]) -> Option<Value> {
        std::str::from_utf8(bytes).ok().map(Value::text)
    }

    /// A string value's text (`None`: a scalar or a list).
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Static(s) => Some(s),
            Value::Shared(s) => Some(s),
            Value::Inline(s) => Some(s.as_str()),
            Value::Owned(s) => Some(s),
            _ => None,
        }
    }

    /// A string value's bytes, as they are encoded.
    #[inline]
    pub fn str_bytes(&self) -> Option<&[u8]> {
        match self {
            Value::Static(s) => Some(s.as_bytes()),
            Value::Shared(s) => Some(s.as_bytes()),
            Value::Inline(s) => Some(s.as_bytes()),
            Value::Owned(s) => Some(s.as_bytes()),
            _ => None,
        }
    }
}

impl std::fmt::Debug for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Value::Bool(b) => b.fmt(f),
            Value::I64(i) => i.fmt(f),
            Value::F64(x) => x.fmt(f),
            Value::Strings(v) => f.debug_list().entries(v.iter()).finish(),
            s => s.as_str().unwrap_or_default().fmt(f),
        }
    }
}

impl From<bool> for Value {
    #[inline]
    fn from(b: bool) -> Value {
        Value::Bool(b)
    }
}

impl From<i64> for Value {
    #[inline]
    fn from(i: i64) -> Value {
        Value::I64(i)
    }
}

impl From<f64> for Value {
    #[inline]
    fn from(x: f64) -> Value {
        Value::F64(x)
    }
}

impl From<&'static str> for Value {
    #[inline]
    fn from(s: &'static str) -> Value {
        Value::Static(s)
    }
}

impl From<Arc<str>> for Value {
    #[inline]
    fn from(s: Arc<str>) -> Value {
        Value::Shared(s)
    }
}

impl From<String> for Value {
    /// Kept in place when short (its buffer given back), else its buffer kept.
    fn from(s: String) -> Value {
        match Inline::new(&s) {
            Some(i) => Value::Inline(i),
            None => Value::Owned(s.into_boxed_str()),
        }
    }
}

impl From<Cow<'static, str>> for Value {
    #[inline]
    fn from(s: Cow<'static, str>) -> Value {
        match s {
            Cow::Borrowed(s) => Value::Static(s),
            Cow::Owned(s) => s.into(),
        }
    }
}

/// A string of at most [`Inline::CAP`] bytes held in place (a masked key, a model's or a
/// client's name, a finish reason).
#[derive(Clone, Copy)]
pub struct Inline {
    len: u8,
    bytes: [u8; Inline::CAP],
}

impl Inline {
    pub const CAP: usize = 22;

    #[inline]
    pub fn new(s: &str) -> Option<Inline> {
        (s.len() <= Inline::CAP).then(|| {
            let mut bytes = [0; Inline::CAP];
            bytes[..s.len()].copy_from_slice(s.as_bytes());
            Inline {
                len: s.len() as u8,
                bytes,
            }
        })
    }

    pub fn as_str(&self) -> &str {
        // Only ever made from a whole `&str`.
        std::str::from_utf8(self.as_bytes()).unwrap_or_default()
    }

    #[inline]
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    /// The bytes and what follows them (zeros): copied whole, cut to the length after.
    #[inline]
    pub fn padded(&self) -> &[u8; Inline::CAP] {
        &self.bytes
    }
}

impl PartialEq for Inline {
    fn eq(&self, other: &Inline) -> bool {
        self.as_str() == other.as_str()
    }
}

/// One request's spans (or a Live session's), sharing its trace id and trace state. Only
/// sampled traces are kept, so their flags are always "sampled".
#[derive(Debug)]
pub struct Finished {
    pub trace_id: TraceId,
    /// The client's `tracestate`, as it is sent on (empty: none).
    pub trace_state: Box<str>,
    /// The request's server span first, then its children in the order they started.
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
    pub name: Name,
    pub kind: SpanKind,
    pub start: SystemTime,
    pub end: SystemTime,
    pub attributes: Vec<Entry>,
    pub dropped_attributes: u32,
    pub events: Vec<Event>,
    pub dropped_events: u32,
    /// `None`: unset; `Some(why)`: an error.
    pub error: Option<Cow<'static, str>>,
}

/// One of a span's attributes, or several encoded once ([`Preset`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Entry {
    Attr(Attr),
    /// The same for the whole process (the provider's names).
    Static(&'static Preset),
    /// The same for as long as what it describes lives (a pooled key's masked form and project).
    Shared(Arc<Preset>),
}

impl Entry {
    /// How many attributes it holds.
    pub fn count(&self) -> usize {
        match self {
            Entry::Attr(_) => 1,
            Entry::Static(p) => p.count,
            Entry::Shared(p) => p.count,
        }
    }
}

/// Attributes whose values do not change, encoded once as the span attributes they are
/// (OTLP's `Span.attributes`, field 9, each `KeyValue` whole): a span takes them with one copy,
/// not an encoding each.
#[derive(Debug, PartialEq)]
pub struct Preset {
    wire: Box<[u8]>,
    count: usize,
}

impl Preset {
    pub fn new(attrs: &[Attr]) -> Preset {
        Preset {
            wire: super::otlp::span_attributes(attrs).into_boxed_slice(),
            count: attrs.len(),
        }
    }

    /// The attributes as encoded.
    pub fn wire(&self) -> &[u8] {
        &self.wire
    }
}

/// A span's name: as it is, or an operation and what it worked on (`generate_content
/// gemini-2.5-flash`, `live gemini-2.0-flash-live`) joined by a space only when encoded.
#[derive(Debug, Clone, PartialEq)]
pub enum Name {
    Text(Cow<'static, str>),
    Pair(&'static str, Value),
}

impl Name {
    /// Bytes of the name as it is encoded.
    pub fn len(&self) -> usize {
        match self {
            Name::Text(s) => s.len(),
            Name::Pair(op, of) => op.len() + 1 + of.str_bytes().map_or(0, <[u8]>::len),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl std::fmt::Display for Name {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Name::Text(s) => f.write_str(s),
            Name::Pair(op, of) => write!(f, "{op} {}", of.as_str().unwrap_or_default()),
        }
    }
}

impl From<Cow<'static, str>> for Name {
    fn from(s: Cow<'static, str>) -> Name {
        Name::Text(s)
    }
}

impl From<&'static str> for Name {
    fn from(s: &'static str) -> Name {
        Name::Text(Cow::Borrowed(s))
    }
}

/// A point in a span's time (a Live session's setup, `goAway`, close).
#[derive(Debug)]
pub struct Event {
    pub name: &'static str,
    pub at: SystemTime,
    pub attributes: Vec<Attr>,
}

impl SpanRecord {
    pub fn new(
        span_id: SpanId,
        parent: SpanId,
        name: impl Into<Name>,
        kind: SpanKind,
        start: SystemTime,
    ) -> SpanRecord {
        // What the proxy's spans take (a request's about 24, a child's 6), in one allocation.
        let room = if kind == SpanKind::Server { 32 } else { 8 };
        SpanRecord {
            span_id,
            parent,
            parent_remote: false,
            name: name.into(),
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

    /// Inlined into each caller (a request's span takes about 20): a call each cost more than
    /// the push.
    #[inline(always)]
    pub fn set(&mut self, kv: Attr) {
        self.add(Entry::Attr(kv));
    }

    /// Attributes encoded once.
    pub fn set_preset(&mut self, p: &'static Preset) {
        self.add(Entry::Static(p));
    }

    /// Attributes encoded once, shared.
    pub fn set_shared(&mut self, p: Arc<Preset>) {
        self.add(Entry::Shared(p));
    }

    /// Attributes set (a preset counts each of its own).
    #[cfg(test)]
    pub fn attribute_count(&self) -> usize {
        self.attributes.iter().map(Entry::count).sum()
    }

    #[inline(always)]
    fn add(&mut self, e: Entry) {
        // Entries, not attributes, are counted against the limit: the proxy's spans stay far
        // below it, a preset holds a few, and the count is not walked at each one.
        if self.attributes.len() < MAX_ATTRIBUTES {
            self.attributes.push(e);
        } else {
            self.dropped_attributes += e.count() as u32;
        }
    }

    pub fn event(&mut self, name: &'static str, attributes: Vec<Attr>) {
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
