//! Invariant 9 on the release binary: 100,000 distinct model names, twice, and the proxy's RSS
//! and `/metrics` size before and after. After each flood it waits a minute so every window
//! empties, then scrapes (which sweeps the store): the buckets go, one day count per name stays
//! until midnight, and `/metrics` holds at most 200 model labels plus `other`.
//!
//! `cargo build --release && cargo run --release --example model_flood`
//! (`FLOOD_NAMES` and `FLOOD_WAIT_SECS` change the 100,000 and the 61 s wait).

// Not every helper is used here (no Redis).
#[allow(dead_code)]
mod support;

use std::collections::HashSet;
use std::convert::Infallible;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use support::{proxy_bin, serve_http, start_proxy_with};

const ANSWER: &str = r#"{"candidates":[{"content":{"role":"model","parts":[{"text":"Hi"}]},"finishReason":"STOP","index":0}],"usageMetadata":{"promptTokenCount":3,"candidatesTokenCount":1,"totalTokenCount":4}}"#;
const BODY: &str = r#"{"contents":[{"role":"user","parts":[{"text":"Hi"}]}]}"#;
const CLIENT_KEY: &str = "flood-client-key";

/// The upstream's answer to every model.
async fn answer(req: Request<hyper::body::Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let _ = req.into_body().collect().await;
    Ok(Response::builder()
        .header("content-type", "application/json; charset=UTF-8")
        .body(Full::new(Bytes::from_static(ANSWER.as_bytes())))
        .unwrap())
}

/// A `/proc/PID/status` figure in kB: `VmRSS` (resident now) or `VmHWM` (its peak).
fn status_kb(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Send one request per name, 64 at a time; returns how many were answered 200.
async fn flood(client: &reqwest::Client, port: u16, names: impl Iterator<Item = String>) -> usize {
    futures_util::stream::iter(names)
        .map(|m| {
            let client = client.clone();
            async move {
                client
                    .post(format!(
                        "http://127.0.0.1:{port}/v1beta/models/{m}:generateContent"
                    ))
                    .header("x-goog-api-key", CLIENT_KEY)
                    .header("content-type", "application/json")
                    .body(BODY)
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == 200)
            }
        })
        .buffer_unordered(64)
        .filter(|ok| std::future::ready(*ok))
        .count()
        .await
}

/// `/metrics`: its size, the distinct model label values, and how long the scrape took.
async fn scrape(client: &reqwest::Client, port: u16) -> (usize, usize, Duration) {
    let t = Instant::now();
    let text = client
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let took = t.elapsed();
    let labels: HashSet<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split("model=\"").nth(1)?.split('"').next())
        .collect();
    (text.len(), labels.len(), took)
}

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() {
    let n = env_num("FLOOD_NAMES", 100_000) as usize;
    let wait = Duration::from_secs(env_num("FLOOD_WAIT_SECS", 61));
    let upstream = serve_http(answer);
    let url = format!("http://127.0.0.1:{upstream}");
    let (port, proxy) = start_proxy_with(&proxy_bin(), &url, CLIENT_KEY, &[]);
    let pid = proxy.0.id();
    let client = reqwest::Client::builder().no_proxy().build().unwrap();

    // Warm up on one real model: connections, tables, allocator arenas.
    let warm = flood(
        &client,
        port,
        (0..2_000).map(|_| "gemini-2.5-flash".to_string()),
    )
    .await;
    assert_eq!(warm, 2_000);
    let (size0, labels0, _) = scrape(&client, port).await;
    let rss = |pid| status_kb(pid, "VmRSS");
    println!(
        "warm, 1 model:         RSS {:>7} kB   /metrics {size0:>6} B, {labels0} model labels",
        rss(pid)
    );

    for round in 1..=2 {
        let t = Instant::now();
        let names = (0..n).map(|i| format!("flood-{round}-{i:06}"));
        let ok = flood(&client, port, names).await;
        let took = t.elapsed();
        println!(
            "flood {round}: {ok} new names in {:.1} s ({:.0}/s)",
            took.as_secs_f64(),
            ok as f64 / took.as_secs_f64()
        );
        assert_eq!(ok, n, "every request should have been answered 200");
        println!("  right after:         RSS {:>7} kB", rss(pid));
        tokio::time::sleep(wait).await;
        println!(
            "  {:>2} s later:          RSS {:>7} kB",
            wait.as_secs(),
            rss(pid)
        );
        // The scrape reads the store's usage, which sweeps the buckets whose windows emptied.
        let (size, labels, scrape_took) = scrape(&client, port).await;
        // Give the allocator a moment to hand freed pages back.
        tokio::time::sleep(Duration::from_secs(3)).await;
        println!(
            "  scraped, 3 s later:  RSS {:>7} kB   /metrics {size:>6} B, {labels} model labels, scrape took {} ms",
            rss(pid),
            scrape_took.as_millis()
        );
    }
    println!("peak RSS (VmHWM): {} kB", status_kb(pid, "VmHWM"));
}
