//! A fake Gemini API on 127.0.0.1:0 that speaks Google's wire format: generate, SSE and
//! JSON-array streams with cumulative usageMetadata, countTokens, embed, Imagen `:predict`, Veo
//! `:predictLongRunning` (an operation), `:generateAnswer`, models, OpenAI chat,
//! the resumable upload handshake, cachedContents create, 429 with QuotaFailure + RetryInfo,
//! 400 API_KEY_INVALID, Google's texts that echo client input (an unknown body field, a file
//! name) and 5xx. It records every request so tests can assert what the proxy sent.

use std::collections::{HashMap, HashSet, VecDeque};
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// One request as the fake received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// When it arrived.
    pub at: Instant,
    /// The connection it came on (its source address).
    pub peer: Option<std::net::SocketAddr>,
}

impl Recorded {
    /// The key the request carried (`x-goog-api-key` or Bearer).
    pub fn key(&self) -> Option<String> {
        if let Some(k) = self.headers.get("x-goog-api-key") {
            return k.to_str().ok().map(str::to_string);
        }
        self.headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::to_string)
    }
}

/// A forced answer.
#[derive(Debug, Clone)]
pub enum Scripted {
    /// Google's envelope with this status (503 UNAVAILABLE, 500 INTERNAL, ...).
    Status(u16),
    /// 429 with a per-day QuotaFailure.
    PerDay429,
    /// 429 without details.
    Bare429,
    /// 429 with one QuotaFailure violation (`quota_id`, `quota_value`) and a RetryInfo.
    Quota429 {
        quota_id: &'static str,
        quota_value: u64,
        retry_delay: &'static str,
    },
    /// Google's dead-key answer (400 API_KEY_INVALID) once, whatever the key.
    InvalidKey,
}

/// How the fake behaves; tests change it while it runs.
#[derive(Debug, Default)]
pub struct Behaviour {
    /// Keys Google does not know: 400 API_KEY_INVALID.
    pub invalid_keys: HashSet<String>,
    /// Keys whose project reached a spend-based limit: generate calls answer 429 with a
    /// QuotaFailure naming the monthly spend cap.
    pub spend_capped_keys: HashSet<String>,
    /// Real per-key limit: requests a minute before a 429 with QuotaFailure + RetryInfo.
    pub per_key_rpm: Option<usize>,
    /// Next answers, in order, before normal behaviour resumes.
    pub script: VecDeque<Scripted>,
    /// Answer every generate call with this status.
    pub always_status: Option<u16>,
    /// Generate calls for these models (named in the path, or the OpenAI body's `model`)
    /// answer 503 "The model is overloaded".
    pub overloaded_models: HashSet<String>,
    /// Pause between stream events.
    pub stream_delay: Duration,
    /// Number of events in a stream.
    pub stream_events: usize,
    /// promptTokenCount to report instead of characters / 4.
    pub prompt_tokens: Option<u64>,
    /// Streams break off (the connection is cut) after this many events.
    pub cut_stream_after: Option<usize>,
    /// generateContent answers 200 with a body that is not JSON.
    pub malformed_200: bool,
    /// Wait this long before answering a generate call.
    pub answer_delay: Duration,
    /// Pad the answer to `POST .../cachedContents` to at least this many bytes.
    pub create_answer_bytes: usize,
    /// The last candidate's finishReason instead of `STOP` (`MAX_TOKENS`, `SAFETY`, ...).
    pub finish_reason: Option<&'static str>,
    /// Answer generate calls with a blocked prompt (`promptFeedback.blockReason`).
    pub block_prompt: bool,
    /// Answer generate calls with grounding metadata on the candidate (a search-grounded
    /// answer).
    pub grounding: bool,
    /// Report these too in every usage object (streams: the same on every chunk, as
    /// cumulative usage of a finished thought and tool call would be).
    pub usage_extra: UsageExtra,
    /// generateContent answers send their head and the start of the body at once, then wait
    /// this long before the rest (the `usageMetadata` comes last), as a slow Google answer does.
    pub slow_body: Option<Duration>,
    /// Whitespace (valid JSON) sent before a slow body's `usageMetadata`, in 64 KiB pieces.
    pub slow_body_pad: usize,
    /// Imagen answers return this many fewer images than asked for, each replaced by a
    /// `raiFilteredReason` entry (Google's safety filter).
    pub filtered_images: u64,
}

/// Usage fields beyond the prompt and candidates counts.
#[derive(Debug, Default, Clone, Copy)]
pub struct UsageExtra {
    /// `cachedContentTokenCount` (OpenAI: `prompt_tokens_details.cached_tokens`).
    pub cached: u64,
    /// `thoughtsTokenCount` (OpenAI: `completion_tokens_details.reasoning_tokens`, included
    /// in `completion_tokens`).
    pub thoughts: u64,
    /// `toolUsePromptTokenCount`.
    pub tool: u64,
}

#[derive(Default)]
pub struct FakeState {
    pub behaviour: Mutex<Behaviour>,
    pub recorded: Mutex<Vec<Recorded>>,
    /// Stream events written so far (all streams).
    pub events_sent: AtomicUsize,
    /// Streams still being written (a client that went away must make this fall back to 0).
    pub open_streams: Arc<AtomicUsize>,
    /// Generate calls per key, with their times (for per_key_rpm).
    key_calls: Mutex<HashMap<String, Vec<Instant>>>,
    uploads: Mutex<HashMap<String, (String, Vec<u8>)>>,
    /// The Batch API's jobs (see `fake_batches`).
    pub batches: super::fake_batches::FakeBatches,
    upload_seq: AtomicUsize,
}

pub struct FakeUpstream {
    pub url: String,
    pub state: Arc<FakeState>,
}

impl FakeUpstream {
    pub async fn start() -> FakeUpstream {
        let state = Arc::new(FakeState::default());
        state.behaviour.lock().unwrap().stream_events = 3;
        let app = Router::new().fallback(handle).with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let app = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
            axum::serve(listener, app).await.unwrap();
        });
        FakeUpstream { url, state }
    }

    pub fn recorded(&self) -> Vec<Recorded> {
        self.state.recorded.lock().unwrap().clone()
    }

    /// Requests whose path contains `part`.
    pub fn calls(&self, part: &str) -> Vec<Recorded> {
        self.recorded()
            .into_iter()
            .filter(|r| r.path.contains(part))
            .collect()
    }

    pub fn behave(&self, f: impl FnOnce(&mut Behaviour)) {
        f(&mut self.state.behaviour.lock().unwrap());
    }
}

fn google_error(code: u16, status: &str, message: &str, details: Vec<Value>) -> Response {
    let mut err = json!({"code": code, "message": message, "status": status});
    if !details.is_empty() {
        err["details"] = Value::Array(details);
    }
    (
        StatusCode::from_u16(code).unwrap(),
        [("content-type", "application/json; charset=UTF-8")],
        json!({"error": err}).to_string(),
    )
        .into_response()
}

fn scripted(s: &Scripted) -> Response {
    match s {
        Scripted::Status(503) => google_error(
            503,
            "UNAVAILABLE",
            "The model is overloaded. Please try again later.",
            vec![],
        ),
        Scripted::Status(504) => google_error(
            504,
            "DEADLINE_EXCEEDED",
            "Deadline expired before operation could complete.",
            vec![],
        ),
        Scripted::Status(code) => {
            google_error(*code, "INTERNAL", "An internal error has occurred.", vec![])
        }
        Scripted::Bare429 => google_error(
            429,
            "RESOURCE_EXHAUSTED",
            "Resource has been exhausted (e.g. check quota).",
            vec![],
        ),
        Scripted::Quota429 {
            quota_id,
            quota_value,
            retry_delay,
        } => google_error(
            429,
            "RESOURCE_EXHAUSTED",
            "You exceeded your current quota, please check your plan and billing details.",
            vec![
                json!({"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [{
                    "quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
                    "quotaId": quota_id,
                    "quotaDimensions": {"location": "global", "model": "gemini-2.5-flash"},
                    "quotaValue": quota_value.to_string()}]}),
                json!({"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": retry_delay}),
            ],
        ),
        Scripted::InvalidKey => google_error(
            400,
            "INVALID_ARGUMENT",
            "API key not valid. Please pass a valid API key.",
            vec![
                json!({"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID", "domain": "googleapis.com", "metadata": {"service": "generativelanguage.googleapis.com"}}),
                json!({"@type": "type.googleapis.com/google.rpc.LocalizedMessage", "locale": "en-US", "message": "API key not valid. Please pass a valid API key."}),
            ],
        ),
        Scripted::PerDay429 => google_error(
            429,
            "RESOURCE_EXHAUSTED",
            "You exceeded your current quota, please check your plan and billing details.",
            vec![
                json!({"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [{
                    "quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
                    "quotaId": "GenerateRequestsPerDayPerProjectPerModel-FreeTier",
                    "quotaDimensions": {"location": "global", "model": "gemini-2.5-flash"},
                    "quotaValue": "250"}]}),
                json!({"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "17s"}),
            ],
        ),
    }
}

/// Characters of every `text` in the body / 4, rounded up.
fn text_tokens(body: &Value) -> u64 {
    fn walk(v: &Value, acc: &mut u64) {
        match v {
            Value::Object(o) => {
                for (k, v) in o {
                    if (k == "text" || k == "content") && v.is_string() {
                        *acc += v.as_str().unwrap().chars().count() as u64;
                    } else {
                        walk(v, acc);
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|v| walk(v, acc)),
            _ => {}
        }
    }
    let mut chars = 0;
    walk(body, &mut chars);
    chars.div_ceil(4)
}

fn first_text(body: &Value) -> String {
    body.pointer("/contents/0/parts/0/text")
        .or_else(|| body.pointer("/messages/0/content"))
        .and_then(Value::as_str)
        .unwrap_or("")
        .chars()
        .take(40)
        .collect()
}

fn candidate(text: &str, usage: Value, finish: Option<&str>) -> Value {
    let mut c = json!({"content": {"role": "model", "parts": [{"text": text}]}, "index": 0});
    if let Some(reason) = finish {
        c["finishReason"] = json!(reason);
    }
    json!({"candidates": [c], "usageMetadata": usage, "modelVersion": "gemini-2.5-flash", "responseId": "fake-1"})
}

fn usage(prompt: u64, out: u64, x: UsageExtra) -> Value {
    let mut u = json!({"promptTokenCount": prompt, "candidatesTokenCount": out,
           "totalTokenCount": prompt + out + x.thoughts + x.tool,
           "promptTokensDetails": [{"modality": "TEXT", "tokenCount": prompt}]});
    // Google leaves a zero count out.
    for (name, v) in [
        ("cachedContentTokenCount", x.cached),
        ("thoughtsTokenCount", x.thoughts),
        ("toolUsePromptTokenCount", x.tool),
    ] {
        if v > 0 {
            u[name] = json!(v);
        }
    }
    if x.cached > 0 {
        u["cacheTokensDetails"] = json!([{"modality": "TEXT", "tokenCount": x.cached}]);
    }
    u
}

async fn handle(State(st): State<Arc<FakeState>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    let path = parts.uri.path().to_string();
    let query = parts.uri.query().map(str::to_string);
    let rec = Recorded {
        method: parts.method.to_string(),
        path: path.clone(),
        query: query.clone(),
        headers: parts.headers.clone(),
        body: body.clone(),
        at: Instant::now(),
        peer: parts
            .extensions
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map(|c| c.0),
    };
    let key = rec.key();
    st.recorded.lock().unwrap().push(rec);

    let Some(key) = key else {
        return google_error(
            403,
            "PERMISSION_DENIED",
            "Method doesn't allow unregistered callers (callers without established identity). Please use API Key or other form of API consumer identity to call this API.",
            vec![],
        );
    };
    if st.behaviour.lock().unwrap().invalid_keys.contains(&key) {
        return scripted(&Scripted::InvalidKey);
    }
    let is_generate_call = path.contains(":generateContent")
        || path.contains(":streamGenerateContent")
        || path.ends_with("/chat/completions");
    if is_generate_call
        && st
            .behaviour
            .lock()
            .unwrap()
            .spend_capped_keys
            .contains(&key)
    {
        return google_error(
            429,
            "RESOURCE_EXHAUSTED",
            "You exceeded your current quota, please check your plan and billing details.",
            vec![
                json!({"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [{
                    "quotaMetric": "generativelanguage.googleapis.com/monthly_spend",
                    "quotaId": "MonthlySpendCapPerProject-Tier1",
                    "quotaDimensions": {"location": "global"},
                    "quotaValue": "250"}]}),
            ],
        );
    }
    let json_body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    // A batch creation takes the next scripted answer too (a 503 before it is created).
    if path.contains(":batchGenerateContent") {
        let forced = st.behaviour.lock().unwrap().script.pop_front();
        if let Some(s) = forced {
            return scripted(&s);
        }
    }
    if let Some(r) =
        super::fake_batches::handle(&st.batches, parts.method.as_str(), &path, &key, &json_body)
    {
        return r;
    }
    let is_generate = path.contains(":generateContent")
        || path.contains(":streamGenerateContent")
        || path.ends_with("/chat/completions");
    let is_embed = path.contains(":embedContent") || path.contains(":batchEmbedContents");

    // Google checks the body against the request's schema and echoes an unknown field's name,
    // whatever it is, in its message.
    if path.contains(":generateContent") || path.contains(":streamGenerateContent") {
        const KNOWN: &[&str] = &[
            "contents",
            "tools",
            "toolConfig",
            "safetySettings",
            "systemInstruction",
            "generationConfig",
            "cachedContent",
            "labels",
            "model",
        ];
        if let Some(unknown) = json_body
            .as_object()
            .and_then(|o| o.keys().find(|k| !KNOWN.contains(&k.as_str())))
        {
            let message = format!(
                "Invalid JSON payload received. Unknown name \"{unknown}\": Cannot find field."
            );
            return google_error(
                400,
                "INVALID_ARGUMENT",
                &message,
                vec![json!({"@type": "type.googleapis.com/google.rpc.BadRequest",
                    "fieldViolations": [{"description": message}]})],
            );
        }
    }

    if is_embed {
        let forced = st.behaviour.lock().unwrap().script.pop_front();
        if let Some(s) = forced {
            return scripted(&s);
        }
    }
    if is_generate {
        let (forced, always, rpm, delay, malformed) = {
            let mut b = st.behaviour.lock().unwrap();
            (
                b.script.pop_front(),
                b.always_status,
                b.per_key_rpm,
                b.answer_delay,
                b.malformed_200,
            )
        };
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if malformed && path.contains(":generateContent") {
            return Response::builder()
                .status(200)
                .header("content-type", "application/json; charset=UTF-8")
                .body(Body::from("{\"candidates\": [{\"content\": <<<not json"))
                .unwrap();
        }
        if let Some(s) = forced {
            return scripted(&s);
        }
        if let Some(code) = always {
            return scripted(&Scripted::Status(code));
        }
        let model = path
            .split("/models/")
            .nth(1)
            .and_then(|m| m.split(':').next())
            .or_else(|| json_body["model"].as_str())
            .map(|m| m.strip_prefix("models/").unwrap_or(m).to_string());
        if model.is_some_and(|m| st.behaviour.lock().unwrap().overloaded_models.contains(&m)) {
            return scripted(&Scripted::Status(503));
        }
        if let Some(limit) = rpm {
            let mut calls = st.key_calls.lock().unwrap();
            let v = calls.entry(key.clone()).or_default();
            v.retain(|t| t.elapsed() < Duration::from_secs(60));
            if v.len() >= limit {
                let wait = 60.0 - v[0].elapsed().as_secs_f64();
                return google_error(
                    429,
                    "RESOURCE_EXHAUSTED",
                    "You exceeded your current quota, please check your plan and billing details.",
                    vec![
                        json!({"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [{
                        "quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
                        "quotaId": "GenerateRequestsPerMinutePerProjectPerModel-FreeTier",
                        "quotaDimensions": {"location": "global", "model": "gemini-2.5-flash"},
                        "quotaValue": limit.to_string()}]}),
                        json!({"@type": "type.googleapis.com/google.rpc.Help", "links": [{"description": "Learn more", "url": "https://ai.google.dev/gemini-api/docs/rate-limits"}]}),
                        json!({"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": format!("{wait:.6}s")}),
                    ],
                );
            }
            v.push(Instant::now());
        }
    }
    let (prompt, extra) = {
        let b = st.behaviour.lock().unwrap();
        (
            b.prompt_tokens.unwrap_or_else(|| text_tokens(&json_body)),
            b.usage_extra,
        )
    };

    if path.ends_with("/openai/images/generations") {
        // OpenAI-shaped image generation: `n` images (default 1) as base64, no usage.
        let n = json_body["n"].as_u64().unwrap_or(1);
        let data: Vec<Value> = (0..n)
            .map(|_| json!({"b64_json": "iVBORw0KGgo=", "revised_prompt": first_text(&json_body)}))
            .collect();
        return axum::Json(json!({"created": 1, "data": data})).into_response();
    }
    if path.ends_with("/openai/chat/completions") {
        return axum::Json(json!({
            "id": "chatcmpl-fake", "object": "chat.completion", "created": 1, "model": json_body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": format!("echo: {}", first_text(&json_body))}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": prompt, "completion_tokens": 3 + extra.thoughts,
                      "total_tokens": prompt + 3 + extra.thoughts,
                      "prompt_tokens_details": {"cached_tokens": extra.cached},
                      "completion_tokens_details": {"reasoning_tokens": extra.thoughts}}
        })).into_response();
    }
    let (finish, blocked, grounding) = {
        let b = st.behaviour.lock().unwrap();
        (
            b.finish_reason.unwrap_or("STOP"),
            b.block_prompt,
            b.grounding,
        )
    };
    if path.contains(":generateContent") {
        if blocked {
            return axum::Json(json!({"promptFeedback": {"blockReason": "SAFETY"},
                "usageMetadata": usage(prompt, 0, extra)}))
            .into_response();
        }
        let mut answer = candidate(
            &format!("echo: {}", first_text(&json_body)),
            usage(prompt, 3, extra),
            Some(finish),
        );
        if grounding {
            answer["candidates"][0]["groundingMetadata"] =
                json!({"webSearchQueries": ["q"], "groundingChunks": []});
        }
        let (slow, pad) = {
            let b = st.behaviour.lock().unwrap();
            (b.slow_body, b.slow_body_pad)
        };
        if let Some(pause) = slow {
            return slow_answer(answer.to_string(), pause, pad);
        }
        return axum::Json(answer).into_response();
    }
    if path.contains(":streamGenerateContent") {
        let sse = query.as_deref().is_some_and(|q| q.contains("alt=sse"));
        let (delay, n, cut) = {
            let b = st.behaviour.lock().unwrap();
            (b.stream_delay, b.stream_events.max(1), b.cut_stream_after)
        };
        let st2 = st.clone();
        let stream = async_stream(n, delay, sse, prompt, extra, finish, st2);
        let stream: std::pin::Pin<
            Box<dyn futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send>,
        > = match cut {
            // An error item makes the server abort the connection mid-body.
            Some(k) => Box::pin(futures_util::StreamExt::chain(
                futures_util::StreamExt::map(futures_util::StreamExt::take(stream, k), |r| {
                    r.map_err(|e| match e {})
                }),
                futures_util::stream::once(async { Err(std::io::Error::other("cut")) }),
            )),
            None => Box::pin(futures_util::StreamExt::map(stream, |r| {
                r.map_err(|e| match e {})
            })),
        };
        let ct = if sse {
            "text/event-stream"
        } else {
            "application/json; charset=UTF-8"
        };
        return Response::builder()
            .status(200)
            .header("content-type", ct)
            .body(Body::from_stream(stream))
            .unwrap();
    }
    if path.contains(":predictLongRunning") {
        // Veo: a long-running operation, polled at models/MODEL/operations/ID.
        let model = path
            .rsplit('/')
            .next()
            .and_then(|m| m.split(':').next())
            .unwrap_or("veo");
        return axum::Json(json!({"name": format!("models/{model}/operations/op1")}))
            .into_response();
    }
    if path.contains(":predict") {
        // Imagen: one prediction per image asked for (parameters.sampleCount, default 4).
        let n = json_body
            .pointer("/parameters/sampleCount")
            .and_then(Value::as_u64)
            .unwrap_or(4);
        let filtered = st.behaviour.lock().unwrap().filtered_images.min(n);
        let predictions: Vec<Value> = (0..n)
            .map(|i| if i < n - filtered {
                json!({"bytesBase64Encoded": "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==", "mimeType": "image/png"})
            } else {
                json!({"raiFilteredReason": "Your current safety filter threshold filtered out this generated image."})
            })
            .collect();
        return axum::Json(json!({"predictions": predictions})).into_response();
    }
    if path.contains(":generateAnswer") {
        // Attributed question answering: an answer and how answerable it was; no usage.
        return axum::Json(json!({
            "answer": {"content": {"parts": [{"text": format!("answer: {}", first_text(&json_body))}], "role": "model"},
                       "finishReason": "STOP", "index": 0},
            "answerableProbability": 0.9
        }))
        .into_response();
    }
    if path.contains(":countTokens") {
        return axum::Json(json!({"totalTokens": text_tokens(&json_body), "promptTokensDetails": [{"modality": "TEXT", "tokenCount": text_tokens(&json_body)}]})).into_response();
    }
    if path.contains(":batchEmbedContents") {
        let n = json_body["requests"].as_array().map_or(1, Vec::len);
        return axum::Json(json!({"embeddings": (0..n).map(|_| json!({"values": [0.1, 0.2, 0.3]})).collect::<Vec<_>>()})).into_response();
    }
    if path.contains(":embedContent") {
        return axum::Json(json!({"embedding": {"values": [0.1, 0.2, 0.3]}})).into_response();
    }
    if (path == "/v1beta/cachedContents" || path == "/v1/cachedContents") && parts.method == "POST"
    {
        // Google's CachedContent answer: the name it made, the model, usage (never the contents).
        let pad = st.behaviour.lock().unwrap().create_answer_bytes;
        let mut answer = json!({"name": "cachedContents/c1", "model": json_body["model"],
            "createTime": "2026-01-01T00:00:00Z", "expireTime": "2026-01-01T01:00:00Z",
            "usageMetadata": {"totalTokenCount": prompt}});
        if pad > 0 {
            answer["displayName"] = json!("d".repeat(pad));
        }
        return axum::Json(answer).into_response();
    }
    if path.ends_with("/models") {
        return axum::Json(json!({"models": [model_json("gemini-2.5-flash"), model_json("gemini-2.5-pro"), model_json("gemini-embedding-001")]})).into_response();
    }
    if let Some(op) = path
        .strip_prefix("/v1beta/")
        .filter(|p| p.contains("/operations/"))
    {
        // A finished Veo operation.
        return axum::Json(json!({"name": op, "done": true, "response": {"@type": "type.googleapis.com/google.ai.generativelanguage.v1beta.PredictLongRunningResponse",
            "generateVideoResponse": {"generatedSamples": [{"video": {"uri": "https://generativelanguage.googleapis.com/v1beta/files/v1:download?alt=media"}}]}}}))
        .into_response();
    }
    if let Some(m) = path.strip_prefix("/v1beta/models/") {
        return axum::Json(model_json(m)).into_response();
    }
    if path == "/upload/v1beta/files" || path == "/upload/v1/files" {
        return upload(
            &st,
            &path,
            &parts.headers,
            query.as_deref(),
            &json_body,
            body,
        )
        .await;
    }
    if path == "/v1beta/files" || path == "/v1/files" {
        // Every uploaded file, and one made outside the proxy (Google lists the project's).
        let uploads = st.uploads.lock().unwrap();
        let mut files: Vec<Value> = uploads
            .values()
            .map(|(name, data)| file_json(name, data.len()))
            .collect();
        files.push(file_json("files/made-elsewhere", 1));
        return axum::Json(json!({"files": files, "nextPageToken": "next-page"})).into_response();
    }
    if let Some(id) = path
        .strip_prefix("/v1beta/files/")
        .or_else(|| path.strip_prefix("/v1/files/"))
    {
        let uploads = st.uploads.lock().unwrap();
        return match uploads
            .values()
            .find(|(name, _)| name == &format!("files/{id}"))
        {
            Some((name, data)) => axum::Json(file_json(name, data.len())).into_response(),
            None => google_error(
                403,
                "PERMISSION_DENIED",
                &format!("You do not have permission to access the File {id} or it may not exist."),
                vec![],
            ),
        };
    }
    google_error(
        404,
        "NOT_FOUND",
        &format!("fake upstream has no {path}"),
        vec![],
    )
}

/// `answer` up to its `"usageMetadata"` at once, then after `pause` `pad` bytes of
/// whitespace and the rest.
fn slow_answer(answer: String, pause: Duration, pad: usize) -> Response {
    let at = answer.find("\"usageMetadata\"").unwrap_or(answer.len());
    let (head, tail) = answer.split_at(at);
    let head = Bytes::from(head.to_string());
    let tail = Bytes::from(tail.to_string());
    let pieces = pad.div_ceil(64 * 1024);
    let stream = futures_util::stream::unfold(0usize, move |i| {
        let (head, tail) = (head.clone(), tail.clone());
        async move {
            let piece = match i {
                0 => head,
                _ if i <= pieces => {
                    if i == 1 {
                        tokio::time::sleep(pause).await;
                    }
                    let n = (pad - (i - 1) * 64 * 1024).min(64 * 1024);
                    Bytes::from(" ".repeat(n))
                }
                _ if i == pieces + 1 => {
                    if pieces == 0 {
                        tokio::time::sleep(pause).await;
                    }
                    tail
                }
                _ => return None,
            };
            Some((Ok::<_, Infallible>(piece), i + 1))
        }
    });
    Response::builder()
        .status(200)
        .header("content-type", "application/json; charset=UTF-8")
        .body(Body::from_stream(stream))
        .unwrap()
}

fn model_json(m: &str) -> Value {
    json!({"name": format!("models/{m}"), "version": "001", "displayName": m, "inputTokenLimit": 1048576,
           "outputTokenLimit": 65536, "supportedGenerationMethods": ["generateContent", "countTokens"]})
}

fn file_json(name: &str, size: usize) -> Value {
    json!({"name": name, "mimeType": "text/plain", "sizeBytes": size.to_string(), "state": "ACTIVE",
           "uri": format!("https://generativelanguage.googleapis.com/v1beta/{name}"),
           "createTime": "2026-01-01T00:00:00Z", "updateTime": "2026-01-01T00:00:00Z", "expirationTime": "2026-01-03T00:00:00Z",
           "sha256Hash": "ZmFrZQ==", "source": "UPLOADED"})
}

async fn upload(
    st: &FakeState,
    path: &str,
    headers: &HeaderMap,
    query: Option<&str>,
    meta: &Value,
    body: Bytes,
) -> Response {
    let command = headers
        .get("x-goog-upload-command")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if command == "start" {
        let id = format!("UP{}", st.upload_seq.fetch_add(1, Ordering::SeqCst) + 1);
        let name = meta
            .pointer("/file/name")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| format!("files/f{}", id.to_lowercase()));
        st.uploads
            .lock()
            .unwrap()
            .insert(id.clone(), (name, Vec::new()));
        // Google answers with its own absolute URL; the proxy must point it at itself. The
        // key it was called with rides in the query (as `key` and `$key`): the proxy must take
        // it out, or the client would hold a pooled key.
        let key = headers
            .get("x-goog-api-key")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let url = format!(
            "https://generativelanguage.googleapis.com{path}?key={key}&upload_id={id}&$key={key}&upload_protocol=resumable"
        );
        return Response::builder()
            .status(200)
            .header("x-goog-upload-url", url)
            .header("x-goog-upload-status", "active")
            .header("x-goog-upload-chunk-granularity", "8388608")
            .header("content-type", "application/json; charset=UTF-8")
            .body(Body::from("{}"))
            .unwrap();
    }
    let id = query
        .and_then(|q| q.split('&').find_map(|p| p.strip_prefix("upload_id=")))
        .unwrap_or("");
    let mut uploads = st.uploads.lock().unwrap();
    let Some((name, data)) = uploads.get_mut(id) else {
        return google_error(404, "NOT_FOUND", "unknown upload session", vec![]);
    };
    data.extend_from_slice(&body);
    if command.contains("finalize") {
        let j = json!({"file": file_json(name, data.len())});
        return Response::builder()
            .status(200)
            .header("x-goog-upload-status", "final")
            .header("content-type", "application/json; charset=UTF-8")
            .body(Body::from(j.to_string()))
            .unwrap();
    }
    Response::builder()
        .status(200)
        .header("x-goog-upload-status", "active")
        .body(Body::empty())
        .unwrap()
}

/// SSE: `data: {...}\r\n\r\n` per event; JSON array: `[{...}\n,\r\n{...}]` in uneven pieces.
fn async_stream(
    n: usize,
    delay: Duration,
    sse: bool,
    prompt: u64,
    extra: UsageExtra,
    finish: &'static str,
    st: Arc<FakeState>,
) -> impl futures_util::Stream<Item = Result<Bytes, Infallible>> {
    let guard = OpenStream::new(st.open_streams.clone());
    futures_util::stream::unfold(0usize, move |i| {
        let st = st.clone();
        let _alive = &guard;
        async move {
            if i > n {
                return None;
            }
            if i > 0 && i < n && !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            if i == n {
                // Closing piece.
                return if sse {
                    None
                } else {
                    Some((Ok(Bytes::from_static(b"]")), i + 1))
                };
            }
            let ev = candidate(
                &format!("chunk {i} "),
                usage(prompt, (i as u64 + 1) * 2, extra),
                (i + 1 == n).then_some(finish),
            )
            .to_string();
            st.events_sent.fetch_add(1, Ordering::SeqCst);
            let piece = if sse {
                format!("data: {ev}\r\n\r\n")
            } else if i == 0 {
                format!("[{ev}")
            } else {
                format!("\n,\r\n{ev}")
            };
            Some((Ok(Bytes::from(piece)), i + 1))
        }
    })
}

/// Counts an open stream until the stream is dropped (finished or abandoned).
struct OpenStream(Arc<AtomicUsize>);

impl OpenStream {
    fn new(n: Arc<AtomicUsize>) -> Self {
        n.fetch_add(1, Ordering::SeqCst);
        OpenStream(n)
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}
