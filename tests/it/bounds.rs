//! Memory bounds through the whole proxy (invariant 11): request bodies held at once are
//! bounded by `server.max_buffered_bytes` (503 with Retry-After past it, at once), and the
//! admission queue by its global caps on waiters and bytes and one client's share of them,
//! whatever model names clients make up.

use crate::common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use serde_json::json;

const MIB: usize = 1024 * 1024;

/// A request that announces `len` bytes, sends `sent` of them and then holds the rest back
/// until the task is aborted.
fn stalled_upload(proxy: &str, len: usize, sent: usize) -> tokio::task::JoinHandle<()> {
    stalled_upload_as(proxy, len, sent, CLIENT_KEY)
}

fn stalled_upload_as(
    proxy: &str,
    len: usize,
    sent: usize,
    cred: &'static str,
) -> tokio::task::JoinHandle<()> {
    let url = format!("{proxy}/v1beta/models/gemini-2.5-flash:generateContent");
    tokio::spawn(async move {
        let first: Result<Bytes, std::io::Error> = Ok(Bytes::from(vec![b' '; sent]));
        let body = futures_util::stream::iter([first]).chain(futures_util::stream::pending());
        let _ = http()
            .post(url)
            .header("x-goog-api-key", cred)
            .header("content-type", "application/json")
            .header("content-length", len.to_string())
            .body(reqwest::Body::wrap_stream(body))
            .send()
            .await;
    })
}

use futures_util::StreamExt;

/// A generate request whose JSON body is about `size` bytes.
async fn sized(proxy: &str, model: &str, size: usize, cred: &str) -> reqwest::Response {
    let text = "a ".repeat(size / 2);
    http()
        .post(format!("{proxy}/v1beta/models/{model}:generateContent"))
        .header("x-goog-api-key", cred)
        .json(&json!({"contents": [{"parts": [{"text": text}]}]}))
        .send()
        .await
        .unwrap()
}

fn gauge(metrics: &str, name: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[tokio::test]
async fn bodies_past_the_global_budget_get_503_at_once_until_it_frees() {
    let fake = FakeUpstream::start().await;
    let proxy = start_proxy(
        &fake.url,
        ProxyOpts::keys(&["AIzaBudgetKey0000001"])
            .env("GEMINI_MAX_REQUEST_TOKENS", "1000000")
            .toml("[server]\nmax_body_bytes = 2097152\nmax_buffered_bytes = 4194304\nmax_buffered_client_share = 1.0\n"),
    )
    .await;
    // Two uploads announce 2 MiB each and stall: the whole budget is reserved.
    let stalled = [
        stalled_upload(&proxy.url, 2 * MIB, 1000),
        stalled_upload(&proxy.url, 2 * MIB, 1000),
    ];
    let url = proxy.url.clone();
    let mut held = 0.0;
    for _ in 0..100 {
        held = gauge(&metrics_text(&url).await, "gqp_buffered_request_bytes").unwrap_or(0.0);
        if held >= (4 * MIB) as f64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(held, (4 * MIB) as f64, "both uploads' bytes are reserved");
    let metrics = metrics_text(&url).await;
    assert_eq!(
        gauge(&metrics, "gqp_buffered_request_bytes_limit"),
        Some((4 * MIB) as f64)
    );
    let t0 = Instant::now();
    let r = sized(&proxy.url, "gemini-2.5-flash", MIB, CLIENT_KEY).await;
    assert_eq!(r.status(), 503);
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    assert!(r.headers().contains_key("retry-after"));
    let v = json_of(r).await;
    assert_eq!(v["error"]["status"], "UNAVAILABLE");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("server.max_buffered_bytes"), "{msg}");
    assert!(
        v["error"]["details"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["@type"] == "type.googleapis.com/google.rpc.RetryInfo"),
        "{v}"
    );
    assert!(fake.calls(":generateContent").is_empty());
    // The stalled clients leave: their bytes come back and a fresh client is served.
    for s in stalled {
        s.abort();
        let _ = s.await;
    }
    let freed = eventually(Duration::from_secs(5), || proxy.state.bodies.held() == 0).await;
    assert!(freed, "held {}", proxy.state.bodies.held());
    let r = sized(&proxy.url, "gemini-2.5-flash", MIB, CLIENT_KEY).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        proxy.state.bodies.held(),
        0,
        "released when the request is done"
    );
}

#[tokio::test]
async fn a_client_at_its_share_of_the_budget_gets_503_while_another_is_served() {
    let fake = FakeUpstream::start().await;
    let proxy = start_proxy(
        &fake.url,
        ProxyOpts::keys(&["AIzaBudgetKey0000002"])
            .env("GEMINI_MAX_REQUEST_TOKENS", "1000000")
            .env(
                "PROXY_CLIENT_KEYS",
                "greedy:greedy-client-key-0001,modest:modest-client-key-0001",
            )
            .toml("[server]\nmax_body_bytes = 2097152\nmax_buffered_bytes = 8388608\n"),
    )
    .await;
    // Half of 8 MiB is the greedy client's: two stalled 2 MiB uploads fill it.
    let stalled = [
        stalled_upload_as(&proxy.url, 2 * MIB, 1000, "greedy-client-key-0001"),
        stalled_upload_as(&proxy.url, 2 * MIB, 1000, "greedy-client-key-0001"),
    ];
    let filled = eventually(Duration::from_secs(5), || {
        proxy.state.bodies.held() == 4 * MIB
    })
    .await;
    assert!(filled, "held {}", proxy.state.bodies.held());
    let t0 = Instant::now();
    let r = sized(
        &proxy.url,
        "gemini-2.5-flash",
        MIB,
        "greedy-client-key-0001",
    )
    .await;
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    assert!(t0.elapsed() < Duration::from_secs(2));
    // The other client is served, though the first one keeps its share.
    let r = sized(
        &proxy.url,
        "gemini-2.5-flash",
        MIB,
        "modest-client-key-0001",
    )
    .await;
    assert_eq!(r.status(), 200);
    for s in stalled {
        s.abort();
    }
}

/// One key, one request per 10 s window, a 20 s wait allowed: every further request waits.
fn crowded(extra_toml: &str) -> ProxyOpts {
    ProxyOpts::keys(&["AIzaCrowdKey00000001"])
        .env("GEMINI_MINUTE_LIMIT", "1")
        .env("PROXY_QUEUE_MAX_WAIT_SECS", "20")
        .env("GEMINI_MAX_REQUEST_TOKENS", "1000000")
        .toml(&format!("[limits]\nwindow_secs = 10\n{extra_toml}"))
}

#[tokio::test]
async fn made_up_models_cannot_fill_the_queue_past_its_global_bound() {
    let fake = FakeUpstream::start().await;
    let proxy = start_proxy(
        &fake.url,
        crowded("[queue]\nmax_waiters_total = 30\nmax_client_share = 1.0\n"),
    )
    .await;
    // Forty made-up models, each served once: every next request for one of them waits.
    let models: Vec<String> = (0..40).map(|i| format!("made-up-{i}")).collect();
    for m in &models {
        assert_eq!(generate(&proxy.url, m, "first").await.status(), 200);
    }
    let mut tasks = Vec::new();
    for m in &models {
        let (url, m) = (proxy.url.clone(), m.clone());
        tasks.push(tokio::spawn(async move {
            let t0 = Instant::now();
            let r = generate(&url, &m, "again").await;
            let status = r.status().as_u16();
            let message = json_of(r).await["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            (status, t0.elapsed(), message)
        }));
    }
    // The forty lines' heads cannot all wait: thirty do, ten are refused at once.
    let mut refused = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(8);
    while refused.len() < 10 && Instant::now() < deadline {
        let mut still = Vec::new();
        for t in tasks {
            if t.is_finished() {
                refused.push(t.await.unwrap());
            } else {
                still.push(t);
            }
        }
        tasks = still;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(proxy.state.queues.waiting(), 30);
    assert_eq!(refused.len(), 10, "{refused:?}");
    for (status, took, message) in &refused {
        assert_eq!(*status, 429);
        assert!(*took < Duration::from_secs(5), "{took:?}");
        assert!(message.contains("queue is full"), "{message}");
    }
    let (_, v) = quota_status(&proxy.url, ADMIN_TOKEN).await;
    assert_eq!(v["quota_status"]["queue"]["waiting"], 30, "{v}");
    for t in tasks {
        t.abort();
    }
    let emptied = eventually(Duration::from_secs(5), || proxy.state.queues.waiting() == 0).await;
    assert!(emptied);
}

#[tokio::test]
async fn one_client_holds_at_most_its_share_of_the_queue_and_another_still_waits() {
    let fake = FakeUpstream::start().await;
    let proxy = start_proxy(
        &fake.url,
        crowded("[queue]\nmax_waiters_total = 10\nmax_client_share = 0.5\nmax_waiting_bytes = 1048576\n")
            .env(
                "PROXY_CLIENT_KEYS",
                "greedy:greedy-client-key-0001,modest:modest-client-key-0001",
            ),
    )
    .await;
    let greedy = "greedy-client-key-0001";
    let models: Vec<String> = (0..8).map(|i| format!("made-up-{i}")).collect();
    for m in &models {
        assert_eq!(sized(&proxy.url, m, 10, greedy).await.status(), 200);
    }
    let mut tasks = Vec::new();
    for m in &models {
        let (url, m) = (proxy.url.clone(), m.clone());
        tasks.push(tokio::spawn(async move {
            sized(&url, &m, 10, greedy).await.status().as_u16()
        }));
    }
    // Half of ten: five wait, three are refused at once.
    let five = eventually(Duration::from_secs(5), || {
        tasks.iter().filter(|t| t.is_finished()).count() == 3
    })
    .await;
    assert!(five);
    assert_eq!(proxy.state.queues.waiting(), 5);
    // The other client still gets a place in line.
    let url = proxy.url.clone();
    let modest = tokio::spawn(async move {
        sized(&url, "made-up-0", 10, "modest-client-key-0001")
            .await
            .status()
            .as_u16()
    });
    let queued = eventually(Duration::from_secs(3), || proxy.state.queues.waiting() == 6).await;
    assert!(queued, "waiting {}", proxy.state.queues.waiting());
    assert!(!modest.is_finished());
    // Bytes: half of 1 MiB per client. A 600 kB body from the modest client cannot wait.
    let t0 = Instant::now();
    let r = sized(&proxy.url, "made-up-1", 600_000, "modest-client-key-0001").await;
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    assert!(t0.elapsed() < Duration::from_secs(3));
    let msg = json_of(r).await["error"]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(msg.contains("share"), "{msg}");
    modest.abort();
    for t in tasks {
        t.abort();
    }
}

#[tokio::test]
async fn the_usage_answer_is_capped_in_points_and_paged_and_a_larger_page_is_a_400() {
    let fake = FakeUpstream::start().await;
    let proxy = start_proxy(&fake.url, ProxyOpts::keys(&["AIzaUsageKey00000001"])).await;
    for i in 0..60 {
        let m = format!("made-up-{i:02}");
        assert_eq!(generate(&proxy.url, &m, "x").await.status(), 200);
    }
    let usage = |query: &'static str| {
        let url = proxy.url.clone();
        async move {
            http()
                .get(format!("{url}/api/ai/usage/?{query}"))
                .header("x-goog-api-key", ADMIN_TOKEN)
                .send()
                .await
                .unwrap()
        }
    };
    // 24 h is 1,440 points a series: 34 series fit in 50,000 points.
    let r = usage("window=24h&group_by=model").await;
    assert_eq!(r.status(), 200);
    let first = json_of(r).await;
    let series = first["series"].as_array().unwrap();
    assert_eq!(series.len(), 34);
    assert!(
        series
            .iter()
            .all(|s| s["points"].as_array().unwrap().len() == 1440)
    );
    assert_eq!(first["total_series"], 60);
    assert_eq!(first["next_offset"], 34);
    assert_eq!(first["totals"]["requests"], 60, "totals cover every page");
    let r = usage("window=24h&group_by=model&offset=34").await;
    let second = json_of(r).await;
    assert_eq!(second["series"].as_array().unwrap().len(), 26);
    assert!(second.get("next_offset").is_none(), "{second}");
    let mut names: Vec<String> = series
        .iter()
        .chain(second["series"].as_array().unwrap())
        .map(|s| s["group"]["model"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), 60, "the two pages hold every model once");
    // Asking for more than fits is a clear 400 naming the parameter.
    let r = usage("window=24h&group_by=model&limit=100").await;
    assert_eq!(r.status(), 400);
    let v = json_of(r).await;
    assert_eq!(v["error"]["status"], "INVALID_ARGUMENT");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("limit") && msg.contains("50000"), "{msg}");
}
