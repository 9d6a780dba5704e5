//! The HTTP/1.1 pool to the upstream (`src/upstream/h1pool.rs`): a connection is kept and used
//! again once its answer was read to the end, never carries two requests at once, is not used
//! again while it holds an answer the client abandoned, and one the upstream closed while idle
//! does not fail the next request.

use crate::common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A proxy on one key whose minute limit leaves room for every request of these tests.
async fn proxy_for(upstream: &str, key: &str) -> Proxy {
    start_proxy(
        upstream,
        ProxyOpts::keys(&[key]).env("GEMINI_MINUTE_LIMIT", "1000"),
    )
    .await
}

/// The connections (source addresses) the fake saw generate and stream calls on.
fn peers(fake: &FakeUpstream) -> Vec<SocketAddr> {
    fake.calls("enerateContent")
        .iter()
        .map(|r| r.peer.expect("the fake records the peer"))
        .collect()
}

#[tokio::test]
async fn requests_one_after_another_share_one_upstream_connection() {
    let fake = FakeUpstream::start().await;
    let proxy = proxy_for(&fake.url, "AIzaPoolReuse0000001").await;
    for i in 0..20 {
        let r = generate(&proxy.url, "gemini-2.5-flash", "hi").await;
        assert_eq!(r.status(), 200, "request {i}");
        r.bytes().await.unwrap();
    }
    for i in 0..5 {
        let r = stream_sse(&proxy.url, "hi").await;
        assert_eq!(r.status(), 200, "stream {i}");
        assert!(r.text().await.unwrap().contains("usageMetadata"));
    }
    let seen = peers(&fake);
    assert_eq!(seen.len(), 25);
    let distinct: HashSet<_> = seen.iter().collect();
    // One, or two if a connection was handed back a moment after the next request looked
    // (it is given back once it has seen its answer's end); never one per request.
    assert!(
        distinct.len() <= 2,
        "25 requests one after another used {} upstream connections",
        distinct.len()
    );
}

#[tokio::test]
async fn concurrent_requests_each_get_a_connection_of_their_own_kept_for_the_next() {
    let fake = FakeUpstream::start().await;
    fake.behave(|b| {
        b.stream_delay = Duration::from_millis(150);
        b.stream_events = 3;
    });
    let proxy = proxy_for(&fake.url, "AIzaPoolReuse0000002").await;
    let streams = (0..6).map(|_| {
        let url = proxy.url.clone();
        tokio::spawn(async move {
            let r = stream_sse(&url, "hi").await;
            assert_eq!(r.status(), 200);
            r.text().await.unwrap()
        })
    });
    for s in futures_util::future::join_all(streams).await {
        assert!(s.unwrap().contains("usageMetadata"));
    }
    let first: HashSet<_> = peers(&fake).into_iter().collect();
    assert_eq!(
        first.len(),
        6,
        "6 streams at once must be on 6 connections, not share one"
    );
    fake.behave(|b| b.stream_delay = Duration::ZERO);
    for i in 0..10 {
        let r = generate(&proxy.url, "gemini-2.5-flash", "after").await;
        assert_eq!(r.status(), 200, "request {i}");
        r.bytes().await.unwrap();
    }
    let after: Vec<_> = peers(&fake).into_iter().skip(6).collect();
    let new = after.iter().filter(|p| !first.contains(p)).count();
    assert_eq!(
        new, 0,
        "the kept connections serve the later requests: {new} of 10 went on new ones"
    );
}

#[tokio::test]
async fn a_connection_holding_an_abandoned_answer_is_not_used_again() {
    let fake = FakeUpstream::start().await;
    fake.behave(|b| {
        b.stream_delay = Duration::from_millis(200);
        b.stream_events = 20;
    });
    let proxy = proxy_for(&fake.url, "AIzaPoolReuse0000003").await;
    let mut r = stream_sse(&proxy.url, "hi").await;
    assert_eq!(r.status(), 200);
    assert!(r.chunk().await.unwrap().is_some());
    drop(r);
    let abandoned = peers(&fake)[0];
    // The abandoned answer's stream ends at the fake (its writer sees the connection go).
    assert!(
        eventually(Duration::from_secs(5), || fake
            .state
            .open_streams
            .load(std::sync::atomic::Ordering::SeqCst)
            == 0)
        .await,
        "the upstream connection of an abandoned answer is closed"
    );
    fake.behave(|b| b.stream_delay = Duration::ZERO);
    let r = generate(&proxy.url, "gemini-2.5-flash", "next").await;
    assert_eq!(r.status(), 200);
    r.bytes().await.unwrap();
    assert_ne!(
        peers(&fake)[1],
        abandoned,
        "a request went on the connection that still held the unread rest of another answer"
    );
}

const ANSWER: &str = r#"{"candidates":[{"content":{"role":"model","parts":[{"text":"Hello"}]},"finishReason":"STOP","index":0}],"usageMetadata":{"promptTokenCount":3,"candidatesTokenCount":1,"totalTokenCount":4},"modelVersion":"gemini-2.5-flash"}"#;

/// An upstream that answers one request per connection and then closes it, without saying so
/// (no `connection: close`), as a server whose idle timeout just ran out does. Counts the
/// connections it accepted.
async fn closing_upstream() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                let mut got = Vec::new();
                let mut buf = [0u8; 4096];
                // The head, then as many body bytes as it announces.
                let body_from = loop {
                    let Ok(n) = sock.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    got.extend_from_slice(&buf[..n]);
                    if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i + 4;
                    }
                };
                let head = String::from_utf8_lossy(&got[..body_from]).to_ascii_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map_or(0, |v| v.trim().parse().unwrap());
                while got.len() < body_from + len {
                    let Ok(n) = sock.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    got.extend_from_slice(&buf[..n]);
                }
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json; charset=UTF-8\r\ncontent-length: {}\r\n\r\n{ANSWER}",
                    ANSWER.len()
                );
                let _ = sock.write_all(answer.as_bytes()).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    (url, accepted)
}

#[tokio::test]
async fn a_connection_the_upstream_closed_while_idle_does_not_fail_the_next_request() {
    let (url, accepted) = closing_upstream().await;
    let proxy = proxy_for(&url, "AIzaPoolReuse0000004").await;
    for i in 0..12 {
        let r = generate(&proxy.url, "gemini-2.5-flash", "hi").await;
        assert_eq!(r.status(), 200, "request {i}");
        let v = json_of(r).await;
        assert_eq!(v["candidates"][0]["content"]["parts"][0]["text"], "Hello");
        // Half of them at once after the last: the closed connection may not have been
        // noticed yet, and the send on it must be tried again on a new one.
        if i % 2 == 0 {
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
    }
    assert_eq!(
        accepted.load(std::sync::atomic::Ordering::SeqCst),
        12,
        "one connection per request: each was closed after its answer"
    );
}
