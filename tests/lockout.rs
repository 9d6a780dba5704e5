//! Nobody locks everyone out: idle connections are closed, one source cannot take every
//! connection slot, and a partial HTTP/2 preface costs a timer, not a poll loop.

mod common;

use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const KEYS: [&str; 1] = ["AIzaLockoutKey00000001"];

fn addr_of(url: &str) -> std::net::SocketAddr {
    url.trim_start_matches("http://").parse().unwrap()
}

/// A connection to the proxy from `source` (any 127.x.y.z is loopback on Linux).
async fn connect_from(source: &str, url: &str) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    socket.connect(addr_of(url)).await.unwrap()
}

/// Reads until the proxy closes the connection; how long that took (`None`: still open
/// after `within`).
async fn closed_within(stream: &mut TcpStream, within: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(
            tokio::time::Instant::from_std(started + within),
            stream.read(&mut buf),
        )
        .await
        {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => continue,
            Err(_) => return None,
        }
    }
}

async fn healthz_from(source: &str, url: &str) -> String {
    let mut s = connect_from(source, url).await;
    s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// HTTP/2 prior knowledge: the preface and an empty SETTINGS frame.
const H2_HELLO: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_http2_connection_is_closed_after_the_idle_timeout() {
    let fake = FakeUpstream::start().await;
    let proxy = start_proxy(
        &fake.url,
        ProxyOpts::keys(&KEYS)
            .env("PROXY_IDLE_TIMEOUT_SECS", "1")
            .toml("[server]\nheader_read_timeout_secs = 1\n"),
    )
    .await;
    // A real HTTP/2 client: one request, then nothing.
    let stream = TcpStream::connect(addr_of(&proxy.url)).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    let open = tokio::spawn(conn);
    let req = http::Request::get(format!("{}/healthz", proxy.url))
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    drop(resp);
    // The proxy closes it (the connection task ends) once idle for a second.
    let ended = tokio::time::timeout(Duration::from_secs(10), open).await;
    assert!(
        ended.is_ok(),
        "the idle HTTP/2 connection is still open after 10 s"
    );

    // Preface and SETTINGS, and never a request: closed at the handshake timeout.
    let mut s = TcpStream::connect(addr_of(&proxy.url)).await.unwrap();
    s.write_all(H2_HELLO).await.unwrap();
    assert!(
        closed_within(&mut s, Duration::from_secs(10))
            .await
            .is_some(),
        "a connection that never sends a request holds its slot"
    );
    // An HTTP/1.1 keep-alive connection too.
    let mut s = TcpStream::connect(addr_of(&proxy.url)).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    assert!(
        closed_within(&mut s, Duration::from_secs(10))
            .await
            .is_some()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_source_over_its_connection_cap_is_refused_while_others_are_served() {
    let fake = FakeUpstream::start().await;
    let proxy = start_proxy(
        &fake.url,
        ProxyOpts::keys(&KEYS).env("PROXY_MAX_CONNECTIONS_PER_IP", "3"),
    )
    .await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut s = connect_from("127.0.0.1", &proxy.url).await;
        s.write_all(H2_HELLO).await.unwrap();
        held.push(s);
    }
    // The fourth from the same source is closed at once.
    let mut fourth = connect_from("127.0.0.1", &proxy.url).await;
    let _ = fourth.write_all(H2_HELLO).await;
    assert!(
        closed_within(&mut fourth, Duration::from_secs(3))
            .await
            .is_some(),
        "a connection over the per-source cap was kept"
    );
    // Another source is served.
    let answer = healthz_from("127.0.0.2", &proxy.url).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // A closed connection gives its slot back.
    drop(held.pop());
    let mut again = false;
    for _ in 0..100 {
        let answer = healthz_from("127.0.0.1", &proxy.url).await;
        if answer.starts_with("HTTP/1.1 200") {
            again = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(again, "the source never got its slot back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_http2_preface_is_closed_at_the_header_timeout_and_the_proxy_still_serves() {
    let fake = FakeUpstream::start().await;
    let proxy = start_proxy(
        &fake.url,
        ProxyOpts::keys(&KEYS).toml("[server]\nheader_read_timeout_secs = 1\n"),
    )
    .await;
    let mut partial = Vec::new();
    for _ in 0..50 {
        let mut s = TcpStream::connect(addr_of(&proxy.url)).await.unwrap();
        s.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
        partial.push(s);
    }
    let answer = healthz_from("127.0.0.1", &proxy.url).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    for s in &mut partial {
        assert!(
            closed_within(s, Duration::from_secs(10)).await.is_some(),
            "a partial preface outlived the header timeout"
        );
    }
    // The rest of the preface, late but within the timeout, is still taken as HTTP/2.
    let mut s = TcpStream::connect(addr_of(&proxy.url)).await.unwrap();
    s.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    s.write_all(&H2_HELLO[16..]).await.unwrap();
    let mut buf = [0u8; 9];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf))
        .await
        .expect("the proxy answers the preface")
        .unwrap();
    assert_eq!(buf[3], 4, "its first frame is SETTINGS: {buf:?}");
}

/// A client whose connections come from `source`.
fn client_from(source: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .local_address(source.parse::<std::net::IpAddr>().unwrap())
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_that_keeps_presenting_wrong_credentials_is_counted_and_refused_for_a_while() {
    let fake = FakeUpstream::start().await;
    let proxy = start_proxy(&fake.url, ProxyOpts::keys(&KEYS)).await;
    let models = format!("{}/v1beta/models", proxy.url);
    let guesser = client_from("127.0.0.1");
    for i in 0..19 {
        let r = guesser
            .get(&models)
            .header("x-goog-api-key", format!("guess-{i}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403);
    }
    let r = guesser
        .post(format!("{}/api/ai/config/reload", proxy.url))
        .header("authorization", "Bearer not-the-admin-token")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);

    // The 21st try from that source is refused before its credential is looked at: even the
    // right key gets 429 in Google's envelope, with Retry-After.
    let r = guesser
        .get(&models)
        .header("x-goog-api-key", CLIENT_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    let retry_after: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    let body = json_of(r).await;
    assert_eq!(body["error"]["status"], "RESOURCE_EXHAUSTED", "{body}");
    // Without a credential (a probe) it still passes; another source is served.
    let r = guesser
        .get(format!("{}/healthz", proxy.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = client_from("127.0.0.2")
        .get(&models)
        .header("x-goog-api-key", CLIENT_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let text = metrics_text(&proxy.url).await;
    let sample = |kind: &str| -> f64 {
        text.lines()
            .find(|l| {
                l.starts_with("gqp_auth_failures_total{") && l.contains(&format!("kind=\"{kind}\""))
            })
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0.0)
    };
    assert_eq!(sample("client_key"), 19.0, "{text}");
    assert_eq!(sample("admin_token"), 1.0, "{text}");
    assert!(!text.contains("guess-"), "a tried value in /metrics");
}
