//! A memory-exhaustion attempt against the release binary on loopback: one client key opens
//! BENCH_EXHAUST_CONNS (16) HTTP/2 prior-knowledge connections and keeps BENCH_EXHAUST_STREAMS
//! (50) streams busy on each, every one a generateContent with a 20 MB body (refused ones try
//! again after 200 ms), for BENCH_EXHAUST_SECS (20). The fake upstream reads each large body
//! and answers after 3 s, so admitted bodies stay held. Meanwhile a second client key sends a
//! small request every 500 ms. The proxy runs with `server.max_buffered_bytes` at
//! BENCH_EXHAUST_BOUND (268435456, 256 MiB) and its other settings at their defaults.
//!
//! Prints the proxy's RSS (idle, peak) against the bound, what the attacker's streams got, and
//! whether (and how fast) the fresh client was served. Bounded in time: about BENCH_EXHAUST_SECS
//! plus a few seconds. Run with `scripts/bench-exhaust` (or `BENCH_ONLY=exhaust scripts/bench`).
//!
//! The other half of issue 25's attempt, 4,096 idle prior-knowledge connections, belongs to the
//! connection limits (idle and handshake timeouts, per-IP cap) and is added with them.

#[allow(dead_code)] // wrk, redis: not needed here
mod support;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::{proxy_bin, serve_http, start_proxy_with};

const ATTACKER: &str = "bench-attacker-key-0001";
const FRESH: &str = "bench-fresh-client-key-01";
const PATH: &str = "/v1beta/models/gemini-2.5-flash:generateContent";
const ANSWER: &str = r#"{"candidates":[{"content":{"role":"model","parts":[{"text":"ok"}]},"finishReason":"STOP"}],"usageMetadata":{"promptTokenCount":5,"candidatesTokenCount":1,"totalTokenCount":6}}"#;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The fake Gemini: large bodies are read whole and answered 3 s later; small ones at once.
async fn upstream(
    req: hyper::Request<Incoming>,
) -> Result<hyper::Response<Full<Bytes>>, Infallible> {
    let body = req.into_body().collect().await.map(|b| b.to_bytes());
    if body.as_ref().map_or(0, Bytes::len) > 1_000_000 {
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    let mut resp = hyper::Response::new(Full::new(Bytes::from_static(ANSWER.as_bytes())));
    resp.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    Ok(resp)
}

/// The process's resident set in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

#[tokio::main]
async fn main() {
    let conns: usize = env_or("BENCH_EXHAUST_CONNS", 16);
    let streams: usize = env_or("BENCH_EXHAUST_STREAMS", 50);
    let secs: f64 = env_or("BENCH_EXHAUST_SECS", 20.0);
    let bound: u64 = env_or("BENCH_EXHAUST_BOUND", 268_435_456);
    let idle_conns: usize = env_or("BENCH_EXHAUST_IDLE", 4096);
    let body_bytes: usize = 20 * 1024 * 1024 - 4096;

    let up = serve_http(upstream);
    let (port, mut proc_) = start_proxy_with(
        &proxy_bin(),
        &format!("http://127.0.0.1:{up}"),
        &format!("attacker:{ATTACKER},fresh:{FRESH}"),
        &[
            ("PROXY_MAX_BUFFERED_BYTES", bound.to_string()),
            ("GEMINI_MAX_REQUEST_TOKENS", "100000000".into()),
        ],
    );
    let pid = proc_.0.id();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle = rss(pid);

    // One 20 MB JSON body, shared by every stream (the client holds it once).
    let mut json = br#"{"contents":[{"parts":[{"text":""#.to_vec();
    json.resize(body_bytes - 8, b'a');
    json.extend_from_slice(br#""}]}]}"#);
    let body = Bytes::from(json);

    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(idle));
    let sampler = {
        let (stop, peak) = (stop.clone(), peak.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max(rss(pid), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        })
    };

    let outcomes: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let count = |outcomes: &Mutex<BTreeMap<String, u64>>, what: String| {
        *outcomes.lock().unwrap().entry(what).or_default() += 1;
    };
    // One task per connection slot: it connects, keeps `streams` streams busy, and connects
    // again when the proxy closes the connection (an attacker would).
    let mut attackers = Vec::new();
    for _ in 0..conns {
        let (body, outcomes) = (body.clone(), outcomes.clone());
        attackers.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let Ok(tcp) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
                    count(&outcomes, "connect failed".into());
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                };
                let Ok((sender, conn)) =
                    hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
                        .await
                else {
                    count(&outcomes, "handshake failed".into());
                    continue;
                };
                count(&outcomes, "connections opened".into());
                tokio::spawn(conn);
                let mut busy = Vec::new();
                for _ in 0..streams {
                    let (mut sender, body, outcomes) =
                        (sender.clone(), body.clone(), outcomes.clone());
                    busy.push(tokio::spawn(async move {
                        while Instant::now() < deadline && !sender.is_closed() {
                            let req =
                                hyper::Request::post(format!("http://127.0.0.1:{port}{PATH}"))
                                    .header("x-goog-api-key", ATTACKER)
                                    .header("content-type", "application/json")
                                    .header("content-length", body.len())
                                    .body(Full::new(body.clone()))
                                    .unwrap();
                            let what = match sender.send_request(req).await {
                                Ok(resp) => {
                                    let status = resp.status().as_u16();
                                    let _ = resp.into_body().collect().await;
                                    status.to_string()
                                }
                                // hyper's words, without the connection's details.
                                Err(e) => format!(
                                    "error: {}",
                                    e.to_string().chars().take(60).collect::<String>()
                                ),
                            };
                            let again = what != "200";
                            count(&outcomes, what);
                            if again {
                                tokio::time::sleep(Duration::from_millis(200)).await;
                            }
                        }
                    }));
                }
                for b in busy {
                    let _ = b.await;
                }
            }
        }));
    }

    // The other half: idle HTTP/2 prior-knowledge connections from a second attacker address
    // (127.0.0.3) that send the preface and SETTINGS and nothing more, held until the proxy
    // closes them. `held` counts those open now, `held_peak` the most at once.
    let held = Arc::new(AtomicUsize::new(0));
    let held_peak = Arc::new(AtomicUsize::new(0));
    let mut idlers = Vec::new();
    for _ in 0..idle_conns {
        let (held, held_peak) = (held.clone(), held_peak.clone());
        idlers.push(tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let Ok(socket) = tokio::net::TcpSocket::new_v4() else {
                return;
            };
            if socket.bind("127.0.0.3:0".parse().unwrap()).is_err() {
                return;
            }
            let Ok(mut tcp) = socket.connect(([127, 0, 0, 1], port).into()).await else {
                return;
            };
            let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";
            if tcp.write_all(preface).await.is_err() {
                return;
            }
            let now = held.fetch_add(1, Ordering::Relaxed) + 1;
            held_peak.fetch_max(now, Ordering::Relaxed);
            let mut buf = [0u8; 4096];
            while matches!(tcp.read(&mut buf).await, Ok(n) if n > 0) {}
            held.fetch_sub(1, Ordering::Relaxed);
        }));
    }

    // The fresh client, from its own address (127.0.0.2): a small request every 500 ms, over
    // HTTP/1.1.
    let fresh = tokio::spawn(async move {
        let client = reqwest::Client::builder()
            .no_proxy()
            .local_address(std::net::IpAddr::from([127, 0, 0, 2]))
            .build()
            .unwrap();
        let mut seen = Vec::new();
        tokio::time::sleep(Duration::from_secs(1)).await;
        while Instant::now() < deadline {
            let t = Instant::now();
            let status = client
                .post(format!("http://127.0.0.1:{port}{PATH}"))
                .header("x-goog-api-key", FRESH)
                .header("content-type", "application/json")
                .body(r#"{"contents":[{"parts":[{"text":"hello"}]}]}"#)
                .timeout(Duration::from_secs(10))
                .send()
                .await
                .map_or(0, |r| r.status().as_u16());
            seen.push((status, t.elapsed()));
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        seen
    });

    let fresh = fresh.await.unwrap();
    // Streams still sending end with the run.
    let grace = tokio::time::sleep(Duration::from_secs(8));
    tokio::pin!(grace);
    for a in attackers {
        tokio::select! {
            _ = &mut grace => break,
            _ = a => {}
        }
    }
    let idle_held_at_end = held.load(Ordering::Relaxed);
    for i in idlers {
        i.abort();
    }
    stop.store(true, Ordering::Relaxed);
    let _ = sampler.await;
    let peak = peak.load(Ordering::Relaxed);
    let after = rss(pid);
    let _ = proc_.0.kill();

    let served = fresh.iter().filter(|(s, _)| *s == 200).count();
    let mut lat: Vec<Duration> = fresh.iter().map(|(_, d)| *d).collect();
    lat.sort();
    let p = |q: f64| {
        lat.get(((lat.len() as f64 - 1.0) * q) as usize)
            .copied()
            .unwrap_or_default()
    };
    println!(
        "exhaust: {conns} HTTP/2 connections x {streams} streams, 20 MB bodies, one client key, {secs:.0} s"
    );
    println!(
        "  server.max_buffered_bytes {:.0} MiB (one client's share: half of it)",
        mib(bound)
    );
    println!(
        "  proxy RSS: idle {:.1} MiB, peak {:.1} MiB ({:.1} MiB over idle), after {:.1} MiB",
        mib(idle),
        mib(peak),
        mib(peak.saturating_sub(idle)),
        mib(after)
    );
    println!(
        "  {idle_conns} idle prior-knowledge connections from a second address: at most {} open at once, {idle_held_at_end} still open at the end",
        held_peak.load(Ordering::Relaxed)
    );
    println!(
        "  attacker's requests by answer: {:?}",
        outcomes.lock().unwrap()
    );
    println!(
        "  fresh client: {served} of {} served (statuses {:?}), latency p50 {:.0} ms, max {:.0} ms",
        fresh.len(),
        fresh
            .iter()
            .map(|(s, _)| *s)
            .collect::<std::collections::BTreeSet<_>>(),
        p(0.5).as_secs_f64() * 1000.0,
        p(1.0).as_secs_f64() * 1000.0
    );
}
