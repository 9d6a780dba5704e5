//! The Vercel AI SDK (`ai` with `@ai-sdk/google`, `baseURL` set to the proxy) runs
//! `generateText` and `streamText` through the proxy against the fake Gemini API: the texts
//! arrive whole, and the upstream sees only pooled keys, never the client's.
//!
//! Needs node and `tests/js/node_modules` (scripts/test runs `npm ci` there); without them the
//! test fails, it is never skipped.

use crate::common;

use std::path::PathBuf;
use std::time::Duration;

use common::*;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_vercel_ai_sdk_generates_and_streams_through_the_proxy_on_pooled_keys() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/js");
    assert!(
        dir.join("node_modules/@ai-sdk/google").is_dir() && dir.join("node_modules/ai").is_dir(),
        "this test needs the Vercel AI SDK: run scripts/test (it runs npm ci in tests/js)"
    );
    let fake = FakeUpstream::start().await;
    fake.behave(|b| {
        b.stream_events = 3;
        b.stream_delay = Duration::from_millis(50);
    });
    let pool = ["AIzaVercelPooledKey0001", "AIzaVercelPooledKey0002"];
    let proxy = start_proxy(&fake.url, ProxyOpts::keys(&pool)).await;
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(std::env::var("GQP_NODE").unwrap_or("node".into()))
            .arg("vercel_ai_sdk.mjs")
            .current_dir(&dir)
            .env("PROXY_URL", &proxy.url)
            .env("CLIENT_KEY", CLIENT_KEY)
            .env_remove("GOOGLE_GENERATIVE_AI_API_KEY")
            .output(),
    )
    .await
    .expect("the SDK script ends within 60 s")
    .expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "SDK script failed:\n{stdout}\n{stderr}"
    );
    let lines: Vec<Value> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let of = |call: &str| {
        lines
            .iter()
            .find(|l| l["call"] == call)
            .unwrap_or_else(|| panic!("no {call} line in:\n{stdout}\n{stderr}"))
            .clone()
    };
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
