//! A store that answers, but not as a working store would, is a failing store: the
//! `store.on_error` policy applies, `/readyz` and the status page say degraded, and a store
//! that does not work at start-up is reported at once, its password hidden.

use crate::common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// A Redis Cluster node that serves no hash slot: it answers PING, and every key command with
/// `CLUSTERDOWN Hash slot not served` (a node that does not own the namespace's slot answers
/// `MOVED` the same way).
fn slotless_cluster_node() -> RedisServer {
    let dir = std::env::temp_dir();
    let conf = dir.join(format!("gqp-cluster-{}-{{port}}.conf", std::process::id()));
    let conf = conf.to_string_lossy().into_owned();
    RedisServer::start_with(&["--cluster-enabled", "yes", "--cluster-config-file", &conf])
}

#[tokio::test]
async fn a_cluster_node_that_does_not_serve_the_namespace_is_a_failing_store() {
    let redis = slotless_cluster_node();
    assert!(
        redis
            .cli(&["SET", "{gqp}:x", "1"])
            .unwrap()
            .contains("CLUSTERDOWN"),
        "the node must refuse key commands"
    );
    let fake = FakeUpstream::start().await;
    let proxy = start_proxy(
        &fake.url,
        ProxyOpts::keys(&["AIzaClusterKey000001"]).env("REDIS_URL", &redis.url),
    )
    .await;
    // Served under the default `local` policy, not 503.
    for _ in 0..3 {
        assert_eq!(
            generate(&proxy.url, "gemini-2.5-flash", "hi")
                .await
                .status(),
            200
        );
    }
    let r = http()
        .get(format!("{}/readyz", proxy.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v = json_of(r).await;
    assert_eq!(v["status"], "degraded", "{v}");
    assert_eq!(v["policy"], "local");
    let (_, status) = quota_status(&proxy.url, CLIENT_KEY).await;
    assert_eq!(
        status["quota_status"]["store"]["reachable"], false,
        "{status}"
    );
    assert!(
        status["quota_status"]["warnings"]
            .to_string()
            .contains("quota store unreachable"),
        "{status}"
    );
}

#[tokio::test]
async fn under_fail_closed_a_slotless_cluster_node_makes_the_replica_unready() {
    let redis = slotless_cluster_node();
    let fake = FakeUpstream::start().await;
    let proxy = start_proxy(
        &fake.url,
        ProxyOpts::keys(&["AIzaClusterKey000001"])
            .env("REDIS_URL", &redis.url)
            .toml("[store]\non_error = \"fail-closed\"\n"),
    )
    .await;
    let r = http()
        .get(format!("{}/readyz", proxy.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(
        generate(&proxy.url, "gemini-2.5-flash", "hi")
            .await
            .status(),
        503
    );
}

#[test]
fn a_store_that_does_not_work_at_start_is_logged_at_once_without_its_password() {
    // A port nothing listens on: a typo in REDIS_URL.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_gemini-quota-proxy"))
        .env_clear()
        .env("GEMINI_API_KEYS", "AIzaClusterKey000001")
        .env("PROXY_CLIENT_KEYS", CLIENT_KEY)
        .env("PROXY_LISTEN", "127.0.0.1:0")
        .env(
            "REDIS_URL",
            format!("redis://ops:hunter2secret@127.0.0.1:{port}/0"),
        )
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("proxy binary starts");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let end = Instant::now() + Duration::from_secs(15);
    let mut seen = Vec::new();
    let mut found = None;
    while Instant::now() < end && found.is_none() {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
            if line.contains("ERROR") && line.contains("quota store") {
                found = Some(line.clone());
            }
            seen.push(line);
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let line = found.unwrap_or_else(|| panic!("no start-up error line in {seen:#?}"));
    assert!(
        line.contains(&format!("redis://***@127.0.0.1:{port}/0")),
        "{line}"
    );
    assert!(line.contains("local"), "names the policy: {line}");
    assert!(
        !seen.iter().any(|l| l.contains("hunter2secret")),
        "the password leaked: {seen:#?}"
    );
}
