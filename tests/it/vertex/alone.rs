//! A pool of Vertex entries alone (no AI Studio key): it starts and serves what Vertex serves,
//! and refuses what only AI Studio keys serve (files, uploads, cachedContents, batches, Live)
//! in Google's envelope, saying why.

use serde_json::json;

use super::{MODEL, post, prompt};
use crate::common::vertex_upstream::FakeVertex;
use crate::common::{self, CLIENT_KEY, FakeUpstream, ProxyOpts, http, json_of, start_proxy};

#[tokio::test]
async fn a_pool_of_vertex_entries_alone_serves_generation_and_refuses_ai_studio_only_calls() {
    let studio = FakeUpstream::start().await;
    let vertex = FakeVertex::start().await;
    let toml = format!(
        "[pool]\norder = \"ai-studio-first\"\n{}",
        vertex.entry("p1", "us-central1")
    );
    let proxy = start_proxy(&studio.url, ProxyOpts::keys(&[]).toml(&toml)).await;
    assert!(proxy.state.pool.keys.iter().all(|k| k.vertex.is_some()));

    let base = format!("{}/v1beta/models", proxy.url);
    let r = post(format!("{base}/{MODEL}:generateContent"), prompt("hi")).await;
    assert_eq!(r.status(), 200);
    let r = post(
        format!("{base}/{MODEL}:countTokens"),
        json!({"contents": [{"parts": [{"text": "abc"}]}]}),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(vertex.recorded().len(), 2);

    let refused = |r: reqwest::Response| async move {
        assert_eq!(r.status(), 400);
        let v = json_of(r).await;
        assert_eq!(v["error"]["status"], "FAILED_PRECONDITION", "{v}");
        let m = v["error"]["message"].as_str().unwrap().to_string();
        assert!(
            m.contains("only Vertex AI entries") && m.contains("GEMINI_API_KEY"),
            "{m}"
        );
        m
    };
    let get = |path: &str| {
        http()
            .get(format!("{}{path}", proxy.url))
            .header("x-goog-api-key", CLIENT_KEY)
            .send()
    };
    let m = refused(get("/v1beta/files").await.unwrap()).await;
    assert!(m.starts_with("The Files API"), "{m}");
    let m = refused(
        post(
            format!("{}/upload/v1beta/files", proxy.url),
            json!({"file": {"display_name": "x"}}),
        )
        .await,
    )
    .await;
    assert!(m.starts_with("The Files API"), "{m}");
    let m = refused(
        post(
            format!("{}/v1beta/cachedContents", proxy.url),
            json!({"model": format!("models/{MODEL}")}),
        )
        .await,
    )
    .await;
    assert!(m.starts_with("cachedContents"), "{m}");
    let m = refused(
        post(
            format!("{base}/{MODEL}:batchGenerateContent"),
            json!({"batch": {"input_config": {"requests": {"requests": []}}}}),
        )
        .await,
    )
    .await;
    assert!(m.starts_with("The Batch API"), "{m}");
    let m = refused(
        post(
            format!("{base}/{MODEL}:generateContent"),
            json!({"cachedContent": "cachedContents/abc",
                "contents": [{"role": "user", "parts": [{"text": "x"}]}]}),
        )
        .await,
    )
    .await;
    assert!(m.starts_with("A request naming"), "{m}");

    // The Live API: refused at the upgrade, before any socket is opened.
    let r = http()
        .get(format!(
            "{}/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent?key={CLIENT_KEY}",
            proxy.url
        ))
        .header("upgrade", "websocket")
        .header("connection", "upgrade")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .send()
        .await
        .unwrap();
    let m = refused(r).await;
    assert!(m.starts_with("The Live API"), "{m}");

    assert!(studio.recorded().is_empty(), "nothing went to AI Studio");
    assert_eq!(vertex.recorded().len(), 2, "nor to Vertex");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_starts_and_serves_with_vertex_entries_and_no_api_key() {
    let studio = FakeUpstream::start().await;
    let vertex = FakeVertex::start().await;
    let file = super::config_file(&vertex, &vertex.credentials_file);
    let f = file.clone();
    let (status, stdout, stderr) = tokio::task::spawn_blocking(move || {
        common::binary::run(
            &[("PROXY_CLIENT_KEYS", CLIENT_KEY)],
            &["--config", &f, "--check"],
        )
    })
    .await
    .unwrap();
    assert_eq!(status.code(), Some(0), "{stdout}{stderr}");
    assert!(
        stdout.contains("vertex:    1 Vertex AI entry (tokens minted)"),
        "{stdout}"
    );
    let upstream = studio.url.clone();
    let bin = tokio::task::spawn_blocking(move || {
        common::binary::Binary::start(
            &[
                ("PROXY_CLIENT_KEYS", CLIENT_KEY),
                ("GEMINI_UPSTREAM_URL", &upstream),
                ("PROXY_WATCH_CONFIG", "false"),
            ],
            &["--config", &file],
        )
    })
    .await
    .unwrap();
    let r = post(
        format!("{}/v1beta/models/{MODEL}:generateContent", bin.url),
        prompt("alone"),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        json_of(r).await["candidates"][0]["content"]["parts"][0]["text"],
        "from vertex"
    );
    assert_eq!(vertex.recorded().len(), 1);
    assert!(studio.recorded().is_empty());
    tokio::task::spawn_blocking(move || bin.stop())
        .await
        .unwrap();
}
