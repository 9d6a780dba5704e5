//! The response cache's speed and memory, in one run:
//!
//! - throughput of the Gemini service in this process (tower calls, bodies read whole, 32 at a
//!   time) on three paths against the same local upstream: the cache off, cache misses with the
//!   memory store (every prompt new: the answer teed and stored), and cache hits (one prompt);
//! - the process's RSS with the memory store filled past `cache.max_memory_bytes` (256 MiB,
//!   the default) with 16 KiB answers, against its weighted size.
//!
//! `cargo run --release --example cache_bench`

#[path = "support/mod.rs"]
#[allow(dead_code)]
mod support;

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use bytes::Bytes;
use gemini_quota_proxy::cache::store::{Entry, Store};
use gemini_quota_proxy::ledger::TokenUsage;
use gemini_quota_proxy::{Config, Gateway, Sources};
use http_body_util::BodyExt;
use tower::ServiceExt;

const CLIENT_KEY: &str = "bench-client-key-0001";
const REQUESTS: usize = 20_000;
const CONCURRENCY: usize = 32;
const MAX_MEMORY: u64 = 256 * 1024 * 1024;
const ENTRY_BYTES: usize = 16 * 1024;

/// Google's answer to any generateContent: a short candidate and its usage.
async fn upstream(
    _req: hyper::Request<hyper::body::Incoming>,
) -> Result<hyper::Response<http_body_util::Full<Bytes>>, Infallible> {
    let body = r#"{"candidates":[{"content":{"role":"model","parts":[{"text":"a short answer"}]},"finishReason":"STOP","index":0}],"usageMetadata":{"promptTokenCount":12,"candidatesTokenCount":4,"totalTokenCount":16},"modelVersion":"gemini-2.5-flash"}"#;
    Ok(hyper::Response::builder()
        .header("content-type", "application/json; charset=UTF-8")
        .body(http_body_util::Full::new(Bytes::from_static(
            body.as_bytes(),
        )))
        .unwrap())
}

fn gateway(upstream_port: u16, cache: bool) -> Gateway {
    let env: HashMap<String, String> = [
        ("GEMINI_API_KEYS", "AIzaBenchKey00000001"),
        ("PROXY_CLIENT_KEYS", CLIENT_KEY),
        ("GEMINI_MINUTE_LIMIT", "100000000"),
        ("GEMINI_DAILY_LIMIT", "100000000"),
        ("GEMINI_TOKEN_MINUTE_LIMIT", "100000000000"),
        ("PROXY_CACHE", if cache { "on" } else { "off" }),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .chain([(
        "GEMINI_UPSTREAM_URL".to_string(),
        format!("http://127.0.0.1:{upstream_port}"),
    )])
    .collect();
    let config = Config::load(&Sources { file: None, env }).expect("config");
    Gateway::builder(config).build().expect("gateway")
}

fn request(prompt: &str) -> http::Request<Body> {
    let body = format!(
        r#"{{"contents":[{{"role":"user","parts":[{{"text":"{prompt}"}}]}}],"generationConfig":{{"temperature":0}}}}"#
    );
    http::Request::post("/v1beta/models/gemini-2.5-flash:generateContent")
        .header("x-goog-api-key", CLIENT_KEY)
        .header("content-type", "application/json")
        .body(Body::from(body))
        .unwrap()
}

/// Requests a second over [`REQUESTS`] calls, [`CONCURRENCY`] at a time; `unique`: every
/// prompt new. Checks each answer's cache header is `expect`.
async fn run(gw: &Gateway, unique: bool, expect: Option<&'static str>) -> f64 {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..CONCURRENCY {
        let (svc, next) = (gw.service(), next.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= REQUESTS {
                    return;
                }
                let prompt = if unique {
                    format!("prompt number {i}")
                } else {
                    "the same prompt".to_string()
                };
                let resp = svc.clone().oneshot(request(&prompt)).await.unwrap();
                assert_eq!(resp.status(), 200);
                let got = resp
                    .headers()
                    .get("x-gemini-quota-proxy-cache")
                    .map(|v| v.to_str().unwrap().to_string());
                if let Some(e) = expect {
                    assert_eq!(got.as_deref(), Some(e));
                }
                resp.into_body().collect().await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    REQUESTS as f64 / start.elapsed().as_secs_f64()
}

fn rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0);
    kb / 1024.0
}

async fn memory_when_full() {
    let before = rss_mb();
    let store = Store::memory(MAX_MEMORY);
    // Twice the limit's worth: the cache evicts down to it as it goes.
    let n = 2 * MAX_MEMORY as usize / ENTRY_BYTES;
    let start = Instant::now();
    for i in 0..n {
        let mut key = [0u8; 32];
        key[..8].copy_from_slice(&(i as u64).to_be_bytes());
        // An SSE answer of four events, each its own chunk (its own allocation, as stored).
        let chunk = || Bytes::from(vec![b'x'; ENTRY_BYTES / 4]);
        let entry = Entry {
            status: 200,
            content_type: Some("text/event-stream".into()),
            model: "gemini-2.5-flash".into(),
            stored_at_ms: 0,
            ttl_ms: 3_600_000,
            usage: TokenUsage::default(),
            chunks: vec![chunk(), chunk(), chunk(), chunk()],
        };
        store.put(key, Arc::new(entry)).await;
    }
    let fill = start.elapsed();
    let held = store.memory_bytes();
    let after = rss_mb();
    println!(
        "memory store filled with {n} answers of {} KiB in {:.2} s: holds {:.1} MiB (limit {} MiB); process RSS {:.1} MiB -> {:.1} MiB (+{:.1} MiB)",
        ENTRY_BYTES / 1024,
        fill.as_secs_f64(),
        held as f64 / 1048576.0,
        MAX_MEMORY / 1048576,
        before,
        after,
        after - before
    );
}

fn main() {
    let port = support::serve_http(upstream);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        // Warm the connection pool and the code paths.
        let off = gateway(port, false);
        run(&off, true, None).await;
        let off_rate = run(&off, true, None).await;
        let on = gateway(port, true);
        let miss_rate = run(&on, true, Some("MISS")).await;
        // One miss stores the answer; every request after it is a hit.
        let first = on.service().oneshot(request("the same prompt")).await.unwrap();
        first.into_body().collect().await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let hit_rate = run(&on, false, Some("HIT")).await;
        println!(
            "{REQUESTS} generateContent calls, {CONCURRENCY} at a time, in process: cache off {off_rate:.0} req/s, memory-store miss {miss_rate:.0} req/s, hit {hit_rate:.0} req/s ({:.1}x the miss path)",
            hit_rate / miss_rate
        );
        memory_when_full().await;
    });
}
