//! Invariant 9 through the real proxy: a client naming thousands of distinct models leaves the
//! `/metrics` exposition and the memory store's tables bounded, and the Redis store's set of
//! pairs (which every status read walks) capped and pruned. (Its own test binary: the metrics
//! recorder and its label cap are process-wide; its tests take turns.) The 100,000-name run against the
//! release binary, with RSS, is `cargo run --release --example model_flood`.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use chrono_tz::America::Los_Angeles;
use common::{FakeUpstream, ProxyOpts, RedisServer, generate, metrics_text, start_proxy};
use futures_util::StreamExt;
use gemini_quota_proxy::ledger::MODEL_CAP;
use gemini_quota_proxy::metrics::{MODEL_LABEL_CAP, OVERFLOW_MODEL};
use gemini_quota_proxy::quota::ManualClock;
use gemini_quota_proxy::quota::memory::MemoryStore;

const NAMES: usize = 4_000;
/// Names per simulated minute: the store's clock moves on a minute after each batch.
const PER_MINUTE: usize = 500;

/// 2026-01-31 10:30:00 UTC (02:30 in Los Angeles): far from midnight.
const T0: i64 = 1_769_855_400_000;

/// The tests take turns: the memory test measures how /metrics grows, which another proxy in
/// the process would disturb.
static TURNS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn model_labels(text: &str) -> HashSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split("model=\"").nth(1)?.split('"').next())
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_made_up_model_names_leave_metrics_and_quota_state_bounded() {
    let _turn = TURNS.lock().await;
    let started = Instant::now();
    let fake = FakeUpstream::start().await;
    let clock = Arc::new(ManualClock::new(T0));
    let store = Arc::new(MemoryStore::new(clock.clone(), Los_Angeles));
    let proxy = start_proxy(
        &fake.url,
        ProxyOpts::keys(&["AIzaFloodKey0000000001", "AIzaFloodKey0000000002"]).store(store.clone()),
    )
    .await;

    let mut most_buckets = 0;
    let mut size_at_half = 0;
    for batch in 0..NAMES / PER_MINUTE {
        let names = (batch * PER_MINUTE..(batch + 1) * PER_MINUTE).map(|i| format!("made-up-{i}"));
        let statuses: Vec<u16> = futures_util::stream::iter(names)
            .map(|m| {
                let url = proxy.url.clone();
                async move { generate(&url, &m, "x").await.status().as_u16() }
            })
            .buffer_unordered(16)
            .collect()
            .await;
        assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
        most_buckets = most_buckets.max(store.tracked().buckets);
        clock.advance(60_000);
        if batch + 1 == NAMES / PER_MINUTE / 2 {
            size_at_half = metrics_text(&proxy.url).await.len();
        }
    }

    let text = metrics_text(&proxy.url).await;
    let labels = model_labels(&text);
    // The cap, `other`, and `-` for requests that named no model.
    assert!(
        labels.len() <= MODEL_LABEL_CAP + 2,
        "{} model label values",
        labels.len()
    );
    assert!(labels.contains(OVERFLOW_MODEL));
    // Past the cap the exposition stops growing: only counter values change.
    assert!(
        text.len() <= size_at_half + 4 * 1024,
        "/metrics grew from {size_at_half} to {} bytes",
        text.len()
    );
    assert!(text.len() < 200 * 1024, "/metrics is {} bytes", text.len());

    // A minute's names at a time, and the sweep keeps at most about twice that.
    assert!(
        most_buckets <= 2 * PER_MINUTE.max(1024),
        "{most_buckets} buckets"
    );
    // Usage read one minute after the last batch (the status page reads it every time; the
    // scrape above may have served gauges made less than a second before): every window is
    // empty, and what is left is one day count per name until midnight.
    let (code, _) = common::quota_status(&proxy.url, common::CLIENT_KEY).await;
    assert_eq!(code, 200);
    let t = store.tracked();
    assert_eq!(t.buckets, 0);
    assert_eq!(t.day_counts, NAMES);
    // The usage ledger names the first models it saw answered and counts the rest as `other`:
    // two keys, one client, at most the cap of models (plus `other` and `-`) per minute.
    let l = proxy.state.ledger.tracked();
    assert!(l.models <= MODEL_CAP + 2, "{l:?}");
    assert!(
        l.entries <= 2 * 2 * (MODEL_CAP + 2) * (NAMES / PER_MINUTE),
        "{l:?}"
    );
    let (_, usage) = {
        let r = common::http()
            .get(format!("{}/api/ai/usage/?group_by=model", proxy.url))
            .header("x-goog-api-key", common::CLIENT_KEY)
            .send()
            .await
            .unwrap();
        (r.status(), common::json_of(r).await)
    };
    assert!(usage["series"].as_array().unwrap().len() <= MODEL_CAP + 2);
    assert_eq!(
        usage["totals"]["requests"], NAMES as u64,
        "every request counted"
    );
    // The status page lists the busiest models per key and counts the rest.
    let (_, status) = common::quota_status(&proxy.url, common::CLIENT_KEY).await;
    let mut seen = 0;
    for key in status["quota_status"]["keys"].as_array().unwrap() {
        let listed = key["models"].as_object().unwrap().len();
        assert!(listed <= 200, "{listed} models listed for one key");
        seen += listed + key["models_omitted"].as_u64().unwrap() as usize;
    }
    // Each key is its own project, and each name was admitted in one of them.
    assert_eq!(seen, NAMES, "every model with usage is listed or counted");
    eprintln!(
        "{NAMES} names: /metrics {} bytes ({} at half), {} model labels, at most {most_buckets} buckets, {:?}",
        text.len(),
        size_at_half,
        labels.len(),
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_redis_made_up_model_names_leave_the_set_of_pairs_capped_and_idle_pairs_pruned() {
    let _turn = TURNS.lock().await;
    use gemini_quota_proxy::quota::QuotaStore;
    use gemini_quota_proxy::quota::redis::RedisStore;
    use gemini_quota_proxy::secret::Secret;
    const CAP: usize = 300;
    let server = RedisServer::start();
    let clock = Arc::new(ManualClock::new(T0));
    let store = Arc::new(
        RedisStore::connect(
            &Secret::new(server.url.clone()),
            "flood",
            std::time::Duration::from_secs(2),
            Los_Angeles,
        )
        .unwrap()
        .with_clock(clock.clone())
        .with_pairs_cap(CAP),
    );
    let fake = FakeUpstream::start().await;
    let proxy = start_proxy(
        &fake.url,
        ProxyOpts::keys(&["AIzaFloodKey0000000001", "AIzaFloodKey0000000002"]).store(store.clone()),
    )
    .await;
    let mut redis = redis::Client::open(server.url.as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    let mut scard = move || -> usize {
        redis::cmd("SCARD")
            .arg("{flood}:pairs")
            .query(&mut redis)
            .unwrap()
    };
    let mut most = 0;
    for batch in 0..6 {
        let names = (batch * 100..(batch + 1) * 100).map(|i| format!("made-up-{i}"));
        let statuses: Vec<u16> = futures_util::stream::iter(names)
            .map(|m| {
                let url = proxy.url.clone();
                async move { generate(&url, &m, "x").await.status().as_u16() }
            })
            .buffer_unordered(16)
            .collect()
            .await;
        assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
        // A status read walks the set (and prunes it): every pair so far has a count today.
        let (code, _) = common::quota_status(&proxy.url, common::CLIENT_KEY).await;
        assert_eq!(code, 200);
        most = most.max(scard());
        clock.advance(60_000);
    }
    assert_eq!(most, CAP, "600 pairs admitted, {CAP} listed");
    // Every admission was counted, listed or not.
    let day: u64 = store
        .usage()
        .await
        .unwrap()
        .iter()
        .map(|(_, _, u)| u.daily_requests)
        .sum();
    assert_eq!(day, CAP as u64, "the listed pairs' counts");
    // A day later every window and every day count of the listed pairs is empty: the next
    // status read leaves none of them in the set.
    clock.advance(24 * 3_600_000);
    let (code, _) = common::quota_status(&proxy.url, common::CLIENT_KEY).await;
    assert_eq!(code, 200);
    assert_eq!(scard(), 0);
    // A pair in use joins it again.
    assert_eq!(
        generate(&proxy.url, "gemini-2.5-flash", "x").await.status(),
        200
    );
    assert_eq!(scard(), 1);
}
