//! Admission cost per request, in-memory, Redis and a three-master Redis Cluster (reached
//! through a node that does not serve the namespace), and Redis commands per admission.
//!
//! `cargo run --release --example admission_bench` (starts its own redis-server and cluster on
//! free ports).

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
        client: None,
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

/// (EVALSHA + EVAL calls, all commands including those run inside scripts) on the node on `port`.
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

    // The cluster: the namespace's slot is served by one master; the seed is another.
    let (ports, _nodes) = support::start_redis_cluster(3);
    let cli = |port: u16, args: &[&str]| -> String {
        let out = Command::new("redis-cli")
            .arg("-p")
            .arg(port.to_string())
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let slot: u16 = cli(ports[0], &["CLUSTER", "KEYSLOT", "bench"])
        .parse()
        .expect("a slot");
    let nodes = cli(ports[0], &["CLUSTER", "NODES"]);
    let owner = nodes
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let serves = f.get(8..)?.iter().any(|r| {
                let (a, b) = r.split_once('-').unwrap_or((r, r));
                a.parse::<u16>().is_ok_and(|a| a <= slot)
                    && b.parse::<u16>().is_ok_and(|b| slot <= b)
            });
            serves
                .then(|| {
                    f[1].split('@')
                        .next()?
                        .rsplit(':')
                        .next()?
                        .parse::<u16>()
                        .ok()
                })
                .flatten()
        })
        .unwrap_or_else(|| panic!("no master for slot {slot}: {nodes}"));
    let seed = *ports.iter().find(|p| **p != owner).expect("another master");
    let store = RedisStore::connect(
        &Secret::new(format!("redis://127.0.0.1:{seed}")),
        "bench",
        Duration::from_secs(2),
        Los_Angeles,
    )
    .unwrap();
    store.ping().await.expect("cluster up");
    let before = redis_calls(owner);
    let (cluster_mean, cluster_p50) = run(&store).await;
    let after = redis_calls(owner);
    let trips = (after.0 - before.0) as f64 / N as f64;
    println!(
        "redis cluster: {cluster_mean:.2} us/admission mean, {cluster_p50:.2} us p50 ({N} sequential admissions, 3 masters, seeded with a node not serving the namespace)"
    );
    println!(
        "cluster round trips per admission (EVALSHA calls on the namespace's master): {trips:.3}"
    );
}
