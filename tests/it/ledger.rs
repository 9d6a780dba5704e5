//! The usage ledger through the real proxy, on both stores: what it records equals what the
//! fake upstream reported (JSON, SSE, JSON-array stream, OpenAI), costs equal hand-computed
//! values (long-context tier and free-tier projects included), history survives a restart on
//! Redis, and replicas sharing one Redis add up.

use crate::common;

use std::time::Duration;

use common::fake_upstream::UsageExtra;
use common::*;
use serde_json::{Value, json};

const KEYS: [&str; 2] = ["AIzaLedgerKey00000001", "AIzaLedgerKey00000002"];

/// The two stores every test runs on: `None` is memory.
fn redis_env(opts: ProxyOpts, redis: Option<&RedisServer>) -> ProxyOpts {
    match redis {
        Some(r) => opts.env("REDIS_URL", &r.url),
        None => opts,
    }
}

async fn usage(proxy: &str, query: &str) -> (u16, Value) {
    let r = http()
        .get(format!("{proxy}/api/ai/usage/?{query}"))
        .header("x-goog-api-key", ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), json_of(r).await)
}

/// The totals once they show `requests` (Redis writes within about a second).
async fn totals_when(proxy: &str, query: &str, requests: u64) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (code, body) = usage(proxy, query).await;
        assert_eq!(code, 200, "{body}");
        if body["totals"]["requests"] == json!(requests) || std::time::Instant::now() > deadline {
            return body;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn post(url: String, body: Value) -> reqwest::Response {
    http()
        .post(url)
        .header("x-goog-api-key", CLIENT_KEY)
        .json(&body)
        .send()
        .await
        .unwrap()
}

fn prompt(text: &str) -> Value {
    json!({"contents": [{"role": "user", "parts": [{"text": text}]}]})
}

async fn every_answer_shape_is_recorded_field_by_field(redis: Option<&RedisServer>) {
    // A model of this test's own (priced as gemini-2.5-pro by prefix): its metrics are its own
    // in this process.
    let model = match redis {
        Some(_) => "gemini-2.5-pro-ledger-redis",
        None => "gemini-2.5-pro-ledger-memory",
    };
    let fake = FakeUpstream::start().await;
    fake.behave(|b| {
        b.prompt_tokens = Some(1000);
        b.stream_events = 3;
        b.usage_extra = UsageExtra {
            cached: 200,
            thoughts: 100,
            tool: 50,
        };
    });
    let proxy = start_proxy(&fake.url, redis_env(ProxyOpts::keys(&KEYS), redis)).await;
    let base = format!("{}/v1beta/models/{model}", proxy.url);
    // JSON: 3 candidates tokens.
    let r = post(format!("{base}:generateContent"), prompt("one")).await;
    assert_eq!(r.status(), 200);
    r.bytes().await.unwrap();
    // SSE and a JSON-array stream, 3 events: the last usage says 6 candidates tokens (the
    // earlier chunks' 2 and 4 are cumulative, never added).
    for url in [
        format!("{base}:streamGenerateContent?alt=sse"),
        format!("{base}:streamGenerateContent"),
    ] {
        let r = post(url, prompt("two")).await;
        assert_eq!(r.status(), 200);
        r.bytes().await.unwrap();
    }
    // OpenAI: completion 103 with 100 reasoning tokens: 3 output, 100 thinking; no tool count.
    let r = post(
        format!("{}/v1beta/openai/chat/completions", proxy.url),
        json!({"model": model, "messages": [{"role": "user", "content": "three"}]}),
    )
    .await;
    assert_eq!(r.status(), 200);
    r.bytes().await.unwrap();

    let body = totals_when(&proxy.url, "window=1h&group_by=none", 4).await;
    let t = &body["totals"];
    assert_eq!(t["requests"], 4, "{body}");
    assert_eq!(t["input_tokens"], 4000);
    assert_eq!(t["cached_tokens"], 800);
    assert_eq!(t["output_tokens"], 3 + 6 + 6 + 3);
    assert_eq!(t["thinking_tokens"], 400);
    assert_eq!(t["tool_tokens"], 150);
    assert_eq!(t["upstream_429"], 0);
    assert_eq!(t["unpriced_requests"], 0);
    // gemini-2.5-pro: input 1.25, cached 0.125, output 10 USD per 1M tokens.
    let nano = |input: u64, cached: u64, tool: u64, out: u64| {
        (input - cached + tool) * 1250 + cached * 125 + out * 10_000
    };
    let want = nano(1000, 200, 50, 3 + 100)
        + 2 * nano(1000, 200, 50, 6 + 100)
        + nano(1000, 200, 0, 3 + 100);
    assert_close(&t["cost_usd"], want);
    assert_close(&t["list_cost_usd"], want);
    assert_eq!(body["step_seconds"], 60);
    assert_eq!(body["window"], "1h");
    let series = body["series"].as_array().unwrap();
    assert_eq!(series.len(), 1);
    assert_eq!(series[0]["group"], json!({}));
    let (_, by_model) = usage(&proxy.url, "window=1h&group_by=model").await;
    assert_eq!(by_model["series"][0]["group"]["model"], model, "{by_model}");
    assert_eq!(series[0]["points"].as_array().unwrap().len(), 60);
    let last = &series[0]["points"][59];
    assert!(
        last["requests"].as_u64().unwrap() + series[0]["points"][58]["requests"].as_u64().unwrap()
            == 4,
        "{last}"
    );

    // Grouped: the one client, both keys masked, the model.
    let (_, by_client) = usage(&proxy.url, "window=1h&group_by=client").await;
    assert_eq!(by_client["series"][0]["group"]["client"], "client1");
    let (_, by_key) = usage(&proxy.url, "window=24h&group_by=key").await;
    assert_eq!(
        by_key["series"][0]["points"].as_array().unwrap().len(),
        1440
    );
    for s in by_key["series"].as_array().unwrap() {
        let k = s["group"]["key"].as_str().unwrap();
        assert!(
            k.starts_with("AIza...") && !KEYS.iter().any(|full| k.contains(&full[4..])),
            "{k}"
        );
    }
    let text = serde_json::to_string(&by_key).unwrap();
    assert!(!text.contains(CLIENT_KEY) && !KEYS.iter().any(|k| text.contains(k)));

    // The status page: cost next to the seed's fields, the tokens in /metrics.
    let (code, status) = quota_status(&proxy.url, ADMIN_TOKEN).await;
    assert_eq!(code, 200);
    let qs = &status["quota_status"];
    for seed in ["healthy", "warnings", "errors", "usage", "keys", "store"] {
        assert!(qs.get(seed).is_some(), "{seed} missing: {qs}");
    }
    assert_close(&qs["cost"]["today"]["cost_usd"], want);
    assert_close(&qs["cost"]["month"]["list_cost_usd"], want);
    let m = metrics_text(&proxy.url).await;
    let value = |prefix: &str| -> f64 {
        m.lines()
            .find(|l| l.starts_with(prefix) && l.contains(&format!("model=\"{model}\"")))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or_else(|| panic!("no {prefix} for {model}: {m}"))
    };
    let tokens = |kind: &str| {
        m.lines()
            .filter(|l| l.starts_with("gqp_tokens_total{"))
            .filter(|l| l.contains(&format!("model=\"{model}\"")))
            .find(|l| l.contains(&format!("kind=\"{kind}\"")))
            .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no {kind} tokens for {model}: {m}"))
    };
    assert_eq!(tokens("input"), 4000);
    assert_eq!(tokens("thinking"), 400);
    assert_eq!(tokens("tool"), 150);
    assert!(m.contains("# TYPE gqp_cost_usd_total counter"));
    assert!((value("gqp_cost_usd_total{") * 1e9 - want as f64).abs() < 2.0);
}

/// A JSON cost equals `nano` nano-USD (to a nano-dollar; JSON carries it as a float).
fn assert_close(v: &Value, nano: u64) {
    let got = v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"));
    assert!(
        (got * 1e9 - nano as f64).abs() < 1.0,
        "cost {got} USD, want {} USD",
        nano as f64 / 1e9
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_shape_is_recorded_field_by_field_in_memory() {
    every_answer_shape_is_recorded_field_by_field(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_shape_is_recorded_field_by_field_in_redis() {
    let redis = RedisServer::start();
    every_answer_shape_is_recorded_field_by_field(Some(&redis)).await;
}

async fn long_prompts_cost_the_long_tier_and_free_projects_cost_nothing(
    redis: Option<&RedisServer>,
) {
    let fake = FakeUpstream::start().await;
    fake.behave(|b| {
        b.prompt_tokens = Some(250_000);
        b.usage_extra = UsageExtra {
            cached: 200,
            thoughts: 100,
            tool: 50,
        };
    });
    // One key in a free-tier project, one in a paid one; the ordered strategy sends the
    // first request to the first key.
    let toml = format!(
        r#"
[pool]
strategy = "ordered"
[[keys]]
key = "{}"
project = "free-p"
[[keys]]
key = "{}"
project = "paid-p"
[limits.projects.free-p]
billing = "free"
minute = 1
"#,
        KEYS[0], KEYS[1]
    );
    let opts = redis_env(ProxyOpts::keys(&[]).toml(&toml), redis);
    let mut opts = opts;
    opts.env.remove("GEMINI_API_KEYS");
    let proxy = start_proxy(&fake.url, opts).await;
    for _ in 0..2 {
        let r = generate(&proxy.url, "gemini-2.5-pro", "long").await;
        assert_eq!(r.status(), 200);
        r.bytes().await.unwrap();
    }
    // Over 200k prompt tokens: input 2.50, cached 0.25, output 15 USD per 1M.
    let one = (250_000 - 200 + 50) * 2_500 + 200 * 250 + (3 + 100) * 15_000;
    let body = totals_when(&proxy.url, "window=1h&group_by=project", 2).await;
    let series = body["series"].as_array().unwrap();
    let of = |p: &str| {
        let s = series
            .iter()
            .find(|s| s["group"]["project"] == p)
            .unwrap_or_else(|| panic!("no {p} in {body}"));
        let sum = |f: &str| {
            s["points"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p[f].as_f64().unwrap())
                .sum::<f64>()
        };
        (sum("requests"), sum("cost_usd"), sum("list_cost_usd"))
    };
    let (free_n, free_cost, free_list) = of("free-p");
    let (paid_n, paid_cost, paid_list) = of("paid-p");
    assert_eq!((free_n, paid_n), (1.0, 1.0), "{body}");
    assert_eq!(free_cost, 0.0);
    assert_close(&json!(free_list), one);
    assert_close(&json!(paid_cost), one);
    assert_close(&json!(paid_list), one);
    assert_close(&body["totals"]["cost_usd"], one);
    assert_close(&body["totals"]["list_cost_usd"], 2 * one);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_prompts_cost_the_long_tier_and_free_projects_cost_nothing_in_memory() {
    long_prompts_cost_the_long_tier_and_free_projects_cost_nothing(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_prompts_cost_the_long_tier_and_free_projects_cost_nothing_in_redis() {
    let redis = RedisServer::start();
    long_prompts_cost_the_long_tier_and_free_projects_cost_nothing(Some(&redis)).await;
}

async fn refusals_google_429s_and_errors_are_counted(redis: Option<&RedisServer>) {
    let fake = FakeUpstream::start().await;
    let toml = "[limits.models.\"gemini-2.0-flash\"]\nminute = 1\n";
    let proxy = start_proxy(
        &fake.url,
        redis_env(ProxyOpts::keys(&KEYS[..1]).toml(toml), redis),
    )
    .await;
    let proxy_429 = std::cell::Cell::new(0u64);
    let count = |r: &reqwest::Response| {
        if r.status() == 429 && r.headers().contains_key("x-gemini-quota-proxy-error") {
            proxy_429.set(proxy_429.get() + 1);
        }
    };
    // A 500 from Google, passed on: sent, and an error.
    fake.behave(|b| b.always_status = Some(500));
    let r = generate(&proxy.url, "gemini-2.5-flash", "b").await;
    assert_eq!(r.status(), 500);
    count(&r);
    fake.behave(|b| b.always_status = None);
    // gemini-2.0-flash takes one request a minute: the proxy refuses the second itself.
    for _ in 0..2 {
        let r = generate(&proxy.url, "gemini-2.0-flash", "c").await;
        count(&r);
        r.bytes().await.unwrap();
    }
    assert_eq!(proxy_429.get(), 1);
    // A Google 429: counted per attempt, whatever the client gets in the end (a retry after
    // the hold, or the proxy's 429).
    fake.behave(|b| b.script.push_back(Scripted::Bare429));
    let r = generate(&proxy.url, "gemini-2.5-flash", "a").await;
    count(&r);
    r.bytes().await.unwrap();

    let proxy_429 = proxy_429.get();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let body = loop {
        let (_, body) = usage(&proxy.url, "group_by=model").await;
        // Every total asserted below: the records land apart (the Google 429 per attempt, the
        // request when it ends), and on a busy machine one may still be on its way.
        if body["totals"]["upstream_429"] == json!(1)
            && body["totals"]["refused"] == json!(proxy_429)
            && body["totals"]["errors"] == json!(1)
            && body["totals"]["requests"] == json!(3)
            || std::time::Instant::now() > deadline
        {
            break body;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let t = &body["totals"];
    assert_eq!(t["upstream_429"], 1, "{body}");
    assert_eq!(t["refused"], proxy_429, "{body}");
    assert_eq!(t["errors"], 1, "{body}");
    // The 500, the admitted gemini-2.0-flash one and the one Google answered 429.
    assert_eq!(t["requests"], 3, "{body}");
    let refused_series = body["series"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["group"]["model"] == "gemini-2.0-flash")
        .unwrap_or_else(|| panic!("{body}"));
    let refused_there: u64 = refused_series["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["refused"].as_u64().unwrap())
        .sum();
    assert_eq!(refused_there, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_google_429s_and_errors_are_counted_in_memory() {
    refusals_google_429s_and_errors_are_counted(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_google_429s_and_errors_are_counted_in_redis() {
    let redis = RedisServer::start();
    refusals_google_429s_and_errors_are_counted(Some(&redis)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_in_redis_survives_a_proxy_restart_even_one_stopped_at_once() {
    let redis = RedisServer::start();
    let fake = FakeUpstream::start().await;
    let opts = || redis_env(ProxyOpts::keys(&KEYS), Some(&redis));
    let mut first = start_proxy(&fake.url, opts()).await;
    for _ in 0..5 {
        generate(&first.url, "gemini-2.5-flash", "hello")
            .await
            .bytes()
            .await
            .unwrap();
    }
    // Shut down at once: the last second's sums are written on the way out, not lost.
    first.shutdown();
    let _ = (&mut first.task).await;
    drop(first);

    let second = start_proxy(&fake.url, opts()).await;
    for window in ["1h", "24h", "7d", "30d"] {
        let (code, body) = usage(&second.url, &format!("window={window}")).await;
        assert_eq!(code, 200);
        assert_eq!(body["totals"]["requests"], 5, "{window}: {body}");
        assert_eq!(body["source"], "redis");
    }
    // Every ledger key carries the namespace's hash tag and an expiry.
    let keys = redis.cli(&["KEYS", "*led*"]).unwrap_or_default();
    assert!(keys.contains("led:m:") && keys.contains("led:h:"), "{keys}");
    for k in keys
        .lines()
        .filter(|k| k.contains("led:m:") || k.contains("led:h:"))
    {
        assert!(k.starts_with('{'), "{k} outside the hash tag");
        let ttl: i64 = redis.cli(&["TTL", k]).unwrap().trim().parse().unwrap();
        let most = if k.contains("led:m:") {
            48 * 3600 + 600
        } else {
            35 * 86400 + 3600
        };
        assert!(ttl > 0 && ttl <= most, "{k}: ttl {ttl}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_on_one_redis_add_up() {
    let redis = RedisServer::start();
    let fake = FakeUpstream::start().await;
    fake.behave(|b| b.prompt_tokens = Some(10));
    let mut replicas = Vec::new();
    for _ in 0..3 {
        replicas
            .push(start_proxy(&fake.url, redis_env(ProxyOpts::keys(&KEYS), Some(&redis))).await);
    }
    let mut sent = 0u64;
    for (i, r) in replicas.iter().enumerate() {
        for _ in 0..(i + 2) * 3 {
            let resp = generate(&r.url, "gemini-2.5-flash", "x").await;
            assert_eq!(resp.status(), 200);
            resp.bytes().await.unwrap();
            sent += 1;
        }
    }
    for r in &replicas {
        let body = totals_when(&r.url, "window=1h&group_by=key", sent).await;
        assert_eq!(body["totals"]["requests"], sent, "{body}");
        assert_eq!(body["totals"]["input_tokens"], sent * 10);
        let per_key: u64 = body["series"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|s| s["points"].as_array().unwrap().iter())
            .map(|p| p["requests"].as_u64().unwrap())
            .sum();
        assert_eq!(per_key, sent);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_parameters_get_google_errors_and_a_credential_is_required() {
    let fake = FakeUpstream::start().await;
    let proxy = start_proxy(&fake.url, ProxyOpts::keys(&KEYS)).await;
    for q in ["window=2d", "group_by=color", "window=1h&sort=asc"] {
        let (code, body) = usage(&proxy.url, q).await;
        assert_eq!(code, 400, "{q}: {body}");
        assert_eq!(body["error"]["status"], "INVALID_ARGUMENT");
    }
    let r = http()
        .get(format!("{}/api/ai/usage/", proxy.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = http()
        .get(format!(
            "{}/api/ai/usage/?key={ADMIN_TOKEN}&window=7d",
            proxy.url
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body = json_of(r).await;
    assert_eq!(body["step_seconds"], 3600);
    // Under 10 minutes of history: no projection, said so.
    generate(&proxy.url, "gemini-2.5-flash", "x")
        .await
        .bytes()
        .await
        .unwrap();
    let (_, status) = quota_status(&proxy.url, ADMIN_TOKEN).await;
    let pool = &status["quota_status"]["forecast"]["pool"][0];
    assert_eq!(pool["model"], "gemini-2.5-flash", "{status}");
    assert_eq!(pool["reason"], "insufficient data");
    assert!(pool["projected_requests"].is_null() && pool["resets_at"].is_string());
}

async fn a_retried_request_counts_once_and_a_client_gone_early_still_counts(
    redis: Option<&RedisServer>,
) {
    let fake = FakeUpstream::start().await;
    let proxy = start_proxy(&fake.url, redis_env(ProxyOpts::keys(&KEYS), redis)).await;
    // A 503, then a bare 429 on the other key, then success: one request, one Google 429,
    // no error (the client got 200).
    fake.behave(|b| {
        b.script.push_back(Scripted::Status(503));
        b.script.push_back(Scripted::Bare429);
    });
    let r = generate(&proxy.url, "gemini-2.5-flash", "retry me").await;
    assert_eq!(r.status(), 200);
    r.bytes().await.unwrap();
    // A client that gives up while Google is still working: the request was sent, it counts.
    fake.behave(|b| b.answer_delay = Duration::from_millis(1500));
    let gone = http()
        .post(format!(
            "{}/v1beta/models/gemini-2.5-flash:generateContent",
            proxy.url
        ))
        .header("x-goog-api-key", CLIENT_KEY)
        .timeout(Duration::from_millis(300))
        .json(&prompt("slow"))
        .send()
        .await;
    assert!(gone.is_err(), "the client should have timed out");
    let body = totals_when(&proxy.url, "group_by=none", 2).await;
    let t = &body["totals"];
    assert_eq!(t["requests"], 2, "{body}");
    assert_eq!(t["upstream_429"], 1, "{body}");
    assert_eq!(t["errors"], 0, "{body}");
    assert_eq!(t["refused"], 0, "{body}");
    assert_eq!(t["input_tokens"], fake_prompt_tokens("retry me"), "{body}");
}

/// What the fake upstream reports as `promptTokenCount` for a prompt (characters / 4).
fn fake_prompt_tokens(text: &str) -> u64 {
    (text.len() as u64).div_ceil(4).max(1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_request_counts_once_and_a_client_gone_early_still_counts_in_memory() {
    a_retried_request_counts_once_and_a_client_gone_early_still_counts(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_request_counts_once_and_a_client_gone_early_still_counts_in_redis() {
    let redis = RedisServer::start();
    a_retried_request_counts_once_and_a_client_gone_early_still_counts(Some(&redis)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sums_made_while_redis_is_down_are_written_when_it_is_back() {
    let mut redis = RedisServer::start();
    let fake = FakeUpstream::start().await;
    let proxy = start_proxy(
        &fake.url,
        ProxyOpts::keys(&KEYS)
            .env("REDIS_URL", &redis.url)
            .toml("[store]\ntimeout_ms = 200\n"),
    )
    .await;
    for _ in 0..3 {
        generate(&proxy.url, "gemini-2.5-flash", "before")
            .await
            .bytes()
            .await
            .unwrap();
    }
    totals_when(&proxy.url, "group_by=none", 3).await;
    redis.stop();
    // Served under the `local` policy; the ledger keeps its sums.
    for _ in 0..4 {
        let r = generate(&proxy.url, "gemini-2.5-flash", "during").await;
        assert_eq!(r.status(), 200);
        r.bytes().await.unwrap();
    }
    let (code, _) = usage(&proxy.url, "group_by=none").await;
    assert_eq!(code, 503, "the history is in Redis, which is down");
    // This Redis keeps nothing across a restart: the three from before are gone with it; the
    // four counted meanwhile arrive.
    redis.restart();
    let body = totals_when(&proxy.url, "group_by=none", 4).await;
    assert_eq!(body["totals"]["requests"], 4, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_sent_again_after_a_timeout_is_added_once() {
    use gemini_quota_proxy::quota::redis::{HashAdd, RedisStore, RideOutcome, RiderBatch};
    use gemini_quota_proxy::secret::Secret;
    let redis = RedisServer::start();
    let store = RedisStore::connect(
        &Secret::new(redis.url.clone()),
        "gqp",
        Duration::from_secs(2),
        chrono_tz::America::Los_Angeles,
    )
    .unwrap();
    let io = store.shared_io();
    let batch = |id: &str| RiderBatch {
        id: id.into(),
        hashes: vec![HashAdd {
            suffix: "led:m:1000".into(),
            ttl_secs: 60,
            fields: vec![("p|m|k|c".into(), "1 0 0 0 10".into())],
        }],
        since_ms: 60_000_000,
        late: false,
    };
    // The value of a bulk-string reply (`$N` line, then the value).
    let get = |args: &[&str]| {
        let raw = redis.cli(args).unwrap_or_default();
        raw.lines().last().unwrap_or_default().to_string()
    };
    // The same batch twice (a call that timed out may have run): added once.
    for _ in 0..2 {
        assert_eq!(io.write_now(&batch("r1:7")).await.0, RideOutcome::Written);
    }
    assert_eq!(get(&["HGET", "{gqp}:led:m:1000", "p|m|k|c"]), "1 0 0 0 10");
    // Another batch adds, field by field.
    io.write_now(&batch("r1:8")).await;
    assert_eq!(get(&["HGET", "{gqp}:led:m:1000", "p|m|k|c"]), "2 0 0 0 20");
    assert_eq!(get(&["GET", "{gqp}:led:since"]), "60000000");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_cost_follows_new_requests_while_it_is_watched() {
    let fake = FakeUpstream::start().await;
    fake.behave(|b| b.prompt_tokens = Some(1000));
    let proxy = start_proxy(&fake.url, ProxyOpts::keys(&KEYS)).await;
    let (_, first) = quota_status(&proxy.url, ADMIN_TOKEN).await;
    assert_eq!(first["quota_status"]["cost"]["today"]["cost_usd"], 0.0);
    generate(&proxy.url, "gemini-2.5-pro", "x")
        .await
        .bytes()
        .await
        .unwrap();
    // The page answers from the last computed outlook; the background refresh catches up
    // within a few seconds while the page is watched.
    let want = (1000 * 1250 + 3 * 10_000) as f64 / 1e9;
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let (_, s) = quota_status(&proxy.url, ADMIN_TOKEN).await;
        let got = s["quota_status"]["cost"]["today"]["cost_usd"]
            .as_f64()
            .unwrap();
        if (got - want).abs() < 1e-9 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "cost still {got}, want {want}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
