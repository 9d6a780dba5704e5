//! The Batch API through the proxy: a batch job is created on the project with the most room
//! for its enqueued tokens (a 429 when none has room), read, cancelled and deleted with the
//! key that created it, holds its project's batch room until the proxy sees it end, and its
//! inline results are recorded at batch prices.

use crate::common;

mod files;
mod shared;

use common::fake_batches;
use common::*;
use serde_json::{Value, json};

const MODEL: &str = "gemini-2.5-flash";
const KEYS: [&str; 2] = ["AIzaBatchKey00000001", "AIzaBatchKey00000002"];

/// Two keys (two projects), each with room for 100 enqueued tokens of a model.
fn opts() -> ProxyOpts {
    ProxyOpts::keys(&KEYS).toml("[limits]\nbatch_enqueued_tokens = 100\nbatch_concurrent = 5\n")
}

/// A batch of `n` inline requests of `chars` characters each (`chars / 4` tokens each).
async fn create(proxy: &str, n: usize, chars: usize) -> reqwest::Response {
    let requests: Vec<Value> = (0..n)
        .map(|i| {
            json!({"request": {"contents": [{"parts": [{"text": "x".repeat(chars)}]}]},
                   "metadata": {"key": i.to_string()}})
        })
        .collect();
    http()
        .post(format!("{proxy}/v1beta/models/{MODEL}:batchGenerateContent"))
        .header("x-goog-api-key", CLIENT_KEY)
        .json(&json!({"batch": {"displayName": "b", "inputConfig": {"requests": {"requests": requests}}}}))
        .send()
        .await
        .unwrap()
}

async fn call(proxy: &str, method: reqwest::Method, path: &str) -> reqwest::Response {
    http()
        .request(method, format!("{proxy}/v1beta/{path}"))
        .header("x-goog-api-key", CLIENT_KEY)
        .send()
        .await
        .unwrap()
}

/// The pooled key the fake saw create each job, in order.
fn creators(fake: &FakeUpstream) -> Vec<String> {
    fake.calls(":batchGenerateContent")
        .iter()
        .map(|r| r.key().unwrap())
        .collect()
}

#[tokio::test]
async fn batch_jobs_are_spread_over_projects_by_enqueued_token_room_and_refused_without_any() {
    let fake = FakeUpstream::start().await;
    let proxy = start_proxy(&fake.url, opts()).await;
    // 60 tokens: one project keeps 40.
    let a = create(&proxy.url, 2, 120).await;
    assert_eq!(a.status(), 200);
    assert!(
        json_of(a).await["name"]
            .as_str()
            .unwrap()
            .starts_with("batches/")
    );
    // 60 more go to the other project (the first has room for 40 only).
    assert_eq!(create(&proxy.url, 2, 120).await.status(), 200);
    let keys = creators(&fake);
    assert_eq!(keys.len(), 2);
    assert_ne!(keys[0], keys[1], "the second job went to the other project");
    // 30 fit on either; 60 fit nowhere: 429 before Google is asked.
    let refused = create(&proxy.url, 2, 120).await;
    assert_eq!(refused.status(), 429);
    assert!(refused.headers().contains_key("retry-after"));
    let v = json_of(refused).await;
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("limits.batch_enqueued_tokens"),
        "{v}"
    );
    assert_eq!(creators(&fake).len(), 2);
    assert_eq!(create(&proxy.url, 1, 120).await.status(), 200);
}

#[tokio::test]
async fn a_batch_is_read_cancelled_and_deleted_with_its_creators_key_and_frees_its_room_when_it_ends()
 {
    let fake = FakeUpstream::start().await;
    let proxy = start_proxy(
        &fake.url,
        ProxyOpts::keys(&KEYS).toml("[limits]\nbatch_concurrent = 1\n"),
    )
    .await;
    let first = json_of(create(&proxy.url, 1, 40).await).await;
    let name = first["name"].as_str().unwrap().to_string();
    let second = json_of(create(&proxy.url, 1, 40).await).await;
    let other = second["name"].as_str().unwrap().to_string();
    // One job at once per project: both projects are busy now.
    assert_eq!(create(&proxy.url, 1, 40).await.status(), 429);
    // Reads go with the key that created the job (the fake answers 403 to any other).
    for _ in 0..3 {
        let r = call(&proxy.url, reqwest::Method::GET, &name).await;
        assert_eq!(r.status(), 200);
        assert_eq!(json_of(r).await["metadata"]["state"], "BATCH_STATE_PENDING");
    }
    let cancel = call(&proxy.url, reqwest::Method::POST, &format!("{name}:cancel")).await;
    assert_eq!(cancel.status(), 200);
    // Cancelled, but not seen ended yet: still held.
    assert_eq!(create(&proxy.url, 1, 40).await.status(), 429);
    let r = call(&proxy.url, reqwest::Method::GET, &name).await;
    assert_eq!(
        json_of(r).await["metadata"]["state"],
        "BATCH_STATE_CANCELLED"
    );
    // Seen ended: its project's room is free again.
    assert_eq!(create(&proxy.url, 1, 40).await.status(), 200);
    // Deleting a job releases it too.
    let d = call(&proxy.url, reqwest::Method::DELETE, &other).await;
    assert_eq!(d.status(), 200);
    assert_eq!(create(&proxy.url, 1, 40).await.status(), 200);
    // Every call about a job went out with the key that created it.
    let owner = |job: &str| {
        let job = job.to_string();
        fake.recorded()
            .iter()
            .filter(|r| r.path.contains(&job))
            .map(|r| r.key().unwrap())
            .collect::<std::collections::HashSet<_>>()
    };
    assert_eq!(owner(&name).len(), 1, "{:?}", owner(&name));
    assert_eq!(owner(&other).len(), 1);
}

#[tokio::test]
async fn a_finished_batch_is_recorded_at_batch_prices() {
    let fake = FakeUpstream::start().await;
    let proxy = start_proxy(&fake.url, opts()).await;
    let job = json_of(create(&proxy.url, 3, 40).await).await;
    let name = job["name"].as_str().unwrap().to_string();
    fake_batches::finish(&fake.state.batches, &name);
    let r = call(&proxy.url, reqwest::Method::GET, &name).await;
    assert_eq!(r.status(), 200);
    let v = json_of(r).await;
    assert_eq!(
        v["response"]["inlinedResponses"]["inlinedResponses"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
    // Three results of 10 prompt and 5 candidates tokens, at half the list price.
    let usage = gemini_quota_proxy::ledger::TokenUsage {
        input: 30,
        output: 15,
        ..Default::default()
    };
    let list = proxy
        .state
        .config
        .prices
        .cost(MODEL, &usage, gemini_quota_proxy::ledger::Billing::Paid)
        .list_nano;
    assert!(list > 0);
    let recorded: u64 = proxy
        .state
        .ledger
        .cost_totals()
        .iter()
        .filter(|(m, _, _)| &**m == MODEL)
        .map(|(_, _, c)| *c)
        .sum();
    assert_eq!(recorded, (list as f64 * 0.5).round() as u64);
    // Read again: recorded once.
    call(&proxy.url, reqwest::Method::GET, &name).await;
    let again: u64 = proxy
        .state
        .ledger
        .cost_totals()
        .iter()
        .filter(|(m, _, _)| &**m == MODEL)
        .map(|(_, _, c)| *c)
        .sum();
    assert_eq!(again, recorded);
}

#[tokio::test]
async fn the_background_check_releases_and_costs_a_job_nobody_reads() {
    let fake = FakeUpstream::start().await;
    let proxy = start_proxy(
        &fake.url,
        ProxyOpts::keys(&KEYS[..1])
            .toml("[limits]\nbatch_concurrent = 1\n\n[batch]\npoll_secs = 0.1\n"),
    )
    .await;
    let job = json_of(create(&proxy.url, 2, 40).await).await;
    let name = job["name"].as_str().unwrap().to_string();
    assert_eq!(create(&proxy.url, 1, 40).await.status(), 429);
    let polled = |fake: &FakeUpstream| {
        fake.recorded()
            .iter()
            .filter(|r| r.method == "GET" && r.path.ends_with(&name))
            .count()
    };
    assert!(
        eventually(std::time::Duration::from_secs(5), || polled(&fake) >= 1).await,
        "the proxy checks its open jobs by itself"
    );
    fake_batches::finish(&fake.state.batches, &name);
    let state = proxy.state.clone();
    assert!(
        eventually(std::time::Duration::from_secs(5), || state
            .ledger
            .cost_totals()
            .iter()
            .any(|(m, _, c)| &**m == MODEL && *c > 0))
        .await,
        "the finished job's results were costed"
    );
    assert_eq!(create(&proxy.url, 1, 40).await.status(), 200);
}

/// The client of the budget tests: 0.01 USD a day, which one job of three requests fits.
const TEAM: &str = "team-batch-key-0123456789";

async fn team_proxy(fake: &FakeUpstream) -> Proxy {
    start_proxy(
        &fake.url,
        ProxyOpts::keys(&KEYS).toml(&format!(
            "[[auth.clients]]\nname = \"team\"\nkey = \"{TEAM}\"\ndaily_budget_usd = 0.01\n"
        )),
    )
    .await
}

/// A job of three requests (about 0.0077 USD reserved at batch prices, 2,048 output tokens
/// each) created as the team.
async fn create_as_team(proxy: &str) -> reqwest::Response {
    shared::create_as(proxy, TEAM, 3, 40).await
}

/// Job `name` finished at Google and read by the team: its reservation settled to its cost.
async fn settle_as_team(fake: &FakeUpstream, proxy: &str, name: &str) {
    fake_batches::finish(&fake.state.batches, name);
    assert_eq!(shared::get_as(proxy, TEAM, name).await.status(), 200);
}

#[tokio::test]
async fn a_clients_batch_over_its_budget_is_refused_until_its_reservation_is_settled() {
    let fake = FakeUpstream::start().await;
    let proxy = team_proxy(&fake).await;
    let as_team = || create_as_team(&proxy.url);
    // Three requests reserve about 0.0077 USD at batch prices (2,048 output tokens each).
    let first = as_team().await;
    assert_eq!(first.status(), 200);
    let name = json_of(first).await["name"].as_str().unwrap().to_string();
    let refused = as_team().await;
    assert_eq!(refused.status(), 429);
    let v = json_of(refused).await;
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("daily_budget_usd"),
        "{v}"
    );
    assert_eq!(
        creators(&fake).len(),
        1,
        "a refused batch never reaches Google"
    );
    // Its results cost far less than reserved: settled, the next one fits.
    settle_as_team(&fake, &proxy.url, &name).await;
    assert_eq!(as_team().await.status(), 200);
}

#[tokio::test]
async fn a_creation_tried_again_on_another_key_reserves_its_budget_once() {
    let fake = FakeUpstream::start().await;
    let proxy = team_proxy(&fake).await;
    let as_team = || create_as_team(&proxy.url);
    // The first key's project is unavailable once: the job (about 0.0077 USD reserved, of a
    // 0.01 budget) is created with the other key, its first reservation given back first.
    fake.behave(|b| b.script.push_back(Scripted::Status(503)));
    let created = as_team().await;
    let status = created.status();
    let v = json_of(created).await;
    assert_eq!(status, 200, "{v}");
    let keys = creators(&fake);
    assert_eq!(keys.len(), 2, "tried once more: {keys:?}");
    assert_ne!(keys[0], keys[1], "on another key");
    // Reserved once, not twice: a second job still does not fit, and nothing is left over
    // once the first is settled.
    assert_eq!(as_team().await.status(), 429);
    let name = v["name"].as_str().unwrap().to_string();
    settle_as_team(&fake, &proxy.url, &name).await;
    assert_eq!(as_team().await.status(), 200);
}

#[tokio::test]
async fn a_jobs_results_file_is_downloaded_with_the_key_that_created_the_job() {
    let fake = FakeUpstream::start().await;
    let proxy = start_proxy(&fake.url, opts()).await;
    // Two jobs, one per project: the second's results file is only in its project.
    create(&proxy.url, 1, 40).await;
    let job = json_of(create(&proxy.url, 1, 400).await).await;
    let name = job["name"].as_str().unwrap().to_string();
    let file = fake_batches::finish_to_file(&fake.state.batches, &name);
    let r = call(&proxy.url, reqwest::Method::GET, &name).await;
    assert_eq!(json_of(r).await["response"]["responsesFile"], file);
    for _ in 0..3 {
        let r = http()
            .get(format!(
                "{}/download/v1beta/{file}:download?alt=media",
                proxy.url
            ))
            .header("x-goog-api-key", CLIENT_KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert!(r.text().await.unwrap().contains("usageMetadata"));
    }
}
