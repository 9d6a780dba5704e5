//! Admission cost per request, in-memory and Redis, and Redis commands per admission.
//!
//! `cargo run --release --example admission_bench` (starts its own redis-server on a free port).

// Not every helper is used here (no wrk).
#[allow(dead_code)]
mod support;

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono_tz::America::Los_Angeles;
use gemini_quota_proxy::quota::Strategy;
use gemini_quota_proxy::quota::memory::MemoryStore;
use gemini_quota_proxy::quota::redis::RedisStore;
use gemini_quota_proxy::quota::{
    AdmitOutcome, AdmitRequest, Candidate, Limits, QuotaStore, SystemClock,
};
use gemini_quota_proxy::secret::Secret;

const N: usize = 20_000;

fn request() -> AdmitRequest {
    let limits = Limits {
        minute: u64::MAX / 4,
        token_minute: u64::MAX / 4,
        daily: u64::MAX / 4,
        max_request_tokens: u64::MAX,
    };
    let candidates = (0..3)
        .map(|i| Candidate {
            index: i,
            kid: format!("kid{i}").into(),
            project: format!("p{i}").into(),
            limits,
        })
        .collect();
    AdmitRequest {
        model: "gemini-2.5-flash".into(),
        tokens: 100,
        candidates,
        strategy: Strategy::Headroom,
        rotation: 0,
    }
}

async fn run(store: &dyn QuotaStore) -> (f64, f64) {
    let mut r = request();
    let mut lat = Vec::with_capacity(N);
    let start = Instant::now();
    for i in 0..N {
        r.rotation = i as u64;
        let t = Instant::now();
        match store.admit(&r).await.expect("admit") {
            AdmitOutcome::Admitted(_) => {}
            other => panic!("refused: {other:?}"),
        }
        lat.push(t.elapsed());
    }
    let total = start.elapsed();
    lat.sort();
    let p50 = lat[N / 2].as_secs_f64() * 1e6;
    (total.as_secs_f64() * 1e6 / N as f64, p50)
}

/// (EVALSHA + EVAL calls, all commands including those run inside scripts).
fn redis_calls(port: u16) -> (u64, u64) {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string(), "INFO", "commandstats"])
        .output()
        .expect("redis-cli");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let calls = |line: &str| -> u64 {
        line.split("calls=")
            .nth(1)
            .and_then(|r| r.split(',').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    let mut evals = 0;
    let mut all = 0;
    for line in text.lines().filter(|l| l.starts_with("cmdstat_")) {
        all += calls(line);
        if line.starts_with("cmdstat_evalsha:") || line.starts_with("cmdstat_eval:") {
            evals += calls(line);
        }
    }
    (evals, all)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let memory = MemoryStore::new(Arc::new(SystemClock), Los_Angeles);
    let (mem_mean, mem_p50) = run(&memory).await;
    println!(
        "memory store: {mem_mean:.2} us/admission mean, {mem_p50:.2} us p50 ({N} admissions, 3 projects)"
    );

    let (port, _redis) = support::start_redis();
    let store = RedisStore::connect(
        &Secret::new(format!("redis://127.0.0.1:{port}")),
        "bench",
        Duration::from_secs(2),
        Los_Angeles,
    )
    .unwrap();
    store.ping().await.expect("redis up");
    let before = redis_calls(port);
    let (redis_mean, redis_p50) = run(&store).await;
    let after = redis_calls(port);
    let trips = (after.0 - before.0) as f64 / N as f64;
    // The first INFO counts itself as one command.
    let inside = (after.1 - before.1).saturating_sub(1) as f64 / N as f64;
    println!(
        "redis store:  {redis_mean:.2} us/admission mean, {redis_p50:.2} us p50 ({N} sequential admissions, loopback)"
    );
    println!(
        "redis round trips per admission (EVALSHA calls): {trips:.3}; commands run inside the script: {inside:.1}"
    );
}
