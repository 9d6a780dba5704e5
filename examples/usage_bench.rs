//! How long `/api/ai/usage/?window=24h&group_by=key` takes over a full day of history: 100
//! keys x 20 models, every series busy every minute for 24 hours (2.88 million series-minutes,
//! the worst case of that size).
//!
//! - memory: the ledger in this process, filled through its own API, the query timed in-process;
//! - Redis: the same history written into a private redis-server in the ledger's own format (the
//!   `led:m:MINUTE` / `led:h:HOUR` hashes of `src/ledger/shared/`), then the release proxy
//!   binary asked over HTTP: the first query reads the day from Redis, later ones only the
//!   buckets still open.
//!
//! `cargo run --release --example usage_bench` (build the binary first: `cargo build --release`).

#[path = "support/mod.rs"]
#[allow(dead_code)]
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use gemini_quota_proxy::ledger::query::{GroupBy, Query, Window};
use gemini_quota_proxy::ledger::{Counters, Ledger, field};
use gemini_quota_proxy::quota::{Clock, ManualClock};
use support::{proxy_bin, start_proxy_with, start_redis};

const KEYS: usize = 100;
const MODELS: usize = 20;
const MINUTES: i64 = 24 * 60;

fn counters(i: usize) -> Counters {
    let mut c = Counters::default();
    c.0[field::REQUESTS] = 3 + (i % 5) as u64;
    c.0[field::INPUT] = 1200 + i as u64;
    c.0[field::OUTPUT] = 300;
    c.0[field::COST] = 4_500_000;
    c.0[field::LIST_COST] = 4_500_000;
    c
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn memory(now: i64) {
    let clock = Arc::new(ManualClock::new(now - (MINUTES - 1) * 60_000));
    let ledger = Ledger::in_memory_at(clock.clone());
    let series: Vec<_> = (0..KEYS * MODELS)
        .map(|i| {
            ledger.series(
                Some(&format!("project-{}", i % KEYS)),
                &format!("gemini-model-{}", i / KEYS),
                Some(&format!("{:016x}", i % KEYS)),
                "client1",
                true,
            )
        })
        .collect();
    let t = Instant::now();
    for _ in 0..MINUTES {
        for (i, s) in series.iter().enumerate() {
            ledger.add(*s, &counters(i));
        }
        clock.advance(60_000);
    }
    clock.set(now);
    println!(
        "memory: filled {} series-minutes in {:.1} s",
        KEYS * MODELS * MINUTES as usize,
        t.elapsed().as_secs_f64()
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut times = Vec::new();
    let mut size = 0;
    for _ in 0..5 {
        // Every page (at most 50,000 points each), as the dashboard reads them.
        let t = Instant::now();
        let (mut offset, mut seen) = (Some(0), 0);
        size = 0;
        while let Some(o) = offset {
            let q = Query {
                window: Window::Day,
                group_by: GroupBy::Key,
                limit: None,
                offset: o,
                client: None,
            };
            let report = rt.block_on(ledger.report(q)).unwrap();
            size += serde_json::to_vec(&report).unwrap().len();
            seen += report.series.len();
            assert_eq!(report.total_series, KEYS);
            offset = report.next_offset;
        }
        times.push(t.elapsed());
        assert_eq!(seen, KEYS);
    }
    times.sort();
    println!(
        "memory: window=24h&group_by=key, every page, in {:.0} ms median of 5 (min {:.0}, max {:.0}; reports + JSON, {:.1} MB)",
        millis(times[2]),
        millis(times[0]),
        millis(times[4]),
        size as f64 / 1e6
    );
}

fn redis(now: i64) {
    let (port, _redis) = start_redis();
    let url = format!("redis://127.0.0.1:{port}");
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut conn = client.get_connection().unwrap();
    let t = Instant::now();
    let first_minute = now.div_euclid(60_000) - MINUTES + 1;
    // The default namespace's keys, as the ledger writes them.
    let prefix = "{gqp}";
    for m in first_minute..first_minute + MINUTES {
        let mut pipe = redis::pipe();
        let fields: Vec<(String, String)> = (0..KEYS * MODELS)
            .map(|i| {
                (
                    format!(
                        "project-{}|gemini-model-{}|{:016x}|client1",
                        i % KEYS,
                        i / KEYS,
                        i % KEYS
                    ),
                    counters(i).pack(),
                )
            })
            .collect();
        pipe.cmd("HSET")
            .arg(format!("{prefix}:led:m:{m}"))
            .arg(&fields)
            .ignore();
        pipe.cmd("EXPIRE")
            .arg(format!("{prefix}:led:m:{m}"))
            .arg(48 * 3600)
            .ignore();
        pipe.query::<()>(&mut conn).unwrap();
    }
    redis::cmd("SET")
        .arg(format!("{prefix}:led:since"))
        .arg(first_minute * 60_000)
        .query::<()>(&mut conn)
        .unwrap();
    let mem: String = redis::cmd("INFO").arg("memory").query(&mut conn).unwrap();
    let used = mem
        .lines()
        .find_map(|l| l.strip_prefix("used_memory_human:"))
        .unwrap_or("?")
        .trim()
        .to_string();
    println!(
        "redis: wrote {} series-minutes in {:.1} s (redis used_memory {used})",
        KEYS * MODELS * MINUTES as usize,
        t.elapsed().as_secs_f64()
    );

    // What reading the day back costs Redis and its client alone, as the ledger reads it.
    let t = Instant::now();
    let names: Vec<String> = (first_minute..first_minute + MINUTES)
        .map(|m| format!("{prefix}:led:m:{m}"))
        .collect();
    let mut fields = 0;
    for chunk in names.chunks(8) {
        let mut pipe = redis::pipe();
        for n in chunk {
            pipe.cmd("HGETALL").arg(n);
        }
        let got: Vec<Vec<(String, String)>> = pipe.query(&mut conn).unwrap();
        fields += got.iter().map(Vec::len).sum::<usize>();
    }
    println!(
        "redis: raw HGETALL of the 1,440 hashes ({fields} fields), 8 per round trip: {:.0} ms",
        millis(t.elapsed())
    );

    let bin = proxy_bin();
    let (proxy_port, _proxy) = start_proxy_with(
        &bin,
        "http://127.0.0.1:9",
        "bench-client",
        &[("REDIS_URL", url.clone())],
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap();
    let get = || {
        rt.block_on(async {
            let t = Instant::now();
            let r = http
                .get(format!(
                    "http://127.0.0.1:{proxy_port}/api/ai/usage/?window=24h&group_by=key"
                ))
                .header("x-goog-api-key", "bench-client")
                .send()
                .await
                .unwrap();
            let status = r.status();
            let body = r.bytes().await.unwrap();
            assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
            (t.elapsed(), body.len())
        })
    };
    let (cold, size) = get();
    let mut warm: Vec<Duration> = (0..5)
        .map(|_| {
            std::thread::sleep(Duration::from_millis(1100));
            get().0
        })
        .collect();
    warm.sort();
    println!(
        "redis: window=24h&group_by=key over HTTP: first {:.0} ms (reads 1,440 hashes), then {:.0} ms median of 5 (min {:.0}, max {:.0}; {:.1} MB)",
        millis(cold),
        millis(warm[2]),
        millis(warm[0]),
        millis(warm[4]),
        size as f64 / 1e6
    );
}

fn main() {
    let now = gemini_quota_proxy::quota::SystemClock.now_ms();
    println!(
        "history: {KEYS} keys x {MODELS} models, every series every minute for 24 h; one client"
    );
    memory(now);
    redis(now);
}
