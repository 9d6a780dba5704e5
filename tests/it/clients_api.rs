//! The runtime clients API (`/api/ai/clients`): an admin creates a client and its key works at
//! once; the list shows limits and usage, never a key or its digest; limits change; a rotated
//! key keeps working for its grace only; a revoked key gets 403. Kept in `auth.clients_file`
//! across a restart of the real binary, and in Redis, where every replica sees a change within
//! about a second. No key ever appears in Redis, a log line or the file.

use crate::common;

use std::time::{Duration, Instant};

use common::binary::Binary;
use common::*;
use serde_json::{Value, json};

const POOLED: &str = "AIzaClientsApiKey00001";

async fn call(
    method: reqwest::Method,
    url: String,
    cred: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let mut r = http().request(method, url);
    if let Some(c) = cred {
        r = r.header("x-goog-api-key", c);
    }
    if let Some(b) = body {
        r = r.json(&b);
    }
    let resp = r.send().await.unwrap();
    let code = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (code, serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn create(proxy: &str, body: Value) -> (u16, Value) {
    call(
        reqwest::Method::POST,
        format!("{proxy}/api/ai/clients"),
        Some(ADMIN_TOKEN),
        Some(body),
    )
    .await
}

async fn list(proxy: &str) -> (Value, String) {
    let r = http()
        .get(format!("{proxy}/api/ai/clients"))
        .header("x-goog-api-key", ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    (serde_json::from_str(&text).unwrap(), text)
}

fn row<'a>(list: &'a Value, name: &str) -> Option<&'a Value> {
    list["clients"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
}

/// The status of a generate call with `key`.
async fn generate_with(proxy: &str, key: &str) -> u16 {
    let r = http()
        .post(format!(
            "{proxy}/v1beta/models/gemini-2.5-flash:generateContent"
        ))
        .header("x-goog-api-key", key)
        .json(&json!({"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}))
        .send()
        .await
        .unwrap();
    let code = r.status().as_u16();
    let _ = r.bytes().await;
    code
}

/// Whether `proxy` takes `key` now (`/api/ai/whoami`: 200, or 401 for a key it does not
/// know), polled without spending the pool's quota.
async fn accepted(proxy: &str, key: &str) -> bool {
    let r = http()
        .get(format!("{proxy}/api/ai/whoami"))
        .header("x-goog-api-key", key)
        .send()
        .await
        .unwrap();
    r.status() == 200
}

/// Poll until `proxy` takes `key` (`want`) or refuses it; how long it took, or `None` past
/// `within`.
async fn accepted_within(proxy: &str, key: &str, want: bool, within: Duration) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < within {
        if accepted(proxy, key).await == want {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

fn digest_hex(key: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(key.as_bytes()))
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "gqp-clients-api-{}-{name}-{}",
        std::process::id(),
        fastrand::u32(..)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn memory_binary(upstream: &str, file: &str) -> Binary {
    Binary::start(
        &[
            ("GEMINI_API_KEYS", POOLED),
            ("PROXY_CLIENT_KEYS", CLIENT_KEY),
            ("PROXY_ADMIN_TOKEN", ADMIN_TOKEN),
            ("GEMINI_UPSTREAM_URL", upstream),
            ("PROXY_CLIENTS_FILE", file),
            ("PROXY_QUEUE_MAX_WAIT_SECS", "0"),
            ("RUST_LOG", "debug"),
        ],
        &[],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_creates_lists_patches_rotates_and_revokes_a_client_kept_in_a_file_across_a_restart()
 {
    let fake = FakeUpstream::start().await;
    let dir = temp_dir("file");
    let file = dir.join("clients.json");
    let file_s = file.to_string_lossy().into_owned();
    let proxy = memory_binary(&fake.url, &file_s);
    let url = proxy.url.clone();

    // Admin only: 401 without a credential, 403 with a client key, in Google's envelope.
    let body = json!({"name": "team-x", "rpm": 100, "daily_budget_usd": 5.0});
    let (code, v) = call(
        reqwest::Method::POST,
        format!("{url}/api/ai/clients"),
        None,
        Some(body.clone()),
    )
    .await;
    assert_eq!(
        (code, v["error"]["status"].as_str()),
        (401, Some("UNAUTHENTICATED"))
    );
    let (code, v) = call(
        reqwest::Method::GET,
        format!("{url}/api/ai/clients"),
        Some(CLIENT_KEY),
        None,
    )
    .await;
    assert_eq!(
        (code, v["error"]["status"].as_str()),
        (403, Some("PERMISSION_DENIED"))
    );

    // Bad input: a clear 400 each.
    for bad in [
        json!({"name": "x/y"}),
        json!({"name": "admin"}),
        json!({"name": "t", "rpn": 3}),
        json!({"name": "t", "rpm": 0}),
        json!({"rpm": 3}),
        json!(["not", "an", "object"]),
    ] {
        let (code, v) = create(&url, bad.clone()).await;
        assert_eq!(code, 400, "{bad}: {v}");
        assert_eq!(v["error"]["status"], "INVALID_ARGUMENT", "{bad}: {v}");
    }

    let (code, created) = create(&url, body.clone()).await;
    assert_eq!(code, 201, "{created}");
    let key = created["key"].as_str().unwrap().to_string();
    assert!(key.starts_with("gqp_") && key.len() >= 4 + 43, "{key}");
    assert_eq!(
        generate_with(&url, &key).await,
        200,
        "the key works at once"
    );
    let (code, v) = create(&url, body.clone()).await;
    assert_eq!(
        (code, v["error"]["status"].as_str()),
        (409, Some("ALREADY_EXISTS"))
    );
    let (code, v) = create(&url, json!({"name": "client1"})).await;
    assert_eq!(code, 409, "a configured name is taken: {v}");

    // The list: configured and runtime clients with their limits and usage; no key, no digest.
    let (l, text) = list(&url).await;
    let x = row(&l, "team-x").expect("team-x listed");
    assert_eq!(x["origin"], "runtime");
    assert_eq!(x["limits"]["rpm"], 100);
    assert_eq!(
        x["budget_left_usd"]["daily"].as_f64().map(|d| d <= 5.0),
        Some(true)
    );
    assert_eq!(row(&l, "client1").unwrap()["origin"], "config");
    assert!(
        !text.contains(&key) && !text.contains(&digest_hex(&key)),
        "{text}"
    );
    let mut counted = false;
    for _ in 0..100 {
        let (l, _) = list(&url).await;
        if row(&l, "team-x").unwrap()["today"]["requests"] == 1 {
            counted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(counted, "today's request is counted for team-x");

    // Patch: a field replaced, one removed; a configured client is the config's to change.
    let (code, v) = call(
        reqwest::Method::PATCH,
        format!("{url}/api/ai/clients/team-x"),
        Some(ADMIN_TOKEN),
        Some(json!({"rpm": 50, "daily_budget_usd": null})),
    )
    .await;
    assert_eq!(code, 200, "{v}");
    let (l, _) = list(&url).await;
    let x = row(&l, "team-x").unwrap();
    assert_eq!(x["limits"]["rpm"], 50);
    assert!(x["limits"].get("daily_budget_usd").is_none(), "{x}");
    let (code, v) = call(
        reqwest::Method::PATCH,
        format!("{url}/api/ai/clients/client1"),
        Some(ADMIN_TOKEN),
        Some(json!({"rpm": 50})),
    )
    .await;
    assert_eq!(code, 409, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("config"));
    let (code, _) = call(
        reqwest::Method::PATCH,
        format!("{url}/api/ai/clients/nobody"),
        Some(ADMIN_TOKEN),
        Some(json!({"rpm": 50})),
    )
    .await;
    assert_eq!(code, 404);

    // Rotate with a 2 s grace: both keys work, then the old one stops.
    let (code, v) = call(
        reqwest::Method::POST,
        format!("{url}/api/ai/clients/team-x/rotate"),
        Some(ADMIN_TOKEN),
        Some(json!({"grace_secs": 2})),
    )
    .await;
    assert_eq!(code, 200, "{v}");
    let new_key = v["key"].as_str().unwrap().to_string();
    assert_ne!(new_key, key);
    assert_eq!(generate_with(&url, &new_key).await, 200);
    assert_eq!(
        generate_with(&url, &key).await,
        200,
        "the old key works in its grace"
    );
    assert!(
        accepted_within(&url, &key, false, Duration::from_secs(15))
            .await
            .is_some(),
        "the old key stops after its grace"
    );
    assert_eq!(generate_with(&url, &key).await, 403);
    assert_eq!(generate_with(&url, &new_key).await, 200);
    let (code, _) = call(
        reqwest::Method::POST,
        format!("{url}/api/ai/clients/team-x/rotate"),
        Some(ADMIN_TOKEN),
        Some(json!({"grace_secs": 99999999})),
    )
    .await;
    assert_eq!(code, 400, "a grace past its bound is refused");

    // The file holds digests only, readable by the proxy's user alone.
    let saved = std::fs::read_to_string(&file).unwrap();
    assert!(saved.contains(&digest_hex(&new_key)));
    assert!(!saved.contains(&new_key) && !saved.contains(&key));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // A restart reads the file: the client, its limits and its new key are back.
    let (logs1, _) = proxy.stop();
    let proxy = memory_binary(&fake.url, &file_s);
    let url = proxy.url.clone();
    let code = generate_with(&url, &new_key).await;
    assert_eq!(code, 200, "{}", proxy.logs());
    assert_eq!(generate_with(&url, &key).await, 403);
    let (l, _) = list(&url).await;
    assert_eq!(row(&l, "team-x").unwrap()["limits"]["rpm"], 50);

    // Revoke: 403 at once.
    let (code, v) = call(
        reqwest::Method::DELETE,
        format!("{url}/api/ai/clients/team-x"),
        Some(ADMIN_TOKEN),
        None,
    )
    .await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(generate_with(&url, &new_key).await, 403);
    let (l, _) = list(&url).await;
    assert!(row(&l, "team-x").is_none());
    let (logs2, _) = proxy.stop();
    for logs in [&logs1, &logs2] {
        assert!(logs.contains("admin created a runtime client") || logs.contains("revoked"));
        assert!(
            !logs.contains(&key) && !logs.contains(&new_key),
            "a key in the logs"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn without_redis_or_a_clients_file_creating_a_client_names_the_setting_to_set() {
    let fake = FakeUpstream::start().await;
    let proxy = start_proxy(&fake.url, ProxyOpts::keys(&[POOLED])).await;
    let (code, v) = create(&proxy.url, json!({"name": "team-x"})).await;
    assert_eq!(code, 400, "{v}");
    assert_eq!(v["error"]["status"], "FAILED_PRECONDITION");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("auth.clients_file"),
        "{v}"
    );
}

/// Every key of `redis` and its value as text (strings, hashes, sets, sorted sets, lists).
fn redis_dump(redis: &RedisServer) -> String {
    let names: Vec<String> = resp_items(&redis.cli(&["KEYS", "*"]).unwrap_or_default());
    let mut out = String::new();
    for k in names {
        let t = redis.cli(&["TYPE", &k]).unwrap_or_default();
        let v = match t.trim() {
            "string" => redis.cli(&["GET", &k]),
            "hash" => redis.cli(&["HGETALL", &k]),
            "set" => redis.cli(&["SMEMBERS", &k]),
            "zset" => redis.cli(&["ZRANGE", &k, "0", "-1", "WITHSCORES"]),
            "list" => redis.cli(&["LRANGE", &k, "0", "-1"]),
            _ => None,
        };
        out.push_str(&k);
        out.push(' ');
        out.push_str(&v.unwrap_or_default());
        out.push('\n');
    }
    out
}

/// The bulk strings of a RESP array.
fn resp_items(text: &str) -> Vec<String> {
    text.split("\r\n")
        .filter(|l| !l.is_empty() && !l.starts_with('*') && !l.starts_with('$'))
        .map(str::to_string)
        .collect()
}

fn replica(upstream: &str, redis_url: &str) -> Binary {
    Binary::start(
        &[
            ("GEMINI_API_KEYS", POOLED),
            ("PROXY_CLIENT_KEYS", CLIENT_KEY),
            ("PROXY_ADMIN_TOKEN", ADMIN_TOKEN),
            ("GEMINI_UPSTREAM_URL", upstream),
            ("REDIS_URL", redis_url),
            ("PROXY_QUEUE_MAX_WAIT_SECS", "0"),
            ("RUST_LOG", "debug"),
        ],
        &[],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_created_or_revoked_on_one_replica_is_seen_by_another_within_a_second() {
    let redis = RedisServer::start();
    let fake = FakeUpstream::start().await;
    let a = replica(&fake.url, &redis.url);
    let b = replica(&fake.url, &redis.url);

    let (code, created) = create(&a.url, json!({"name": "shared-team", "rpm": 40})).await;
    assert_eq!(code, 201, "{created}");
    let key = created["key"].as_str().unwrap().to_string();
    assert_eq!(
        generate_with(&a.url, &key).await,
        200,
        "at once where created"
    );
    let took = accepted_within(&b.url, &key, true, Duration::from_secs(10))
        .await
        .expect("the other replica takes the new key");
    assert_eq!(generate_with(&b.url, &key).await, 200);
    // The poll is every 500 ms; a loaded test machine gets some slack.
    assert!(took < Duration::from_millis(2500), "took {took:?}");
    let (l, _) = list(&b.url).await;
    assert_eq!(row(&l, "shared-team").unwrap()["limits"]["rpm"], 40);
    let (code, _) = create(&b.url, json!({"name": "shared-team"})).await;
    assert_eq!(code, 409, "the name is taken on every replica");

    // A rotation on B: the new key works on A; the old one too, for its grace.
    let (code, v) = call(
        reqwest::Method::POST,
        format!("{}/api/ai/clients/shared-team/rotate", b.url),
        Some(ADMIN_TOKEN),
        Some(json!({"grace_secs": 600})),
    )
    .await;
    assert_eq!(code, 200, "{v}");
    let new_key = v["key"].as_str().unwrap().to_string();
    assert!(
        accepted_within(&a.url, &new_key, true, Duration::from_secs(10))
            .await
            .is_some()
    );
    assert_eq!(generate_with(&a.url, &new_key).await, 200);
    assert_eq!(
        generate_with(&a.url, &key).await,
        200,
        "the old key's grace runs"
    );

    // No key in Redis, keys or values: only digests.
    let dump = redis_dump(&redis);
    assert!(
        dump.contains(&digest_hex(&new_key)),
        "the digest is kept: {dump}"
    );
    for k in [&key, &new_key] {
        assert!(!dump.contains(k.as_str()), "a key in Redis");
    }

    // Revoke on A: B refuses both keys within about a second.
    let (code, _) = call(
        reqwest::Method::DELETE,
        format!("{}/api/ai/clients/shared-team", a.url),
        Some(ADMIN_TOKEN),
        None,
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(generate_with(&a.url, &new_key).await, 403);
    let took = accepted_within(&b.url, &new_key, false, Duration::from_secs(10))
        .await
        .expect("the other replica drops the key");
    assert_eq!(generate_with(&b.url, &new_key).await, 403);
    assert!(took < Duration::from_millis(2500), "took {took:?}");
    assert_eq!(generate_with(&b.url, &key).await, 403);

    for p in [a, b] {
        let (logs, _) = p.stop();
        assert!(
            !logs.contains(&key) && !logs.contains(&new_key),
            "a key in the logs"
        );
    }
}

const TEAM_A: &str = "team-a-key-0000000001";
const TEAM_B: &str = "team-b-key-0000000002";

/// Two configured teams with small daily budgets ($0.006: a request's reservation, ~2,048 output
/// tokens at $2.50/M, fits; one answer of 20,000 input tokens at $0.30/M spends it all), alerts
/// evaluated every 50 ms.
fn two_budgeted_teams() -> ProxyOpts {
    ProxyOpts::keys(&[POOLED]).toml(&format!(
        "[alerts]\nevaluate_every_secs = 0.05\n\
         [[auth.clients]]\nname = \"team-a\"\nkey = \"{TEAM_A}\"\ndaily_budget_usd = 0.006\n\
         [[auth.clients]]\nname = \"team-b\"\nkey = \"{TEAM_B}\"\ndaily_budget_usd = 0.006\n"
    ))
}

async fn get_as(proxy: &str, path: &str, cred: &str) -> Value {
    let (code, v) = call(
        reqwest::Method::GET,
        format!("{proxy}{path}"),
        Some(cred),
        None,
    )
    .await;
    assert_eq!(code, 200, "{path}: {v}");
    v
}

fn names(rows: &Value) -> Vec<String> {
    let mut n: Vec<String> = rows
        .as_array()
        .unwrap_or(&Vec::new())
        .iter()
        .filter_map(|r| r["name"].as_str().or(r["labels"]["client"].as_str()))
        .map(str::to_string)
        .collect();
    n.sort();
    n
}

#[tokio::test]
async fn a_client_key_sees_only_its_own_row_and_its_own_budget_alert() {
    let fake = FakeUpstream::start().await;
    fake.behave(|b| b.prompt_tokens = Some(20_000));
    let proxy = start_proxy(&fake.url, two_budgeted_teams()).await;
    for key in [TEAM_A, TEAM_B] {
        assert_eq!(generate_with(&proxy.url, key).await, 200);
    }
    // The status document's clients section.
    let admin = get_as(&proxy.url, "/api/ai/quota-status/", ADMIN_TOKEN).await;
    assert_eq!(
        names(&admin["quota_status"]["clients"]),
        ["client1", "team-a", "team-b"]
    );
    let mine = get_as(&proxy.url, "/api/ai/quota-status/", TEAM_A).await;
    assert_eq!(names(&mine["quota_status"]["clients"]), ["team-a"]);
    // Both teams are over their budgets: the admin sees both alerts, a team only its own.
    let start = Instant::now();
    let firing = loop {
        let v = get_as(&proxy.url, "/api/ai/alerts/", ADMIN_TOKEN).await;
        let budget: Vec<Value> = v["firing"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["rule"] == "client_budget")
            .cloned()
            .collect();
        if budget.len() == 2 || start.elapsed() > Duration::from_secs(20) {
            break Value::from(budget);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(names(&firing), ["team-a", "team-b"], "{firing}");
    let v = get_as(&proxy.url, "/api/ai/alerts/", TEAM_B).await;
    let seen: Vec<Value> = v["firing"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["rule"] == "client_budget")
        .cloned()
        .collect();
    assert_eq!(names(&Value::from(seen)), ["team-b"]);
}

#[tokio::test]
async fn hostile_requests_to_the_clients_api_get_clear_errors_in_googles_envelope() {
    let fake = FakeUpstream::start().await;
    let dir = temp_dir("hostile");
    let file = dir.join("clients.json");
    let opts = ProxyOpts::keys(&[POOLED]).env("PROXY_CLIENTS_FILE", &file.to_string_lossy());
    let proxy = start_proxy(&fake.url, opts).await;
    let url = &proxy.url;
    let huge = json!({"name": "big", "models": vec!["x".repeat(100); 1000]});
    let cases: Vec<(reqwest::Method, String, Option<Value>, u16)> = vec![
        (
            reqwest::Method::PATCH,
            format!("{url}/api/ai/clients/%FF%FE"),
            Some(json!({})),
            400,
        ),
        (
            reqwest::Method::DELETE,
            format!("{url}/api/ai/clients/a%2Fb"),
            None,
            400,
        ),
        (
            reqwest::Method::PUT,
            format!("{url}/api/ai/clients"),
            Some(json!({})),
            405,
        ),
        (
            reqwest::Method::POST,
            format!("{url}/api/ai/clients"),
            Some(huge),
            413,
        ),
        (
            reqwest::Method::POST,
            format!("{url}/api/ai/clients"),
            Some(json!({"name": "m", "models": ["gemini 2.5"]})),
            400,
        ),
        (
            reqwest::Method::POST,
            format!("{url}/api/ai/clients/nobody/rotate"),
            Some(json!({"grace_secs": 5})),
            404,
        ),
        (
            reqwest::Method::POST,
            format!("{url}/api/ai/clients/client1/rotate"),
            Some(json!({"grace_secs": 5})),
            409,
        ),
    ];
    for (method, at, body, want) in cases {
        let (code, v) = call(method.clone(), at.clone(), Some(ADMIN_TOKEN), body).await;
        assert_eq!(code, want, "{method} {at}: {v}");
        assert!(v["error"]["status"].is_string(), "{method} {at}: {v}");
    }
    assert!(!file.exists(), "nothing was created");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A runtime client whose name the configuration later gives to a configured client is shadowed
/// (the configured one answers to the name), but it can still be revoked: otherwise its record
/// and key would come back to life when the configured client is removed.
#[tokio::test]
async fn a_runtime_client_shadowed_by_a_configured_one_can_still_be_revoked() {
    let fake = FakeUpstream::start().await;
    let dir = temp_dir("shadow");
    let file = dir.join("clients.json");
    let file_s = file.to_string_lossy().to_string();
    let first = start_proxy(
        &fake.url,
        ProxyOpts::keys(&[POOLED]).env("PROXY_CLIENTS_FILE", &file_s),
    )
    .await;
    let (code, created) = create(&first.url, json!({"name": "team-s", "rpm": 5})).await;
    assert_eq!(code, 201, "{created}");
    let runtime_key = created["key"].as_str().unwrap().to_string();
    drop(first);

    const CONFIGURED: &str = "configured-team-s-key-0001";
    let opts = || {
        ProxyOpts::keys(&[POOLED])
            .env("PROXY_CLIENTS_FILE", &file_s)
            .toml(&format!(
                "[[auth.clients]]\nname = \"team-s\"\nkey = \"{CONFIGURED}\"\n"
            ))
    };
    let proxy = start_proxy(&fake.url, opts()).await;
    let (l, _) = list(&proxy.url).await;
    assert_eq!(row(&l, "team-s").unwrap()["origin"], "config", "{l}");
    // Changing it is the config's business; revoking the runtime record is not refused.
    let (code, v) = call(
        reqwest::Method::PATCH,
        format!("{}/api/ai/clients/team-s", proxy.url),
        Some(ADMIN_TOKEN),
        Some(json!({"rpm": 9})),
    )
    .await;
    assert_eq!(code, 409, "{v}");
    let (code, v) = call(
        reqwest::Method::DELETE,
        format!("{}/api/ai/clients/team-s", proxy.url),
        Some(ADMIN_TOKEN),
        None,
    )
    .await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(generate_with(&proxy.url, CONFIGURED).await, 200);
    assert_eq!(generate_with(&proxy.url, &runtime_key).await, 403);
    let kept = std::fs::read_to_string(&file).unwrap();
    assert!(!kept.contains("team-s"), "{kept}");
    // A second revoke: nothing is left to revoke, and the configured client is not touched.
    let (code, _) = call(
        reqwest::Method::DELETE,
        format!("{}/api/ai/clients/team-s", proxy.url),
        Some(ADMIN_TOKEN),
        None,
    )
    .await;
    assert_eq!(code, 409);
    let _ = std::fs::remove_dir_all(&dir);
}
