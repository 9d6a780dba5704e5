//! Shared test harness: the fake upstream, an in-process proxy on 127.0.0.1:0, and a private
//! `redis-server` on a free port.
#![allow(dead_code)]

pub mod binary;
pub mod cluster;
pub mod deploy_files;
pub mod fake_batches;
pub mod fake_upstream;
pub mod hooked_store;
pub mod live_upstream;
pub mod sdk;
pub mod sinks;
pub mod vertex_upstream;

use std::collections::HashMap;
use std::net::TcpListener as StdListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gemini_quota_proxy::quota::QuotaStore;
use gemini_quota_proxy::{AppState, Config, Gateway, Sources};
use serde_json::Value;
use tokio::sync::oneshot;

#[allow(unused_imports)]
pub use fake_upstream::{FakeUpstream, Scripted};

pub const CLIENT_KEY: &str = "client-key-0123456789";
pub const ADMIN_TOKEN: &str = "admin-token-9876543210";

/// A proxy running in this process.
pub struct Proxy {
    pub url: String,
    pub state: Arc<AppState>,
    stop: Option<oneshot::Sender<()>>,
    pub task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Stop accepting and drain (SIGTERM's path).
    pub fn shutdown(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Settings for a test proxy: pooled keys, env variables and an optional TOML file body.
pub struct ProxyOpts {
    pub env: HashMap<String, String>,
    pub toml: Option<String>,
    pub store: Option<Arc<dyn QuotaStore>>,
}

impl ProxyOpts {
    pub fn keys(keys: &[&str]) -> ProxyOpts {
        let mut env = HashMap::new();
        env.insert("GEMINI_API_KEYS".to_string(), keys.join(","));
        env.insert("PROXY_CLIENT_KEYS".to_string(), CLIENT_KEY.to_string());
        env.insert("PROXY_ADMIN_TOKEN".to_string(), ADMIN_TOKEN.to_string());
        // Most tests check what a refusal says at once; tests/it/queue.rs turns the queue on.
        env.insert("PROXY_QUEUE_MAX_WAIT_SECS".to_string(), "0".to_string());
        ProxyOpts {
            env,
            toml: None,
            store: None,
        }
    }

    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.insert(k.to_string(), v.to_string());
        self
    }

    pub fn toml(mut self, t: &str) -> Self {
        self.toml = Some(t.to_string());
        self
    }

    pub fn store(mut self, s: Arc<dyn QuotaStore>) -> Self {
        self.store = Some(s);
        self
    }

    pub fn config(&self, upstream: &str) -> Config {
        let mut env = self.env.clone();
        env.insert("GEMINI_UPSTREAM_URL".to_string(), upstream.to_string());
        env.insert("PROXY_LISTEN".to_string(), "127.0.0.1:0".to_string());
        let file = self.toml.as_ref().map(|t| {
            let path = std::env::temp_dir().join(format!(
                "gqp-test-{}-{}.toml",
                std::process::id(),
                fastrand::u64(..)
            ));
            std::fs::write(&path, t).unwrap();
            path.to_string_lossy().into_owned()
        });
        Config::load(&Sources { file, env }).expect("test config loads")
    }
}

pub async fn start_proxy(upstream: &str, opts: ProxyOpts) -> Proxy {
    let config = opts.config(upstream);
    let mut builder = Gateway::builder(config);
    if let Some(s) = opts.store.clone() {
        builder = builder.store(s);
    }
    if let Some(h) = gemini_quota_proxy::metrics::install_prometheus() {
        builder = builder.prometheus(h);
    }
    let gateway = builder.build().expect("gateway");
    let state = gateway.state().clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        gemini_quota_proxy::serve(listener, gateway, async {
            let _ = rx.await;
        })
        .await
        .unwrap();
    });
    Proxy {
        url,
        state,
        stop: Some(tx),
        task,
    }
}

pub fn http() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// POST a generateContent with a prompt of `text`.
pub async fn generate(proxy: &str, model: &str, text: &str) -> reqwest::Response {
    post_prompt(
        &format!("{proxy}/v1beta/models/{model}:generateContent"),
        text,
    )
    .await
}

/// POST a streamGenerateContent (`alt=sse`) to gemini-2.5-flash with a prompt of `text`.
pub async fn stream_sse(proxy: &str, text: &str) -> reqwest::Response {
    post_prompt(
        &format!("{proxy}/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"),
        text,
    )
    .await
}

async fn post_prompt(url: &str, text: &str) -> reqwest::Response {
    http()
        .post(url)
        .header("x-goog-api-key", CLIENT_KEY)
        .json(&serde_json::json!({"contents": [{"role": "user", "parts": [{"text": text}]}]}))
        .send()
        .await
        .unwrap()
}

/// GET `/api/ai/quota-status/` with `cred` as `x-goog-api-key`: (status code, JSON).
pub async fn quota_status(proxy: &str, cred: &str) -> (u16, Value) {
    let r = http()
        .get(format!("{proxy}/api/ai/quota-status/"))
        .header("x-goog-api-key", cred)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), json_of(r).await)
}

/// The proxy's Prometheus text.
pub async fn metrics_text(proxy: &str) -> String {
    http()
        .get(format!("{proxy}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

pub async fn json_of(resp: reqwest::Response) -> Value {
    let text = resp.text().await.unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// Wait until `f` holds, up to `within`.
pub async fn eventually(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + within;
    while Instant::now() < end {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    f()
}

/// A private `redis-server` on a free port, killed on drop.
pub struct RedisServer {
    pub port: u16,
    pub url: String,
    child: Child,
}

/// A port free right now and never handed out before in this process (tests run in parallel
/// threads; two Redis servers racing for one port would share state).
pub fn free_port() -> u16 {
    static USED: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let port = StdListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut used = USED.lock().unwrap();
        if !used.contains(&port) {
            used.push(port);
            return port;
        }
    }
}

/// `args` as a RESP command (an array of bulk strings).
fn resp_command(args: &[&str]) -> String {
    let mut cmd = format!("*{}\r\n", args.len());
    for a in args {
        cmd.push_str(&format!("${}\r\n{}\r\n", a.len(), a));
    }
    cmd
}

impl RedisServer {
    pub fn start() -> RedisServer {
        Self::start_with(&[])
    }

    /// A server with extra arguments; `{port}` in them becomes the server's port.
    pub fn start_with(extra: &[&str]) -> RedisServer {
        for _ in 0..5 {
            if let Some(server) = Self::start_at(free_port(), extra) {
                return server;
            }
        }
        panic!("redis-server did not start on a free port after 5 tries");
    }

    /// A server on `port` with extra arguments (`{port}` in them becomes the port), once it
    /// answers `PING`; `None` when it did not start there (the port was taken meanwhile).
    pub fn start_at(port: u16, extra: &[&str]) -> Option<RedisServer> {
        let bin = std::env::var("REDIS_SERVER_BIN").unwrap_or_else(|_| "redis-server".into());
        let extra: Vec<String> = extra
            .iter()
            .map(|a| a.replace("{port}", &port.to_string()))
            .collect();
        let child = Command::new(&bin)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .args(&extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("these tests need a Redis server: could not run `{bin}` ({e}). Install it (apt-get install redis-server) or set REDIS_SERVER_BIN")
            });
        let mut server = RedisServer {
            port,
            url: format!("redis://127.0.0.1:{port}"),
            child,
        };
        if server.wait_ready(Duration::from_secs(5)) {
            return Some(server);
        }
        let _ = server.child.kill();
        let _ = server.child.wait();
        None
    }

    fn wait_ready(&mut self, within: Duration) -> bool {
        let end = Instant::now() + within;
        while Instant::now() < end {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            if self.cli(&["PING"]).is_some_and(|o| o.trim() == "PONG") {
                // Make sure the server that answered is ours (it did not lose the port).
                std::thread::sleep(Duration::from_millis(30));
                return matches!(self.child.try_wait(), Ok(None));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Run a command through a plain TCP RESP exchange (no redis-cli needed).
    pub fn cli(&self, args: &[&str]) -> Option<String> {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        s.write_all(resp_command(args).as_bytes()).ok()?;
        let mut buf = vec![0u8; 1 << 20];
        let n = s.read(&mut buf).ok()?;
        let text = String::from_utf8_lossy(&buf[..n]).to_string();
        Some(text.trim_start_matches(['+', ':']).to_string())
    }

    /// `DEBUG SLEEP secs` sent from a thread of its own: the whole server blocks that long
    /// (started with `--enable-debug-command local`: Redis 7 refuses `DEBUG` otherwise). The
    /// thread ends with the server's answer as it came (`+OK` once it woke).
    pub fn sleep_in_background(&self, secs: &str) -> std::thread::JoinHandle<String> {
        use std::io::{Read, Write};
        let (port, cmd) = (self.port, resp_command(&["DEBUG", "SLEEP", secs]));
        std::thread::spawn(move || {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
            s.write_all(cmd.as_bytes()).unwrap();
            let mut buf = [0u8; 64];
            let n = s.read(&mut buf).unwrap_or(0);
            String::from_utf8_lossy(&buf[..n]).into_owned()
        })
    }

    /// Every key in this Redis, with its value dumped as text (for secret scans).
    pub fn all_keys(&self) -> String {
        self.cli(&["KEYS", "*"]).unwrap_or_default()
    }

    /// Start again on the same port (after `stop`), with empty data.
    pub fn restart(&mut self) {
        let bin = std::env::var("REDIS_SERVER_BIN").unwrap_or_else(|_| "redis-server".into());
        self.child = Command::new(&bin)
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server restarts");
        assert!(
            self.wait_ready(Duration::from_secs(5)),
            "redis-server did not come back on port {}",
            self.port
        );
    }

    /// Its process id (to signal it).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}
