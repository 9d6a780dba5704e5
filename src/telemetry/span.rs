//! One request's trace: the server span (continued from the client's W3C `traceparent` and
//! `tracestate`), its children (admission, queue wait, each upstream attempt) and the trace
//! context sent upstream (`telemetry::context`); its attributes are named in [`super::attr`].
//!
//! A span here is a [`SpanRecord`] filled in place: no SDK span object, context or processor
//! on the request path. The request's spans gather in one shared record that goes to the
//! export queue, whole, when the last of them is done (`Root`'s drop). Every constructor
//! returns `None` when export is off ([`super::otel::installed`]): nothing is made then.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::SystemTime;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{SpanId, SpanKind, TraceContextExt, TraceFlags, TraceId};
use opentelemetry_http::HeaderExtractor;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{IdGenerator, SamplingDecision, ShouldSample};
use parking_lot::Mutex;

use super::context::{self, TRACEPARENT};
use super::otel::{self, Tracing};
use super::record::Finished;

pub use super::attr;
pub use super::record::{Attr, Name, Preset, SpanRecord, Value};

/// `gen_ai.provider.name` of Google's Gemini API (AI Studio).
const PROVIDER_GEMINI: &str = "gcp.gemini";

/// `gen_ai.provider.name` and `gen_ai.system` of Google's Gemini API, encoded once.
pub static GEMINI: std::sync::LazyLock<Preset> = std::sync::LazyLock::new(|| {
    Preset::new(&[
        Attr::new(attr::PROVIDER, PROVIDER_GEMINI),
        Attr::new(attr::SYSTEM, PROVIDER_GEMINI),
    ])
});

/// A GenAI operation, as [`operation`] names it from a request's path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Op(usize);

impl Op {
    pub const GENERATE: Op = Op(0);
    pub const EMBEDDINGS: Op = Op(1);
    pub const CHAT: Op = Op(2);
    const NAMES: [&'static str; 3] = ["generate_content", "embeddings", "chat"];

    /// `gen_ai.operation.name`'s value.
    pub fn name(self) -> &'static str {
        Self::NAMES[self.0]
    }

    /// `gen_ai.operation.name` and `gen_ai.request.stream`, encoded once.
    pub fn attributes(self, stream: bool) -> &'static Preset {
        static ALL: std::sync::LazyLock<Vec<Preset>> = std::sync::LazyLock::new(|| {
            Op::NAMES
                .iter()
                .flat_map(|op| {
                    [false, true].map(|stream| {
                        Preset::new(&[
                            Attr::new(attr::OPERATION, *op),
                            Attr::new(attr::REQUEST_STREAM, stream),
                        ])
                    })
                })
                .collect()
        });
        &ALL[2 * self.0 + usize::from(stream)]
    }
}

/// Most bytes of a prompt or an answer recorded when `otel.record_content` is on.
pub const CONTENT_LIMIT: usize = 64 * 1024;

/// A request's server span, carried on the request (an extension) and to its log line.
#[derive(Clone)]
pub struct RequestTrace(Arc<Root>);

impl std::fmt::Debug for RequestTrace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestTrace")
            .field("trace_id", &self.0.trace_id)
            .field("sampled", &self.0.facts.is_some())
            .finish()
    }
}

/// The trace's ids and, sampled in, its spans so far.
struct Root {
    tracing: &'static Tracing,
    trace_id: TraceId,
    /// The server span's.
    span_id: SpanId,
    /// The client's `tracestate`, sent on as it came (empty: none).
    trace_state: Box<str>,
    /// `None`: sampled out (ids only, for the trace context sent upstream).
    facts: Option<Mutex<Facts>>,
}

struct Facts {
    /// The server span first, then its children in the order they started, each filled in
    /// place (a child through its index here, [`Child`]): a record of ~200 bytes is never
    /// moved after its start, this list goes to the export queue as it is, and a `Child` is
    /// small to move around.
    spans: Vec<SpanRecord>,
    ended: bool,
}

impl Facts {
    /// The server span's record (always the first).
    fn server(&mut self) -> &mut SpanRecord {
        &mut self.spans[0]
    }
}

impl Root {
    fn flags(&self) -> TraceFlags {
        if self.facts.is_some() {
            TraceFlags::SAMPLED
        } else {
            TraceFlags::default()
        }
    }

    fn with(&self, f: impl FnOnce(&mut Facts)) {
        if let Some(facts) = &self.facts {
            f(&mut facts.lock());
        }
    }
}

impl Drop for Root {
    /// The last span of the trace is done: the whole trace goes to the export queue.
    fn drop(&mut self) {
        let Some(facts) = self.facts.take() else {
            return;
        };
        let mut facts = facts.into_inner();
        if !facts.ended {
            facts.server().end = SystemTime::now();
        }
        self.tracing.submit(Finished {
            trace_id: self.trace_id,
            trace_state: std::mem::take(&mut self.trace_state),
            spans: facts.spans,
        });
    }
}

impl RequestTrace {
    /// The server span of a request, a child of the client's `traceparent` when it sent a
    /// valid one. `None` when export is off.
    pub fn start(headers: &http::HeaderMap, method: &str, path: &str) -> Option<RequestTrace> {
        Some(RequestTrace::start_in(
            otel::installed()?,
            headers,
            method,
            path,
        ))
    }

    /// [`RequestTrace::start`] for `tracing` (the installed one, or a test's).
    pub fn start_in(
        tracing: &'static Tracing,
        headers: &http::HeaderMap,
        method: &str,
        path: &str,
    ) -> RequestTrace {
        // The usual methods by their static names: no allocation for the span's first name.
        let name: Cow<'static, str> = match method {
            "POST" => Cow::Borrowed("POST"),
            "GET" => Cow::Borrowed("GET"),
            "DELETE" => Cow::Borrowed("DELETE"),
            "PATCH" => Cow::Borrowed("PATCH"),
            other => Cow::Owned(other.to_string()),
        };
        // The client's span, when it sent a valid `traceparent` (the SDK's propagator reads it).
        let parent = headers
            .contains_key(TRACEPARENT)
            .then(|| TraceContextPropagator::new().extract(&HeaderExtractor(headers)))
            .filter(|cx| cx.span().span_context().is_valid());
        let (trace_id, parent_id) = match &parent {
            Some(cx) => {
                let span = cx.span();
                let sc = span.span_context();
                (sc.trace_id(), sc.span_id())
            }
            None => (tracing.ids.new_trace_id(), SpanId::INVALID),
        };
        let sampled = tracing.sampler.should_sample(
            parent.as_ref(),
            trace_id,
            &name,
            &SpanKind::Server,
            &[],
            &[],
        );
        let trace_state = match &parent {
            Some(_) => sampled.trace_state.header().into_boxed_str(),
            None => Box::default(),
        };
        let span_id = tracing.ids.new_span_id();
        let facts = (sampled.decision == SamplingDecision::RecordAndSample).then(|| {
            let mut server = SpanRecord::new(
                span_id,
                parent_id,
                name.clone(),
                SpanKind::Server,
                SystemTime::now(),
            );
            server.parent_remote = parent.is_some();
            server.set(Attr::new(attr::METHOD, name));
            server.set(Attr::new(attr::PATH, Value::text(path)));
            // Room for a request's server span, admission, queue wait and one attempt.
            let mut spans = Vec::with_capacity(4);
            spans.push(server);
            Mutex::new(Facts {
                spans,
                ended: false,
            })
        });
        RequestTrace(Arc::new(Root {
            tracing,
            trace_id,
            span_id,
            trace_state,
            facts,
        }))
    }

    /// The trace's id, as log lines carry it (32 hex digits).
    pub fn trace_id(&self) -> TraceId {
        self.0.trace_id
    }

    /// Whether the span records (sampled in): worth computing costly attributes for.
    pub fn is_recording(&self) -> bool {
        self.0.facts.is_some()
    }

    /// The server span's record, to set several attributes at once (one lock, no list).
    pub fn record(&self, f: impl FnOnce(&mut SpanRecord)) {
        self.0.with(|facts| f(facts.server()));
    }

    pub fn set(&self, attrs: impl IntoIterator<Item = Attr>) {
        self.0.with(|f| {
            let server = f.server();
            for kv in attrs {
                server.set(kv);
            }
        });
    }

    pub fn event(&self, name: &'static str, attrs: Vec<Attr>) {
        self.0.with(|f| f.server().event(name, attrs));
    }

    /// Mark the request failed (a 5xx answer, or one cut off).
    pub fn fail(&self, why: impl Into<Cow<'static, str>>) {
        self.0.with(|f| f.server().error = Some(why.into()));
    }

    /// A child span, started now or at `start` (a wait measured after it happened). It ends
    /// when dropped.
    pub fn child(&self, name: &'static str, kind: SpanKind, start: Option<SystemTime>) -> Child {
        child_of(&self.0, self.0.span_id, name, kind, start)
    }

    /// Write this span's trace context into `headers` (a request not sampled: Google still
    /// gets the trace's id, flagged not sampled, in place of the client's).
    pub fn inject(&self, headers: &mut http::HeaderMap) {
        inject(&self.0, self.0.span_id, headers);
    }

    /// End the server span (at the answer's last byte). The trace is exported when its last
    /// span is done.
    pub fn end(&self) {
        self.0.with(|f| {
            if !f.ended {
                f.ended = true;
                f.server().end = SystemTime::now();
            }
        });
    }
}

fn child_of(
    root: &Arc<Root>,
    parent: SpanId,
    name: &'static str,
    kind: SpanKind,
    start: Option<SystemTime>,
) -> Child {
    let Some(facts) = &root.facts else {
        return Child { span: None };
    };
    let start = start.unwrap_or_else(SystemTime::now);
    let span_id = root.tracing.ids.new_span_id();
    let span = SpanRecord::new(span_id, parent, Cow::Borrowed(name), kind, start);
    let at = {
        let mut f = facts.lock();
        f.spans.push(span);
        f.spans.len() - 1
    };
    Child {
        span: Some(Open {
            root: root.clone(),
            at,
            span_id,
        }),
    }
}

/// A child span of a request's; ended when dropped.
pub struct Child {
    /// `None`: the trace is sampled out.
    span: Option<Open>,
}

/// A child span being recorded: its record is the root's `spans[at]`.
struct Open {
    root: Arc<Root>,
    at: usize,
    span_id: SpanId,
}

impl Child {
    pub fn set(&mut self, kv: Attr) {
        self.record(|s| s.set(kv));
    }

    /// The span's record, to set several attributes at once.
    pub fn record(&mut self, f: impl FnOnce(&mut SpanRecord)) {
        if let Some(o) = &self.span {
            o.root.with(|facts| {
                if let Some(s) = facts.spans.get_mut(o.at) {
                    f(s);
                }
            });
        }
    }

    pub fn fail(&mut self, why: impl Into<Cow<'static, str>>) {
        self.record(|s| s.error = Some(why.into()));
    }

    /// A grandchild (the queue wait inside an admission).
    pub fn child(&self, name: &'static str, kind: SpanKind, start: Option<SystemTime>) -> Child {
        match &self.span {
            Some(o) => child_of(&o.root, o.span_id, name, kind, start),
            None => Child { span: None },
        }
    }

    /// Write this span's `traceparent` (and `tracestate`) into `headers`, in place of any the
    /// client sent: Google sees the proxy's attempt as the caller.
    pub fn inject(&self, headers: &mut http::HeaderMap) {
        if let Some(o) = &self.span {
            inject(&o.root, o.span_id, headers);
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        self.record(|s| s.end = SystemTime::now());
    }
}

/// This span's context written into `headers` ([`super::context::write`]).
fn inject(root: &Root, span_id: SpanId, headers: &mut http::HeaderMap) {
    context::write(
        root.trace_id,
        span_id,
        root.flags(),
        &root.trace_state,
        headers,
    );
}

/// A list of strings as an attribute value.
pub fn strings(items: Vec<Value>) -> Value {
    Value::Strings(items.into_boxed_slice())
}

/// `gen_ai.operation.name` for a Gemini (or OpenAI-compatible) path, when it is a GenAI call.
pub fn operation(path: &str) -> Option<Op> {
    // memchr's searchers: the standard library's took more than the rest of the span's head.
    static OPENAI: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"/openai/"));
    if OPENAI.find(path.as_bytes()).is_some() {
        return if path.ends_with("/chat/completions") {
            Some(Op::CHAT)
        } else if path.ends_with("/embeddings") {
            Some(Op::EMBEDDINGS)
        } else {
            None
        };
    }
    let action = &path[memchr::memrchr(b':', path.as_bytes())? + 1..];
    match action {
        "generateContent" | "streamGenerateContent" | "predict" | "predictLongRunning" => {
            Some(Op::GENERATE)
        }
        "embedContent" | "batchEmbedContents" => Some(Op::EMBEDDINGS),
        _ => None,
    }
}

/// Text of at most [`CONTENT_LIMIT`] bytes (cut at a character boundary).
pub fn content(bytes: &[u8]) -> Value {
    let cut = &bytes[..bytes.len().min(CONTENT_LIMIT)];
    String::from_utf8_lossy(cut).into_owned().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gemini_and_openai_paths_name_their_operation() {
        assert_eq!(
            operation("/v1beta/models/gemini-2.5-flash:generateContent").map(Op::name),
            Some("generate_content")
        );
        assert_eq!(
            operation("/v1beta/models/gemini-2.5-flash:streamGenerateContent").map(Op::name),
            Some("generate_content")
        );
        assert_eq!(
            operation("/v1beta/models/text-embedding-004:embedContent").map(Op::name),
            Some("embeddings")
        );
        assert_eq!(
            operation("/v1beta/openai/chat/completions").map(Op::name),
            Some("chat")
        );
        assert_eq!(
            operation("/v1beta/models/gemini-2.5-flash:countTokens").map(Op::name),
            None
        );
        assert_eq!(operation("/v1beta/files").map(Op::name), None);
        assert_eq!(
            operation("/v1/openai/models/x:generateContent").map(Op::name),
            None,
            "an OpenAI path is named by its end only"
        );
        assert_eq!(
            operation("/v1beta/openai/embeddings").map(Op::name),
            Some("embeddings")
        );
    }

    /// A tracing of its own for a test (never installed), and what it exported.
    fn tracing(
        sampler: opentelemetry_sdk::trace::Sampler,
    ) -> (&'static Tracing, super::super::export::Pending) {
        let (t, pending) = Tracing::new(sampler, false, 64, 16);
        (Box::leak(Box::new(t)), pending)
    }

    #[test]
    fn a_requests_spans_are_exported_together_once_the_last_is_done() {
        use opentelemetry_sdk::trace::Sampler;
        let (t, pending) = tracing(Sampler::AlwaysOn);
        let trace = RequestTrace::start_in(t, &http::HeaderMap::new(), "POST", "/v1beta/x");
        assert!(trace.is_recording());
        let mut admit = trace.child("gqp.admit", SpanKind::Internal, None);
        admit.set(Attr::new(attr::STORE, "memory"));
        drop(admit.child("gqp.queue.wait", SpanKind::Internal, None));
        let mut attempt = trace.child("gqp.upstream.attempt", SpanKind::Client, None);
        let mut headers = http::HeaderMap::new();
        attempt.inject(&mut headers);
        attempt.fail("answered 503");
        trace.set([Attr::new(attr::STATUS, 200_i64)]);
        trace.record(|s| s.name = Name::Pair("generate_content", Value::text("m")));
        trace.end();
        drop(admit);
        assert!(
            pending.take(8).0.is_empty(),
            "exported with a child still open"
        );
        drop(trace);
        assert!(
            pending.take(8).0.is_empty(),
            "exported with a child still open"
        );
        drop(attempt);
        let mut got = pending.take(8).0;
        assert_eq!(got.len(), 1, "one trace, exported once");
        let f = got.pop().unwrap();
        let names: Vec<String> = f.spans.iter().map(|s| s.name.to_string()).collect();
        // The server span first, then its children in the order they started.
        assert_eq!(
            names,
            [
                "generate_content m",
                "gqp.admit",
                "gqp.queue.wait",
                "gqp.upstream.attempt"
            ]
        );
        let (server, admit, wait, attempt) = (&f.spans[0], &f.spans[1], &f.spans[2], &f.spans[3]);
        assert_eq!(server.parent, SpanId::INVALID);
        assert_eq!(admit.parent, server.span_id);
        assert_eq!(wait.parent, admit.span_id);
        assert_eq!(attempt.parent, server.span_id);
        assert_eq!(attempt.kind, SpanKind::Client);
        assert_eq!(attempt.error.as_deref(), Some("answered 503"));
        assert!(server.end <= attempt.end, "the server span ended at end()");
        assert!(
            wait.end <= admit.end && admit.end <= attempt.end,
            "each child ended when dropped"
        );
        assert!(f.spans.iter().all(|s| s.start <= s.end));
        let tp = headers["traceparent"].to_str().unwrap().to_string();
        assert_eq!(
            tp,
            format!("00-{}-{}-01", f.trace_id, attempt.span_id),
            "the attempt's own context goes upstream"
        );
        assert_eq!(server.attributes.len(), 3, "{:?}", server.attributes);
        let ids: std::collections::HashSet<_> = f.spans.iter().map(|s| s.span_id).collect();
        assert_eq!(ids.len(), 4, "each span its own id");
    }

    #[test]
    fn a_client_traceparent_is_continued_and_its_sampling_decision_kept() {
        use opentelemetry_sdk::trace::Sampler;
        let sampler = Sampler::ParentBased(Box::new(Sampler::AlwaysOn));
        let (t, pending) = tracing(sampler);
        let mut headers = http::HeaderMap::new();
        let parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331";
        headers.insert("traceparent", format!("{parent}-01").parse().unwrap());
        headers.insert("tracestate", "vendor=abc".parse().unwrap());
        let trace = RequestTrace::start_in(t, &headers, "POST", "/v1beta/x");
        assert_eq!(
            trace.trace_id().to_string(),
            "0af7651916cd43dd8448eb211c80319c"
        );
        let mut out = http::HeaderMap::new();
        trace.inject(&mut out);
        assert_eq!(out["tracestate"], "vendor=abc");
        drop(trace);
        let f = pending.take(8).0.pop().unwrap();
        assert_eq!(&*f.trace_state, "vendor=abc");
        assert_eq!(f.spans[0].parent, SpanId::from(0xb7ad_6b71_6920_3331));
        assert!(f.spans[0].parent_remote);

        // The client's span was not sampled: neither is the request's, and nothing is sent.
        headers.insert("traceparent", format!("{parent}-00").parse().unwrap());
        let trace = RequestTrace::start_in(t, &headers, "POST", "/v1beta/x");
        assert!(!trace.is_recording());
        let mut out = http::HeaderMap::new();
        trace
            .child("gqp.admit", SpanKind::Internal, None)
            .inject(&mut out);
        assert!(out.is_empty(), "a sampled-out child writes nothing");
        trace.inject(&mut out);
        assert!(out["traceparent"].to_str().unwrap().ends_with("-00"));
        drop(trace);
        assert!(pending.take(8).0.is_empty());
    }

    #[test]
    fn no_span_is_made_when_export_is_off() {
        assert!(RequestTrace::start(&http::HeaderMap::new(), "POST", "/v1beta/x").is_none());
    }
}
