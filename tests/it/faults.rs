//! Faults: a Redis that dies, comes back or stalls; clients that disconnect mid-stream, stall
//! their headers or body, or open too many connections. Nothing hangs, nothing is lost.

use crate::common;

use std::io::{Read, Write};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt;
use serde_json::json;

const KEYS: [&str; 2] = ["AIzaFaultKey00000001", "AIzaFaultKey00000002"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_degrades_within_the_deadline_and_recovers_without_a_restart() {
    let mut redis = RedisServer::start();
    let fake = FakeUpstream::start().await;
    let proxy = start_proxy(
        &fake.url,
        ProxyOpts::keys(&KEYS)
            .env("REDIS_URL", &redis.url)
            .toml("[store]\ntimeout_ms = 200\n"),
    )
    .await;
    assert_eq!(
        generate(&proxy.url, "gemini-2.5-flash", "before")
            .await
            .status(),
        200
    );
    assert!(
        redis.all_keys().contains("gemini-2.5-flash"),
        "counters are not in Redis"
    );

    redis.stop();
    for i in 0..5 {
        let t = Instant::now();
        let r = generate(&proxy.url, "gemini-2.5-flash", "during").await;
        assert_eq!(r.status(), 200, "request {i} during the outage");
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "request {i} took {:?}",
            t.elapsed()
        );
    }
    let r = http()
        .get(format!("{}/readyz", proxy.url))
        .send()
        .await
        .unwrap();
    // Still serving (local counting), so still ready, but degraded.
    assert_eq!(r.status(), 200);
    assert_eq!(json_of(r).await["status"], "degraded");
    let s = quota_status(&proxy.url, CLIENT_KEY).await.1;
    assert_eq!(s["quota_status"]["store"]["reachable"], false);

    redis.restart();
    let mut back = false;
    for _ in 0..100 {
        let r = http()
            .get(format!("{}/readyz", proxy.url))
            .send()
            .await
            .unwrap();
        if json_of(r).await["status"] == "ready" {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(back, "the proxy did not return to Redis by itself");
    assert_eq!(
        generate(&proxy.url, "gemini-2.5-flash", "after")
            .await
            .status(),
        200
    );
    assert!(
        redis.all_keys().contains("gemini-2.5-flash"),
        "counting did not resume in Redis"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_closed_answers_503_while_redis_is_down() {
    let mut redis = RedisServer::start();
    let fake = FakeUpstream::start().await;
    let proxy = start_proxy(
        &fake.url,
        ProxyOpts::keys(&KEYS)
            .env("REDIS_URL", &redis.url)
            .toml("[store]\ntimeout_ms = 200\non_error = \"fail-closed\"\n"),
    )
    .await;
    assert_eq!(
        generate(&proxy.url, "gemini-2.5-flash", "x").await.status(),
        200
    );
    redis.stop();
    let r = generate(&proxy.url, "gemini-2.5-flash", "x").await;
    assert_eq!(r.status(), 503);
    assert_eq!(json_of(r).await["error"]["status"], "UNAVAILABLE");
    assert_eq!(fake.calls(":generateContent").len(), 1);
    let r = http()
        .get(format!("{}/readyz", proxy.url))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        503,
        "fail-closed refuses work, so it is not ready"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_redis_never_hangs_a_request() {
    // DEBUG is refused unless enabled (Redis 7); local: from loopback only.
    let redis = RedisServer::start_with(&["--enable-debug-command", "local"]);
    let fake = FakeUpstream::start().await;
    let proxy = start_proxy(
        &fake.url,
        ProxyOpts::keys(&KEYS)
            .env("REDIS_URL", &redis.url)
            .toml("[store]\ntimeout_ms = 200\n"),
    )
    .await;
    assert_eq!(
        generate(&proxy.url, "gemini-2.5-flash", "x").await.status(),
        200
    );
    // The whole server blocks for 3 s; its answer comes when it wakes.
    let sleeper = redis.sleep_in_background("3");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let t = Instant::now();
    let r = generate(&proxy.url, "gemini-2.5-flash", "x").await;
    assert_eq!(r.status(), 200);
    assert!(
        t.elapsed() < Duration::from_millis(1500),
        "took {:?} with Redis asleep",
        t.elapsed()
    );
    // Redis really slept through that request.
    let woke = sleeper.join().unwrap();
    assert_eq!(woke.trim(), "+OK", "DEBUG SLEEP answered {woke:?}");
    assert!(
        t.elapsed() >= Duration::from_millis(2500),
        "{:?}",
        t.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_mid_stream_disconnects_drop_the_upstream_and_settle() {
    let fake = FakeUpstream::start().await;
    fake.behave(|b| {
        b.stream_delay = Duration::from_millis(50);
        b.stream_events = 20;
        b.prompt_tokens = Some(7);
    });
    let proxy = start_proxy(
        &fake.url,
        ProxyOpts::keys(&KEYS)
            .env("GEMINI_MINUTE_LIMIT", "100000")
            .env("GEMINI_DAILY_LIMIT", "100000"),
    )
    .await;
    let url = format!(
        "{}/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
        proxy.url
    );
    let tasks_before = tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks();
    let mut tasks = Vec::new();
    for _batch in 0..20 {
        for _ in 0..50 {
            let url = url.clone();
            tasks.push(tokio::spawn(async move {
                let r = http()
                    .post(url)
                    .header("x-goog-api-key", CLIENT_KEY)
                    .json(&json!({"contents": [{"parts": [{"text": "a long answer please"}]}]}))
                    .send()
                    .await
                    .unwrap();
                let mut s = r.bytes_stream();
                let first = s.next().await.unwrap().unwrap();
                assert!(first.starts_with(b"data: "));
                // Drop the response: the client goes away mid-stream.
            }));
        }
        for t in tasks.drain(..) {
            t.await.unwrap();
        }
    }
    let closed = eventually(Duration::from_secs(10), || {
        fake.state.open_streams.load(Ordering::SeqCst) == 0
    })
    .await;
    assert!(
        closed,
        "{} upstream streams still open",
        fake.state.open_streams.load(Ordering::SeqCst)
    );
    let mut settled = false;
    for _ in 0..200 {
        let usage = proxy.state.store.usage().await.unwrap();
        let (reqs, toks) = usage.iter().fold((0, 0), |a, (_, _, u)| {
            (a.0 + u.minute_requests, a.1 + u.minute_tokens)
        });
        if reqs == 1000 && toks == 7000 {
            settled = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        settled,
        "reservations did not settle to the usage seen before the disconnect"
    );
    // No task is left behind per disconnect (a few come and go with the pools).
    let mut tasks_after = usize::MAX;
    for _ in 0..100 {
        tasks_after = tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks();
        if tasks_after <= tasks_before + 20 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        tasks_after <= tasks_before + 20,
        "{tasks_before} tasks before, {tasks_after} after 1000 disconnects"
    );
    // The proxy still serves.
    assert_eq!(
        generate(&proxy.url, "gemini-2.5-flash", "still here")
            .await
            .status(),
        200
    );
}

fn raw_connect(url: &str) -> std::net::TcpStream {
    let addr = url.trim_start_matches("http://");
    let s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hundred_half_sent_requests_do_not_stall_a_normal_one_and_are_cut_off() {
    let fake = FakeUpstream::start().await;
    let proxy = start_proxy(
        &fake.url,
        ProxyOpts::keys(&KEYS).toml("[server]\nheader_read_timeout_secs = 3\n"),
    )
    .await;
    // Stalled would mean waiting for the slow ones' header timeout (3 s); the bound is that,
    // not a speed (a loaded CI machine may take a second for the normal request).
    let stall = Duration::from_secs(3);
    let mut idle = Vec::new();
    for _ in 0..300 {
        let mut s = raw_connect(&proxy.url);
        s.write_all(
            b"POST /v1beta/models/gemini-2.5-flash:generateContent HTTP/1.1\r\nHost: x\r\n",
        )
        .unwrap();
        idle.push(s);
    }
    let t = Instant::now();
    assert_eq!(
        generate(&proxy.url, "gemini-2.5-flash", "normal")
            .await
            .status(),
        200
    );
    assert!(
        t.elapsed() < stall,
        "normal request took {:?}: it waited for the slow ones",
        t.elapsed()
    );
    // The header timeout closes the slow ones.
    tokio::task::spawn_blocking(move || {
        for mut s in idle {
            let mut buf = [0u8; 512];
            let n = s.read(&mut buf).unwrap_or(0);
            let text = String::from_utf8_lossy(&buf[..n]);
            assert!(
                n == 0 || text.starts_with("HTTP/1.1 408"),
                "slow connection got {text:?}"
            );
        }
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_never_finishes_gets_408_and_no_upstream_call() {
    let fake = FakeUpstream::start().await;
    let proxy = start_proxy(
        &fake.url,
        ProxyOpts::keys(&KEYS).toml("[server]\nbody_read_timeout_secs = 1\n"),
    )
    .await;
    let url = proxy.url.clone();
    let reply = tokio::task::spawn_blocking(move || {
        let mut s = raw_connect(&url);
        let head = format!(
            "POST /v1beta/models/gemini-2.5-flash:generateContent HTTP/1.1\r\nHost: x\r\nx-goog-api-key: {CLIENT_KEY}\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{{\"contents\""
        );
        s.write_all(head.as_bytes()).unwrap();
        let mut buf = vec![0u8; 4096];
        let n = s.read(&mut buf).unwrap_or(0);
        String::from_utf8_lossy(&buf[..n]).to_string()
    })
    .await
    .unwrap();
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
    assert!(reply.contains("DEADLINE_EXCEEDED"), "{reply}");
    assert!(fake.recorded().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_cap_are_refused_cleanly() {
    let fake = FakeUpstream::start().await;
    let proxy = start_proxy(
        &fake.url,
        ProxyOpts::keys(&KEYS)
            .toml("[server]\nmax_connections = 3\nheader_read_timeout_secs = 5\n"),
    )
    .await;
    let held: Vec<_> = (0..3).map(|_| raw_connect(&proxy.url)).collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let url = proxy.url.clone();
    let reply = tokio::task::spawn_blocking(move || {
        let mut s = raw_connect(&url);
        let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
        let mut buf = vec![0u8; 4096];
        let n = s.read(&mut buf).unwrap_or(0);
        String::from_utf8_lossy(&buf[..n]).to_string()
    })
    .await
    .unwrap();
    assert!(reply.starts_with("HTTP/1.1 503"), "{reply}");
    assert!(reply.contains("\"status\":\"UNAVAILABLE\""), "{reply}");
    drop(held);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        http()
            .get(format!("{}/healthz", proxy.url))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

async fn minute_tokens(proxy: &Proxy) -> (u64, u64) {
    let usage = proxy.state.store.usage().await.unwrap();
    usage.iter().fold((0, 0), |a, (_, _, u)| {
        (a.0 + u.minute_requests, a.1 + u.minute_tokens)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_cut_mid_way_reaches_the_client_as_a_failure_and_still_settles() {
    let fake = FakeUpstream::start().await;
    fake.behave(|b| {
        b.stream_events = 5;
        b.stream_delay = Duration::from_millis(100);
        b.cut_stream_after = Some(2);
        b.prompt_tokens = Some(11);
    });
    let proxy = start_proxy(&fake.url, ProxyOpts::keys(&KEYS)).await;
    let r = stream_sse(&proxy.url, "a long prompt of many many characters").await;
    assert_eq!(r.status(), 200);
    let mut s = r.bytes_stream();
    let mut got = Vec::new();
    let mut failed = false;
    while let Some(c) = s.next().await {
        match c {
            Ok(b) => got.extend_from_slice(&b),
            Err(_) => {
                failed = true;
                break;
            }
        }
    }
    assert!(failed, "the cut was hidden from the client");
    // Events sent before the cut may or may not be flushed; at least the first arrived.
    let events = String::from_utf8_lossy(&got).matches("data: ").count();
    assert!((1..=2).contains(&events), "{events} events before the cut");
    // Only one try: once bytes flowed, nothing is retried.
    assert_eq!(fake.calls(":streamGenerateContent").len(), 1);
    let mut last = (0, 0);
    for _ in 0..100 {
        last = minute_tokens(&proxy).await;
        if last == (1, 11) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        last,
        (1, 11),
        "the reservation did not settle to the usage seen before the cut"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200_with_a_malformed_body_passes_through_and_refunds_the_tokens() {
    let fake = FakeUpstream::start().await;
    fake.behave(|b| b.malformed_200 = true);
    let proxy = start_proxy(&fake.url, ProxyOpts::keys(&KEYS)).await;
    let r = generate(&proxy.url, "gemini-2.5-flash", &"q".repeat(400)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.text().await.unwrap(),
        "{\"candidates\": [{\"content\": <<<not json"
    );
    let mut last = (0, 0);
    for _ in 0..100 {
        last = minute_tokens(&proxy).await;
        if last == (1, 0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        last,
        (1, 0),
        "no usage in the answer: tokens refunded, request still counted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_upstream_gets_504_at_the_request_timeout() {
    let fake = FakeUpstream::start().await;
    fake.behave(|b| b.answer_delay = Duration::from_secs(5));
    let proxy = start_proxy(
        &fake.url,
        ProxyOpts::keys(&KEYS).toml("[upstream]\nrequest_timeout_secs = 1\nmax_attempts = 1\n"),
    )
    .await;
    expect_deadline_exceeded(&proxy.url, Duration::from_secs(3), "the request timeout").await;
}

/// A generate call through `proxy` answers 504 DEADLINE_EXCEEDED within `within`: `what` is
/// the limit that should have cut it.
async fn expect_deadline_exceeded(proxy: &str, within: Duration, what: &str) {
    let t = Instant::now();
    let r = generate(proxy, "gemini-2.5-flash", "x").await;
    assert_eq!(r.status(), 504);
    assert!(
        t.elapsed() < within,
        "{what} did not cut the request: {:?}",
        t.elapsed()
    );
    let body = json_of(r).await;
    assert_eq!(body["error"]["status"], "DEADLINE_EXCEEDED", "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_handshake_that_stalls_is_cut_at_the_connect_timeout_with_504() {
    // An HTTPS "upstream" that accepts TCP and then says nothing: the TLS handshake never ends.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in listener.incoming() {
            held.push(s);
        }
    });
    let proxy = start_proxy(
        &url,
        ProxyOpts::keys(&KEYS).toml(
            "[upstream]\nconnect_timeout_secs = 1\nrequest_timeout_secs = 30\nmax_attempts = 1\n",
        ),
    )
    .await;
    expect_deadline_exceeded(
        &proxy.url,
        Duration::from_secs(3),
        "the connect timeout (TCP and TLS)",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_reset_after_connecting_is_answered_502_and_not_sent_again() {
    // An "upstream" that accepts and slams every connection shut.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    std::thread::spawn(move || {
        for s in listener.incoming() {
            count.fetch_add(1, Ordering::SeqCst);
            drop(s);
        }
    });
    let proxy = start_proxy(
        &url,
        ProxyOpts::keys(&KEYS).toml("[upstream]\nretry_deadline_secs = 5\n"),
    )
    .await;
    let t = Instant::now();
    let r = generate(&proxy.url, "gemini-2.5-flash", "x").await;
    assert_eq!(r.status(), 502);
    assert!(t.elapsed() < Duration::from_secs(6));
    let v = json_of(r).await;
    assert_eq!(v["error"]["status"], "UNAVAILABLE");
    // Once connected, the request may have been read and run: it is not sent again.
    let n = accepted.load(Ordering::SeqCst);
    assert_eq!(n, 1, "{n} connection attempts");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_tls_handshake_is_retried_on_another_key_before_answering_502() {
    // An "upstream" that answers the TLS hello with plain text: the handshake fails, so the
    // request never left and trying again is safe.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    std::thread::spawn(move || {
        for s in listener.incoming() {
            count.fetch_add(1, Ordering::SeqCst);
            if let Ok(mut s) = s {
                let _ = std::io::Write::write_all(&mut s, b"HTTP/1.1 400 Bad Request\r\n\r\n");
            }
        }
    });
    let proxy = start_proxy(
        &url,
        ProxyOpts::keys(&KEYS).toml("[upstream]\nretry_deadline_secs = 5\nmax_attempts = 3\n"),
    )
    .await;
    let r = generate(&proxy.url, "gemini-2.5-flash", "x").await;
    assert_eq!(r.status(), 502);
    assert_eq!(json_of(r).await["error"]["status"], "UNAVAILABLE");
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        3,
        "one connection per attempt"
    );
}
