//! Vertex AI entries in the pool: AI Studio-form requests rewritten to a Vertex project and
//! location with a service-account token (minted once, its JWT checked with the account's
//! public key), spill-over between the backends by `pool.order`, bare Vertex 429s holding
//! (project, location, model), AI Studio resources kept on AI Studio keys, Vertex-form requests
//! (google-genai with `vertexai=True`), start-up refusals, and no token or key in the logs.

use std::time::Duration;

use serde_json::{Value, json};

mod alone;
mod answers;
mod pricing;
mod tokens;

use crate::common::vertex_upstream::{FakeVertex, key_pair};
use crate::common::{
    self, ADMIN_TOKEN, CLIENT_KEY, FakeUpstream, Proxy, ProxyOpts, eventually, http, json_of,
    quota_status, start_proxy,
};

const KEY: &str = "AIzaVertexTestKey00001";
const MODEL: &str = "gemini-2.5-flash";

async fn setup(order: &str, env: &[(&str, &str)]) -> (FakeUpstream, FakeVertex, Proxy) {
    let studio = FakeUpstream::start().await;
    let vertex = FakeVertex::start().await;
    let toml = format!(
        "[pool]\norder = \"{order}\"\n{}",
        vertex.entry("p1", "us-central1")
    );
    let mut opts = ProxyOpts::keys(&[KEY]).toml(&toml);
    for (k, v) in env {
        opts = opts.env(k, v);
    }
    let proxy = start_proxy(&studio.url, opts).await;
    (studio, vertex, proxy)
}

async fn post(url: String, body: Value) -> reqwest::Response {
    http()
        .post(url)
        .header("x-goog-api-key", CLIENT_KEY)
        .json(&body)
        .send()
        .await
        .unwrap()
}

fn prompt(text: &str) -> Value {
    json!({"contents": [{"parts": [{"text": text}]}]})
}

const PREFIX: &str = "/v1/projects/p1/locations/us-central1/publishers/google/models";

#[tokio::test]
async fn ai_studio_form_calls_reach_vertex_under_the_entrys_project_and_location_on_one_token() {
    let (studio, vertex, proxy) = setup("vertex-first", &[]).await;
    let base = format!("{}/v1beta/models", proxy.url);

    let r = post(format!("{base}/{MODEL}:generateContent"), prompt("hi")).await;
    assert_eq!(r.status(), 200);
    let v = json_of(r).await;
    assert_eq!(
        v["candidates"][0]["content"]["parts"][0]["text"],
        "from vertex"
    );

    let r = post(
        format!("{base}/{MODEL}:streamGenerateContent?alt=sse"),
        prompt("stream"),
    )
    .await;
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    assert!(
        text.contains("vertex 0 ") && text.contains("vertex 1 "),
        "{text}"
    );

    let r = post(
        format!("{base}/{MODEL}:countTokens"),
        json!({"generateContentRequest": {"model": format!("models/{MODEL}"),
            "contents": [{"parts": [{"text": "abc"}]}]}}),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(json_of(r).await["totalTokens"], 7);

    let r = post(
        format!("{base}/gemini-embedding-001:embedContent"),
        json!({"content": {"parts": [{"text": "embed me"}]}}),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(json_of(r).await["embedding"]["values"][0], 0.5);

    let calls = vertex.recorded();
    let paths: Vec<(&str, Option<&str>)> = calls
        .iter()
        .map(|c| (c.path.as_str(), c.query.as_deref()))
        .collect();
    assert_eq!(
        paths,
        [
            (format!("{PREFIX}/{MODEL}:generateContent").as_str(), None),
            (
                format!("{PREFIX}/{MODEL}:streamGenerateContent").as_str(),
                Some("alt=sse")
            ),
            (format!("{PREFIX}/{MODEL}:countTokens").as_str(), None),
            (
                format!("{PREFIX}/gemini-embedding-001:embedContent").as_str(),
                None
            ),
        ]
    );
    for c in &calls {
        assert_eq!(c.headers["authorization"], "Bearer ya29.fake-1");
        assert!(!c.headers.contains_key("x-goog-api-key"));
        let sent = String::from_utf8_lossy(&c.body);
        assert!(!sent.contains(CLIENT_KEY));
    }
    // What differs in the body: roles added, countTokens' request lifted to its top.
    let counted: Value = serde_json::from_slice(&calls[2].body).unwrap();
    assert_eq!(counted["contents"][0]["role"], "user", "{counted}");
    assert!(counted.get("generateContentRequest").is_none());
    let generated: Value = serde_json::from_slice(&calls[0].body).unwrap();
    assert_eq!(generated["contents"][0]["role"], "user");
    // One token for all four, minted with a JWT the endpoint verified.
    assert_eq!(vertex.minted(), 1);
    assert_eq!(
        vertex
            .state
            .bad_jwts
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );
    assert!(studio.recorded().is_empty(), "nothing went to AI Studio");

    // The status page shows the entry as a project, with its location.
    let (_, s) = quota_status(&proxy.url, ADMIN_TOKEN).await;
    let entry = s["quota_status"]["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["backend"] == "vertex")
        .cloned()
        .unwrap();
    assert_eq!(entry["project"], "p1.us-central1");
    assert_eq!(entry["location"], "us-central1");
    assert_eq!(entry["id"], "vertex:p1/us-central1");
}

#[tokio::test]
async fn openai_chat_goes_to_vertexs_openai_endpoint_with_the_model_named_google_slash() {
    let (_studio, vertex, proxy) = setup("vertex-first", &[]).await;
    let r = http()
        .post(format!("{}/v1beta/openai/chat/completions", proxy.url))
        .bearer_auth(CLIENT_KEY)
        .json(&json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        json_of(r).await["choices"][0]["message"]["content"],
        "vertex chat"
    );
    let calls = vertex.recorded();
    assert_eq!(
        calls[0].path,
        "/v1/projects/p1/locations/us-central1/endpoints/openapi/chat/completions"
    );
    let body: Value = serde_json::from_slice(&calls[0].body).unwrap();
    assert_eq!(body["model"], "google/gemini-2.5-flash");
}

#[tokio::test]
async fn ai_studio_first_spends_the_keys_then_spills_over_to_vertex_before_refusing() {
    let (studio, vertex, proxy) = setup("ai-studio-first", &[("GEMINI_MINUTE_LIMIT", "1")]).await;
    let url = format!("{}/v1beta/models/{MODEL}:generateContent", proxy.url);
    assert_eq!(post(url.clone(), prompt("one")).await.status(), 200);
    assert_eq!(studio.calls(":generateContent").len(), 1);
    assert!(vertex.recorded().is_empty());
    // The key's project is out: the Vertex entry serves, with no wait and no 429.
    assert_eq!(post(url.clone(), prompt("two")).await.status(), 200);
    assert_eq!(vertex.recorded().len(), 1);
    // Both out: the proxy's own 429.
    assert_eq!(post(url, prompt("three")).await.status(), 429);
    assert_eq!(studio.calls(":generateContent").len(), 1);
    assert_eq!(vertex.recorded().len(), 1);
}

#[tokio::test]
async fn vertex_first_spends_the_vertex_entry_then_the_keys() {
    let (studio, vertex, proxy) = setup("vertex-first", &[("GEMINI_MINUTE_LIMIT", "1")]).await;
    let url = format!("{}/v1beta/models/{MODEL}:generateContent", proxy.url);
    assert_eq!(post(url.clone(), prompt("one")).await.status(), 200);
    assert_eq!(vertex.recorded().len(), 1);
    assert!(studio.recorded().is_empty());
    assert_eq!(post(url, prompt("two")).await.status(), 200);
    assert_eq!(studio.calls(":generateContent").len(), 1);
}

#[tokio::test]
async fn headroom_shares_work_across_both_backends() {
    let (studio, vertex, proxy) = setup("headroom", &[("GEMINI_MINUTE_LIMIT", "2")]).await;
    let url = format!("{}/v1beta/models/{MODEL}:generateContent", proxy.url);
    for i in 0..4 {
        assert_eq!(
            post(url.clone(), prompt(&format!("r{i}"))).await.status(),
            200
        );
    }
    // The most room first: each backend's project takes its two.
    assert_eq!(vertex.recorded().len(), 2);
    assert_eq!(studio.calls(":generateContent").len(), 2);
    assert_eq!(post(url, prompt("over")).await.status(), 429);
}

#[tokio::test]
async fn a_bare_vertex_429_holds_that_entry_and_model_and_the_request_moves_on() {
    let (studio, vertex, proxy) = setup("vertex-first", &[]).await;
    vertex.behave(|b| b.script.push_back(429));
    let url = format!("{}/v1beta/models/{MODEL}:generateContent", proxy.url);
    let r = post(url.clone(), prompt("one")).await;
    assert_eq!(r.status(), 200, "served by the AI Studio key instead");
    assert_eq!(vertex.recorded().len(), 1);
    assert_eq!(studio.calls(":generateContent").len(), 1);

    let (_, s) = quota_status(&proxy.url, ADMIN_TOKEN).await;
    let entry = s["quota_status"]["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["backend"] == "vertex")
        .cloned()
        .unwrap();
    assert_eq!(entry["state"], "cooldown", "{entry}");
    assert_eq!(entry["cooldown_model"], MODEL);

    // Held: the next request goes to the key at once; another model still uses the entry.
    assert_eq!(post(url, prompt("two")).await.status(), 200);
    assert_eq!(vertex.recorded().len(), 1);
    assert_eq!(studio.calls(":generateContent").len(), 2);
    let r = post(
        format!("{}/v1beta/models/gemini-2.5-pro:generateContent", proxy.url),
        prompt("three"),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(vertex.recorded().len(), 2);
}

#[tokio::test]
async fn a_vertex_401_holds_the_whole_entry_and_the_request_moves_on() {
    let (studio, vertex, proxy) = setup("vertex-first", &[]).await;
    vertex.behave(|b| b.script.push_back(401));
    let url = format!("{}/v1beta/models/{MODEL}:generateContent", proxy.url);
    assert_eq!(post(url, prompt("one")).await.status(), 200);
    assert_eq!(vertex.recorded().len(), 1);
    assert_eq!(studio.calls(":generateContent").len(), 1);
    let (_, s) = quota_status(&proxy.url, ADMIN_TOKEN).await;
    let entry = s["quota_status"]["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["backend"] == "vertex")
        .cloned()
        .unwrap();
    assert_eq!(entry["state"], "cooldown", "{entry}");
    assert_eq!(entry["cooldown_model"], "*");
    // Held for every model: another model goes to the key too.
    let r = post(
        format!("{}/v1beta/models/gemini-2.5-pro:generateContent", proxy.url),
        prompt("two"),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(vertex.recorded().len(), 1);
}

#[tokio::test]
async fn files_and_cached_contents_stay_with_ai_studio_keys() {
    let (studio, vertex, proxy) = setup("vertex-first", &[]).await;
    let r = http()
        .get(format!("{}/v1beta/files", proxy.url))
        .header("x-goog-api-key", CLIENT_KEY)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let r = post(
        format!("{}/v1beta/models/{MODEL}:generateContent", proxy.url),
        json!({"cachedContent": "cachedContents/abc", "contents": [{"role": "user", "parts": [{"text": "x"}]}]}),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert!(vertex.recorded().is_empty());
    assert_eq!(studio.calls("/files").len(), 1);
    assert_eq!(studio.calls(":generateContent").len(), 1);
}

#[tokio::test]
async fn a_vertex_form_request_is_served_by_whichever_backend_the_pool_picks() {
    let path = format!(
        "/v1/projects/client-proj/locations/europe-west1/publishers/google/models/{MODEL}:generateContent"
    );
    let (studio, vertex, proxy) = setup("vertex-first", &[]).await;
    let r = post(format!("{}{path}", proxy.url), prompt("vf")).await;
    assert_eq!(r.status(), 200);
    // The pool's project and location, not the client's.
    assert_eq!(
        vertex.recorded()[0].path,
        format!("{PREFIX}/{MODEL}:generateContent")
    );
    assert!(studio.recorded().is_empty());

    let (studio, vertex, proxy) = setup("ai-studio-first", &[]).await;
    let r = post(
        format!(
            "{}/v1beta1/publishers/google/models/{MODEL}:streamGenerateContent?alt=sse",
            proxy.url
        ),
        prompt("express"),
    )
    .await;
    assert_eq!(r.status(), 200);
    let calls = studio.recorded();
    assert_eq!(
        calls[0].path,
        format!("/v1beta/models/{MODEL}:streamGenerateContent")
    );
    assert_eq!(calls[0].key().as_deref(), Some(KEY));
    assert!(vertex.recorded().is_empty());
}

#[tokio::test]
async fn google_genai_with_vertexai_true_works_through_the_proxy() {
    let (_studio, vertex, proxy) = setup("vertex-first", &[]).await;
    let script = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/python/genai_vertex_check.py");
    let out = tokio::process::Command::new(common::sdk::python())
        .arg(&script)
        .env("PROXY_URL", &proxy.url)
        .env("CLIENT_KEY", CLIENT_KEY)
        .env_remove("GOOGLE_API_KEY")
        .env_remove("GEMINI_API_KEY")
        .env_remove("GOOGLE_CLOUD_PROJECT")
        .env_remove("GOOGLE_CLOUD_LOCATION")
        .env_remove("GOOGLE_GENAI_USE_VERTEXAI")
        .output()
        .await
        .expect("python runs");
    assert!(
        out.status.success(),
        "SDK script failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(vertex.recorded().len(), 3);
}

/// A config file with one Vertex entry (credentials `file`, the fake's base URL).
fn config_file(vertex: &FakeVertex, credentials: &str) -> String {
    let path = std::env::temp_dir().join(format!(
        "gqp-vertex-{}-{}.toml",
        std::process::id(),
        fastrand::u64(..)
    ));
    let toml = format!(
        "[pool]\norder = \"vertex-first\"\n[[pool.vertex]]\nproject = \"p1\"\nlocation = \"us-central1\"\ncredentials_file = \"{credentials}\"\nbase_url = \"{}\"\n",
        vertex.url
    );
    std::fs::write(&path, toml).unwrap();
    path.to_string_lossy().into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_credentials_or_a_refusing_token_endpoint_stop_start_up_naming_the_setting() {
    let vertex = FakeVertex::start().await;
    let missing = config_file(&vertex, "/nonexistent/sa.json");
    let run = |file: String| {
        tokio::task::spawn_blocking(move || {
            common::binary::run(
                &[
                    ("GEMINI_API_KEY", KEY),
                    ("PROXY_CLIENT_KEYS", CLIENT_KEY),
                    ("PROXY_LISTEN", "127.0.0.1:0"),
                    ("PROXY_CONFIG", &file),
                ],
                &[],
            )
        })
    };
    let (status, _, stderr) = run(missing).await.unwrap();
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("pool.vertex[0].credentials_file"),
        "{stderr}"
    );

    vertex.behave(|b| b.refuse_tokens = true);
    let refused = config_file(&vertex, &vertex.credentials_file);
    let (status, _, stderr) = run(refused).await.unwrap();
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("pool.vertex[0].credentials_file"),
        "{stderr}"
    );
    assert!(stderr.contains("invalid_grant"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_jwt_or_private_key_in_any_log_line_at_trace_level() {
    let studio = FakeUpstream::start().await;
    let vertex = FakeVertex::start().await;
    let file = config_file(&vertex, &vertex.credentials_file);
    let upstream = studio.url.clone();
    let bin = tokio::task::spawn_blocking(move || {
        common::binary::Binary::start(
            &[
                ("GEMINI_API_KEY", KEY),
                ("PROXY_CLIENT_KEYS", CLIENT_KEY),
                ("PROXY_CONFIG", &file),
                ("GEMINI_UPSTREAM_URL", &upstream),
                ("RUST_LOG", "trace"),
            ],
            &[],
        )
    })
    .await
    .unwrap();
    for path in [
        format!("/v1beta/models/{MODEL}:generateContent"),
        format!("/v1beta/models/{MODEL}:streamGenerateContent?alt=sse"),
    ] {
        let r = post(format!("{}{path}", bin.url), prompt("log me")).await;
        assert_eq!(r.status(), 200);
    }
    assert!(eventually(Duration::from_secs(5), || vertex.recorded().len() == 2).await);
    let (logs, _) = tokio::task::spawn_blocking(move || bin.stop())
        .await
        .unwrap();
    assert!(
        logs.lines().filter(|l| l.contains("TRACE")).count() > 10,
        "trace logging on"
    );
    assert!(vertex.minted() >= 1);
    assert!(!logs.contains("ya29."), "an access token was logged");
    // The JWT's header ({"typ":"JWT",... or {"alg":...) in base64, and the assertion field.
    for jwt in ["eyJ0eXAi", "eyJhbGci", "assertion="] {
        assert!(!logs.contains(jwt), "the JWT was logged ({jwt})");
    }
    let key_line = key_pair()
        .0
        .lines()
        .nth(5)
        .expect("a line of the private key");
    assert!(!logs.contains(key_line), "the private key was logged");
    assert!(!logs.contains("PRIVATE KEY"));
    assert!(!logs.contains(KEY), "the pooled key was logged");
}

#[tokio::test]
async fn without_a_credentials_file_the_metadata_servers_token_is_used() {
    let studio = FakeUpstream::start().await;
    let vertex = FakeVertex::start().await;
    let toml = format!(
        "[pool]\norder = \"vertex-first\"\n[[pool.vertex]]\nproject = \"p1\"\nlocation = \"us-central1\"\nbase_url = \"{}\"\n",
        vertex.url
    );
    let host = vertex.url.trim_start_matches("http://").to_string();
    let opts = ProxyOpts::keys(&[KEY])
        .toml(&toml)
        .env("GCE_METADATA_HOST", &host);
    let proxy = start_proxy(&studio.url, opts).await;
    let r = post(
        format!("{}/v1beta/models/{MODEL}:generateContent", proxy.url),
        prompt("gke"),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        vertex.recorded()[0].headers["authorization"],
        "Bearer ya29.fake-1"
    );
    assert!(studio.recorded().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_mints_each_entrys_token_and_names_the_setting_when_refused() {
    let vertex = FakeVertex::start().await;
    let file = config_file(&vertex, &vertex.credentials_file);
    let check = |file: String| {
        tokio::task::spawn_blocking(move || {
            common::binary::run(
                &[("GEMINI_API_KEY", KEY), ("PROXY_CLIENT_KEYS", CLIENT_KEY)],
                &["--config", &file, "--check"],
            )
        })
    };
    let (status, stdout, stderr) = check(file.clone()).await.unwrap();
    assert_eq!(status.code(), Some(0), "{stdout}{stderr}");
    assert!(
        stdout.contains("vertex:    1 Vertex AI entry (tokens minted), order vertex-first"),
        "{stdout}"
    );
    assert!(
        stdout.contains("pool:      1 key(s) in 2 project(s)"),
        "{stdout}"
    );
    vertex.behave(|b| b.refuse_tokens = true);
    let (status, _, stderr) = check(file).await.unwrap();
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("pool.vertex[0].credentials_file"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_with_unreadable_credentials_is_refused_naming_the_setting() {
    let studio = FakeUpstream::start().await;
    let vertex = FakeVertex::start().await;
    let file = config_file(&vertex, &vertex.credentials_file);
    let (f, upstream) = (file.clone(), studio.url.clone());
    let bin = tokio::task::spawn_blocking(move || {
        common::binary::Binary::start(
            &[
                ("GEMINI_API_KEY", KEY),
                ("PROXY_CLIENT_KEYS", CLIENT_KEY),
                ("PROXY_ADMIN_TOKEN", ADMIN_TOKEN),
                ("GEMINI_UPSTREAM_URL", &upstream),
                ("PROXY_WATCH_CONFIG", "false"),
            ],
            &["--config", &f],
        )
    })
    .await
    .unwrap();
    let text = std::fs::read_to_string(&file)
        .unwrap()
        .replace(&vertex.credentials_file, "/nonexistent/sa.json");
    std::fs::write(&file, text).unwrap();
    let r = http()
        .post(format!("{}/api/ai/config/reload", bin.url))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body = r.text().await.unwrap();
    assert!(body.contains("pool.vertex[0].credentials_file"), "{body}");
    // The running configuration stays: the entry still serves.
    let r = post(
        format!("{}/v1beta/models/{MODEL}:generateContent", bin.url),
        prompt("still"),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(vertex.recorded().len(), 1);
    tokio::task::spawn_blocking(move || bin.stop())
        .await
        .unwrap();
}

#[tokio::test]
async fn an_authorized_user_file_from_google_application_credentials_is_used() {
    let studio = FakeUpstream::start().await;
    let vertex = FakeVertex::start().await;
    let file = std::env::temp_dir().join(format!(
        "gqp-vertex-user-{}-{}.json",
        std::process::id(),
        fastrand::u64(..)
    ));
    let user = json!({"type": "authorized_user", "client_id": "c.apps.googleusercontent.com",
        "client_secret": "client-secret", "refresh_token": "1//refresh-token",
        "token_uri": format!("{}/token", vertex.url)});
    std::fs::write(&file, user.to_string()).unwrap();
    let toml = format!(
        "[pool]\norder = \"vertex-first\"\n[[pool.vertex]]\nproject = \"p1\"\nlocation = \"global\"\nbase_url = \"{}\"\n",
        vertex.url
    );
    let opts = ProxyOpts::keys(&[KEY])
        .toml(&toml)
        .env("GOOGLE_APPLICATION_CREDENTIALS", &file.to_string_lossy());
    let proxy = start_proxy(&studio.url, opts).await;
    let r = post(
        format!("{}/v1beta/models/{MODEL}:generateContent", proxy.url),
        prompt("adc"),
    )
    .await;
    assert_eq!(r.status(), 200);
    let call = &vertex.recorded()[0];
    assert_eq!(call.headers["authorization"], "Bearer ya29.fake-1");
    assert_eq!(
        call.path,
        format!(
            "/v1/projects/p1/locations/global/publishers/google/models/{MODEL}:generateContent"
        )
    );
    assert!(studio.recorded().is_empty());
}

#[tokio::test]
async fn live_sessions_stay_on_ai_studio_keys_whatever_the_order() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let live = common::live_upstream::FakeLive::start(10).await;
    let vertex = FakeVertex::start().await;
    let toml = format!(
        "[pool]\norder = \"vertex-first\"\n{}",
        vertex.entry("p1", "us-central1")
    );
    let proxy = start_proxy(&live.url, ProxyOpts::keys(&[KEY]).toml(&toml)).await;
    for _ in 0..3 {
        let url = format!(
            "{}/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent?key={CLIENT_KEY}",
            proxy.url.replacen("http://", "ws://", 1)
        );
        let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        let setup = json!({"setup": {"model": "models/gemini-2.5-flash-native-audio"}});
        ws.send(Message::Text(setup.to_string().into()))
            .await
            .unwrap();
        let first = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(first.to_string().contains("setupComplete"), "{first}");
    }
    assert_eq!(live.opened(), [KEY, KEY, KEY]);
    assert!(vertex.recorded().is_empty());
}
