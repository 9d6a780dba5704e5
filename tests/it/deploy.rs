//! `deploy/`: every metric the Grafana dashboard and the Prometheus rules name is one the proxy
//! really exports. A proxy is driven through each path that creates a family (an answer, a
//! Google 429 and its retry, a refusal, a failed store call, a status snapshot), then every
//! `gqp_*` name in `deploy/grafana/gqp-dashboard.json` and `deploy/prometheus/gqp-rules.yml`
//! is looked up in the live `/metrics` (`_bucket`, `_sum` and `_count` of a histogram family
//! count as that family's).

use crate::common;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use common::hooked_store::HookedStore;
use common::*;

const KEYS: [&str; 2] = ["AIzaDeployKey0000001", "AIzaDeployKey0000002"];
const MODEL: &str = "gemini-2.5-flash";

/// Every `gqp_[a-z0-9_]+` name in `text` (not part of a longer identifier).
fn metric_names(text: &str) -> BTreeSet<String> {
    let ident = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_';
    let bytes = text.as_bytes();
    let mut names = BTreeSet::new();
    let mut i = 0;
    while let Some(at) = text[i..].find("gqp_") {
        let start = i + at;
        let mut end = start + 4;
        while end < bytes.len() && ident(bytes[end]) {
            end += 1;
        }
        let inside_another =
            start > 0 && (bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        if end > start + 4 && !inside_another {
            names.insert(text[start..end].to_string());
        }
        i = end;
    }
    names
}

/// The exposition's sample names and each family's `# TYPE`.
fn exposition(text: &str) -> (HashSet<String>, HashMap<String, String>) {
    let mut samples = HashSet::new();
    let mut types = HashMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            if let (Some(name), Some(kind)) = (parts.next(), parts.next()) {
                types.insert(name.to_string(), kind.to_string());
            }
        } else if !line.starts_with('#') && !line.trim().is_empty() {
            let name = line.split(['{', ' ']).next().unwrap_or_default();
            samples.insert(name.to_string());
        }
    }
    (samples, types)
}

/// The name as a family: `X_bucket`, `X_sum`, `X_count` of a histogram (or summary) `X` are
/// `X`'s; any other name is its own.
fn family<'a>(name: &'a str, types: &HashMap<String, String>) -> &'a str {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix)
            && matches!(
                types.get(base).map(String::as_str),
                Some("histogram" | "summary")
            )
        {
            return base;
        }
    }
    name
}

fn read(path: &str) -> String {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()))
}

#[test]
fn the_name_scan_finds_names_and_maps_histogram_parts_to_their_family() {
    let names = metric_names(
        r#"sum(rate(gqp_a_total{x="1"}[5m])) / gqp:ratio + xgqp_no + histogram_quantile(0.9, gqp_h_seconds_bucket) gqp_"#,
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        ["gqp_a_total", "gqp_h_seconds_bucket"]
    );
    let (samples, types) = exposition(
        "# HELP gqp_h_seconds x\n# TYPE gqp_h_seconds histogram\ngqp_h_seconds_bucket{le=\"1\"} 2\ngqp_h_seconds_sum 1\ngqp_h_seconds_count 2\ngqp_c_count 3\n",
    );
    assert!(samples.contains("gqp_h_seconds_bucket") && samples.contains("gqp_c_count"));
    assert_eq!(family("gqp_h_seconds_bucket", &types), "gqp_h_seconds");
    assert_eq!(family("gqp_h_seconds_count", &types), "gqp_h_seconds");
    assert_eq!(
        family("gqp_c_count", &types),
        "gqp_c_count",
        "not a histogram"
    );
}

#[tokio::test]
async fn every_metric_the_dashboard_and_the_rules_name_is_exported() {
    let fake = FakeUpstream::start().await;
    // The first admission fails as an unreachable Redis would.
    let store = Arc::new(HookedStore::new().failing_admits(1));
    let proxy = start_proxy(
        &fake.url,
        ProxyOpts::keys(&KEYS)
            .env("GEMINI_MAX_REQUEST_TOKENS", "100")
            .store(store.clone()),
    )
    .await;

    // A failed store call (gqp_store_errors_total): whatever the proxy answers.
    generate(&proxy.url, MODEL, "first")
        .await
        .bytes()
        .await
        .unwrap();
    assert_eq!(
        store.fail_admits.load(Ordering::SeqCst),
        0,
        "the failing admit was made"
    );
    // Answers: requests, durations, tokens, cost.
    for _ in 0..2 {
        let r = generate(&proxy.url, MODEL, "hello").await;
        assert_eq!(r.status(), 200);
        r.bytes().await.unwrap();
    }
    // A Google 429 (gqp_upstream_429_total) and the retry on the other key.
    fake.behave(|b| {
        b.script.push_back(Scripted::Quota429 {
            quota_id: "GenerateRequestsPerMinutePerProjectPerModel-FreeTier",
            quota_value: 10,
            retry_delay: "30s",
        })
    });
    generate(&proxy.url, MODEL, "again")
        .await
        .bytes()
        .await
        .unwrap();
    // A refusal (gqp_admissions_refused_total): a prompt over the maximum.
    let r = generate(&proxy.url, MODEL, &"y".repeat(4000)).await;
    assert_eq!(r.status(), 400);
    r.bytes().await.unwrap();

    // The gauges: set by the status snapshot (and by the scrape itself).
    let (code, _) = quota_status(&proxy.url, CLIENT_KEY).await;
    assert_eq!(code, 200);
    let metrics = metrics_text(&proxy.url).await;
    let (samples, types) = exposition(&metrics);

    let mut missing = BTreeSet::new();
    let mut checked = 0;
    for file in [
        "deploy/grafana/gqp-dashboard.json",
        "deploy/prometheus/gqp-rules.yml",
    ] {
        let names = metric_names(&read(file));
        assert!(!names.is_empty(), "{file} names no gqp_ metric");
        for name in names {
            checked += 1;
            let fam = family(&name, &types);
            // As written (a histogram part is a sample name itself: `X_bucket{le=...}`), or a
            // family with samples of its own.
            let exported =
                samples.contains(&name) || samples.iter().any(|s| family(s, &types) == fam);
            if !exported {
                missing.insert(format!("{name} (in {file})"));
            }
        }
    }
    assert!(checked > 10, "only {checked} names checked");
    assert!(
        missing.is_empty(),
        "named in deploy/ but not in /metrics:\n  {}\n\n/metrics:\n{metrics}",
        missing.into_iter().collect::<Vec<_>>().join("\n  ")
    );
}
