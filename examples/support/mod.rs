//! What the benchmark programs share: free ports, waiting for a listener, child processes that
//! end with their handle, a private redis-server or Redis Cluster, and running wrk.

use std::net::TcpListener as StdListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn wait_port(port: u16) {
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("nothing listens on {port}");
}

/// A child process, stopped when this is dropped: asked with SIGTERM first (a proxy ends as it
/// would in production, so a profiling build writes its profile at exit), killed if it is still
/// there 5 s later.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.0.id()) {
            // SAFETY: kill(2) on our own child's pid, which is not reaped before the wait below.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            for _ in 0..100 {
                if matches!(self.0.try_wait(), Ok(Some(_))) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A redis-server of our own on a free port, without persistence.
pub fn start_redis() -> (u16, Proc) {
    let port = free_port();
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server (apt-get install redis-server)");
    wait_port(port);
    (port, Proc(child))
}

/// A Redis Cluster's nodes, killed (and their directory removed) when this is dropped.
pub struct ClusterNodes {
    procs: Vec<Proc>,
    dir: std::path::PathBuf,
}

impl Drop for ClusterNodes {
    fn drop(&mut self) {
        self.procs.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A Redis Cluster of our own: `masters` nodes without replicas on free ports (their cluster bus
/// ports, +10000, free too), joined by `redis-cli --cluster create`; the ports and the nodes.
pub fn start_redis_cluster(masters: usize) -> (Vec<u16>, ClusterNodes) {
    let dir = std::env::temp_dir().join(format!("gqp-bench-cluster-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut ports = Vec::new();
    let mut procs = Vec::new();
    while ports.len() < masters {
        let port = free_port();
        if port >= 55_536 || StdListener::bind(("127.0.0.1", port + 10_000)).is_err() {
            continue;
        }
        let conf = dir.join(format!("nodes-{port}.conf"));
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(["--cluster-enabled", "yes", "--cluster-config-file"])
            .arg(&conf)
            .arg("--dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server (apt-get install redis-server)");
        wait_port(port);
        ports.push(port);
        procs.push(Proc(child));
    }
    let out = Command::new("redis-cli")
        .args(["--cluster", "create"])
        .args(ports.iter().map(|p| format!("127.0.0.1:{p}")))
        .args(["--cluster-replicas", "0", "--cluster-yes"])
        .stdin(Stdio::null())
        .output()
        .expect("redis-cli");
    assert!(out.status.success(), "redis-cli --cluster create failed");
    for _ in 0..400 {
        let ok = ports.iter().all(|p| {
            Command::new("redis-cli")
                .args(["-p", &p.to_string(), "CLUSTER", "INFO"])
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("cluster_state:ok"))
        });
        if ok {
            return (ports, ClusterNodes { procs, dir });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("the cluster did not become ready");
}

/// Run wrk (one thread) against `127.0.0.1:{port}{path}` with the Lua `script`, whose `done`
/// prints one line `RESULT n n n ...`: those numbers.
pub fn wrk_result(
    port: u16,
    conns: u32,
    secs: u32,
    script: &std::path::Path,
    path: &str,
) -> Vec<f64> {
    let out = Command::new("wrk")
        .args([
            "-t1",
            &format!("-c{conns}"),
            &format!("-d{secs}s"),
            "--timeout",
            "5s",
            "-s",
            script.to_str().unwrap(),
            &format!("http://127.0.0.1:{port}{path}"),
        ])
        .output()
        .expect("wrk (apt-get install wrk)");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with("RESULT "))
        .unwrap_or_else(|| panic!("wrk printed no RESULT:\n{text}"));
    line[7..]
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0.0))
        .collect()
}

/// The proxy binary the benchmarks run: `BENCH_PROXY_BIN` when set (another commit's build, a
/// profiling or profile-guided build), else this build's release binary (the calling script
/// builds it).
pub fn proxy_bin() -> std::path::PathBuf {
    std::env::var_os("BENCH_PROXY_BIN").map_or_else(
        || {
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("target/release/gemini-quota-proxy")
        },
        std::path::PathBuf::from,
    )
}

/// The proxy binary `bin` on a free port in front of `upstream_url`: two pooled keys,
/// `client_key`, limits far above any load, `RUST_LOG=warn`; `extra` variables on top. Returns
/// once it listens.
pub fn start_proxy_with(
    bin: &std::path::Path,
    upstream_url: &str,
    client_key: &str,
    extra: &[(&str, String)],
) -> (u16, Proc) {
    assert!(
        bin.exists(),
        "build the proxy first: cargo build --release ({})",
        bin.display()
    );
    let port = free_port();
    let mut cmd = Command::new(bin);
    cmd.env_clear()
        .env(
            "GEMINI_API_KEYS",
            "AIzaBenchKey0000000001,AIzaBenchKey0000000002",
        )
        .env("PROXY_CLIENT_KEYS", client_key)
        .env("GEMINI_UPSTREAM_URL", upstream_url)
        .env("PROXY_LISTEN", format!("127.0.0.1:{port}"))
        .env("GEMINI_MINUTE_LIMIT", "100000000")
        .env("GEMINI_DAILY_LIMIT", "1000000000")
        .env("GEMINI_TOKEN_MINUTE_LIMIT", "100000000000")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (k, v) in extra {
        cmd.env(k, v);
    }
    let child = cmd.spawn().unwrap();
    wait_port(port);
    (port, Proc(child))
}

/// An HTTP server (HTTP/1.1 and h2c) on a free port, on a runtime of its own thread, answering
/// every request with `handler`.
pub fn serve_http<B, F, Fut>(handler: F) -> u16
where
    F: Fn(hyper::Request<hyper::body::Incoming>) -> Fut + Copy + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<hyper::Response<B>, std::convert::Infallible>>
        + Send
        + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let listener = StdListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                tokio::spawn(async move {
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(io, hyper::service::service_fn(handler))
                    .await;
                });
            }
        });
    });
    port
}

/// A wrk script posting `body` with `client_key`, whose `done` prints
/// `RESULT requests req/s p50 p99 p99.9 errors` (latencies in µs) for [`wrk_result`].
pub fn wrk_script(dir: &std::path::Path, body: &str, client_key: &str) -> std::path::PathBuf {
    let path = dir.join("post.lua");
    let script = format!(
        r#"wrk.method = "POST"
wrk.body = '{body}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["x-goog-api-key"] = "{client_key}"
done = function(summary, latency, requests)
  local errors = summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.status + summary.errors.timeout
  io.write(string.format("RESULT %d %.1f %.1f %.1f %.1f %d\n", summary.requests, summary.requests / (summary.duration / 1e6),
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9), errors))
end
"#
    );
    std::fs::write(&path, script).unwrap();
    path
}
