//! Trace export's cost, in ONE run on loopback: the proxy (memory store) with OpenTelemetry
//! export off, on at 100 % sampling (`OTEL_TRACES_SAMPLER=always_on`) and on at a ratio
//! (`traceidratio`, BENCH_OTEL_RATIO, default 0.1) to a fake OTLP/HTTP collector that reads
//! and discards what it gets, under the same wrk load, runs alternated (off, on, ratio, then
//! the other way round, ...) so a drift of the machine falls on all alike. Prints throughput,
//! latency, the proxy's CPU time per request for each, the difference, the median of the
//! rounds' on/off ratios with their spread (one round's pair ran seconds apart: their ratio
//! is steadier than the means), and the spans exported and dropped (`gqp_otel_spans_total`).
//! Target: on costs under 5 % of throughput.
//!
//! Run with `BENCH_ONLY=otel scripts/bench` (builds in release mode, installs wrk when missing).
//! BENCH_SECS (default 10), BENCH_CONNS (default 64) and BENCH_ROUNDS (default 5) size it;
//! BENCH_PROXY_BIN runs another build of the proxy.

#[allow(dead_code)]
mod support;

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use support::{Proc, proxy_bin, serve_http, start_proxy_with, wrk_result, wrk_script};

const GENERATE_ANSWER: &str = r#"{"candidates":[{"content":{"role":"model","parts":[{"text":"Hello! How can I help you today?"}]},"finishReason":"STOP","index":0}],"usageMetadata":{"promptTokenCount":12,"candidatesTokenCount":9,"totalTokenCount":21},"modelVersion":"gemini-2.5-flash","responseId":"bench"}"#;
const REQUEST_BODY: &str =
    r#"{"contents":[{"role":"user","parts":[{"text":"Write one short friendly greeting."}]}]}"#;
const PATH: &str = "/v1beta/models/gemini-2.5-flash:generateContent";
const CLIENT_KEY: &str = "bench-client-key";

/// Bytes the fake collector received.
static COLLECTED: AtomicU64 = AtomicU64::new(0);

async fn upstream(
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let _ = req.into_body().collect().await;
    Ok(Response::builder()
        .header("content-type", "application/json; charset=UTF-8")
        .body(Full::new(Bytes::from_static(GENERATE_ANSWER.as_bytes())))
        .unwrap())
}

/// The fake collector: reads each export whole and answers 200 with an empty
/// `ExportTraceServiceResponse`.
async fn collector(
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let n = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes().len())
        .unwrap_or(0);
    COLLECTED.fetch_add(n as u64, Ordering::Relaxed);
    Ok(Response::builder()
        .header("content-type", "application/x-protobuf")
        .body(Full::new(Bytes::new()))
        .unwrap())
}

#[derive(Default, Clone, Copy)]
struct Load {
    rps: f64,
    p50_us: f64,
    p99_us: f64,
    requests: u64,
    errors: u64,
    cpu_us: f64,
}

/// CPU ticks (user + system) of `pid`.
fn cpu_ticks(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let rest = s[s.rfind(')')? + 2..].to_string();
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some(f[11].parse::<u64>().ok()? + f[12].parse::<u64>().ok()?)
        })
        .unwrap_or(0)
}

fn load(port: u16, pid: u32, conns: u32, secs: u32, script: &std::path::Path) -> Load {
    let before = cpu_ticks(pid);
    let v = wrk_result(port, conns, secs, script, PATH);
    Load {
        rps: v[1],
        p50_us: v[2],
        p99_us: v[3],
        requests: v[0] as u64,
        errors: v[5] as u64,
        // Clock ticks of 10 ms.
        cpu_us: (cpu_ticks(pid) - before) as f64 * 10_000.0 / v[0].max(1.0),
    }
}

fn mean(v: &[Load]) -> Load {
    let n = v.len().max(1) as f64;
    Load {
        rps: v.iter().map(|l| l.rps).sum::<f64>() / n,
        p50_us: v.iter().map(|l| l.p50_us).sum::<f64>() / n,
        p99_us: v.iter().map(|l| l.p99_us).sum::<f64>() / n,
        requests: v.iter().map(|l| l.requests).sum(),
        errors: v.iter().map(|l| l.errors).sum(),
        cpu_us: v.iter().map(|l| l.cpu_us).sum::<f64>() / n,
    }
}

/// `gqp_otel_spans_total{outcome="…"}` from the proxy's `/metrics`.
fn spans(port: u16, outcome: &str) -> u64 {
    let text = std::process::Command::new("curl")
        .args(["-s", &format!("http://127.0.0.1:{port}/metrics")])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let series = format!("gqp_otel_spans_total{{outcome=\"{outcome}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(series.as_str()))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(0.0) as u64
}

/// `f(a) / f(b)` of each round, sorted.
fn ratios(a: &[Load], b: &[Load], f: impl Fn(&Load) -> f64) -> Vec<f64> {
    let mut r: Vec<f64> = a
        .iter()
        .zip(b)
        .map(|(a, b)| f(a) / f(b).max(1e-9))
        .collect();
    r.sort_by(f64::total_cmp);
    r
}

/// A sorted list's median and range: `median 0.962 (0.941 to 0.990, 5 rounds)`.
fn spread(sorted: &[f64]) -> String {
    let n = sorted.len();
    if n == 0 {
        return "no rounds".into();
    }
    let median = if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    };
    format!(
        "median {median:.3} ({:.3} to {:.3}, {n} rounds)",
        sorted[0],
        sorted[n - 1]
    )
}

fn env_num(name: &str, default: u32) -> u32 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let secs = env_num("BENCH_SECS", 10);
    let conns = env_num("BENCH_CONNS", 64);
    let rounds = env_num("BENCH_ROUNDS", 5);
    let dir = std::env::temp_dir().join(format!("gqp-otel-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let script = wrk_script(&dir, REQUEST_BODY, CLIENT_KEY);
    let up = serve_http(upstream);
    let col = serve_http(collector);
    let upstream_url = format!("http://127.0.0.1:{up}");
    let bin = proxy_bin();
    let ratio: f64 = std::env::var("BENCH_OTEL_RATIO")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.1);
    let start = |sampler: Option<(&str, f64)>| -> (u16, Proc) {
        let mut extra = vec![];
        if let Some((name, arg)) = sampler {
            extra.push((
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                format!("http://127.0.0.1:{col}"),
            ));
            extra.push(("OTEL_TRACES_SAMPLER", name.to_string()));
            extra.push(("OTEL_TRACES_SAMPLER_ARG", arg.to_string()));
        }
        start_proxy_with(&bin, &upstream_url, CLIENT_KEY, &extra)
    };
    let (off_port, off_proc) = start(None);
    let (on_port, on_proc) = start(Some(("always_on", 1.0)));
    let (ratio_port, ratio_proc) = start(Some(("traceidratio", ratio)));
    // Warm all (connections to the upstream, allocator).
    load(off_port, off_proc.0.id(), conns, 2, &script);
    let warm_on = load(on_port, on_proc.0.id(), conns, 2, &script).requests;
    load(ratio_port, ratio_proc.0.id(), conns, 2, &script);
    let (mut off, mut on, mut part) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        // Off first, then last: a machine speeding up or slowing down favours neither.
        let first = round % 2 == 0;
        if first {
            off.push(load(off_port, off_proc.0.id(), conns, secs, &script));
        } else {
            part.push(load(ratio_port, ratio_proc.0.id(), conns, secs, &script));
        }
        on.push(load(on_port, on_proc.0.id(), conns, secs, &script));
        if first {
            part.push(load(ratio_port, ratio_proc.0.id(), conns, secs, &script));
        } else {
            off.push(load(off_port, off_proc.0.id(), conns, secs, &script));
        }
    }
    // Each round's on/off ratios: requests/s (below 1: export costs) and CPU per request.
    let rps_on = ratios(&on, &off, |l| l.rps);
    let cpu_on = ratios(&on, &off, |l| l.cpu_us);
    let rps_part = ratios(&part, &off, |l| l.rps);
    // The last batch leaves within the schedule delay (5 s by default).
    std::thread::sleep(std::time::Duration::from_secs(6));
    let (off, on, part) = (mean(&off), mean(&on), mean(&part));
    let ratio_name = format!("export on, {:.0} %", ratio * 100.0);
    println!(
        "\nOpenTelemetry export cost: {rounds} alternated rounds of {secs} s, {conns} connections, generateContent"
    );
    println!(
        "| proxy                  |     req/s | p50 (us) | p99 (us) | requests | errors | CPU us/req |"
    );
    println!(
        "|------------------------|-----------|----------|----------|----------|--------|------------|"
    );
    for (name, l) in [
        ("export off", off),
        ("export on, 100 %", on),
        (ratio_name.as_str(), part),
    ] {
        println!(
            "| {name:<22} | {:>9.0} | {:>8.0} | {:>8.0} | {:>8} | {:>6} | {:>10.1} |",
            l.rps, l.p50_us, l.p99_us, l.requests, l.errors, l.cpu_us
        );
    }
    let cost = (1.0 - on.rps / off.rps.max(1.0)) * 100.0;
    println!(
        "\nthroughput cost of export at 100 %: {cost:.1} % (target < 5 %); CPU per request {:+.1} us",
        on.cpu_us - off.cpu_us
    );
    println!(
        "throughput cost at {:.0} %: {:.1} %; CPU per request {:+.1} us",
        ratio * 100.0,
        (1.0 - part.rps / off.rps.max(1.0)) * 100.0,
        part.cpu_us - off.cpu_us
    );
    println!(
        "per round, on at 100 % / off: requests/s {}; CPU per request {}",
        spread(&rps_on),
        spread(&cpu_on)
    );
    println!(
        "per round, on at {:.0} % / off: requests/s {}",
        ratio * 100.0,
        spread(&rps_part)
    );
    let exported = spans(on_port, "exported");
    let dropped = spans(on_port, "dropped");
    let failed = spans(on_port, "failed");
    println!(
        "spans: {exported} exported, {dropped} dropped (queue full), {failed} failed; {:.1} spans per request; collector got {} KB",
        (exported + dropped + failed) as f64 / (on.requests + warm_on).max(1) as f64,
        COLLECTED.load(Ordering::Relaxed) / 1024
    );
    let _ = std::fs::remove_dir_all(&dir);
}
