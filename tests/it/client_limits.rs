//! A client over its own limits: Google's 429 naming the client limit (`quotaId`,
//! `quotaValue`, `RetryInfo`, `Retry-After`, `x-gemini-quota-proxy-limit: client`), no pooled
//! key cooled down and none of the pool's quota spent; a model outside its `models` is a 403;
//! a wait within its allowance is waited; a reloaded limit holds on the next request.

use crate::common;

use common::binary::Binary;
use common::*;
use serde_json::{Value, json};

const TEAM_KEY: &str = "team-key-0123456789abcdef";
const KEYS: [&str; 2] = ["AIzaClientLimKey0001", "AIzaClientLimKey0002"];

fn team(limits: &str) -> ProxyOpts {
    ProxyOpts::keys(&KEYS).toml(&format!(
        "[[auth.clients]]\nname = \"team\"\nkey = \"{TEAM_KEY}\"\n{limits}\n"
    ))
}

async fn generate_as(proxy: &str, key: &str, model: &str) -> reqwest::Response {
    http()
        .post(format!("{proxy}/v1beta/models/{model}:generateContent"))
        .header("x-goog-api-key", key)
        .json(&json!({"contents": [{"role": "user", "parts": [{"text": "hello there"}]}]}))
        .send()
        .await
        .unwrap()
}

/// A generate call of `team` that reserves at most 10 output tokens against its budget.
async fn ask_ten_tokens(proxy: &str) -> reqwest::Response {
    http()
        .post(format!(
            "{proxy}/v1beta/models/gemini-2.5-flash:generateContent"
        ))
        .header("x-goog-api-key", TEAM_KEY)
        .json(
            &json!({"contents": [{"role": "user", "parts": [{"text": "hi"}]}],
                      "generationConfig": {"maxOutputTokens": 10}}),
        )
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_client_over_its_rpm_gets_google_s_429_naming_its_own_limit_and_no_key_cools_down() {
    let fake = FakeUpstream::start().await;
    let proxy = start_proxy(&fake.url, team("rpm = 1")).await;
    let ok = generate_as(&proxy.url, TEAM_KEY, "gemini-2.5-flash").await;
    assert_eq!(ok.status(), 200);
    let r = generate_as(&proxy.url, TEAM_KEY, "gemini-2.5-flash").await;
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["x-gemini-quota-proxy-limit"], "client");
    let retry_after: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["status"], "RESOURCE_EXHAUSTED", "{v}");
    let details = v["error"]["details"].as_array().unwrap();
    let violation = &details[0]["violations"][0];
    assert_eq!(violation["quotaId"], "ProxyClientRequestsPerMinute", "{v}");
    assert_eq!(violation["quotaValue"], "1");
    assert_eq!(
        details[1]["@type"],
        "type.googleapis.com/google.rpc.RetryInfo"
    );
    // Only the first reached Google; nothing is held, no key cooled down.
    assert_eq!(fake.calls(":generateContent").len(), 1);
    assert!(proxy.state.store.cooldowns().await.unwrap().is_empty());
    let usage = proxy.state.store.usage().await.unwrap();
    assert_eq!(
        usage.iter().map(|u| u.2.minute_requests).sum::<u64>(),
        1,
        "the refusal spent pool quota: {usage:?}"
    );
    let refusals = proxy.state.clients.refusals();
    assert_eq!(refusals.len(), 1);
    assert_eq!((&*refusals[0].0, refusals[0].1.limit), ("team", "rpm"));
    // Another caller (no limits of its own) is not held back by the team's.
    assert_eq!(
        generate_as(&proxy.url, CLIENT_KEY, "gemini-2.5-flash")
            .await
            .status(),
        200
    );
    let metrics = metrics_text(&proxy.url).await;
    assert!(
        metrics.contains("gqp_client_refusals_total{client=\"team\",limit=\"rpm\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_request_tried_again_on_another_key_counts_once_against_its_client() {
    let fake = FakeUpstream::start().await;
    // Google's 503 on the first try: the proxy tries the other key, which answers.
    fake.behave(|b| {
        b.script
            .push_back(common::fake_upstream::Scripted::Status(503))
    });
    let proxy = start_proxy(&fake.url, team("rpm = 1\nmax_concurrent = 1")).await;
    let r = generate_as(&proxy.url, TEAM_KEY, "gemini-2.5-flash").await;
    assert_eq!(
        r.status(),
        200,
        "the retry was counted as the client's second request"
    );
    assert_eq!(fake.calls(":generateContent").len(), 2);
    // Its one request is counted: the next is over `rpm = 1`; its slot was freed at the end.
    let r = generate_as(&proxy.url, TEAM_KEY, "gemini-2.5-flash").await;
    assert_eq!(r.status(), 429);
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        v["error"]["details"][0]["violations"][0]["quotaId"], "ProxyClientRequestsPerMinute",
        "{v}"
    );
}

#[tokio::test]
async fn a_pool_refusal_does_not_say_it_is_a_client_limit() {
    let fake = FakeUpstream::start().await;
    let proxy = start_proxy(&fake.url, team("rpm = 100").env("GEMINI_MINUTE_LIMIT", "1")).await;
    // Two keys in two projects: two requests fit the pool, the third does not.
    for _ in 0..2 {
        assert_eq!(
            generate_as(&proxy.url, TEAM_KEY, "gemini-2.5-flash")
                .await
                .status(),
            200
        );
    }
    let r = generate_as(&proxy.url, TEAM_KEY, "gemini-2.5-flash").await;
    assert_eq!(r.status(), 429);
    assert!(r.headers().get("x-gemini-quota-proxy-limit").is_none());
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        v["error"]["details"][0]["violations"][0]["quotaId"],
        "GenerateRequestsPerMinutePerProjectPerModel"
    );
}

#[tokio::test]
async fn a_model_outside_the_client_s_models_is_a_403_before_any_quota_is_spent() {
    let fake = FakeUpstream::start().await;
    let proxy = start_proxy(&fake.url, team("models = [\"gemini-2.5-*\"]\nrpm = 5")).await;
    let r = generate_as(&proxy.url, TEAM_KEY, "gemini-3-pro-preview").await;
    assert_eq!(r.status(), 403);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["status"], "PERMISSION_DENIED");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("gemini-3-pro-preview"),
        "{v}"
    );
    assert!(fake.calls(":generateContent").is_empty());
    assert!(proxy.state.store.usage().await.unwrap().is_empty());
    assert_eq!(proxy.state.clients.refusals()[0].1.limit, "models");
    // A model it may call goes through.
    assert_eq!(
        generate_as(&proxy.url, TEAM_KEY, "gemini-2.5-flash")
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn a_client_waits_for_its_own_limit_when_it_frees_within_its_allowance() {
    let fake = FakeUpstream::start().await;
    // A 2 s window: the team's second request frees 2 s after its first, within its 5 s.
    let opts = ProxyOpts::keys(&KEYS)
        .env("PROXY_QUEUE_MAX_WAIT_SECS", "10")
        .toml(&format!(
            "[limits]\nwindow_secs = 2\n\n[[auth.clients]]\nname = \"team\"\nkey = \"{TEAM_KEY}\"\nrpm = 1\nmax_wait_secs = 5\n\n[[auth.clients]]\nname = \"hasty\"\nkey = \"hasty-key-0123456789\"\nrpm = 1\nmax_wait_secs = 0.5\n"
        ));
    let proxy = start_proxy(&fake.url, opts).await;
    assert_eq!(
        generate_as(&proxy.url, TEAM_KEY, "gemini-2.5-flash")
            .await
            .status(),
        200
    );
    let r = generate_as(&proxy.url, TEAM_KEY, "gemini-2.5-flash").await;
    assert_eq!(r.status(), 200);
    let waited: u64 = r.headers()["x-gemini-quota-proxy-waited-ms"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(waited >= 500, "waited {waited} ms");
    assert_eq!(fake.calls(":generateContent").len(), 2);
    // A client whose own allowance is shorter than the wait gets its 429 at once.
    let hasty = "hasty-key-0123456789";
    assert_eq!(
        generate_as(&proxy.url, hasty, "gemini-2.5-flash")
            .await
            .status(),
        200
    );
    let r = generate_as(&proxy.url, hasty, "gemini-2.5-flash").await;
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["x-gemini-quota-proxy-limit"], "client");
    assert!(r.headers().get("x-gemini-quota-proxy-waited-ms").is_none());
}

/// The real binary: a reload that raises the team's `rpm` lets its next request through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reloaded_client_limit_holds_from_the_next_request() {
    let fake = FakeUpstream::start().await;
    let file = std::env::temp_dir().join(format!(
        "gqp-client-limits-{}-{}.toml",
        std::process::id(),
        free_port()
    ));
    let write = |rpm: u64| {
        std::fs::write(
            &file,
            format!(
                "[auth]\nadmin_token = \"{ADMIN_TOKEN}\"\n\n[queue]\nmax_wait_secs = 0\n\n[[auth.clients]]\nname = \"team\"\nkey = \"{TEAM_KEY}\"\nrpm = {rpm}\n"
            ),
        )
        .unwrap()
    };
    write(1);
    let keys = KEYS.join(",");
    let proxy = Binary::start(
        &[
            ("GEMINI_API_KEYS", keys.as_str()),
            ("GEMINI_UPSTREAM_URL", fake.url.as_str()),
        ],
        &["--config", file.to_str().unwrap()],
    );
    let url = proxy.url.clone();
    assert_eq!(
        generate_as(&url, TEAM_KEY, "gemini-2.5-flash")
            .await
            .status(),
        200
    );
    assert_eq!(
        generate_as(&url, TEAM_KEY, "gemini-2.5-flash")
            .await
            .status(),
        429
    );
    write(3);
    let r = http()
        .post(format!("{url}/api/ai/config/reload"))
        .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
    assert_eq!(
        generate_as(&url, TEAM_KEY, "gemini-2.5-flash")
            .await
            .status(),
        200
    );
    let _ = std::fs::remove_file(&file);
}

/// Output at 1,000 USD per 1M tokens, input free: asking for 10 output tokens reserves 0.01
/// USD; the fake's answer (3 output tokens) costs 0.003.
#[tokio::test]
async fn a_budget_refuses_until_its_period_ends_and_its_use_is_a_metric() {
    let fake = FakeUpstream::start().await;
    let opts = team("daily_budget_usd = 0.012").toml(&format!(
        "[prices.\"gemini-2.5-flash\"]\ninput = 0.0\noutput = 1000.0\n\n[[auth.clients]]\nname = \"team\"\nkey = \"{TEAM_KEY}\"\ndaily_budget_usd = 0.012\n"
    ));
    let proxy = start_proxy(&fake.url, opts).await;
    let ask = || ask_ten_tokens(&proxy.url);
    let first = ask().await;
    assert_eq!(first.status(), 200);
    first.bytes().await.unwrap();
    // Settled to 0.003: 0.3 / 1.2 of the budget used, and another 0.01 would pass it.
    let want = "gqp_client_budget_used_ratio{client=\"team\",period=\"day\"} 0.25";
    let mut seen = String::new();
    for _ in 0..50 {
        seen = metrics_text(&proxy.url).await;
        if seen.contains(want) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert!(seen.contains(want), "{seen}");
    let r = ask().await;
    assert_eq!(r.status(), 429);
    let retry_after: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=25 * 3600).contains(&retry_after), "{retry_after}");
    let v: Value = r.json().await.unwrap();
    let violation = &v["error"]["details"][0]["violations"][0];
    assert_eq!(violation["quotaId"], "ProxyClientDailyBudgetUsd", "{v}");
    assert_eq!(violation["quotaValue"], "0.012");
    assert_eq!(fake.calls(":generateContent").len(), 1);
}

/// A free-tier project bills nothing, but a client's budget counts the list price (it caps what
/// the client may take of the pool, whoever pays): what the clients API shows as spent and left,
/// and what the `client_budget` rule reads, is what admission enforces, not the billed cost.
#[tokio::test]
async fn a_budget_shown_is_the_budget_enforced_even_on_a_free_tier_project() {
    let fake = FakeUpstream::start().await;
    let opts = ProxyOpts::keys(&KEYS).toml(&format!(
        "[[keys]]\nkey = \"AIzaFreeTierKey00001\"\nproject = \"free-p\"\n\n\
         [limits.projects.free-p]\nbilling = \"free\"\n\n\
         [prices.\"gemini-2.5-flash\"]\ninput = 0.0\noutput = 1000.0\n\n\
         [[auth.clients]]\nname = \"team\"\nkey = \"{TEAM_KEY}\"\ndaily_budget_usd = 0.012\n"
    ));
    let proxy = start_proxy(&fake.url, opts.env("GEMINI_API_KEYS", "")).await;
    let ask = || ask_ten_tokens(&proxy.url);
    let first = ask().await;
    assert_eq!(first.status(), 200);
    first.bytes().await.unwrap();
    let team = || async {
        let v: Value = http()
            .get(format!("{}/api/ai/clients/team", proxy.url))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["client"].clone()
    };
    // Settled to 0.003 at list price; the ledger's billed cost stays 0.
    let mut row = Value::Null;
    for _ in 0..50 {
        row = team().await;
        if row["today"]["requests"] == 1 && row["budget_used_usd"]["daily"] == 0.003 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(row["today"]["cost_usd"], 0.0, "{row}");
    assert_eq!(row["budget_used_usd"]["daily"], 0.003, "{row}");
    assert_eq!(row["budget_left_usd"]["daily"], 0.009, "{row}");
    assert!(row["budget_used_usd"]["monthly"].is_null(), "{row}");
    // The next request's 0.01 reservation would pass the budget: refused, as shown.
    assert_eq!(ask().await.status(), 429);
}
