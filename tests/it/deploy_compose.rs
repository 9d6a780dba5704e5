//! `docker-compose.yml` and `deploy/compose/nginx.conf`, without Docker: the compose file has two
//! proxy replicas, one Redis, and one published port on an nginx balancer whose upstream names
//! exactly those replicas; its variables are ones the proxy documents. Then the real thing minus
//! containers: a real nginx runs the committed config (host names swapped for loopback ports) in
//! front of two proxy binaries started with the compose environment and sharing one Redis.
//! Through it: the dashboard loads, an SSE stream arrives event by event (its first event before
//! the upstream wrote the rest; `proxy_buffering off` itself is pinned by the static check), a
//! body above nginx's 1 MB default reaches the proxy, the two replicas share their counters, and
//! a client key sent as `?key=` stays out of the access log.

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::binary::Binary;
use common::deploy_files::*;
use common::{CLIENT_KEY, FakeUpstream, RedisServer, eventually, http};
use gemini_quota_proxy::{Config, Sources};
use serde_json::Value;

const MODEL: &str = "gemini-2.5-flash";

fn compose() -> Value {
    let docs = yaml_documents(&repo_path("docker-compose.yml"));
    assert_eq!(docs.len(), 1);
    docs[0].clone()
}

fn services(c: &Value) -> &serde_json::Map<String, Value> {
    c["services"].as_object().expect("services")
}

/// The services built from this repository (the proxy replicas), by name.
fn proxy_services(c: &Value) -> BTreeMap<String, Value> {
    services(c)
        .iter()
        .filter(|(_, s)| s["build"] == "." || s["build"]["context"] == ".")
        .map(|(n, s)| (n.clone(), s.clone()))
        .collect()
}

fn service_by_image(c: &Value, prefix: &str) -> (String, Value) {
    let found: Vec<(&String, &Value)> = services(c)
        .iter()
        .filter(|(_, s)| s["image"].as_str().is_some_and(|i| i.starts_with(prefix)))
        .collect();
    assert_eq!(found.len(), 1, "expected one {prefix}* service: {found:?}");
    (found[0].0.clone(), found[0].1.clone())
}

/// A service's `environment` (map or `NAME=value` list) as written, before interpolation.
fn environment(service: &Value) -> BTreeMap<String, String> {
    match &service["environment"] {
        Value::Object(m) => m
            .iter()
            .map(|(k, v)| {
                let v = match v {
                    Value::String(s) => s.clone(),
                    Value::Null => String::new(),
                    other => other.to_string(),
                };
                (k.clone(), v)
            })
            .collect(),
        Value::Array(a) => a
            .iter()
            .map(|e| {
                let (k, v) = e.as_str().unwrap().split_once('=').unwrap();
                (k.to_string(), v.to_string())
            })
            .collect(),
        other => panic!("unexpected environment {other}"),
    }
}

/// Compose's `${NAME}`, `${NAME:-default}`, `${NAME-default}` and `${NAME:?error}` with `vars`
/// as the shell's environment.
fn interpolate(value: &str, vars: &BTreeMap<&str, &str>) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(i) = rest.find("${") {
        out.push_str(&rest[..i]);
        let end = rest[i..].find('}').expect("closing brace") + i;
        let expr = &rest[i + 2..end];
        let name_end = expr
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(expr.len());
        let (name, op) = expr.split_at(name_end);
        let set = vars.get(name).copied();
        let v = if let Some(default) = op.strip_prefix(":-") {
            set.filter(|s| !s.is_empty()).unwrap_or(default).to_string()
        } else if let Some(default) = op.strip_prefix('-') {
            set.unwrap_or(default).to_string()
        } else if let Some(msg) = op.strip_prefix(":?") {
            set.filter(|s| !s.is_empty())
                .unwrap_or_else(|| panic!("compose would stop: {name}: {msg}"))
                .to_string()
        } else {
            assert!(op.is_empty(), "unsupported interpolation ${{{expr}}}");
            set.unwrap_or("").to_string()
        };
        out.push_str(&v);
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

/// The embedded defaults the nginx limits are compared with.
fn default_config() -> Config {
    Config::load(&Sources {
        file: None,
        env: [("GEMINI_API_KEY", "k"), ("PROXY_CLIENT_KEYS", "c")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    })
    .unwrap()
}

fn nginx_conf() -> String {
    std::fs::read_to_string(repo_path("deploy/compose/nginx.conf")).unwrap()
}

/// The port a proxy service listens on (its PROXY_LISTEN).
fn listen_port(service: &Value) -> u16 {
    let env = environment(service);
    let listen = env.get("PROXY_LISTEN").expect("PROXY_LISTEN is set");
    assert!(
        listen.starts_with("0.0.0.0:"),
        "{listen}: other containers cannot reach a loopback listener"
    );
    listen.rsplit(':').next().unwrap().parse().unwrap()
}

#[test]
fn two_proxy_replicas_share_one_redis_behind_one_published_port() {
    let c = compose();
    let proxies = proxy_services(&c);
    assert_eq!(proxies.len(), 2, "two proxy replicas: {:?}", proxies.keys());
    let (redis_name, redis) = service_by_image(&c, "redis:");
    let (balancer_name, balancer) = service_by_image(&c, "nginx:");
    assert!(redis["healthcheck"].is_object());
    let known = documented_env_vars();
    let grace = default_config().server.shutdown_grace.as_secs_f64();
    for (name, p) in &proxies {
        let env = environment(p);
        for var in env.keys() {
            assert!(
                known.contains(var) || var == "RUST_LOG",
                "{name}: {var} is not a variable docs/configuration.md documents"
            );
        }
        assert_eq!(
            env["REDIS_URL"],
            format!("redis://{redis_name}:6379"),
            "{name}"
        );
        assert_eq!(
            p["depends_on"][&redis_name]["condition"], "service_healthy",
            "{name} starts once Redis answers"
        );
        listen_port(p);
        let stop: f64 = p["stop_grace_period"]
            .as_str()
            .and_then(|s| s.strip_suffix('s'))
            .expect("stop_grace_period in seconds")
            .parse()
            .unwrap();
        assert!(
            stop > grace,
            "{name}: stop_grace_period {stop} s ≤ drain {grace} s"
        );
    }
    // Only the balancer publishes a port; it depends on both replicas.
    for (name, s) in services(&c) {
        if *name != balancer_name {
            assert!(s.get("ports").is_none(), "{name} publishes a port");
        }
    }
    let ports = balancer["ports"].as_array().expect("the balancer's ports");
    assert_eq!(ports.len(), 1, "one published port: {ports:?}");
    let container_port: u16 = ports[0]
        .as_str()
        .expect("\"HOST:CONTAINER\"")
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let depends: BTreeSet<String> = match &balancer["depends_on"] {
        Value::Array(a) => a.iter().map(|d| d.as_str().unwrap().to_string()).collect(),
        Value::Object(m) => m.keys().cloned().collect(),
        other => panic!("depends_on {other}"),
    };
    assert_eq!(depends, proxies.keys().cloned().collect::<BTreeSet<_>>());
    // The committed nginx.conf is what the balancer runs, as its server config.
    let volumes: Vec<&str> = balancer["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        volumes.contains(&"./deploy/compose/nginx.conf:/etc/nginx/conf.d/default.conf:ro"),
        "{volumes:?}"
    );

    // nginx: listens on the published port, and its upstream is exactly the replicas.
    let d = nginx_directives(&nginx_conf());
    let listen: Vec<&[String]> = nginx_args(&d, "listen");
    assert_eq!(listen, vec![[container_port.to_string()].as_slice()]);
    let servers: BTreeSet<String> = nginx_args(&d, "server")
        .iter()
        .filter(|a| !a.is_empty())
        .map(|a| a[0].clone())
        .collect();
    let expected: BTreeSet<String> = proxies
        .iter()
        .map(|(n, p)| format!("{n}:{}", listen_port(p)))
        .collect();
    assert_eq!(servers, expected);
}

#[test]
fn nginx_streams_unbuffered_and_lets_the_proxys_body_limit_decide() {
    let d = nginx_directives(&nginx_conf());
    let one = |name: &str| -> Vec<String> {
        let all = nginx_args(&d, name);
        assert_eq!(all.len(), 1, "{name}: {all:?}");
        all[0].to_vec()
    };
    assert_eq!(one("proxy_buffering"), ["off"]);
    assert_eq!(one("proxy_http_version"), ["1.1"]);
    assert!(
        nginx_args(&d, "proxy_set_header")
            .contains(&["Connection".to_string(), String::new()].as_slice()),
        "keepalive to the upstream needs an empty Connection header"
    );
    assert!(!nginx_args(&d, "keepalive").is_empty());
    let cfg = default_config();
    let body = nginx_size(&one("client_max_body_size")[0]);
    assert!(
        body >= cfg.server.max_body_bytes as u64,
        "client_max_body_size {body} < server.max_body_bytes {}",
        cfg.server.max_body_bytes
    );
    let read = nginx_secs(&one("proxy_read_timeout")[0]);
    let longest = (cfg.upstream.request_timeout + cfg.queue.max_wait)
        .max(cfg.upstream.stream_idle_timeout)
        .as_secs_f64();
    assert!(read >= longest, "proxy_read_timeout {read} s < {longest} s");
    // The access log never carries a query string (a client key may be `?key=`).
    let formats = nginx_args(&d, "log_format");
    for log in nginx_args(&d, "access_log") {
        let format = log
            .get(1)
            .expect("access_log names its format (not combined)");
        let f = formats
            .iter()
            .find(|f| f[0] == *format)
            .expect("the format is defined here");
        let text = f[1..].join("");
        for leaky in [
            "$request ",
            "$request\"",
            "$request_uri",
            "$args",
            "$query_string",
            "$arg_",
        ] {
            assert!(!text.contains(leaky), "log_format {format} logs {leaky}");
        }
    }
}

/// nginx running `deploy/compose/nginx.conf` under a test prefix, killed on drop.
struct Nginx {
    url: String,
    dir: PathBuf,
    child: Child,
}

impl Nginx {
    /// The committed server config with each `proxy-N:PORT` swapped for a replica's loopback
    /// address, wrapped in the minimal main config the nginx image supplies around it.
    fn start(replicas: &BTreeMap<String, (u16, String)>) -> Nginx {
        let dir = std::env::temp_dir().join(format!("gqp-compose-nginx-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut conf = nginx_conf();
        let swap = |conf: &mut String, from: &str, to: &str| {
            assert!(conf.contains(from), "nginx.conf has no {from}");
            *conf = conf.replace(from, to);
        };
        for (name, (listen, addr)) in replicas {
            swap(
                &mut conf,
                &format!("server {name}:{listen} "),
                &format!("server {addr} "),
            );
        }
        let d = nginx_directives(&conf);
        let listen = nginx_args(&d, "listen")[0][0].clone();
        swap(
            &mut conf,
            &format!("listen {listen};"),
            &format!("listen 127.0.0.1:{port};"),
        );
        let access = dir.join("access.log");
        swap(
            &mut conf,
            "/var/log/nginx/access.log",
            &access.to_string_lossy(),
        );
        std::fs::write(dir.join("default.conf"), conf).unwrap();
        let d = dir.to_string_lossy();
        let main = format!(
            "daemon off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log info;\n\
             events {{ worker_connections 256; }}\n\
             http {{\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  \
             fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  \
             scgi_temp_path {d}/scgi;\n  include {d}/default.conf;\n}}\n"
        );
        std::fs::write(dir.join("nginx.conf"), main).unwrap();
        let nginx = std::env::var("NGINX_BIN").unwrap_or_else(|_| "nginx".into());
        let command = || {
            let mut cmd = Command::new(&nginx);
            cmd.arg("-p")
                .arg(&dir)
                .arg("-e")
                .arg(dir.join("error.log"))
                .arg("-c")
                .arg(dir.join("nginx.conf"));
            cmd
        };
        let check = command().arg("-t").output().unwrap_or_else(|e| {
            panic!(
                "this test needs nginx: could not run `{nginx}` ({e}); \
                 scripts/test installs nginx-light"
            )
        });
        assert!(
            check.status.success(),
            "nginx -t refuses the config: {}",
            String::from_utf8_lossy(&check.stderr)
        );
        let child = command()
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx starts");
        Nginx {
            url: format!("http://127.0.0.1:{port}"),
            dir,
            child,
        }
    }

    fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("access.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn generate_body(text: &str) -> Value {
    serde_json::json!({"contents": [{"role": "user", "parts": [{"text": text}]}]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_nginx_two_replicas_stream_share_counters_and_keep_keys_out_of_the_log() {
    let c = compose();
    let redis = RedisServer::start();
    let fake = FakeUpstream::start().await;
    // What `docker compose up` would be given by the shell.
    let shell: BTreeMap<&str, &str> = [
        ("GEMINI_API_KEYS", "AIzaComposeKey00000000001"),
        ("PROXY_CLIENT_KEYS", CLIENT_KEY),
        ("PROXY_ADMIN_TOKEN", common::ADMIN_TOKEN),
    ]
    .into_iter()
    .collect();
    let mut replicas = BTreeMap::new();
    let mut binaries = Vec::new();
    for (name, service) in proxy_services(&c) {
        let mut env: BTreeMap<String, String> = environment(&service)
            .into_iter()
            .map(|(k, v)| (k, interpolate(&v, &shell)))
            .collect();
        // Loopback in place of the compose network; the fake Gemini; a limit small enough to
        // reach, answered at once instead of queued.
        env.insert("REDIS_URL".into(), redis.url.clone());
        env.insert("PROXY_LISTEN".into(), "127.0.0.1:0".into());
        env.insert("GEMINI_UPSTREAM_URL".into(), fake.url.clone());
        env.insert("GEMINI_MINUTE_LIMIT".into(), "3".into());
        env.insert("PROXY_QUEUE_MAX_WAIT_SECS".into(), "0".into());
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let bin = Binary::start(&env, &[]);
        let addr = bin.url.trim_start_matches("http://").to_string();
        replicas.insert(name.clone(), (listen_port(&service), addr));
        binaries.push((name, bin));
    }
    let nginx = Nginx::start(&replicas);
    let base = nginx.url.clone();
    let up = eventually(Duration::from_secs(10), || {
        std::net::TcpStream::connect(base.trim_start_matches("http://")).is_ok()
    })
    .await;
    assert!(up, "nginx did not listen");

    // The dashboard, through the published port.
    let page = http()
        .get(format!("{base}/dashboard/"))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("<html"));

    // SSE: the first event reaches the client while the upstream is still writing the rest.
    // (nginx 1.22 passes events on at once even with proxy_buffering on while the client keeps
    // up; `off` also stops it reading ahead of a slow client into temp files, so it is pinned
    // by the static test above.)
    const EVENTS: usize = 6;
    fake.behave(|b| {
        b.stream_events = EVENTS;
        b.stream_delay = Duration::from_millis(400);
    });
    let mut stream = http()
        .post(format!(
            "{base}/v1beta/models/{MODEL}:streamGenerateContent?alt=sse"
        ))
        .header("x-goog-api-key", CLIENT_KEY)
        .json(&generate_body("stream through nginx"))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    let mut received = String::new();
    let mut sent_at_first_event = None;
    while let Some(chunk) = stream.chunk().await.unwrap() {
        received.push_str(&String::from_utf8_lossy(&chunk));
        if sent_at_first_event.is_none() && received.contains("data: ") {
            sent_at_first_event = Some(fake.state.events_sent.load(Ordering::SeqCst));
        }
    }
    let sent = sent_at_first_event.expect("an SSE event arrived");
    assert!(
        sent < EVENTS,
        "the first event arrived only after the upstream wrote all {EVENTS}: nginx buffered it"
    );
    assert_eq!(received.matches("data: ").count(), EVENTS);

    // Shared counters: the limit is 3 per minute for the one project, whichever replica
    // answers. The stream spent one; two more pass, the next is refused.
    let mut statuses = Vec::new();
    for i in 0..3 {
        let resp = http()
            .post(format!("{base}/v1beta/models/{MODEL}:generateContent"))
            .header("x-goog-api-key", CLIENT_KEY)
            .json(&generate_body(&format!("request {i}")))
            .send()
            .await
            .unwrap();
        statuses.push(resp.status().as_u16());
        if resp.status() == 429 {
            let body: Value = resp.json().await.unwrap();
            assert_eq!(body["error"]["status"], "RESOURCE_EXHAUSTED", "{body}");
        }
    }
    assert_eq!(statuses, [200, 200, 429]);
    // Round robin gave both replicas Gemini requests: neither alone saw three admissions, so
    // the 429 came from the counters they share in Redis.
    for (name, bin) in &binaries {
        let served = |l: &str| l.contains("Content") && l.contains("status=");
        // A request's log line is written as it ends, by the logger's own thread: on a busy
        // machine the last one may reach the pipe a little after the answer.
        eventually(Duration::from_secs(5), || bin.logs().lines().any(served)).await;
        let logs = bin.logs();
        assert!(
            logs.lines().any(served),
            "{name} served no Gemini request:\n{logs}"
        );
    }

    // A body above nginx's 1 MB default reaches the proxy, whose own checks answer (here:
    // too many tokens for one request), in Google's JSON envelope rather than nginx's 413 page.
    let big = "many words ".repeat(2 * 1024 * 1024 / 11);
    let resp = http()
        .post(format!("{base}/v1beta/models/{MODEL}:generateContent"))
        .header("x-goog-api-key", CLIENT_KEY)
        .json(&generate_body(&big))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    assert_ne!(
        status, 413,
        "nginx refused a body under the proxy's limit: {text}"
    );
    let body: Value = serde_json::from_str(&text)
        .unwrap_or_else(|_| panic!("not the proxy's answer ({status}): {text}"));
    assert_eq!(body["error"]["code"], status, "{body}");

    // A client key sent in the query string stays out of nginx's access log.
    let resp = http()
        .get(format!("{base}/v1beta/models?key={CLIENT_KEY}"))
        .send()
        .await
        .unwrap();
    assert_ne!(resp.status(), 401, "the query key was accepted");
    let logged = eventually(Duration::from_secs(5), || {
        nginx.access_log().contains("GET /v1beta/models")
    })
    .await;
    let log = nginx.access_log();
    assert!(logged, "the request is not in the access log:\n{log}");
    assert!(
        !log.contains(CLIENT_KEY),
        "a client key in nginx's access log:\n{log}"
    );
    assert!(
        log.lines().count() >= 6,
        "every request through nginx is logged:\n{log}"
    );
}
