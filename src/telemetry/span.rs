//! One request's trace: the server span (continued from the client's W3C `traceparent` and
//! `tracestate`), its children (admission, queue wait, each upstream attempt), the trace
//! context sent upstream, and the names of the attributes, as the OpenTelemetry semantic
//! conventions 1.42.0 give them (GenAI: development status) plus the proxy's own under `gqp.`.
//!
//! Every constructor returns `None` when export is off ([`super::otel::tracer`]): no span
//! object is made then.

use std::borrow::Cow;
use std::time::SystemTime;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{
    Span as _, SpanContext, SpanKind, Status, TraceContextExt, TraceFlags, TraceId, Tracer as _,
};
use opentelemetry::{Array, Context, KeyValue, StringValue, Value};
use opentelemetry_http::HeaderExtractor;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::Span as SdkSpan;

use super::otel;

/// Attribute names (semantic conventions 1.42.0, and the proxy's own).
pub mod attr {
    pub const OPERATION: &str = "gen_ai.operation.name";
    pub const PROVIDER: &str = "gen_ai.provider.name";
    /// The name before `gen_ai.provider.name` (conventions up to 1.36), for older backends.
    pub const SYSTEM: &str = "gen_ai.system";
    pub const REQUEST_MODEL: &str = "gen_ai.request.model";
    pub const REQUEST_STREAM: &str = "gen_ai.request.stream";
    pub const RESPONSE_MODEL: &str = "gen_ai.response.model";
    pub const FINISH_REASONS: &str = "gen_ai.response.finish_reasons";
    /// Seconds to the first chunk of the answer.
    pub const TIME_TO_FIRST_CHUNK: &str = "gen_ai.response.time_to_first_chunk";
    pub const INPUT_TOKENS: &str = "gen_ai.usage.input_tokens";
    pub const OUTPUT_TOKENS: &str = "gen_ai.usage.output_tokens";
    pub const REASONING_TOKENS: &str = "gen_ai.usage.reasoning.output_tokens";
    pub const CACHED_TOKENS: &str = "gen_ai.usage.cache_read.input_tokens";
    pub const INPUT_MESSAGES: &str = "gen_ai.input.messages";
    pub const OUTPUT_MESSAGES: &str = "gen_ai.output.messages";
    pub const METHOD: &str = "http.request.method";
    pub const PATH: &str = "url.path";
    pub const STATUS: &str = "http.response.status_code";
    pub const ERROR_TYPE: &str = "error.type";
    pub const CLIENT: &str = "gqp.client";
    pub const PROJECT: &str = "gqp.project";
    /// The pooled key's masked form (`AIza…abcd`), never the key.
    pub const KEY: &str = "gqp.key";
    /// `HIT`, `MISS` or `BYPASS` when the response cache looked at the request.
    pub const CACHE: &str = "gqp.cache";
    pub const QUEUE_WAIT_MS: &str = "gqp.queue.wait_ms";
    pub const ATTEMPTS: &str = "gqp.attempts";
    pub const ATTEMPT: &str = "gqp.attempt";
    pub const ESTIMATED_TOKENS: &str = "gqp.estimated_tokens";
    /// What the answer cost the project, in USD (the ledger's price table).
    pub const COST_USD: &str = "gqp.cost_usd";
    /// Google's answer as the proxy read it (`deliver`, `quota_exhausted`, ...).
    pub const VERDICT: &str = "gqp.verdict";
    /// Why the attempt was tried again (`gqp_retries_total{reason}`).
    pub const RETRY_REASON: &str = "gqp.retry_reason";
    /// The body ended (false: the client went away or the stream broke off).
    pub const COMPLETE: &str = "gqp.complete";
    pub const STORE: &str = "gqp.store";
}

/// `gen_ai.provider.name` of Google's Gemini API (AI Studio).
pub const PROVIDER_GEMINI: &str = "gcp.gemini";

/// Most bytes of a prompt or an answer recorded when `otel.record_content` is on.
pub const CONTENT_LIMIT: usize = 64 * 1024;

fn propagator() -> TraceContextPropagator {
    TraceContextPropagator::new()
}

/// A request's server span, carried on the request (an extension) and to its log line.
#[derive(Clone, Debug)]
pub struct RequestTrace {
    cx: Context,
}

impl RequestTrace {
    /// The server span of a request, a child of the client's `traceparent` when it sent a
    /// valid one. `None` when export is off.
    pub fn start(headers: &http::HeaderMap, method: &str, path: &str) -> Option<RequestTrace> {
        let tracer = otel::tracer()?;
        let parent = propagator().extract(&HeaderExtractor(headers));
        // The usual methods by their static names: no allocation for the span's first name.
        let name: Cow<'static, str> = match method {
            "POST" => Cow::Borrowed("POST"),
            "GET" => Cow::Borrowed("GET"),
            "DELETE" => Cow::Borrowed("DELETE"),
            "PATCH" => Cow::Borrowed("PATCH"),
            other => Cow::Owned(other.to_string()),
        };
        let span = tracer
            .span_builder(name.clone())
            .with_kind(SpanKind::Server)
            .with_attributes([
                KeyValue::new(attr::METHOD, name),
                KeyValue::new(attr::PATH, path.to_string()),
            ])
            .start_with_context(tracer, &parent);
        Some(RequestTrace {
            cx: parent.with_span(span),
        })
    }

    /// The trace's id, as log lines carry it (32 hex digits).
    pub fn trace_id(&self) -> TraceId {
        self.cx.span().span_context().trace_id()
    }

    /// Whether the span records (sampled in): worth computing costly attributes for.
    pub fn is_recording(&self) -> bool {
        self.cx.span().is_recording()
    }

    pub fn set(&self, attrs: impl IntoIterator<Item = KeyValue>) {
        self.cx.span().set_attributes(attrs);
    }

    pub fn rename(&self, name: String) {
        self.cx.span().update_name(name);
    }

    pub fn event(&self, name: &'static str, attrs: Vec<KeyValue>) {
        self.cx.span().add_event(name, attrs);
    }

    /// Mark the request failed (a 5xx answer, or one cut off).
    pub fn fail(&self, why: impl Into<Cow<'static, str>>) {
        self.cx.span().set_status(Status::error(why));
    }

    /// A child span, started now or at `start` (a wait measured after it happened). It ends
    /// when dropped.
    pub fn child(&self, name: &'static str, kind: SpanKind, start: Option<SystemTime>) -> Child {
        child_of(&self.cx, name, kind, start)
    }

    /// Write this span's trace context into `headers` (a request not sampled: Google still
    /// gets the trace's id, flagged not sampled, in place of the client's).
    pub fn inject(&self, headers: &mut http::HeaderMap) {
        inject(self.cx.span().span_context(), headers);
    }

    /// End the server span (at the answer's last byte).
    pub fn end(&self) {
        self.cx.span().end();
    }
}

fn child_of(cx: &Context, name: &'static str, kind: SpanKind, start: Option<SystemTime>) -> Child {
    let span = match otel::tracer() {
        Some(tracer) => {
            let mut b = tracer.span_builder(name).with_kind(kind);
            b.start_time = start;
            Some(b.start_with_context(tracer, cx))
        }
        // Not installed (cannot happen with a trace): a span that records nothing.
        None => None,
    };
    Child { span }
}

/// A child span of a request's; ended when dropped.
pub struct Child {
    span: Option<SdkSpan>,
}

impl Child {
    pub fn set(&mut self, kv: KeyValue) {
        if let Some(s) = self.span.as_mut() {
            s.set_attribute(kv);
        }
    }

    pub fn fail(&mut self, why: impl Into<Cow<'static, str>>) {
        if let Some(s) = self.span.as_mut() {
            s.set_status(Status::error(why));
        }
    }

    /// A grandchild (the queue wait inside an admission).
    pub fn child(&self, name: &'static str, kind: SpanKind, start: Option<SystemTime>) -> Child {
        match &self.span {
            Some(s) => child_of(
                &Context::new().with_remote_span_context(s.span_context().clone()),
                name,
                kind,
                start,
            ),
            None => Child { span: None },
        }
    }

    /// Write this span's `traceparent` (and `tracestate`) into `headers`, in place of any the
    /// client sent: Google sees the proxy's attempt as the caller.
    pub fn inject(&self, headers: &mut http::HeaderMap) {
        if let Some(s) = &self.span {
            inject(s.span_context(), headers);
        }
    }
}

const TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");
const TRACESTATE: http::HeaderName = http::HeaderName::from_static("tracestate");

/// What the W3C propagator writes (`traceparent: 00-TRACE-SPAN-FLAGS`, and `tracestate`,
/// empty or not), as the SDK's `TraceContextPropagator` would, without its `format!` and its
/// header-name parsing on every request.
fn inject(cx: &SpanContext, headers: &mut http::HeaderMap) {
    if !cx.is_valid() {
        return;
    }
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut v = *b"00-00000000000000000000000000000000-0000000000000000-00";
    let mut put = |at: usize, bytes: &[u8]| {
        for (i, b) in bytes.iter().enumerate() {
            v[at + 2 * i] = HEX[usize::from(b >> 4)];
            v[at + 2 * i + 1] = HEX[usize::from(b & 0xf)];
        }
    };
    put(3, &cx.trace_id().to_bytes());
    put(36, &cx.span_id().to_bytes());
    put(53, &[(cx.trace_flags() & TraceFlags::SAMPLED).to_u8()]);
    // Hex digits and dashes only: always a valid header value.
    if let Ok(value) = http::HeaderValue::from_bytes(&v) {
        headers.insert(TRACEPARENT, value);
    }
    let state = cx.trace_state().header();
    if let Ok(value) = http::HeaderValue::from_str(&state) {
        headers.insert(TRACESTATE, value);
    }
}

/// A list of strings as an attribute value.
pub fn strings(items: &[String]) -> Value {
    Value::Array(Array::String(
        items.iter().map(|s| StringValue::from(s.clone())).collect(),
    ))
}

/// `gen_ai.operation.name` for a Gemini (or OpenAI-compatible) path, when it is a GenAI call.
pub fn operation(path: &str) -> Option<&'static str> {
    if path.contains("/openai/") {
        return if path.ends_with("/chat/completions") {
            Some("chat")
        } else if path.ends_with("/embeddings") {
            Some("embeddings")
        } else {
            None
        };
    }
    let action = path.rsplit_once(':')?.1;
    match action {
        "generateContent" | "streamGenerateContent" | "predict" | "predictLongRunning" => {
            Some("generate_content")
        }
        "embedContent" | "batchEmbedContents" => Some("embeddings"),
        _ => None,
    }
}

/// Text of at most [`CONTENT_LIMIT`] bytes (cut at a character boundary).
pub fn content(bytes: &[u8]) -> String {
    let cut = &bytes[..bytes.len().min(CONTENT_LIMIT)];
    String::from_utf8_lossy(cut).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gemini_and_openai_paths_name_their_operation() {
        assert_eq!(
            operation("/v1beta/models/gemini-2.5-flash:generateContent"),
            Some("generate_content")
        );
        assert_eq!(
            operation("/v1beta/models/gemini-2.5-flash:streamGenerateContent"),
            Some("generate_content")
        );
        assert_eq!(
            operation("/v1beta/models/text-embedding-004:embedContent"),
            Some("embeddings")
        );
        assert_eq!(operation("/v1beta/openai/chat/completions"), Some("chat"));
        assert_eq!(
            operation("/v1beta/models/gemini-2.5-flash:countTokens"),
            None
        );
        assert_eq!(operation("/v1beta/files"), None);
    }

    #[test]
    fn the_trace_context_written_is_the_sdk_propagators() {
        use opentelemetry::trace::{SpanId, TraceState};
        use opentelemetry_http::HeaderInjector;
        for (flags, state) in [
            (TraceFlags::SAMPLED, "vendor=abc"),
            (TraceFlags::default(), ""),
        ] {
            let sc = SpanContext::new(
                TraceId::from(0x0af7_6519_16cd_43dd_8448_eb21_1c80_319c),
                SpanId::from(0xb7ad_6b71_6920_3331),
                flags,
                true,
                state.parse::<TraceState>().unwrap(),
            );
            let (mut ours, mut sdk) = (http::HeaderMap::new(), http::HeaderMap::new());
            inject(&sc, &mut ours);
            let cx = Context::new().with_remote_span_context(sc);
            propagator().inject_context(&cx, &mut HeaderInjector(&mut sdk));
            assert_eq!(ours, sdk);
            assert_eq!(ours.len(), 2);
        }
        let mut none = http::HeaderMap::new();
        inject(&SpanContext::empty_context(), &mut none);
        assert!(none.is_empty());
    }

    #[test]
    fn no_span_is_made_when_export_is_off() {
        assert!(RequestTrace::start(&http::HeaderMap::new(), "POST", "/v1beta/x").is_none());
    }
}
