//! The benchmark: in ONE run on loopback, the fake Gemini upstream directly, the proxy with the
//! memory store, the proxy with the Redis store, nginx as a plain forwarding proxy and a bare
//! hyper forwarder (`examples/forwarder.rs`, the proxy's HTTP stack without its work), all under
//! the same wrk load; then added latency at concurrency 1, RSS, Redis calls per request, time to
//! first SSE event, and a 100 MB stream through the proxy.
//!
//! Run with `scripts/bench` (installs wrk and nginx-light, builds in release mode).

#[allow(dead_code)] // start_redis_cluster: admission_bench's
mod support;

#[path = "bench/clients.rs"]
mod clients;

#[path = "bench/vertex.rs"]
mod vertex;

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::{Request, Response};
use support::{
    Proc, free_port, proxy_bin, serve_http, start_proxy_with, start_redis, wait_port, wrk_script,
};

const GENERATE_ANSWER: &str = r#"{"candidates":[{"content":{"role":"model","parts":[{"text":"Hello! How can I help you today?"}]},"finishReason":"STOP","index":0}],"usageMetadata":{"promptTokenCount":12,"candidatesTokenCount":9,"totalTokenCount":21},"modelVersion":"gemini-2.5-flash","responseId":"bench"}"#;
const REQUEST_BODY: &str =
    r#"{"contents":[{"role":"user","parts":[{"text":"Write one short friendly greeting."}]}]}"#;
const PATH: &str = "/v1beta/models/gemini-2.5-flash:generateContent";
const CLIENT_KEY: &str = "bench-client-key";

type BoxBody = http_body_util::combinators::UnsyncBoxBody<Bytes, Infallible>;

/// The fake upstream: a fixed generateContent answer; SSE streams (3 events 20 ms apart, or
/// `x-bench-stream-mb` megabytes as fast as possible).
async fn fake(req: Request<hyper::body::Incoming>) -> Result<Response<BoxBody>, Infallible> {
    let path = req.uri().path().to_string();
    let mb: usize = req
        .headers()
        .get("x-bench-stream-mb")
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .unwrap_or(0);
    let _ = req.into_body().collect().await;
    // The OAuth token endpoint of `BENCH_ONLY=vertex`'s entry.
    if path == "/token" {
        return Ok(Response::builder()
            .header("content-type", "application/json")
            .body(BodyExt::boxed_unsync(Full::new(Bytes::from_static(
                br#"{"access_token":"bench-token","expires_in":3600,"token_type":"Bearer"}"#,
            ))))
            .unwrap());
    }
    if path.contains(":streamGenerateContent") {
        let event = |i: usize, pad: usize| {
            Bytes::from(format!(
                "data: {{\"candidates\":[{{\"content\":{{\"parts\":[{{\"text\":\"chunk {i} {}\"}}]}}}}],\"usageMetadata\":{{\"promptTokenCount\":9,\"totalTokenCount\":{}}}}}\r\n\r\n",
                "x".repeat(pad),
                9 + i
            ))
        };
        let stream: std::pin::Pin<
            Box<dyn futures_util::Stream<Item = Result<Frame<Bytes>, Infallible>> + Send>,
        > = if mb > 0 {
            let chunk = event(0, 64 * 1024);
            let n = mb * 1024 * 1024 / chunk.len() + 1;
            Box::pin(futures_util::stream::iter(0..n).map(move |_| Ok(Frame::data(chunk.clone()))))
        } else {
            Box::pin(futures_util::stream::unfold(0usize, move |i| async move {
                if i == 3 {
                    return None;
                }
                if i > 0 {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Some((Ok(Frame::data(event(i, 0))), i + 1))
            }))
        };
        let body = BodyExt::boxed_unsync(StreamBody::new(stream));
        return Ok(Response::builder()
            .header("content-type", "text/event-stream")
            .body(body)
            .unwrap());
    }
    Ok(Response::builder()
        .header("content-type", "application/json; charset=UTF-8")
        .body(BodyExt::boxed_unsync(Full::new(Bytes::from_static(
            GENERATE_ANSWER.as_bytes(),
        ))))
        .unwrap())
}

fn start_proxy(upstream: u16, redis: Option<&str>) -> (u16, Proc) {
    start_proxy_bin(&proxy_bin(), upstream, redis)
}

fn start_proxy_bin(bin: &Path, upstream: u16, redis: Option<&str>) -> (u16, Proc) {
    let mut extra = vec![(
        "RUST_LOG",
        std::env::var("BENCH_RUST_LOG").unwrap_or_else(|_| "warn".into()),
    )];
    if let Some(url) = redis {
        extra.push(("REDIS_URL", url.to_string()));
    }
    // Allocator tuning can be tried without a rebuild.
    let tuning: Vec<(String, String)> = std::env::vars()
        .filter(|(k, _)| k.starts_with("MIMALLOC_") || k == "TOKIO_WORKER_THREADS")
        .collect();
    extra.extend(tuning.iter().map(|(k, v)| (k.as_str(), v.clone())));
    let url = format!("http://127.0.0.1:{upstream}");
    start_proxy_with(bin, &url, CLIENT_KEY, &extra)
}

/// The bare hyper forwarder (`examples/forwarder.rs`): the stack's own cost.
fn start_forwarder(upstream: u16) -> Option<(u16, Proc)> {
    let bin = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/release/examples/forwarder");
    if !bin.exists() {
        eprintln!("no forwarder reference: cargo build --release --example forwarder");
        return None;
    }
    let port = free_port();
    let child = Command::new(bin)
        .args([
            format!("127.0.0.1:{port}"),
            format!("http://127.0.0.1:{upstream}"),
        ])
        .stdout(Stdio::null())
        .spawn()
        .ok()?;
    wait_port(port);
    Some((port, Proc(child)))
}

fn start_nginx(upstream: u16, dir: &std::path::Path) -> Option<(u16, Proc)> {
    let nginx = ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())?;
    let port = free_port();
    // One process doing the work of one worker (no master): killing it leaves no orphan.
    let conf = format!(
        "master_process off;\nworker_processes 1;\nerror_log {d}/error.log warn;\npid {d}/nginx.pid;\ndaemon off;\n\
events {{ worker_connections 4096; }}\n\
http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
  upstream gemini {{ server 127.0.0.1:{upstream}; keepalive 256; }}\n\
  server {{\n    listen 127.0.0.1:{port};\n    location / {{\n      proxy_pass http://gemini;\n\
      proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n      proxy_buffering off;\n    }}\n  }}\n}}\n",
        d = dir.display()
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf).ok()?;
    let child = Command::new(nginx)
        .args([
            "-c",
            path.to_str()?,
            "-p",
            dir.to_str()?,
            "-e",
            dir.join("error.log").to_str()?,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    wait_port(port);
    Some((port, Proc(child)))
}

#[derive(Debug, Default, Clone, Copy)]
struct Load {
    rps: f64,
    p50_us: f64,
    p99_us: f64,
    p999_us: f64,
    requests: u64,
    errors: u64,
    /// CPU time (user + system) the target's processes spent per request, in microseconds.
    cpu_us: f64,
}

/// wrk with a POST body and a Lua `done` that prints what we need.
fn wrk(port: u16, conns: u32, secs: u32, script: &std::path::Path) -> Load {
    wrk_cpu(port, conns, secs, script, None)
}

/// CPU ticks (user + system) of `pid` and its child processes (nginx's worker).
fn cpu_ticks(pid: u32) -> u64 {
    let ticks = |stat: &str| -> Option<(u32, u64)> {
        // Fields after the parenthesised command name: state ppid ... utime(14) stime(15).
        let rest = &stat[stat.rfind(')')? + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        Some((
            f[1].parse().ok()?,
            f[11].parse::<u64>().ok()? + f[12].parse::<u64>().ok()?,
        ))
    };
    let mut total = 0;
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(p) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Some((ppid, t)) = std::fs::read_to_string(format!("/proc/{p}/stat"))
            .ok()
            .and_then(|s| ticks(&s))
            && (p == pid || ppid == pid)
        {
            total += t;
        }
    }
    total
}

/// `wrk`, and when `pid` is given the CPU time that process tree spent per request.
fn wrk_cpu(port: u16, conns: u32, secs: u32, script: &std::path::Path, pid: Option<u32>) -> Load {
    let before = pid.map(cpu_ticks);
    let v = support::wrk_result(port, conns, secs, script, PATH);
    // Linux reports process CPU time in clock ticks of 10 ms (USER_HZ = 100).
    let cpu_us = match (pid, before) {
        (Some(p), Some(b)) => (cpu_ticks(p) - b) as f64 * 10_000.0 / v[0].max(1.0),
        _ => f64::NAN,
    };
    Load {
        cpu_us,
        requests: v[0] as u64,
        rps: v[1],
        p50_us: v[2],
        p99_us: v[3],
        p999_us: v[4],
        errors: v[5] as u64,
    }
}

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn evalsha_calls(port: u16) -> u64 {
    script_stat(port, "calls=")
}

/// Time Redis spent in scripts (`EVAL`/`EVALSHA`), in microseconds, from `INFO commandstats`.
fn script_usec(port: u16) -> u64 {
    script_stat(port, "usec=")
}

/// One figure (`calls=` or `usec=`) of `EVAL` and `EVALSHA` in `INFO commandstats`, summed.
fn script_stat(port: u16, name: &str) -> u64 {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string(), "INFO", "commandstats"])
        .output()
        .expect("redis-cli");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("cmdstat_evalsha:") || l.starts_with("cmdstat_eval:"))
        .filter_map(|l| l.split(name).nth(1)?.split(',').next()?.parse::<u64>().ok())
        .sum()
}

/// Time to the first SSE event, p50 over `n` sequential streams, in microseconds.
async fn ttfe(port: u16, n: usize) -> f64 {
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let r = client
            .post(format!("http://127.0.0.1:{port}/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"))
            .header("x-goog-api-key", CLIENT_KEY)
            .header("content-type", "application/json")
            .body(REQUEST_BODY)
            .send()
            .await
            .unwrap();
        let mut s = r.bytes_stream();
        let _ = s.next().await;
        v.push(t.elapsed().as_secs_f64() * 1e6);
        while s.next().await.is_some() {}
        // Streams are not fired back to back in real use: give the upstream connection time to
        // return to its pool (on both paths alike).
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    v.sort_by(f64::total_cmp);
    v[n / 2]
}

/// Stream `mb` megabytes through `port`; returns (MB/s, proxy RSS growth in kB).
async fn big_stream(port: u16, mb: usize, pid: u32) -> (f64, i64) {
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let before = rss_kb(pid) as i64;
    let mut peak = before;
    let t = Instant::now();
    let r = client
        .post(format!(
            "http://127.0.0.1:{port}/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
        ))
        .header("x-goog-api-key", CLIENT_KEY)
        .header("x-bench-stream-mb", mb.to_string())
        .header("content-type", "application/json")
        .body(REQUEST_BODY)
        .send()
        .await
        .unwrap();
    let mut s = r.bytes_stream();
    let mut total = 0usize;
    let mut chunks = 0usize;
    while let Some(c) = s.next().await {
        total += c.unwrap().len();
        chunks += 1;
        if chunks.is_multiple_of(64) {
            peak = peak.max(rss_kb(pid) as i64);
        }
    }
    assert!(total >= mb * 1024 * 1024, "short stream: {total} bytes");
    let secs = t.elapsed().as_secs_f64();
    ((total as f64 / 1048576.0) / secs, peak - before)
}

fn row(name: &str, l: &Load) {
    println!(
        "| {name:<22} | {:>9.0} | {:>8.0} | {:>8.0} | {:>9.0} | {:>8} | {:>6} | {:>10.1} |",
        l.rps, l.p50_us, l.p99_us, l.p999_us, l.requests, l.errors, l.cpu_us
    );
}

/// Redis's side of one binary's load: its own redis-server, alternating runs like `compare`.
struct RedisSide {
    port: u16,
    proc_: Proc,
    redis_port: u16,
    redis_proc: Proc,
    loads: Vec<Load>,
    /// Per run: (redis-server CPU us per request, script us per request, EVALSHA per request).
    redis: Vec<(f64, f64, f64)>,
}

impl RedisSide {
    fn start(bin: &Path, upstream: u16) -> RedisSide {
        let (redis_port, redis_proc) = start_redis();
        let (port, proc_) = start_proxy_bin(
            bin,
            upstream,
            Some(&format!("redis://127.0.0.1:{redis_port}")),
        );
        RedisSide {
            port,
            proc_,
            redis_port,
            redis_proc,
            loads: Vec::new(),
            redis: Vec::new(),
        }
    }

    fn run(&mut self, label: &str, conns: u32, secs: u32, script: &Path) {
        let (ticks, usec, calls) = (
            cpu_ticks(self.redis_proc.0.id()),
            script_usec(self.redis_port),
            evalsha_calls(self.redis_port),
        );
        let l = wrk_cpu(self.port, conns, secs, script, Some(self.proc_.0.id()));
        let n = l.requests.max(1) as f64;
        self.redis.push((
            (cpu_ticks(self.redis_proc.0.id()) - ticks) as f64 * 10_000.0 / n,
            (script_usec(self.redis_port) - usec) as f64 / n,
            (evalsha_calls(self.redis_port) - calls) as f64 / n,
        ));
        row(label, &l);
        let r = self.redis[self.redis.len() - 1];
        println!(
            "|   redis: CPU {:.1} us/req, scripts {:.1} us/req, {:.3} EVALSHA/req",
            r.0, r.1, r.2
        );
        self.loads.push(l);
    }
}

/// `BENCH_ROUNDS` (default 2): how many times `BENCH_BASELINE`'s comparisons alternate the
/// two builds.
fn rounds() -> usize {
    std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2)
}

/// The middle of `v` (the mean of the two middle ones for an even count).
fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// `v` as `0.981, 1.012, ...`.
fn listed(v: &[f64]) -> String {
    v.iter()
        .map(|x| format!("{x:.3}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `BENCH_BASELINE` on the Redis store: what Redis spends per request under each build.
/// `memory`: the memory store's requests/s of (this build, the baseline) measured just before,
/// for the Redis/memory ratios.
fn compare_redis(
    upstream: u16,
    baseline: &Path,
    conns: u32,
    secs: u32,
    script: &Path,
    memory: Option<(f64, f64)>,
) {
    let mut new = RedisSide::start(&proxy_bin(), upstream);
    let mut old = RedisSide::start(baseline, upstream);
    for p in [new.port, old.port] {
        wrk(p, 8, 1, script);
    }
    println!();
    println!("Redis store, each build with its own redis-server:");
    for _ in 0..rounds() {
        old.run("baseline, redis store", conns, secs, script);
        new.run("this build, redis", conns, secs, script);
    }
    let avg = |v: &[(f64, f64, f64)], f: fn(&(f64, f64, f64)) -> f64| {
        v.iter().map(f).sum::<f64>() / v.len() as f64
    };
    let rps = |s: &RedisSide| s.loads.iter().map(|l| l.rps).sum::<f64>() / s.loads.len() as f64;
    for (name, side) in [("baseline  ", &old), ("this build", &new)] {
        println!(
            "{name}: {:.0} req/s; redis-server CPU {:.1} us/req, in scripts {:.1} us/req, {:.3} EVALSHA/req",
            rps(side),
            avg(&side.redis, |r| r.0),
            avg(&side.redis, |r| r.1),
            avg(&side.redis, |r| r.2)
        );
    }
    println!(
        "this build / baseline: throughput {:.3}, redis-server CPU per request {:.3}, script time per request {:.3}",
        rps(&new) / rps(&old),
        avg(&new.redis, |r| r.0) / avg(&old.redis, |r| r.0),
        avg(&new.redis, |r| r.1) / avg(&old.redis, |r| r.1)
    );
    let per_round: Vec<f64> = new
        .loads
        .iter()
        .zip(&old.loads)
        .map(|(n, o)| n.rps / o.rps)
        .collect();
    println!(
        "per round: throughput {} (median {:.3})",
        listed(&per_round),
        median(&per_round)
    );
    if let Some((new_memory, old_memory)) = memory {
        println!(
            "Redis/memory in this run: this build {:.2}, baseline {:.2}",
            rps(&new) / new_memory,
            rps(&old) / old_memory
        );
    }
}

/// `BENCH_BASELINE=path/to/other/gemini-quota-proxy`: this build against that one, memory
/// store, in one run: throughput and CPU per request measured `BENCH_ROUNDS` times each (default
/// 2), alternating (A B A B), then the latency each adds at concurrency 1; then the same on the
/// Redis store, with what Redis spends per request (`BENCH_ONLY=redis`: that part only).
fn compare(upstream: u16, baseline: &std::path::Path, conns: u32, secs: u32, script: &Path) {
    if std::env::var("BENCH_ONLY").as_deref() == Ok("redis") {
        compare_redis(upstream, baseline, conns, secs, script, None);
        return;
    }
    let (new_port, new_proc) = start_proxy(upstream, None);
    let (old_port, old_proc) = start_proxy_bin(baseline, upstream, None);
    for p in [upstream, new_port, old_port] {
        wrk(p, 8, 1, script);
    }
    println!("this build vs BENCH_BASELINE={}", baseline.display());
    println!(
        "| target                 | req/s     | p50 us   | p99 us   | p99.9 us  | requests | errors | CPU us/req |"
    );
    println!(
        "|------------------------|-----------|----------|----------|-----------|----------|--------|------------|"
    );
    let (mut new, mut old) = (Vec::new(), Vec::new());
    for _ in 0..rounds() {
        let o = wrk_cpu(old_port, conns, secs, script, Some(old_proc.0.id()));
        row("baseline, memory store", &o);
        old.push(o);
        let n = wrk_cpu(new_port, conns, secs, script, Some(new_proc.0.id()));
        row("this build, memory", &n);
        new.push(n);
    }
    let mean = |v: &[Load], f: fn(&Load) -> f64| v.iter().map(f).sum::<f64>() / v.len() as f64;
    let (nr, or) = (mean(&new, |l| l.rps), mean(&old, |l| l.rps));
    let (nc, oc) = (mean(&new, |l| l.cpu_us), mean(&old, |l| l.cpu_us));
    println!();
    println!(
        "this build / baseline: throughput {:.3} ({nr:.0} / {or:.0} req/s), CPU per request {:.3} ({nc:.1} / {oc:.1} us)",
        nr / or,
        nc / oc
    );
    // Each round's two runs are next to each other in time: the median of their ratios is less
    // swayed than the means by a round the machine was busy elsewhere.
    let ratios = |f: fn(&Load) -> f64| -> Vec<f64> {
        new.iter().zip(&old).map(|(n, o)| f(n) / f(o)).collect()
    };
    let (tr, cr) = (ratios(|l| l.rps), ratios(|l| l.cpu_us));
    println!(
        "per round: throughput {} (median {:.3}), CPU per request {} (median {:.3})",
        listed(&tr),
        median(&tr),
        listed(&cr),
        median(&cr)
    );
    let d1 = wrk(upstream, 1, secs / 2, script);
    let o1 = wrk(old_port, 1, secs / 2, script);
    let n1 = wrk(new_port, 1, secs / 2, script);
    println!(
        "added at concurrency 1: baseline p50 {:+.0} us, p99 {:+.0} us; this build p50 {:+.0} us, p99 {:+.0} us",
        o1.p50_us - d1.p50_us,
        o1.p99_us - d1.p99_us,
        n1.p50_us - d1.p50_us,
        n1.p99_us - d1.p99_us
    );
    drop((new_proc, old_proc));
    compare_redis(upstream, baseline, conns, secs, script, Some((nr, or)));
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let secs: u32 = std::env::var("BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let conns: u32 = std::env::var("BENCH_CONNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(64);
    let dir = std::env::temp_dir().join(format!("gqp-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let script = wrk_script(&dir, REQUEST_BODY, CLIENT_KEY);

    let upstream = serve_http(fake);
    wait_port(upstream);
    if let Ok(baseline) = std::env::var("BENCH_BASELINE") {
        compare(
            upstream,
            std::path::Path::new(&baseline),
            conns,
            secs,
            &script,
        );
        return;
    }
    if std::env::var("BENCH_ONLY").is_ok_and(|v| v == "queue") {
        queue_cost(upstream, conns, secs, &script);
        return;
    }
    if std::env::var("BENCH_ONLY").is_ok_and(|v| v == "vertex") {
        vertex::vertex_cost(upstream, conns, secs, &script, &dir);
        return;
    }
    if std::env::var("BENCH_ONLY").is_ok_and(|v| v == "clients") {
        clients::clients_cost(upstream, conns, secs, &dir);
        return;
    }
    let (redis_port, redis_proc) = start_redis();
    let (mem_port, mem_proc) = start_proxy(upstream, None);
    let (red_port, red_proc) =
        start_proxy(upstream, Some(&format!("redis://127.0.0.1:{redis_port}")));
    let nginx = start_nginx(upstream, &dir);
    let forwarder = start_forwarder(upstream);

    println!(
        "machine: {} cores, {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model()
    );
    println!(
        "load: wrk -t1 -c{conns} -d{secs}s POST generateContent ({} byte body), proxy RUST_LOG={}",
        REQUEST_BODY.len(),
        std::env::var("BENCH_RUST_LOG").unwrap_or_else(|_| "warn".into())
    );
    // Warm up every target.
    for p in [
        Some(upstream),
        Some(mem_port),
        Some(red_port),
        nginx.as_ref().map(|n| n.0),
        forwarder.as_ref().map(|f| f.0),
    ]
    .into_iter()
    .flatten()
    {
        wrk(p, 8, 1, &script);
    }
    println!();
    println!(
        "| target                 | req/s     | p50 us   | p99 us   | p99.9 us  | requests | errors | CPU us/req |"
    );
    println!(
        "|------------------------|-----------|----------|----------|-----------|----------|--------|------------|"
    );
    let direct = wrk_cpu(upstream, conns, secs, &script, Some(std::process::id()));
    row("upstream direct", &direct);
    let nginx_load = nginx
        .as_ref()
        .map(|n| wrk_cpu(n.0, conns, secs, &script, Some(n.1.0.id())));
    if let Some(l) = &nginx_load {
        row("nginx (1 worker)", l);
    }
    let forwarder_load = forwarder
        .as_ref()
        .map(|f| wrk_cpu(f.0, conns, secs, &script, Some(f.1.0.id())));
    if let Some(l) = &forwarder_load {
        row("bare hyper forwarder", l);
    }
    let mem = wrk_cpu(mem_port, conns, secs, &script, Some(mem_proc.0.id()));
    row("proxy, memory store", &mem);
    let calls_before = evalsha_calls(redis_port);
    let redis_ticks = cpu_ticks(redis_proc.0.id());
    let red = wrk_cpu(red_port, conns, secs, &script, Some(red_proc.0.id()));
    let calls = evalsha_calls(redis_port) - calls_before;
    let redis_cpu_us =
        (cpu_ticks(redis_proc.0.id()) - redis_ticks) as f64 * 10_000.0 / red.requests.max(1) as f64;
    row("proxy, redis store", &red);
    println!();
    println!(
        "throughput ratios: memory/direct {:.2}, redis/direct {:.2}, redis/memory {:.2}",
        mem.rps / direct.rps,
        red.rps / direct.rps,
        red.rps / mem.rps
    );
    if let Some(n) = &nginx_load {
        println!(
            "                   memory/nginx {:.2}, redis/nginx {:.2}",
            mem.rps / n.rps,
            red.rps / n.rps
        );
    }
    if let Some(f) = &forwarder_load {
        println!(
            "                   memory/bare hyper forwarder {:.2} (CPU per request {:.2}x)",
            mem.rps / f.rps,
            mem.cpu_us / f.cpu_us
        );
    }
    println!(
        "redis round trips (EVALSHA) per request: {:.3}; redis-server CPU per request: {redis_cpu_us:.1} us",
        calls as f64 / red.requests.max(1) as f64
    );
    println!(
        "proxy RSS after load: memory store {:.1} MB ({} requests), redis store {:.1} MB ({} requests)",
        rss_kb(mem_proc.0.id()) as f64 / 1024.0,
        mem.requests + 8,
        rss_kb(red_proc.0.id()) as f64 / 1024.0,
        red.requests + 8
    );

    if std::env::var("BENCH_ONLY").is_ok_and(|v| v == "throughput") {
        return;
    }
    // Added latency at concurrency 1.
    let d1 = wrk(upstream, 1, secs / 2, &script);
    let m1 = wrk(mem_port, 1, secs / 2, &script);
    let r1 = wrk(red_port, 1, secs / 2, &script);
    println!();
    println!(
        "concurrency 1: direct p50 {:.0} us p99 {:.0} us",
        d1.p50_us, d1.p99_us
    );
    println!(
        "  added by proxy, memory store: p50 {:+.0} us, p99 {:+.0} us",
        m1.p50_us - d1.p50_us,
        m1.p99_us - d1.p99_us
    );
    println!(
        "  added by proxy, redis store:  p50 {:+.0} us, p99 {:+.0} us",
        r1.p50_us - d1.p50_us,
        r1.p99_us - d1.p99_us
    );
    if let Some(n) = &nginx {
        let n1 = wrk(n.0, 1, secs / 2, &script);
        println!(
            "  added by nginx:               p50 {:+.0} us, p99 {:+.0} us",
            n1.p50_us - d1.p50_us,
            n1.p99_us - d1.p99_us
        );
    }

    // Streaming.
    let t_direct = ttfe(upstream, 200).await;
    let t_mem = ttfe(mem_port, 200).await;
    println!();
    println!(
        "time to first SSE event (p50 of 200): direct {t_direct:.0} us, via proxy {t_mem:.0} us, added {:+.0} us",
        t_mem - t_direct
    );
    let (rate, growth) = big_stream(mem_port, 100, mem_proc.0.id()).await;
    println!(
        "100 MB SSE stream through the proxy: {rate:.0} MB/s, proxy RSS growth {:.1} MB",
        growth as f64 / 1024.0
    );
    println!(
        "proxy RSS at the end: {:.1} MB",
        rss_kb(mem_proc.0.id()) as f64 / 1024.0
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `BENCH_ONLY=queue`: what the admission queue costs on the path while it is empty: the
/// memory-store proxy with the queue on (the default) and off, alternating rounds in one run.
fn queue_cost(upstream: u16, conns: u32, secs: u32, script: &Path) {
    let bin = proxy_bin();
    let url = format!("http://127.0.0.1:{upstream}");
    let log = std::env::var("BENCH_RUST_LOG").unwrap_or_else(|_| "warn".into());
    let (on_port, on_proc) = start_proxy_with(&bin, &url, CLIENT_KEY, &[("RUST_LOG", log.clone())]);
    let (off_port, off_proc) = start_proxy_with(
        &bin,
        &url,
        CLIENT_KEY,
        &[
            ("RUST_LOG", log),
            ("PROXY_QUEUE_MAX_WAIT_SECS", "0".to_string()),
        ],
    );
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    wrk(on_port, 8, 1, script);
    wrk(off_port, 8, 1, script);
    println!(
        "queue cost, empty queue: memory store, wrk -t1 -c{conns} -d{secs}s x {rounds} rounds each, alternating"
    );
    println!("| round | queue on req/s | queue off req/s | on/off | CPU us/req on | off |");
    println!("|-------|----------------|-----------------|--------|---------------|-----|");
    let (mut on_sum, mut off_sum) = (0.0, 0.0);
    for r in 1..=rounds {
        let on = wrk_cpu(on_port, conns, secs, script, Some(on_proc.0.id()));
        let off = wrk_cpu(off_port, conns, secs, script, Some(off_proc.0.id()));
        on_sum += on.rps;
        off_sum += off.rps;
        println!(
            "| {r} | {:.0} | {:.0} | {:.3} | {:.1} | {:.1} |",
            on.rps,
            off.rps,
            on.rps / off.rps,
            on.cpu_us,
            off.cpu_us
        );
    }
    println!(
        "mean throughput ratio, queue on / off: {:.3}",
        on_sum / off_sum
    );
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}
