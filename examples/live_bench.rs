//! Live API sessions through the proxy. A fake Live upstream (in this process: `setup` ->
//! `setupComplete`, then every binary frame echoed) and BENCH_LIVE_SESSIONS (1,000) clients, each
//! sending a BENCH_LIVE_FRAME_BYTES (16 KB) binary frame BENCH_LIVE_FPS (25) times a second for
//! BENCH_LIVE_SECS (10) and timing each frame's echo: first straight to the upstream, then through
//! the proxy (its release binary in its own process, memory store, limits above the load). Prints,
//! in one run: frames echoed both ways, the echo time p50/p99 both ways and what the proxy adds,
//! the proxy's CPU time per relayed frame (a frame each way per echo), and its RSS idle, with
//! every session open, and per session.
//!
//! Run with `BENCH_ONLY=live scripts/bench` (builds in release mode), or build the proxy
//! (`cargo build --release --bin gemini-quota-proxy`) and `cargo run --release --example
//! live_bench`.

#[allow(dead_code)] // wrk, redis, HTTP servers: not needed here
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use support::{Proc, free_port, proxy_bin, wait_port};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

const CLIENT_KEY: &str = "bench-live-client-key";
const PATH: &str = "/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent";
const SETUP: &str = r#"{"setup":{"model":"models/gemini-live-bench"}}"#;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The fake upstream: setup, `setupComplete`, then binary frames echoed as they come.
async fn upstream() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let _ = tcp.set_nodelay(true);
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                    return;
                };
                if !matches!(ws.next().await, Some(Ok(_))) {
                    return;
                }
                let done = Message::Text(r#"{"setupComplete":{}}"#.into());
                if ws.send(done).await.is_err() {
                    return;
                }
                while let Some(Ok(m)) = ws.next().await {
                    if m.is_binary() && ws.send(m).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

/// The proxy's release binary in front of the fake upstream, sized for `sessions`.
fn start_proxy(upstream: u16, sessions: usize) -> (u16, Proc) {
    let port = free_port();
    let dir = std::env::temp_dir().join(format!("gqp-live-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = format!(
        r#"[server]
listen = "127.0.0.1:{port}"
max_connections = {conns}

[upstream]
url = "http://127.0.0.1:{upstream}"

[auth]
client_keys = ["{CLIENT_KEY}"]

[limits]
live_sessions = {sessions}

[live]
max_sessions = {sessions}

[[keys]]
key = "AIzaLiveBenchKey00000001"
project = "bench-a"
[[keys]]
key = "AIzaLiveBenchKey00000002"
project = "bench-b"
"#,
        conns = sessions + 1024,
    );
    let path = dir.join("proxy.toml");
    std::fs::write(&path, config).unwrap();
    let bin = proxy_bin();
    assert!(
        bin.exists(),
        "build the proxy first: cargo build --release ({})",
        bin.display()
    );
    let child = std::process::Command::new(bin)
        .env_clear()
        .arg("--config")
        .arg(&path)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_port(port);
    (port, Proc(child))
}

/// One `kB` figure of `/proc/{pid}/status` (`VmRSS`).
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

struct Shape {
    sessions: usize,
    secs: u64,
    frame: usize,
    fps: u64,
}

/// A session's echo times (µs) and frames lost (sent, never echoed).
struct Run {
    rtts: Vec<u32>,
    lost: usize,
}

/// One client: open, set up, wait for `go`, then send a frame every 1/fps s for `secs`, each
/// stamped with its send time, and time the echoes.
async fn client(
    url: String,
    shape: Arc<Shape>,
    ready: Arc<AtomicUsize>,
    go: tokio::sync::watch::Receiver<Option<Instant>>,
) -> Option<Run> {
    let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.ok()?;
    ws.send(Message::Text(SETUP.into())).await.ok()?;
    loop {
        match ws.next().await? {
            Ok(Message::Text(_)) => break,
            Ok(Message::Close(f)) => {
                eprintln!("session refused: {f:?}");
                return None;
            }
            Ok(_) => continue,
            Err(_) => return None,
        }
    }
    ready.fetch_add(1, Ordering::Relaxed);
    let mut go = go;
    let start = *go.wait_for(|g| g.is_some()).await.ok()?;
    let epoch = start.unwrap_or_else(Instant::now);
    // Spread the sessions' sends over the frame period, as independent callers would be.
    tokio::time::sleep(Duration::from_micros(fastrand::u64(
        ..1_000_000 / shape.fps,
    )))
    .await;
    let (mut tx, mut rx) = ws.split();
    let frames = (shape.secs * shape.fps) as usize;
    let size = shape.frame;
    let fps = shape.fps;
    let sender = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / fps));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut buf = vec![0x5au8; size];
        for _ in 0..frames {
            tick.tick().await;
            let at = epoch.elapsed().as_micros() as u64;
            buf[..8].copy_from_slice(&at.to_le_bytes());
            if tx.send(Message::Binary(buf.clone().into())).await.is_err() {
                break;
            }
        }
        tx
    });
    let mut rtts = Vec::with_capacity(frames);
    let deadline =
        tokio::time::Instant::now() + Duration::from_secs(shape.secs) + Duration::from_secs(5);
    while rtts.len() < frames {
        let Ok(Some(Ok(m))) = tokio::time::timeout_at(deadline, rx.next()).await else {
            break;
        };
        if let Message::Binary(b) = m
            && b.len() >= 8
        {
            let sent = u64::from_le_bytes(b[..8].try_into().ok()?);
            let now = epoch.elapsed().as_micros() as u64;
            rtts.push(now.saturating_sub(sent) as u32);
        }
    }
    if let Ok(tx) = sender.await
        && let Ok(mut ws) = tx.reunite(rx)
    {
        let _ = ws.close(None).await;
    }
    Some(Run {
        lost: frames - rtts.len(),
        rtts,
    })
}

struct Phase {
    ok: usize,
    failed: usize,
    frames: usize,
    lost: usize,
    p50_us: f64,
    p99_us: f64,
    /// Proxy RSS once every session is open, before traffic (kB), and CPU ticks of the traffic.
    rss_open_kb: u64,
    cpu_ticks: u64,
}

fn pct(sorted: &[u32], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize] as f64
}

async fn run_phase(url: &str, shape: &Arc<Shape>, proxy_pid: Option<u32>) -> Phase {
    let ready = Arc::new(AtomicUsize::new(0));
    let (go_tx, go_rx) = tokio::sync::watch::channel(None);
    let mut tasks = Vec::with_capacity(shape.sessions);
    for i in 0..shape.sessions {
        tasks.push(tokio::spawn(client(
            url.to_string(),
            shape.clone(),
            ready.clone(),
            go_rx.clone(),
        )));
        // Open sessions at about 1,000 a second, as a ramp.
        if i % 50 == 49 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let wait_until = Instant::now() + Duration::from_secs(30);
    while ready.load(Ordering::Relaxed) < shape.sessions && Instant::now() < wait_until {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Settled: what the open sessions hold.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_open_kb = proxy_pid.map_or(0, rss_kb);
    let ticks0 = proxy_pid.map_or(0, cpu_ticks);
    let _ = go_tx.send(Some(Instant::now()));
    let mut all = Vec::new();
    let (mut ok, mut failed, mut lost) = (0, 0, 0);
    for t in tasks {
        match t.await.ok().flatten() {
            Some(run) => {
                ok += 1;
                lost += run.lost;
                all.extend(run.rtts);
            }
            None => failed += 1,
        }
    }
    let cpu = proxy_pid.map_or(0, cpu_ticks).saturating_sub(ticks0);
    all.sort_unstable();
    Phase {
        ok,
        failed,
        frames: all.len(),
        lost,
        p50_us: pct(&all, 0.5),
        p99_us: pct(&all, 0.99),
        rss_open_kb,
        cpu_ticks: cpu,
    }
}

fn print_phase(name: &str, p: &Phase) {
    println!(
        "{name:>7}: sessions ok {} failed {} | frames echoed {} lost {} | echo p50 {:.0} µs p99 {:.0} µs",
        p.ok, p.failed, p.frames, p.lost, p.p50_us, p.p99_us
    );
}

#[tokio::main]
async fn main() {
    let shape = Arc::new(Shape {
        sessions: env_or("BENCH_LIVE_SESSIONS", 1000),
        secs: env_or("BENCH_LIVE_SECS", 10),
        frame: env_or::<usize>("BENCH_LIVE_FRAME_BYTES", 16 * 1024).max(8),
        fps: env_or::<u64>("BENCH_LIVE_FPS", 25).max(1),
    });
    let up = upstream().await;
    let (proxy_port, proxy) = start_proxy(up, shape.sessions);
    let pid = proxy.0.id();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let idle_kb = rss_kb(pid);
    println!(
        "live_bench: {} sessions x {} B binary frames x {}/s for {} s; CPUs: {}",
        shape.sessions,
        shape.frame,
        shape.fps,
        shape.secs,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let direct = run_phase(&format!("ws://127.0.0.1:{up}{PATH}"), &shape, None).await;
    print_phase("direct", &direct);
    let url = format!("ws://127.0.0.1:{proxy_port}{PATH}?key={CLIENT_KEY}");
    let proxied = run_phase(&url, &shape, Some(pid)).await;
    print_phase("proxy", &proxied);
    println!(
        "  added: p50 {:.0} µs, p99 {:.0} µs per frame (echo time through the proxy less direct)",
        proxied.p50_us - direct.p50_us,
        proxied.p99_us - direct.p99_us
    );
    // Each echo is two relayed frames (client -> Google, Google -> client).
    let relayed = (proxied.frames * 2).max(1);
    println!(
        "  proxy CPU: {:.2} s for {} relayed frames = {:.1} µs per frame ({:.0} MB/s relayed)",
        proxied.cpu_ticks as f64 / 100.0,
        relayed,
        proxied.cpu_ticks as f64 * 10_000.0 / relayed as f64,
        (relayed * shape.frame) as f64 / shape.secs as f64 / 1e6
    );
    let per = (proxied.rss_open_kb.saturating_sub(idle_kb)) as f64 / proxied.ok.max(1) as f64;
    println!(
        "  proxy RSS: idle {idle_kb} kB, {} sessions open {} kB: {per:.1} kB per session",
        proxied.ok, proxied.rss_open_kb
    );
    drop(proxy);
}
