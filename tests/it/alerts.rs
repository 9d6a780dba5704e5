//! Alerts end to end: real proxies, a real webhook receiver, a real SMTP conversation and a
//! real Redis shared by three replicas. Usage crosses the thresholds through real requests and
//! resolves through the admin reset.

use crate::common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::sinks::{Blackhole, Receiver, SmtpSink};
use common::*;
use serde_json::{Value, json};

const KEY: &str = "AIzaAlertKey00000001";
const MODEL: &str = "gemini-2.5-flash";
/// The minute limit: 8 requests are 80 %, 10 are 100 %.
const MINUTE: &str = "10";

/// A fast evaluator: rules every 50 ms, transitions grouped for `group_wait` seconds, each
/// group sent as soon as it is due (no `group_interval`).
fn fast(group_wait: f64) -> String {
    format!(
        "[alerts]\nevaluate_every_secs = 0.05\ngroup_wait_secs = {group_wait}\ngroup_interval_secs = 0\n"
    )
}

async fn send(proxy: &str, n: usize) {
    for i in 0..n {
        let r = generate(proxy, MODEL, &format!("hello {i}")).await;
        assert_eq!(r.status(), 200, "request {i}");
    }
}

async fn reset_minute(proxy: &str) {
    let r = http()
        .post(format!("{proxy}/api/ai/quota-status/"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"quota_type": "minute"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

async fn alerts_api(proxy: &str) -> Value {
    let r = http()
        .get(format!("{proxy}/api/ai/alerts/"))
        .header("x-goog-api-key", ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    json_of(r).await
}

/// Wait until the alerts API of `proxy` says `pred`.
async fn until_api(proxy: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let end = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let v = alerts_api(proxy).await;
        if pred(&v) {
            return v;
        }
        assert!(
            std::time::Instant::now() < end,
            "alerts never became so: {v}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn firing_rules(v: &Value) -> Vec<(String, String)> {
    v["firing"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["rule"].as_str().unwrap().to_string(),
                a["severity"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// The (rule, severity, status) of each alert in a `json` body.
fn summary(body: &Value) -> Vec<(String, String, String)> {
    let mut v: Vec<_> = body["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["rule"].as_str().unwrap().to_string(),
                a["severity"].as_str().unwrap().to_string(),
                a["status"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    v.sort();
    v
}

fn t(rule: &str, sev: &str, status: &str) -> (String, String, String) {
    (rule.to_string(), sev.to_string(), status.to_string())
}

/// Nothing more arrives: a few group waits pass with the count unchanged.
async fn settle(count: impl Fn() -> usize, expect: usize, window: Duration) {
    tokio::time::sleep(window).await;
    assert_eq!(count(), expect, "more notifications than transitions");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minute_usage_warns_at_80_then_turns_critical_and_a_reset_resolves_it_once_each() {
    let fake = FakeUpstream::start().await;
    let hooks = Receiver::start().await;
    let smtp = SmtpSink::start().await;
    let proxy = start_proxy(
        &fake.url,
        ProxyOpts::keys(&[KEY])
            .env("GEMINI_MINUTE_LIMIT", MINUTE)
            .env("PROXY_ALERT_WEBHOOK_URL", &format!("{}/json", hooks.url))
            .env("PROXY_SMTP_URL", &format!("smtp://127.0.0.1:{}", smtp.port))
            .env("PROXY_ALERT_EMAIL_FROM", "proxy@example.com")
            .env("PROXY_ALERT_EMAIL_TO", "ops@example.com,oncall@example.com")
            .toml(&fast(0.1)),
    )
    .await;
    let count = || hooks.bodies("/json").len();

    send(&proxy.url, 8).await;
    assert!(eventually(Duration::from_secs(10), || count() == 1).await);
    let first = &hooks.bodies("/json")[0];
    assert_eq!(first["status"], "firing");
    assert_eq!(
        summary(first),
        [t("minute_usage_high", "warning", "firing")]
    );
    assert_eq!(first["alerts"][0]["labels"]["model"], MODEL);
    assert!(
        first["alerts"][0]["summary"]
            .as_str()
            .unwrap()
            .contains("80% of the limit (8 of 10)"),
        "{first}"
    );

    send(&proxy.url, 2).await;
    assert!(eventually(Duration::from_secs(10), || count() == 2).await);
    let second = &hooks.bodies("/json")[1];
    assert_eq!(
        summary(second),
        [
            t("all_keys_exhausted", "critical", "firing"),
            t("minute_usage_high", "critical", "firing"),
        ]
    );
    // Stamped once the proxy has the receiver's answer (a moment after the receiver has
    // the body).
    let api = until_api(&proxy.url, |v| {
        v["firing"]
            .as_array()
            .unwrap()
            .iter()
            .all(|a| a["last_notified_at"].is_string())
    })
    .await;
    assert_eq!(api["success"], true);
    assert_eq!(api["firing"].as_array().unwrap().len(), 2);
    assert_eq!(
        api["recent"][0]["last_notified_at"], api["firing"][0]["last_notified_at"],
        "{api}"
    );
    let (_, status) = quota_status(&proxy.url, CLIENT_KEY).await;
    assert_eq!(status["quota_status"]["alerts"]["firing"], 2, "{status}");

    reset_minute(&proxy.url).await;
    assert!(eventually(Duration::from_secs(10), || count() == 3).await);
    let third = &hooks.bodies("/json")[2];
    assert_eq!(third["status"], "resolved");
    assert_eq!(
        summary(third),
        [
            t("all_keys_exhausted", "critical", "resolved"),
            t("minute_usage_high", "critical", "resolved"),
        ]
    );
    assert!(third["alerts"][0]["resolved_at"].is_string());
    settle(count, 3, Duration::from_millis(600)).await;

    // The same three transitions by e-mail: a real SMTP conversation, both recipients.
    assert!(eventually(Duration::from_secs(10), || smtp.mails().len() == 3).await);
    let mails = smtp.mails();
    assert_eq!(mails[0].from, "<proxy@example.com>");
    assert_eq!(mails[0].to, ["<ops@example.com>", "<oncall@example.com>"]);
    assert_eq!(
        mails[0].subject(),
        "[gemini-quota-proxy] FIRING warning: minute_usage_high"
    );
    assert!(mails[0].data.contains("(8 of 10)"), "{}", mails[0].data);
    assert!(
        mails[1]
            .subject()
            .starts_with("[gemini-quota-proxy] FIRING critical: ")
    );
    assert!(
        mails[2]
            .subject()
            .starts_with("[gemini-quota-proxy] RESOLVED: ")
    );
    assert!(
        mails.iter().all(|m| m.auth.is_none()),
        "no credentials, no AUTH"
    );

    let api = alerts_api(&proxy.url).await;
    assert!(api["firing"].as_array().unwrap().is_empty());
    // Newest first: the resolves, the rise to critical and the first firing.
    let recent = api["recent"].as_array().unwrap();
    assert_eq!(recent.len(), 5, "{api}");
    assert_eq!(recent[0]["status"], "resolved");
    assert_eq!(recent[4]["severity"], "warning");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_condition_flapping_inside_group_wait_sends_one_message() {
    let fake = FakeUpstream::start().await;
    let hooks = Receiver::start().await;
    let proxy = start_proxy(
        &fake.url,
        ProxyOpts::keys(&[KEY])
            .env("GEMINI_MINUTE_LIMIT", MINUTE)
            .env("PROXY_ALERT_WEBHOOK_URL", &format!("{}/json", hooks.url))
            .toml(&fast(3.0)),
    )
    .await;
    let firing = |v: &Value| !v["firing"].as_array().unwrap().is_empty();
    // Fire, resolve, fire, each seen by the evaluator, all inside one group wait.
    send(&proxy.url, 8).await;
    until_api(&proxy.url, firing).await;
    reset_minute(&proxy.url).await;
    until_api(&proxy.url, |v| !firing(v)).await;
    send(&proxy.url, 8).await;
    let v = until_api(&proxy.url, firing).await;
    assert_eq!(
        v["recent"].as_array().unwrap().len(),
        3,
        "three transitions: {v}"
    );
    assert!(
        hooks.hooks().is_empty(),
        "nothing sent inside the group wait"
    );

    assert!(eventually(Duration::from_secs(10), || hooks.hooks().len() == 1).await);
    let body = &hooks.bodies("/json")[0];
    assert_eq!(summary(body), [t("minute_usage_high", "warning", "firing")]);
    settle(|| hooks.hooks().len(), 1, Duration::from_millis(500)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_on_one_redis_send_each_transition_exactly_once() {
    let redis = RedisServer::start();
    let fake = FakeUpstream::start().await;
    let hooks = Receiver::start().await;
    let mut proxies = Vec::new();
    for _ in 0..3 {
        proxies.push(
            start_proxy(
                &fake.url,
                ProxyOpts::keys(&[KEY])
                    .env("REDIS_URL", &redis.url)
                    .env("GEMINI_MINUTE_LIMIT", MINUTE)
                    .env("PROXY_ALERT_WEBHOOK_URL", &format!("{}/json", hooks.url))
                    .toml(&fast(0.1)),
            )
            .await,
        );
    }
    // Spread over the replicas; every one of them sees the shared count.
    for i in 0..8 {
        let r = generate(&proxies[i % 3].url, MODEL, "hi").await;
        assert_eq!(r.status(), 200);
    }
    for p in &proxies {
        let v = until_api(&p.url, |v| !v["firing"].as_array().unwrap().is_empty()).await;
        assert_eq!(
            firing_rules(&v),
            [("minute_usage_high".into(), "warning".into())]
        );
    }
    assert!(eventually(Duration::from_secs(10), || hooks.hooks().len() == 1).await);
    settle(|| hooks.hooks().len(), 1, Duration::from_millis(600)).await;
    assert_eq!(
        summary(&hooks.bodies("/json")[0]),
        [t("minute_usage_high", "warning", "firing")]
    );

    reset_minute(&proxies[1].url).await;
    for p in &proxies {
        until_api(&p.url, |v| v["firing"].as_array().unwrap().is_empty()).await;
    }
    assert!(eventually(Duration::from_secs(10), || hooks.hooks().len() == 2).await);
    settle(|| hooks.hooks().len(), 2, Duration::from_millis(600)).await;
    assert_eq!(
        summary(&hooks.bodies("/json")[1]),
        [t("minute_usage_high", "warning", "resolved")]
    );
    // The claim keys hold fingerprints and states, nothing else.
    let keys = redis.all_keys();
    assert!(!keys.contains(&hooks.url), "{keys}");
}

/// The `upstream_failures` notifications among the receiver's bodies, as (severity, status).
fn failure_notices(hooks: &Receiver) -> Vec<(String, String, String)> {
    hooks
        .bodies("/json")
        .iter()
        .flat_map(summary)
        .filter(|a| a.0 == "upstream_failures")
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_failures_are_each_replicas_own_and_one_recovering_resolves_only_its_own() {
    let redis = RedisServer::start();
    let hooks = Receiver::start().await;
    let mut fakes = Vec::new();
    let mut proxies = Vec::new();
    for _ in 0..2 {
        let fake = FakeUpstream::start().await;
        fake.behave(|b| b.always_status = Some(503));
        proxies.push(
            start_proxy(
                &fake.url,
                ProxyOpts::keys(&[KEY])
                    .env("REDIS_URL", &redis.url)
                    .env("PROXY_ALERT_WEBHOOK_URL", &format!("{}/json", hooks.url))
                    .toml(&format!(
                        "{}[upstream]\nretry_deadline_secs = 1\n",
                        fast(0.1)
                    )),
            )
            .await,
        );
        fakes.push(fake);
    }
    for p in &proxies {
        // Failing requests until the streak is long enough (retries count too).
        for _ in 0..5 {
            generate(&p.url, MODEL, "hi").await;
            if firing_rules(&alerts_api(&p.url).await)
                .iter()
                .any(|r| r.0 == "upstream_failures")
            {
                break;
            }
        }
        until_api(&p.url, |v| {
            firing_rules(v).iter().any(|r| r.0 == "upstream_failures")
        })
        .await;
    }
    // Each replica announces its own: the shared claim would have let one through.
    assert!(
        eventually(Duration::from_secs(10), || failure_notices(&hooks).len()
            == 2)
        .await
    );
    assert_eq!(
        failure_notices(&hooks),
        [
            t("upstream_failures", "warning", "firing"),
            t("upstream_failures", "warning", "firing")
        ]
    );
    // The first replica's upstream recovers: it resolves its own, the other still fires.
    fakes[0].behave(|b| b.always_status = None);
    assert_eq!(generate(&proxies[0].url, MODEL, "hi").await.status(), 200);
    until_api(&proxies[0].url, |v| {
        !firing_rules(v).iter().any(|r| r.0 == "upstream_failures")
    })
    .await;
    assert!(
        eventually(Duration::from_secs(10), || failure_notices(&hooks).len()
            == 3)
        .await
    );
    assert_eq!(
        failure_notices(&hooks)[2],
        t("upstream_failures", "warning", "resolved")
    );
    settle(
        || failure_notices(&hooks).len(),
        3,
        Duration::from_millis(600),
    )
    .await;
    let other = alerts_api(&proxies[1].url).await;
    assert!(
        firing_rules(&other)
            .iter()
            .any(|r| r.0 == "upstream_failures"),
        "{other}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_answers_500_twice_gets_the_message_on_the_third_try() {
    let fake = FakeUpstream::start().await;
    let hooks = Receiver::start().await;
    hooks.state.fail_first.store(2, Ordering::SeqCst);
    // A second channel nobody listens on: it fails every try and shows on the status page.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_url = format!("http://{}/gone", closed.local_addr().unwrap());
    drop(closed);
    let proxy = start_proxy(
        &fake.url,
        ProxyOpts::keys(&[KEY])
            .env("PROXY_ALERT_WEBHOOK_URL", &format!("{}/am", hooks.url))
            .env("PROXY_ALERT_WEBHOOK_FORMAT", "alertmanager")
            .toml(&format!(
                "{}[[alerts.webhooks]]\nurl = \"{closed_url}\"\nformat = \"json\"\n",
                fast(0.1)
            )),
    )
    .await;
    let r = http()
        .post(format!("{}/api/ai/alerts/test", proxy.url))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let answer = json_of(r).await;
    let channels = answer["channels"].as_array().unwrap();
    // Webhooks from the file first, then the one from the environment.
    assert_eq!(channels[0]["channel"], "json");
    assert_eq!(channels[0]["outcome"], "failed");
    assert_eq!(channels[0]["attempts"], 3);
    assert!(!channels[0]["error"].as_str().unwrap().contains("gone"));
    assert_eq!(channels[1]["channel"], "alertmanager");
    assert_eq!(channels[1]["outcome"], "delivered", "{answer}");
    assert_eq!(channels[1]["attempts"], 3);
    assert_eq!(answer["success"], false);
    assert_eq!(hooks.state.calls.load(Ordering::SeqCst), 3);
    assert_eq!(hooks.bodies("/am").len(), 1);
    assert_eq!(
        hooks.bodies("/am")[0]["alerts"][0]["labels"]["alertname"],
        "test"
    );

    let (_, status) = quota_status(&proxy.url, ADMIN_TOKEN).await;
    let s = &status["quota_status"];
    assert_eq!(s["alerts"]["channels"][0]["failing"], true, "{s}");
    assert_eq!(s["alerts"]["channels"][1]["failing"], false);
    assert!(
        s["warnings"].as_array().unwrap().iter().any(|w| w
            .as_str()
            .unwrap()
            .starts_with("alert channel 1 (json) failing")),
        "{s}"
    );
    let text = metrics_text(&proxy.url).await;
    assert!(text.contains("# HELP gqp_alert_deliveries_total"), "{text}");
    assert!(
        text.contains(r#"gqp_alert_deliveries_total{channel="alertmanager",outcome="retried"}"#)
    );
    assert!(!text.contains(&hooks.url));

    // Only an admin may send one.
    let r = http()
        .post(format!("{}/api/ai/alerts/test", proxy.url))
        .header("x-goog-api-key", CLIENT_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(json_of(r).await["error"]["status"], "PERMISSION_DENIED");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_never_answers_never_slows_a_request() {
    let fake = FakeUpstream::start().await;
    let hole = Blackhole::start().await;
    let proxy = start_proxy(
        &fake.url,
        ProxyOpts::keys(&[KEY])
            .env("GEMINI_MINUTE_LIMIT", MINUTE)
            .env("PROXY_ALERT_WEBHOOK_URL", &format!("{}/hook", hole.url))
            .toml(&fast(0.0)),
    )
    .await;
    send(&proxy.url, 8).await;
    // The notification is on its way to a receiver that holds it.
    assert!(
        eventually(Duration::from_secs(10), || hole
            .accepted
            .load(Ordering::SeqCst)
            >= 1)
        .await
    );
    let started = std::time::Instant::now();
    let r = tokio::time::timeout(
        Duration::from_secs(3),
        generate(&proxy.url, MODEL, "still fast"),
    )
    .await
    .expect("a request while a delivery hangs answers well before its 5 s try timeout");
    assert_eq!(r.status(), 200);
    let took = started.elapsed();
    // Measured while the delivery still hangs (the receiver never answers; three tries of
    // 5 s take about 16 s): no outcome counted for it yet.
    let api = alerts_api(&proxy.url).await;
    assert_eq!(
        api["channels"][0]["last_outcome"],
        Value::Null,
        "{api} after {took:?}"
    );
    assert!(
        took < Duration::from_secs(1),
        "a request took {took:?} while a delivery hung"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_format_carries_its_fields() {
    let fake = FakeUpstream::start().await;
    let hooks = Receiver::start().await;
    let mut toml = fast(0.1);
    toml.push_str("[server]\npublic_url = \"https://proxy.example\"\n");
    for (path, format) in [
        ("slack", "slack"),
        ("discord", "discord"),
        ("json", "json"),
        ("am", "alertmanager"),
    ] {
        toml.push_str(&format!(
            "[[alerts.webhooks]]\nurl = \"{}/{path}\"\nformat = \"{format}\"\n",
            hooks.url
        ));
    }
    let proxy = start_proxy(
        &fake.url,
        ProxyOpts::keys(&[KEY])
            .env("GEMINI_MINUTE_LIMIT", MINUTE)
            .toml(&toml),
    )
    .await;
    send(&proxy.url, 8).await;
    assert!(eventually(Duration::from_secs(10), || hooks.hooks().len() == 4).await);

    let json = &hooks.bodies("/json")[0];
    assert_eq!(json["version"], "1");
    assert_eq!(json["status"], "firing");
    let a = &json["alerts"][0];
    assert_eq!(a["fingerprint"].as_str().unwrap().len(), 16);
    assert_eq!(a["rule"], "minute_usage_high");
    assert_eq!(a["severity"], "warning");
    assert!(
        a["summary"]
            .as_str()
            .unwrap()
            .contains("minute requests at 80%")
    );
    assert_eq!(a["labels"]["model"], MODEL);
    assert!(a["labels"]["project"].as_str().unwrap().starts_with("key-"));
    assert!(a["started_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(a["resolved_at"], Value::Null);

    let slack = &hooks.bodies("/slack")[0];
    let text = slack["text"].as_str().unwrap();
    assert!(
        text.starts_with("gemini-quota-proxy alerts: 1 firing"),
        "{text}"
    );
    assert!(
        text.contains("[FIRING warning] minute_usage_high"),
        "{text}"
    );
    assert!(text.ends_with("Dashboard: https://proxy.example/dashboard/"));
    let blocks = slack["blocks"].as_array().unwrap();
    assert_eq!(blocks[0]["type"], "header");
    assert_eq!(blocks[1]["type"], "section");
    assert_eq!(blocks[1]["text"]["type"], "mrkdwn");
    assert!(
        blocks[1]["text"]["text"]
            .as_str()
            .unwrap()
            .contains("minute_usage_high")
    );

    let discord = &hooks.bodies("/discord")[0];
    let content = discord["content"].as_str().unwrap();
    assert!(
        content.contains("[FIRING warning] minute_usage_high"),
        "{content}"
    );
    assert!(content.chars().count() <= 2000);
    assert_eq!(discord.as_object().unwrap().len(), 1);

    let am = &hooks.bodies("/am")[0];
    assert_eq!(am["version"], "4");
    assert_eq!(am["status"], "firing");
    assert_eq!(am["externalURL"], "https://proxy.example");
    let a = &am["alerts"][0];
    assert_eq!(a["status"], "firing");
    assert_eq!(a["labels"]["alertname"], "minute_usage_high");
    assert_eq!(a["labels"]["severity"], "warning");
    assert_eq!(a["labels"]["model"], MODEL);
    assert!(
        a["annotations"]["summary"]
            .as_str()
            .unwrap()
            .contains("80%")
    );
    assert!(a["startsAt"].as_str().unwrap().ends_with('Z'));
    assert_eq!(a["endsAt"], "0001-01-01T00:00:00Z");
    assert_eq!(a["fingerprint"], json["alerts"][0]["fingerprint"]);
    assert_eq!(a["generatorURL"], "https://proxy.example/dashboard/");

    // Resolved, Alertmanager's endsAt is set.
    reset_minute(&proxy.url).await;
    assert!(eventually(Duration::from_secs(10), || hooks.hooks().len() == 8).await);
    let am = &hooks.bodies("/am")[1];
    assert_eq!(am["status"], "resolved");
    assert!(
        am["alerts"][0]["endsAt"]
            .as_str()
            .unwrap()
            .starts_with("20")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_webhook_url_or_smtp_password_reaches_the_logs_at_trace() {
    const HOOK_TOKEN: &str = "T000SECRETHOOKTOKEN";
    const SMTP_PASSWORD: &str = "Sm7pPassw0rdSECRET";
    let fake = FakeUpstream::start().await;
    let hooks = Receiver::start().await;
    let smtp = SmtpSink::start().await;
    // The second webhook fails every try: its errors are logged too.
    hooks.state.fail_first.store(0, Ordering::SeqCst);
    let failing = format!("http://127.0.0.1:1/services/{HOOK_TOKEN}/failing");
    let config = std::env::temp_dir().join(format!("gqp-alerts-{}.toml", std::process::id()));
    std::fs::write(
        &config,
        format!(
            "[alerts]\nevaluate_every_secs = 0.05\n[[alerts.webhooks]]\nurl = \"{failing}\"\nformat = \"slack\"\n"
        ),
    )
    .unwrap();
    let smtp_url = format!("smtp://alerts:{SMTP_PASSWORD}@127.0.0.1:{}", smtp.port);
    let hook_url = format!("{}/services/{HOOK_TOKEN}/ok", hooks.url);
    let bin = common::binary::Binary::start(
        &[
            ("RUST_LOG", "trace"),
            ("GEMINI_API_KEY", KEY),
            ("GEMINI_UPSTREAM_URL", &fake.url),
            ("PROXY_CLIENT_KEYS", CLIENT_KEY),
            ("PROXY_ADMIN_TOKEN", ADMIN_TOKEN),
            ("PROXY_ALERT_WEBHOOK_URL", &hook_url),
            ("PROXY_SMTP_URL", &smtp_url),
            ("PROXY_ALERT_EMAIL_FROM", "proxy@example.com"),
            ("PROXY_ALERT_EMAIL_TO", "ops@example.com"),
        ],
        &["--config", config.to_str().unwrap()],
    );
    let r = http()
        .post(format!("{}/api/ai/alerts/test", bin.url))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    let answer = json_of(r).await;
    let outcomes: Vec<&str> = answer["channels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["failed", "delivered", "delivered"], "{answer}");
    // The password was used: the SMTP server saw AUTH.
    let mails = smtp.mails();
    assert_eq!(mails.len(), 1);
    let auth = mails[0].auth.clone().expect("the client authenticated");
    assert_eq!(hooks.bodies(&format!("/services/{HOOK_TOKEN}/ok")).len(), 1);
    let answer_text = answer.to_string();
    let (logs, _) = bin.stop();
    assert!(
        logs.contains("TRACE") || logs.contains("trace"),
        "trace level was on"
    );
    assert!(
        logs.contains("alert delivery failed"),
        "the failure was logged"
    );
    for secret in [
        HOOK_TOKEN,
        SMTP_PASSWORD,
        &hook_url,
        &failing,
        auth.as_str(),
    ] {
        assert!(!logs.contains(secret), "{secret} in the logs");
        assert!(!answer_text.contains(secret), "{secret} in the answer");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_alerts_api_needs_a_credential_and_the_test_needs_a_channel() {
    let fake = FakeUpstream::start().await;
    let proxy = start_proxy(&fake.url, ProxyOpts::keys(&[KEY])).await;
    let r = http()
        .get(format!("{}/api/ai/alerts/", proxy.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(json_of(r).await["error"]["status"], "UNAUTHENTICATED");
    let r = http()
        .delete(format!("{}/api/ai/alerts/", proxy.url))
        .header("x-goog-api-key", CLIENT_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    let r = http()
        .post(format!("{}/api/ai/alerts/test", proxy.url))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let e = json_of(r).await;
    assert_eq!(e["error"]["status"], "INVALID_ARGUMENT");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no alert channel")
    );
    let v = alerts_api(&proxy.url).await;
    assert_eq!(
        v,
        json!({"success": true, "firing": [], "recent": [], "channels": []})
    );
}

/// A proxy with two keys (two projects) at [`MINUTE`] a minute, alerts evaluated every 50 ms
/// with `grouping` (the `group_*` settings), sent to Alertmanager, Slack and `json` webhooks and
/// to e-mail.
async fn burst_proxy(
    fake: &FakeUpstream,
    hooks: &Receiver,
    smtp: &SmtpSink,
    grouping: &str,
) -> Proxy {
    let mut toml = format!("[alerts]\nevaluate_every_secs = 0.05\n{grouping}\n");
    for (path, format) in [("am", "alertmanager"), ("slack", "slack"), ("json", "json")] {
        toml.push_str(&format!(
            "[[alerts.webhooks]]\nurl = \"{}/{path}\"\nformat = \"{format}\"\n",
            hooks.url
        ));
    }
    start_proxy(
        &fake.url,
        ProxyOpts::keys(&["AIzaAlertBurstKey001", "AIzaAlertBurstKey002"])
            .env("GEMINI_MINUTE_LIMIT", MINUTE)
            .env("PROXY_SMTP_URL", &format!("smtp://127.0.0.1:{}", smtp.port))
            .env("PROXY_ALERT_EMAIL_FROM", "proxy@example.com")
            .env("PROXY_ALERT_EMAIL_TO", "ops@example.com")
            .toml(&toml),
    )
    .await
}

/// Every channel got `n` messages (or more).
fn each_channel_got(hooks: &Receiver, smtp: &SmtpSink, n: usize) -> bool {
    ["/am", "/slack", "/json"]
        .iter()
        .all(|p| hooks.bodies(p).len() >= n)
        && smtp.mails().len() >= n
}

/// The alerts of the pool, both projects and every key at their limit, all firing critical.
fn all_critical() -> Vec<(String, String, String)> {
    let mut v = vec![
        t("all_keys_exhausted", "critical", "firing"),
        t("minute_usage_high", "critical", "firing"),
        t("minute_usage_high", "critical", "firing"),
        t("minute_usage_high", "critical", "firing"),
    ];
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_that_trips_the_pool_each_project_and_every_key_sends_one_notification_per_channel()
{
    let fake = FakeUpstream::start().await;
    let hooks = Receiver::start().await;
    let smtp = SmtpSink::start().await;
    let proxy = burst_proxy(&fake, &hooks, &smtp, "group_wait_secs = 3").await;
    // 20 requests: each project and the pool at 100 %, every key spent.
    send(&proxy.url, 20).await;

    assert!(
        eventually(Duration::from_secs(15), || each_channel_got(
            &hooks, &smtp, 1
        ))
        .await
    );
    settle(|| hooks.hooks().len(), 3, Duration::from_secs(2)).await;
    assert_eq!(smtp.mails().len(), 1, "one e-mail");
    let json = &hooks.bodies("/json")[0];
    assert_eq!(summary(json), all_critical(), "{json}");
    let am = &hooks.bodies("/am")[0];
    assert_eq!(am["version"], "4");
    assert_eq!(am["alerts"].as_array().unwrap().len(), 4, "{am}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_longer_than_group_wait_sends_its_later_alerts_in_one_more_notification() {
    let fake = FakeUpstream::start().await;
    let hooks = Receiver::start().await;
    let smtp = SmtpSink::start().await;
    let grouping = "group_wait_secs = 0.3\ngroup_interval_secs = 5";
    let proxy = burst_proxy(&fake, &hooks, &smtp, grouping).await;
    // 80 %: both projects and the pool warn, sent after the group wait.
    send(&proxy.url, 16).await;
    assert!(
        eventually(Duration::from_secs(10), || each_channel_got(
            &hooks, &smtp, 1
        ))
        .await
    );
    // Then the burst goes on across several group waits: one project at its limit, later the
    // other, the pool and every key.
    send(&proxy.url, 3).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    send(&proxy.url, 1).await;

    assert!(
        eventually(Duration::from_secs(15), || each_channel_got(
            &hooks, &smtp, 2
        ))
        .await
    );
    settle(|| hooks.hooks().len(), 6, Duration::from_secs(4)).await;
    assert_eq!(smtp.mails().len(), 2, "two e-mails");
    let json = hooks.bodies("/json");
    assert_eq!(summary(&json[1]), all_critical(), "{}", json[1]);
    assert_eq!(
        hooks.bodies("/am")[1]["alerts"].as_array().unwrap().len(),
        4
    );
}
