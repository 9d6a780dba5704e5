//! OpenTelemetry traces end to end: the proxy binary exports to a fake OTLP/HTTP receiver on
//! loopback, which decodes the protobuf with the protocol's own types; the tests check the span
//! tree (server span, admission, queue wait, upstream attempts) and its GenAI attributes for a
//! generate, a stream, a cache hit, a queued-then-retried request and a client `traceparent`
//! continued (and a new one sent to Google), with no prompt text in any span by default.

use crate::common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use common::binary::Binary;
use common::*;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use serde_json::json;

/// What the fake collector received: the spans, and every request body as sent.
#[derive(Default)]
struct Received {
    spans: Vec<Span>,
    service_names: Vec<String>,
    raw: Vec<Bytes>,
}

/// A fake OTLP/HTTP collector on 127.0.0.1:0 (`POST /v1/traces`, protobuf).
struct Collector {
    url: String,
    got: Arc<Mutex<Received>>,
}

impl Collector {
    async fn start() -> Collector {
        let got: Arc<Mutex<Received>> = Arc::default();
        let sink = got.clone();
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |body: Bytes| {
                let sink = sink.clone();
                async move {
                    let req = ExportTraceServiceRequest::decode(body.clone())
                        .expect("the proxy sends OTLP protobuf");
                    let mut got = sink.lock().unwrap();
                    got.raw.push(body);
                    for rs in req.resource_spans {
                        if let Some(r) = &rs.resource {
                            for kv in &r.attributes {
                                if kv.key == "service.name"
                                    && let Some(Any::StringValue(s)) =
                                        kv.value.as_ref().and_then(|v| v.value.clone())
                                {
                                    got.service_names.push(s);
                                }
                            }
                        }
                        for ss in rs.scope_spans {
                            got.spans.extend(ss.spans);
                        }
                    }
                    ([("content-type", "application/x-protobuf")], Bytes::new())
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Collector { url, got }
    }

    fn spans(&self) -> Vec<Span> {
        self.got.lock().unwrap().spans.clone()
    }

    /// The spans of the trace whose server span is named `name`, once it and `children`
    /// children of it have arrived.
    async fn trace_of(&self, pick: impl Fn(&Span) -> bool, children: usize) -> (Span, Vec<Span>) {
        let mut found = None;
        let ok = eventually(Duration::from_secs(10), || {
            let spans = self.spans();
            let Some(root) = spans.iter().find(|s| pick(s)).cloned() else {
                return false;
            };
            let kids: Vec<Span> = spans
                .iter()
                .filter(|s| s.trace_id == root.trace_id && s.span_id != root.span_id)
                .cloned()
                .collect();
            let enough = kids.len() >= children;
            found = Some((root, kids));
            enough
        })
        .await;
        let found = found.unwrap_or_else(|| panic!("no such span in {:#?}", self.names()));
        assert!(ok, "too few children: {:#?}", found.1);
        found
    }

    fn names(&self) -> Vec<String> {
        self.spans().iter().map(|s| s.name.clone()).collect()
    }

    /// Every byte the proxy exported, as text (to look for what must not be there).
    fn raw_text(&self) -> String {
        let got = self.got.lock().unwrap();
        got.raw
            .iter()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .collect()
    }
}

fn attr(span: &Span, key: &str) -> Option<Any> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.clone())
}

fn text(span: &Span, key: &str) -> String {
    match attr(span, key) {
        Some(Any::StringValue(s)) => s,
        other => panic!("{key} of {} is {other:?}", span.name),
    }
}

fn int(span: &Span, key: &str) -> i64 {
    match attr(span, key) {
        Some(Any::IntValue(i)) => i,
        other => panic!("{key} of {} is {other:?}", span.name),
    }
}

fn strings(span: &Span, key: &str) -> Vec<String> {
    match attr(span, key) {
        Some(Any::ArrayValue(a)) => a
            .values
            .into_iter()
            .filter_map(|v| match v.value {
                Some(Any::StringValue(s)) => Some(s),
                _ => None,
            })
            .collect(),
        other => panic!("{key} of {} is {other:?}", span.name),
    }
}

fn named<'a>(spans: &'a [Span], name: &str) -> Vec<&'a Span> {
    let mut v: Vec<&Span> = spans.iter().filter(|s| s.name == name).collect();
    v.sort_by_key(|s| s.start_time_unix_nano);
    v
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

const KEY: &str = "AIzaOtelPooledKey0001";

/// The proxy binary exporting to `collector` every 50 ms, with `extra` variables.
fn proxy(fake: &FakeUpstream, collector: &Collector, extra: &[(&str, &str)]) -> Binary {
    let mut env = vec![
        ("GEMINI_API_KEY", KEY),
        ("PROXY_CLIENT_KEYS", CLIENT_KEY),
        ("GEMINI_UPSTREAM_URL", fake.url.as_str()),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", collector.url.as_str()),
        ("OTEL_SERVICE_NAME", "otel-test-proxy"),
        ("OTEL_BSP_SCHEDULE_DELAY", "50"),
    ];
    env.extend_from_slice(extra);
    Binary::start(&env, &[])
}

#[tokio::test]
async fn a_generate_and_a_stream_each_export_a_server_span_with_genai_attributes_and_no_prompt() {
    let fake = FakeUpstream::start().await;
    fake.behave(|b| {
        b.usage_extra.thoughts = 7;
        b.usage_extra.cached = 3;
        b.stream_delay = Duration::from_millis(20);
    });
    let collector = Collector::start().await;
    let proxy = proxy(&fake, &collector, &[]);
    let secret_prompt = "the-secret-prompt-otel-7f3a";
    let resp = generate(&proxy.url, "gemini-2.5-flash", secret_prompt).await;
    assert_eq!(resp.status(), 200);
    resp.bytes().await.unwrap();

    let (root, kids) = collector
        .trace_of(
            |s| s.name == "generate_content gemini-2.5-flash" && s.kind == 2,
            2,
        )
        .await;
    assert_eq!(text(&root, "gen_ai.operation.name"), "generate_content");
    assert_eq!(text(&root, "gen_ai.provider.name"), "gcp.gemini");
    assert_eq!(text(&root, "gen_ai.request.model"), "gemini-2.5-flash");
    assert_eq!(text(&root, "gen_ai.response.model"), "gemini-2.5-flash");
    assert_eq!(
        strings(&root, "gen_ai.response.finish_reasons"),
        vec!["STOP"]
    );
    assert!(int(&root, "gen_ai.usage.input_tokens") > 0);
    assert_eq!(int(&root, "gen_ai.usage.reasoning.output_tokens"), 7);
    assert_eq!(int(&root, "gen_ai.usage.cache_read.input_tokens"), 3);
    assert!(int(&root, "gen_ai.usage.output_tokens") > 7);
    assert_eq!(int(&root, "http.response.status_code"), 200);
    assert_eq!(text(&root, "gqp.client"), "client1");
    assert!(text(&root, "gqp.key").ends_with("0001"));
    assert!(!text(&root, "gqp.key").contains(KEY), "the key itself");
    assert!(matches!(attr(&root, "gqp.cost_usd"), Some(Any::DoubleValue(c)) if c > 0.0));
    assert!(
        root.parent_span_id.is_empty(),
        "a root span without a client traceparent"
    );
    // Its children: the admission (the store's answer) and the one attempt.
    let admit = named(&kids, "gqp.admit");
    let attempts = named(&kids, "gqp.upstream.attempt");
    assert_eq!((admit.len(), attempts.len()), (1, 1), "{kids:#?}");
    assert_eq!(admit[0].parent_span_id, root.span_id);
    assert_eq!(text(admit[0], "gqp.store"), "memory");
    assert_eq!(attempts[0].parent_span_id, root.span_id);
    assert_eq!(attempts[0].kind, 3, "a client span");
    assert_eq!(int(attempts[0], "http.response.status_code"), 200);
    assert_eq!(int(attempts[0], "gqp.attempt"), 1);
    // Google got the attempt's trace context.
    let sent = fake.calls(":generateContent");
    let traceparent = sent[0].headers["traceparent"].to_str().unwrap().to_string();
    assert_eq!(
        traceparent,
        format!(
            "00-{}-{}-01",
            hex(&root.trace_id),
            hex(&attempts[0].span_id)
        )
    );

    // A stream: its span ends at the last byte, with the time to the first chunk.
    let resp = stream_sse(&proxy.url, secret_prompt).await;
    assert_eq!(resp.status(), 200);
    resp.bytes().await.unwrap();
    let (stream, _) = collector
        .trace_of(
            |s| s.kind == 2 && attr(s, "gen_ai.request.stream") == Some(Any::BoolValue(true)),
            2,
        )
        .await;
    assert_eq!(text(&stream, "gen_ai.operation.name"), "generate_content");
    assert_eq!(attr(&stream, "gqp.complete"), Some(Any::BoolValue(true)));
    let Some(Any::DoubleValue(ttfc)) = attr(&stream, "gen_ai.response.time_to_first_chunk") else {
        panic!("no time to first chunk: {stream:#?}");
    };
    let total = (stream.end_time_unix_nano - stream.start_time_unix_nano) as f64 / 1e9;
    // Three events 20 ms apart: the span lasts past the first chunk, to the last.
    assert!(ttfc < total, "first chunk {ttfc} s, span {total} s");
    assert!(
        total >= 0.04,
        "the span ended before the stream's end: {total} s"
    );
    assert_eq!(
        strings(&stream, "gen_ai.response.finish_reasons"),
        vec!["STOP"]
    );

    let all = collector.raw_text();
    assert!(!all.contains(secret_prompt), "a prompt was exported");
    assert!(!all.contains(KEY), "a pooled key was exported");
    assert!(!all.contains(CLIENT_KEY), "a client key was exported");
    assert!(
        collector
            .got
            .lock()
            .unwrap()
            .service_names
            .iter()
            .all(|s| s == "otel-test-proxy")
    );
    // The log line carries the trace id.
    let logs = proxy.logs();
    assert!(
        logs.contains(&format!("trace_id={}", hex(&root.trace_id))),
        "{logs}"
    );
    let metrics = metrics_text(&proxy.url).await;
    assert!(
        metrics.contains("gqp_otel_spans_total{outcome=\"exported\"}"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_client_traceparent_is_continued_and_google_gets_the_attempts_own() {
    let fake = FakeUpstream::start().await;
    let collector = Collector::start().await;
    let proxy = proxy(&fake, &collector, &[]);
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent = "00f067aa0ba902b7";
    let resp = http()
        .post(format!(
            "{}/v1beta/models/gemini-2.5-flash:generateContent",
            proxy.url
        ))
        .header("x-goog-api-key", CLIENT_KEY)
        .header("traceparent", format!("00-{trace_id}-{parent}-01"))
        .header("tracestate", "vendor=abc")
        .json(&json!({"contents": [{"parts": [{"text": "hi"}]}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.bytes().await.unwrap();
    let (root, kids) = collector
        .trace_of(|s| hex(&s.trace_id) == trace_id && s.kind == 2, 2)
        .await;
    assert_eq!(hex(&root.parent_span_id), parent);
    assert_eq!(root.trace_state, "vendor=abc");
    let attempt = named(&kids, "gqp.upstream.attempt")[0];
    let sent = &fake.calls(":generateContent")[0];
    assert_eq!(
        sent.headers["traceparent"].to_str().unwrap(),
        format!("00-{trace_id}-{}-01", hex(&attempt.span_id))
    );
    assert_eq!(sent.headers["tracestate"].to_str().unwrap(), "vendor=abc");
}

/// A `tracestate` belongs to the `traceparent` beside it: one sent with a malformed
/// `traceparent` is not passed on beside the proxy's own, and a request without one gets none
/// (not an empty header).
#[tokio::test]
async fn a_tracestate_goes_to_google_only_with_the_trace_it_belongs_to() {
    let fake = FakeUpstream::start().await;
    let collector = Collector::start().await;
    let proxy = proxy(&fake, &collector, &[]);
    let url = format!(
        "{}/v1beta/models/gemini-2.5-flash:generateContent",
        proxy.url
    );
    let body = json!({"contents": [{"parts": [{"text": "hi"}]}]});
    // With a tracestate beside a malformed traceparent, then with no trace headers.
    for traced in [true, false] {
        let mut req = http().post(&url).header("x-goog-api-key", CLIENT_KEY);
        if traced {
            req = req
                .header("traceparent", "00-not-a-trace-01")
                .header("tracestate", "vendor=abc");
        }
        let resp = req.json(&body).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        resp.bytes().await.unwrap();
    }
    let calls = fake.calls(":generateContent");
    assert_eq!(calls.len(), 2);
    for sent in &calls {
        let tp = sent.headers["traceparent"].to_str().unwrap();
        assert!(
            tp.len() == 55 && tp.starts_with("00-") && !tp.contains("not-a-trace"),
            "the proxy's own trace context: {tp}"
        );
        assert!(
            sent.headers.get("tracestate").is_none(),
            "no tracestate: {:?}",
            sent.headers.get("tracestate")
        );
    }
}

#[tokio::test]
async fn a_cache_hit_is_a_span_of_its_own_without_an_upstream_attempt() {
    let fake = FakeUpstream::start().await;
    let collector = Collector::start().await;
    let proxy = proxy(&fake, &collector, &[("PROXY_CACHE", "on")]);
    // The first answer is stored as it ends: asked again until the cache answers.
    let mut hits = 0;
    for _ in 0..50 {
        let resp = http()
            .post(format!(
                "{}/v1beta/models/gemini-2.5-flash:generateContent",
                proxy.url
            ))
            .header("x-goog-api-key", CLIENT_KEY)
            .json(
                &json!({"contents": [{"parts": [{"text": "cache me in a trace"}]}],
                          "generationConfig": {"temperature": 0}}),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let hit = resp.headers()["x-gemini-quota-proxy-cache"] == "HIT";
        resp.bytes().await.unwrap();
        if hit {
            hits += 1;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(hits, 1, "the cache never answered");
    let (hit, kids) = collector
        .trace_of(
            |s| s.kind == 2 && attr(s, "gqp.cache") == Some(Any::StringValue("HIT".into())),
            0,
        )
        .await;
    assert_eq!(text(&hit, "gen_ai.request.model"), "gemini-2.5-flash");
    assert!(kids.is_empty(), "a hit went upstream: {kids:#?}");
    let (miss, kids) = collector
        .trace_of(
            |s| s.kind == 2 && attr(s, "gqp.cache") == Some(Any::StringValue("MISS".into())),
            2,
        )
        .await;
    assert_ne!(miss.trace_id, hit.trace_id);
    assert_eq!(named(&kids, "gqp.upstream.attempt").len(), 1);
}

#[tokio::test]
async fn a_queued_then_retried_request_shows_its_wait_and_both_attempts() {
    let fake = FakeUpstream::start().await;
    let collector = Collector::start().await;
    let toml = std::env::temp_dir().join(format!("gqp-otel-queue-{}.toml", std::process::id()));
    std::fs::write(&toml, "[limits]\nwindow_secs = 1\n").unwrap();
    let proxy = proxy(
        &fake,
        &collector,
        &[
            ("GEMINI_MINUTE_LIMIT", "1"),
            ("PROXY_QUEUE_MAX_WAIT_SECS", "10"),
            ("PROXY_CONFIG", toml.to_str().unwrap()),
        ],
    );
    // The first takes the window's one request; the second waits for the next window.
    let first = generate(&proxy.url, "gemini-2.5-flash", "first").await;
    assert_eq!(first.status(), 200);
    first.bytes().await.unwrap();
    fake.behave(|b| b.script.push_back(Scripted::Status(503)));
    let second = generate(&proxy.url, "gemini-2.5-flash", "second").await;
    assert_eq!(second.status(), 200);
    second.bytes().await.unwrap();

    let (root, kids) = collector
        .trace_of(
            |s| s.kind == 2 && matches!(attr(s, "gqp.attempts"), Some(Any::IntValue(2))),
            4,
        )
        .await;
    let attempts = named(&kids, "gqp.upstream.attempt");
    assert_eq!(attempts.len(), 2, "{kids:#?}");
    assert_eq!(int(attempts[0], "http.response.status_code"), 503);
    assert_eq!(text(attempts[0], "gqp.verdict"), "transient");
    assert!(!text(attempts[0], "gqp.retry_reason").is_empty());
    assert_eq!(
        attempts[0].status.as_ref().map(|s| s.code),
        Some(2),
        "an error"
    );
    assert_eq!(int(attempts[1], "http.response.status_code"), 200);
    assert_eq!(int(attempts[1], "gqp.attempt"), 2);
    let waits = named(&kids, "gqp.queue.wait");
    assert!(!waits.is_empty(), "{kids:#?}");
    let admits = named(&kids, "gqp.admit");
    assert!(admits.iter().any(|a| a.span_id == waits[0].parent_span_id));
    let waited = (waits[0].end_time_unix_nano - waits[0].start_time_unix_nano) as f64 / 1e6;
    assert!(waited > 1.0, "the wait span is {waited} ms");
    assert!(matches!(attr(&root, "gqp.queue.wait_ms"), Some(Any::DoubleValue(w)) if w > 1.0));
    let _ = std::fs::remove_file(toml);
}

#[tokio::test]
async fn with_export_off_nothing_is_sent_and_the_client_traceparent_passes_as_it_came() {
    let fake = FakeUpstream::start().await;
    let collector = Collector::start().await;
    let proxy = Binary::start(
        &[
            ("GEMINI_API_KEY", KEY),
            ("PROXY_CLIENT_KEYS", CLIENT_KEY),
            ("GEMINI_UPSTREAM_URL", fake.url.as_str()),
        ],
        &[],
    );
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let resp = http()
        .post(format!(
            "{}/v1beta/models/gemini-2.5-flash:generateContent",
            proxy.url
        ))
        .header("x-goog-api-key", CLIENT_KEY)
        .header("traceparent", tp)
        .json(&json!({"contents": [{"parts": [{"text": "hi"}]}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.bytes().await.unwrap();
    assert_eq!(fake.calls(":generateContent")[0].headers["traceparent"], tp);
    assert!(!proxy.logs().contains("trace_id="));
    assert!(collector.spans().is_empty());
}

#[tokio::test]
async fn with_record_content_the_prompt_and_the_answer_are_on_the_span() {
    let fake = FakeUpstream::start().await;
    let collector = Collector::start().await;
    let toml = std::env::temp_dir().join(format!("gqp-otel-content-{}.toml", std::process::id()));
    std::fs::write(&toml, "[otel]\nrecord_content = true\n").unwrap();
    let proxy = proxy(
        &fake,
        &collector,
        &[("PROXY_CONFIG", toml.to_str().unwrap())],
    );
    let resp = generate(&proxy.url, "gemini-2.5-flash", "a prompt to record").await;
    assert_eq!(resp.status(), 200);
    resp.bytes().await.unwrap();
    let (root, _) = collector.trace_of(|s| s.kind == 2, 0).await;
    assert!(text(&root, "gen_ai.input.messages").contains("a prompt to record"));
    assert!(text(&root, "gen_ai.output.messages").contains("candidates"));
    let _ = std::fs::remove_file(toml);
}

#[tokio::test]
async fn a_collector_that_never_answers_costs_requests_nothing_and_drops_are_counted() {
    let fake = FakeUpstream::start().await;
    // Accepts connections and never answers: every export hangs until its timeout.
    let stalled = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let stalled_url = format!("http://{}", stalled.local_addr().unwrap());
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((tcp, _)) = stalled.accept().await {
            open.push(tcp);
        }
    });
    let proxy = Binary::start(
        &[
            ("GEMINI_API_KEY", KEY),
            ("PROXY_CLIENT_KEYS", CLIENT_KEY),
            ("GEMINI_UPSTREAM_URL", fake.url.as_str()),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", stalled_url.as_str()),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "2"),
            ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "1"),
            ("OTEL_BSP_SCHEDULE_DELAY", "10"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "60000"),
        ],
        &[],
    );
    for i in 0..5 {
        let resp = generate(&proxy.url, "gemini-2.5-flash", &format!("hi {i}")).await;
        assert_eq!(resp.status(), 200);
        resp.bytes().await.unwrap();
    }
    // The first span hangs in its export, the queue of 2 fills, the rest are dropped.
    let mut metrics = String::new();
    for _ in 0..100 {
        metrics = metrics_text(&proxy.url).await;
        if metrics.contains("gqp_otel_spans_total{outcome=\"dropped\"}") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        metrics.contains("gqp_otel_spans_total{outcome=\"dropped\"}"),
        "{metrics}"
    );
    held.abort();
}

#[tokio::test]
async fn a_live_session_is_one_span_with_setup_go_away_and_close_events() {
    use common::live_upstream::FakeLive;
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let live = FakeLive::start(10).await;
    let collector = Collector::start().await;
    let proxy = Binary::start(
        &[
            ("GEMINI_API_KEY", KEY),
            ("PROXY_CLIENT_KEYS", CLIENT_KEY),
            ("GEMINI_UPSTREAM_URL", live.url.as_str()),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", collector.url.as_str()),
            ("OTEL_BSP_SCHEDULE_DELAY", "50"),
        ],
        &[],
    );
    let url = format!(
        "{}/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent?key={CLIENT_KEY}",
        proxy.url.replacen("http://", "ws://", 1)
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let setup = json!({"setup": {"model": "models/gemini-2.5-flash-native-audio"}});
    ws.send(Message::Text(setup.to_string().into()))
        .await
        .unwrap();
    let next = async |ws: &mut tokio_tungstenite::WebSocketStream<_>| loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => return t.to_string(),
            Ok(Some(Ok(Message::Binary(b)))) => return String::from_utf8_lossy(&b).into_owned(),
            Ok(Some(Ok(_))) => continue,
            other => panic!("no JSON message: {other:?}"),
        }
    };
    assert!(next(&mut ws).await.contains("setupComplete"));
    ws.send(Message::Text("go-away".into())).await.unwrap();
    assert!(next(&mut ws).await.contains("goAway"));
    ws.send(Message::Text("close-me".into())).await.unwrap();
    while let Ok(Some(Ok(_))) = tokio::time::timeout(Duration::from_secs(5), ws.next()).await {}

    let (span, _) = collector
        .trace_of(|s| s.name == "live gemini-2.5-flash-native-audio", 0)
        .await;
    assert_eq!(span.kind, 2);
    assert_eq!(
        text(&span, "gen_ai.request.model"),
        "gemini-2.5-flash-native-audio"
    );
    let events: Vec<&str> = span.events.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(events, vec!["setup", "goAway", "close"]);
    assert_eq!(text(&span, "gqp.live.outcome"), "completed");
}

#[tokio::test]
async fn a_client_trace_not_sampled_exports_nothing_and_google_gets_the_proxys_context() {
    let fake = FakeUpstream::start().await;
    let collector = Collector::start().await;
    let proxy = proxy(&fake, &collector, &[]);
    let trace_id = "0af7651916cd43dd8448eb211c80319c";
    let parent = "b7ad6b7169203331";
    let resp = http()
        .post(format!(
            "{}/v1beta/models/gemini-2.5-flash:generateContent",
            proxy.url
        ))
        .header("x-goog-api-key", CLIENT_KEY)
        .header("traceparent", format!("00-{trace_id}-{parent}-00"))
        .json(&json!({"contents": [{"parts": [{"text": "hi"}]}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.bytes().await.unwrap();
    // A sampled request after it: once its spans are in, the unsampled one would be too.
    let resp = generate(&proxy.url, "gemini-2.5-flash", "after").await;
    resp.bytes().await.unwrap();
    collector.trace_of(|s| s.kind == 2, 2).await;
    assert!(
        collector
            .spans()
            .iter()
            .all(|s| hex(&s.trace_id) != trace_id)
    );
    let sent = fake.calls(":generateContent")[0].headers["traceparent"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(sent.starts_with(&format!("00-{trace_id}-")), "{sent}");
    assert!(sent.ends_with("-00"), "{sent}");
    assert!(
        !sent.contains(parent),
        "the proxy's span is Google's parent: {sent}"
    );
}
