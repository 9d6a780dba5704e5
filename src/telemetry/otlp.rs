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
use opentelemetry_http::HttpClient;
use opentelemetry_sdk::Resource;

use super::attr::Key;
use super::export::OtlpHttp;
use super::pb::{Cursor, FIXED32, FIXED64, LEN, Out, VARINT, put, tag1, varint_len};
use super::record::{Attr, Entry, Finished, Name, SpanRecord, Value};

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

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// `AnyValue`'s body (a oneof: the set member is always written).
fn any_value(out: &mut Out, v: &Value) {
    match v {
        Value::Bool(b) => out.array([const { tag1(2, VARINT) }, u8::from(*b)]),
        Value::I64(i) => {
            out.tag(3, VARINT);
            out.varint(*i as u64);
        }
        Value::F64(f) => out.fixed64(4, f.to_bits()),
        // A string (lists are span attributes, written by `attribute`).
        s => out.bytes_field(1, s.str_bytes().unwrap_or_default()),
    }
}

/// The API's value (the resource's attributes) as an `AnyValue` body.
fn api_value(out: &mut Out, v: &opentelemetry::Value) {
    use opentelemetry::{Array, Value as Api};
    match v {
        Api::Bool(b) => any_value(out, &Value::Bool(*b)),
        Api::I64(i) => any_value(out, &Value::I64(*i)),
        Api::F64(f) => any_value(out, &Value::F64(*f)),
        // `ArrayValue`'s body: each item an `AnyValue`, as a record's list is written.
        Api::Array(a) => out.nested(5, |out| {
            fn each<T>(out: &mut Out, items: &[T], f: impl Fn(&T) -> Value) {
                for item in items {
                    out.nested(1, |out| any_value(out, &f(item)));
                }
            }
            match a {
                Array::Bool(v) => each(out, v, |b| Value::Bool(*b)),
                Array::I64(v) => each(out, v, |i| Value::I64(*i)),
                Array::F64(v) => each(out, v, |f| Value::F64(*f)),
                Array::String(v) => each(out, v, |s| Value::text(s.as_str())),
                _ => {}
            }
        }),
        other => out.bytes_field(1, other.as_str().as_bytes()),
    }
}

fn attributes(out: &mut Out, field: u32, attrs: &[Attr]) {
    for a in attrs {
        attribute(out, field, a);
    }
}

/// `attrs` encoded as a span's attributes, for a [`super::record::Preset`].
pub(super) fn span_attributes(attrs: &[Attr]) -> Vec<u8> {
    let mut out = Out::with_capacity(256);
    attributes(&mut out, 9, attrs);
    out.finish()
}

/// One `KeyValue` message, front to back, straight into the batch: its lengths are known
/// before it is written, the key's encoding was made at compile time ([`super::attr::Key`])
/// and is copied whole, and all but a long string's bytes go through one [`Cursor`] (most of
/// what an export costs is its attributes).
fn attribute(out: &mut Out, field: u32, a: &Attr) {
    let k = a.key.wire_len();
    // `KeyValue`: the key, then `value` (field 2): its length, then the `AnyValue` (`value`
    // bytes long, those of a long string written after).
    // `member`: the `AnyValue` member's tag, its first byte.
    #[inline(always)]
    fn head(c: &mut Cursor<'_>, field: u32, a: &Attr, k: usize, value: usize, member: u8) {
        let body = k + 2 + value;
        if field == 9 && body < 128 {
            // A span's attribute whose lengths take a byte each (all but a long string): the
            // head made at compile time, its two lengths and the member's tag set.
            c.padded(a.key.span_head(), k + 5);
            c.set_back(k + 4, body as u8);
            c.set_back(2, value as u8);
            c.set_back(1, member);
            return;
        }
        c.varint(u64::from(field << 3 | LEN));
        c.varint((k + 1 + varint_len(value as u64) + value) as u64);
        c.padded(a.key.wire(), k);
        c.byte(const { tag1(2, LEN) });
        c.varint(value as u64);
        c.byte(member);
    }
    // Tags and lengths (at most 2 + 3 + 1 + 3 + 1 + 3), the key, a scalar or short string.
    const MAX: usize = 16 + Key::WIRE + 24;
    // The head of a length-delimited value (a string, a list) of `len` bytes, member `member`.
    let len_head = |out: &mut Out, len: usize, member: u8| {
        out.with(MAX, |c| {
            head(c, field, a, k, 1 + varint_len(len as u64) + len, member);
            c.varint(len as u64);
        })
    };
    match &a.value {
        Value::Bool(b) => out.with(MAX, |c| {
            head(c, field, a, k, 2, const { tag1(2, VARINT) });
            c.byte(u8::from(*b));
        }),
        Value::I64(i) => out.with(MAX, |c| {
            let v = *i as u64;
            head(c, field, a, k, 1 + varint_len(v), const { tag1(3, VARINT) });
            c.varint(v);
        }),
        Value::F64(f) => out.with(MAX, |c| {
            head(c, field, a, k, 9, const { tag1(4, FIXED64) });
            c.array(f.to_bits().to_le_bytes());
        }),
        Value::Strings(items) => {
            // `ArrayValue` (field 5 of the `AnyValue`): each item an `AnyValue` holding a
            // string; their lengths summed first, so the message is written front to back.
            let item = |v: &Value| {
                let n = v.str_bytes().map_or(0, <[u8]>::len);
                1 + varint_len(n as u64) + n
            };
            let array: usize = items
                .iter()
                .map(|v| {
                    let n = item(v);
                    1 + varint_len(n as u64) + n
                })
                .sum();
            len_head(out, array, const { tag1(5, LEN) });
            for v in items.iter() {
                let n = item(v);
                out.with(MAX, |c| {
                    c.byte(const { tag1(1, LEN) });
                    c.varint(n as u64);
                });
                text_field(out, v);
            }
        }
        s => {
            len_head(
                out,
                s.str_bytes().map_or(0, <[u8]>::len),
                const { tag1(1, LEN) },
            );
            text(out, s);
        }
    }
}

/// A string value's bytes: a short one's whole padded array copied (a few moves, no call),
/// the rest written over next.
#[inline(always)]
fn text(out: &mut Out, v: &Value) {
    let bytes = v.str_bytes().unwrap_or_default();
    match v {
        Value::Inline(i) => out.padded(i.padded(), bytes.len()),
        _ => out.bytes(bytes),
    }
}

/// A string as an `AnyValue` (field 1, its tag and length, then [`text`]).
#[inline(always)]
fn text_field(out: &mut Out, v: &Value) {
    let n = v.str_bytes().map_or(0, <[u8]>::len);
    out.with(11, |c| {
        c.byte(const { tag1(1, LEN) });
        c.varint(n as u64);
    });
    text(out, v);
}

/// The `Resource` message's body.
fn encode_resource(resource: &Resource) -> Vec<u8> {
    let mut out = Out::with_capacity(256);
    for (k, v) in resource.iter() {
        out.nested(1, |out| {
            out.opt_bytes(1, k.as_str().as_bytes());
            out.nested(2, |out| api_value(out, v));
        });
    }
    out.finish()
}

/// `flags`: the trace flags, and whether the parent is remote (with the bit saying it is
/// known), as the specification's `SpanFlags` give them.
fn flags(trace_flags: u8, parent_remote: bool) -> u32 {
    u32::from(trace_flags) | 0x100 | if parent_remote { 0x200 } else { 0 }
}

fn span(out: &mut Out, t: &Finished, s: &SpanRecord) {
    // `trace_id` (field 1) and `span_id` (field 2), tags and lengths included.
    let mut ids = [0u8; 28];
    ids[0] = const { tag1(1, LEN) };
    ids[1] = 16;
    put(&mut ids, 2, t.trace_id.to_bytes());
    ids[18] = const { tag1(2, LEN) };
    ids[19] = 8;
    put(&mut ids, 20, s.span_id.to_bytes());
    out.array(ids);
    out.opt_bytes(3, t.trace_state.as_bytes());
    if s.parent != opentelemetry::trace::SpanId::INVALID {
        out.array([const { tag1(4, LEN) }, 8]);
        out.array(s.parent.to_bytes());
    }
    match &s.name {
        Name::Text(name) => out.opt_bytes(5, name.as_bytes()),
        Name::Pair(op, of) => {
            // The operation and what it worked on, joined here (no string made for it).
            out.tag(5, LEN);
            out.varint(s.name.len() as u64);
            out.bytes(op.as_bytes());
            out.byte(b' ');
            text(out, of);
        }
    }
    let kind: u8 = match s.kind {
        SpanKind::Internal => 1,
        SpanKind::Server => 2,
        SpanKind::Client => 3,
        SpanKind::Producer => 4,
        SpanKind::Consumer => 5,
    };
    // `kind` (field 6), `start_time_unix_nano` (7) and `end_time_unix_nano` (8).
    let mut times = [0u8; 20];
    times[0] = const { tag1(6, VARINT) };
    times[1] = kind;
    times[2] = const { tag1(7, FIXED64) };
    put(&mut times, 3, nanos(s.start).to_le_bytes());
    times[11] = const { tag1(8, FIXED64) };
    put(&mut times, 12, nanos(s.end).to_le_bytes());
    out.array(times);
    for e in &s.attributes {
        match e {
            Entry::Attr(a) => attribute(out, 9, a),
            Entry::Static(p) => out.bytes(p.wire()),
            Entry::Shared(p) => out.bytes(p.wire()),
        }
    }
    out.opt_varint(10, u64::from(s.dropped_attributes));
    for e in &s.events {
        out.nested(11, |out| {
            out.fixed64(1, nanos(e.at));
            out.opt_bytes(2, e.name.as_bytes());
            attributes(out, 3, &e.attributes);
        });
    }
    out.opt_varint(12, u64::from(s.dropped_events));
    // `Status`: unset (empty), or an error (code 2) with its message.
    out.tag(15, LEN);
    match s.error.as_deref() {
        None => out.byte(0),
        Some("") => out.array([2, const { tag1(3, VARINT) }, 2]),
        Some(why) => {
            let n = why.len() as u64;
            out.varint(1 + varint_len(n) as u64 + n + 2);
            out.tag(2, LEN);
            out.varint(n);
            out.bytes(why.as_bytes());
            out.array([const { tag1(3, VARINT) }, 2]);
        }
    }
    // `flags` (field 16: a tag of two bytes); only sampled traces are exported.
    out.tag(16, FIXED32);
    out.array(flags(SAMPLED, s.parent_remote).to_le_bytes());
}

/// An `ExportTraceServiceRequest` of `traces` under one resource (`resource`: its encoded
/// body) and the proxy's one instrumentation scope.
pub fn encode(resource: &[u8], traces: &[Finished]) -> Vec<u8> {
    let spans: usize = traces.iter().map(|t| t.spans.len()).sum();
    // About what a server span with its GenAI attributes takes; the two messages around all
    // the spans keep room for a length that size takes, so the batch is written in place.
    let size = 64 + resource.len() + spans * 640;
    let room = varint_len(size as u64);
    let mut out = Out::with_capacity(size);
    out.nested_sized(1, room, |out| {
        out.bytes_field(1, resource);
        if spans == 0 {
            return;
        }
        out.nested_sized(2, room, |out| {
            out.nested(1, |out| out.opt_bytes(1, SCOPE.as_bytes()));
            for t in traces {
                for s in &t.spans {
                    out.nested_sized(2, 2, |out| span(out, t, s));
                }
            }
        });
    });
    out.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::attr::{self, Key};
    use crate::telemetry::record::Event;
    use opentelemetry::trace::{SpanId, TraceId};
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
    use prost::Message;
    use std::time::Duration;

    const N: Key = Key::new("n");
    const K: Key = Key::new("k");

    fn record(name: &'static str, error: Option<&'static str>, attrs: Vec<Attr>) -> SpanRecord {
        let at = |n| SystemTime::UNIX_EPOCH + Duration::from_nanos(n);
        let mut s = SpanRecord::new(
            SpanId::from(0x1112_1314_1516_1718),
            SpanId::from(7),
            name,
            SpanKind::Client,
            at(1_000),
        );
        s.end = at(2_000);
        s.parent_remote = true;
        s.attributes = attrs.into_iter().map(Entry::Attr).collect();
        s.dropped_attributes = 2;
        s.events.push(Event {
            name: "setup",
            at: at(1_500),
            attributes: vec![Attr::new(&N, 1_i64)],
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
        let mut spans = vec![data(vec![
            record(
                "generate_content gemini-2.5-flash",
                Some("answered 503"),
                vec![
                    Attr::new(attr::REQUEST_MODEL, "gemini-2.5-flash"),
                    Attr::new(attr::PROJECT, std::sync::Arc::<str>::from("project-1")),
                    Attr::new(attr::KEY, Value::text("AIza...0001")),
                    Attr::new(attr::STATUS, -3_i64),
                    Attr::new(attr::COST_USD, 0.25),
                    Attr::new(attr::COMPLETE, true),
                    Attr::new(attr::INPUT_MESSAGES, long.clone()),
                    Attr::new(
                        attr::FINISH_REASONS,
                        Value::Strings(Box::new([Value::text("STOP"), Value::from("MAX_TOKENS")])),
                    ),
                ],
            ),
            record("gqp.admit", None, vec![]),
            record("gqp.upstream.attempt", Some(""), vec![]),
        ])];
        // The name of an operation and its model, joined only here.
        spans[0].spans[0].name = Name::Pair("generate_content", Value::text("gemini-2.5-flash"));
        let resource = Resource::builder_empty().with_service_name("svc").build();
        let bytes = encode(&encode_resource(&resource), &spans);
        let req = ExportTraceServiceRequest::decode(bytes.as_slice()).unwrap();
        // The bytes are prost's own for the message: each field in its order, lengths minimal.
        assert_eq!(req.encode_to_vec(), bytes);
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
        assert_eq!(ss.spans.len(), 3);
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
        assert_eq!(
            value("gqp.project"),
            Some(Any::StringValue("project-1".into()))
        );
        assert_eq!(
            value("gqp.key"),
            Some(Any::StringValue("AIza...0001".into()))
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
        let failed = ss.spans[2].status.as_ref().unwrap();
        assert_eq!((failed.code, failed.message.as_str()), (2, ""));
    }

    #[test]
    fn attributes_encoded_once_are_the_bytes_of_those_set_one_by_one() {
        use crate::telemetry::record::Preset;
        use std::sync::{Arc, LazyLock};
        static BOTH: LazyLock<Preset> = LazyLock::new(|| {
            Preset::new(&[
                Attr::new(attr::PROVIDER, "gcp.gemini"),
                Attr::new(attr::SYSTEM, "gcp.gemini"),
            ])
        });
        let key = Arc::new(Preset::new(&[
            Attr::new(attr::KEY, Value::text("AIza...0001")),
            Attr::new(attr::PROJECT, Arc::<str>::from("project-1")),
        ]));
        let status = || Attr::new(attr::STATUS, 200_i64);
        let one_by_one = record(
            "s",
            None,
            vec![
                status(),
                Attr::new(attr::PROVIDER, "gcp.gemini"),
                Attr::new(attr::SYSTEM, "gcp.gemini"),
                Attr::new(attr::KEY, Value::text("AIza...0001")),
                Attr::new(attr::PROJECT, Arc::<str>::from("project-1")),
            ],
        );
        let mut preset = record("s", None, vec![status()]);
        preset.set_preset(&BOTH);
        preset.set_shared(key);
        assert_eq!(preset.attribute_count(), 5);
        assert_eq!(
            encode(b"", &[data(vec![one_by_one])]),
            encode(b"", &[data(vec![preset])])
        );
    }

    #[test]
    fn lengths_longer_and_shorter_than_the_room_kept_for_them_decode() {
        // Spans under 128 bytes and over 16 KiB (room for two bytes kept), and a batch far
        // larger than its estimate (the room of the messages around it too small).
        for (n, len) in [(1, 0), (3, 20_000), (40, 3_000), (600, 10)] {
            let spans = (0..n)
                .map(|_| {
                    let mut s = record("s", None, vec![Attr::new(&K, "v".repeat(len))]);
                    s.events.clear();
                    s.parent_remote = false;
                    s
                })
                .collect();
            let bytes = encode(b"", &[data(spans)]);
            let req = ExportTraceServiceRequest::decode(bytes.as_slice()).unwrap();
            assert_eq!(req.encode_to_vec(), bytes);
            let got = &req.resource_spans[0].scope_spans[0].spans;
            assert_eq!(got.len(), n);
            assert!(got.iter().all(|s| s.name == "s"
                && s.attributes[0].value.as_ref().unwrap().value
                    == Some(Any::StringValue("v".repeat(len)))));
        }
    }

    #[test]
    fn a_resource_attributes_arrays_keep_their_items_types() {
        use opentelemetry::{Array, Value as Api};
        use opentelemetry_proto::tonic::common::v1::AnyValue;
        let decoded = |v: Api| {
            let mut out = Out::with_capacity(0);
            api_value(&mut out, &v);
            AnyValue::decode(out.finish().as_slice())
                .unwrap()
                .value
                .unwrap()
        };
        let items = |v: Any| match v {
            Any::ArrayValue(a) => a.values.into_iter().map(|i| i.value.unwrap()).collect(),
            other => panic!("not an array: {other:?}"),
        };
        let got: Vec<Any> = items(decoded(Api::Array(Array::Bool(vec![true, false]))));
        assert_eq!(got, [Any::BoolValue(true), Any::BoolValue(false)]);
        let got: Vec<Any> = items(decoded(Api::Array(Array::I64(vec![7, -1]))));
        assert_eq!(got, [Any::IntValue(7), Any::IntValue(-1)]);
        let got: Vec<Any> = items(decoded(Api::Array(Array::F64(vec![0.5]))));
        assert_eq!(got, [Any::DoubleValue(0.5)]);
        let got: Vec<Any> = items(decoded(Api::Array(Array::String(vec!["a".into()]))));
        assert_eq!(got, [Any::StringValue("a".into())]);
    }

    #[test]
    fn an_empty_batch_is_one_resource_without_scopes() {
        let req = ExportTraceServiceRequest::decode(encode(b"", &[]).as_slice()).unwrap();
        assert_eq!(req.resource_spans.len(), 1);
        assert!(req.resource_spans[0].scope_spans.is_empty());
    }
}
