//! Every billable call counted: embeddings settle to their estimate, a request lands only on a
//! project whose per-request cap takes it, settlements survive a ledger batch Redis cannot take,
//! an answer whose client left is still counted, and image, video and retrieval calls are
//! counted, priced and shown (or refused where the configuration says so).

mod common;

use common::*;
use serde_json::{Value, json};

const KEYS: [&str; 2] = ["AIzaBillingKey000001", "AIzaBillingKey000002"];

async fn post(url: String, body: Value) -> reqwest::Response {
    http()
        .post(url)
        .header("x-goog-api-key", CLIENT_KEY)
        .json(&body)
        .send()
        .await
        .unwrap()
}

/// An embedContent of `chars` characters (about `chars / 4` tokens as the proxy estimates).
async fn embed(proxy: &str, chars: usize) -> reqwest::Response {
    post(
        format!("{proxy}/v1beta/models/gemini-embedding-001:embedContent"),
        json!({"content": {"parts": [{"text": "e".repeat(chars)}]}}),
    )
    .await
}

#[tokio::test]
async fn an_embedding_stays_counted_at_its_estimate_against_the_embed_token_limit() {
    let fake = FakeUpstream::start().await;
    let proxy = start_proxy(
        &fake.url,
        ProxyOpts::keys(&KEYS[..1]).toml("[limits]\nembed_token_minute = 100\n"),
    )
    .await;
    // 240 characters: 60 tokens. The answer carries no usage.
    let first = embed(&proxy.url, 240).await;
    assert_eq!(first.status(), 200);
    first.bytes().await.unwrap();
    // The first one's 60 tokens stay counted, so 60 more would pass 100 in the minute.
    let second = embed(&proxy.url, 240).await;
    assert_eq!(second.status(), 429, "{}", second.text().await.unwrap());
    assert!(second.headers().contains_key("retry-after"));
    let v = json_of(second).await;
    assert_eq!(v["error"]["status"], "RESOURCE_EXHAUSTED", "{v}");
    assert_eq!(fake.calls(":embedContent").len(), 1);
}

#[tokio::test]
async fn a_request_over_a_projects_own_cap_goes_to_a_project_that_takes_it() {
    let fake = FakeUpstream::start().await;
    let toml = format!(
        r#"
[pool]
strategy = "ordered"
[[keys]]
key = "{}"
project = "small"
[[keys]]
key = "{}"
project = "big"
[limits]
max_request_tokens = 100000
[limits.projects.small]
max_request_tokens = 8000
"#,
        KEYS[0], KEYS[1]
    );
    let mut opts = ProxyOpts::keys(&[]).toml(&toml);
    opts.env.remove("GEMINI_API_KEYS");
    let proxy = start_proxy(&fake.url, opts).await;
    // 50k tokens: over small's 8k, within big's 100k. The ordered strategy tries small first.
    let r = generate(&proxy.url, "gemini-2.5-flash", &"x".repeat(200_000)).await;
    assert_eq!(r.status(), 200);
    r.bytes().await.unwrap();
    // A small one still goes to the first project.
    let r = generate(&proxy.url, "gemini-2.5-flash", "hi").await;
    assert_eq!(r.status(), 200);
    r.bytes().await.unwrap();
    let sent = fake.calls(":generateContent");
    assert_eq!(sent.len(), 2);
    assert_eq!(sent[0].key().as_deref(), Some(KEYS[1]), "the big request");
    assert_eq!(sent[1].key().as_deref(), Some(KEYS[0]), "the small request");
}

#[tokio::test]
async fn a_request_over_every_projects_cap_is_a_clear_400() {
    let fake = FakeUpstream::start().await;
    let toml = format!(
        r#"
[[keys]]
key = "{}"
project = "small"
[limits]
max_request_tokens = 100000
[limits.projects.small]
max_request_tokens = 8000
"#,
        KEYS[0]
    );
    let mut opts = ProxyOpts::keys(&[]).toml(&toml);
    opts.env.remove("GEMINI_API_KEYS");
    let proxy = start_proxy(&fake.url, opts).await;
    let r = generate(&proxy.url, "gemini-2.5-flash", &"x".repeat(200_000)).await;
    assert_eq!(r.status(), 400);
    let v = json_of(r).await;
    assert_eq!(v["error"]["status"], "INVALID_ARGUMENT", "{v}");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(message.contains("8000"), "{message}");
    assert!(fake.calls(":generateContent").is_empty());
}
