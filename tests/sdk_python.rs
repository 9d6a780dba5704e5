//! The official google-genai Python SDK, pointed at the proxy with `base_url`, generates,
//! streams, counts tokens, lists models and uploads a file; the upstream sees only pooled keys.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::*;

/// The interpreter with google-genai: `GQP_PYTHON`, else the repository's `.venv`.
fn python() -> PathBuf {
    if let Ok(p) = std::env::var("GQP_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    assert!(
        venv.exists(),
        "this test needs Python with google-genai: run scripts/test (it creates .venv), or set GQP_PYTHON"
    );
    venv
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn google_genai_sdk_works_through_the_proxy() {
    let fake = FakeUpstream::start().await;
    fake.behave(|b| b.stream_delay = Duration::from_millis(500));
    let pool = ["AIzaSdkPooledKey000001", "AIzaSdkPooledKey000002"];
    let proxy = start_proxy(&fake.url, ProxyOpts::keys(&pool)).await;
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/genai_sdk_check.py");
    let out = tokio::process::Command::new(python())
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
