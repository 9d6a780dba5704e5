//! The key pool against a fake Google that has its own ideas: real limits the proxy was not
//! told, dead keys, overloaded models, per-day exhaustion.

use crate::common;

use std::time::Duration;

use common::*;

#[tokio::test]
async fn learns_real_limits_from_googles_429s_and_stops_sending_during_the_cooldown() {
    let fake = FakeUpstream::start().await;
    fake.behave(|b| b.per_key_rpm = Some(2));
    let keys = [
        "AIzaRealLimit0000001",
        "AIzaRealLimit0000002",
        "AIzaRealLimit0000003",
    ];
    let proxy = start_proxy(&fake.url, ProxyOpts::keys(&keys)).await;
    for i in 0..6 {
        assert_eq!(
            generate(&proxy.url, "gemini-2.5-flash", "hi")
                .await
                .status(),
            200,
            "request {i}"
        );
    }
    let r = generate(&proxy.url, "gemini-2.5-flash", "seventh").await;
    assert_eq!(r.status(), 429);
    let wait: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(wait > 10 && wait <= 61, "Retry-After {wait}");
    let v = json_of(r).await;
    assert_eq!(v["error"]["status"], "RESOURCE_EXHAUSTED");
    let before = fake.calls(":generateContent").len();
    for _ in 0..5 {
        assert_eq!(
            generate(&proxy.url, "gemini-2.5-flash", "during cooldown")
                .await
                .status(),
            429
        );
    }
    assert_eq!(
        fake.calls(":generateContent").len(),
        before,
        "requests reached Google during the cooldown"
    );
}

#[tokio::test]
async fn an_invalid_key_is_disabled_after_one_try_and_shown_in_the_status() {
    let fake = FakeUpstream::start().await;
    let bad = "AIzaInvalidKey000001";
    fake.behave(|b| {
        b.invalid_keys.insert(bad.to_string());
    });
    let proxy = start_proxy(&fake.url, ProxyOpts::keys(&[bad, "AIzaGoodKey000000001"])).await;
    for _ in 0..6 {
        assert_eq!(
            generate(&proxy.url, "gemini-2.5-flash", "hi")
                .await
                .status(),
            200
        );
    }
    let sent_bad = fake
        .calls(":generateContent")
        .iter()
        .filter(|r| r.key().as_deref() == Some(bad))
        .count();
    assert!(
        sent_bad <= 1,
        "the invalid key went upstream {sent_bad} times"
    );
    // Disabled only after one probe with it confirmed Google's verdict.
    let probes = fake
        .calls("/v1beta/models")
        .iter()
        .filter(|r| r.method == "GET" && r.key().as_deref() == Some(bad))
        .count();
    assert_eq!(probes, sent_bad, "one confirming probe per dead-key answer");
    let status = quota_status(&proxy.url, CLIENT_KEY).await.1;
    let keys = status["quota_status"]["keys"].as_array().unwrap();
    let k = keys.iter().find(|k| k["id"] == "AIza...0001").unwrap();
    assert_eq!(k["state"], "disabled");
    assert!(k["reason"].as_str().unwrap().contains("API_KEY_INVALID"));
    assert!(!status.to_string().contains(bad));
}

#[tokio::test]
async fn transient_5xx_are_retried_before_the_first_byte() {
    let fake = FakeUpstream::start().await;
    fake.behave(|b| {
        b.script.push_back(Scripted::Status(503));
        b.script.push_back(Scripted::Status(503));
    });
    let proxy = start_proxy(
        &fake.url,
        ProxyOpts::keys(&["AIzaRetryKey00000001", "AIzaRetryKey00000002"]),
    )
    .await;
    assert_eq!(
        generate(&proxy.url, "gemini-2.5-flash", "hi")
            .await
            .status(),
        200
    );
    assert_eq!(fake.calls(":generateContent").len(), 3);
    // One 503 before a stream: the stream is retried and arrives whole.
    fake.behave(|b| b.script.push_back(Scripted::Status(503)));
    let r = stream_sse(&proxy.url, "s").await;
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    assert_eq!(text.matches("data: ").count(), 3);
}

#[tokio::test]
async fn an_upstream_that_always_fails_gets_a_bounded_number_of_attempts() {
    let fake = FakeUpstream::start().await;
    fake.behave(|b| b.always_status = Some(500));
    let proxy = start_proxy(
        &fake.url,
        ProxyOpts::keys(&["AIzaFailKey000000001", "AIzaFailKey000000002"])
            .toml("[upstream]\nretry_deadline_secs = 5\n"),
    )
    .await;
    let started = std::time::Instant::now();
    let r = generate(&proxy.url, "gemini-2.5-flash", "hi").await;
    assert!(started.elapsed() < Duration::from_secs(6));
    assert_eq!(r.status(), 500);
    let v = json_of(r).await;
    assert_eq!(v["error"]["status"], "INTERNAL");
    let n = fake.calls(":generateContent").len();
    assert!((2..=6).contains(&n), "{n} attempts");
}

#[tokio::test]
async fn a_per_day_429_cools_the_key_until_pacific_midnight() {
    let fake = FakeUpstream::start().await;
    fake.behave(|b| b.script.push_back(Scripted::PerDay429));
    let proxy = start_proxy(
        &fake.url,
        ProxyOpts::keys(&["AIzaDayKey0000000001", "AIzaDayKey0000000002"]),
    )
    .await;
    assert_eq!(
        generate(&proxy.url, "gemini-2.5-flash", "hi")
            .await
            .status(),
        200
    );
    let cds = proxy.state.store.cooldowns().await.unwrap();
    assert_eq!(cds.len(), 1);
    let now = chrono::Utc::now().timestamp_millis();
    let midnight = gemini_quota_proxy::quota::DayInfo::at(chrono_tz::America::Los_Angeles, now)
        .next_midnight_ms;
    let diff = (midnight - now) - cds[0].remaining_ms as i64;
    assert!(
        diff.abs() < 5_000,
        "cooldown ends {diff} ms away from Pacific midnight"
    );
    // RetryInfo said 17 s: ignored for a per-day violation.
    assert!(cds[0].remaining_ms > 17_000 || midnight - now < 17_000);
}

#[tokio::test]
async fn bare_429s_on_most_keys_back_off_the_whole_pool_instead_of_burning_it() {
    let fake = FakeUpstream::start().await;
    let keys = [
        "AIzaThrottle00000001",
        "AIzaThrottle00000002",
        "AIzaThrottle00000003",
    ];
    fake.behave(|b| {
        b.script.push_back(Scripted::Bare429);
        b.script.push_back(Scripted::Bare429);
    });
    let proxy = start_proxy(
        &fake.url,
        ProxyOpts::keys(&keys).toml("[upstream]\nmax_wait_secs = 0\n"),
    )
    .await;
    let r = generate(&proxy.url, "gemini-2.5-flash", "hi").await;
    // Two keys got a bare 429: that is most of three projects, so the pool backs off at once
    // instead of trying the third key, and says when to come back.
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    assert_eq!(fake.calls(":generateContent").len(), 2);
    // Only that model is held, on every project: one model out of capacity stops no other.
    let cds = proxy.state.store.cooldowns().await.unwrap();
    assert_eq!(
        cds.iter().filter(|c| c.model == "gemini-2.5-flash").count(),
        3,
        "{cds:?}"
    );
    assert!(cds.iter().all(|c| c.model != "*"), "{cds:?}");
    // While the pool backs off that model, nothing for it reaches Google.
    let r = generate(&proxy.url, "gemini-2.5-flash", "hi").await;
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    assert_eq!(fake.calls(":generateContent").len(), 2);
    // Another model is served.
    let r = generate(&proxy.url, "gemini-2.0-flash", "hi").await;
    assert_eq!(r.status(), 200);
    // A bare 429 on a second model within the window is evidence across models: now every
    // model of every project is held.
    fake.behave(|b| b.script.push_back(Scripted::Bare429));
    let r = generate(&proxy.url, "gemini-2.0-flash", "again").await;
    assert_eq!(r.status(), 429);
    let cds = proxy.state.store.cooldowns().await.unwrap();
    assert_eq!(cds.iter().filter(|c| c.model == "*").count(), 3, "{cds:?}");
    let before = fake.calls(":generateContent").len();
    let r = generate(&proxy.url, "gemini-2.5-pro", "third model").await;
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    assert_eq!(fake.calls(":generateContent").len(), before);
}
