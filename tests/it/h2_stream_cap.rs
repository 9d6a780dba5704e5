//! HTTP/2 stream caps: an upstream that allows few concurrent streams per connection (Google
//! allows about 100) must not make requests wait for a stream slot while another connection
//! could be opened.

use crate::common;
#[path = "../common/h2_upstream.rs"]
mod h2_upstream;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::{CLIENT_KEY, ProxyOpts, eventually, start_proxy};
use futures_util::StreamExt;
use h2_upstream::H2Upstream;

const STREAMS: usize = 12;
const STREAM_CAP: u32 = 4;

async fn stream_to_the_end(proxy: &str) -> (u16, String) {
    let resp = common::http()
        .post(format!(
            "{proxy}/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
        ))
        .header("x-goog-api-key", CLIENT_KEY)
        .json(&serde_json::json!({"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let mut body = String::new();
    let mut chunks = resp.bytes_stream();
    while let Some(chunk) = chunks.next().await {
        body.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
    }
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twelve_concurrent_one_second_streams_past_a_four_stream_cap_finish_in_one_round() {
    let up = H2Upstream::start(STREAM_CAP, Duration::from_secs(1)).await;
    let opts = ProxyOpts::keys(&["AIzaH2Key000000000001"])
        .env("GEMINI_UPSTREAM_CA_FILE", up.ca_file.to_str().unwrap())
        .env("GEMINI_MINUTE_LIMIT", "1000");
    let proxy = start_proxy(&up.url, opts).await;

    // Steady state first: the proxy already holds a connection to the upstream.
    let warm = common::generate(&proxy.url, "gemini-2.5-flash", "hi").await;
    assert_eq!(warm.status(), 200, "{}", warm.text().await.unwrap());

    let started = Instant::now();
    let runs: Vec<_> = (0..STREAMS)
        .map(|_| {
            let url = proxy.url.clone();
            tokio::spawn(async move { stream_to_the_end(&url).await })
        })
        .collect();
    let mut answers = Vec::new();
    for run in runs {
        answers.push(run.await.unwrap());
    }
    let took = started.elapsed();

    for (status, body) in &answers {
        assert_eq!(*status, 200, "{body}");
        assert!(
            body.contains(r#""finishReason":"STOP""#),
            "cut short: {body}"
        );
    }
    let seen = &up.seen;
    assert_eq!(seen.other_requests.load(Ordering::SeqCst), 0);
    assert_eq!(seen.h2_requests.load(Ordering::SeqCst), STREAMS + 1);
    eprintln!(
        "{STREAMS} streams of 1 s past a {STREAM_CAP}-stream cap: {took:?}, {} upstream connections",
        seen.connections.load(Ordering::SeqCst)
    );
    assert!(
        took < Duration::from_secs(2),
        "{STREAMS} concurrent 1 s streams took {took:?}: requests waited for a stream slot"
    );
    assert_eq!(seen.peak_streams.load(Ordering::SeqCst), STREAMS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_connection_is_opened_before_the_open_ones_are_full() {
    let up = H2Upstream::start(STREAM_CAP, Duration::from_secs(3)).await;
    let opts = ProxyOpts::keys(&["AIzaH2Key000000000001"])
        .env("GEMINI_UPSTREAM_CA_FILE", up.ca_file.to_str().unwrap())
        .env("GEMINI_MINUTE_LIMIT", "1000");
    let proxy = start_proxy(&up.url, opts).await;
    // As many streams as one connection takes: the last slot taken leaves less than a quarter
    // of the cap free, so a second connection opens with no request waiting for it.
    let runs: Vec<_> = (0..STREAM_CAP)
        .map(|_| {
            let url = proxy.url.clone();
            tokio::spawn(async move { stream_to_the_end(&url).await })
        })
        .collect();
    let seen = up.seen.clone();
    assert!(
        eventually(Duration::from_secs(2), || {
            seen.open_streams.load(Ordering::SeqCst) == STREAM_CAP as usize
        })
        .await,
        "the streams did not all start"
    );
    assert!(
        eventually(Duration::from_secs(2), || {
            seen.connections.load(Ordering::SeqCst) == 2
        })
        .await,
        "no spare connection: {} open",
        seen.connections.load(Ordering::SeqCst)
    );
    for run in runs {
        let (status, body) = run.await.unwrap();
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(seen.h2_requests.load(Ordering::SeqCst), STREAM_CAP as usize);
}

#[tokio::test]
async fn an_https_upstream_that_chooses_http1_is_served_over_http1_with_http2_on_or_off() {
    let up = H2Upstream::start_http1(Duration::from_millis(100)).await;
    for http2 in ["true", "false"] {
        let opts = ProxyOpts::keys(&["AIzaH1Key000000000001"])
            .env("GEMINI_UPSTREAM_CA_FILE", up.ca_file.to_str().unwrap())
            .env("GEMINI_UPSTREAM_HTTP2", http2);
        let proxy = start_proxy(&up.url, opts).await;
        let (status, body) = stream_to_the_end(&proxy.url).await;
        assert_eq!(status, 200, "http2 = {http2}: {body}");
        assert!(body.contains(r#""finishReason":"STOP""#), "{body}");
        let r = common::generate(&proxy.url, "gemini-2.5-flash", "hi").await;
        assert_eq!(r.status(), 200, "http2 = {http2}");
    }
    assert_eq!(up.seen.h2_requests.load(Ordering::SeqCst), 0);
    assert_eq!(up.seen.other_requests.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn an_upstream_certificate_outside_the_trust_roots_is_refused() {
    let up = H2Upstream::start(STREAM_CAP, Duration::from_millis(100)).await;
    let proxy = start_proxy(&up.url, ProxyOpts::keys(&["AIzaH2Key000000000002"])).await;
    let r = common::generate(&proxy.url, "gemini-2.5-flash", "hi").await;
    assert_eq!(r.status(), 502);
    let text = r.text().await.unwrap();
    assert!(text.contains("certificate"), "{text}");
    assert_eq!(up.seen.h2_requests.load(Ordering::SeqCst), 0);
}
