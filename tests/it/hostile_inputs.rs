//! Hostile inputs over a real socket: every one is answered by the proxy itself in Google's
//! error envelope, none reaches the upstream, and the proxy stays healthy afterwards.

use crate::common;

use base64::Engine;
use bytes::Bytes;
use common::*;
use serde_json::Value;

/// Which proxy a row is sent to.
#[derive(Clone, Copy, Debug)]
enum Target {
    /// Default body limit (20 MB), `GEMINI_MAX_REQUEST_TOKENS=50`.
    Main,
    /// `max_body_bytes = 1024`.
    Small,
}

/// The credential a row presents.
#[derive(Clone, Copy, Debug)]
enum Cred {
    /// `x-goog-api-key: CLIENT_KEY`.
    Client,
    /// `Authorization: Bearer CLIENT_KEY` (OpenAI clients).
    Bearer,
    /// `Authorization: Bearer ADMIN_TOKEN`.
    Admin,
    /// `x-goog-api-key` with a key the proxy does not know.
    Wrong,
    None,
}

/// How the body goes on the wire.
enum Payload {
    /// No body at all.
    Empty,
    /// With a Content-Length header.
    Sized(Vec<u8>),
    /// `Transfer-Encoding: chunked`, no Content-Length, in pieces of this many bytes.
    Chunked(Vec<u8>, usize),
}

struct Row {
    name: &'static str,
    target: Target,
    method: reqwest::Method,
    /// Raw path and query, already percent-encoded the way a client sends it.
    path: String,
    cred: Cred,
    headers: Vec<(&'static str, String)>,
    payload: Payload,
    status: u16,
    google: &'static str,
    /// A fragment the message must contain: proves the intended check refused it.
    msg: Option<&'static str>,
}

fn row(name: &'static str, path: impl Into<String>, body: impl Into<Vec<u8>>) -> Row {
    Row {
        name,
        target: Target::Main,
        method: reqwest::Method::POST,
        path: path.into(),
        cred: Cred::Client,
        headers: vec![("content-type", "application/json".to_string())],
        payload: Payload::Sized(body.into()),
        status: 400,
        google: "INVALID_ARGUMENT",
        msg: None,
    }
}

impl Row {
    fn expect(mut self, status: u16, google: &'static str) -> Row {
        self.status = status;
        self.google = google;
        self
    }
    fn msg(mut self, fragment: &'static str) -> Row {
        self.msg = Some(fragment);
        self
    }
    fn cred(mut self, c: Cred) -> Row {
        self.cred = c;
        self
    }
    fn method(mut self, m: reqwest::Method) -> Row {
        self.method = m;
        self
    }
    fn target(mut self, t: Target) -> Row {
        self.target = t;
        self
    }
    fn payload(mut self, p: Payload) -> Row {
        self.payload = p;
        self
    }
}

const GEN: &str = "/v1beta/models/gemini-2.5-flash:generateContent";
const EMBED: &str = "/v1beta/models/gemini-embedding-001:embedContent";
const BATCH_EMBED: &str = "/v1beta/models/gemini-embedding-001:batchEmbedContents";
const CHAT: &str = "/v1beta/openai/chat/completions";
const RESET: &str = "/api/ai/quota-status/";

fn gen_model(model: &str) -> String {
    format!("/v1beta/models/{model}:generateContent")
}

fn table() -> Vec<Row> {
    use reqwest::Method;
    let ok_body = br#"{"contents":[{"parts":[{"text":"hello"}]}]}"#.to_vec();
    let deep_arrays = "[".repeat(100_000);
    let deep_objects = r#"{"a":"#.repeat(100_000);
    let mut bad_utf8 = br#"{"contents":[{"parts":[{"text":"ab"#.to_vec();
    bad_utf8.extend_from_slice(b"\xff\xfe\xc3\x28");
    bad_utf8.extend_from_slice(br#"cd"}]}]}"#);
    let big = format!(
        r#"{{"contents":[{{"parts":[{{"text":"{}"}}]}}]}}"#,
        "x".repeat(4096)
    )
    .into_bytes();
    let long_prompt = format!(
        r#"{{"contents":[{{"parts":[{{"text":"{}"}}]}}]}}"#,
        "y".repeat(400)
    );
    // A PNG header claiming 4294967295 x 4294967295 px: about 8e15 tokens by Google's tile rule.
    let mut huge_png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
    huge_png.extend_from_slice(&u32::MAX.to_be_bytes());
    huge_png.extend_from_slice(&u32::MAX.to_be_bytes());
    huge_png.extend_from_slice(&[8, 6, 0, 0, 0]);
    let huge_png = base64::engine::general_purpose::STANDARD.encode(&huge_png);
    let part = format!(r#"{{"inlineData":{{"mimeType":"image/png","data":"{huge_png}"}}}}"#);
    let many_huge_images = format!(
        r#"{{"contents":[{{"parts":[{}]}}]}}"#,
        vec![part; 3000].join(",")
    );
    vec![
        // Bodies that are not JSON, or not the JSON Google expects.
        row(
            "malformed JSON",
            GEN,
            r#"{"contents": [{"parts": [{"text": "hi"}]"#,
        )
        .msg("Invalid JSON payload"),
        row("invalid UTF-8 inside a JSON string", GEN, bad_utf8).msg("Invalid JSON payload"),
        row(
            "lone surrogate escape in a string",
            GEN,
            r#"{"contents":[{"parts":[{"text":"\ud800"}]}]}"#,
        )
        .msg("Invalid JSON payload"),
        row("100000 nested arrays", GEN, deep_arrays).msg("recursion limit"),
        row(r#"100000 nested {"a":"#, GEN, deep_objects).msg("recursion limit"),
        row("number out of range (1e999)", GEN, r#"{"contents": 1e999}"#)
            .msg("Invalid JSON payload"),
        row("contents is a string", GEN, r#"{"contents": "hello"}"#),
        row("contents is a number", GEN, r#"{"contents": 42}"#),
        row(
            "contents is an object",
            GEN,
            r#"{"contents": {"parts": []}}"#,
        ),
        row("contents item is a number", GEN, r#"{"contents": [1]}"#),
        row(
            "parts is a string",
            GEN,
            r#"{"contents": [{"parts": "hello"}]}"#,
        ),
        row(
            "part text is a number",
            GEN,
            r#"{"contents": [{"parts": [{"text": 5}]}]}"#,
        ),
        row("empty body", GEN, "").payload(Payload::Empty),
        row("whitespace-only body", GEN, " \r\n\t "),
        row("body is a JSON array", GEN, r#"[{"contents": []}]"#),
        row("body is JSON null", GEN, "null"),
        row(
            "streamGenerateContent with malformed JSON",
            "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
            "{{{",
        ),
        // Size limits (proxy with max_body_bytes = 1024).
        row("body over max_body_bytes, Content-Length", GEN, big.clone())
            .target(Target::Small)
            .expect(413, "INVALID_ARGUMENT")
            .msg("exceeds the limit"),
        row("body over max_body_bytes, chunked", GEN, "")
            .payload(Payload::Chunked(big, 256))
            .target(Target::Small)
            .expect(413, "INVALID_ARGUMENT")
            .msg("exceeds the limit"),
        // Model names outside Google's alphabet.
        row(
            "model ..%2f..%2fx (encoded traversal)",
            gen_model("..%2f..%2fx"),
            ok_body.clone(),
        )
        .msg("is not valid"),
        row(
            "model %2e%2e (encoded dot-dot)",
            gen_model("%2e%2e"),
            ok_body.clone(),
        )
        .msg("is not valid"),
        row("model a%20b (space)", gen_model("a%20b"), ok_body.clone()).msg("is not valid"),
        row("empty model", gen_model(""), ok_body.clone()).msg("is not valid"),
        row(
            "model gemini%3Cscript%3E",
            gen_model("gemini%3Cscript%3E"),
            ok_body.clone(),
        )
        .msg("is not valid"),
        row(
            "300-character model name",
            gen_model(&"m".repeat(300)),
            ok_body.clone(),
        )
        .msg("is not valid"),
        row(
            "action with a space (gen%20erate)",
            "/v1beta/models/gemini-2.5-flash:gen%20erate",
            ok_body.clone(),
        ),
        // Paths outside the Gemini surface.
        row("unknown path /admin", "/admin", "")
            .method(Method::GET)
            .expect(404, "NOT_FOUND"),
        row("unknown path /v2/models", "/v2/models", "")
            .method(Method::GET)
            .expect(404, "NOT_FOUND"),
        row("unknown path /etc/passwd", "/etc/passwd", "")
            .method(Method::GET)
            .expect(404, "NOT_FOUND"),
        row("bare /v1beta", "/v1beta", "")
            .method(Method::GET)
            .expect(404, "NOT_FOUND"),
        row("empty segment /v1beta//models", "/v1beta//models", "")
            .method(Method::GET)
            .expect(404, "NOT_FOUND"),
        // Credentials.
        row("missing client key", GEN, ok_body.clone())
            .cred(Cred::None)
            .expect(401, "UNAUTHENTICATED"),
        row("wrong client key", GEN, ok_body.clone())
            .cred(Cred::Wrong)
            .expect(403, "PERMISSION_DENIED"),
        // OpenAI-compatible bodies.
        row(
            "OpenAI chat without model",
            CHAT,
            r#"{"messages": [{"role": "user", "content": "hi"}]}"#,
        )
        .cred(Cred::Bearer),
        row(
            "OpenAI chat with model a number",
            CHAT,
            r#"{"model": 7, "messages": [{"role": "user", "content": "hi"}]}"#,
        )
        .cred(Cred::Bearer),
        row(
            "OpenAI chat with model ../x",
            CHAT,
            r#"{"model": "../x", "messages": [{"role": "user", "content": "hi"}]}"#,
        )
        .cred(Cred::Bearer),
        row(
            "OpenAI chat with messages not an array",
            CHAT,
            r#"{"model": "gemini-2.5-flash", "messages": "hi"}"#,
        )
        .cred(Cred::Bearer),
        row(
            "OpenAI embeddings without input",
            "/v1beta/openai/embeddings",
            r#"{"model": "gemini-embedding-001"}"#,
        )
        .cred(Cred::Bearer),
        // Embeddings.
        row("embedContent without content", EMBED, r#"{"model": "x"}"#),
        row(
            "batchEmbedContents with requests not an array",
            BATCH_EMBED,
            r#"{"requests": {"content": {"parts": [{"text": "hi"}]}}}"#,
        ),
        // Admission: estimate over GEMINI_MAX_REQUEST_TOKENS=50.
        row("estimate over GEMINI_MAX_REQUEST_TOKENS", GEN, long_prompt)
            .msg("estimated at 100 input tokens"),
        row(
            "3000 inline PNGs of 4294967295x4294967295 px (token sum overflows u64)",
            GEN,
            many_huge_images,
        )
        .msg("estimated at 18446744073709551615"),
        // Admin reset endpoint.
        row(
            "quota-status reset with an unknown quota_type",
            RESET,
            r#"{"quota_type": "everything"}"#,
        )
        .cred(Cred::Admin)
        .msg("unknown quota_type"),
        row(
            "quota-status reset with malformed JSON",
            RESET,
            r#"{"quota_type": "#,
        )
        .cred(Cred::Admin)
        .msg("expected a JSON body"),
    ]
}

async fn send(c: &reqwest::Client, base: &str, r: &Row) -> reqwest::Response {
    let mut req = c.request(r.method.clone(), format!("{base}{}", r.path));
    req = match r.cred {
        Cred::Client => req.header("x-goog-api-key", CLIENT_KEY),
        Cred::Bearer => req.header("authorization", format!("Bearer {CLIENT_KEY}")),
        Cred::Admin => req.header("authorization", format!("Bearer {ADMIN_TOKEN}")),
        Cred::Wrong => req.header("x-goog-api-key", "not-a-client-key-at-all"),
        Cred::None => req,
    };
    for (k, v) in &r.headers {
        req = req.header(*k, v);
    }
    req = match &r.payload {
        Payload::Empty => req,
        Payload::Sized(b) => req.body(b.clone()),
        Payload::Chunked(b, piece) => {
            let pieces: Vec<Result<Bytes, std::io::Error>> = b
                .chunks(*piece)
                .map(|c| Ok(Bytes::copy_from_slice(c)))
                .collect();
            req.body(reqwest::Body::wrap_stream(futures_util::stream::iter(
                pieces,
            )))
        }
    };
    req.send()
        .await
        .unwrap_or_else(|e| panic!("{}: request failed: {e}", r.name))
}

#[tokio::test]
async fn hostile_inputs_get_googles_envelope_and_never_reach_the_upstream() {
    let fake = FakeUpstream::start().await;
    let main = start_proxy(
        &fake.url,
        ProxyOpts::keys(&["AIzaHostileKeyNumber0001"]).env("GEMINI_MAX_REQUEST_TOKENS", "50"),
    )
    .await;
    let small = start_proxy(
        &fake.url,
        ProxyOpts::keys(&["AIzaHostileKeyNumber0002"]).toml("[server]\nmax_body_bytes = 1024\n"),
    )
    .await;
    let c = http();
    let rows = table();
    assert!(rows.len() >= 28, "only {} rows", rows.len());

    let mut seen: Vec<(&str, u16, String)> = Vec::new();
    let mut failures: Vec<String> = Vec::new();
    for r in &rows {
        let base = match r.target {
            Target::Main => &main.url,
            Target::Small => &small.url,
        };
        let resp = send(&c, base, r).await;
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let google = v["error"]["status"]
            .as_str()
            .unwrap_or("<none>")
            .to_string();
        seen.push((r.name, status, google.clone()));

        let mut problems = Vec::new();
        if status != r.status {
            problems.push(format!("status {status}, expected {}", r.status));
        }
        let envelope_ok = v.as_object().is_some_and(|o| o.len() == 1)
            && v["error"]["code"].as_u64() == Some(u64::from(status))
            && v["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.trim().is_empty())
            && v["error"]["status"].is_string();
        if !envelope_ok {
            problems.push(format!("not Google's envelope: {text:.300}"));
        }
        if let Some(fragment) = r.msg
            && !text.contains(fragment)
        {
            problems.push(format!("message lacks {fragment:?}: {text:.300}"));
        }
        if google != r.google {
            problems.push(format!("error.status {google}, expected {}", r.google));
        }
        let upstream_calls = fake.recorded().len();
        if upstream_calls != 0 {
            problems.push(format!("the upstream saw {upstream_calls} request(s)"));
        }
        if !problems.is_empty() {
            failures.push(format!("{}: {}", r.name, problems.join("; ")));
        }
    }

    println!("| # | input | HTTP status | error.status |");
    println!("|---|---|---|---|");
    for (i, (name, status, google)) in seen.iter().enumerate() {
        println!("| {} | {name} | {status} | {google} |", i + 1);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(
        fake.recorded().is_empty(),
        "upstream was called: {:?}",
        fake.recorded()
            .iter()
            .map(|r| r.path.clone())
            .collect::<Vec<_>>()
    );

    // Not an envelope row: a 100 KB header on a fresh connection is over hyper's 64 KiB head
    // buffer. hyper refuses it before any handler runs, with its own 431 and an empty body (not
    // Google's envelope), or the connection closes while the client is still writing.
    let fresh = http();
    let oversized = fresh
        .get(format!("{}/v1beta/models", main.url))
        .header("x-goog-api-key", CLIENT_KEY)
        .header("x-junk", "j".repeat(100 * 1024))
        .send()
        .await;
    match oversized {
        Ok(resp) => {
            let status = resp.status().as_u16();
            let body = resp.text().await.unwrap_or_default();
            println!("oversized 100 KB header, fresh connection: {status}, body {body:?}");
            assert_eq!(
                status, 431,
                "oversized header on a fresh connection: expected hyper's 431"
            );
        }
        Err(e) => println!("oversized 100 KB header, fresh connection: connection error ({e})"),
    }
    assert!(
        fake.recorded().is_empty(),
        "oversized header on a fresh connection reached the upstream"
    );

    // Both proxies are still up and answering.
    for p in [&main, &small] {
        let r = c.get(format!("{}/healthz", p.url)).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(json_of(r).await["status"], "ok");
    }
}

/// hyper's 64 KiB read-buffer cap is only checked while a head is incomplete, so a kept-alive
/// connection can read a larger header block in one go; the router's own header-size check
/// refuses it in Google's envelope.
#[tokio::test]
async fn oversized_header_on_a_reused_connection_is_refused() {
    let fake = FakeUpstream::start().await;
    let proxy = start_proxy(&fake.url, ProxyOpts::keys(&["AIzaHostileKeyNumber0003"])).await;
    let c = http();
    // One ordinary request opens the keep-alive connection the next one reuses.
    let r = c
        .get(format!("{}/nothing-here", proxy.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let _ = r.text().await;
    let res = c
        .get(format!("{}/v1beta/models", proxy.url))
        .header("x-goog-api-key", CLIENT_KEY)
        .header("x-junk", "j".repeat(100 * 1024))
        .send()
        .await;
    if let Ok(resp) = res {
        assert_eq!(resp.status(), 431, "100 KB header on a reused connection");
        let v = json_of(resp).await;
        assert_eq!(v["error"]["status"], "INVALID_ARGUMENT");
    }
    assert!(
        fake.recorded().is_empty(),
        "a 100 KB header on a reused connection was forwarded upstream"
    );
}
