//! Named clients: `[[auth.clients]]` tables and `PROXY_CLIENT_KEYS` `name:key` entries are
//! counted under their names (never their keys) in the usage ledger, `gqp_requests_total`,
//! `gqp_tokens_total`, `gqp_cost_usd_total` and the request log line; and every metric family
//! `/metrics` exports carries `# HELP`.

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::binary::Binary;
use common::*;
use serde_json::{Value, json};

const KEYS: [&str; 2] = ["AIzaClientsKey0000001", "AIzaClientsKey0000002"];
const TEAM_A_KEY: &str = "team-a-secret-key-AAAA1111";
const TEAM_B_KEY: &str = "team-b-secret-key-BBBB2222";

/// `team-a` from a `[[auth.clients]]` table, `team-b` as `name:key` in `PROXY_CLIENT_KEYS`.
fn two_teams() -> ProxyOpts {
    ProxyOpts::keys(&KEYS)
        .env("PROXY_CLIENT_KEYS", &format!("team-b:{TEAM_B_KEY}"))
        .toml(&format!(
            "[[auth.clients]]\nname = \"team-a\"\nkey = \"{TEAM_A_KEY}\"\n"
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

/// Requests per client in the last hour, from `/api/ai/usage/?group_by=client`, with the body.
async fn requests_by_client(proxy: &str) -> (BTreeMap<String, u64>, String) {
    let r = http()
        .get(format!("{proxy}/api/ai/usage/?window=1h&group_by=client"))
        .header("x-goog-api-key", ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    let body: Value = serde_json::from_str(&text).unwrap();
    let mut by = BTreeMap::new();
    for s in body["series"].as_array().unwrap() {
        let name = s["group"]["client"].as_str().unwrap().to_string();
        let n: u64 = s["points"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["requests"].as_u64().unwrap())
            .sum();
        by.insert(name, n);
    }
    (by, text)
}

/// The sum of the samples of `family` whose line holds every one of `labels`.
fn sample_sum(text: &str, family: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{family}{{")))
        .filter(|l| labels.iter().all(|x| l.contains(x)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn two_named_clients_are_counted_apart_by_name_in_usage_and_metrics_never_by_key() {
    let fake = FakeUpstream::start().await;
    let proxy = start_proxy(&fake.url, two_teams()).await;
    let model = "gemini-2.5-flash-clients-check";
    for _ in 0..3 {
        let r = generate_as(&proxy.url, TEAM_A_KEY, model).await;
        assert_eq!(r.status(), 200);
        r.bytes().await.unwrap();
    }
    for _ in 0..2 {
        let r = generate_as(&proxy.url, TEAM_B_KEY, model).await;
        assert_eq!(r.status(), 200);
        r.bytes().await.unwrap();
    }
    // A wrong key is nobody's: refused before any client is known.
    assert_eq!(
        generate_as(&proxy.url, "not-a-client-key", model)
            .await
            .status(),
        403
    );

    let mut by = BTreeMap::new();
    let mut usage = String::new();
    for _ in 0..100 {
        (by, usage) = requests_by_client(&proxy.url).await;
        if by.get("team-a") == Some(&3) && by.get("team-b") == Some(&2) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(by.get("team-a"), Some(&3), "{usage}");
    assert_eq!(by.get("team-b"), Some(&2), "{usage}");

    let text = metrics_text(&proxy.url).await;
    let m = format!("model=\"{model}\"");
    for (client, want) in [("team-a", 3.0), ("team-b", 2.0)] {
        let c = format!("client=\"{client}\"");
        assert_eq!(
            sample_sum(&text, "gqp_requests_total", &[&m, &c, "outcome=\"ok\""]),
            want,
            "{text}"
        );
        assert!(
            sample_sum(&text, "gqp_tokens_total", &[&m, &c, "kind=\"input\""]) > 0.0,
            "no input tokens for {client}: {text}"
        );
        assert!(
            text.lines()
                .any(|l| l.starts_with("gqp_cost_usd_total{") && l.contains(&m) && l.contains(&c)),
            "no cost line for {client}: {text}"
        );
    }
    assert!(
        text.lines()
            .any(|l| l.starts_with("gqp_requests_total{") && l.contains("client=\"-\"")),
        "the refused request has no client: {text}"
    );
    for secret in [TEAM_A_KEY, TEAM_B_KEY, "not-a-client-key"]
        .into_iter()
        .chain(KEYS)
    {
        assert!(!text.contains(secret), "{secret} in /metrics");
        assert!(!usage.contains(secret), "{secret} in the usage answer");
    }
}

/// Every `# TYPE` in `/metrics` has its `# HELP`, after a run through successes, Google 429s,
/// a 503 retried on the other key, refusals and the quota gauges; and each
/// `gqp_quota_remaining` series has a `gqp_quota_limit` with the same labels.
#[tokio::test]
async fn every_metric_family_in_the_exposition_has_help_text() {
    let fake = FakeUpstream::start().await;
    let proxy = start_proxy(
        &fake.url,
        two_teams().env("GEMINI_MAX_REQUEST_TOKENS", "2000"),
    )
    .await;
    // Answered (tokens, cost), then a 503 retried elsewhere and Google's per-day 429s.
    for _ in 0..2 {
        let r = generate_as(&proxy.url, TEAM_A_KEY, "gemini-2.5-flash").await;
        assert_eq!(r.status(), 200);
        r.bytes().await.unwrap();
    }
    fake.behave(|b| {
        b.script.push_back(Scripted::Status(503));
        b.script.push_back(Scripted::PerDay429);
        b.script.push_back(Scripted::PerDay429);
    });
    for _ in 0..6 {
        generate_as(&proxy.url, TEAM_A_KEY, "gemini-2.5-flash")
            .await
            .bytes()
            .await
            .unwrap();
    }
    // Over the request token limit: refused here.
    let huge = "word ".repeat(20_000);
    http()
        .post(format!(
            "{}/v1beta/models/gemini-2.5-flash:generateContent",
            proxy.url
        ))
        .header("x-goog-api-key", TEAM_B_KEY)
        .json(&json!({"contents": [{"parts": [{"text": huge}]}]}))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let text = metrics_text(&proxy.url).await;

    let mut typed = BTreeSet::new();
    let mut helped = BTreeSet::new();
    for l in text.lines() {
        if let Some(rest) = l.strip_prefix("# TYPE ") {
            typed.insert(rest.split(' ').next().unwrap().to_string());
        } else if let Some(rest) = l.strip_prefix("# HELP ") {
            let mut parts = rest.splitn(2, ' ');
            let name = parts.next().unwrap().to_string();
            assert!(
                parts.next().is_some_and(|h| h.trim().len() > 10),
                "empty help: {l}"
            );
            helped.insert(name);
        }
    }
    for family in [
        "gqp_requests_total",
        "gqp_tokens_total",
        "gqp_cost_usd_total",
        "gqp_request_duration_seconds",
        "gqp_upstream_duration_seconds",
        "gqp_proxy_overhead_seconds",
        "gqp_store_duration_seconds",
        "gqp_upstream_429_total",
        "gqp_retries_total",
        "gqp_admissions_refused_total",
        "gqp_keys_cooling",
        "gqp_keys_disabled",
        "gqp_quota_remaining",
        "gqp_quota_limit",
    ] {
        assert!(typed.contains(family), "{family} not exported: {text}");
    }
    let missing: Vec<&String> = typed.difference(&helped).collect();
    assert!(missing.is_empty(), "no # HELP for {missing:?}");
    // Every sample belongs to a typed family.
    for l in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let name = l.split(['{', ' ']).next().unwrap();
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| typed.contains(*f)))
            .unwrap_or(name);
        assert!(typed.contains(family), "untyped sample: {l}");
    }

    // The limit gauges pair up with the remaining ones, project label included.
    let labels_of = |family: &str| -> BTreeSet<String> {
        text.lines()
            .filter_map(|l| l.strip_prefix(&format!("{family}{{")))
            .filter_map(|l| Some(l.split_once('}')?.0.to_string()))
            .collect()
    };
    let remaining = labels_of("gqp_quota_remaining");
    assert!(!remaining.is_empty(), "{text}");
    assert!(remaining.iter().all(|l| l.contains("project=\"")));
    for w in ["minute", "daily", "tokens"] {
        assert!(
            remaining
                .iter()
                .any(|l| l.contains(&format!("window=\"{w}\"")))
        );
    }
    let limit = labels_of("gqp_quota_limit");
    assert!(remaining.is_subset(&limit), "{remaining:?} vs {limit:?}");
}

/// The real binary's request log line names the client (`client="team-a"`), never its key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_log_line_names_the_client_and_never_its_key() {
    let fake = FakeUpstream::start().await;
    let config = std::env::temp_dir().join(format!("gqp-clients-{}.toml", std::process::id()));
    std::fs::write(
        &config,
        format!("[[auth.clients]]\nname = \"team-a\"\nkey = \"{TEAM_A_KEY}\"\n"),
    )
    .unwrap();
    let (keys, team_b) = (KEYS.join(","), format!("team-b:{TEAM_B_KEY}"));
    let proxy = Binary::start(
        &[
            ("GEMINI_API_KEYS", keys.as_str()),
            ("PROXY_CLIENT_KEYS", team_b.as_str()),
            ("GEMINI_UPSTREAM_URL", fake.url.as_str()),
        ],
        &["--config", config.to_str().unwrap()],
    );
    let proxy_url = proxy.url.clone();
    for key in [TEAM_A_KEY, TEAM_B_KEY] {
        let r = generate_as(&proxy_url, key, "gemini-2.5-flash").await;
        assert_eq!(r.status(), 200);
        r.bytes().await.unwrap();
    }
    let (logs, _) = proxy.stop();
    let _ = std::fs::remove_file(&config);
    let request_lines: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("request") && l.contains("status=200"))
        .collect();
    for name in ["team-a", "team-b"] {
        assert!(
            request_lines
                .iter()
                .any(|l| l.contains(&format!("client=\"{name}\""))),
            "no log line for {name}: {logs}"
        );
    }
    assert!(
        !logs.contains(TEAM_A_KEY) && !logs.contains(TEAM_B_KEY),
        "{logs}"
    );
}
