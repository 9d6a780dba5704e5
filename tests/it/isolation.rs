//! Isolation between clients: a client key reads only its own usage, and the pool's capacity
//! and health but not its spend nor another client's alerts; a resource created through the
//! proxy belongs to the client that created it.

use crate::common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};

const KEYS: [&str; 2] = ["AIzaIsolationKey000001", "AIzaIsolationKey000002"];
const TEAM_A: &str = "team-a-isolation-key-AAAA1111";
const TEAM_B: &str = "team-b-isolation-key-BBBB2222";
const MODEL: &str = "gemini-2.5-flash";

fn two_teams() -> ProxyOpts {
    ProxyOpts::keys(&KEYS).env(
        "PROXY_CLIENT_KEYS",
        &format!("team-a:{TEAM_A},team-b:{TEAM_B}"),
    )
}

async fn generate_as(proxy: &str, key: &str) -> reqwest::Response {
    http()
        .post(format!("{proxy}/v1beta/models/{MODEL}:generateContent"))
        .header("x-goog-api-key", key)
        .json(&json!({"contents": [{"role": "user", "parts": [{"text": "hello there"}]}]}))
        .send()
        .await
        .unwrap()
}

async fn get_as(url: &str, key: &str) -> (u16, Value) {
    let r = http()
        .get(url)
        .header("x-goog-api-key", key)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), json_of(r).await)
}

/// `/api/ai/usage/` as `key`, once the ledger holds `want` requests for the admin.
async fn usage_as(proxy: &str, key: &str, group_by: &str) -> Value {
    let (code, v) = get_as(
        &format!("{proxy}/api/ai/usage/?window=1h&group_by={group_by}"),
        key,
    )
    .await;
    assert_eq!(code, 200, "{v}");
    v
}

async fn settled(proxy: &str, want: u64) {
    for _ in 0..200 {
        let v = usage_as(proxy, ADMIN_TOKEN, "none").await;
        if v["totals"]["requests"] == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the ledger never reached {want} requests");
}

fn clients_of(report: &Value) -> Vec<String> {
    report["series"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["group"]["client"].as_str().unwrap_or("").to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_key_reads_only_its_own_usage_whatever_the_grouping() {
    let fake = FakeUpstream::start().await;
    let proxy = start_proxy(&fake.url, two_teams()).await;
    for (key, n) in [(TEAM_A, 3), (TEAM_B, 2)] {
        for _ in 0..n {
            let r = generate_as(&proxy.url, key).await;
            assert_eq!(r.status(), 200);
            r.bytes().await.unwrap();
        }
    }
    settled(&proxy.url, 5).await;

    let admin = usage_as(&proxy.url, ADMIN_TOKEN, "client").await;
    assert_eq!(clients_of(&admin), ["team-a", "team-b"], "{admin}");
    let a = usage_as(&proxy.url, TEAM_A, "client").await;
    assert_eq!(clients_of(&a), ["team-a"], "{a}");
    assert_eq!(a["totals"]["requests"], 3, "{a}");
    let b = usage_as(&proxy.url, TEAM_B, "client").await;
    assert_eq!(clients_of(&b), ["team-b"], "{b}");
    assert_eq!(b["totals"]["requests"], 2, "{b}");
    for group_by in ["model", "key", "project", "none"] {
        let v = usage_as(&proxy.url, TEAM_B, group_by).await;
        assert_eq!(v["totals"]["requests"], 2, "{group_by}: {v}");
        let in_series: u64 = v["series"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|s| s["points"].as_array().unwrap())
            .map(|p| p["requests"].as_u64().unwrap())
            .sum();
        assert_eq!(in_series, 2, "{group_by}: {v}");
        assert!(!v.to_string().contains("team-a"), "{group_by}: {v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_key_sees_the_pools_capacity_but_not_its_spend_nor_alert_channels() {
    let fake = FakeUpstream::start().await;
    let proxy = start_proxy(
        &fake.url,
        two_teams().toml("[[alerts.webhooks]]\nurl = \"http://127.0.0.1:9/ops-hook\"\n"),
    )
    .await;
    let r = generate_as(&proxy.url, TEAM_A).await;
    assert_eq!(r.status(), 200);
    r.bytes().await.unwrap();
    settled(&proxy.url, 1).await;

    let status_url = format!("{}/api/ai/quota-status/", proxy.url);
    let (_, admin) = get_as(&status_url, ADMIN_TOKEN).await;
    let admin = &admin["quota_status"];
    assert!(admin["cost"].is_object(), "{admin}");
    assert_eq!(admin["alerts"]["channels"].as_array().unwrap().len(), 1);

    let (code, client) = get_as(&status_url, TEAM_B).await;
    assert_eq!(code, 200);
    let client = &client["quota_status"];
    // Capacity and health: the limits, what is left, the keys' states.
    assert_eq!(
        client["usage"]["minute_limit"],
        admin["usage"]["minute_limit"]
    );
    assert_eq!(client["keys"].as_array().unwrap().len(), 2, "{client}");
    // Not the spend, nor where alerts go.
    assert!(client["cost"].is_null(), "{client}");
    assert!(
        client["alerts"]["channels"].as_array().unwrap().is_empty(),
        "{client}"
    );
    for line in client["forecast"]["pool"].as_array().into_iter().flatten() {
        assert!(line["projected_cost_usd"].is_null(), "{line}");
    }
    assert!(!client.to_string().contains("ops-hook"), "{client}");

    let alerts_url = format!("{}/api/ai/alerts/", proxy.url);
    let (_, admin) = get_as(&alerts_url, ADMIN_TOKEN).await;
    assert!(admin["channels"].is_array(), "{admin}");
    let (code, client) = get_as(&alerts_url, TEAM_B).await;
    assert_eq!(code, 200);
    assert!(client["firing"].is_array(), "{client}");
    assert!(client.get("channels").is_none(), "{client}");
}

/// A file uploaded by `key` (resumable start, then one finalizing chunk): its name.
async fn upload_as(proxy: &str, key: &str, display: &str) -> String {
    let client = http();
    let start = client
        .post(format!("{proxy}/upload/v1beta/files"))
        .header("x-goog-api-key", key)
        .header("x-goog-upload-protocol", "resumable")
        .header("x-goog-upload-command", "start")
        .json(&json!({"file": {"display_name": display}}))
        .send()
        .await
        .unwrap();
    assert_eq!(start.status(), 200);
    let session = start.headers()["x-goog-upload-url"]
        .to_str()
        .unwrap()
        .to_string();
    let done = client
        .post(&session)
        .header("x-goog-api-key", key)
        .header("x-goog-upload-command", "upload, finalize")
        .header("x-goog-upload-offset", "0")
        .body("file contents")
        .send()
        .await
        .unwrap();
    assert_eq!(done.status(), 200);
    let v = json_of(done).await;
    v["file"]["name"].as_str().unwrap().to_string()
}

fn names_in(listing: &Value) -> Vec<String> {
    listing["files"]
        .as_array()
        .map(|fs| {
            fs.iter()
                .map(|f| f["name"].as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}

async fn resources_belong_to_the_client_that_created_them(redis: Option<&RedisServer>) {
    let fake = FakeUpstream::start().await;
    let mut opts = two_teams();
    if let Some(r) = redis {
        opts = opts.env("REDIS_URL", &r.url);
    }
    let proxy = start_proxy(&fake.url, opts).await;
    let file = upload_as(&proxy.url, TEAM_A, "a's file").await;
    let id = file.strip_prefix("files/").unwrap();
    let file_url = format!("{}/v1beta/{file}", proxy.url);

    // The owner and the admin read it.
    assert_eq!(get_as(&file_url, TEAM_A).await.0, 200);
    assert_eq!(get_as(&file_url, ADMIN_TOKEN).await.0, 200);

    // Another client gets Google's own answer for a file that is not its own, and its request
    // never leaves with the owner's key.
    let before = fake.state.recorded.lock().unwrap().len();
    let (code, v) = get_as(&file_url, TEAM_B).await;
    assert_eq!(code, 403, "{v}");
    assert_eq!(v["error"]["status"], "PERMISSION_DENIED");
    assert_eq!(
        v["error"]["message"],
        format!("You do not have permission to access the File {id} or it may not exist.")
    );
    let deleted = http()
        .delete(&file_url)
        .header("x-goog-api-key", TEAM_B)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 403);
    let referenced = http()
        .post(format!("{}/v1beta/models/{MODEL}:generateContent", proxy.url))
        .header("x-goog-api-key", TEAM_B)
        .json(&json!({"contents": [{"role": "user", "parts": [
            {"text": "describe it"},
            {"fileData": {"fileUri": format!("https://generativelanguage.googleapis.com/v1beta/{file}"), "mimeType": "text/plain"}}
        ]}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(referenced.status(), 403);
    assert_eq!(
        fake.state.recorded.lock().unwrap().len(),
        before,
        "a request for another client's file reached the upstream"
    );

    // A cached content is the same.
    let created = http()
        .post(format!("{}/v1beta/cachedContents", proxy.url))
        .header("x-goog-api-key", TEAM_A)
        .json(&json!({"model": format!("models/{MODEL}"), "contents": [{"role": "user", "parts": [{"text": "x"}]}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 200);
    let (code, v) = get_as(&format!("{}/v1beta/cachedContents/c1", proxy.url), TEAM_B).await;
    assert_eq!(code, 403, "{v}");

    // Listings show a client only its own files; the admin sees the whole page.
    let list_url = format!("{}/v1beta/files", proxy.url);
    let (code, a) = get_as(&list_url, TEAM_A).await;
    assert_eq!(code, 200, "{a}");
    assert_eq!(names_in(&a), vec![file.clone()], "{a}");
    assert_eq!(a["nextPageToken"], "next-page");
    let (_, b) = get_as(&list_url, TEAM_B).await;
    assert!(names_in(&b).is_empty(), "{b}");
    let (_, admin) = get_as(&list_url, ADMIN_TOKEN).await;
    assert_eq!(names_in(&admin).len(), 2, "{admin}");

    if let Some(r) = redis {
        let mut stored = String::new();
        for k in r.all_keys().lines().filter(|l| l.starts_with('{')) {
            stored.push_str(k);
            stored.push_str(&r.cli(&["DUMP", k]).unwrap_or_default());
        }
        assert!(stored.contains("team-a"), "the owner is stored by name");
        for secret in [TEAM_A, TEAM_B, KEYS[0], KEYS[1]] {
            assert!(!stored.contains(secret), "{secret} in Redis");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resource_belongs_to_the_client_that_created_it_in_memory() {
    resources_belong_to_the_client_that_created_them(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resource_belongs_to_the_client_that_created_it_on_redis() {
    let redis = RedisServer::start();
    resources_belong_to_the_client_that_created_them(Some(&redis)).await;
}
