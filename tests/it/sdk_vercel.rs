//! The Vercel AI SDK (`ai` with `@ai-sdk/google`, `baseURL` set to the proxy) runs
//! `generateText` and `streamText` through the proxy against the fake Gemini API: the texts
//! arrive whole, and the upstream sees only pooled keys, never the client's.
//!
//! Needs node and `tests/js/node_modules` (scripts/test runs `npm ci` there); without them the
//! test fails, it is never skipped.

use crate::common;

use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_vercel_ai_sdk_generates_and_streams_through_the_proxy_on_pooled_keys() {
    let fake = FakeUpstream::start().await;
    fake.behave(|b| {
        b.stream_events = 3;
        b.stream_delay = Duration::from_millis(50);
    });
    let pool = ["AIzaVercelPooledKey0001", "AIzaVercelPooledKey0002"];
    let proxy = start_proxy(&fake.url, ProxyOpts::keys(&pool)).await;
    let out = common::sdk::run_node(
        "vercel_ai_sdk.mjs",
        &["@ai-sdk/google", "ai"],
        &proxy.url,
        CLIENT_KEY,
        &["GOOGLE_GENERATIVE_AI_API_KEY"],
        Duration::from_secs(60),
    )
    .await;
    let of = |call: &str| out.of(call);
    let generated = of("generateText");
    assert_eq!(generated["text"], "echo: Say hello", "{generated}");
    assert!(
        generated["inputTokens"].as_u64().unwrap_or(0) > 0,
        "{generated}"
    );
    let streamed = of("streamText");
    assert_eq!(streamed["text"], "chunk 0 chunk 1 chunk 2 ", "{streamed}");

    let seen = fake.recorded();
    for path in [":generateContent", ":streamGenerateContent"] {
        assert!(
            seen.iter().any(|r| r.path.contains(path)),
            "the SDK never reached {path}"
        );
    }
    for r in &seen {
        let key = r.key().unwrap_or_default();
        assert!(
            pool.contains(&key.as_str()),
            "{} went out with {key:?}, not a pooled key",
            r.path
        );
        assert!(
            !format!("{:?}", r.headers).contains(CLIENT_KEY),
            "the client key reached the upstream"
        );
    }
}
