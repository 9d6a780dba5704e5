//! Batch jobs with files: a file-input job's enqueued tokens are estimated from the size of the
//! input file uploaded through the proxy (~4 characters a token), and a job's results file is
//! costed at batch prices, for the client that created the job, when it is downloaded through
//! the proxy (once, however often it is downloaded).

use crate::common;

use common::fake_batches;
use common::*;
use gemini_quota_proxy::ledger::{Billing, TokenUsage};
use serde_json::json;

const MODEL: &str = "gemini-2.5-flash";
const KEY: &str = "AIzaFileBatchKey0001";
const TEAM: &str = "team-file-batch-key-01234";

async fn upload(proxy: &str, bytes: usize) -> String {
    let c = http();
    let start = c
        .post(format!("{proxy}/upload/v1beta/files"))
        .header("x-goog-api-key", CLIENT_KEY)
        .header("x-goog-upload-protocol", "resumable")
        .header("x-goog-upload-command", "start")
        .header("x-goog-upload-header-content-length", bytes.to_string())
        .json(&json!({"file": {"display_name": "requests.jsonl"}}))
        .send()
        .await
        .unwrap();
    let url = start.headers()["x-goog-upload-url"]
        .to_str()
        .unwrap()
        .to_string();
    let fin = c
        .post(&url)
        .header("x-goog-api-key", CLIENT_KEY)
        .header("x-goog-upload-command", "upload, finalize")
        .header("x-goog-upload-offset", "0")
        .body("r".repeat(bytes))
        .send()
        .await
        .unwrap();
    assert_eq!(fin.status(), 200);
    json_of(fin).await["file"]["name"]
        .as_str()
        .unwrap()
        .to_string()
}

async fn create_from(proxy: &str, file: &str) -> reqwest::Response {
    http()
        .post(format!(
            "{proxy}/v1beta/models/{MODEL}:batchGenerateContent"
        ))
        .header("x-goog-api-key", CLIENT_KEY)
        .json(&json!({"batch": {"displayName": "f", "inputConfig": {"fileName": file}}}))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_file_input_batch_is_estimated_from_the_size_of_its_uploaded_file() {
    let fake = FakeUpstream::start().await;
    let proxy = start_proxy(
        &fake.url,
        ProxyOpts::keys(&[KEY])
            .toml("[limits]\nbatch_enqueued_tokens = 150\nbatch_concurrent = 5\n"),
    )
    .await;
    // 400 bytes: 100 tokens.
    let file = upload(&proxy.url, 400).await;
    assert_eq!(create_from(&proxy.url, &file).await.status(), 200);
    let entries = proxy.state.store.batch_entries().await.unwrap();
    let tokens: Vec<u64> = entries.iter().map(|(_, j)| j.tokens).collect();
    assert_eq!(tokens, [100], "{entries:?}");
    // Another 100 do not fit the 150 enqueued tokens: refused before Google is asked.
    let refused = create_from(&proxy.url, &file).await;
    assert_eq!(refused.status(), 429);
    let v = json_of(refused).await;
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("estimated at 100 tokens"),
        "{v}"
    );
    assert_eq!(fake.calls(":batchGenerateContent").len(), 1);
}

#[tokio::test]
async fn a_results_file_downloaded_through_the_proxy_is_costed_at_batch_prices_once_for_its_client()
{
    let fake = FakeUpstream::start().await;
    let proxy = start_proxy(
        &fake.url,
        ProxyOpts::keys(&[KEY]).toml(&format!(
            "[[auth.clients]]\nname = \"team\"\nkey = \"{TEAM}\"\ndaily_budget_usd = 1.0\n"
        )),
    )
    .await;
    let requests: Vec<_> = (0..3)
        .map(|_| json!({"request": {"contents": [{"parts": [{"text": "q"}]}]}}))
        .collect();
    let job = http()
        .post(format!(
            "{}/v1beta/models/{MODEL}:batchGenerateContent",
            proxy.url
        ))
        .header("x-goog-api-key", TEAM)
        .json(&json!({"batch": {"inputConfig": {"requests": {"requests": requests}}}}))
        .send()
        .await
        .unwrap();
    let name = json_of(job).await["name"].as_str().unwrap().to_string();
    let file = fake_batches::finish_using(&fake.state.batches, &name, 1_000, 100, true).unwrap();
    let get = |path: String| {
        http()
            .get(format!("{}/{path}", proxy.url))
            .header("x-goog-api-key", TEAM)
            .send()
    };
    let r = get(format!("v1beta/{name}")).await.unwrap();
    assert_eq!(json_of(r).await["response"]["responsesFile"], file);
    let team_cost = |p: &Proxy| -> u64 {
        p.state
            .ledger
            .cost_totals()
            .iter()
            .filter(|(m, c, _)| &**m == MODEL && &**c == "team")
            .map(|(_, _, n)| *n)
            .sum()
    };
    assert_eq!(
        team_cost(&proxy),
        0,
        "not costed before its results are read"
    );
    let usage = TokenUsage {
        input: 3_000,
        output: 300,
        ..Default::default()
    };
    let prices = &proxy.state.config.prices;
    let expected = prices.batch_cost(MODEL, &usage, Billing::Paid);
    assert!(expected.billed_nano > 0);
    for _ in 0..2 {
        let r = get(format!("download/v1beta/{file}:download?alt=media"))
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().await.unwrap().lines().count(), 3);
        let state = proxy.state.clone();
        let p = &proxy;
        assert!(
            eventually(std::time::Duration::from_secs(5), || team_cost(p)
                == expected.billed_nano)
            .await,
            "{} != {}",
            team_cost(&proxy),
            expected.billed_nano
        );
        // The budget's reservation was replaced by the results' cost.
        let period = gemini_quota_proxy::quota::ClientPeriod::at(
            state.config.limits.timezone,
            chrono::Utc::now().timestamp_millis(),
        );
        let spent = state
            .store
            .client_spend(&[("team".into(), period.day, period.month)])
            .await
            .unwrap()[0]
            .0;
        assert_eq!(spent, expected.list_nano.div_ceil(1000));
    }
}

#[tokio::test]
async fn the_status_shows_open_batches_per_project_to_the_admin_and_to_a_client_only_its_own() {
    const OTHER: &str = "other-file-batch-key-0123";
    let fake = FakeUpstream::start().await;
    let proxy = start_proxy(
        &fake.url,
        ProxyOpts::keys(&[KEY]).toml(&format!(
            "[limits]\nbatch_concurrent = 7\nbatch_enqueued_tokens = 1000\n\n[[auth.clients]]\nname = \"team\"\nkey = \"{TEAM}\"\n\n[[auth.clients]]\nname = \"ops\"\nkey = \"{OTHER}\"\n"
        )),
    )
    .await;
    for (key, chars) in [(TEAM, 40), (TEAM, 80), (OTHER, 400)] {
        let r = http()
            .post(format!(
                "{}/v1beta/models/{MODEL}:batchGenerateContent",
                proxy.url
            ))
            .header("x-goog-api-key", key)
            .json(&json!({"batch": {"inputConfig": {"requests": {"requests": [
                {"request": {"contents": [{"parts": [{"text": "x".repeat(chars)}]}]}}
            ]}}}}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let (code, admin) = quota_status(&proxy.url, ADMIN_TOKEN).await;
    assert_eq!(code, 200);
    let b = &admin["quota_status"]["batches"];
    assert_eq!(b.as_array().unwrap().len(), 1, "{b}");
    assert_eq!(b[0]["jobs"], 3);
    assert_eq!(b[0]["jobs_limit"], 7);
    assert_eq!(b[0]["enqueued_tokens"][MODEL], 10 + 20 + 100);
    assert_eq!(b[0]["enqueued_tokens_limit"], 1000);
    let (_, team) = quota_status(&proxy.url, TEAM).await;
    let b = &team["quota_status"]["batches"];
    assert_eq!(b[0]["jobs"], 2, "{b}");
    assert_eq!(b[0]["enqueued_tokens"][MODEL], 30);
}
