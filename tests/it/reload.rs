//! Configuration reload without restart, on the real binary: the admin endpoint, SIGHUP and a
//! change to the `--config` file (written in place, and swapped the way Kubernetes updates a
//! mounted ConfigMap) each swap in the new configuration; requests under way finish on the
//! one they started with; a file that does not load changes nothing.

use crate::common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::binary::Binary;
use common::*;
use serde_json::Value;

const KEY_A: &str = "AIzaReloadKeyA000001";
const KEY_B: &str = "AIzaReloadKeyB000002";
const MODEL: &str = "gemini-2.5-flash";

/// A fresh directory for one test's config file.
fn config_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "gqp-reload-{name}-{}-{}",
        std::process::id(),
        fastrand::u64(..)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A config file body: one pooled key, a per-minute limit, the admin token and client keys.
fn toml(key: &str, minute: u64, admin: &str, clients: &[&str]) -> String {
    let clients: Vec<String> = clients.iter().map(|c| format!("{c:?}")).collect();
    format!(
        "[auth]\nadmin_token = {admin:?}\nclient_keys = [{}]\n\n[limits]\nminute = {minute}\n\n[queue]\nmax_wait_secs = 0\n\n[[keys]]\nkey = {key:?}\nproject = \"proj-{}\"\n",
        clients.join(", "),
        &key[key.len() - 1..]
    )
}

/// The binary on `file`, against `upstream`, with `extra` settings.
fn start(upstream: &str, file: &Path, extra: &[(&str, &str)]) -> Binary {
    let mut env = vec![("GEMINI_UPSTREAM_URL", upstream)];
    env.extend_from_slice(extra);
    Binary::start(&env, &["--config", file.to_str().unwrap()])
}

async fn reload(proxy: &str, token: &str) -> (u16, Value) {
    let r = http()
        .post(format!("{proxy}/api/ai/config/reload"))
        .header("authorization", format!("Bearer {token}"))
        .send()
        .await
        .unwrap();
    let code = r.status().as_u16();
    (code, r.json().await.unwrap_or(Value::Null))
}

/// The status page's `config` part.
async fn generation(proxy: &str) -> Value {
    let (code, v) = quota_status(proxy, CLIENT_KEY).await;
    assert_eq!(code, 200, "{v}");
    v["quota_status"]["config"].clone()
}

async fn wait_for_generation(proxy: &str, n: u64) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let g = generation(proxy).await;
        if g["generation"] == n {
            return g;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "generation {n} never came: {g}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How long the file watch lets a burst of changes settle.
fn watch_settle() -> Duration {
    gemini_quota_proxy::reload::watch::SETTLE
}

async fn code_of(proxy: &str) -> u16 {
    generate(proxy, MODEL, "hello").await.status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lower_limit_applies_on_the_next_request_and_counters_are_kept() {
    let fake = FakeUpstream::start().await;
    let dir = config_dir("limit");
    let file = dir.join("config.toml");
    std::fs::write(&file, toml(KEY_A, 5, ADMIN_TOKEN, &[CLIENT_KEY])).unwrap();
    let proxy = start(&fake.url, &file, &[("PROXY_WATCH_CONFIG", "false")]);
    let g = generation(&proxy.url).await;
    assert_eq!(g["generation"], 1, "{g}");
    assert_eq!(g["source"], "start", "{g}");
    for _ in 0..2 {
        assert_eq!(code_of(&proxy.url).await, 200);
    }

    // Nothing changed yet: nothing applied, the generation stays.
    let (code, r) = reload(&proxy.url, ADMIN_TOKEN).await;
    assert_eq!(code, 200, "{r}");
    assert_eq!(r["applied"], false, "{r}");
    assert_eq!(r["generation"], 1, "{r}");

    std::fs::write(&file, toml(KEY_A, 3, ADMIN_TOKEN, &[CLIENT_KEY])).unwrap();
    let (code, r) = reload(&proxy.url, ADMIN_TOKEN).await;
    assert_eq!(code, 200, "{r}");
    assert_eq!(r["applied"], true, "{r}");
    assert_eq!(r["generation"], 2, "{r}");
    assert_eq!(r["source"], "api", "{r}");
    assert_eq!(r["changed"], serde_json::json!(["limits.minute"]), "{r}");
    // The two requests before the reload still count: one more fits under 3, then 429.
    assert_eq!(code_of(&proxy.url).await, 200);
    let refused = generate(&proxy.url, MODEL, "hello").await;
    assert_eq!(refused.status().as_u16(), 429);
    let body = json_of(refused).await;
    assert!(
        body["error"]["message"].as_str().unwrap().contains('3'),
        "the refusal names the new limit: {body}"
    );
    let g = generation(&proxy.url).await;
    assert_eq!(g["generation"], 2, "{g}");
    assert_eq!(g["source"], "api", "{g}");
    assert!(g["loaded_at"].as_str().unwrap().ends_with('Z'), "{g}");
    assert!(
        metrics_text(&proxy.url)
            .await
            .contains("gqp_config_reloads_total{outcome=\"applied\"} 1"),
        "the reload is counted"
    );
    assert!(proxy.logs().contains("configuration reloaded"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_file_changes_nothing_and_the_endpoint_names_the_setting() {
    let fake = FakeUpstream::start().await;
    let dir = config_dir("invalid");
    let file = dir.join("config.toml");
    let good = toml(KEY_A, 2, ADMIN_TOKEN, &[CLIENT_KEY]);
    std::fs::write(&file, &good).unwrap();
    let proxy = start(&fake.url, &file, &[("PROXY_WATCH_CONFIG", "false")]);
    assert_eq!(code_of(&proxy.url).await, 200);

    for (bad, setting) in [
        (good.replace("minute = 2", "minute = 0"), "limits.minute"),
        (
            good.replace("minute = 2", "minute = \"ten\""),
            "limits.minute",
        ),
        (
            format!("{good}\n[server]\nlisten_addr = \"x\"\n"),
            "listen_addr",
        ),
        (good.replace("[[keys]]", "[[keys]\n"), "config file"),
        // A key on a line that does not parse, and a key where a list belongs: neither may
        // be quoted back.
        (
            good.replace(&format!("key = {KEY_A:?}"), "key = \"AIzaLeakedKey0000009"),
            "config file",
        ),
        (
            good.replace(
                &format!("client_keys = [{CLIENT_KEY:?}]"),
                "client_keys = \"AIzaLeakedKey0000009\"",
            ),
            "auth.client_keys",
        ),
        // A secret of the wrong type is not taken as its text (`x-goog-api-key: 42` as admin).
        (
            good.replace(
                &format!("admin_token = {ADMIN_TOKEN:?}"),
                "admin_token = 42",
            ),
            "auth.admin_token",
        ),
        (
            good.replace(
                &format!("client_keys = [{CLIENT_KEY:?}]"),
                "client_keys = [7, 3.5, true]",
            ),
            "auth.client_keys[0]",
        ),
    ] {
        std::fs::write(&file, &bad).unwrap();
        let (code, r) = reload(&proxy.url, ADMIN_TOKEN).await;
        assert_eq!(code, 400, "{bad}: {r}");
        assert_eq!(r["error"]["status"], "INVALID_ARGUMENT", "{r}");
        let message = r["error"]["message"].as_str().unwrap();
        assert!(message.contains(setting), "{setting}: {message}");
        assert!(message.contains("running configuration stays"), "{message}");
        assert!(
            !message.contains(KEY_A),
            "no pooled key in an error: {message}"
        );
        assert!(
            !message.contains("Leaked"),
            "no value of the file in an error: {message}"
        );
    }
    // The running configuration is untouched: generation 1, limit 2.
    let g = generation(&proxy.url).await;
    assert_eq!(g["generation"], 1, "{g}");
    assert_eq!(code_of(&proxy.url).await, 200);
    assert_eq!(code_of(&proxy.url).await, 429);
    let logs = proxy.logs();
    assert!(logs.contains("configuration reload refused"), "{logs}");
    assert!(!logs.contains(KEY_A), "no pooled key in the log");
    assert!(!logs.contains("Leaked"), "no value of the file in the log");
    assert!(!logs.contains(ADMIN_TOKEN), "no admin token in the log");

    // A client may not reload; a wrong token may not either.
    std::fs::write(&file, toml(KEY_A, 9, ADMIN_TOKEN, &[CLIENT_KEY])).unwrap();
    let (code, _) = reload(&proxy.url, CLIENT_KEY).await;
    assert_eq!(code, 403);
    assert_eq!(generation(&proxy.url).await["generation"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_swaps_keys_clients_and_admin_token_while_a_stream_started_before_completes() {
    let fake = FakeUpstream::start().await;
    fake.behave(|b| {
        b.stream_events = 8;
        b.stream_delay = Duration::from_millis(250);
    });
    let dir = config_dir("sighup");
    let file = dir.join("config.toml");
    std::fs::write(&file, toml(KEY_A, 100, ADMIN_TOKEN, &[CLIENT_KEY])).unwrap();
    let proxy = start(&fake.url, &file, &[("PROXY_WATCH_CONFIG", "false")]);

    // A stream on key A, under way when the reload comes.
    let stream = stream_sse(&proxy.url, "a long answer").await;
    assert_eq!(stream.status().as_u16(), 200);
    let reading = tokio::spawn(async move { stream.text().await.unwrap() });
    assert!(
        eventually(Duration::from_secs(5), || fake
            .state
            .events_sent
            .load(std::sync::atomic::Ordering::SeqCst)
            >= 1)
        .await
    );

    let new_client = "client-key-added-by-reload";
    let new_admin = "admin-token-after-reload-42";
    std::fs::write(
        &file,
        toml(KEY_B, 100, new_admin, &[CLIENT_KEY, new_client]),
    )
    .unwrap();
    let pid = proxy.pid().to_string();
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap();
    assert!(hup.success());
    let g = wait_for_generation(&proxy.url, 2).await;
    assert_eq!(g["source"], "sighup", "{g}");

    // The stream started on generation 1 ends whole.
    let text = reading.await.unwrap();
    assert_eq!(text.matches("data: ").count(), 8, "{text}");
    assert!(text.contains("usageMetadata"), "{text}");

    // New requests go out on key B only; the added client gets in.
    let before = fake.calls(":generateContent").len();
    assert_eq!(code_of(&proxy.url).await, 200);
    let r = http()
        .post(format!(
            "{}/v1beta/models/{MODEL}:generateContent",
            proxy.url
        ))
        .header("x-goog-api-key", new_client)
        .json(&serde_json::json!({"contents": [{"parts": [{"text": "hi"}]}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let sent: Vec<Option<String>> = fake.calls(":generateContent")[before..]
        .iter()
        .map(|c| c.key())
        .collect();
    assert_eq!(sent, [Some(KEY_B.into()), Some(KEY_B.into())]);
    let (_, status) = quota_status(&proxy.url, CLIENT_KEY).await;
    let keys: Vec<&str> = status["quota_status"]["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["project"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["proj-2"], "only key B is pooled now: {status}");

    // The admin token is the new one.
    let (code, _) = reload(&proxy.url, ADMIN_TOKEN).await;
    assert_eq!(code, 403, "the old admin token no longer works");
    let (code, r) = reload(&proxy.url, new_admin).await;
    assert_eq!(code, 200, "{r}");
    let logs = proxy.logs();
    for secret in [KEY_A, KEY_B, new_admin, new_client] {
        assert!(!logs.contains(secret), "a secret in the log");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configmap_symlink_swap_and_an_edit_in_place_reload_by_themselves() {
    let fake = FakeUpstream::start().await;
    // The layout Kubernetes mounts a ConfigMap as: config.toml -> ..data/config.toml,
    // ..data -> ..<timestamp>/, swapped by renaming a new ..data link over the old one.
    let dir = config_dir("configmap");
    let version = |name: &str, minute: u64| {
        let d = dir.join(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(
            d.join("config.toml"),
            toml(KEY_A, minute, ADMIN_TOKEN, &[CLIENT_KEY]),
        )
        .unwrap();
    };
    version("..2026_11_29_v1", 5);
    std::os::unix::fs::symlink("..2026_11_29_v1", dir.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/config.toml", dir.join("config.toml")).unwrap();
    let file = dir.join("config.toml");
    let proxy = start(&fake.url, &file, &[]);
    assert_eq!(code_of(&proxy.url).await, 200);

    // Other files in the directory (a log written beside the config, an editor's swap file)
    // are not the configuration: they reload nothing.
    for i in 0..20 {
        std::fs::write(dir.join("proxy.log"), format!("line {i}\n")).unwrap();
        std::fs::write(dir.join(".config.toml.swp"), "x").unwrap();
    }
    tokio::time::sleep(watch_settle() * 3).await;
    let text = metrics_text(&proxy.url).await;
    assert!(
        !text.contains("gqp_config_reloads_total{"),
        "unrelated files reloaded the configuration"
    );

    version("..2026_11_29_v2", 1);
    std::os::unix::fs::symlink("..2026_11_29_v2", dir.join("..data_tmp")).unwrap();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    let g = wait_for_generation(&proxy.url, 2).await;
    assert_eq!(g["source"], "file", "{g}");
    assert_eq!(
        code_of(&proxy.url).await,
        429,
        "limit 1, one request already counted"
    );

    // An edit in place (through the link) is seen too.
    std::fs::write(
        dir.join("..2026_11_29_v2/config.toml"),
        toml(KEY_A, 50, ADMIN_TOKEN, &[CLIENT_KEY]),
    )
    .unwrap();
    wait_for_generation(&proxy.url, 3).await;
    assert_eq!(code_of(&proxy.url).await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_url_and_connection_cap_changes_need_a_restart_and_are_not_applied() {
    let fake = FakeUpstream::start().await;
    let dir = config_dir("restart");
    let file = dir.join("config.toml");
    let base = toml(KEY_A, 5, ADMIN_TOKEN, &[CLIENT_KEY]);
    std::fs::write(&file, &base).unwrap();
    let proxy = start(&fake.url, &file, &[("PROXY_WATCH_CONFIG", "false")]);
    // A restart-only change alone: nothing applies, but the status page says it waits.
    std::fs::write(&file, format!("{base}\n[server]\nmax_connections = 7\n")).unwrap();
    let (code, r) = reload(&proxy.url, ADMIN_TOKEN).await;
    assert_eq!(code, 200, "{r}");
    assert_eq!(r["applied"], false, "{r}");
    assert_eq!(
        r["restart_required"],
        serde_json::json!(["server.max_connections"]),
        "{r}"
    );
    assert_eq!(
        generation(&proxy.url).await["restart_required"],
        serde_json::json!(["server.max_connections"])
    );

    std::fs::write(
        &file,
        format!(
            "{}\n[server]\nmax_connections = 7\n\n[store]\nredis_url = \"redis://:hunter2@127.0.0.1:1\"\n",
            base.replace("minute = 5", "minute = 7")
        ),
    )
    .unwrap();
    let (code, r) = reload(&proxy.url, ADMIN_TOKEN).await;
    assert_eq!(code, 200, "{r}");
    assert_eq!(r["applied"], true, "{r}");
    assert_eq!(r["changed"], serde_json::json!(["limits.minute"]), "{r}");
    assert_eq!(
        r["restart_required"],
        serde_json::json!(["server.max_connections", "store.redis_url"]),
        "{r}"
    );
    assert!(!r.to_string().contains("hunter2"), "{r}");
    // (`server.listen` is one too, see the unit tests of `reload`; the test binary is given
    // its address in PROXY_LISTEN, which the file cannot override.) Still on memory counters.
    assert_eq!(code_of(&proxy.url).await, 200);
    let (_, status) = quota_status(&proxy.url, CLIENT_KEY).await;
    assert_eq!(status["quota_status"]["store"]["backend"], "memory");
    assert_eq!(
        status["quota_status"]["config"]["restart_required"],
        serde_json::json!(["server.max_connections", "store.redis_url"])
    );
    let warnings = status["quota_status"]["warnings"].to_string();
    assert!(warnings.contains("store.redis_url"), "{warnings}");
    // Reported again on the next reload, until a restart.
    let (_, r) = reload(&proxy.url, ADMIN_TOKEN).await;
    assert_eq!(r["applied"], false, "{r}");
    assert_eq!(
        r["restart_required"],
        serde_json::json!(["server.max_connections", "store.redis_url"]),
        "{r}"
    );
    assert!(!proxy.logs().contains("hunter2"));

    // The file back as it started: nothing waits for a restart any more.
    std::fs::write(&file, &base).unwrap();
    let (_, r) = reload(&proxy.url, ADMIN_TOKEN).await;
    assert_eq!(r["applied"], true, "{r}");
    assert_eq!(r["restart_required"], serde_json::json!([]), "{r}");
    let (_, status) = quota_status(&proxy.url, CLIENT_KEY).await;
    assert_eq!(
        status["quota_status"]["config"]["restart_required"],
        serde_json::json!([])
    );
    assert!(
        !status["quota_status"]["warnings"]
            .to_string()
            .contains("restart"),
        "{status}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_firing_before_a_reload_of_its_channels_is_resolved_on_the_new_channel() {
    let fake = FakeUpstream::start().await;
    let hooks = common::sinks::Receiver::start().await;
    let dir = config_dir("alerts");
    let file = dir.join("config.toml");
    let with_alerts = |path: &str, warn: u64| {
        format!(
            "{}\n[alerts]\nevaluate_every_secs = 0.1\ngroup_wait_secs = 0\ngroup_interval_secs = 0\nwarn_percent = {warn}\n[[alerts.webhooks]]\nurl = \"{}{path}\"\nformat = \"json\"\n",
            toml(KEY_A, 2, ADMIN_TOKEN, &[CLIENT_KEY]),
            hooks.url
        )
    };
    std::fs::write(&file, with_alerts("/before", 80)).unwrap();
    let proxy = start(&fake.url, &file, &[("PROXY_WATCH_CONFIG", "false")]);
    for _ in 0..2 {
        assert_eq!(code_of(&proxy.url).await, 200);
    }
    assert!(
        eventually(Duration::from_secs(10), || !hooks
            .bodies("/before")
            .is_empty())
        .await,
        "the firing alert is sent"
    );
    assert_eq!(hooks.bodies("/before")[0]["status"], "firing");

    // New channel and thresholds: the alert keeps firing through the reload...
    std::fs::write(&file, with_alerts("/after", 79)).unwrap();
    let (code, r) = reload(&proxy.url, ADMIN_TOKEN).await;
    assert_eq!(code, 200, "{r}");
    assert!(
        r["changed"].to_string().contains("alerts.warn_percent"),
        "{r}"
    );
    // ...and its resolution, once the quota is reset, goes to the new channel.
    let reset = http()
        .post(format!("{}/api/ai/quota-status/", proxy.url))
        .bearer_auth(ADMIN_TOKEN)
        .json(&serde_json::json!({"quota_type": "minute"}))
        .send()
        .await
        .unwrap();
    assert_eq!(reset.status().as_u16(), 200);
    assert!(
        eventually(Duration::from_secs(10), || hooks
            .bodies("/after")
            .iter()
            .any(|b| b["status"] == "resolved"))
        .await,
        "the resolution reaches the new channel: {:?}",
        hooks.hooks()
    );
    assert!(
        hooks
            .bodies("/after")
            .iter()
            .all(|b| b["status"] != "firing"),
        "the alert is not sent as new after the reload: {:?}",
        hooks.hooks()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_upstream_and_a_cache_turned_on_apply_to_the_next_requests() {
    let first = FakeUpstream::start().await;
    let second = FakeUpstream::start().await;
    let dir = config_dir("upstream");
    let file = dir.join("config.toml");
    let with = |upstream: &str, cache: bool| {
        format!(
            "{}\n[upstream]\nurl = \"{upstream}\"\n\n[cache]\nenabled = {cache}\n",
            toml(KEY_A, 100, ADMIN_TOKEN, &[CLIENT_KEY])
        )
    };
    std::fs::write(&file, with(&first.url, false)).unwrap();
    let proxy = Binary::start(
        &[("PROXY_WATCH_CONFIG", "false")],
        &["--config", file.to_str().unwrap()],
    );
    let ask = || async {
        http()
            .post(format!(
                "{}/v1beta/models/{MODEL}:generateContent",
                proxy.url
            ))
            .header("x-goog-api-key", CLIENT_KEY)
            .json(
                &serde_json::json!({"contents": [{"parts": [{"text": "same"}]}],
                "generationConfig": {"temperature": 0}}),
            )
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    for _ in 0..2 {
        assert_eq!(ask().await, 200);
    }
    assert_eq!(first.calls(":generateContent").len(), 2, "no cache yet");

    std::fs::write(&file, with(&second.url, true)).unwrap();
    let (code, r) = reload(&proxy.url, ADMIN_TOKEN).await;
    assert_eq!(code, 200, "{r}");
    assert_eq!(
        r["changed"],
        serde_json::json!(["cache.enabled", "upstream.url"]),
        "{r}"
    );
    for _ in 0..3 {
        assert_eq!(ask().await, 200);
    }
    assert_eq!(
        first.calls(":generateContent").len(),
        2,
        "the old upstream no more"
    );
    assert_eq!(
        second.calls(":generateContent").len(),
        1,
        "the new upstream once, then the cache"
    );
}
