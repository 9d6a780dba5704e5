//! OTLP/HTTP protobuf export of finished traces, written straight from the proxy's span records
//! ([`super::record`]) into one buffer in the export task: no intermediate protocol structs, no
//! attribute key or value copied into a `String`, the resource and the scope encoded once. It replaced
//! opentelemetry-otlp's exporter, whose conversion and prost encoding (each nested message's
//! length computed again at every level) took more than half of what export cost a request
//! (callgrind, `docs/benchmarks.md`). The messages are those of `opentelemetry/proto/trace/v1`
//! (`ExportTraceServiceRequest`), checked against the protocol's own types in the tests.

use std::time::SystemTime;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Uri};
use opentelemetry::trace::SpanKind;
use opentelemetry::{Array, KeyValue, Value};
use opentelemetry_http::HttpClient;
use opentelemetry_sdk::Resource;

use super::export::OtlpHttp;
use super::record::{Finished, SpanRecord};

/// The W3C trace flags of every exported span: sampled.
const SAMPLED: u8 = 1;

/// The instrumentation scope's name (no version, no attributes).
const SCOPE: &str = "gemini-quota-proxy";

/// The exporter: one `POST` of a batch to the collector's traces URL.
pub struct Exporter {
    http: OtlpHttp,
    endpoint: Uri,
    headers: HeaderMap,
    /// The `Resource` message's body, encoded once.
    resource: Vec<u8>,
}

impl std::fmt::Debug for Exporter {
    /// Header values may be credentials: not shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exporter")
            .field("endpoint", &self.endpoint)
            .finish()
    }
}

impl Exporter {
    /// An exporter to `endpoint` (the traces URL) sending `headers` with every export.
    pub fn new(
        http: OtlpHttp,
        endpoint: &str,
        headers: &std::collections::HashMap<String, String>,
        resource: &Resource,
    ) -> Result<Exporter, String> {
        let endpoint: Uri = endpoint
            .parse()
            .map_err(|e| format!("the OTLP endpoint is not a URL: {e}"))?;
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            // Names only in the error: a value may be a credential.
            let name = HeaderName::from_bytes(k.as_bytes())
                .map_err(|_| format!("the OTLP header name {k:?} is not valid"))?;
            let value = HeaderValue::from_str(v)
                .map_err(|_| format!("the value of the OTLP header {k:?} is not valid"))?;
            map.insert(name, value);
        }
        Ok(Exporter {
            http,
            endpoint,
            headers: map,
            resource: encode_resource(resource),
        })
    }
}

impl Exporter {
    /// One `POST` of `batch`; an error says why it was not taken.
    pub async fn export(&self, batch: &[Finished]) -> Result<(), String> {
        let body = encode(&self.resource, batch);
        let mut req = http::Request::post(self.endpoint.clone())
            .header(http::header::CONTENT_TYPE, "application/x-protobuf")
            .body(Bytes::from(body))
            .map_err(|e| e.to_string())?;
        for (k, v) in &self.headers {
            req.headers_mut().insert(k, v.clone());
        }
        let resp = self.http.send_bytes(req).await.map_err(|e| e.to_string())?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(format!("the collector answered {}", resp.status()))
        }
    }
}

// Wire types.
const VARINT: u32 = 0;
const FIXED64: u32 = 1;
const LEN: u32 = 2;
const FIXED32: u32 = 5;

fn varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

fn key(buf: &mut Vec<u8>, field: u32, wire: u32) {
    varint(buf, u64::from(field << 3 | wire));
}

/// A length-delimited field whose body `f` writes: the body is written in place and its
/// length put in front of it afterwards (one move of the body, instead of sizing it first).
fn nested(buf: &mut Vec<u8>, field: u32, f: impl FnOnce(&mut Vec<u8>)) {
    nested_sized(buf, field, 1, f)
}

/// [`nested`] with room for a length of `room` bytes (1: under 128, 2: under 16 KiB) kept in
/// front of the body: a body whose length fits is not moved; one whose length is shorter is
/// moved back, one longer forward.
fn nested_sized(buf: &mut Vec<u8>, field: u32, room: usize, f: impl FnOnce(&mut Vec<u8>)) {
    key(buf, field, LEN);
    let at = buf.len();
    buf.extend_from_slice(&[0; 10][..room]);
    f(buf);
    let len = buf.len() - at - room;
    let (prefix, n) = varint_bytes(len as u64);
    match n.cmp(&room) {
        std::cmp::Ordering::Equal => {}
        std::cmp::Ordering::Less => {
            buf.copy_within(at + room.., at + n);
            buf.truncate(at + n + len);
        }
        std::cmp::Ordering::Greater => {
            buf.resize(at + n + len, 0);
            buf.copy_within(at + room..at + room + len, at + n);
        }
    }
    buf[at..at + n].copy_from_slice(&prefix[..n]);
}

/// A varint's bytes and how many there are.
fn varint_bytes(mut v: u64) -> ([u8; 10], usize) {
    let (mut out, mut n) = ([0u8; 10], 0);
    while v >= 0x80 {
        out[n] = (v as u8) | 0x80;
        v >>= 7;
        n += 1;
    }
    out[n] = v as u8;
    (out, n + 1)
}

fn bytes_field(buf: &mut Vec<u8>, field: u32, b: &[u8]) {
    key(buf, field, LEN);
    varint(buf, b.len() as u64);
    buf.extend_from_slice(b);
}

/// A string or bytes field, left out when empty (proto3's default).
fn opt_bytes(buf: &mut Vec<u8>, field: u32, b: &[u8]) {
    if !b.is_empty() {
        bytes_field(buf, field, b);
    }
}

fn opt_varint(buf: &mut Vec<u8>, field: u32, v: u64) {
    if v != 0 {
        key(buf, field, VARINT);
        varint(buf, v);
    }
}

fn fixed64(buf: &mut Vec<u8>, field: u32, v: u64) {
    key(buf, field, FIXED64);
    buf.extend_from_slice(&v.to_le_bytes());
}

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// `AnyValue`'s body (a oneof: the set member is always written).
fn any_value(buf: &mut Vec<u8>, v: &Value) {
    match v {
        Value::Bool(b) => {
            key(buf, 2, VARINT);
            varint(buf, u64::from(*b));
        }
        Value::I64(i) => {
            key(buf, 3, VARINT);
            varint(buf, *i as u64);
        }
        Value::F64(f) => fixed64(buf, 4, f.to_bits()),
        Value::String(s) => bytes_field(buf, 1, s.as_str().as_bytes()),
        Value::Array(a) => nested(buf, 5, |buf| array(buf, a)),
        // A value type added to the API later: its text, rather than nothing.
        other => bytes_field(buf, 1, other.as_str().as_bytes()),
    }
}

/// `ArrayValue`'s body.
fn array(buf: &mut Vec<u8>, a: &Array) {
    fn each<T>(buf: &mut Vec<u8>, items: &[T], f: impl Fn(&mut Vec<u8>, &T)) {
        for item in items {
            nested(buf, 1, |buf| f(buf, item));
        }
    }
    match a {
        Array::Bool(v) => each(buf, v, |buf, b| any_value(buf, &Value::Bool(*b))),
        Array::I64(v) => each(buf, v, |buf, i| any_value(buf, &Value::I64(*i))),
        Array::F64(v) => each(buf, v, |buf, f| any_value(buf, &Value::F64(*f))),
        Array::String(v) => each(buf, v, |buf, s| bytes_field(buf, 1, s.as_str().as_bytes())),
        _ => {}
    }
}

fn attributes(buf: &mut Vec<u8>, field: u32, attrs: &[KeyValue]) {
    for kv in attrs {
        attribute(buf, field, kv);
    }
}

/// Bytes of `v` as a varint.
fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

/// One `KeyValue` message. A scalar value's lengths are known before it is written: the
/// message goes out front to back, without a length put in front afterwards (most of what an
/// export costs is its attributes).
fn attribute(buf: &mut Vec<u8>, field: u32, kv: &KeyValue) {
    let any = match &kv.value {
        Value::Bool(_) => 2,
        Value::I64(i) => 1 + varint_len(*i as u64),
        Value::F64(_) => 9,
        Value::String(s) => 1 + varint_len(s.as_str().len() as u64) + s.as_str().len(),
        _ => {
            nested(buf, field, |buf| {
                opt_bytes(buf, 1, kv.key.as_str().as_bytes());
                nested(buf, 2, |buf| any_value(buf, &kv.value));
            });
            return;
        }
    };
    let name = kv.key.as_str().as_bytes();
    let named = if name.is_empty() {
        0
    } else {
        1 + varint_len(name.len() as u64) + name.len()
    };
    let body = named + 1 + varint_len(any as u64) + any;
    buf.reserve(body + 6);
    key(buf, field, LEN);
    varint(buf, body as u64);
    opt_bytes(buf, 1, name);
    key(buf, 2, LEN);
    varint(buf, any as u64);
    any_value(buf, &kv.value);
}

/// The `Resource` message's body.
fn encode_resource(resource: &Resource) -> Vec<u8> {
    let mut buf = Vec::new();
    for (k, v) in resource.iter() {
        nested(&mut buf, 1, |buf| {
            opt_bytes(buf, 1, k.as_str().as_bytes());
            nested(buf, 2, |buf| any_value(buf, v));
        });
    }
    buf
}

/// `flags`: the trace flags, and whether the parent is remote (with the bit saying it is
/// known), as the specification's `SpanFlags` give them.
fn flags(trace_flags: u8, parent_remote: bool) -> u32 {
    u32::from(trace_flags) | 0x100 | if parent_remote { 0x200 } else { 0 }
}

fn span(buf: &mut Vec<u8>, t: &Finished, s: &SpanRecord) {
    bytes_field(buf, 1, &t.trace_id.to_bytes());
    bytes_field(buf, 2, &s.span_id.to_bytes());
    opt_bytes(buf, 3, t.trace_state.as_bytes());
    if s.parent != opentelemetry::trace::SpanId::INVALID {
        bytes_field(buf, 4, &s.parent.to_bytes());
    }
    opt_bytes(buf, 5, s.name.as_bytes());
    let kind: u64 = match s.kind {
        SpanKind::Internal => 1,
        SpanKind::Server => 2,
        SpanKind::Client => 3,
        SpanKind::Producer => 4,
        SpanKind::Consumer => 5,
    };
    opt_varint(buf, 6, kind);
    fixed64(buf, 7, nanos(s.start));
    fixed64(buf, 8, nanos(s.end));
    attributes(buf, 9, &s.attributes);
    opt_varint(buf, 10, u64::from(s.dropped_attributes));
    for e in &s.events {
        nested(buf, 11, |buf| {
            fixed64(buf, 1, nanos(e.at));
            opt_bytes(buf, 2, e.name.as_bytes());
            attributes(buf, 3, &e.attributes);
        });
    }
    opt_varint(buf, 12, u64::from(s.dropped_events));
    nested(buf, 15, |buf| {
        if let Some(why) = &s.error {
            opt_bytes(buf, 2, why.as_bytes());
            opt_varint(buf, 3, 2);
        }
    });
    key(buf, 16, FIXED32);
    // Only sampled traces are exported.
    buf.extend_from_slice(&flags(SAMPLED, s.parent_remote).to_le_bytes());
}

/// An `ExportTraceServiceRequest` of `traces` under one resource (`resource`: its encoded
/// body) and the proxy's one instrumentation scope.
pub fn encode(resource: &[u8], traces: &[Finished]) -> Vec<u8> {
    let spans: usize = traces.iter().map(|t| t.spans.len()).sum();
    // About what a server span with its GenAI attributes takes; the two messages around all
    // the spans keep room for a length that size takes, so the batch is written in place.
    let size = 64 + resource.len() + spans * 640;
    let room = varint_bytes(size as u64).1;
    let mut buf = Vec::with_capacity(size);
    nested_sized(&mut buf, 1, room, |buf| {
        bytes_field(buf, 1, resource);
        if spans == 0 {
            return;
        }
        nested_sized(buf, 2, room, |buf| {
            nested(buf, 1, |buf| opt_bytes(buf, 1, SCOPE.as_bytes()));
            for t in traces {
                for s in &t.spans {
                    nested_sized(buf, 2, 2, |buf| span(buf, t, s));
                }
            }
        });
    });
    buf
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::record::Event;
    use opentelemetry::StringValue;
    use opentelemetry::trace::{SpanId, TraceId};
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
    use prost::Message;
    use std::time::Duration;

    fn record(name: &'static str, error: Option<&'static str>, attrs: Vec<KeyValue>) -> SpanRecord {
        let at = |n| SystemTime::UNIX_EPOCH + Duration::from_nanos(n);
        let mut s = SpanRecord::new(
            SpanId::from(0x1112_1314_1516_1718),
            SpanId::from(7),
            name.into(),
            SpanKind::Client,
            at(1_000),
        );
        s.end = at(2_000);
        s.parent_remote = true;
        s.attributes = attrs;
        s.dropped_attributes = 2;
        s.events.push(Event {
            name: "setup",
            at: at(1_500),
            attributes: vec![KeyValue::new("n", 1_i64)],
        });
        s.error = error.map(Into::into);
        s
    }

    fn data(spans: Vec<SpanRecord>) -> Finished {
        Finished {
            trace_id: TraceId::from(0x0102_0304_0506_0708_090a_0b0c_0d0e_0f10),
            trace_state: "vendor=abc".into(),
            spans,
        }
    }

    #[test]
    fn a_batch_decodes_with_the_protocols_own_types_field_for_field() {
        let long = "x".repeat(300);
        let spans = vec![data(vec![
            record(
                "generate_content gemini-2.5-flash",
                Some("answered 503"),
                vec![
                    KeyValue::new("gen_ai.request.model", "gemini-2.5-flash"),
                    KeyValue::new("http.response.status_code", -3_i64),
                    KeyValue::new("gqp.cost_usd", 0.25),
                    KeyValue::new("gqp.complete", true),
                    KeyValue::new("gen_ai.input.messages", long.clone()),
                    KeyValue::new(
                        "gen_ai.response.finish_reasons",
                        Value::Array(Array::String(vec![
                            StringValue::from("STOP"),
                            StringValue::from("MAX_TOKENS"),
                        ])),
                    ),
                ],
            ),
            record("gqp.admit", None, vec![]),
        ])];
        let resource = Resource::builder_empty().with_service_name("svc").build();
        let bytes = encode(&encode_resource(&resource), &spans);
        let req = ExportTraceServiceRequest::decode(bytes.as_slice()).unwrap();
        assert_eq!(req.resource_spans.len(), 1);
        let rs = &req.resource_spans[0];
        let res = rs.resource.as_ref().unwrap();
        assert_eq!(res.attributes[0].key, "service.name");
        assert_eq!(
            res.attributes[0].value.as_ref().unwrap().value,
            Some(Any::StringValue("svc".into()))
        );
        assert_eq!(rs.scope_spans.len(), 1, "one scope, one ScopeSpans");
        let ss = &rs.scope_spans[0];
        assert_eq!(ss.scope.as_ref().unwrap().name, "gemini-quota-proxy");
        assert_eq!(ss.spans.len(), 2);
        let s = &ss.spans[0];
        assert_eq!(s.trace_id, (1..=16).collect::<Vec<u8>>());
        assert_eq!(s.span_id, (0x11..=0x18).collect::<Vec<u8>>());
        assert_eq!(s.parent_span_id, vec![0, 0, 0, 0, 0, 0, 0, 7]);
        assert_eq!(s.trace_state, "vendor=abc");
        assert_eq!(s.flags, 0x301);
        assert_eq!(s.name, "generate_content gemini-2.5-flash");
        assert_eq!(s.kind, 3);
        assert_eq!(
            (s.start_time_unix_nano, s.end_time_unix_nano),
            (1_000, 2_000)
        );
        assert_eq!(s.dropped_attributes_count, 2);
        let value = |k: &str| {
            s.attributes
                .iter()
                .find(|a| a.key == k)
                .and_then(|a| a.value.clone())
                .and_then(|v| v.value)
        };
        assert_eq!(
            value("gen_ai.request.model"),
            Some(Any::StringValue("gemini-2.5-flash".into()))
        );
        assert_eq!(value("http.response.status_code"), Some(Any::IntValue(-3)));
        assert_eq!(value("gqp.cost_usd"), Some(Any::DoubleValue(0.25)));
        assert_eq!(value("gqp.complete"), Some(Any::BoolValue(true)));
        assert_eq!(value("gen_ai.input.messages"), Some(Any::StringValue(long)));
        let Some(Any::ArrayValue(reasons)) = value("gen_ai.response.finish_reasons") else {
            panic!("no array");
        };
        assert_eq!(
            reasons
                .values
                .iter()
                .map(|v| v.value.clone())
                .collect::<Vec<_>>(),
            vec![
                Some(Any::StringValue("STOP".into())),
                Some(Any::StringValue("MAX_TOKENS".into()))
            ]
        );
        assert_eq!(s.events.len(), 1);
        assert_eq!(s.events[0].name, "setup");
        assert_eq!(s.events[0].time_unix_nano, 1_500);
        assert_eq!(s.events[0].attributes[0].key, "n");
        let status = s.status.as_ref().unwrap();
        assert_eq!((status.code, status.message.as_str()), (2, "answered 503"));
        let unset = ss.spans[1].status.as_ref().unwrap();
        assert_eq!((unset.code, unset.message.as_str()), (0, ""));
        assert!(ss.spans[1].attributes.is_empty());
    }

    #[test]
    fn lengths_longer_and_shorter_than_the_room_kept_for_them_decode() {
        // Spans under 128 bytes and over 16 KiB (room for two bytes kept), and a batch far
        // larger than its estimate (the room of the messages around it too small).
        for (n, len) in [(1, 0), (3, 20_000), (40, 3_000), (600, 10)] {
            let spans = (0..n)
                .map(|_| {
                    let mut s = record("s", None, vec![KeyValue::new("k", "v".repeat(len))]);
                    s.events.clear();
                    s.parent_remote = false;
                    s
                })
                .collect();
            let bytes = encode(b"", &[data(spans)]);
            let req = ExportTraceServiceRequest::decode(bytes.as_slice()).unwrap();
            let got = &req.resource_spans[0].scope_spans[0].spans;
            assert_eq!(got.len(), n);
            assert!(got.iter().all(|s| s.name == "s"
                && s.attributes[0].value.as_ref().unwrap().value
                    == Some(Any::StringValue("v".repeat(len)))));
        }
    }

    #[test]
    fn a_varints_length_is_what_writing_it_takes() {
        for v in [0, 1, 127, 128, 16_383, 16_384, 1 << 35, u64::MAX] {
            let mut buf = Vec::new();
            varint(&mut buf, v);
            assert_eq!(varint_len(v), buf.len(), "{v}");
            assert_eq!(varint_bytes(v).1, buf.len(), "{v}");
        }
    }

    #[test]
    fn an_empty_batch_is_one_resource_without_scopes() {
        let req = ExportTraceServiceRequest::decode(encode(b"", &[]).as_slice()).unwrap();
        assert_eq!(req.resource_spans.len(), 1);
        assert!(req.resource_spans[0].scope_spans.is_empty());
    }
}
