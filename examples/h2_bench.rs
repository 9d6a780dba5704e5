//! The upstream client modes measured in ONE run: the proxy against an HTTPS fake upstream (in
//! this process, `tests/common/h2_upstream.rs`) that speaks HTTP/2 and HTTP/1.1 and allows
//! BENCH_H2_STREAMS (default 8) concurrent streams per HTTP/2 connection, once with
//! `upstream.http2 = true` (HTTP/2 over several connections) and once with `false` (HTTP/1.1,
//! one connection per request in flight). For each, on a fresh proxy: BENCH_STREAMS (64)
//! concurrent 1 s SSE streams and how long they all took; wrk throughput and latency of
//! generateContent with BENCH_CONNS (64) connections for BENCH_SECS (10), the proxy's CPU per
//! request and the upstream connections it opened; then the streams again, on the connections
//! the load left.
//!
//! Run with `scripts/bench-h2` (installs wrk, builds in release mode).

#[path = "../tests/common/h2_upstream.rs"]
mod h2_upstream;
#[allow(dead_code)] // start_redis: not needed here
mod support;

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use h2_upstream::{H2Upstream, Protocols, Seen};
use support::{Proc, proxy_bin, start_proxy_with, wrk_script};

const REQUEST_BODY: &str =
    r#"{"contents":[{"role":"user","parts":[{"text":"Write one short friendly greeting."}]}]}"#;
const PATH: &str = "/v1beta/models/gemini-2.5-flash:generateContent";
const CLIENT_KEY: &str = "bench-client-key";

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn start_proxy(upstream: &H2Upstream, http2: bool) -> (u16, Proc) {
    let extra = [
        (
            "GEMINI_UPSTREAM_CA_FILE",
            upstream.ca_file.to_string_lossy().into_owned(),
        ),
        ("GEMINI_UPSTREAM_HTTP2", http2.to_string()),
    ];
    start_proxy_with(&proxy_bin(), &upstream.url, CLIENT_KEY, &extra)
}

/// CPU ticks (user + system, 10 ms each) `pid` spent so far.
fn cpu_ticks(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let f: Vec<&str> = stat[stat.rfind(')')? + 2..].split_whitespace().collect();
            Some(f[11].parse::<u64>().ok()? + f[12].parse::<u64>().ok()?)
        })
        .unwrap_or(0)
}

struct Load {
    rps: f64,
    p50_us: f64,
    p99_us: f64,
    errors: u64,
    requests: u64,
}

fn wrk(port: u16, conns: u32, secs: u32, script: &Path) -> Load {
    let v = support::wrk_result(port, conns, secs, script, PATH);
    Load {
        requests: v[0] as u64,
        rps: v[1],
        p50_us: v[2],
        p99_us: v[3],
        errors: v[5] as u64,
    }
}

/// `n` concurrent SSE streams read to the end: (wall time, streams that were not 200 or cut).
async fn streams(port: u16, n: usize) -> (Duration, usize) {
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let started = Instant::now();
    let runs: Vec<_> = (0..n)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move {
                let Ok(r) = client
                    .post(format!("http://127.0.0.1:{port}/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"))
                    .header("x-goog-api-key", CLIENT_KEY)
                    .header("content-type", "application/json")
                    .body(REQUEST_BODY)
                    .send()
                    .await
                else {
                    return false;
                };
                let ok = r.status() == 200;
                let mut body = Vec::new();
                let mut s = r.bytes_stream();
                while let Some(c) = s.next().await {
                    let Ok(c) = c else { return false };
                    body.extend_from_slice(&c);
                }
                ok && body.windows(6).any(|w| w == b"\"STOP\"")
            })
        })
        .collect();
    let mut failed = 0;
    for r in runs {
        if !r.await.unwrap_or(false) {
            failed += 1;
        }
    }
    (started.elapsed(), failed)
}

struct Row {
    /// The streams on a fresh proxy (no upstream connection yet): wall time, failures,
    /// connections opened.
    cold: (Duration, usize, usize),
    load: Load,
    cpu_us: f64,
    load_conns: usize,
    streams: Duration,
    stream_failures: usize,
    stream_conns: usize,
}

async fn measure(
    seen: &Seen,
    port: u16,
    pid: u32,
    conns: u32,
    secs: u32,
    n: usize,
    script: &Path,
) -> Row {
    let c = seen.connections.load(Ordering::SeqCst);
    let (took, failed) = streams(port, n).await;
    let cold = (took, failed, seen.connections.load(Ordering::SeqCst) - c);
    wrk(port, 8, 1, script);
    let c0 = seen.connections.load(Ordering::SeqCst);
    let t0 = cpu_ticks(pid);
    let load = wrk(port, conns, secs, script);
    let cpu_us = (cpu_ticks(pid) - t0) as f64 * 10_000.0 / load.requests.max(1) as f64;
    let c1 = seen.connections.load(Ordering::SeqCst);
    // Now from the connections the load left idle.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (took, stream_failures) = streams(port, n).await;
    Row {
        cold,
        load,
        cpu_us,
        load_conns: c1 - c0,
        streams: took,
        stream_failures,
        stream_conns: seen.connections.load(Ordering::SeqCst) - c1,
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let secs: u32 = env_or("BENCH_SECS", 10);
    let conns: u32 = env_or("BENCH_CONNS", 64);
    let cap: u32 = env_or("BENCH_H2_STREAMS", 8);
    let n: usize = env_or("BENCH_STREAMS", 64);
    let dir = std::env::temp_dir().join(format!("gqp-h2-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let script = wrk_script(&dir, REQUEST_BODY, CLIENT_KEY);

    // The upstream on a runtime (one thread) of its own, as a separate server would be.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let up = H2Upstream::start_with(Protocols::Both(cap), Duration::from_secs(1)).await;
            tx.send(up).unwrap();
            std::future::pending::<()>().await;
        });
    });
    let upstream = rx.recv().unwrap();
    let (h2_port, h2_proc) = start_proxy(&upstream, true);
    let (h1_port, h1_proc) = start_proxy(&upstream, false);

    println!(
        "machine: {} cores; upstream: HTTPS (TLS 1.3, ring), h2 or http/1.1 by ALPN, {cap} streams per h2 connection",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    println!(
        "load: wrk -t1 -c{conns} -d{secs}s POST generateContent; then {n} concurrent SSE streams of 1 s"
    );
    let seen = upstream.seen.clone();
    let h2 = measure(&seen, h2_port, h2_proc.0.id(), conns, secs, n, &script).await;
    let h2_requests = seen.h2_requests.swap(0, Ordering::SeqCst);
    let h1 = measure(&seen, h1_port, h1_proc.0.id(), conns, secs, n, &script).await;
    let h2_requests_in_h1_mode = seen.h2_requests.load(Ordering::SeqCst);
    println!();
    println!(
        "| upstream client        | {n} streams, cold | conns opened | req/s  | p50 us | p99 us | errors | CPU us/req | conns opened | {n} streams, warm | conns opened |"
    );
    println!(
        "|------------------------|-----------------|--------------|--------|--------|--------|--------|------------|--------------|-----------------|--------------|"
    );
    for (name, r) in [("HTTP/2, several conns", &h2), ("HTTP/1.1 pool", &h1)] {
        println!(
            "| {name:<22} | {:>13.2} s | {:>12} | {:>6.0} | {:>6.0} | {:>6.0} | {:>6} | {:>10.1} | {:>12} | {:>13.2} s | {:>12} |",
            r.cold.0.as_secs_f64(),
            r.cold.2,
            r.load.rps,
            r.load.p50_us,
            r.load.p99_us,
            r.load.errors,
            r.cpu_us,
            r.load_conns,
            r.streams.as_secs_f64(),
            r.stream_conns
        );
        if r.stream_failures + r.cold.1 > 0 {
            println!(
                "  {name}: {} streams failed or were cut",
                r.stream_failures + r.cold.1
            );
        }
    }
    println!();
    println!(
        "HTTP/2 requests seen by the upstream: {h2_requests} in HTTP/2 mode, {h2_requests_in_h1_mode} in HTTP/1.1 mode"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
