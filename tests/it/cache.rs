//! The response cache, end to end through the real proxy on real sockets, in memory and in a
//! real Redis: repeated requests answered without spending quota or calling Google, streams
//! replayed byte for byte, every body field in the key, client and shared scopes, the request's
//! Cache-Control, expiry, what is never stored, replicas sharing entries, single flight, and
//! the admin clear.

use crate::common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};

const MODEL: &str = "gemini-2.5-flash";
const OTHER_CLIENT: &str = "other-client-key-000111";

/// A proxy with the cache on (in the Redis at `redis`, when given) and `extra` settings.
async fn proxy(fake: &FakeUpstream, redis: Option<&str>, extra: &[(&str, &str)]) -> Proxy {
    let mut o = ProxyOpts::keys(&["AIzaCacheKey000001"])
        .env("PROXY_CACHE", "on")
        .env(
            "PROXY_CLIENT_KEYS",
            &format!("first:{CLIENT_KEY},second:{OTHER_CLIENT}"),
        );
    if let Some(url) = redis {
        o = o.env("REDIS_URL", url);
    }
    for (k, v) in extra {
        o = o.env(k, v);
    }
    start_proxy(&fake.url, o).await
}

/// A deterministic generation (temperature 0) of `text`.
fn prompt(text: &str) -> Value {
    json!({"contents": [{"role": "user", "parts": [{"text": text}]}],
           "generationConfig": {"temperature": 0}})
}

/// One answer: status, the cache header, the `Age` header and the body's bytes.
struct Got {
    status: u16,
    cache: String,
    age: Option<u64>,
    body: Vec<u8>,
}

async fn ask(base: &str, path: &str, body: &Value, key: &str, cache_control: Option<&str>) -> Got {
    let mut r = http()
        .post(format!("{base}{path}"))
        .header("x-goog-api-key", key)
        .json(body);
    if let Some(cc) = cache_control {
        r = r.header("cache-control", cc);
    }
    let resp = r.send().await.unwrap();
    let header = |n: &str| {
        resp.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let cache = header("x-gemini-quota-proxy-cache").unwrap_or_default();
    let age = header("age").and_then(|a| a.parse().ok());
    let status = resp.status().as_u16();
    let body = resp.bytes().await.unwrap().to_vec();
    Got {
        status,
        cache,
        age,
        body,
    }
}

fn generate_path() -> String {
    format!("/v1beta/models/{MODEL}:generateContent")
}

async fn gen_(base: &str, body: &Value, cc: Option<&str>) -> Got {
    ask(base, &generate_path(), body, CLIENT_KEY, cc).await
}

/// Requests the quota store counted today (all keys).
async fn daily_requests(base: &str) -> u64 {
    let (code, s) = quota_status(base, CLIENT_KEY).await;
    assert_eq!(code, 200, "{s}");
    s.pointer("/quota_status/usage/daily_requests")
        .and_then(Value::as_u64)
        .unwrap()
}

/// The usage ledger's totals over the last hour.
async fn usage_totals(base: &str) -> Value {
    let r = http()
        .get(format!("{base}/api/ai/usage/?window=1h"))
        .header("x-goog-api-key", ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    json_of(r).await["totals"].clone()
}

// ---------- miss then hit ----------

async fn miss_then_hit(redis: Option<&str>) {
    let fake = FakeUpstream::start().await;
    let p = proxy(&fake, redis, &[]).await;
    let body = prompt("cache me");
    let first = gen_(&p.url, &body, None).await;
    assert_eq!((first.status, first.cache.as_str()), (200, "MISS"));
    let used = daily_requests(&p.url).await;
    assert_eq!(used, 1);
    // The entry is stored as the answer ends, off the client's path.
    let mut second = gen_(&p.url, &body, None).await;
    for _ in 0..100 {
        if second.cache == "HIT" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        second = gen_(&p.url, &body, None).await;
    }
    assert_eq!((second.status, second.cache.as_str()), (200, "HIT"));
    assert_eq!(second.body, first.body, "the hit is the stored answer");
    assert!(second.age.is_some(), "a hit says its age");
    let calls = fake.calls(":generateContent").len();
    let hit_again = gen_(&p.url, &body, None).await;
    assert_eq!(hit_again.cache, "HIT");
    assert_eq!(
        fake.calls(":generateContent").len(),
        calls,
        "a hit calls no upstream"
    );
    assert_eq!(daily_requests(&p.url).await, used, "a hit spends no quota");
    // The ledger counts what the hits saved.
    // (Redis: the ledger writes within about a second.)
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut totals = usage_totals(&p.url).await;
    while totals["cache_hits"].as_u64() < Some(2) && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        totals = usage_totals(&p.url).await;
    }
    let hits = totals["cache_hits"].as_u64().unwrap();
    assert!(hits >= 2, "{totals}");
    assert!(
        totals["saved_tokens"].as_u64().unwrap() >= hits * 3,
        "{totals}"
    );
    assert!(totals["saved_cost_usd"].as_f64().unwrap() > 0.0, "{totals}");
    let text = metrics_text(&p.url).await;
    assert!(
        text.contains("gqp_cache_requests_total{result=\"hit\"}"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_miss_then_hit_spends_no_quota_and_calls_no_upstream() {
    miss_then_hit(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_miss_then_hit_spends_no_quota_and_calls_no_upstream() {
    let redis = RedisServer::start();
    miss_then_hit(Some(&redis.url)).await;
    // Entries live under the namespace's hash tag, and no credential is in Redis.
    let keys = redis.all_keys();
    assert!(keys.contains("{gqp}:cache:gemini-2.5-flash:"), "{keys}");
    assert!(
        !keys.contains(CLIENT_KEY) && !keys.contains("AIza"),
        "{keys}"
    );
}

/// Ask until the answer is a hit (the store is written as the answer ends, just after the
/// client has it): at most 100 tries, 20 ms apart.
async fn until_hit(base: &str, path: &str, body: &Value, key: &str) -> Got {
    until_hit_counting(base, path, body, key).await.0
}

/// [`until_hit`], and how many misses came first (each went to the upstream: the entry of a
/// Redis cache lands a moment after the answer that filled it).
async fn until_hit_counting(base: &str, path: &str, body: &Value, key: &str) -> (Got, usize) {
    for misses in 0..100 {
        let g = ask(base, path, body, key, None).await;
        if g.cache == "HIT" {
            return (g, misses);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("never a hit");
}

// ---------- streams ----------

async fn streams_replay_byte_identical(redis: Option<&str>) {
    let fake = FakeUpstream::start().await;
    fake.behave(|b| {
        b.stream_events = 4;
        b.stream_delay = Duration::from_millis(30);
    });
    let p = proxy(&fake, redis, &[]).await;
    for (path, events) in [
        (
            format!("/v1beta/models/{MODEL}:streamGenerateContent?alt=sse"),
            4,
        ),
        (format!("/v1beta/models/{MODEL}:streamGenerateContent"), 4),
    ] {
        let body = prompt(&format!("stream {path}"));
        let first = ask(&p.url, &path, &body, CLIENT_KEY, None).await;
        assert_eq!(
            (first.status, first.cache.as_str()),
            (200, "MISS"),
            "{path}"
        );
        let calls = fake.calls(":streamGenerateContent").len();
        let (hit, misses) = until_hit_counting(&p.url, &path, &body, CLIENT_KEY).await;
        assert_eq!(hit.body, first.body, "{path}: replayed byte for byte");
        // The hit itself reached no upstream (only misses before the entry landed did).
        assert_eq!(
            fake.calls(":streamGenerateContent").len(),
            calls + misses,
            "{path}"
        );
        // Stored frame by frame, as the events came (30 ms apart).
        let cache = p.state.cache.as_ref().unwrap();
        let text = String::from_utf8(hit.body.clone()).unwrap();
        assert_eq!(text.matches("chunk ").count(), events, "{path}: {text}");
        assert!(
            eventually(Duration::from_secs(5), || cache.flights.is_empty()).await,
            "no flight left behind"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_streams_are_replayed_byte_identical_sse_and_json_array() {
    streams_replay_byte_identical(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_streams_are_replayed_byte_identical_sse_and_json_array() {
    let redis = RedisServer::start();
    streams_replay_byte_identical(Some(&redis.url)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_keeps_its_frame_boundaries() {
    let fake = FakeUpstream::start().await;
    fake.behave(|b| {
        b.stream_events = 3;
        b.stream_delay = Duration::from_millis(40);
    });
    let p = proxy(&fake, None, &[]).await;
    let path = format!("/v1beta/models/{MODEL}:streamGenerateContent?alt=sse");
    let body = prompt("boundaries");
    let first = ask(&p.url, &path, &body, CLIENT_KEY, None).await;
    until_hit(&p.url, &path, &body, CLIENT_KEY).await;
    // The one entry holds the events as separate frames, in order, adding up to the answer.
    let gemini_quota_proxy::cache::store::Store::Memory(m) = &p.state.cache.as_ref().unwrap().store
    else {
        panic!("memory backend")
    };
    let entries: Vec<_> = m.iter().map(|(_, e)| e).collect();
    assert_eq!(entries.len(), 1);
    let chunks = &entries[0].chunks;
    assert!(chunks.len() >= 3, "{} frames", chunks.len());
    for c in chunks {
        assert!(c.starts_with(b"data: "), "a frame is one event: {c:?}");
    }
    assert_eq!(chunks.concat(), first.body);
}

// ---------- the key ----------

async fn every_field_counts(redis: Option<&str>) {
    let fake = FakeUpstream::start().await;
    let p = proxy(&fake, redis, &[]).await;
    let base = prompt("same prompt");
    gen_(&p.url, &base, None).await;
    until_hit(&p.url, &generate_path(), &base, CLIENT_KEY).await;
    let mut config = base.clone();
    config["generationConfig"]["maxOutputTokens"] = json!(10);
    let mut system = base.clone();
    system["systemInstruction"] = json!({"parts": [{"text": "be brief"}]});
    let mut safety = base.clone();
    safety["safetySettings"] =
        json!([{"category": "HARM_CATEGORY_HATE_SPEECH", "threshold": "BLOCK_NONE"}]);
    let mut number = base.clone();
    number["generationConfig"]["temperature"] = json!(0.0);
    for (what, body) in [
        ("generationConfig", config),
        ("systemInstruction", system),
        ("safetySettings", safety),
        ("a number written otherwise", number),
    ] {
        assert_eq!(gen_(&p.url, &body, None).await.cache, "MISS", "{what}");
    }
    // The same body with its keys in another order and other spacing is the same request.
    let reordered: Value = serde_json::from_str(
        r#"{ "generationConfig" : {"temperature": 0},
             "contents": [{"parts": [{"text": "same prompt"}], "role": "user"}] }"#,
    )
    .unwrap();
    assert_eq!(gen_(&p.url, &reordered, None).await.cache, "HIT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_a_different_generation_config_or_system_instruction_misses() {
    every_field_counts(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_a_different_generation_config_or_system_instruction_misses() {
    let redis = RedisServer::start();
    every_field_counts(Some(&redis.url)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_client_misses_under_client_scope_and_hits_under_shared() {
    for redis in [None, Some(RedisServer::start())] {
        let url = redis.as_ref().map(|r| r.url.clone());
        let path = generate_path();
        let body = prompt("scoped");
        for (scope, expected) in [("client", "MISS"), ("shared", "HIT")] {
            let fake = FakeUpstream::start().await;
            let toml = format!("[cache]\nscope = \"{scope}\"\n");
            let mut o = ProxyOpts::keys(&["AIzaCacheKey000001"])
                .env("PROXY_CACHE", "on")
                .env(
                    "PROXY_CLIENT_KEYS",
                    &format!("first:{CLIENT_KEY},second:{OTHER_CLIENT}"),
                )
                .env("PROXY_CACHE_TTL_SECS", "60")
                .toml(&toml);
            if let Some(u) = &url {
                o = o.env("REDIS_URL", u);
            }
            let p = start_proxy(&fake.url, o).await;
            if let Some(c) = &p.state.cache {
                c.store.clear(None).await.unwrap();
            }
            ask(&p.url, &path, &body, CLIENT_KEY, None).await;
            until_hit(&p.url, &path, &body, CLIENT_KEY).await;
            let other = ask(&p.url, &path, &body, OTHER_CLIENT, None).await;
            assert_eq!(other.cache, expected, "scope {scope}, redis {url:?}");
        }
    }
}

// ---------- Cache-Control ----------

async fn cache_control(redis: Option<&str>) {
    let fake = FakeUpstream::start().await;
    let p = proxy(&fake, redis, &[]).await;
    let body = prompt("directives");
    let calls = || fake.calls(":generateContent").len();

    // no-store: neither read nor written.
    let g = gen_(&p.url, &body, Some("no-store")).await;
    assert_eq!(g.cache, "BYPASS");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let g = gen_(&p.url, &body, None).await;
    assert_eq!(g.cache, "MISS", "no-store stored nothing");
    until_hit(&p.url, &generate_path(), &body, CLIENT_KEY).await;
    assert_eq!(gen_(&p.url, &body, Some("no-store")).await.cache, "BYPASS");

    // no-cache: the lookup is skipped, the fresh answer stored. Google's answer changed
    // meanwhile (another usage count), so the fresh one is told apart from the old entry.
    let old = gen_(&p.url, &body, None).await;
    assert_eq!(old.cache, "HIT");
    fake.behave(|b| b.prompt_tokens = Some(4242));
    let before = calls();
    let g = gen_(&p.url, &body, Some("no-cache")).await;
    assert_ne!(g.body, old.body, "Google's answer changed");
    assert_eq!(g.cache, "MISS");
    assert_eq!(calls(), before + 1, "no-cache went upstream");
    // ... and its fresh answer replaced the entry: a plain request after it hits and gets it.
    let fresh = g.body.clone();
    let mut later = gen_(&p.url, &body, None).await;
    for _ in 0..100 {
        if later.cache == "HIT" && later.body == fresh {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        later = gen_(&p.url, &body, None).await;
    }
    assert_eq!(later.cache, "HIT");
    assert_eq!(
        later.body, fresh,
        "the plain request got the no-cache answer"
    );
    assert_eq!(calls(), before + 1, "the plain request went nowhere");
    fake.behave(|b| b.prompt_tokens = None);

    // max-age: an entry older than it is not taken.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let before = calls();
    let g = gen_(&p.url, &body, Some("max-age=0")).await;
    assert_eq!(
        g.cache, "MISS",
        "an entry a second old is older than max-age=0"
    );
    assert_eq!(calls(), before + 1);
    let g = gen_(&p.url, &body, Some("max-age=600")).await;
    assert_eq!(g.cache, "HIT");
    assert!(g.age.is_some_and(|a| a <= 600));

    // max-age lets a nondeterministic generation be cached, with that time to live.
    let warm = json!({"contents": [{"role": "user", "parts": [{"text": "warm"}]}],
                      "generationConfig": {"temperature": 0.9}});
    assert_eq!(gen_(&p.url, &warm, None).await.cache, "BYPASS");
    assert_eq!(gen_(&p.url, &warm, None).await.cache, "BYPASS");
    assert_eq!(gen_(&p.url, &warm, Some("max-age=1")).await.cache, "MISS");
    let mut hit = false;
    for _ in 0..50 {
        if gen_(&p.url, &warm, Some("max-age=1")).await.cache == "HIT" {
            hit = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(hit, "stored under max-age");
    // Stored with a time to live of one second: gone after it.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(gen_(&p.url, &warm, Some("max-age=600")).await.cache, "MISS");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_no_cache_no_store_and_max_age() {
    cache_control(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_no_cache_no_store_and_max_age() {
    let redis = RedisServer::start();
    cache_control(Some(&redis.url)).await;
}

async fn ttl_expiry(redis: Option<&str>) {
    let fake = FakeUpstream::start().await;
    let p = proxy(&fake, redis, &[("PROXY_CACHE_TTL_SECS", "1")]).await;
    let body = prompt("short lived");
    gen_(&p.url, &body, None).await;
    until_hit(&p.url, &generate_path(), &body, CLIENT_KEY).await;
    // The time to live runs out: a second later the entry is gone.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let before = fake.calls(":generateContent").len();
    assert_eq!(gen_(&p.url, &body, None).await.cache, "MISS");
    assert_eq!(fake.calls(":generateContent").len(), before + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_entries_expire_after_their_ttl() {
    ttl_expiry(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_entries_expire_after_their_ttl() {
    let redis = RedisServer::start();
    ttl_expiry(Some(&redis.url)).await;
}

// ---------- never stored ----------

async fn never_stored(redis: Option<&str>) {
    let fake = FakeUpstream::start().await;
    let p = proxy(&fake, redis, &[]).await;
    let path = generate_path();
    let stream = format!("/v1beta/models/{MODEL}:streamGenerateContent?alt=sse");
    // Each answer twice: both go upstream.
    type Setup = fn(&FakeUpstream);
    let cases: [(&str, &str, Setup); 7] = [
        ("an error", &path, |f| {
            f.behave(|b| b.script.push_back(Scripted::Status(400)))
        }),
        ("MAX_TOKENS", &path, |f| {
            f.behave(|b| b.finish_reason = Some("MAX_TOKENS"))
        }),
        ("SAFETY", &path, |f| {
            f.behave(|b| b.finish_reason = Some("SAFETY"))
        }),
        ("a blocked prompt", &path, |f| {
            f.behave(|b| b.block_prompt = true)
        }),
        ("a SAFETY stream", &stream, |f| {
            f.behave(|b| b.finish_reason = Some("SAFETY"))
        }),
        ("a cut stream", &stream, |f| {
            f.behave(|b| b.cut_stream_after = Some(1))
        }),
        ("a grounded answer", &path, |f| {
            f.behave(|b| b.grounding = true)
        }),
    ];
    for (i, (what, path, setup)) in cases.into_iter().enumerate() {
        let body = prompt(&format!("never {i}"));
        setup(&fake);
        let part = if path.contains("stream") {
            ":streamGenerateContent"
        } else {
            ":generateContent"
        };
        let before = fake.calls(part).len();
        let first = ask(&p.url, path, &body, CLIENT_KEY, None).await;
        assert_eq!(first.cache, "MISS", "{what}");
        // The flight it led lands once the store has decided (stored or not).
        let cache = p.state.cache.clone().unwrap();
        assert!(
            eventually(Duration::from_secs(5), || cache.flights.is_empty()).await,
            "{what}: the flight never landed"
        );
        if what == "an error" {
            assert_eq!(first.status, 400);
        }
        let second = ask(&p.url, path, &body, CLIENT_KEY, None).await;
        assert_eq!(second.cache, "MISS", "{what} was stored");
        assert_eq!(fake.calls(part).len(), before + 2, "{what}");
        fake.behave(|b| {
            b.finish_reason = None;
            b.block_prompt = false;
            b.cut_stream_after = None;
            b.grounding = false;
            b.script.clear();
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_errors_max_tokens_safety_grounding_and_cut_streams_are_never_stored() {
    never_stored(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_errors_max_tokens_safety_grounding_and_cut_streams_are_never_stored() {
    let redis = RedisServer::start();
    never_stored(Some(&redis.url)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nondeterministic_and_file_requests_bypass_unless_allowed() {
    let fake = FakeUpstream::start().await;
    let p = proxy(&fake, None, &[]).await;
    let warm = json!({"contents": [{"role": "user", "parts": [{"text": "no temperature"}]}]});
    assert_eq!(gen_(&p.url, &warm, None).await.cache, "BYPASS");
    let file = json!({"contents": [{"role": "user", "parts": [{"fileData": {"fileUri": "https://generativelanguage.googleapis.com/v1beta/files/abc", "mimeType": "text/plain"}}]}],
                      "generationConfig": {"temperature": 0}});
    assert_eq!(gen_(&p.url, &file, None).await.cache, "BYPASS");
    // Embeddings and token counts are deterministic: cached as they are.
    let embed = json!({"content": {"parts": [{"text": "embed me"}]}});
    let path = "/v1beta/models/gemini-embedding-001:embedContent";
    assert_eq!(
        ask(&p.url, path, &embed, CLIENT_KEY, None).await.cache,
        "MISS"
    );
    until_hit(&p.url, path, &embed, CLIENT_KEY).await;
    let path = format!("/v1beta/models/{MODEL}:countTokens");
    assert_eq!(
        ask(&p.url, &path, &prompt("count"), CLIENT_KEY, None)
            .await
            .cache,
        "MISS"
    );
    until_hit(&p.url, &path, &prompt("count"), CLIENT_KEY).await;
    // The OpenAI surface: chat completions at temperature 0 are cached; without it, bypassed.
    let chat = json!({"model": MODEL, "temperature": 0,
                      "messages": [{"role": "user", "content": "openai hello"}]});
    let path = "/v1beta/openai/chat/completions";
    assert_eq!(
        ask(&p.url, path, &chat, CLIENT_KEY, None).await.cache,
        "MISS"
    );
    let hit = until_hit(&p.url, path, &chat, CLIENT_KEY).await;
    assert!(String::from_utf8_lossy(&hit.body).contains("echo: openai hello"));
    let mut warm_chat = chat.clone();
    warm_chat.as_object_mut().unwrap().remove("temperature");
    assert_eq!(
        ask(&p.url, path, &warm_chat, CLIENT_KEY, None).await.cache,
        "BYPASS"
    );
    drop(p);
    // cache.nondeterministic = true caches them too.
    let p = start_proxy(
        &fake.url,
        ProxyOpts::keys(&["AIzaCacheKey000001"])
            .env("PROXY_CACHE", "on")
            .toml("[cache]\nnondeterministic = true\n"),
    )
    .await;
    assert_eq!(gen_(&p.url, &warm, None).await.cache, "MISS");
    until_hit(&p.url, &generate_path(), &warm, CLIENT_KEY).await;
}

// ---------- replicas and single flight ----------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_one_redis_share_entries() {
    let redis = RedisServer::start();
    let fake = FakeUpstream::start().await;
    let a = proxy(&fake, Some(&redis.url), &[]).await;
    let b = proxy(&fake, Some(&redis.url), &[]).await;
    let body = prompt("shared by replicas");
    assert_eq!(gen_(&a.url, &body, None).await.cache, "MISS");
    // The entry is written to Redis after the answer ends (off the response path): once
    // replica A reads it back from Redis, replica B must hit at its first ask. (Asking B
    // before the write lands was a miss of its own, and a second upstream call.)
    until_hit(&a.url, &generate_path(), &body, CLIENT_KEY).await;
    let hit = ask(&b.url, &generate_path(), &body, CLIENT_KEY, None).await;
    assert_eq!(hit.cache, "HIT");
    assert_eq!(hit.status, 200);
    assert_eq!(
        fake.calls(":generateContent").len(),
        1,
        "one upstream call for both"
    );
}

async fn single_flight(redis: Option<&str>) {
    let fake = FakeUpstream::start().await;
    fake.behave(|b| b.answer_delay = Duration::from_millis(400));
    let p = proxy(&fake, redis, &[]).await;
    let body = prompt("twenty at once");
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let (url, body) = (p.url.clone(), body.clone());
        tasks.push(tokio::spawn(async move { gen_(&url, &body, None).await }));
    }
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.unwrap());
    }
    assert!(answers.iter().all(|g| g.status == 200));
    assert_eq!(fake.calls(":generateContent").len(), 1, "one upstream call");
    assert_eq!(answers.iter().filter(|g| g.cache == "MISS").count(), 1);
    assert_eq!(answers.iter().filter(|g| g.cache == "HIT").count(), 19);
    assert!(answers.iter().all(|g| g.body == answers[0].body));
    let cache = p.state.cache.as_ref().unwrap();
    // A flight ends when its leader's answer lands, in the background after the body ends.
    assert!(eventually(Duration::from_secs(5), || cache.flights.is_empty()).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_twenty_identical_concurrent_misses_make_one_upstream_call() {
    single_flight(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_twenty_identical_concurrent_misses_make_one_upstream_call() {
    let redis = RedisServer::start();
    single_flight(Some(&redis.url)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leaders_error_sends_the_followers_upstream_at_once_not_one_after_another() {
    let fake = FakeUpstream::start().await;
    // Every answer is Google's 400, after a pause (so the others join the first one's flight).
    let delay = Duration::from_millis(500);
    fake.behave(|b| {
        b.answer_delay = delay;
        for _ in 0..5 {
            b.script.push_back(Scripted::Status(400));
        }
    });
    let p = proxy(&fake, None, &[]).await;
    let body = prompt("leader fails");
    let started = std::time::Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..5 {
        let (url, body) = (p.url.clone(), body.clone());
        tasks.push(tokio::spawn(async move { gen_(&url, &body, None).await }));
    }
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.unwrap());
    }
    let took = started.elapsed();
    assert!(answers.iter().all(|g| g.status == 400));
    assert_eq!(fake.calls(":generateContent").len(), 5, "each its own call");
    // One after another would take five pauses; at once, about two (the leader's, then theirs).
    assert!(took < delay * 4, "{took:?}");
    let cache = p.state.cache.as_ref().unwrap();
    // A flight ends when its leader's answer lands, in the background after the body ends.
    assert!(eventually(Duration::from_secs(5), || cache.flights.is_empty()).await);
}

/// A request body sent as raw bytes.
async fn ask_raw(base: &str, body: &str, headers: &[(&str, &str)]) -> Got {
    let mut r = http()
        .post(format!("{base}{}", generate_path()))
        .header("x-goog-api-key", CLIENT_KEY)
        .header("content-type", "application/json")
        .body(body.to_string());
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    let resp = r.send().await.unwrap();
    let cache = resp
        .headers()
        .get("x-gemini-quota-proxy-cache")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let status = resp.status().as_u16();
    Got {
        status,
        cache,
        age: None,
        body: resp.bytes().await.unwrap().to_vec(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_naming_a_field_twice_bypasses_and_stores_nothing() {
    let fake = FakeUpstream::start().await;
    let p = proxy(&fake, None, &[]).await;
    let a = r#"[{"role": "user", "parts": [{"text": "AAA"}]}]"#;
    let b = r#"[{"role": "user", "parts": [{"text": "BBB"}]}]"#;
    let cfg = r#""generationConfig": {"temperature": 0}"#;
    let twice = format!(r#"{{"contents": {a}, {cfg}, "contents": {b}}}"#);
    let only_b = format!(r#"{{"contents": {b}, {cfg}}}"#);
    for _ in 0..2 {
        let g = ask_raw(&p.url, &twice, &[]).await;
        assert_eq!((g.status, g.cache.as_str()), (200, "BYPASS"));
    }
    // Nothing was stored under the key the last "contents" would give.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(ask_raw(&p.url, &only_b, &[]).await.cache, "MISS");
    assert_eq!(fake.calls(":generateContent").len(), 3);
    let cache = p.state.cache.as_ref().unwrap();
    // A flight ends when its leader's answer lands, in the background after the body ends.
    assert!(eventually(Duration::from_secs(5), || cache.flights.is_empty()).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_goog_header_that_shapes_the_answer_bypasses_but_sdk_telemetry_does_not() {
    let fake = FakeUpstream::start().await;
    let p = proxy(&fake, None, &[]).await;
    let body = r#"{"contents": [{"parts": [{"text": "masked"}]}], "generationConfig": {"temperature": 0}}"#;
    let mask = [("x-goog-fieldmask", "candidates.content")];
    // A trimmed answer is neither stored ...
    assert_eq!(ask_raw(&p.url, body, &mask).await.cache, "BYPASS");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let telemetry = [("x-goog-api-client", "google-genai-sdk/1.0 gl-python/3.12")];
    assert_eq!(ask_raw(&p.url, body, &telemetry).await.cache, "MISS");
    // ... nor served a whole stored one.
    let mut hit = false;
    for _ in 0..100 {
        if ask_raw(&p.url, body, &telemetry).await.cache == "HIT" {
            hit = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        hit,
        "the SDK's telemetry header does not keep it from the cache"
    );
    assert_eq!(ask_raw(&p.url, body, &mask).await.cache, "BYPASS");
    let project = [("x-goog-user-project", "another")];
    assert_eq!(ask_raw(&p.url, body, &project).await.cache, "BYPASS");
    assert_eq!(fake.calls(":generateContent").len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn identical_streams_at_once_each_stream_their_own_miss() {
    let fake = FakeUpstream::start().await;
    fake.behave(|b| {
        b.stream_events = 4;
        b.stream_delay = Duration::from_millis(200);
    });
    let p = proxy(&fake, None, &[]).await;
    let path = format!("/v1beta/models/{MODEL}:streamGenerateContent?alt=sse");
    let body = prompt("streams at once");
    let mut tasks = Vec::new();
    for _ in 0..2 {
        let (url, path, body) = (p.url.clone(), path.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            let resp = http()
                .post(format!("{url}{path}"))
                .header("x-goog-api-key", CLIENT_KEY)
                .json(&body)
                .send()
                .await
                .unwrap();
            let cache = resp.headers()["x-gemini-quota-proxy-cache"]
                .to_str()
                .unwrap()
                .to_string();
            let started = std::time::Instant::now();
            let mut resp = resp;
            let first = resp.chunk().await.unwrap();
            let first_at = started.elapsed();
            while resp.chunk().await.unwrap().is_some() {}
            (cache, first.is_some(), first_at, started.elapsed())
        }));
    }
    for t in tasks {
        let (cache, some, first_at, all) = t.await.unwrap();
        assert_eq!(cache, "MISS");
        assert!(some);
        // The first event comes well before the stream's end: nobody waits on another's.
        assert!(first_at < all, "{first_at:?} vs {all:?}");
    }
    assert_eq!(fake.calls(":streamGenerateContent").len(), 2);
    let cache = p.state.cache.as_ref().unwrap();
    // A flight ends when its leader's answer lands, in the background after the body ends.
    assert!(eventually(Duration::from_secs(5), || cache.flights.is_empty()).await);
    until_hit(&p.url, &path, &body, CLIENT_KEY).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_waits_no_longer_than_its_max_wait() {
    let fake = FakeUpstream::start().await;
    fake.behave(|b| b.answer_delay = Duration::from_millis(1500));
    let p = proxy(&fake, None, &[]).await;
    let body = prompt("patience");
    let leader = {
        let (url, body) = (p.url.clone(), body.clone());
        tokio::spawn(async move { gen_(&url, &body, None).await })
    };
    let cache = p.state.cache.clone().unwrap();
    assert!(eventually(Duration::from_secs(5), || !cache.flights.is_empty()).await);
    // Willing to wait 0.2 s: it stops following and goes upstream on its own.
    let resp = http()
        .post(format!("{}{}", p.url, generate_path()))
        .header("x-goog-api-key", CLIENT_KEY)
        .header("x-gemini-max-wait", "0.2")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-gemini-quota-proxy-cache"], "MISS");
    assert_eq!(leader.await.unwrap().cache, "MISS");
    assert_eq!(fake.calls(":generateContent").len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_leaving_mid_stream_stores_nothing() {
    let fake = FakeUpstream::start().await;
    fake.behave(|b| {
        b.stream_events = 5;
        b.stream_delay = Duration::from_millis(150);
    });
    let p = proxy(&fake, None, &[]).await;
    let path = format!("/v1beta/models/{MODEL}:streamGenerateContent?alt=sse");
    let body = prompt("left early");
    let mut resp = http()
        .post(format!("{}{path}", p.url))
        .header("x-goog-api-key", CLIENT_KEY)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-gemini-quota-proxy-cache"], "MISS");
    assert!(resp.chunk().await.unwrap().is_some());
    drop(resp);
    // Long enough for the whole stream to have ended, had the client stayed.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let again = ask(&p.url, &path, &body, CLIENT_KEY, None).await;
    assert_eq!(again.cache, "MISS", "the left stream was stored");
    assert_eq!(fake.calls(":streamGenerateContent").len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_over_max_entry_bytes_is_not_stored() {
    let fake = FakeUpstream::start().await;
    let p = start_proxy(
        &fake.url,
        ProxyOpts::keys(&["AIzaCacheKey000001"])
            .env("PROXY_CACHE", "on")
            .toml("[cache]\nmax_entry_bytes = 64\n"),
    )
    .await;
    let body = prompt("an answer longer than sixty-four bytes, as every answer here is");
    for _ in 0..2 {
        let g = gen_(&p.url, &body, None).await;
        assert_eq!((g.status, g.cache.as_str()), (200, "MISS"));
        assert!(g.body.len() > 64);
        let cache = p.state.cache.clone().unwrap();
        assert!(eventually(Duration::from_secs(5), || cache.flights.is_empty()).await);
    }
    assert_eq!(fake.calls(":generateContent").len(), 2);
    assert_eq!(p.state.cache.as_ref().unwrap().store.memory_bytes(), 0);
}

// ---------- admin clear ----------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_clears_the_cache_whole_or_for_one_model() {
    for redis in [None, Some(RedisServer::start())] {
        let fake = FakeUpstream::start().await;
        let p = proxy(&fake, redis.as_ref().map(|r| r.url.as_str()), &[]).await;
        let body = prompt("clear me");
        let embed = json!({"content": {"parts": [{"text": "clear me"}]}});
        let epath = "/v1beta/models/gemini-embedding-001:embedContent";
        gen_(&p.url, &body, None).await;
        ask(&p.url, epath, &embed, CLIENT_KEY, None).await;
        until_hit(&p.url, &generate_path(), &body, CLIENT_KEY).await;
        until_hit(&p.url, epath, &embed, CLIENT_KEY).await;
        let clear = |cred: &'static str, q: &'static str| {
            let url = format!("{}/api/ai/cache/clear{q}", p.url);
            async move {
                http()
                    .post(url)
                    .header("authorization", format!("Bearer {cred}"))
                    .send()
                    .await
                    .unwrap()
            }
        };
        assert_eq!(clear(CLIENT_KEY, "").await.status(), 403, "admin only");
        let r = clear(ADMIN_TOKEN, "?model=gemini-embedding-001").await;
        assert_eq!(r.status(), 200);
        let j = json_of(r).await;
        assert_eq!(j["cleared"], 1, "{j}");
        assert_eq!(j["complete"], true, "{j}");
        assert_eq!(
            ask(&p.url, epath, &embed, CLIENT_KEY, None).await.cache,
            "MISS"
        );
        assert_eq!(
            gen_(&p.url, &body, None).await.cache,
            "HIT",
            "other models kept"
        );
        let r = clear(ADMIN_TOKEN, "?model=..%2F").await;
        assert_eq!(r.status(), 400);
        assert_eq!(clear(ADMIN_TOKEN, "").await.status(), 200);
        assert_eq!(gen_(&p.url, &body, None).await.cache, "MISS");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn off_by_default_no_header_and_every_call_upstream() {
    let fake = FakeUpstream::start().await;
    let p = start_proxy(&fake.url, ProxyOpts::keys(&["AIzaCacheKey000001"])).await;
    let body = prompt("off");
    for _ in 0..2 {
        let g = gen_(&p.url, &body, None).await;
        assert_eq!((g.status, g.cache.as_str()), (200, ""));
    }
    assert_eq!(fake.calls(":generateContent").len(), 2);
    assert!(p.state.cache.is_none());
}
