//! The proxy at `RUST_LOG=trace`, driven through every path, never prints, answers, labels or
//! stores a pooled key, a client key or the admin token.

use crate::common;

use common::binary::Binary;
use common::*;
use serde_json::json;

const POOLED: [&str; 3] = [
    "AIzaSecretPooledKeyAAAA1111",
    "AIzaSecretPooledKeyBBBB2222",
    "AIzaSecretPooledKeyDEAD3333",
];
const CLIENT: &str = "client-secret-key-CCCC4444";
const ADMIN: &str = "admin-secret-token-DDDD5555";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_appears_in_logs_responses_metrics_or_redis() {
    let redis = RedisServer::start();
    let fake = FakeUpstream::start().await;
    fake.behave(|b| {
        b.invalid_keys.insert(POOLED[2].to_string());
        b.script.push_back(Scripted::PerDay429);
        b.script.push_back(Scripted::Status(503));
    });
    let pooled = POOLED.join(",");
    let proxy = Binary::start(
        &[
            ("GEMINI_API_KEYS", pooled.as_str()),
            ("PROXY_CLIENT_KEYS", CLIENT),
            ("PROXY_ADMIN_TOKEN", ADMIN),
            ("GEMINI_UPSTREAM_URL", fake.url.as_str()),
            ("REDIS_URL", redis.url.as_str()),
            ("RUST_LOG", "trace"),
        ],
        &[],
    );
    let proxy_url = proxy.url.clone();

    let c = http();
    let mut answers = String::new();
    let body_of = |text: &str| json!({"contents": [{"parts": [{"text": text}]}]});
    let base = format!("{proxy_url}/v1beta/models/gemini-2.5-flash");
    let push = |r: reqwest::Response, answers: &mut String| {
        answers.push_str(&format!("{:?}\n", r.headers()));
        r
    };
    // generate (through a per-day 429, a 503 and a dead key), stream, count, list, embed, openai
    for _ in 0..4 {
        let r = push(
            c.post(format!("{base}:generateContent"))
                .header("x-goog-api-key", CLIENT)
                .json(&body_of("hi"))
                .send()
                .await
                .unwrap(),
            &mut answers,
        );
        answers.push_str(&r.text().await.unwrap());
    }
    let r = push(
        c.post(format!("{base}:streamGenerateContent?alt=sse&key={CLIENT}"))
            .json(&body_of("s"))
            .send()
            .await
            .unwrap(),
        &mut answers,
    );
    answers.push_str(&r.text().await.unwrap());
    let r = push(
        c.post(format!("{base}:countTokens"))
            .header("x-goog-api-key", CLIENT)
            .json(&body_of("c"))
            .send()
            .await
            .unwrap(),
        &mut answers,
    );
    answers.push_str(&r.text().await.unwrap());
    let r = push(
        c.get(format!("{proxy_url}/v1beta/models?$key={CLIENT}"))
            .send()
            .await
            .unwrap(),
        &mut answers,
    );
    answers.push_str(&r.text().await.unwrap());
    let r = push(c.post(format!("{proxy_url}/v1beta/openai/chat/completions")).header("authorization", format!("Bearer {CLIENT}"))
        .json(&json!({"model": "gemini-2.5-flash", "messages": [{"role": "user", "content": "o"}]})).send().await.unwrap(), &mut answers);
    answers.push_str(&r.text().await.unwrap());
    // upload
    let r = c
        .post(format!("{proxy_url}/upload/v1beta/files"))
        .header("x-goog-api-key", CLIENT)
        .header("x-goog-upload-protocol", "resumable")
        .header("x-goog-upload-command", "start")
        .json(&json!({"file": {"display_name": "s"}}))
        .send()
        .await
        .unwrap();
    let upload_url = r.headers()["x-goog-upload-url"]
        .to_str()
        .unwrap()
        .to_string();
    answers.push_str(&format!("{:?}", r.headers()));
    let r = c
        .post(&upload_url)
        .header("x-goog-upload-command", "upload, finalize")
        .header("x-goog-upload-offset", "0")
        .body("data")
        .send()
        .await
        .unwrap();
    answers.push_str(&r.text().await.unwrap());
    // wrong credentials: a pooled key as a client key, a wrong admin token
    let r = c
        .post(format!("{base}:generateContent"))
        .header("x-goog-api-key", POOLED[0])
        .json(&body_of("x"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    answers.push_str(&r.text().await.unwrap());
    let r = c
        .post(format!("{proxy_url}/api/ai/quota-status/"))
        .header("authorization", format!("Bearer {CLIENT}"))
        .body(r#"{"quota_type":"all"}"#)
        .send()
        .await
        .unwrap();
    answers.push_str(&r.text().await.unwrap());
    // status, admin reset, metrics
    let r = c
        .get(format!("{proxy_url}/api/ai/quota-status/"))
        .header("x-goog-api-key", CLIENT)
        .send()
        .await
        .unwrap();
    let status = r.text().await.unwrap();
    assert!(
        status.contains("\"disabled\""),
        "the dead key should show as disabled: {status}"
    );
    answers.push_str(&status);
    let r = c
        .post(format!("{proxy_url}/api/ai/quota-status/"))
        .header("authorization", format!("Bearer {ADMIN}"))
        .body(r#"{"quota_type":"cooldowns"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    answers.push_str(&r.text().await.unwrap());
    answers.push_str(
        &c.get(format!("{proxy_url}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    );
    answers.push_str(
        &c.get(format!("{proxy_url}/readyz"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    );

    // Everything Redis holds: key names and values.
    let mut stored = String::new();
    for k in redis.all_keys().lines().filter(|l| l.starts_with('{')) {
        stored.push_str(k);
        stored.push_str(&redis.cli(&["DUMP", k]).unwrap_or_default());
        stored.push('\n');
    }
    assert!(
        stored.contains("gemini-2.5-flash"),
        "Redis holds no counters: {stored}"
    );

    // Stop the proxy and read everything it printed.
    let (logs, exit) = proxy.stop();
    assert!(exit.success(), "proxy exited with {exit:?}");
    assert!(
        logs.contains("TRACE") || logs.contains("trace"),
        "not running at trace level"
    );
    assert!(
        logs.contains("pooled key disabled"),
        "dead key was not logged"
    );

    for secret in POOLED.iter().chain([CLIENT, ADMIN].iter()) {
        // Also look for a distinctive fragment, in case something truncates or quotes it.
        let fragment = &secret[secret.len() - 12..];
        for (place, text) in [("logs", &logs), ("responses", &answers), ("redis", &stored)] {
            assert!(!text.contains(fragment), "{secret} leaked into {place}");
        }
    }
}

/// The binary run to its end on `env` and a config file holding `toml`: its exit code and
/// what it printed.
fn run_to_exit(env: &[(&str, &str)], toml: &str) -> (Option<i32>, String) {
    let path = std::env::temp_dir().join(format!(
        "gqp-secrets-{}-{}.toml",
        std::process::id(),
        fastrand::u64(..)
    ));
    std::fs::write(&path, toml).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_gemini-quota-proxy"))
        .args(["--config", path.to_str().unwrap()])
        .env_clear()
        .envs(env.iter().copied())
        .env("PROXY_LISTEN", "127.0.0.1:0")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the binary runs");
    // A configuration that loads serves forever: stop it so the test fails instead of hanging.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let _ = child.kill();
    let out = child.wait_with_output().expect("the binary ends");
    let _ = std::fs::remove_file(&path);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

#[test]
fn a_secret_of_the_wrong_type_stops_start_up_naming_the_setting() {
    for (toml, setting) in [
        (
            "[auth]\nadmin_token = 42\nclient_keys = [\"a-long-client-key-0001\"]\n",
            "auth.admin_token",
        ),
        (
            "[auth]\nclient_keys = [7, 3.5, true]\n",
            "auth.client_keys[0]",
        ),
    ] {
        let (code, text) = run_to_exit(&[("GEMINI_API_KEY", POOLED[0])], toml);
        assert_eq!(code, Some(2), "{toml}: {text}");
        assert!(text.contains(setting), "{setting}: {text}");
        assert!(text.contains("must be a string"), "{text}");
    }
    // The same value as a client key and as the admin token.
    let (code, text) = run_to_exit(
        &[
            ("GEMINI_API_KEY", POOLED[0]),
            ("PROXY_CLIENT_KEYS", CLIENT),
            ("PROXY_ADMIN_TOKEN", CLIENT),
        ],
        "",
    );
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("auth.admin_token"), "{text}");
    assert!(!text.contains(CLIENT), "{text}");
}

#[test]
fn short_secrets_and_an_open_metrics_endpoint_on_a_public_listener_are_warned_about() {
    let proxy = Binary::start(
        &[
            ("GEMINI_API_KEY", POOLED[0]),
            ("PROXY_CLIENT_KEYS", "team:shortkey"),
            ("PROXY_ADMIN_TOKEN", "adm1n"),
            ("PROXY_LISTEN", "0.0.0.0:0"),
        ],
        &[],
    );
    let (logs, _) = proxy.stop();
    let warns: Vec<&str> = logs.lines().filter(|l| l.contains("WARN")).collect();
    let has = |s: &str| warns.iter().any(|l| l.contains(s));
    assert!(has("auth.client_keys"), "{logs}");
    assert!(has("auth.admin_token"), "{logs}");
    assert!(has("metrics.token") && has("/metrics is open"), "{logs}");
    assert!(
        !logs.contains("shortkey") && !logs.contains("adm1n"),
        "{logs}"
    );
    // Loopback, long secrets: none of these.
    let proxy = Binary::start(
        &[
            ("GEMINI_API_KEY", POOLED[0]),
            ("PROXY_CLIENT_KEYS", CLIENT),
            ("PROXY_ADMIN_TOKEN", ADMIN),
        ],
        &[],
    );
    let (logs, _) = proxy.stop();
    assert!(!logs.contains("metrics.token"), "{logs}");
    assert!(!logs.contains("auth.client_keys"), "{logs}");
}
