//! Fallback chains through the whole proxy: a request for a model whose projects are all out
//! is served by the next model of its `[fallbacks]` chain with room (the exhausted model never
//! called), says so in `x-gemini-quota-proxy-model`, and is not when its client or the request
//! opted out; Google's overload answer on every key tried moves it on too, the OpenAI surface's
//! body rewritten; a stream already started is never switched.

use crate::common;

use common::*;
use serde_json::{Value, json};

const ASKED: &str = "gemini-2.5-pro";
const FALLBACK: &str = "gemini-2.5-flash";
const SOLO_KEY: &str = "solo-client-key-0123456789";

/// One key; the asked model allows one request a minute; its chain is the fallback model.
fn opts(extra: &str) -> ProxyOpts {
    ProxyOpts::keys(&["AIzaFallbackKey00001"]).toml(&format!(
        "[limits.models.\"{ASKED}\"]\nminute = 1\n\n[fallbacks]\nenabled = true\n\"{ASKED}\" = [\"{FALLBACK}\"]\n\n{extra}"
    ))
}

async fn ask(proxy: &str, key: &str, header: Option<&str>) -> reqwest::Response {
    let mut req = http()
        .post(format!("{proxy}/v1beta/models/{ASKED}:generateContent"))
        .header("x-goog-api-key", key)
        .json(&json!({"contents": [{"parts": [{"text": "hello there"}]}]}));
    if let Some(h) = header {
        req = req.header("x-gemini-fallback", h);
    }
    req.send().await.unwrap()
}

fn served_by(resp: &reqwest::Response) -> Option<String> {
    resp.headers()
        .get("x-gemini-quota-proxy-model")
        .map(|v| v.to_str().unwrap().to_string())
}

fn calls_for(fake: &FakeUpstream, model: &str) -> usize {
    fake.calls(&format!("/models/{model}:")).len()
}

#[tokio::test]
async fn a_request_whose_model_is_out_everywhere_is_served_by_its_fallback_without_calling_it() {
    let fake = FakeUpstream::start().await;
    let proxy = start_proxy(&fake.url, opts("")).await;
    let first = ask(&proxy.url, CLIENT_KEY, None).await;
    assert_eq!(first.status(), 200);
    assert_eq!(served_by(&first), None, "the asked model had room");
    for _ in 0..3 {
        let r = ask(&proxy.url, CLIENT_KEY, None).await;
        assert_eq!(r.status(), 200);
        assert_eq!(served_by(&r).as_deref(), Some(FALLBACK));
        let v = json_of(r).await;
        assert!(v["candidates"].is_array(), "{v}");
    }
    assert_eq!(
        calls_for(&fake, ASKED),
        1,
        "the exhausted model is never called"
    );
    assert_eq!(calls_for(&fake, FALLBACK), 3);
    // The upstream never sees the proxy's own header.
    assert!(
        fake.recorded()
            .iter()
            .all(|r| !r.headers.contains_key("x-gemini-fallback"))
    );
    // The recorder is the process's: other tests here count too.
    let metrics = metrics_text(&proxy.url).await;
    let counted = metrics
        .lines()
        .filter(|l| {
            l.starts_with("gqp_fallbacks_total")
                && l.contains(&format!("asked=\"{ASKED}\""))
                && l.contains(&format!("served=\"{FALLBACK}\""))
                && l.contains("reason=\"no_room\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>();
    assert!(counted >= 3.0, "{metrics}");
}

#[tokio::test]
async fn with_the_queue_on_a_request_that_cannot_be_admitted_in_its_allowance_falls_back() {
    let fake = FakeUpstream::start().await;
    let proxy = start_proxy(&fake.url, opts("").env("PROXY_QUEUE_MAX_WAIT_SECS", "2")).await;
    assert_eq!(ask(&proxy.url, CLIENT_KEY, None).await.status(), 200);
    let r = ask(&proxy.url, CLIENT_KEY, None).await;
    assert_eq!(r.status(), 200);
    assert_eq!(served_by(&r).as_deref(), Some(FALLBACK));
    assert_eq!(calls_for(&fake, ASKED), 1);
}

#[tokio::test]
async fn no_fallback_for_a_client_that_opted_out_or_a_request_that_said_off() {
    let fake = FakeUpstream::start().await;
    let proxy = start_proxy(
        &fake.url,
        opts(&format!(
            "[[auth.clients]]\nname = \"solo\"\nkey = \"{SOLO_KEY}\"\nfallbacks = false\n"
        )),
    )
    .await;
    assert_eq!(ask(&proxy.url, CLIENT_KEY, None).await.status(), 200);
    // The client that opted out, even when its request names the fallback.
    for header in [None, Some(FALLBACK)] {
        let r = ask(&proxy.url, SOLO_KEY, header).await;
        assert_eq!(r.status(), 429, "{header:?}");
        assert_eq!(served_by(&r), None);
    }
    // A request that said off, or accepts only models outside the chain.
    for header in ["off", "gemini-2.0-flash"] {
        let r = ask(&proxy.url, CLIENT_KEY, Some(header)).await;
        assert_eq!(r.status(), 429, "{header}");
        let v = json_of(r).await;
        assert_eq!(v["error"]["status"], "RESOURCE_EXHAUSTED", "{v}");
    }
    assert_eq!(calls_for(&fake, FALLBACK), 0);
    // A request that names the fallback takes it.
    let r = ask(&proxy.url, CLIENT_KEY, Some(FALLBACK)).await;
    assert_eq!(served_by(&r).as_deref(), Some(FALLBACK));
    assert_eq!(calls_for(&fake, ASKED), 1);
}

#[tokio::test]
async fn a_model_overloaded_on_every_key_tried_is_answered_by_its_fallback() {
    let fake = FakeUpstream::start().await;
    fake.behave(|b| {
        b.overloaded_models.insert(ASKED.to_string());
    });
    let proxy = start_proxy(
        &fake.url,
        ProxyOpts::keys(&["AIzaOverloadKey00001", "AIzaOverloadKey00002"]).toml(&format!(
            "[fallbacks]\nenabled = true\n\"{ASKED}\" = [\"{FALLBACK}\"]\n"
        )),
    )
    .await;
    let r = ask(&proxy.url, CLIENT_KEY, None).await;
    assert_eq!(r.status(), 200);
    assert_eq!(served_by(&r).as_deref(), Some(FALLBACK));
    assert!(calls_for(&fake, ASKED) >= 2, "every key was tried first");
    assert_eq!(calls_for(&fake, FALLBACK), 1);

    // The OpenAI-compatible surface names the model in the body: rewritten there.
    let r = http()
        .post(format!("{}/v1beta/openai/chat/completions", proxy.url))
        .bearer_auth(CLIENT_KEY)
        .json(&json!({"model": ASKED, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(served_by(&r).as_deref(), Some(FALLBACK));
    let bodies: Vec<Value> = fake
        .calls("/chat/completions")
        .iter()
        .map(|c| serde_json::from_slice(&c.body).unwrap())
        .collect();
    assert!(bodies.iter().any(|b| b["model"] == ASKED));
    assert_eq!(bodies.last().unwrap()["model"], FALLBACK);
    assert_eq!(bodies.last().unwrap()["messages"][0]["content"], "hi");

    // Without a chain, Google's 503 is the answer.
    let r = http()
        .post(format!(
            "{}/v1beta/models/{ASKED}:generateContent",
            proxy.url
        ))
        .header("x-goog-api-key", CLIENT_KEY)
        .header("x-gemini-fallback", "off")
        .json(&json!({"contents": [{"parts": [{"text": "hi"}]}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_is_never_switched_once_its_first_byte_left() {
    let fake = FakeUpstream::start().await;
    fake.behave(|b| {
        b.stream_events = 5;
        b.stream_delay = std::time::Duration::from_millis(100);
        b.cut_stream_after = Some(2);
    });
    let proxy = start_proxy(
        &fake.url,
        ProxyOpts::keys(&["AIzaStreamKey0000001"]).toml(&format!(
            "[fallbacks]\nenabled = true\n\"{ASKED}\" = [\"{FALLBACK}\"]\n"
        )),
    )
    .await;
    let resp = http()
        .post(format!(
            "{}/v1beta/models/{ASKED}:streamGenerateContent?alt=sse",
            proxy.url
        ))
        .header("x-goog-api-key", CLIENT_KEY)
        .json(&json!({"contents": [{"parts": [{"text": "stream please"}]}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(served_by(&resp), None);
    // The stream breaks off after its first events: the client sees that, not another model.
    let mut s = resp.bytes_stream();
    let mut got = Vec::new();
    let mut failed = false;
    while let Some(c) = futures_util::StreamExt::next(&mut s).await {
        match c {
            Ok(b) => got.extend_from_slice(&b),
            Err(_) => {
                failed = true;
                break;
            }
        }
    }
    assert!(failed, "the cut reached the client as a failure");
    assert!(String::from_utf8_lossy(&got).contains("data: "));
    assert_eq!(calls_for(&fake, FALLBACK), 0);
    assert_eq!(calls_for(&fake, ASKED), 1);

    // Before its first byte, a stream may be served by the fallback (the asked model is out).
    let proxy = start_proxy(&fake.url, opts("")).await;
    fake.behave(|b| {
        b.cut_stream_after = None;
        b.stream_delay = std::time::Duration::ZERO;
    });
    assert_eq!(ask(&proxy.url, CLIENT_KEY, None).await.status(), 200);
    let resp = http()
        .post(format!(
            "{}/v1beta/models/{ASKED}:streamGenerateContent?alt=sse",
            proxy.url
        ))
        .header("x-goog-api-key", CLIENT_KEY)
        .json(&json!({"contents": [{"parts": [{"text": "stream please"}]}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(served_by(&resp).as_deref(), Some(FALLBACK));
    let text = resp.text().await.unwrap();
    assert!(text.contains("data: "), "{text}");
}

#[tokio::test]
async fn a_fallback_without_room_now_is_waited_for_within_the_requests_allowance() {
    let fake = FakeUpstream::start().await;
    let proxy = start_proxy(
        &fake.url,
        ProxyOpts::keys(&["AIzaFallbackWait0001"])
            .env("PROXY_QUEUE_MAX_WAIT_SECS", "10")
            .toml(&format!(
                "[limits]\nwindow_secs = 1\n\n[limits.models.\"{ASKED}\"]\ndaily = 1\n\n[limits.models.\"{FALLBACK}\"]\nminute = 1\n\n[fallbacks]\nenabled = true\n\"{ASKED}\" = [\"{FALLBACK}\"]\n"
            )),
    )
    .await;
    assert_eq!(ask(&proxy.url, CLIENT_KEY, None).await.status(), 200);
    // The fallback's window is full; the asked model is out for the day (never waited for).
    assert_eq!(generate(&proxy.url, FALLBACK, "fill").await.status(), 200);
    let r = ask(&proxy.url, CLIENT_KEY, None).await;
    assert_eq!(r.status(), 200);
    assert_eq!(served_by(&r).as_deref(), Some(FALLBACK));
    assert!(
        r.headers().contains_key("x-gemini-quota-proxy-waited-ms"),
        "it waited in the fallback's line"
    );
    assert_eq!(calls_for(&fake, ASKED), 1);
    assert_eq!(calls_for(&fake, FALLBACK), 2);
}

/// Requests per group of `/api/ai/usage/?group_by=BY`, summed over the window's points.
async fn usage_by(proxy: &str, by: &str) -> std::collections::BTreeMap<String, u64> {
    let r = http()
        .get(format!("{proxy}/api/ai/usage/?group_by={by}"))
        .header("x-goog-api-key", ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v = json_of(r).await;
    v["series"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let requests = s["points"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["requests"].as_u64().unwrap_or(0))
                .sum();
            (s["group"][by].as_str().unwrap().to_string(), requests)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_usage_history_records_the_model_asked_for_beside_the_one_that_served() {
    let redis = RedisServer::start();
    for shared in [false, true] {
        let fake = FakeUpstream::start().await;
        let mut o = opts("");
        if shared {
            o = o.env("REDIS_URL", &redis.url);
        }
        let proxy = start_proxy(&fake.url, o).await;
        for _ in 0..4 {
            assert_eq!(ask(&proxy.url, CLIENT_KEY, None).await.status(), 200);
        }
        let p = &proxy.url;
        let want = |pairs: &[(&str, u64)]| -> std::collections::BTreeMap<String, u64> {
            pairs.iter().map(|(m, n)| (m.to_string(), *n)).collect()
        };
        // Served: one by the asked model, three by its fallback; asked: all four for it.
        let (mut by_model, mut by_asked) = Default::default();
        let mut settled = false;
        // The shared ledger's sums reach Redis within a second or two.
        for _ in 0..100 {
            by_model = usage_by(p, "model").await;
            by_asked = usage_by(p, "asked_model").await;
            settled =
                by_model == want(&[(ASKED, 1), (FALLBACK, 3)]) && by_asked == want(&[(ASKED, 4)]);
            if settled {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        assert!(
            settled,
            "shared={shared}: by model {by_model:?}, asked {by_asked:?}"
        );
    }
}
