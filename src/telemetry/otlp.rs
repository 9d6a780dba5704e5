//! OTLP/HTTP protobuf export of finished spans, written straight from the SDK's `SpanData`
//! into one buffer in the export task: no intermediate protocol structs, no attribute key or
//! value copied into a `String`, the resource and the scope encoded once. It replaced
//! opentelemetry-otlp's exporter, whose conversion and prost encoding (each nested message's
//! length computed again at every level) took more than half of what export cost a request
//! (callgrind, `docs/benchmarks.md`). The messages are those of `opentelemetry/proto/trace/v1`
//! (`ExportTraceServiceRequest`), checked against the protocol's own types in the tests.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Uri};
use opentelemetry::trace::{SpanKind, Status};
use opentelemetry::{Array, KeyValue, Value};
use opentelemetry_http::HttpClient;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{SpanData, SpanExporter};

use super::export::OtlpHttp;

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

impl SpanExporter for Exporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let body = encode(&self.resource, &batch);
        drop(batch);
        let mut req = http::Request::post(self.endpoint.clone())
            .header(http::header::CONTENT_TYPE, "application/x-protobuf")
            .body(Bytes::from(body))
            .map_err(|e| OTelSdkError::InternalFailure(e.to_string()))?;
        for (k, v) in &self.headers {
            req.headers_mut().insert(k, v.clone());
        }
        let resp = self
            .http
            .send_bytes(req)
            .await
            .map_err(|e| OTelSdkError::InternalFailure(e.to_string()))?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(OTelSdkError::InternalFailure(format!(
                "the collector answered {}",
                resp.status()
            )))
        }
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
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
    key(buf, field, LEN);
    let start = buf.len();
    f(buf);
    let len = buf.len() - start;
    if len < 0x80 {
        buf.insert(start, len as u8);
    } else {
        let mut prefix = Vec::with_capacity(10);
        varint(&mut prefix, len as u64);
        let n = prefix.len();
        buf.extend_from_slice(&prefix);
        buf[start..].rotate_right(n);
    }
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
        nested(buf, field, |buf| {
            opt_bytes(buf, 1, kv.key.as_str().as_bytes());
            nested(buf, 2, |buf| any_value(buf, &kv.value));
        });
    }
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

fn span(buf: &mut Vec<u8>, s: &SpanData) {
    let cx = &s.span_context;
    bytes_field(buf, 1, &cx.trace_id().to_bytes());
    bytes_field(buf, 2, &cx.span_id().to_bytes());
    opt_bytes(buf, 3, cx.trace_state().header().as_bytes());
    if s.parent_span_id != opentelemetry::trace::SpanId::INVALID {
        bytes_field(buf, 4, &s.parent_span_id.to_bytes());
    }
    opt_bytes(buf, 5, s.name.as_bytes());
    let kind: u64 = match s.span_kind {
        SpanKind::Internal => 1,
        SpanKind::Server => 2,
        SpanKind::Client => 3,
        SpanKind::Producer => 4,
        SpanKind::Consumer => 5,
    };
    opt_varint(buf, 6, kind);
    fixed64(buf, 7, nanos(s.start_time));
    fixed64(buf, 8, nanos(s.end_time));
    attributes(buf, 9, &s.attributes);
    opt_varint(buf, 10, u64::from(s.dropped_attributes_count));
    for e in s.events.iter() {
        nested(buf, 11, |buf| {
            fixed64(buf, 1, nanos(e.timestamp));
            opt_bytes(buf, 2, e.name.as_bytes());
            attributes(buf, 3, &e.attributes);
            opt_varint(buf, 4, u64::from(e.dropped_attributes_count));
        });
    }
    opt_varint(buf, 12, u64::from(s.events.dropped_count));
    for l in s.links.iter() {
        nested(buf, 13, |buf| {
            let lc = &l.span_context;
            bytes_field(buf, 1, &lc.trace_id().to_bytes());
            bytes_field(buf, 2, &lc.span_id().to_bytes());
            opt_bytes(buf, 3, lc.trace_state().header().as_bytes());
            attributes(buf, 4, &l.attributes);
            opt_varint(buf, 5, u64::from(l.dropped_attributes_count));
            key(buf, 6, FIXED32);
            buf.extend_from_slice(&flags(lc.trace_flags().to_u8(), lc.is_remote()).to_le_bytes());
        });
    }
    opt_varint(buf, 14, u64::from(s.links.dropped_count));
    nested(buf, 15, |buf| match &s.status {
        Status::Unset => {}
        Status::Ok => opt_varint(buf, 3, 1),
        Status::Error { description } => {
            opt_bytes(buf, 2, description.as_bytes());
            opt_varint(buf, 3, 2);
        }
    });
    key(buf, 16, FIXED32);
    buf.extend_from_slice(&flags(cx.trace_flags().to_u8(), s.parent_span_is_remote).to_le_bytes());
}

/// `InstrumentationScope`'s body.
fn scope(buf: &mut Vec<u8>, s: &opentelemetry::InstrumentationScope) {
    opt_bytes(buf, 1, s.name().as_bytes());
    opt_bytes(buf, 2, s.version().unwrap_or_default().as_bytes());
    let attrs: Vec<KeyValue> = s.attributes().cloned().collect();
    attributes(buf, 3, &attrs);
}

/// An `ExportTraceServiceRequest` of `spans` under one resource (`resource`: its encoded
/// body); spans of one instrumentation scope in a row share its `ScopeSpans`.
pub fn encode(resource: &[u8], spans: &[SpanData]) -> Vec<u8> {
    // About what a server span with its GenAI attributes takes.
    let mut buf = Vec::with_capacity(64 + resource.len() + spans.len() * 640);
    nested(&mut buf, 1, |buf| {
        bytes_field(buf, 1, resource);
        let mut rest = spans;
        while let Some(first) = rest.first() {
            let same = rest
                .iter()
                .take_while(|s| s.instrumentation_scope == first.instrumentation_scope)
                .count();
            let (group, tail) = rest.split_at(same);
            nested(buf, 2, |buf| {
                nested(buf, 1, |buf| scope(buf, &first.instrumentation_scope));
                for s in group {
                    nested(buf, 2, |buf| span(buf, s));
                }
                opt_bytes(
                    buf,
                    3,
                    first
                        .instrumentation_scope
                        .schema_url()
                        .unwrap_or_default()
                        .as_bytes(),
                );
            });
            rest = tail;
        }
    });
    buf
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};
    use opentelemetry::{InstrumentationScope, StringValue};
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
    use opentelemetry_sdk::trace::{SpanEvents, SpanLinks};
    use prost::Message;

    fn data(name: &'static str, status: Status, attrs: Vec<KeyValue>) -> SpanData {
        let mut events = SpanEvents::default();
        events.events.push(opentelemetry::trace::Event::new(
            "setup",
            SystemTime::UNIX_EPOCH + Duration::from_nanos(1_500),
            vec![KeyValue::new("n", 1_i64)],
            0,
        ));
        SpanData {
            span_context: SpanContext::new(
                TraceId::from(0x0102_0304_0506_0708_090a_0b0c_0d0e_0f10),
                SpanId::from(0x1112_1314_1516_1718),
                TraceFlags::SAMPLED,
                false,
                TraceState::from_key_value([("vendor", "abc")]).unwrap(),
            ),
            parent_span_id: SpanId::from(7),
            parent_span_is_remote: true,
            span_kind: SpanKind::Client,
            name: name.into(),
            start_time: SystemTime::UNIX_EPOCH + Duration::from_nanos(1_000),
            end_time: SystemTime::UNIX_EPOCH + Duration::from_nanos(2_000),
            attributes: attrs,
            dropped_attributes_count: 2,
            events,
            links: SpanLinks::default(),
            status,
            instrumentation_scope: InstrumentationScope::builder("gemini-quota-proxy").build(),
        }
    }

    #[test]
    fn a_batch_decodes_with_the_protocols_own_types_field_for_field() {
        let long = "x".repeat(300);
        let spans = vec![
            data(
                "generate_content gemini-2.5-flash",
                Status::error("answered 503"),
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
            data("gqp.admit", Status::Unset, vec![]),
        ];
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
    fn an_empty_batch_is_one_resource_without_scopes() {
        let req = ExportTraceServiceRequest::decode(encode(b"", &[]).as_slice()).unwrap();
        assert_eq!(req.resource_spans.len(), 1);
        assert!(req.resource_spans[0].scope_spans.is_empty());
    }
}
