//! The request log line of the real binary: written when the answer's body ends, it gives the
//! time to the head (`latency_ms`), to the first body byte (`first_byte_ms`) and in total
//! (`total_ms`), each in milliseconds rounded to the microsecond.

use crate::common;

use std::time::Duration;

use common::binary::Binary;
use common::*;

/// The value of `field=` in a text log line.
fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let at = line.find(&format!(" {name}="))? + name.len() + 2;
    line[at..].split_whitespace().next()
}

fn millis(line: &str, name: &str) -> f64 {
    let v = field(line, name).unwrap_or_else(|| panic!("no {name} in {line}"));
    let decimals = v.split_once('.').map_or(0, |(_, d)| d.len());
    assert!(
        decimals <= 3,
        "{name}={v}: more than microseconds in {line}"
    );
    v.parse()
        .unwrap_or_else(|_| panic!("{name}={v} is not a number"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streams_line_gives_its_first_byte_and_its_total_time() {
    let fake = FakeUpstream::start().await;
    // Three events 60 ms apart: the first at once, the body ends after 120 ms or more.
    fake.behave(|b| {
        b.stream_events = 3;
        b.stream_delay = Duration::from_millis(60);
    });
    let proxy = Binary::start(
        &[
            ("GEMINI_API_KEY", "AIzaPooledKeyLog0001"),
            ("PROXY_CLIENT_KEYS", CLIENT_KEY),
            ("GEMINI_UPSTREAM_URL", fake.url.as_str()),
        ],
        &[],
    );
    let resp = stream_sse(&proxy.url, "hello").await;
    assert_eq!(resp.status(), 200);
    resp.bytes().await.unwrap();
    let resp = generate(&proxy.url, "gemini-2.5-flash", "hello").await;
    assert_eq!(resp.status(), 200);
    resp.bytes().await.unwrap();

    // Lines are written when a body ends: wait for both.
    let lines = |logs: &str, action: &str| -> Option<String> {
        logs.lines()
            .find(|l| l.contains("status=200") && l.contains(action) && l.contains("total_ms="))
            .map(str::to_string)
    };
    assert!(
        eventually(Duration::from_secs(5), || {
            let logs = proxy.logs();
            lines(&logs, "streamGenerateContent").is_some()
                && lines(&logs, ":generateContent").is_some()
        })
        .await,
        "no request lines: {}",
        proxy.logs()
    );
    let logs = proxy.logs();
    let stream = lines(&logs, "streamGenerateContent").unwrap();
    let (head, first, total) = (
        millis(&stream, "latency_ms"),
        millis(&stream, "first_byte_ms"),
        millis(&stream, "total_ms"),
    );
    assert!(total >= 120.0, "the stream took 120 ms or more: {stream}");
    assert!(
        first < total,
        "the first byte came before the end: {stream}"
    );
    assert!(
        head <= first,
        "the head came with or before the first byte: {stream}"
    );
    assert_eq!(field(&stream, "complete"), Some("true"), "{stream}");
    println!("{stream}");

    let unary = lines(&logs, ":generateContent").unwrap();
    let (first, total) = (millis(&unary, "first_byte_ms"), millis(&unary, "total_ms"));
    assert!(first <= total, "{unary}");
}
