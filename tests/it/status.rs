//! `/api/ai/quota-status/` (the seed's JSON, exact), admin reset rules, metrics and headers.

use crate::common;

use common::*;
use serde_json::{Value, json};

const KEYS: [&str; 2] = ["AIzaStatusKey0000001", "AIzaStatusKey0000002"];

async fn reset(proxy: &str, auth: Option<&str>, body: &str) -> (u16, Value) {
    let mut req = http()
        .post(format!("{proxy}/api/ai/quota-status/"))
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(a) = auth {
        req = req.header("authorization", format!("Bearer {a}"));
    }
    let r = req.send().await.unwrap();
    (r.status().as_u16(), json_of(r).await)
}

#[tokio::test]
async fn four_requests_on_two_keys_at_the_seed_defaults() {
    let fake = FakeUpstream::start().await;
    fake.behave(|b| b.prompt_tokens = Some(500));
    let proxy = start_proxy(&fake.url, ProxyOpts::keys(&KEYS)).await;
    for _ in 0..4 {
        let r = generate(&proxy.url, "gemini-2.5-flash", "hello").await;
        assert_eq!(r.status(), 200);
        assert!(r.headers().contains_key("x-ratelimit-remaining-requests"));
        assert!(r.headers().contains_key("x-ratelimit-remaining-tokens"));
        r.text().await.unwrap();
    }
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let (code, v) = quota_status(&proxy.url, CLIENT_KEY).await;
    assert_eq!(code, 200);
    assert_eq!(v["success"], true);
    let q = &v["quota_status"];
    let u = &q["usage"];
    assert_eq!(u["minute_requests"], 4);
    assert_eq!(u["minute_limit"], 30);
    assert_eq!(u["minute_remaining"], 26);
    assert_eq!(u["daily_requests"], 4);
    assert_eq!(u["daily_limit"], 3000);
    assert_eq!(u["daily_remaining"], 2996);
    assert_eq!(u["minute_tokens"], 2000);
    assert_eq!(u["token_minute_limit"], 2_000_000);
    assert_eq!(u["token_minute_remaining"], 1_998_000);
    assert_eq!(
        u["usage_percentage"],
        json!({"minute": 13.3, "daily": 0.1, "tokens": 0.1})
    );
    assert_eq!(q["healthy"], true);
    assert_eq!(q["store"]["backend"], "memory");
    assert_eq!(q["keys"].as_array().unwrap().len(), 2);
    assert!(v["timestamp"].as_str().unwrap().ends_with('Z'));
    let text = v.to_string();
    for k in KEYS {
        assert!(!text.contains(k), "full key in the status");
    }
    assert!(text.contains("AIza...0001"));
    // The admin token reads it too; nothing else does.
    assert_eq!(quota_status(&proxy.url, ADMIN_TOKEN).await.0, 200);
    assert_eq!(quota_status(&proxy.url, "nope").await.0, 401);
    let r = http()
        .get(format!("{}/api/ai/quota-status/", proxy.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test]
async fn health_warns_at_eighty_percent_and_errs_above_ninety_five() {
    let fake = FakeUpstream::start().await;
    let proxy = start_proxy(
        &fake.url,
        ProxyOpts::keys(&["AIzaHealthKey0000001"]).env("GEMINI_MINUTE_LIMIT", "10"),
    )
    .await;
    for _ in 0..8 {
        generate(&proxy.url, "gemini-2.5-flash", "x").await;
    }
    let (_, v) = quota_status(&proxy.url, CLIENT_KEY).await;
    let q = &v["quota_status"];
    assert_eq!(q["warnings"].as_array().unwrap().len(), 1, "{q}");
    assert!(q["errors"].as_array().unwrap().is_empty());
    assert_eq!(q["healthy"], true);
    for _ in 0..2 {
        generate(&proxy.url, "gemini-2.5-flash", "x").await;
    }
    let (_, v) = quota_status(&proxy.url, CLIENT_KEY).await;
    let q = &v["quota_status"];
    assert!(!q["errors"].as_array().unwrap().is_empty());
    assert_eq!(q["healthy"], false);
}

#[tokio::test]
async fn reset_rules() {
    let fake = FakeUpstream::start().await;
    let proxy = start_proxy(&fake.url, ProxyOpts::keys(&KEYS)).await;
    for _ in 0..3 {
        generate(&proxy.url, "gemini-2.5-flash", "x").await;
    }
    assert_eq!(
        reset(&proxy.url, None, r#"{"quota_type":"minute"}"#)
            .await
            .0,
        401
    );
    assert_eq!(
        reset(&proxy.url, Some(CLIENT_KEY), r#"{"quota_type":"minute"}"#)
            .await
            .0,
        403
    );
    let (code, v) = reset(&proxy.url, Some(ADMIN_TOKEN), r#"{"quota_type":"hourly"}"#).await;
    assert_eq!(code, 400);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("\"minute\"")
    );
    assert_eq!(
        reset(&proxy.url, Some(ADMIN_TOKEN), "{not json").await.0,
        400
    );
    let (code, v) = reset(&proxy.url, Some(ADMIN_TOKEN), r#"{"quota_type":"minute"}"#).await;
    assert_eq!(code, 200);
    assert_eq!(v["quota_status"]["usage"]["minute_requests"], 0);
    assert_eq!(v["quota_status"]["usage"]["daily_requests"], 3);
    let (code, v) = reset(&proxy.url, Some(ADMIN_TOKEN), r#"{"quota_type":"all"}"#).await;
    assert_eq!(code, 200);
    assert_eq!(v["quota_status"]["usage"]["daily_requests"], 0);
    assert_eq!(v["quota_status"]["usage"]["minute_tokens"], 0);
}

#[tokio::test]
async fn metrics_are_prometheus_text_with_masked_keys_only() {
    let fake = FakeUpstream::start().await;
    let proxy = start_proxy(&fake.url, ProxyOpts::keys(&KEYS)).await;
    generate(&proxy.url, "gemini-2.5-flash", "x")
        .await
        .text()
        .await
        .unwrap();
    let text = metrics_text(&proxy.url).await;
    assert!(text.contains("gqp_requests_total"), "{text}");
    assert!(text.contains("gqp_proxy_overhead_seconds"));
    for k in KEYS {
        assert!(!text.contains(k));
    }
}

/// The request counter's labels: model, outcome and masked key, each counted where it belongs
/// (the counter handles are cached per combination; a wrong slot would show here).
#[tokio::test]
async fn request_counters_carry_model_outcome_and_key() {
    let fake = FakeUpstream::start().await;
    let proxy = start_proxy(&fake.url, ProxyOpts::keys(&KEYS)).await;
    let model = "gemini-label-check";
    for _ in 0..3 {
        assert_eq!(generate(&proxy.url, model, "x").await.status(), 200);
    }
    let bad = http()
        .post(format!(
            "{}/v1beta/models/{model}:generateContent",
            proxy.url
        ))
        .header("x-goog-api-key", CLIENT_KEY)
        .header("content-type", "application/json")
        .body("{")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let text = metrics_text(&proxy.url).await;
    let count = |outcome: &str, key: &str| -> u64 {
        text.lines()
            .filter(|l| l.starts_with("gqp_requests_total{"))
            .filter(|l| l.contains(&format!("model=\"{model}\"")))
            .filter(|l| l.contains(&format!("outcome=\"{outcome}\"")))
            .filter(|l| l.contains(&format!("key=\"{key}\"")))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    };
    // Keys are taken in turn: three answers spread over both masked keys.
    let masked: Vec<String> = KEYS
        .iter()
        .map(|k| format!("{}...{}", &k[..4], &k[k.len() - 4..]))
        .collect();
    assert_eq!(
        count("ok", &masked[0]) + count("ok", &masked[1]),
        3,
        "{text}"
    );
    assert!(
        count("ok", &masked[0]) >= 1 && count("ok", &masked[1]) >= 1,
        "{text}"
    );
    assert_eq!(count("client_error", "-"), 1, "{text}");
    assert_eq!(
        count("ok", "-") + count("rate_limited", &masked[0]),
        0,
        "{text}"
    );
}

#[tokio::test]
async fn repeated_upstream_failures_are_a_warning_and_a_success_clears_it() {
    let fake = FakeUpstream::start().await;
    fake.behave(|b| b.always_status = Some(503));
    let proxy = start_proxy(
        &fake.url,
        ProxyOpts::keys(&KEYS).toml("[upstream]\nretry_deadline_secs = 2\n"),
    )
    .await;
    assert_eq!(
        generate(&proxy.url, "gemini-2.5-flash", "x").await.status(),
        503
    );
    let (_, v) = quota_status(&proxy.url, CLIENT_KEY).await;
    let warnings = v["quota_status"]["warnings"].to_string();
    assert!(warnings.contains("upstream failures"), "{warnings}");
    assert_eq!(v["quota_status"]["healthy"], true);
    fake.behave(|b| b.always_status = None);
    assert_eq!(
        generate(&proxy.url, "gemini-2.5-flash", "x").await.status(),
        200
    );
    let (_, v) = quota_status(&proxy.url, CLIENT_KEY).await;
    assert!(
        !v["quota_status"]["warnings"]
            .to_string()
            .contains("upstream failures")
    );
}

#[tokio::test]
async fn the_pool_is_given_per_model_busiest_first_never_summed_across_models() {
    let fake = FakeUpstream::start().await;
    let proxy = start_proxy(&fake.url, ProxyOpts::keys(&KEYS)).await;
    for (model, n) in [("gemini-2.0-flash", 1), ("gemini-2.5-flash", 3)] {
        for _ in 0..n {
            let r = generate(&proxy.url, model, "hello").await;
            assert_eq!(r.status(), 200);
            r.text().await.unwrap();
        }
    }
    let (code, v) = quota_status(&proxy.url, CLIENT_KEY).await;
    assert_eq!(code, 200);
    let q = &v["quota_status"];
    let pools = q["pool_by_model"].as_array().expect("pool_by_model: {q}");
    let models: Vec<&str> = pools.iter().map(|m| m["model"].as_str().unwrap()).collect();
    assert_eq!(
        models,
        ["gemini-2.5-flash", "gemini-2.0-flash"],
        "busiest first"
    );
    // Two keys in two projects at 15 a minute each: 30 for a model's requests.
    assert_eq!(pools[0]["minute_requests"], 3);
    assert_eq!(pools[0]["minute_limit"], 30);
    assert_eq!(pools[0]["minute_remaining"], 27);
    assert_eq!(pools[0]["usage_percentage"]["minute"], 10.0);
    assert_eq!(pools[1]["minute_requests"], 1);
    assert_eq!(pools[1]["minute_limit"], 30);
    assert_eq!(q["pool_models_omitted"], 0);
    // The seed's `usage` stays as it was: both models summed against both models' limits.
    assert_eq!(q["usage"]["minute_requests"], 4);
    assert_eq!(q["usage"]["minute_limit"], 60);
}
