//! Open batch jobs in the shared store: two replicas on one real Redis see the same jobs (jobs
//! at once and enqueued tokens per project and model), a job created on one and read ended on
//! the other releases its quota once, a restarted replica still knows them, and Redis holds no
//! key; a batch's cost is in its client's budget counters, the ones admission reads.

use crate::common;

use common::fake_batches;
use common::*;
use serde_json::{Value, json};

const MODEL: &str = "gemini-2.5-flash";
const KEY: &str = "AIzaSharedBatchKey01";

/// A replica on `redis`: one key (one project) with room for 2 jobs and 100 enqueued tokens.
async fn replica(fake: &FakeUpstream, redis: &RedisServer, extra: &str) -> Proxy {
    start_proxy(
        &fake.url,
        ProxyOpts::keys(&[KEY])
            .env("REDIS_URL", &redis.url)
            .toml(&format!(
                "[limits]\nbatch_enqueued_tokens = 100\nbatch_concurrent = 2\n{extra}"
            )),
    )
    .await
}

/// A batch of `n` inline requests of `chars` characters each (`chars / 4` tokens each) by
/// `key`.
pub(super) async fn create_as(proxy: &str, key: &str, n: usize, chars: usize) -> reqwest::Response {
    let requests: Vec<Value> = (0..n)
        .map(|_| json!({"request": {"contents": [{"parts": [{"text": "x".repeat(chars)}]}]}}))
        .collect();
    http()
        .post(format!(
            "{proxy}/v1beta/models/{MODEL}:batchGenerateContent"
        ))
        .header("x-goog-api-key", key)
        .json(&json!({"batch": {"inputConfig": {"requests": {"requests": requests}}}}))
        .send()
        .await
        .unwrap()
}

pub(super) async fn get_as(proxy: &str, key: &str, path: &str) -> reqwest::Response {
    http()
        .get(format!("{proxy}/v1beta/{path}"))
        .header("x-goog-api-key", key)
        .send()
        .await
        .unwrap()
}

fn name_of(v: &Value) -> String {
    v["name"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_on_one_redis_share_open_batches_release_them_once_and_a_restarted_one_knows_them()
 {
    let redis = RedisServer::start();
    let fake = FakeUpstream::start().await;
    let mut a = replica(&fake, &redis, "").await;
    let b = replica(&fake, &redis, "").await;
    // 60 tokens on A: B sees them, so 60 more do not fit the project's 100.
    let first = create_as(&a.url, CLIENT_KEY, 2, 120).await;
    assert_eq!(first.status(), 200);
    let first = name_of(&json_of(first).await);
    let over = create_as(&b.url, CLIENT_KEY, 2, 120).await;
    assert_eq!(over.status(), 429, "B counts A's enqueued tokens");
    // 30 fit on B; then the project has its 2 jobs at once, counted by A too.
    let second = create_as(&b.url, CLIENT_KEY, 1, 120).await;
    assert_eq!(second.status(), 200);
    let v = json_of(create_as(&a.url, CLIENT_KEY, 1, 4).await).await;
    assert_eq!(v["error"]["code"], 429, "A counts B's job: {v}");
    assert_eq!(fake.calls(":batchGenerateContent").len(), 2);
    // A's job ends; B reads it: released for both, and costed once.
    fake_batches::finish(&fake.state.batches, &first);
    let r = get_as(&b.url, CLIENT_KEY, &first).await;
    assert_eq!(
        json_of(r).await["metadata"]["state"],
        "BATCH_STATE_SUCCEEDED"
    );
    get_as(&a.url, CLIENT_KEY, &first).await;
    let costed = |p: &Proxy| -> u64 {
        p.state
            .ledger
            .cost_totals()
            .iter()
            .filter(|(m, _, _)| &**m == MODEL)
            .map(|(_, _, c)| *c)
            .sum()
    };
    assert!(costed(&b) > 0, "the replica that released it costed it");
    assert_eq!(costed(&a), 0, "the other did not cost it again");
    let third = create_as(&a.url, CLIENT_KEY, 2, 120).await;
    assert_eq!(third.status(), 200, "A sees the room B released");
    // A restarts: the new process still knows the two open jobs.
    a.shutdown();
    let a2 = replica(&fake, &redis, "").await;
    assert_eq!(create_as(&a2.url, CLIENT_KEY, 1, 4).await.status(), 429);
    let entries = a2.state.store.batch_entries().await.unwrap();
    let open: Vec<&String> = entries
        .iter()
        .map(|(f, _)| f)
        .filter(|f| f.starts_with("batches/"))
        .collect();
    assert_eq!(open.len(), 2, "{entries:?}");
    assert_eq!(
        entries.iter().map(|(_, j)| j.tokens).sum::<u64>(),
        90,
        "{entries:?}"
    );
    // No pooled key or client key in Redis: key ids, projects, names only.
    let dump = redis.cli(&["HGETALL", "{gqp}:bt"]).unwrap();
    assert!(dump.contains("batches/"), "{dump}");
    for secret in [KEY, CLIENT_KEY] {
        assert!(!dump.contains(secret));
        assert!(!redis.all_keys().contains(secret));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_created_on_one_replica_and_deleted_on_another_frees_its_room() {
    let redis = RedisServer::start();
    let fake = FakeUpstream::start().await;
    let a = replica(&fake, &redis, "").await;
    let b = replica(&fake, &redis, "").await;
    let one = name_of(&json_of(create_as(&a.url, CLIENT_KEY, 1, 4).await).await);
    create_as(&a.url, CLIENT_KEY, 1, 4).await;
    assert_eq!(create_as(&b.url, CLIENT_KEY, 1, 4).await.status(), 429);
    let d = http()
        .delete(format!("{}/v1beta/{one}", b.url))
        .header("x-goog-api-key", CLIENT_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(d.status(), 200);
    assert_eq!(create_as(&a.url, CLIENT_KEY, 1, 4).await.status(), 200);
}

const TEAM: &str = "team-batch-budget-key-0123";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_whose_batch_results_spent_its_budget_is_refused_the_next_generate() {
    let redis = RedisServer::start();
    let fake = FakeUpstream::start().await;
    let team =
        format!("[[auth.clients]]\nname = \"team\"\nkey = \"{TEAM}\"\ndaily_budget_usd = 0.05\n");
    let a = replica(&fake, &redis, &team).await;
    let b = replica(&fake, &redis, &team).await;
    let job = create_as(&a.url, TEAM, 1, 40).await;
    assert_eq!(job.status(), 200);
    let job = name_of(&json_of(job).await);
    // The reservation (about 0.0026 USD) is in the store's budget counters: both replicas see it.
    let spent = |p: &Proxy| {
        let state = p.state.clone();
        async move {
            let period = gemini_quota_proxy::quota::ClientPeriod::at(
                state.config.limits.timezone,
                chrono::Utc::now().timestamp_millis(),
            );
            state
                .store
                .client_spend(&[("team".into(), period.day, period.month)])
                .await
                .unwrap()[0]
                .0
        }
    };
    let reserved = spent(&b).await;
    assert!(reserved > 2_000 && reserved < 3_000, "{reserved}");
    assert_eq!(generate_as(&b.url, TEAM).await, 200);
    // Its results used 500,000 prompt tokens: 0.075 USD at batch prices, over the budget.
    fake_batches::finish_using(&fake.state.batches, &job, 500_000, 1_000, false);
    assert_eq!(get_as(&b.url, TEAM, &job).await.status(), 200);
    assert!(spent(&a).await > 50_000, "{}", spent(&a).await);
    let refused = http()
        .post(format!("{}/v1beta/models/{MODEL}:generateContent", a.url))
        .header("x-goog-api-key", TEAM)
        .json(&json!({"contents": [{"parts": [{"text": "hi"}]}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 429);
    let v = json_of(refused).await;
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("daily_budget_usd"),
        "{v}"
    );
}

/// A generate call by `key`: its status.
async fn generate_as(proxy: &str, key: &str) -> u16 {
    http()
        .post(format!("{proxy}/v1beta/models/{MODEL}:generateContent"))
        .header("x-goog-api-key", key)
        .json(&json!({"contents": [{"parts": [{"text": "hi"}]}]}))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}
