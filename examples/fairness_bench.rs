//! The pool's fair share between two clients, against the release binary on loopback: a fake
//! Google allowing FAIRNESS_RPM (10) requests a minute on each of three projects, answering like
//! Google (a 429 RESOURCE_EXHAUSTED with QuotaFailure and RetryInfo when a project's minute is
//! full), and the proxy configured with those limits (three keys, each its own project,
//! `GEMINI_MINUTE_LIMIT`), its queue at its defaults (`queue.max_wait_secs` 60). Client `heavy`
//! sends FAIRNESS_HEAVY_RPS (1) requests a second and client `light` FAIRNESS_LIGHT_RPS (0.25),
//! open loop (a request does not wait for the previous one's answer), for FAIRNESS_SECS (120).
//!
//! Prints the requests served against the capacity (the projects' minutes that can start before
//! the last request's allowance ends, or what was offered if less), the upstream's 429s, each
//! client's served/offered and its share of what was served, and the p50/p99 time to a success
//! and to a 429. Run with `scripts/bench-fairness`.
//!
//! With FAIRNESS_FALLBACK=1 a second model (`gemini-2.5-flash-lite`, the same limits on its own
//! per-project minute) is the fallback of the first (`[fallbacks]`): the capacity is both
//! models', and the figure is the goodput with fallbacks, with the answers counted by the model
//! that served them (`x-gemini-quota-proxy-model`).

#[allow(dead_code)] // wrk, redis: not needed here
mod support;

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use support::{proxy_bin, serve_http, start_proxy_with};

const KEYS: [&str; 3] = [
    "AIzaFairKey00000000001",
    "AIzaFairKey00000000002",
    "AIzaFairKey00000000003",
];
const HEAVY: &str = "bench-heavy-client-key-01";
const LIGHT: &str = "bench-light-client-key-01";
const PATH: &str = "/v1beta/models/gemini-2.5-flash:generateContent";
/// The fallback model (FAIRNESS_FALLBACK=1).
const SECOND: &str = "gemini-2.5-flash-lite";
const ANSWER: &str = r#"{"candidates":[{"content":{"role":"model","parts":[{"text":"ok"}]},"finishReason":"STOP"}],"usageMetadata":{"promptTokenCount":5,"candidatesTokenCount":1,"totalTokenCount":6}}"#;
const WINDOW: Duration = Duration::from_secs(60);

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The fake Google's state: per key (each its own project) and model, the times of the calls
/// it served in the last minute; and the 429s it gave.
struct Google {
    rpm: usize,
    served: Mutex<HashMap<String, Vec<Instant>>>,
    refused: AtomicU64,
    ok: AtomicU64,
}

fn google() -> &'static Google {
    static G: OnceLock<Google> = OnceLock::new();
    G.get_or_init(|| Google {
        rpm: env_or("FAIRNESS_RPM", 10),
        served: Mutex::default(),
        refused: AtomicU64::new(0),
        ok: AtomicU64::new(0),
    })
}

fn json(status: u16, body: String) -> hyper::Response<Full<Bytes>> {
    let mut resp = hyper::Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
    resp.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    resp
}

/// The fake Gemini: a sliding minute of `rpm` calls per project; over it, Google's 429.
async fn upstream(
    req: hyper::Request<Incoming>,
) -> Result<hyper::Response<Full<Bytes>>, Infallible> {
    let g = google();
    let key = req
        .headers()
        .get("x-goog-api-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    // Google's limits are per project and model.
    let model = req
        .uri()
        .path()
        .split("/models/")
        .nth(1)
        .and_then(|m| m.split(':').next())
        .unwrap_or("")
        .to_string();
    let key = format!("{key} {model}");
    let now = Instant::now();
    let retry = {
        let mut served = g.served.lock().unwrap();
        let calls = served.entry(key).or_default();
        calls.retain(|t| now.duration_since(*t) < WINDOW);
        if calls.len() < g.rpm {
            calls.push(now);
            None
        } else {
            Some(WINDOW - now.duration_since(calls[0]))
        }
    };
    let Some(retry) = retry else {
        g.ok.fetch_add(1, Ordering::Relaxed);
        return Ok(json(200, ANSWER.to_string()));
    };
    g.refused.fetch_add(1, Ordering::Relaxed);
    let body = serde_json::json!({"error": {
        "code": 429,
        "message": "You exceeded your current quota, please check your plan and billing details.",
        "status": "RESOURCE_EXHAUSTED",
        "details": [
            {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [{
                "quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
                "quotaId": "GenerateRequestsPerMinutePerProjectPerModel-FreeTier",
                "quotaDimensions": {"location": "global", "model": "gemini-2.5-flash"},
                "quotaValue": g.rpm.to_string()}]},
            {"@type": "type.googleapis.com/google.rpc.RetryInfo",
             "retryDelay": format!("{:.3}s", retry.as_secs_f64())}
        ]
    }});
    Ok(json(429, body.to_string()))
}

/// One request's answer: its client, status, how long it took, and whether a fallback model
/// served it.
type Outcome = (&'static str, u16, Duration, bool);

/// Open-loop sender: one request every `1 / rps` seconds for `secs`, each on its own task.
fn sender(
    port: u16,
    name: &'static str,
    key: &'static str,
    rps: f64,
    secs: f64,
    out: Arc<Mutex<Vec<Outcome>>>,
) -> tokio::task::JoinHandle<usize> {
    tokio::spawn(async move {
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        let start = tokio::time::Instant::now();
        let every = Duration::from_secs_f64(1.0 / rps);
        let mut tasks = Vec::new();
        let mut i = 0u32;
        loop {
            let at = start + every * i;
            if at.duration_since(start).as_secs_f64() >= secs {
                break;
            }
            tokio::time::sleep_until(at).await;
            let (client, out) = (client.clone(), out.clone());
            tasks.push(tokio::spawn(async move {
                let t = Instant::now();
                let answer = client
                    .post(format!("http://127.0.0.1:{port}{PATH}"))
                    .header("x-goog-api-key", key)
                    .header("content-type", "application/json")
                    .body(format!(
                        r#"{{"contents":[{{"parts":[{{"text":"{name} {i}"}}]}}]}}"#
                    ))
                    .timeout(Duration::from_secs(180))
                    .send()
                    .await;
                let (status, fell) = answer.map_or((0, false), |r| {
                    let fell = r.headers().contains_key("x-gemini-quota-proxy-model");
                    (r.status().as_u16(), fell)
                });
                out.lock().unwrap().push((name, status, t.elapsed(), fell));
            }));
            i += 1;
        }
        let n = tasks.len();
        for t in tasks {
            let _ = t.await;
        }
        n
    })
}

fn pct(v: &mut [Duration], q: f64) -> String {
    if v.is_empty() {
        return "-".into();
    }
    v.sort();
    let d = v[((v.len() as f64 - 1.0) * q).round() as usize];
    format!("{:.2} s", d.as_secs_f64())
}

#[tokio::main]
async fn main() {
    let secs: f64 = env_or("FAIRNESS_SECS", 120.0);
    let heavy_rps: f64 = env_or("FAIRNESS_HEAVY_RPS", 1.0);
    let light_rps: f64 = env_or("FAIRNESS_LIGHT_RPS", 0.25);
    let max_wait: f64 = env_or("FAIRNESS_MAX_WAIT_SECS", 60.0);
    let fallback = env_or("FAIRNESS_FALLBACK", 0u8) == 1;
    let models = if fallback { 2 } else { 1 };
    let rpm = google().rpm;

    let up = serve_http(upstream);
    let mut env = vec![
        ("GEMINI_API_KEYS", KEYS.join(",")),
        ("GEMINI_MINUTE_LIMIT", rpm.to_string()),
        ("PROXY_QUEUE_MAX_WAIT_SECS", max_wait.to_string()),
    ];
    let config = std::env::temp_dir().join(format!("fairness-bench-{}.toml", std::process::id()));
    if fallback {
        std::fs::write(
            &config,
            format!("[fallbacks]\nenabled = true\n\"gemini-2.5-flash\" = [\"{SECOND}\"]\n"),
        )
        .unwrap();
        env.push(("PROXY_CONFIG", config.to_string_lossy().into_owned()));
    }
    let (port, mut proc_) = start_proxy_with(
        &proxy_bin(),
        &format!("http://127.0.0.1:{up}"),
        &format!("heavy:{HEAVY},light:{LIGHT}"),
        &env,
    );

    let out: Arc<Mutex<Vec<Outcome>>> = Arc::default();
    let heavy = sender(port, "heavy", HEAVY, heavy_rps, secs, out.clone());
    let light = sender(port, "light", LIGHT, light_rps, secs, out.clone());
    let offered = [
        ("heavy", heavy.await.unwrap()),
        ("light", light.await.unwrap()),
    ];
    let _ = proc_.0.kill();
    let _ = std::fs::remove_file(&config);

    let out = out.lock().unwrap().clone();
    let served = out.iter().filter(|o| o.1 == 200).count();
    let offered_total: usize = offered.iter().map(|o| o.1).sum();
    // Every minute that can start before the last request's allowance ends gives each project
    // its `rpm` again.
    let minutes = ((secs + max_wait) / 60.0).ceil() as usize;
    let capacity = (models * KEYS.len() * rpm * minutes).min(offered_total);
    println!(
        "fairness: {} projects x {rpm} RPM x {models} model(s){}, heavy {heavy_rps} req/s, light {light_rps} req/s, {secs:.0} s, queue.max_wait_secs {max_wait}",
        KEYS.len(),
        if fallback {
            " (the second as fallback)"
        } else {
            ""
        }
    );
    println!(
        "  served {served} of a capacity of {capacity} ({:.0} %), offered {offered_total}",
        100.0 * served as f64 / capacity.max(1) as f64
    );
    println!(
        "  upstream: {} served, {} answered 429 RESOURCE_EXHAUSTED",
        google().ok.load(Ordering::Relaxed),
        google().refused.load(Ordering::Relaxed)
    );
    for (name, n) in offered {
        let mine: Vec<_> = out.iter().filter(|o| o.0 == name).collect();
        let ok = mine.iter().filter(|o| o.1 == 200).count();
        let mut others: Vec<u16> = mine.iter().map(|o| o.1).filter(|s| *s != 200).collect();
        others.sort();
        others.dedup();
        println!(
            "  {name}: served {ok}/{n} ({:.0} % of its requests), {:.0} % of all served; other statuses {others:?}",
            100.0 * ok as f64 / n.max(1) as f64,
            100.0 * ok as f64 / served.max(1) as f64
        );
    }
    if fallback {
        let fell = out.iter().filter(|o| o.1 == 200 && o.3).count();
        println!(
            "  goodput with fallbacks: {served} served of both models' capacity {capacity} ({:.1} %); {fell} by the fallback model",
            100.0 * served as f64 / capacity.max(1) as f64
        );
    }
    let mut ok: Vec<Duration> = out.iter().filter(|o| o.1 == 200).map(|o| o.2).collect();
    let mut refused: Vec<Duration> = out.iter().filter(|o| o.1 == 429).map(|o| o.2).collect();
    let mut light_ok: Vec<Duration> = out
        .iter()
        .filter(|o| o.1 == 200 && o.0 == "light")
        .map(|o| o.2)
        .collect();
    println!(
        "  wait of successes: p50 {}, p99 {} (light's: p50 {}, p99 {})",
        pct(&mut ok.clone(), 0.5),
        pct(&mut ok, 0.99),
        pct(&mut light_ok.clone(), 0.5),
        pct(&mut light_ok, 0.99)
    );
    let late = refused
        .iter()
        .filter(|d| **d >= Duration::from_secs(1))
        .count();
    println!(
        "  time to a 429 ({}): p50 {}, p90 {}, p99 {}, max {}; {late} took 1 s or more",
        refused.len(),
        pct(&mut refused.clone(), 0.5),
        pct(&mut refused.clone(), 0.9),
        pct(&mut refused.clone(), 0.99),
        pct(&mut refused, 1.0)
    );
}
