//! The quota engine through the whole proxy: what reaches the upstream, what is refused, and
//! what a refusal tells the client.

use crate::common;

use std::time::Duration;

use common::*;
use serde_json::json;

fn retry_after(r: &reqwest::Response) -> u64 {
    r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn two_keys_at_three_a_minute_let_exactly_six_of_ten_through() {
    let fake = FakeUpstream::start().await;
    let proxy = start_proxy(
        &fake.url,
        ProxyOpts::keys(&["AIzaQuotaKey00000001", "AIzaQuotaKey00000002"])
            .env("GEMINI_MINUTE_LIMIT", "3"),
    )
    .await;
    let mut ok = 0;
    for _ in 0..10 {
        let r = generate(&proxy.url, "gemini-2.5-flash", "hello").await;
        match r.status().as_u16() {
            200 => ok += 1,
            429 => {
                let s = retry_after(&r);
                assert!(s > 0 && s <= 61, "Retry-After {s}");
                let v = json_of(r).await;
                assert_eq!(v["error"]["status"], "RESOURCE_EXHAUSTED");
                let details = v["error"]["details"].as_array().unwrap();
                let qf = details
                    .iter()
                    .find(|d| d["@type"] == "type.googleapis.com/google.rpc.QuotaFailure")
                    .unwrap();
                assert_eq!(
                    qf["violations"][0]["quotaDimensions"]["model"],
                    "gemini-2.5-flash"
                );
                assert_eq!(qf["violations"][0]["quotaValue"], "3");
                assert!(
                    details
                        .iter()
                        .any(|d| d["@type"] == "type.googleapis.com/google.rpc.RetryInfo")
                );
            }
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!(ok, 6);
    assert_eq!(fake.calls(":generateContent").len(), 6);
}

#[tokio::test]
async fn token_minute_limit_refuses_the_third_two_hundred_token_prompt() {
    let fake = FakeUpstream::start().await;
    let proxy = start_proxy(
        &fake.url,
        ProxyOpts::keys(&["AIzaTokenKey00000001"]).env("GEMINI_TOKEN_MINUTE_LIMIT", "500"),
    )
    .await;
    let prompt = "x".repeat(800); // 200 tokens at 4 characters a token
    let codes: Vec<u16> = {
        let mut v = Vec::new();
        for _ in 0..3 {
            v.push(
                generate(&proxy.url, "gemini-2.5-flash", &prompt)
                    .await
                    .status()
                    .as_u16(),
            );
        }
        v
    };
    assert_eq!(codes, [200, 200, 429]);
    assert_eq!(fake.calls(":generateContent").len(), 2);
}

#[tokio::test]
async fn a_request_over_the_maximum_is_refused_without_an_upstream_call() {
    let fake = FakeUpstream::start().await;
    let proxy = start_proxy(
        &fake.url,
        ProxyOpts::keys(&["AIzaMaxKey0000000001"]).env("GEMINI_MAX_REQUEST_TOKENS", "100"),
    )
    .await;
    let r = generate(&proxy.url, "gemini-2.5-flash", &"y".repeat(4000)).await;
    assert_eq!(r.status(), 400);
    let v = json_of(r).await;
    assert_eq!(v["error"]["status"], "INVALID_ARGUMENT");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("1000") && msg.contains("100"), "{msg}");
    assert!(fake.recorded().is_empty());
}

#[tokio::test]
async fn daily_limit_retry_after_is_the_time_to_pacific_midnight() {
    let fake = FakeUpstream::start().await;
    let proxy = start_proxy(
        &fake.url,
        ProxyOpts::keys(&["AIzaDailyKey00000001"]).env("GEMINI_DAILY_LIMIT", "2"),
    )
    .await;
    for _ in 0..2 {
        assert_eq!(
            generate(&proxy.url, "gemini-2.5-flash", "hi")
                .await
                .status(),
            200
        );
    }
    let r = generate(&proxy.url, "gemini-2.5-flash", "hi").await;
    assert_eq!(r.status(), 429);
    let got = retry_after(&r) as i64;
    let now = chrono::Utc::now();
    let la = now.with_timezone(&chrono_tz::America::Los_Angeles);
    let midnight = la
        .date_naive()
        .succ_opt()
        .unwrap()
        .and_hms_opt(0, 0, 0)
        .unwrap()
        .and_local_timezone(chrono_tz::America::Los_Angeles)
        .earliest()
        .unwrap();
    let want = (midnight.timestamp_millis() - now.timestamp_millis()) / 1000;
    assert!(
        (got - want).abs() <= 60,
        "Retry-After {got}s, next Pacific midnight in {want}s"
    );
    let v = json_of(r).await;
    assert_eq!(
        v["error"]["details"][0]["violations"][0]["quotaId"],
        "GenerateRequestsPerDayPerProjectPerModel"
    );
}

#[tokio::test]
async fn count_tokens_and_model_listing_never_use_generate_quota() {
    let fake = FakeUpstream::start().await;
    let proxy = start_proxy(
        &fake.url,
        ProxyOpts::keys(&["AIzaFreeKey000000001"])
            .env("GEMINI_MINUTE_LIMIT", "1")
            .env("GEMINI_DAILY_LIMIT", "1"),
    )
    .await;
    let c = http();
    for _ in 0..5 {
        let r = c
            .post(format!(
                "{}/v1beta/models/gemini-2.5-flash:countTokens",
                proxy.url
            ))
            .header("x-goog-api-key", CLIENT_KEY)
            .json(&json!({"contents": [{"parts": [{"text": "count me"}]}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let r = c
            .get(format!("{}/v1beta/models", proxy.url))
            .header("x-goog-api-key", CLIENT_KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    assert_eq!(
        generate(&proxy.url, "gemini-2.5-flash", "now generate")
            .await
            .status(),
        200
    );
    assert_eq!(
        generate(&proxy.url, "gemini-2.5-flash", "again")
            .await
            .status(),
        429
    );
}

#[tokio::test]
async fn settlement_replaces_the_estimate_with_googles_prompt_token_count() {
    let fake = FakeUpstream::start().await;
    fake.behave(|b| b.prompt_tokens = Some(777));
    let proxy = start_proxy(&fake.url, ProxyOpts::keys(&["AIzaSettleKey0000001"])).await;
    // A JSON answer and an SSE stream (cumulative usage on every chunk: never summed).
    assert_eq!(
        generate(&proxy.url, "gemini-2.5-flash", "short")
            .await
            .status(),
        200
    );
    let r = stream_sse(&proxy.url, "short").await;
    r.text().await.unwrap();
    let store = proxy.state.store.clone();
    let mut tokens = 0;
    for _ in 0..100 {
        let usage = store.usage().await.unwrap();
        tokens = usage.iter().map(|(_, _, u)| u.minute_tokens).sum::<u64>();
        if tokens == 2 * 777 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(tokens, 2 * 777);
    // An answer without usage refunds the tokens but keeps the request counted.
    fake.behave(|b| b.script.push_back(Scripted::Status(400)));
    let r = generate(&proxy.url, "gemini-2.5-flash", "z".repeat(400).as_str()).await;
    assert_eq!(r.status(), 400);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let usage = store.usage().await.unwrap();
    assert_eq!(usage[0].2.minute_tokens, 2 * 777);
    assert_eq!(usage[0].2.minute_requests, 3);
}

#[tokio::test]
async fn embed_calls_spend_the_embed_quota_not_the_generate_quota() {
    let fake = FakeUpstream::start().await;
    let proxy = start_proxy(
        &fake.url,
        ProxyOpts::keys(&["AIzaEmbedKey00000001"])
            .env("GEMINI_MINUTE_LIMIT", "1")
            .toml("[auth]\n[limits]\nembed_minute = 2\n"),
    )
    .await;
    let embed = || async {
        http()
            .post(format!(
                "{}/v1beta/models/gemini-embedding-001:embedContent",
                proxy.url
            ))
            .header("x-goog-api-key", CLIENT_KEY)
            .json(&json!({"content": {"parts": [{"text": "embed me"}]}}))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(
        [embed().await, embed().await, embed().await],
        [200, 200, 429]
    );
    assert_eq!(
        generate(&proxy.url, "gemini-2.5-flash", "gen")
            .await
            .status(),
        200
    );
}
