//! The official google-genai Python SDK, pointed at the proxy with `base_url`, generates,
//! streams, counts tokens, lists models and uploads a file; the upstream sees only pooled keys.

use crate::common;

use std::path::PathBuf;
use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn google_genai_sdk_works_through_the_proxy() {
    let fake = FakeUpstream::start().await;
    fake.behave(|b| b.stream_delay = Duration::from_millis(500));
    let pool = ["AIzaSdkPooledKey000001", "AIzaSdkPooledKey000002"];
    let proxy = start_proxy(&fake.url, ProxyOpts::keys(&pool)).await;
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/genai_sdk_check.py");
    let out = tokio::process::Command::new(common::sdk::python())
        .arg(&script)
        .env("PROXY_URL", &proxy.url)
        .env("CLIENT_KEY", CLIENT_KEY)
        .env_remove("GOOGLE_API_KEY")
        .env_remove("GEMINI_API_KEY")
        .env_remove("GOOGLE_GEMINI_BASE_URL")
        .output()
        .await
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "SDK script failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("google-genai SDK checks passed"));

    let seen = fake.recorded();
    for path in [
        ":generateContent",
        ":streamGenerateContent",
        ":countTokens",
        "/models",
        "/upload/",
        "/files/",
    ] {
        assert!(
            seen.iter().any(|r| r.path.contains(path)),
            "the SDK never reached {path}"
        );
    }
    for r in &seen {
        let key = r.key().unwrap_or_default();
        assert!(
            pool.contains(&key.as_str()),
            "{} went out with {key:?}",
            r.path
        );
    }
    // The wrong key never reached the upstream.
    assert!(
        !seen
            .iter()
            .any(|r| format!("{:?}", r.headers).contains("wrong-key"))
    );
}

/// Runs tests/python/genai_burst.py (a burst of `burst` generate calls, default SDK options)
/// against `proxy`: (successes, error texts).
async fn sdk_burst(proxy: &str, burst: usize) -> (u64, Vec<String>) {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/genai_burst.py");
    let out = tokio::process::Command::new(common::sdk::python())
        .arg(&script)
        .env("PROXY_URL", proxy)
        .env("CLIENT_KEY", CLIENT_KEY)
        .env("BURST", burst.to_string())
        .env_remove("GOOGLE_API_KEY")
        .env_remove("GEMINI_API_KEY")
        .env_remove("GOOGLE_GEMINI_BASE_URL")
        .output()
        .await
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "burst script failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON line");
    let errors = v["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap().to_string())
        .collect();
    (v["ok"].as_u64().unwrap(), errors)
}

/// google-genai does not retry by default: a burst over the limit raises 429s unless the
/// proxy waits for quota. With the queue on, the whole burst completes without an exception.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_google_genai_burst_over_the_limit_completes_with_the_queue_on() {
    let fake = FakeUpstream::start().await;
    let window = "[limits]\nwindow_secs = 2\n";
    let opts = |wait: &str| {
        ProxyOpts::keys(&["AIzaSdkBurstKey000001"])
            .env("GEMINI_MINUTE_LIMIT", "3")
            .env("PROXY_QUEUE_MAX_WAIT_SECS", wait)
            .toml(window)
    };
    let queued = start_proxy(&fake.url, opts("30")).await;
    let (ok, errors) = sdk_burst(&queued.url, 8).await;
    assert_eq!((ok, errors.len()), (8, 0), "errors: {errors:?}");
    assert_eq!(fake.calls(":generateContent").len(), 8);

    // The same burst without the queue: the SDK raises on the 429s (what the queue spares).
    let unqueued = start_proxy(&fake.url, opts("0")).await;
    let (ok, errors) = sdk_burst(&unqueued.url, 8).await;
    assert_eq!(ok, 3, "errors: {errors:?}");
    assert_eq!(errors.len(), 5);
    assert!(errors.iter().all(|e| e.contains("429")), "{errors:?}");
}
