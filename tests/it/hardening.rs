//! Where the proxy met the real world's sharp edges: Google's error texts that echo what a
//! client sent, numbers from outside, limits of the embed family, answers too large to hold,
//! requests Google may already have run, keyless upload chunks, and who may read `/metrics`.

use crate::common;

use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::hooked_store::HookedStore;
use common::*;
use serde_json::{Value, json};

const KEYS: [&str; 3] = [
    "AIzaHardenKey0000001",
    "AIzaHardenKey0000002",
    "AIzaHardenKey0000003",
];

fn key_states(status: &Value) -> Vec<String> {
    status["quota_status"]["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["state"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn googles_echo_of_a_file_named_leaked_or_an_unknown_field_disables_no_key() {
    let fake = FakeUpstream::start().await;
    let proxy = start_proxy(&fake.url, ProxyOpts::keys(&KEYS)).await;
    let client = http();
    for _ in 0..3 {
        let r = client
            .get(format!("{}/v1beta/files/leaked", proxy.url))
            .header("x-goog-api-key", CLIENT_KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403);
        let v = json_of(r).await;
        assert_eq!(
            v["error"]["message"],
            "You do not have permission to access the File leaked or it may not exist."
        );
        let r = client
            .post(format!(
                "{}/v1beta/models/gemini-2.5-flash:generateContent",
                proxy.url
            ))
            .header("x-goog-api-key", CLIENT_KEY)
            .json(&json!({"contents": [{"parts": [{"text": "hi"}]}], "API key not valid": 1}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        let v = json_of(r).await;
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("Unknown name \"API key not valid\""),
            "{v}"
        );
    }
    // Each answer was the client's: delivered once, never retried on the other keys.
    assert_eq!(fake.calls("/files/leaked").len(), 3);
    assert_eq!(fake.calls(":generateContent").len(), 3);
    let (_, status) = quota_status(&proxy.url, CLIENT_KEY).await;
    assert_eq!(
        key_states(&status),
        ["active", "active", "active"],
        "{status}"
    );
    for _ in 0..3 {
        assert_eq!(
            generate(&proxy.url, "gemini-2.5-flash", "still serving")
                .await
                .status(),
            200
        );
    }
    let used: std::collections::HashSet<String> = fake
        .calls(":generateContent")
        .iter()
        .filter_map(|r| r.key())
        .collect();
    assert_eq!(used.len(), 3, "every key still serves");
}

#[tokio::test]
async fn a_dead_key_answer_that_a_probe_with_the_key_does_not_confirm_keeps_the_key() {
    let fake = FakeUpstream::start().await;
    fake.behave(|b| b.script.push_back(Scripted::InvalidKey));
    let proxy = start_proxy(&fake.url, ProxyOpts::keys(&KEYS[..1])).await;
    let r = generate(&proxy.url, "gemini-2.5-flash", "hi").await;
    // Not confirmed: the answer is the client's, and the key stays.
    assert_eq!(r.status(), 400);
    let probes = fake.calls("/v1beta/models");
    let probes: Vec<_> = probes.iter().filter(|r| r.method == "GET").collect();
    assert_eq!(probes.len(), 1, "one probe with the key");
    assert_eq!(probes[0].key().as_deref(), Some(KEYS[0]));
    assert_eq!(probes[0].query.as_deref(), Some("pageSize=1"));
    let (_, status) = quota_status(&proxy.url, CLIENT_KEY).await;
    assert_eq!(key_states(&status), ["active"]);
    assert_eq!(
        generate(&proxy.url, "gemini-2.5-flash", "hi")
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn one_client_request_disables_at_most_one_key() {
    let fake = FakeUpstream::start().await;
    fake.behave(|b| {
        for k in KEYS {
            b.invalid_keys.insert(k.to_string());
        }
    });
    let proxy = start_proxy(&fake.url, ProxyOpts::keys(&KEYS)).await;
    let r = generate(&proxy.url, "gemini-2.5-flash", "hi").await;
    assert_eq!(r.status(), 400);
    let (_, status) = quota_status(&proxy.url, CLIENT_KEY).await;
    let states = key_states(&status);
    assert_eq!(
        states.iter().filter(|s| *s == "disabled").count(),
        1,
        "{states:?}"
    );
    // The next request disables the next dead key: the pool empties one request at a time.
    generate(&proxy.url, "gemini-2.5-flash", "hi").await;
    let (_, status) = quota_status(&proxy.url, CLIENT_KEY).await;
    assert_eq!(
        key_states(&status)
            .iter()
            .filter(|s| *s == "disabled")
            .count(),
        2
    );
}

#[tokio::test]
async fn a_retry_delay_of_ten_quadrillion_seconds_holds_the_key_instead_of_wrapping() {
    let fake = FakeUpstream::start().await;
    fake.behave(|b| {
        b.script.push_back(Scripted::Quota429 {
            quota_id: "GenerateRequestsPerMinutePerProjectPerModel-FreeTier",
            quota_value: 15,
            retry_delay: "9999999999999999s",
        })
    });
    let proxy = start_proxy(&fake.url, ProxyOpts::keys(&KEYS[..1])).await;
    let r = generate(&proxy.url, "gemini-2.5-flash", "hi").await;
    assert_eq!(r.status(), 429);
    let wait: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    // Clamped to the next Pacific midnight plus an hour: at most 25 hours.
    assert!(wait > 60 && wait <= 25 * 3600 + 1, "Retry-After {wait}");
    let before = fake.calls(":generateContent").len();
    assert_eq!(
        generate(&proxy.url, "gemini-2.5-flash", "held")
            .await
            .status(),
        429
    );
    assert_eq!(
        fake.calls(":generateContent").len(),
        before,
        "the hold holds"
    );
    let (_, status) = quota_status(&proxy.url, CLIENT_KEY).await;
    assert_eq!(key_states(&status), ["cooldown"]);
}

#[tokio::test]
async fn embed_models_are_held_to_embed_limits_in_status_learning_and_429_bodies() {
    let fake = FakeUpstream::start().await;
    let proxy = start_proxy(
        &fake.url,
        ProxyOpts::keys(&KEYS[..1]).toml(
            r#"
[limits]
embed_minute = 100
embed_daily = 1000
embed_token_minute = 30000
"#,
        ),
    )
    .await;
    let embed = |text: &'static str| {
        let url = format!(
            "{}/v1beta/models/gemini-embedding-001:embedContent",
            proxy.url
        );
        async move {
            http()
                .post(url)
                .header("x-goog-api-key", CLIENT_KEY)
                .json(&json!({"content": {"parts": [{"text": text}]}}))
                .send()
                .await
                .unwrap()
        }
    };
    assert_eq!(embed("one").await.status(), 200);
    let (_, status) = quota_status(&proxy.url, CLIENT_KEY).await;
    let m = &status["quota_status"]["keys"][0]["models"]["gemini-embedding-001"];
    assert_eq!(m["minute_limit"], 100, "{status}");
    assert_eq!(m["daily_limit"], 1000);
    assert_eq!(m["token_minute_limit"], 30000);
    let u = &status["quota_status"]["usage"];
    assert_eq!(u["minute_limit"], 100, "totals use the model's family");

    // Google says this project's embed limit is 2 a minute (lower than 100, higher than the
    // generate default of 15 would have mattered): adopted for the embed model.
    fake.behave(|b| {
        b.script.push_back(Scripted::Quota429 {
            quota_id: "EmbedContentRequestsPerMinutePerProjectPerModel-FreeTier",
            quota_value: 20,
            retry_delay: "1s",
        })
    });
    embed("two").await;
    let (_, status) = quota_status(&proxy.url, CLIENT_KEY).await;
    let m = &status["quota_status"]["keys"][0]["models"]["gemini-embedding-001"];
    assert_eq!(m["minute_limit"], 20, "{status}");

    // A proxy-made 429 for an embedding model names the embed quota.
    let mut last = None;
    for _ in 0..25 {
        let r = embed("more").await;
        if r.status() == 429 {
            last = Some(json_of(r).await);
            break;
        }
    }
    let v = last.expect("the learned limit of 20 refuses within 25 requests");
    let quota_id = v["error"]["details"][0]["violations"][0]["quotaId"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(quota_id.starts_with("EmbedContent"), "{v}");
}

#[tokio::test]
async fn pool_totals_use_each_projects_configured_limits() {
    let fake = FakeUpstream::start().await;
    let proxy = start_proxy(
        &fake.url,
        ProxyOpts::keys(&[]).toml(
            r#"
[[keys]]
key = "AIzaHardenKey0000001"
project = "big"
[[keys]]
key = "AIzaHardenKey0000002"
project = "small"
[limits.projects.big]
minute = 1000
daily = 50000
"#,
        ),
    )
    .await;
    let (_, status) = quota_status(&proxy.url, CLIENT_KEY).await;
    let u = &status["quota_status"]["usage"];
    assert_eq!(u["minute_limit"], 1015, "{status}");
    assert_eq!(u["daily_limit"], 51500);
    generate(&proxy.url, "gemini-2.5-flash", "hi").await;
    let (_, status) = quota_status(&proxy.url, CLIENT_KEY).await;
    assert_eq!(status["quota_status"]["usage"]["minute_limit"], 1015);
}

#[tokio::test]
async fn a_create_answer_larger_than_the_read_cap_passes_through_whole() {
    let fake = FakeUpstream::start().await;
    fake.behave(|b| b.create_answer_bytes = 5 * 1024 * 1024);
    let proxy = start_proxy(&fake.url, ProxyOpts::keys(&KEYS[..1])).await;
    let r = http()
        .post(format!("{}/v1beta/cachedContents", proxy.url))
        .header("x-goog-api-key", CLIENT_KEY)
        .json(
            &json!({"model": "models/gemini-2.5-flash", "contents": [{"parts": [{"text": "x"}]}]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v = json_of(r).await;
    assert_eq!(v["name"], "cachedContents/c1");
    assert_eq!(v["displayName"].as_str().unwrap().len(), 5 * 1024 * 1024);
    // A small one is still read to learn its key.
    fake.behave(|b| b.create_answer_bytes = 0);
    let r = http()
        .post(format!("{}/v1beta/cachedContents", proxy.url))
        .header("x-goog-api-key", CLIENT_KEY)
        .json(&json!({"model": "models/gemini-2.5-flash"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(json_of(r).await["name"], "cachedContents/c1");
}

/// An upstream that reads each request, then closes the connection without a word.
fn silent_upstream() -> (String, Arc<AtomicUsize>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = seen.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let counter = counter.clone();
            std::thread::spawn(move || {
                let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                // Read the head and the body it announces, then hang up.
                loop {
                    match conn.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                    let text = String::from_utf8_lossy(&buf).to_lowercase();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let len = text
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        if buf.len() >= end + 4 + len {
                            counter.fetch_add(1, Ordering::SeqCst);
                            return;
                        }
                    }
                }
            });
        }
    });
    (url, seen)
}

#[tokio::test]
async fn a_request_google_may_have_run_is_not_sent_again_on_another_key() {
    let (url, seen) = silent_upstream();
    let proxy = start_proxy(&url, ProxyOpts::keys(&KEYS)).await;
    let r = generate(&proxy.url, "gemini-2.5-flash", "run once").await;
    assert_eq!(r.status(), 502);
    let v = json_of(r).await;
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not retried"),
        "{v}"
    );
    assert_eq!(seen.load(Ordering::SeqCst), 1, "sent exactly once");
    // And it stays counted.
    let (_, status) = quota_status(&proxy.url, CLIENT_KEY).await;
    assert_eq!(status["quota_status"]["usage"]["minute_requests"], 1);
}

#[tokio::test]
async fn keyless_upload_chunks_are_taken_only_on_the_open_sessions_own_path() {
    let fake = FakeUpstream::start().await;
    let proxy = start_proxy(&fake.url, ProxyOpts::keys(&KEYS[..1])).await;
    let client = http();
    let start = client
        .post(format!("{}/upload/v1beta/files", proxy.url))
        .header("x-goog-api-key", CLIENT_KEY)
        .header("x-goog-upload-protocol", "resumable")
        .header("x-goog-upload-command", "start")
        .json(&json!({"file": {"display_name": "a"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(start.status(), 200);
    let session = start.headers()["x-goog-upload-url"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(session.starts_with(&proxy.url), "{session}");
    let query = session.split_once('?').unwrap().1.to_string();
    // The upstream put its key in the URL (`key` and `$key`): only the session's own
    // parameters reach the client, in their order.
    assert_eq!(
        query, "upload_id=UP1&upload_protocol=resumable",
        "{session}"
    );
    assert!(
        !session.contains(KEYS[0]),
        "a pooled key in the upload URL: {session}"
    );
    let chunk = |url: String, method: reqwest::Method, command: Option<&'static str>| {
        let client = client.clone();
        async move {
            let mut req = client
                .request(method, url)
                .header("x-goog-upload-offset", "0")
                .body("data");
            if let Some(c) = command {
                req = req.header("x-goog-upload-command", c);
            }
            req.send().await.unwrap().status().as_u16()
        }
    };
    let other_path = format!("{}/upload/v1beta/files/elsewhere?{query}", proxy.url);
    assert_eq!(
        chunk(other_path, reqwest::Method::POST, Some("upload")).await,
        401
    );
    let v1_path = format!("{}/upload/v1/files?{query}", proxy.url);
    assert_eq!(
        chunk(v1_path, reqwest::Method::POST, Some("upload")).await,
        401
    );
    assert_eq!(
        chunk(session.clone(), reqwest::Method::GET, None).await,
        401,
        "not a method of the resumable protocol"
    );
    assert_eq!(
        chunk(session.clone(), reqwest::Method::POST, None).await,
        401,
        "no upload command"
    );
    assert_eq!(
        chunk(session.clone(), reqwest::Method::POST, Some("upload")).await,
        200
    );
    assert_eq!(
        chunk(
            session.clone(),
            reqwest::Method::POST,
            Some("upload, finalize")
        )
        .await,
        200
    );
    // Finalized: the session is over.
    assert_eq!(
        chunk(session, reqwest::Method::POST, Some("upload")).await,
        401
    );
}

/// A raw HTTP/1.1 exchange: the status line's code, or 0 when nothing came within `within`.
fn raw_status(addr: &str, request: &[u8], within: Duration) -> u16 {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(within)).unwrap();
    s.write_all(request).unwrap();
    let mut buf = [0u8; 256];
    match s.read(&mut buf) {
        Ok(n) if n > 12 => String::from_utf8_lossy(&buf[9..12]).parse().unwrap_or(0),
        _ => 0,
    }
}

#[tokio::test]
async fn an_admin_reset_is_authenticated_before_its_body_is_read() {
    let fake = FakeUpstream::start().await;
    let proxy = start_proxy(&fake.url, ProxyOpts::keys(&KEYS[..1])).await;
    let addr = proxy.url.trim_start_matches("http://").to_string();
    // Announces a body it never sends: a stranger gets 401 at once, not a held connection.
    let t0 = Instant::now();
    let code = tokio::task::spawn_blocking({
        let addr = addr.clone();
        move || {
            raw_status(
                &addr,
                b"POST /api/ai/quota-status/ HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100000\r\n\r\n{\"quota",
                Duration::from_secs(3),
            )
        }
    })
    .await
    .unwrap();
    assert_eq!(code, 401);
    assert!(t0.elapsed() < Duration::from_secs(2));
    // A client key (not admin) is refused before its body is read, too.
    let code = tokio::task::spawn_blocking({
        let addr = addr.clone();
        move || {
            let req = format!(
                "POST /api/ai/quota-status/ HTTP/1.1\r\nhost: x\r\nx-goog-api-key: {CLIENT_KEY}\r\ncontent-length: 100000\r\n\r\n{{"
            );
            raw_status(&addr, req.as_bytes(), Duration::from_secs(3))
        }
    })
    .await
    .unwrap();
    assert_eq!(code, 403);
}

#[tokio::test]
async fn an_admin_body_that_never_finishes_is_cut_at_the_body_timeout() {
    let fake = FakeUpstream::start().await;
    let proxy = start_proxy(
        &fake.url,
        ProxyOpts::keys(&KEYS[..1]).toml("[server]\nbody_read_timeout_secs = 1\n"),
    )
    .await;
    let addr = proxy.url.trim_start_matches("http://").to_string();
    let t0 = Instant::now();
    let code = tokio::task::spawn_blocking(move || {
        let req = format!(
            "POST /api/ai/quota-status/ HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {ADMIN_TOKEN}\r\ncontent-length: 100000\r\n\r\n{{"
        );
        raw_status(&addr, req.as_bytes(), Duration::from_secs(5))
    })
    .await
    .unwrap();
    assert_eq!(code, 408);
    assert!(t0.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn metrics_asks_for_its_token_and_a_scrape_burst_costs_one_store_snapshot() {
    let fake = FakeUpstream::start().await;
    let store = Arc::new(HookedStore::new());
    let usage_calls = store.usage_calls.clone();
    let proxy = start_proxy(
        &fake.url,
        ProxyOpts::keys(&KEYS[..1])
            .env("PROXY_METRICS_TOKEN", "metrics-token-123456")
            .store(store),
    )
    .await;
    let url = format!("{}/metrics", proxy.url);
    let r = http().get(&url).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(json_of(r).await["error"]["status"], "UNAUTHENTICATED");
    let r = http()
        .get(&url)
        .bearer_auth("wrong-token")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    generate(&proxy.url, "gemini-2.5-flash", "hi").await;
    let t0 = Instant::now();
    for _ in 0..20 {
        let r = http()
            .get(&url)
            .bearer_auth("metrics-token-123456")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert!(r.text().await.unwrap().contains("gqp_requests_total"));
    }
    let calls = usage_calls.load(Ordering::SeqCst);
    let allowed = 1 + t0.elapsed().as_secs() as usize;
    assert!(
        calls <= allowed,
        "{calls} store snapshots for 20 scrapes in {:?}",
        t0.elapsed()
    );
}
