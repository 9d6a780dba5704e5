//! Redis over TLS (`rediss://`): a real `redis-server --tls-port` with a CA made here. The
//! proxy trusts it through `REDIS_TLS_CA_FILE`, presents a client certificate when the server
//! asks for one (mutual TLS), and refuses to start, saying why and without the password, when
//! the server's certificate is signed by a CA it was not given. A Redis Cluster over TLS is
//! found and followed from one `rediss://` seed the same way.

use crate::common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::*;

/// The store's deadline for these tests: a TLS handshake (ring in an unoptimised test build)
/// can take longer than the default 250 ms when other tests share the CPU, and the store would
/// then count as down. What is tested is TLS, not the deadline.
const SLOW_HANDSHAKES: &str = "[store]\ntimeout_ms = 2000\n";

/// A CA, a certificate for 127.0.0.1 and a client certificate signed by it, written to files.
struct Pki {
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
}

fn file(name: &str, body: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!(
        "gqp-rtls-{}-{}-{name}",
        std::process::id(),
        fastrand::u64(..)
    ));
    std::fs::write(&p, body).unwrap();
    p
}

fn pki() -> Pki {
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "gqp redis test CA");
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate().unwrap())
        .unwrap();
    let leaf = |name: &str| {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![name.to_string()])
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let (server_cert, server_key) = leaf("127.0.0.1");
    let (client_cert, client_key) = leaf("gqp-client");
    Pki {
        ca: file("ca.pem", &ca.as_ref().pem()),
        server_cert: file("server.pem", &server_cert),
        server_key: file("server.key", &server_key),
        client_cert: file("client.pem", &client_cert),
        client_key: file("client.key", &client_key),
    }
}

fn port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A Redis with a plain port (for the test's own reads) and a TLS port; `clients_auth`: the
/// server asks for a client certificate.
fn tls_redis(pki: &Pki, clients_auth: bool) -> (RedisServer, u16) {
    let tls_port = port();
    let p = |x: &PathBuf| x.to_string_lossy().into_owned();
    let args = [
        "--tls-port".to_string(),
        tls_port.to_string(),
        "--tls-cert-file".into(),
        p(&pki.server_cert),
        "--tls-key-file".into(),
        p(&pki.server_key),
        "--tls-ca-cert-file".into(),
        p(&pki.ca),
        "--tls-auth-clients".into(),
        if clients_auth { "yes" } else { "no" }.into(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    (RedisServer::start_with(&args), tls_port)
}

async fn store_view(proxy: &str) -> serde_json::Value {
    quota_status(proxy, CLIENT_KEY).await.1["quota_status"]["store"].clone()
}

#[tokio::test]
async fn a_rediss_store_with_its_ca_file_counts_in_redis() {
    let pki = pki();
    let (redis, tls_port) = tls_redis(&pki, false);
    let fake = FakeUpstream::start().await;
    let proxy = start_proxy(
        &fake.url,
        ProxyOpts::keys(&["AIzaTlsRedisKey000001"])
            .toml(SLOW_HANDSHAKES)
            .env("REDIS_URL", &format!("rediss://127.0.0.1:{tls_port}"))
            .env("REDIS_TLS_CA_FILE", &pki.ca.to_string_lossy()),
    )
    .await;
    assert_eq!(
        generate(&proxy.url, "gemini-2.5-flash", "hi")
            .await
            .status(),
        200
    );
    let store = store_view(&proxy.url).await;
    assert_eq!(store["backend"], "redis");
    assert_eq!(store["reachable"], true, "{store}");
    // The admission was counted in this Redis (read here over its plain port).
    let keys = redis.all_keys();
    assert!(keys.contains("{gqp}:"), "no quota keys in Redis: {keys}");
}

#[tokio::test]
async fn mutual_tls_needs_the_client_certificate() {
    let pki = pki();
    let (_redis, tls_port) = tls_redis(&pki, true);
    let fake = FakeUpstream::start().await;
    let url = format!("rediss://127.0.0.1:{tls_port}");
    let with_cert = start_proxy(
        &fake.url,
        ProxyOpts::keys(&["AIzaTlsRedisKey000002"])
            .toml(SLOW_HANDSHAKES)
            .env("REDIS_URL", &url)
            .env("REDIS_TLS_CA_FILE", &pki.ca.to_string_lossy())
            .env("REDIS_TLS_CERT_FILE", &pki.client_cert.to_string_lossy())
            .env("REDIS_TLS_KEY_FILE", &pki.client_key.to_string_lossy()),
    )
    .await;
    assert_eq!(
        generate(&with_cert.url, "gemini-2.5-flash", "hi")
            .await
            .status(),
        200
    );
    assert_eq!(store_view(&with_cert.url).await["reachable"], true);

    // Without one the server ends the handshake: the store is down (served under `local`).
    let without = start_proxy(
        &fake.url,
        ProxyOpts::keys(&["AIzaTlsRedisKey000003"])
            .toml(SLOW_HANDSHAKES)
            .env("REDIS_URL", &url)
            .env("REDIS_TLS_CA_FILE", &pki.ca.to_string_lossy()),
    )
    .await;
    assert_eq!(
        generate(&without.url, "gemini-2.5-flash", "hi")
            .await
            .status(),
        200
    );
    let mut down = false;
    for _ in 0..50 {
        if store_view(&without.url).await["reachable"] == false {
            down = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(down, "a handshake without the client certificate must fail");
}

#[test]
fn an_untrusted_redis_certificate_stops_start_up_with_a_clear_message() {
    let pki = pki();
    let other = pki_other_ca();
    let (_redis, tls_port) = tls_redis(&pki, false);
    let out = Command::new(env!("CARGO_BIN_EXE_gemini-quota-proxy"))
        .env_clear()
        .env("GEMINI_API_KEY", "AIzaTlsRedisKey000004")
        .env("PROXY_CLIENT_KEYS", CLIENT_KEY)
        .env("PROXY_LISTEN", "127.0.0.1:0")
        .env("GEMINI_UPSTREAM_URL", "http://127.0.0.1:9")
        .env(
            "REDIS_URL",
            format!("rediss://:redis-pass-s3cret@127.0.0.1:{tls_port}"),
        )
        .env("REDIS_TLS_CA_FILE", &other)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the binary runs");
    // A binary that started serving instead of stopping would never exit: a failure, not a hang.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut child = out;
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "the proxy did not stop within 60 s: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("does not trust"), "{stderr}");
    assert!(stderr.contains("REDIS_TLS_CA_FILE"), "{stderr}");
    assert!(!stderr.contains("redis-pass-s3cret"), "{stderr}");
    assert!(!stderr.contains("listening"), "it must not serve: {stderr}");
}

/// A Cluster whose nodes speak TLS to clients and to each other: the proxy, given one node's
/// `rediss://` address (not the one serving the namespace) and the CA, finds the cluster, learns
/// the other nodes' TLS ports from it and counts on the master that serves the namespace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_cluster_is_found_and_followed_from_one_rediss_seed() {
    let pki = pki();
    let p = |x: &PathBuf| x.to_string_lossy().into_owned();
    let tls: Vec<String> = [
        "--tls-port",
        "{tls_port}",
        "--tls-cert-file",
        &p(&pki.server_cert),
        "--tls-key-file",
        &p(&pki.server_key),
        "--tls-ca-cert-file",
        &p(&pki.ca),
        "--tls-auth-clients",
        "no",
        "--tls-cluster",
        "yes",
        "--tls-replication",
        "yes",
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    let cluster = common::cluster::RedisCluster::start_with(3, 0, 5_000, &tls);
    let slot = cluster.keyslot("gqp");
    let owner = cluster
        .master_of(slot, cluster.live_ports()[0])
        .expect("the slot has a master");
    let seed = cluster.other_master(slot);
    let seed_tls = cluster.tls_port(seed).unwrap();
    let fake = FakeUpstream::start().await;
    let proxy = start_proxy(
        &fake.url,
        ProxyOpts::keys(&["AIzaTlsClusterKey0001"])
            .toml(SLOW_HANDSHAKES)
            .env("REDIS_URL", &format!("rediss://127.0.0.1:{seed_tls}"))
            .env("REDIS_TLS_CA_FILE", &pki.ca.to_string_lossy()),
    )
    .await;
    for _ in 0..3 {
        assert_eq!(
            generate(&proxy.url, "gemini-2.5-flash", "hi")
                .await
                .status(),
            200
        );
    }
    let store = store_view(&proxy.url).await;
    assert_eq!(store["reachable"], true, "{store}");
    // Counted on the namespace's master (read here over its plain port): three admissions.
    let seq = cluster
        .cli(owner, &["GET", "{gqp}:seq"])
        .unwrap_or_default();
    assert_eq!(seq.lines().nth(1).map(str::trim), Some("3"), "{seq}");
    assert!(!cluster.keys_on(seed).contains("{gqp}:"));
}

/// A CA file of another CA (not the one that signed the server's certificate).
fn pki_other_ca() -> PathBuf {
    pki().ca
}
