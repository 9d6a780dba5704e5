//! Spend caps, on memory and on Redis: Google's spend-based 429 holds the whole project with
//! backoff (keys kept, the request served by another project, the hold on the status page), and
//! `limits.projects.P.monthly_spend_cap_usd` stops a project once the month's priced spend
//! reaches it, until the month turns.

use crate::common;

use std::time::Duration;

use chrono::{Datelike, TimeZone, Utc};
use common::*;
use serde_json::Value;

const KEYS: [&str; 2] = ["AIzaSpendCapKey000001", "AIzaSpendCapKey000002"];

/// A proxy on two projects, `capped` (tried first) and `other`, with `limits` added to
/// `[limits]` and the store in `redis` when given.
async fn proxy(
    fake: &FakeUpstream,
    keys: usize,
    limits: &str,
    redis: Option<&RedisServer>,
) -> Proxy {
    let mut toml = String::from("[pool]\nstrategy = \"ordered\"\n");
    for (key, project) in KEYS.iter().zip(["capped", "other"]).take(keys) {
        toml.push_str(&format!(
            "[[keys]]\nkey = \"{key}\"\nproject = \"{project}\"\n"
        ));
    }
    // A high token limit: the reported prompts are large, and only the cap may stop them.
    toml.push_str(&format!("[limits]\ntoken_minute = 100000000\n{limits}\n"));
    let mut opts = ProxyOpts::keys(&[]).toml(&toml);
    opts.env.remove("GEMINI_API_KEYS");
    if let Some(r) = redis {
        opts = opts.env("REDIS_URL", &r.url);
    }
    start_proxy(&fake.url, opts).await
}

/// The status page's entry of pooled key `key`.
async fn key_status(proxy: &Proxy, key: &str) -> Value {
    let (code, v) = quota_status(&proxy.url, ADMIN_TOKEN).await;
    assert_eq!(code, 200, "{v}");
    let masked_tail = &key[key.len() - 4..];
    v["quota_status"]["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"].as_str().unwrap().ends_with(masked_tail))
        .cloned()
        .unwrap_or_else(|| panic!("no key {masked_tail} in {v}"))
}

async fn ok(proxy: &Proxy) {
    let r = generate(&proxy.url, "gemini-2.5-flash", "hi").await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    r.bytes().await.unwrap();
}

/// Poll the status page until `f` holds for key `key`'s entry.
async fn key_status_until(proxy: &Proxy, key: &str, f: impl Fn(&Value) -> bool) -> Value {
    let end = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let k = key_status(proxy, key).await;
        if f(&k) || std::time::Instant::now() > end {
            return k;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn a_spend_cap_429_holds_the_project_and_another_project_serves(redis: Option<&RedisServer>) {
    let fake = FakeUpstream::start().await;
    fake.behave(|b| {
        b.spend_capped_keys.insert(KEYS[0].to_string());
    });
    let proxy = proxy(&fake, 2, "", redis).await;
    ok(&proxy).await;
    let sent = fake.calls(":generateContent");
    assert_eq!(sent.len(), 2, "tried on the capped project, then the other");
    assert_eq!(sent[0].key().as_deref(), Some(KEYS[0]));
    assert_eq!(sent[1].key().as_deref(), Some(KEYS[1]));

    // The whole project is held (every model), with the first step of the backoff, and shown
    // with its reason; the key is not disabled.
    let k = key_status(&proxy, KEYS[0]).await;
    assert_eq!(k["state"], "cooldown", "{k}");
    assert_eq!(k["cooldown_model"], "*", "{k}");
    let reason = k["reason"].as_str().unwrap();
    assert!(reason.contains("spend-based limit"), "{reason}");
    assert!(reason.contains("MonthlySpendCapPerProject"), "{reason}");
    let until = chrono::DateTime::parse_from_rfc3339(k["cooldown_until"].as_str().unwrap())
        .unwrap()
        .with_timezone(&Utc);
    let left = (until - Utc::now()).num_seconds();
    assert!(
        (50..=61).contains(&left),
        "held {left} s, not about a minute"
    );
    assert!(
        proxy
            .state
            .store
            .key_states(&[proxy.state.pool.keys[0].kid.clone()])
            .await
            .unwrap()
            == [gemini_quota_proxy::quota::KeyState::Active],
        "the key stays enabled"
    );

    // Another model of the held project is not tried either.
    let r = generate(&proxy.url, "gemini-2.5-pro", "hi").await;
    assert_eq!(r.status(), 200);
    r.bytes().await.unwrap();
    let sent = fake.calls(":generateContent");
    assert_eq!(sent.len(), 3);
    assert_eq!(sent[2].key().as_deref(), Some(KEYS[1]));

    let metrics = metrics_text(&proxy.url).await;
    assert!(
        metrics.contains("gqp_upstream_429_total{kind=\"spend_cap\"}"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_spend_cap_429_holds_the_whole_project_and_another_serves_on_memory() {
    a_spend_cap_429_holds_the_project_and_another_project_serves(None).await;
}

#[tokio::test]
async fn a_spend_cap_429_holds_the_whole_project_and_another_serves_on_redis() {
    let redis = RedisServer::start();
    a_spend_cap_429_holds_the_project_and_another_project_serves(Some(&redis)).await;
}

/// Each answer reports 1M prompt tokens of gemini-2.5-flash: $0.30 each (and a few output
/// tokens). A cap of $0.50 is reached by the second.
const CAP: &str = "[limits.projects.capped]\nmonthly_spend_cap_usd = 0.5\n";

async fn a_project_at_its_cap_stops_and_the_other_takes_over(redis: Option<&RedisServer>) {
    let fake = FakeUpstream::start().await;
    fake.behave(|b| b.prompt_tokens = Some(1_000_000));
    let proxy = proxy(&fake, 2, CAP, redis).await;
    ok(&proxy).await;
    ok(&proxy).await;
    let k = key_status_until(&proxy, KEYS[0], |k| {
        k["reason"]
            .as_str()
            .is_some_and(|r| r.contains("monthly spend cap"))
    })
    .await;
    assert_eq!(k["cooldown_model"], "*", "{k}");
    let reason = k["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("monthly spend cap of $0.50 reached ($0.60"),
        "{reason}"
    );
    for _ in 0..3 {
        ok(&proxy).await;
    }
    let keys: Vec<Option<String>> = fake
        .calls(":generateContent")
        .iter()
        .map(|r| r.key())
        .collect();
    assert_eq!(
        keys,
        [KEYS[0], KEYS[0], KEYS[1], KEYS[1], KEYS[1]].map(|k| Some(k.to_string())),
        "the capped project served until its cap, the other after"
    );
    let (_, v) = quota_status(&proxy.url, ADMIN_TOKEN).await;
    let caps = &v["quota_status"]["spend_caps"];
    assert_eq!(caps[0]["project"], "capped", "{v}");
    assert_eq!(caps[0]["cap_usd"], 0.5, "{v}");
    assert_eq!(caps[0]["reached"], true, "{v}");
    let spent = caps[0]["month_spend_usd"].as_f64().unwrap();
    assert!((0.6..0.61).contains(&spent), "{v}");
    assert!(caps[0]["percent"].as_f64().unwrap() >= 120.0, "{v}");
    // A client key sees that the project is held, not what the pool spends.
    let (_, c) = quota_status(&proxy.url, CLIENT_KEY).await;
    assert!(c["quota_status"]["spend_caps"].is_null(), "{c}");
    assert!(!c.to_string().contains("spent"), "{c}");
    assert!(c.to_string().contains("monthly spend cap reached"), "{c}");
    let metrics = metrics_text(&proxy.url).await;
    assert!(
        metrics.contains("gqp_project_spend_cap_ratio{project=\"capped\"}"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_project_at_its_monthly_spend_cap_stops_and_others_take_its_requests_on_memory() {
    a_project_at_its_cap_stops_and_the_other_takes_over(None).await;
}

#[tokio::test]
async fn a_project_at_its_monthly_spend_cap_stops_and_others_take_its_requests_on_redis() {
    let redis = RedisServer::start();
    a_project_at_its_cap_stops_and_the_other_takes_over(Some(&redis)).await;
}

/// Seconds from now to the first midnight of next month in `tz`.
fn secs_to_next_month(tz: chrono_tz::Tz) -> i64 {
    let now = Utc::now().with_timezone(&tz);
    let (y, m) = if now.month() == 12 {
        (now.year() + 1, 1)
    } else {
        (now.year(), now.month() + 1)
    };
    let next = tz.with_ymd_and_hms(y, m, 1, 0, 0, 0).earliest().unwrap();
    (next.with_timezone(&Utc) - Utc::now()).num_seconds()
}

async fn only_a_capped_project_answers_429_until_the_month_turns(redis: Option<&RedisServer>) {
    let fake = FakeUpstream::start().await;
    fake.behave(|b| b.prompt_tokens = Some(1_000_000));
    // A zone far from Pacific time: the month turns at its midnight.
    let limits = format!("timezone = \"Asia/Tokyo\"\n{CAP}");
    let proxy = proxy(&fake, 1, &limits, redis).await;
    ok(&proxy).await;
    ok(&proxy).await;
    for _ in 0..2 {
        let r = generate(&proxy.url, "gemini-2.5-flash", "hi").await;
        assert_eq!(r.status(), 429);
        let retry_after: i64 = r.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        let expected = secs_to_next_month(chrono_tz::Asia::Tokyo);
        assert!(
            (retry_after - expected).abs() <= 5,
            "Retry-After {retry_after}, the month turns in {expected} s"
        );
        let v = json_of(r).await;
        assert_eq!(v["error"]["status"], "RESOURCE_EXHAUSTED", "{v}");
    }
    assert_eq!(fake.calls(":generateContent").len(), 2);
}

#[tokio::test]
async fn with_only_a_capped_project_the_client_gets_429_until_the_month_turns_on_memory() {
    only_a_capped_project_answers_429_until_the_month_turns(None).await;
}

#[tokio::test]
async fn with_only_a_capped_project_the_client_gets_429_until_the_month_turns_on_redis() {
    let redis = RedisServer::start();
    only_a_capped_project_answers_429_until_the_month_turns(Some(&redis)).await;
}

#[tokio::test]
async fn bare_429s_on_two_models_of_one_project_hold_the_whole_project() {
    let fake = FakeUpstream::start().await;
    let proxy = proxy(&fake, 2, "", None).await;
    for model in ["gemini-2.5-flash", "gemini-2.5-pro"] {
        fake.behave(|b| b.script.push_back(Scripted::Bare429));
        let r = generate(&proxy.url, model, "hi").await;
        assert_eq!(r.status(), 200, "{model}: served by the other project");
        r.bytes().await.unwrap();
    }
    let k = key_status(&proxy, KEYS[0]).await;
    assert_eq!(k["cooldown_model"], "*", "{k}");
    let reason = k["reason"].as_str().unwrap();
    assert!(reason.contains("several models"), "{reason}");
    // A third model is not tried on the held project.
    let r = generate(&proxy.url, "gemini-2.0-flash", "hi").await;
    assert_eq!(r.status(), 200);
    r.bytes().await.unwrap();
    let last = fake.calls(":generateContent").pop().unwrap();
    assert_eq!(last.key().as_deref(), Some(KEYS[1]));
}
