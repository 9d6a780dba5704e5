//! 10,000 concurrent slow SSE streams. A fake Gemini upstream (this program again, in a process
//! of its own) answers `:streamGenerateContent?alt=sse` with one event at once and then one every
//! BENCH_STREAM_GAP_MS (1000) up to BENCH_STREAM_EVENTS (25), a cumulative `usageMetadata` on
//! every event and `finishReason` on the last, as current Gemini models stream. BENCH_STREAMS
//! (10,000) clients, each on its own HTTP/1.1 connection, open streams evenly over
//! BENCH_RAMP_SECS (10), so that all of them are open at once at the peak: first straight to the
//! upstream, then through the proxy (its release binary in its own process, memory store, limits
//! far above the load). The proxy reaches the upstream as it reaches Google by default: TLS and
//! HTTP/2, 100 streams per connection (`BENCH_STREAMS_UPSTREAM=http1`: plain HTTP/1.1, one
//! upstream connection per stream, twice the proxy's file descriptors). Prints, in one run:
//! streams ok/failed, the most open at once (clients, upstream, proxy file descriptors), time to
//! first event p50/p99 both ways and what the proxy adds, the proxy's RSS idle / at peak / per
//! open stream, and its CPU time.
//!
//! Run with `BENCH_ONLY=streams scripts/bench` (raises the file limit, builds in release mode).

#[allow(dead_code)] // wrk, redis: not needed here
mod support;

use std::collections::HashMap;
use std::convert::Infallible;
use std::io::BufRead;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use support::{Proc, free_port, proxy_bin, wait_port};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;
use tokio_rustls::rustls;

const CLIENT_KEY: &str = "bench-client-key";
const PATH: &str = "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse";
const REQUEST_BODY: &str =
    r#"{"contents":[{"role":"user","parts":[{"text":"Tell me a long story, slowly."}]}]}"#;
/// The direct clients reach the upstream here; the proxy reaches it on [`UPSTREAM_FOR_PROXY`]:
/// two addresses, so neither phase's closed connections (`TIME_WAIT`) stand in the other's way.
const UPSTREAM_DIRECT: &str = "127.0.0.2";
const UPSTREAM_FOR_PROXY: &str = "127.0.0.3";
/// Streams the upstream allows per HTTP/2 connection (Google's figure).
const H2_STREAMS_PER_CONN: u32 = 100;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The run's shape (the upstream process reads the same variables).
#[derive(Clone, Copy)]
struct Shape {
    streams: usize,
    events: usize,
    gap: Duration,
    ramp: Duration,
    /// The proxy reaches the upstream over TLS and HTTP/2 (else plain HTTP/1.1).
    h2: bool,
}

impl Shape {
    fn from_env() -> Shape {
        Shape {
            streams: env_or("BENCH_STREAMS", 10_000usize).max(10),
            events: env_or("BENCH_STREAM_EVENTS", 25usize).max(2),
            gap: Duration::from_millis(env_or("BENCH_STREAM_GAP_MS", 1000u64)),
            ramp: Duration::from_secs_f64(env_or("BENCH_RAMP_SECS", 10.0f64)),
            h2: std::env::var("BENCH_STREAMS_UPSTREAM").as_deref() != Ok("http1"),
        }
    }
}

/// Streams open at once, and the most seen.
#[derive(Default)]
struct Gauge {
    now: AtomicUsize,
    max: AtomicUsize,
}

impl Gauge {
    fn up(self: &Arc<Self>) -> GaugeGuard {
        let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.max.fetch_max(n, Ordering::SeqCst);
        GaugeGuard(self.clone())
    }

    fn reset_max(&self) {
        self.max
            .store(self.now.load(Ordering::SeqCst), Ordering::SeqCst);
    }

    fn max(&self) -> usize {
        self.max.load(Ordering::SeqCst)
    }
}

/// One open stream, counted until dropped.
struct GaugeGuard(Arc<Gauge>);

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.now.fetch_sub(1, Ordering::SeqCst);
    }
}

// ---------------------------------------------------------------------------------------------
// The fake upstream: `streams_bench --upstream`, a process of its own.

type BoxBody = http_body_util::combinators::UnsyncBoxBody<Bytes, Infallible>;

/// What the upstream counts: streams open (and the most at once), connections from the proxy.
#[derive(Default)]
struct Seen {
    streams: Arc<Gauge>,
    proxy_conns: AtomicUsize,
}

/// Event `i` of `n`: Gemini's SSE wire format (`data: {json}\r\n\r\n`), cumulative usage on
/// every event, `finishReason` on the last.
fn event(i: usize, n: usize) -> Bytes {
    let finish = if i + 1 == n {
        r#","finishReason":"STOP""#
    } else {
        ""
    };
    let out = 8 * (i + 1);
    Bytes::from(format!(
        "data: {{\"candidates\":[{{\"content\":{{\"parts\":[{{\"text\":\"Part {i} of the story, a few words at a time. \"}}],\"role\":\"model\"}}{finish},\"index\":0}}],\"usageMetadata\":{{\"promptTokenCount\":11,\"candidatesTokenCount\":{out},\"totalTokenCount\":{}}},\"modelVersion\":\"gemini-2.5-flash\",\"responseId\":\"streams-bench\"}}\r\n\r\n",
        11 + out
    ))
}

fn plain(status: u16, text: String) -> Response<BoxBody> {
    Response::builder()
        .status(status)
        .body(BodyExt::boxed_unsync(Full::new(Bytes::from(text))))
        .unwrap()
}

/// A slow stream (`x-bench-events` / `x-bench-gap-ms` override the run's shape: the warm-up's
/// short streams); `GET /stats`: `open max proxy_connections` (`?reset`: then the most-at-once
/// count starts again from now).
async fn answer(
    req: Request<Incoming>,
    shape: Shape,
    seen: Arc<Seen>,
) -> Result<Response<BoxBody>, Infallible> {
    if req.uri().path() == "/stats" {
        let text = format!(
            "{} {} {}",
            seen.streams.now.load(Ordering::SeqCst),
            seen.streams.max(),
            seen.proxy_conns.load(Ordering::SeqCst)
        );
        if req.uri().query() == Some("reset") {
            seen.streams.reset_max();
        }
        return Ok(plain(200, text));
    }
    let header =
        |name: &str| -> Option<u64> { req.headers().get(name)?.to_str().ok()?.parse().ok() };
    let n = header("x-bench-events")
        .map_or(shape.events, |v| v as usize)
        .max(1);
    let gap = header("x-bench-gap-ms").map_or(shape.gap, Duration::from_millis);
    let is_stream = req.uri().path().ends_with(":streamGenerateContent")
        && req.uri().query().is_some_and(|q| q.contains("alt=sse"));
    let _ = req.into_body().collect().await;
    if !is_stream {
        return Ok(plain(404, "not a stream".into()));
    }
    let guard = seen.streams.up();
    let start = Instant::now();
    let events = futures_util::stream::unfold(0usize, move |i| {
        let _alive = &guard;
        async move {
            if i == n {
                return None;
            }
            if i > 0 {
                tokio::time::sleep_until(start + gap * i as u32).await;
            }
            Some((Ok::<_, Infallible>(Frame::data(event(i, n))), i + 1))
        }
    });
    Ok(Response::builder()
        .header("content-type", "text/event-stream")
        .body(BodyExt::boxed_unsync(StreamBody::new(events)))
        .unwrap())
}

/// A listener on `ip` with a backlog that takes a burst of connections.
fn listen(ip: &str) -> tokio::net::TcpListener {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_reuseaddr(true).unwrap();
    socket.bind(format!("{ip}:0").parse().unwrap()).unwrap();
    socket.listen(4096).unwrap()
}

/// A CA made now (written to `ca_file`) and a TLS acceptor for `ip` signed by it, offering h2
/// and http/1.1 by ALPN.
fn tls_acceptor(ip: &str, ca_file: &Path) -> tokio_rustls::TlsAcceptor {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "gqp streams bench CA");
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate().unwrap())
        .unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec![ip.to_string()])
        .unwrap()
        .signed_by(&leaf_key, &ca)
        .unwrap();
    std::fs::write(ca_file, ca.as_ref().pem()).unwrap();
    let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![leaf.der().clone()],
        rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
    )
    .unwrap();
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    tokio_rustls::TlsAcceptor::from(Arc::new(tls))
}

/// Serve one connection: HTTP/2 when `h2` (at most [`H2_STREAMS_PER_CONN`] streams), else
/// HTTP/1.1.
async fn serve<I>(io: I, h2: bool, shape: Shape, seen: Arc<Seen>)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req| answer(req, shape, seen.clone()));
    let io = TokioIo::new(io);
    let _ = if h2 {
        hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .max_concurrent_streams(H2_STREAMS_PER_CONN)
            .serve_connection(io, service)
            .await
    } else {
        hyper::server::conn::http1::Builder::new()
            .serve_connection(io, service)
            .await
    };
}

/// The upstream process: plain HTTP/1.1 on [`UPSTREAM_DIRECT`] for the direct clients, TLS
/// (h2 or http/1.1 by ALPN) or plain HTTP/1.1 on [`UPSTREAM_FOR_PROXY`]. Prints
/// `READY direct for_proxy ca_file` and serves until its parent goes away.
async fn upstream_main() {
    // The parent holds our stdin: when it ends (the parent died), so do we.
    std::thread::spawn(|| {
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        std::process::exit(0);
    });
    let shape = Shape::from_env();
    reserve_descriptors(shape.streams as u64 + 512);
    let seen = Arc::new(Seen::default());
    let direct = listen(UPSTREAM_DIRECT);
    let for_proxy = listen(UPSTREAM_FOR_PROXY);
    let ca_file = std::env::temp_dir().join(format!("gqp-streams-ca-{}.pem", std::process::id()));
    let tls = shape.h2.then(|| tls_acceptor(UPSTREAM_FOR_PROXY, &ca_file));
    println!(
        "READY {} {} {}",
        direct.local_addr().unwrap(),
        for_proxy.local_addr().unwrap(),
        if tls.is_some() {
            ca_file.display().to_string()
        } else {
            "-".into()
        }
    );
    let seen_direct = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = direct.accept().await else {
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            };
            let _ = tcp.set_nodelay(true);
            tokio::spawn(serve(tcp, false, shape, seen_direct.clone()));
        }
    });
    loop {
        let Ok((tcp, _)) = for_proxy.accept().await else {
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        };
        let _ = tcp.set_nodelay(true);
        seen.proxy_conns.fetch_add(1, Ordering::SeqCst);
        let seen = seen.clone();
        match &tls {
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                    serve(tls, h2, shape, seen).await;
                });
            }
            None => {
                tokio::spawn(serve(tcp, false, shape, seen));
            }
        }
    }
}

/// The upstream process as the benchmark sees it.
struct Upstream {
    proc_: Proc,
    direct: SocketAddr,
    for_proxy: SocketAddr,
    ca_file: Option<PathBuf>,
}

impl Upstream {
    fn start() -> Upstream {
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .arg("--upstream")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let f: Vec<&str> = line.split_whitespace().collect();
        assert!(
            f.len() == 4 && f[0] == "READY",
            "the upstream did not start: {line:?}"
        );
        Upstream {
            proc_: Proc(child),
            direct: f[1].parse().unwrap(),
            for_proxy: f[2].parse().unwrap(),
            ca_file: (f[3] != "-").then(|| PathBuf::from(f[3])),
        }
    }

    /// (streams open, most open at once, connections the proxy opened); `reset`: then the most
    /// at once starts again from now.
    async fn stats(&self, reset: bool) -> (usize, usize, usize) {
        let mut tcp = tokio::net::TcpStream::connect(self.direct).await.unwrap();
        let q = if reset { "?reset" } else { "" };
        tcp.write_all(
            format!("GET /stats{q} HTTP/1.1\r\nhost: upstream\r\nconnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
        let mut text = String::new();
        tcp.read_to_string(&mut text).await.unwrap();
        let v: Vec<usize> = text
            .rsplit("\r\n\r\n")
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|w| w.parse().ok())
            .collect();
        assert_eq!(v.len(), 3, "upstream stats: {text:?}");
        (v[0], v[1], v[2])
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        if let Some(f) = &self.ca_file {
            let _ = std::fs::remove_file(f);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The clients.

/// One client: its own connection, one stream read to the end. Returns the time from before
/// connecting to the end of the first event.
async fn one_stream(
    addr: SocketAddr,
    expect: usize,
    short: Option<(usize, u64)>,
    open: Arc<Gauge>,
) -> Result<Duration, String> {
    let t0 = Instant::now();
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {}", e.kind()))?;
    let _ = tcp.set_nodelay(true);
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let conn = tokio::spawn(conn);
    let mut req = Request::post(PATH)
        .header("host", addr.to_string())
        .header("content-type", "application/json")
        .header("x-goog-api-key", CLIENT_KEY);
    if let Some((events, gap_ms)) = short {
        req = req
            .header("x-bench-events", events)
            .header("x-bench-gap-ms", gap_ms);
    }
    let req = req
        .body(Full::new(Bytes::from_static(REQUEST_BODY.as_bytes())))
        .unwrap();
    let resp = send
        .send_request(req)
        .await
        .map_err(|e| format!("request: {e}"))?;
    if resp.status() != 200 {
        return Err(format!("status {}", resp.status().as_u16()));
    }
    let _open = open.up();
    let mut body = resp.into_body();
    let mut pending: Vec<u8> = Vec::new();
    let mut last = Vec::new();
    let mut events = 0usize;
    let mut ttfe = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("body: {e}"))?;
        let Some(data) = frame.data_ref() else {
            continue;
        };
        pending.extend_from_slice(data);
        while let Some(end) = memchr::memmem::find(&pending, b"\r\n\r\n") {
            events += 1;
            ttfe.get_or_insert_with(|| t0.elapsed());
            last.clear();
            last.extend(pending.drain(..end + 4));
        }
    }
    drop(send);
    let _ = conn.await;
    let last = String::from_utf8_lossy(&last);
    if events != expect {
        return Err(format!("{events} events of {expect}"));
    }
    if !last.contains("\"finishReason\":\"STOP\"") || !last.contains("\"usageMetadata\"") {
        return Err("last event without finishReason or usageMetadata".into());
    }
    ttfe.ok_or_else(|| "no event".to_string())
}

/// What one phase's clients saw.
struct Phase {
    /// Time to first event of each successful stream, in µs, in the order they were opened.
    ttfe_us: Vec<Option<f64>>,
    failed: usize,
    errors: HashMap<String, usize>,
    max_open: usize,
    wall: Duration,
}

impl Phase {
    fn ok(&self) -> usize {
        self.ttfe_us.iter().filter(|t| t.is_some()).count()
    }

    /// Sorted times to first event of the streams opened in `range` (by opening order).
    fn sorted(&self, range: std::ops::Range<usize>) -> Vec<f64> {
        let mut v: Vec<f64> = self.ttfe_us[range].iter().flatten().copied().collect();
        v.sort_by(f64::total_cmp);
        v
    }
}

/// Nearest-rank percentile of sorted `v`.
fn pct(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let rank = ((q / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

/// `shape.streams` clients against `addr`, opened evenly over `shape.ramp`.
async fn run_phase(addr: SocketAddr, shape: Shape) -> Phase {
    let open = Arc::new(Gauge::default());
    let start = Instant::now();
    let step = shape.ramp / shape.streams as u32;
    let mut tasks = Vec::with_capacity(shape.streams);
    for i in 0..shape.streams {
        tokio::time::sleep_until(start + step * i as u32).await;
        tasks.push(tokio::spawn(one_stream(
            addr,
            shape.events,
            None,
            open.clone(),
        )));
    }
    let mut phase = Phase {
        ttfe_us: Vec::with_capacity(shape.streams),
        failed: 0,
        errors: HashMap::new(),
        max_open: 0,
        wall: Duration::ZERO,
    };
    for t in tasks {
        let outcome = t.await.unwrap_or_else(|e| Err(format!("task: {e}")));
        match outcome {
            Ok(d) => phase.ttfe_us.push(Some(d.as_secs_f64() * 1e6)),
            Err(e) => {
                phase.ttfe_us.push(None);
                phase.failed += 1;
                *phase.errors.entry(e).or_default() += 1;
            }
        }
    }
    phase.wall = start.elapsed();
    phase.max_open = open.max();
    phase
}

// ---------------------------------------------------------------------------------------------
// The proxy's process.

/// The proxy on `port` in front of `upstream`: four keys in two projects, limits far above the
/// load (nothing is refused or queued), room for every connection.
fn start_proxy(dir: &Path, port: u16, upstream: &Upstream, streams: usize) -> Proc {
    let (scheme, ca) = match &upstream.ca_file {
        Some(f) => ("https", format!("ca_file = \"{}\"\n", f.display())),
        None => ("http", String::new()),
    };
    let config = format!(
        r#"[server]
listen = "127.0.0.1:{port}"
max_connections = {max_conn}

[upstream]
url = "{scheme}://{upstream_addr}"
{ca}
[auth]
client_keys = ["{CLIENT_KEY}"]

[limits]
minute = 100000000
daily = 1000000000
token_minute = 100000000000

[[keys]]
key = "AIzaStreamsBenchKey00000001"
project = "bench-a"
[[keys]]
key = "AIzaStreamsBenchKey00000002"
project = "bench-a"
[[keys]]
key = "AIzaStreamsBenchKey00000003"
project = "bench-b"
[[keys]]
key = "AIzaStreamsBenchKey00000004"
project = "bench-b"
"#,
        max_conn = streams + 1024,
        upstream_addr = upstream.for_proxy,
    );
    let path = dir.join("proxy.toml");
    std::fs::write(&path, config).unwrap();
    let bin = proxy_bin();
    assert!(
        bin.exists(),
        "build the proxy first: cargo build --release ({})",
        bin.display()
    );
    let mut cmd = std::process::Command::new(bin);
    cmd.env_clear()
        .arg("--config")
        .arg(&path)
        .env(
            "RUST_LOG",
            std::env::var("BENCH_RUST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(std::process::Stdio::null());
    // Allocator and runtime tuning can be tried without a rebuild.
    for (k, v) in
        std::env::vars().filter(|(k, _)| k.starts_with("MIMALLOC_") || k == "TOKIO_WORKER_THREADS")
    {
        cmd.env(k, v);
    }
    let child = cmd.spawn().unwrap();
    wait_port(port);
    Proc(child)
}

/// One `kB` figure of `/proc/{pid}/status` (`VmRSS`, `VmHWM`).
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

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// A process's highest RSS while a phase runs (read every 250 ms), and its open file
/// descriptors counted once, at `fds_at` (when every stream should be open: listing 10,000
/// descriptors takes a few ms of CPU, so it is done once, in both phases alike).
struct Sampler {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<(u64, usize)>,
}

impl Sampler {
    fn start(pid: u32, fds_at: Duration) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let start = std::time::Instant::now();
            let (mut rss, mut fds) = (0, None);
            while !flag.load(Ordering::Relaxed) {
                rss = rss.max(status_kb(pid, "VmRSS"));
                if fds.is_none() && start.elapsed() >= fds_at {
                    fds = Some(open_fds(pid));
                }
                std::thread::sleep(Duration::from_millis(250));
            }
            (rss, fds.unwrap_or(0))
        });
        Sampler { stop, thread }
    }

    fn finish(self) -> (u64, usize) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

/// This process's (soft, hard) limit on open files.
fn file_limits() -> (u64, u64) {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap_or_default();
    let v: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    (
        v.first().copied().unwrap_or(0),
        v.get(1).copied().unwrap_or(0),
    )
}

/// Make sure every process of the run may open `needed` files: the soft limit is raised up to
/// the hard one (`prlimit`, as `ulimit -n` does in `scripts/bench`); the children inherit it.
fn ensure_file_limit(needed: u64, shape: &Shape) {
    let (soft, hard) = file_limits();
    if soft < needed && hard > soft {
        let _ = std::process::Command::new("prlimit")
            .arg(format!("--pid={}", std::process::id()))
            .arg(format!("--nofile={hard}:{hard}"))
            .status();
    }
    let (soft, hard) = file_limits();
    if soft < needed {
        let per_stream = if shape.h2 { 1 } else { 2 };
        eprintln!(
            "the open-file limit is {soft} (hard {hard}); {} streams need {needed} in the proxy \
             ({per_stream} per stream and some): raise the hard limit (ulimit -Hn, as root) or \
             run fewer (BENCH_STREAMS={})",
            shape.streams,
            (soft.saturating_sub(512) / per_stream).max(10)
        );
        std::process::exit(2);
    }
}

/// Grow this process's descriptor table for `n` descriptors before any phase starts: the
/// kernel doubles the table as descriptors are opened, and in a threaded process each doubling
/// stalls the opening thread for an RCU grace period (up to ~15 ms here). The proxy does the
/// same at start (`src/server.rs`); the load generators do it so that neither phase's time to
/// first event carries their first climb.
fn reserve_descriptors(n: u64) {
    let top = n.min(file_limits().0).saturating_sub(1);
    let Ok(top) = libc::c_int::try_from(top) else {
        return;
    };
    // SAFETY: a copy of stderr numbered `top` or above, closed at once.
    unsafe {
        let copy = libc::fcntl(2, libc::F_DUPFD_CLOEXEC, top);
        if copy >= 0 {
            libc::close(copy);
        }
    }
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

fn print_phase(name: &str, p: &Phase, n: usize) {
    let all = p.sorted(0..n);
    let late = p.sorted(n - n / 10..n);
    println!(
        "{name}: {} ok, {} failed, most open at once {} of {n}, all done after {:.1} s",
        p.ok(),
        p.failed,
        p.max_open,
        p.wall.as_secs_f64()
    );
    println!(
        "  time to first event: p50 {:.0} us, p99 {:.0} us, p99.9 {:.0} us, max {:.0} us; the last {} opened: p50 {:.0} us, p99 {:.0} us",
        pct(&all, 50.0),
        pct(&all, 99.0),
        pct(&all, 99.9),
        pct(&all, 100.0),
        n / 10,
        pct(&late, 50.0),
        pct(&late, 99.0),
    );
    let mut errors: Vec<_> = p.errors.iter().collect();
    errors.sort_by(|a, b| b.1.cmp(a.1));
    for (e, count) in errors.iter().take(5) {
        println!("  failed x{count}: {e}");
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    if std::env::args().nth(1).as_deref() == Some("--upstream") {
        upstream_main().await;
        return;
    }
    let shape = Shape::from_env();
    let n = shape.streams;
    // Per stream: one socket here (the client), one in the upstream process (the direct
    // phase), one in the proxy towards the client and, over HTTP/1.1, one towards the upstream.
    let per_stream = if shape.h2 { 1 } else { 2 };
    ensure_file_limit(per_stream * n as u64 + 512, &shape);
    reserve_descriptors(n as u64 + 512);
    let life = shape.gap * (shape.events as u32 - 1);
    println!(
        "machine: {} cores, {}; load average at start {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model(),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!(
        "streams: {n} SSE streams, each on its own client connection, {} events {} ms apart ({:.0} s; usageMetadata on every event), opened evenly over {:.0} s; proxy to upstream: {}; open-file limit {}",
        shape.events,
        shape.gap.as_millis(),
        life.as_secs_f64(),
        shape.ramp.as_secs_f64(),
        if shape.h2 {
            "TLS + HTTP/2, 100 streams per connection"
        } else {
            "plain HTTP/1.1, a connection per stream"
        },
        file_limits().0
    );
    if shape.ramp >= life {
        println!(
            "  note: the ramp is not shorter than a stream's life: not all streams can be open at once"
        );
    }

    let upstream = Upstream::start();
    let dir = std::env::temp_dir().join(format!("gqp-streams-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let port = free_port();
    let proxy = start_proxy(&dir, port, &upstream, n);
    let pid = proxy.0.id();
    let via_proxy: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();

    // Warm-up: a few short streams each way (first connections, lazy statics, the allocator's
    // first pages), then the proxy's idle RSS.
    let warm = Arc::new(Gauge::default());
    for addr in [upstream.direct, via_proxy] {
        let mut tasks = Vec::new();
        for _ in 0..50 {
            tasks.push(tokio::spawn(one_stream(
                addr,
                3,
                Some((3, 10)),
                warm.clone(),
            )));
        }
        for t in tasks {
            if let Err(e) = t.await.unwrap() {
                panic!("warm-up stream failed: {e}");
            }
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle_kb = status_kb(pid, "VmRSS");
    let idle_fds = open_fds(pid);

    // Straight to the upstream.
    let fds_at = shape.ramp + Duration::from_secs(1);
    upstream.stats(true).await;
    let sampler = Sampler::start(upstream.proc_.0.id(), fds_at);
    let direct = run_phase(upstream.direct, shape).await;
    let (_, upstream_fds) = sampler.finish();
    let (_, upstream_max_direct, conns_before) = upstream.stats(true).await;

    // Through the proxy.
    let sampler = Sampler::start(pid, fds_at);
    let (ticks0, t0) = (cpu_ticks(pid), Instant::now());
    let proxied = run_phase(via_proxy, shape).await;
    let (ticks1, wall) = (cpu_ticks(pid), t0.elapsed());
    let (peak_kb, peak_fds) = sampler.finish();
    let (_, upstream_max_proxy, conns_after) = upstream.stats(false).await;
    let hwm_kb = status_kb(pid, "VmHWM");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after_kb = status_kb(pid, "VmRSS");

    println!();
    print_phase("direct to the upstream", &direct, n);
    println!(
        "  the upstream had at most {upstream_max_direct} streams open at once, {upstream_fds} open file descriptors when all should be open"
    );
    print_phase("through the proxy", &proxied, n);
    println!(
        "  the upstream had at most {upstream_max_proxy} streams open at once, on {} new connections from the proxy; the proxy had {peak_fds} open file descriptors when all should be open ({idle_fds} idle)",
        conns_after - conns_before
    );
    // BENCH_SLOWEST: which streams waited longest for their first event (#opening order:us),
    // to tell a stall of the whole machine (a run of neighbours) from a cost of the proxy's.
    if std::env::var("BENCH_SLOWEST").is_ok() {
        for (name, ph) in [("direct", &direct), ("proxy", &proxied)] {
            let mut v: Vec<(usize, f64)> = ph
                .ttfe_us
                .iter()
                .enumerate()
                .filter_map(|(i, t)| Some((i, (*t)?)))
                .collect();
            v.sort_by(|a, b| b.1.total_cmp(&a.1));
            let top: Vec<String> = v[..40.min(v.len())]
                .iter()
                .map(|(i, t)| format!("#{i}:{t:.0}"))
                .collect();
            println!("slowest {name}: {}", top.join(" "));
        }
    }
    let (d, p) = (direct.sorted(0..n), proxied.sorted(0..n));
    let (dl, pl) = (direct.sorted(n - n / 10..n), proxied.sorted(n - n / 10..n));
    println!();
    println!(
        "added time to first event by the proxy: p50 {:+.0} us, p99 {:+.0} us (the last {} opened: p50 {:+.0} us, p99 {:+.0} us); target p99 < 5 ms",
        pct(&p, 50.0) - pct(&d, 50.0),
        pct(&p, 99.0) - pct(&d, 99.0),
        n / 10,
        pct(&pl, 50.0) - pct(&dl, 50.0),
        pct(&pl, 99.0) - pct(&dl, 99.0),
    );
    let peak = peak_kb.max(hwm_kb);
    println!(
        "proxy RSS: idle {:.1} MB, peak {:.1} MB (VmHWM {:.1} MB), 2 s after the streams {:.1} MB; per open stream {:.1} KB ((peak - idle) / {n}); target < 20 KB",
        idle_kb as f64 / 1024.0,
        peak_kb as f64 / 1024.0,
        hwm_kb as f64 / 1024.0,
        after_kb as f64 / 1024.0,
        peak.saturating_sub(idle_kb) as f64 / n as f64,
    );
    let cpu_s = (ticks1 - ticks0) as f64 / 100.0;
    println!(
        "proxy CPU: {cpu_s:.2} s over {:.1} s ({:.1} % of one core): {:.0} us per stream, {:.1} us per event",
        wall.as_secs_f64(),
        cpu_s / wall.as_secs_f64() * 100.0,
        cpu_s * 1e6 / proxied.ok().max(1) as f64,
        cpu_s * 1e6 / (proxied.ok() * shape.events).max(1) as f64,
    );
    let all_ok = direct.failed == 0
        && proxied.failed == 0
        && proxied.ok() == n
        && proxied.max_open == n
        && upstream_max_proxy == n;
    println!(
        "all {n} streams open at once and completed, both ways: {}",
        if all_ok { "yes" } else { "NO" }
    );
    drop(proxy);
    let _ = std::fs::remove_dir_all(&dir);
    if !all_ok {
        std::process::exit(1);
    }
}
