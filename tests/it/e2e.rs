//! End to end over real sockets: a client, the proxy, the fake Gemini upstream.

use crate::common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use serde_json::json;

const POOL: [&str; 2] = ["AIzaPooledKeyNumber0001", "AIzaPooledKeyNumber0002"];

#[tokio::test]
async fn generate_goes_out_with_a_pooled_key_and_never_the_clients() {
    let fake = FakeUpstream::start().await;
    let proxy = start_proxy(&fake.url, ProxyOpts::keys(&POOL)).await;
    // The three ways a client presents its key.
    let c = http();
    let url = format!(
        "{}/v1beta/models/gemini-2.5-flash:generateContent",
        proxy.url
    );
    let body = json!({"contents": [{"parts": [{"text": "hello"}]}]});
    let r1 = c
        .post(&url)
        .header("x-goog-api-key", CLIENT_KEY)
        .json(&body)
        .send()
        .await
        .unwrap();
    let r2 = c
        .post(format!("{url}?key={CLIENT_KEY}"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let r3 = c
        .post(format!("{url}?$key={CLIENT_KEY}&alt=json"))
        .json(&body)
        .send()
        .await
        .unwrap();
    for r in [r1, r2, r3] {
        assert_eq!(r.status(), 200);
        let v = json_of(r).await;
        assert_eq!(
            v["candidates"][0]["content"]["parts"][0]["text"],
            "echo: hello"
        );
    }
    let seen = fake.calls(":generateContent");
    assert_eq!(seen.len(), 3);
    for r in &seen {
        let key = r.key().unwrap();
        assert!(POOL.contains(&key.as_str()), "upstream saw {key}");
        let q = r.query.clone().unwrap_or_default();
        assert!(
            !q.contains(CLIENT_KEY) && !q.contains("key="),
            "query leaked: {q}"
        );
        for (name, v) in &r.headers {
            assert!(
                !v.to_str().unwrap_or("").contains(CLIENT_KEY),
                "header {name} leaked the client key"
            );
        }
    }
    assert_eq!(seen[2].query.as_deref(), Some("alt=json"));
    // Round robin spreads the calls over both keys.
    let keys: std::collections::HashSet<String> = seen.iter().filter_map(|r| r.key()).collect();
    assert_eq!(keys.len(), 2);
}

#[tokio::test]
async fn missing_or_wrong_client_keys_are_refused_in_googles_envelope_without_upstream_calls() {
    let fake = FakeUpstream::start().await;
    let proxy = start_proxy(&fake.url, ProxyOpts::keys(&POOL)).await;
    let url = format!(
        "{}/v1beta/models/gemini-2.5-flash:generateContent",
        proxy.url
    );
    let body = json!({"contents": [{"parts": [{"text": "hello"}]}]});
    let r = http().post(&url).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let v = json_of(r).await;
    assert_eq!(v["error"]["code"], 401);
    assert_eq!(v["error"]["status"], "UNAUTHENTICATED");
    let r = http()
        .post(&url)
        .header("x-goog-api-key", "not-a-client-key")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let v = json_of(r).await;
    assert_eq!(v["error"]["status"], "PERMISSION_DENIED");
    let r = http()
        .post(&url)
        .header("authorization", "Bearer also-wrong")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // A pooled key is not a client credential either.
    let r = http()
        .post(&url)
        .header("x-goog-api-key", POOL[0])
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(fake.recorded().is_empty(), "upstream was called");
}

#[tokio::test]
async fn sse_events_reach_the_client_while_the_upstream_is_still_streaming() {
    let fake = FakeUpstream::start().await;
    fake.behave(|b| {
        b.stream_delay = Duration::from_millis(400);
        b.stream_events = 4;
    });
    let proxy = start_proxy(&fake.url, ProxyOpts::keys(&POOL)).await;
    let resp = stream_sse(&proxy.url, "stream please").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut stream = resp.bytes_stream();
    let first = stream.next().await.unwrap().unwrap();
    let sent_when_first_arrived = fake.state.events_sent.load(Ordering::SeqCst);
    assert!(String::from_utf8_lossy(&first).starts_with("data: "));
    assert!(
        sent_when_first_arrived < 4,
        "first event only arrived after {sent_when_first_arrived} of 4 were sent"
    );
    let mut rest = first.to_vec();
    while let Some(c) = stream.next().await {
        rest.extend_from_slice(&c.unwrap());
    }
    let text = String::from_utf8(rest).unwrap();
    assert_eq!(text.matches("data: ").count(), 4);
    assert!(text.contains("chunk 3"));
}

#[tokio::test]
async fn json_array_stream_passes_byte_for_byte() {
    let fake = FakeUpstream::start().await;
    fake.behave(|b| b.stream_events = 5);
    let proxy = start_proxy(&fake.url, ProxyOpts::keys(&POOL)).await;
    let body = json!({"contents": [{"parts": [{"text": "array stream"}]}]});
    let via_proxy = http()
        .post(format!(
            "{}/v1beta/models/gemini-2.5-flash:streamGenerateContent",
            proxy.url
        ))
        .header("x-goog-api-key", CLIENT_KEY)
        .json(&body)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let direct = http()
        .post(format!(
            "{}/v1beta/models/gemini-2.5-flash:streamGenerateContent",
            fake.url
        ))
        .header("x-goog-api-key", POOL[0])
        .json(&body)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(via_proxy, direct);
    assert!(via_proxy.starts_with(b"[{") && via_proxy.ends_with(b"]"));
}

#[tokio::test]
async fn openai_chat_works_with_a_bearer_client_key_and_goes_out_with_a_bearer_pooled_key() {
    let fake = FakeUpstream::start().await;
    let proxy = start_proxy(&fake.url, ProxyOpts::keys(&POOL)).await;
    let r = http()
        .post(format!("{}/v1beta/openai/chat/completions", proxy.url))
        .header("authorization", format!("Bearer {CLIENT_KEY}"))
        .json(&json!({"model": "gemini-2.5-flash", "messages": [{"role": "user", "content": "hi there"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v = json_of(r).await;
    assert_eq!(v["choices"][0]["message"]["content"], "echo: hi there");
    let seen = fake.calls("/openai/chat/completions");
    assert_eq!(seen.len(), 1);
    let auth = seen[0].headers["authorization"].to_str().unwrap();
    assert!(
        auth == format!("Bearer {}", POOL[0]) || auth == format!("Bearer {}", POOL[1]),
        "{auth}"
    );
    assert!(seen[0].headers.get("x-goog-api-key").is_none());
}

#[tokio::test]
async fn upstream_errors_reach_the_client_unchanged() {
    let fake = FakeUpstream::start().await;
    let proxy = start_proxy(&fake.url, ProxyOpts::keys(&POOL)).await;
    // The fake answers 404 in Google's envelope for a method it does not know.
    let r = http()
        .get(format!("{}/v1beta/tunedModels/unknown-tune", proxy.url))
        .header("x-goog-api-key", CLIENT_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let via_proxy = r.text().await.unwrap();
    let direct = http()
        .get(format!("{}/v1beta/tunedModels/unknown-tune", fake.url))
        .header("x-goog-api-key", POOL[0])
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(via_proxy, direct);
}

#[tokio::test]
async fn resumable_upload_is_pointed_at_the_proxy_and_chunks_use_the_starting_key() {
    let fake = FakeUpstream::start().await;
    let proxy = start_proxy(&fake.url, ProxyOpts::keys(&POOL)).await;
    let c = http();
    let start = c
        .post(format!("{}/upload/v1beta/files", proxy.url))
        .header("x-goog-api-key", CLIENT_KEY)
        .header("x-goog-upload-protocol", "resumable")
        .header("x-goog-upload-command", "start")
        .header("x-goog-upload-header-content-length", "11")
        .json(&json!({"file": {"display_name": "notes"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(start.status(), 200);
    let upload_url = start.headers()["x-goog-upload-url"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        upload_url.starts_with(&proxy.url),
        "{upload_url} does not point at the proxy"
    );
    assert!(upload_url.contains("upload_id="));
    // Other traffic in between moves the round robin on.
    for _ in 0..3 {
        generate(&proxy.url, "gemini-2.5-flash", "x").await;
    }
    let fin = c
        .post(&upload_url)
        .header("x-goog-api-key", CLIENT_KEY)
        .header("x-goog-upload-command", "upload, finalize")
        .header("x-goog-upload-offset", "0")
        .body("hello world")
        .send()
        .await
        .unwrap();
    assert_eq!(fin.status(), 200);
    let v = json_of(fin).await;
    let name = v["file"]["name"].as_str().unwrap().to_string();
    assert_eq!(v["file"]["sizeBytes"], "11");
    let uploads = fake.calls("/upload/v1beta/files");
    assert_eq!(uploads.len(), 2);
    assert_eq!(
        uploads[0].key(),
        uploads[1].key(),
        "chunk went out with another key"
    );
    // Reading the file back also goes to the key that owns it.
    for _ in 0..2 {
        let r = c
            .get(format!("{}/v1beta/{name}", proxy.url))
            .header("x-goog-api-key", CLIENT_KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let gets = fake.calls("/v1beta/files/");
    assert!(gets.iter().all(|g| g.key() == uploads[0].key()));
}

#[tokio::test]
async fn health_readiness_and_unknown_paths() {
    let fake = FakeUpstream::start().await;
    let proxy = start_proxy(&fake.url, ProxyOpts::keys(&POOL)).await;
    let r = http()
        .get(format!("{}/healthz", proxy.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = http()
        .get(format!("{}/readyz", proxy.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(json_of(r).await["store"], "memory");
    let r = http()
        .get(format!("{}/admin/secret", proxy.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(json_of(r).await["error"]["status"], "NOT_FOUND");
    assert!(fake.recorded().is_empty());
}

#[tokio::test]
async fn graceful_shutdown_lets_an_in_flight_stream_finish() {
    let fake = FakeUpstream::start().await;
    fake.behave(|b| {
        b.stream_delay = Duration::from_millis(200);
        b.stream_events = 4;
    });
    let mut proxy = start_proxy(&fake.url, ProxyOpts::keys(&POOL)).await;
    let resp = stream_sse(&proxy.url, "long").await;
    proxy.shutdown();
    let text = resp.text().await.unwrap();
    assert_eq!(
        text.matches("data: ").count(),
        4,
        "stream cut by shutdown: {text}"
    );
    // New connections are refused once draining has begun.
    tokio::time::timeout(Duration::from_secs(5), &mut proxy.task)
        .await
        .unwrap()
        .unwrap();
    assert!(
        http()
            .get(format!("{}/healthz", proxy.url))
            .send()
            .await
            .is_err()
    );
}

#[tokio::test]
async fn a_base_url_with_a_path_prefix_works_and_the_prefix_is_not_forwarded() {
    let fake = FakeUpstream::start().await;
    let proxy = start_proxy(
        &fake.url,
        ProxyOpts::keys(&POOL).env("PROXY_PATH_PREFIX", "/gemini"),
    )
    .await;
    let base = format!("{}/gemini", proxy.url);
    assert_eq!(
        generate(&base, "gemini-2.5-flash", "prefixed")
            .await
            .status(),
        200
    );
    assert_eq!(
        generate(&proxy.url, "gemini-2.5-flash", "root")
            .await
            .status(),
        200
    );
    let seen = fake.calls(":generateContent");
    assert!(
        seen.iter()
            .all(|r| r.path == "/v1beta/models/gemini-2.5-flash:generateContent"),
        "{seen:?}"
    );
    let start = http()
        .post(format!("{base}/upload/v1beta/files"))
        .header("x-goog-api-key", CLIENT_KEY)
        .header("x-goog-upload-protocol", "resumable")
        .header("x-goog-upload-command", "start")
        .json(&json!({"file": {"display_name": "p"}}))
        .send()
        .await
        .unwrap();
    let upload_url = start.headers()["x-goog-upload-url"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        upload_url.starts_with(&format!("{base}/upload/v1beta/files?upload_id=")),
        "{upload_url}"
    );
    let fin = http()
        .post(&upload_url)
        .header("x-goog-upload-command", "upload, finalize")
        .header("x-goog-upload-offset", "0")
        .body("abc")
        .send()
        .await
        .unwrap();
    assert_eq!(fin.status(), 200);
}
