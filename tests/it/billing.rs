//! Every billable call counted: embeddings settle to their estimate, a request lands only on a
//! project whose per-request cap takes it, settlements survive a ledger batch Redis cannot take,
//! an answer whose client left is still counted, and image, video and retrieval calls are
//! counted, priced and shown (or refused where the configuration says so).

use crate::common;

use common::*;
use serde_json::{Value, json};

const KEYS: [&str; 2] = ["AIzaBillingKey000001", "AIzaBillingKey000002"];

async fn post(url: String, body: Value) -> reqwest::Response {
    http()
        .post(url)
        .header("x-goog-api-key", CLIENT_KEY)
        .json(&body)
        .send()
        .await
        .unwrap()
}

/// An embedContent of `chars` characters (about `chars / 4` tokens as the proxy estimates).
async fn embed(proxy: &str, chars: usize) -> reqwest::Response {
    post(
        format!("{proxy}/v1beta/models/gemini-embedding-001:embedContent"),
        json!({"content": {"parts": [{"text": "e".repeat(chars)}]}}),
    )
    .await
}

#[tokio::test]
async fn an_embedding_stays_counted_at_its_estimate_against_the_embed_token_limit() {
    let fake = FakeUpstream::start().await;
    let proxy = start_proxy(
        &fake.url,
        ProxyOpts::keys(&KEYS[..1]).toml("[limits]\nembed_token_minute = 100\n"),
    )
    .await;
    // 240 characters: 60 tokens. The answer carries no usage.
    let first = embed(&proxy.url, 240).await;
    assert_eq!(first.status(), 200);
    first.bytes().await.unwrap();
    // The first one's 60 tokens stay counted, so 60 more would pass 100 in the minute.
    let second = embed(&proxy.url, 240).await;
    assert_eq!(second.status(), 429, "{}", second.text().await.unwrap());
    assert!(second.headers().contains_key("retry-after"));
    let v = json_of(second).await;
    assert_eq!(v["error"]["status"], "RESOURCE_EXHAUSTED", "{v}");
    assert_eq!(fake.calls(":embedContent").len(), 1);
}

#[tokio::test]
async fn a_request_over_a_projects_own_cap_goes_to_a_project_that_takes_it() {
    let fake = FakeUpstream::start().await;
    let toml = format!(
        r#"
[pool]
strategy = "ordered"
[[keys]]
key = "{}"
project = "small"
[[keys]]
key = "{}"
project = "big"
[limits]
max_request_tokens = 100000
[limits.projects.small]
max_request_tokens = 8000
"#,
        KEYS[0], KEYS[1]
    );
    let mut opts = ProxyOpts::keys(&[]).toml(&toml);
    opts.env.remove("GEMINI_API_KEYS");
    let proxy = start_proxy(&fake.url, opts).await;
    // 50k tokens: over small's 8k, within big's 100k. The ordered strategy tries small first.
    let r = generate(&proxy.url, "gemini-2.5-flash", &"x".repeat(200_000)).await;
    assert_eq!(r.status(), 200);
    r.bytes().await.unwrap();
    // A small one still goes to the first project.
    let r = generate(&proxy.url, "gemini-2.5-flash", "hi").await;
    assert_eq!(r.status(), 200);
    r.bytes().await.unwrap();
    let sent = fake.calls(":generateContent");
    assert_eq!(sent.len(), 2);
    assert_eq!(sent[0].key().as_deref(), Some(KEYS[1]), "the big request");
    assert_eq!(sent[1].key().as_deref(), Some(KEYS[0]), "the small request");
}

#[tokio::test]
async fn a_request_over_every_projects_cap_is_a_clear_400() {
    let fake = FakeUpstream::start().await;
    let toml = format!(
        r#"
[[keys]]
key = "{}"
project = "small"
[limits]
max_request_tokens = 100000
[limits.projects.small]
max_request_tokens = 8000
"#,
        KEYS[0]
    );
    let mut opts = ProxyOpts::keys(&[]).toml(&toml);
    opts.env.remove("GEMINI_API_KEYS");
    let proxy = start_proxy(&fake.url, opts).await;
    let r = generate(&proxy.url, "gemini-2.5-flash", &"x".repeat(200_000)).await;
    assert_eq!(r.status(), 400);
    let v = json_of(r).await;
    assert_eq!(v["error"]["status"], "INVALID_ARGUMENT", "{v}");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(message.contains("8000"), "{message}");
    assert!(fake.calls(":generateContent").is_empty());
}

/// A ledger batch Redis refuses to read: one value over the server's `proto-max-bulk-len`, so
/// Redis drops the connection each time it is sent (and it is sent again and again: the rider
/// is told to retry).
struct OversizedLedger {
    /// Nothing is due until armed.
    armed: std::sync::atomic::AtomicBool,
    outcomes: std::sync::Mutex<Vec<gemini_quota_proxy::quota::redis::RideOutcome>>,
}

impl gemini_quota_proxy::quota::redis::Rider for OversizedLedger {
    fn take(&self) -> Option<gemini_quota_proxy::quota::redis::RiderBatch> {
        use gemini_quota_proxy::quota::redis::{HashAdd, RiderBatch};
        if !self.armed.load(std::sync::atomic::Ordering::SeqCst) {
            return None;
        }
        // One value of 1.2 MB, over the 1 MB the test's Redis takes for one argument.
        let fields = vec![("p|m|k|c".to_string(), "1 ".repeat(600_000))];
        Some(RiderBatch {
            id: "r1:1".into(),
            hashes: vec![HashAdd {
                suffix: "led:m:1000".into(),
                ttl_secs: 60,
                fields,
            }],
            since_ms: 60_000_000,
            late: false,
        })
    }

    fn done(&self, outcome: gemini_quota_proxy::quota::redis::RideOutcome) {
        self.outcomes.lock().unwrap().push(outcome);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settlements_apply_while_redis_refuses_the_ledger_batch_riding_with_them() {
    use gemini_quota_proxy::quota::redis::{RedisStore, RideOutcome};
    use gemini_quota_proxy::quota::{
        AdmitOutcome, AdmitRequest, Candidate, Limits, QuotaStore, Strategy,
    };
    use gemini_quota_proxy::secret::Secret;
    use std::sync::Arc;
    use std::time::Duration;

    let redis = RedisServer::start_with(&["--proto-max-bulk-len", "1mb"]);
    let store = RedisStore::connect(
        &Secret::new(redis.url.clone()),
        "bill",
        Duration::from_secs(2),
        chrono_tz::America::Los_Angeles,
    )
    .unwrap();
    let ledger = Arc::new(OversizedLedger {
        armed: Default::default(),
        outcomes: Default::default(),
    });
    assert!(store.shared_io().attach(ledger.clone()));
    let request = AdmitRequest {
        model: "gemini-2.5-flash".into(),
        tokens: 100,
        candidates: vec![Candidate {
            index: 0,
            kid: "kid0".into(),
            project: "p".into(),
            limits: Limits {
                minute: 100,
                token_minute: 1_000_000,
                daily: 1000,
                max_request_tokens: u64::MAX,
            },
        }],
        strategy: Strategy::Headroom,
        rotation: 0,
        client: None,
    };
    let AdmitOutcome::Admitted(r) = store.admit(&request).await.unwrap() else {
        panic!("admitted");
    };
    assert_eq!(store.usage().await.unwrap()[0].2.minute_tokens, 100);
    // Google reported 5 input tokens: queued for the batch writer, which sends it with the
    // ledger's oversized batch.
    ledger
        .armed
        .store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(store.settle_later(&r, 5));
    // Polled (the usage read is async; `eventually` takes a plain closure).
    let mut settled = false;
    for _ in 0..100 {
        if store
            .usage()
            .await
            .ok()
            .and_then(|u| u.first().map(|(_, _, u)| u.minute_tokens))
            == Some(5)
        {
            settled = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let outcomes = ledger.outcomes.lock().unwrap().clone();
    assert!(
        !outcomes.is_empty() && !outcomes.contains(&RideOutcome::Written),
        "the ledger batch was refused: {outcomes:?}"
    );
    assert!(
        settled,
        "the settlement applied apart from the ledger batch"
    );
}

/// The ledger's totals over the last hour.
async fn totals(proxy: &str) -> Value {
    let r = http()
        .get(format!("{proxy}/api/ai/usage/?group_by=none"))
        .header("x-goog-api-key", ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    json_of(r).await["totals"].clone()
}

/// Input tokens the store holds in the minute window, summed over every (project, model).
async fn minute_tokens(proxy: &Proxy) -> u64 {
    let usage = proxy.state.store.usage().await.unwrap();
    usage.iter().map(|(_, _, u)| u.minute_tokens).sum()
}

/// A generateContent whose client reads the head and leaves before the body's usage arrives.
async fn leave_after_head(proxy: &str) {
    let r = generate(proxy, "gemini-2.5-flash", &"q".repeat(400)).await;
    assert_eq!(r.status(), 200);
    drop(r);
}

/// (ledger input tokens, store minute tokens) once the ledger shows `want` input tokens, or
/// after 10 s.
async fn counted_when(proxy: &Proxy, want: u64) -> (u64, u64) {
    let end = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let t = totals(&proxy.url).await;
        let got = (
            t["input_tokens"].as_u64().unwrap_or(0),
            minute_tokens(proxy).await,
        );
        if got == (want, want) || std::time::Instant::now() > end {
            return got;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_before_the_usage_still_has_the_real_usage_recorded() {
    let fake = FakeUpstream::start().await;
    fake.behave(|b| {
        b.prompt_tokens = Some(1234);
        b.slow_body = Some(std::time::Duration::from_millis(500));
    });
    let proxy = start_proxy(&fake.url, ProxyOpts::keys(&KEYS[..1])).await;
    leave_after_head(&proxy.url).await;
    // The rest of the answer is read without the client: Google's count, not the estimate
    // (100) and not 0.
    assert_eq!(counted_when(&proxy, 1234).await, (1234, 1234));
    assert_eq!(totals(&proxy.url).await["requests"], 1);
    assert!(totals(&proxy.url).await["cost_usd"].as_f64().unwrap() > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_a_large_answer_has_its_estimate_recorded() {
    let fake = FakeUpstream::start().await;
    fake.behave(|b| {
        b.prompt_tokens = Some(1234);
        b.slow_body = Some(std::time::Duration::from_millis(300));
        // More than the proxy reads without a client before the usage comes.
        b.slow_body_pad = 2 * 1024 * 1024;
    });
    let proxy = start_proxy(&fake.url, ProxyOpts::keys(&KEYS[..1])).await;
    leave_after_head(&proxy.url).await;
    // 400 characters: the estimate, 100 tokens, stays counted and is recorded.
    assert_eq!(counted_when(&proxy, 100).await, (100, 100));
}

/// The ledger's totals once `field` reaches `want`, or after 10 s.
async fn totals_when(proxy: &str, field: &str, want: f64) -> Value {
    let end = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let t = totals(proxy).await;
        if t[field].as_f64() == Some(want) || std::time::Instant::now() > end {
            return t;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

fn close(got: &Value, want: f64) -> bool {
    got.as_f64().is_some_and(|g| (g - want).abs() < 1e-9)
}

async fn imagen(proxy: &str, images: u64) -> reqwest::Response {
    post(
        format!("{proxy}/v1beta/models/imagen-4.0-generate-001:predict"),
        json!({"instances": [{"prompt": "a lighthouse at dusk"}],
               "parameters": {"sampleCount": images}}),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_calls_are_counted_in_images_priced_per_image_and_limited_per_minute() {
    let fake = FakeUpstream::start().await;
    let proxy = start_proxy(
        &fake.url,
        ProxyOpts::keys(&KEYS[..1]).toml("[limits]\nimages_per_minute = 3\n"),
    )
    .await;
    let r = imagen(&proxy.url, 2).await;
    assert_eq!(r.status(), 200);
    assert_eq!(json_of(r).await["predictions"].as_array().unwrap().len(), 2);
    // Recorded per client and model, with its cost: 2 images at 0.04 USD.
    let t = totals_when(&proxy.url, "images", 2.0).await;
    assert_eq!(t["images"], 2, "{t}");
    assert_eq!(t["requests"], 1, "{t}");
    assert!(close(&t["cost_usd"], 0.08), "{t}");
    assert_eq!(t["unpriced_requests"], 0, "{t}");
    // Per model and per client.
    for (group, name) in [("model", "imagen-4.0-generate-001"), ("client", "")] {
        let r = http()
            .get(format!("{}/api/ai/usage/?group_by={group}", proxy.url))
            .header("x-goog-api-key", ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        let by = json_of(r).await;
        let series = by["series"].as_array().unwrap();
        assert_eq!(series.len(), 1, "{by}");
        if !name.is_empty() {
            assert_eq!(series[0]["group"][group], name, "{by}");
        }
        let images: u64 = series[0]["points"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["images"].as_u64().unwrap())
            .sum();
        assert_eq!(images, 2, "{by}");
    }
    // Two more images would make 4 in the minute, over 3: refused before Google sees them.
    let r = imagen(&proxy.url, 2).await;
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    let v = json_of(r).await;
    assert_eq!(v["error"]["status"], "RESOURCE_EXHAUSTED");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("images-per-minute limit of 3"),
        "{message}"
    );
    // One more fits.
    let r = imagen(&proxy.url, 1).await;
    assert_eq!(r.status(), 200);
    r.bytes().await.unwrap();
    assert_eq!(fake.calls(":predict").len(), 2);
    // The status page's cost shows them (its outlook refreshes in the background).
    let want = 0.12;
    let end = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let (_, s) = quota_status(&proxy.url, ADMIN_TOKEN).await;
        let got = &s["quota_status"]["cost"]["today"]["cost_usd"];
        if close(got, want) {
            break;
        }
        assert!(
            std::time::Instant::now() < end,
            "status cost {got}, want {want}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn video_calls_are_counted_in_seconds_and_priced_per_second() {
    let fake = FakeUpstream::start().await;
    let proxy = start_proxy(
        &fake.url,
        ProxyOpts::keys(&KEYS[..1]).toml("[limits]\nvideo_minute = 1\n"),
    )
    .await;
    let veo = || {
        post(
            format!(
                "{}/v1beta/models/veo-3.0-generate-001:predictLongRunning",
                proxy.url
            ),
            json!({"instances": [{"prompt": "waves"}], "parameters": {"durationSeconds": 8}}),
        )
    };
    let r = veo().await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        json_of(r).await["name"],
        "models/veo-3.0-generate-001/operations/op1"
    );
    let t = totals_when(&proxy.url, "video_seconds", 8.0).await;
    assert_eq!(t["video_seconds"], 8, "{t}");
    // 8 seconds at 0.40 USD.
    assert!(close(&t["cost_usd"], 3.2), "{t}");
    // One video request a minute.
    let r = veo().await;
    assert_eq!(r.status(), 429);
    assert_eq!(fake.calls(":predictLongRunning").len(), 1);
}

async fn answer(proxy: &str) -> reqwest::Response {
    post(
        format!("{proxy}/v1beta/models/aqa:generateAnswer"),
        json!({"contents": [{"role": "user", "parts": [{"text": "w".repeat(400)}]}],
               "answerStyle": "ABSTRACTIVE",
               "inlinePassages": {"passages": [{"id": "p1", "content": {"parts": [{"text": "x"}]}}]}}),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generate_answer_calls_are_counted_at_their_estimate_and_unpriced_ones_are_shown() {
    let fake = FakeUpstream::start().await;
    let proxy = start_proxy(&fake.url, ProxyOpts::keys(&KEYS[..1])).await;
    let r = answer(&proxy.url).await;
    assert_eq!(r.status(), 200);
    r.bytes().await.unwrap();
    // No usage in the answer: the estimate (the question's 400 characters and the inline
    // passage's JSON: 108 tokens) is counted, in the ledger and against the quota, and the
    // call shows as unpriced.
    let t = totals_when(&proxy.url, "input_tokens", 108.0).await;
    assert_eq!(t["input_tokens"], 108, "{t}");
    assert_eq!(t["unpriced_requests"], 1, "{t}");
    assert_eq!(minute_tokens(&proxy).await, 108);
}

#[tokio::test]
async fn unpriced_billable_calls_are_refused_when_the_configuration_says_so() {
    let fake = FakeUpstream::start().await;
    let proxy = start_proxy(
        &fake.url,
        ProxyOpts::keys(&KEYS[..1]).toml("[limits]\nunpriced = \"refuse\"\n"),
    )
    .await;
    let r = answer(&proxy.url).await;
    assert_eq!(r.status(), 400);
    let v = json_of(r).await;
    assert_eq!(v["error"]["status"], "INVALID_ARGUMENT", "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("prices"),
        "{v}"
    );
    assert!(fake.calls(":generateAnswer").is_empty());
    // A priced one passes.
    let r = imagen(&proxy.url, 1).await;
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_image_generations_are_counted_and_priced_per_image() {
    let fake = FakeUpstream::start().await;
    let proxy = start_proxy(&fake.url, ProxyOpts::keys(&KEYS[..1])).await;
    let r = http()
        .post(format!("{}/v1beta/openai/images/generations", proxy.url))
        .header("authorization", format!("Bearer {CLIENT_KEY}"))
        .json(
            &json!({"model": "imagen-4.0-fast-generate-001", "prompt": "a boat", "n": 3,
                      "response_format": "b64_json"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(json_of(r).await["data"].as_array().unwrap().len(), 3);
    // 3 images at 0.02 USD.
    let t = totals_when(&proxy.url, "images", 3.0).await;
    assert_eq!(t["images"], 3, "{t}");
    assert!(close(&t["cost_usd"], 0.06), "{t}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_call_is_counted_for_the_images_google_returned() {
    let fake = FakeUpstream::start().await;
    // One of the three asked for is filtered out: Google returns (and bills) two.
    fake.behave(|b| b.filtered_images = 1);
    let proxy = start_proxy(&fake.url, ProxyOpts::keys(&KEYS[..1])).await;
    let r = imagen(&proxy.url, 3).await;
    assert_eq!(r.status(), 200);
    r.bytes().await.unwrap();
    let t = totals_when(&proxy.url, "images", 2.0).await;
    assert_eq!(t["images"], 2, "{t}");
    assert!(close(&t["cost_usd"], 0.08), "{t}");
    // The reservation of 3 images settles to 2.
    let mut settled = 0;
    for _ in 0..100 {
        settled = minute_tokens(&proxy).await;
        if settled == 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(settled, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_video_operation_is_polled_with_the_key_that_started_it() {
    let fake = FakeUpstream::start().await;
    let proxy = start_proxy(&fake.url, ProxyOpts::keys(&KEYS)).await;
    let r = post(
        format!(
            "{}/v1beta/models/veo-3.0-generate-001:predictLongRunning",
            proxy.url
        ),
        json!({"instances": [{"prompt": "waves"}]}),
    )
    .await;
    assert_eq!(r.status(), 200);
    let op = json_of(r).await["name"].as_str().unwrap().to_string();
    let started = fake.calls(":predictLongRunning")[0].key();
    // Polled four times: every poll goes out with the key whose project runs the operation.
    for _ in 0..4 {
        let r = http()
            .get(format!("{}/v1beta/{op}", proxy.url))
            .header("x-goog-api-key", CLIENT_KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(json_of(r).await["done"], true);
    }
    let polls = fake.calls("/operations/");
    assert_eq!(polls.len(), 4);
    assert!(polls.iter().all(|p| p.key() == started), "{polls:?}");
}
