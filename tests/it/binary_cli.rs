//! The binary's command line: `--check` validates the config and the store and says what would
//! run (exit 0 or 2, never a secret), `--help` lists every environment variable the config
//! reads with its setting, the start line gives the dashboard's URL, and `/` leads to it.

use crate::common;

use common::binary::{Binary, run};
use common::{RedisServer, free_port, http};

const POOLED: &str = "AIzaSecretPooledKeyCheck0001";
const POOLED_MORE: &str = "AIzaSecretPooledKeyCheck0002,AIzaSecretPooledKeyCheck0003";
const CLIENT: &str = "client-secret-key-check-0004";

#[test]
fn check_prints_what_would_run_without_a_secret_and_exits_0() {
    let clients = format!("team-a:{CLIENT},team-b:client-secret-key-check-0005");
    let (status, out, err) = run(
        &[
            ("GEMINI_API_KEY", POOLED),
            ("GEMINI_API_KEYS", POOLED_MORE),
            ("PROXY_CLIENT_KEYS", &clients),
            ("PROXY_LISTEN", "127.0.0.1:18089"),
        ],
        &["--check"],
    );
    assert!(status.success(), "{status}: {out}{err}");
    assert_eq!(status.code(), Some(0));
    assert!(out.contains("listen:    127.0.0.1:18089"), "{out}");
    assert!(
        out.contains("dashboard: http://127.0.0.1:18089/dashboard/"),
        "{out}"
    );
    assert!(out.contains("memory"), "the store: {out}");
    assert!(out.contains("3 key(s) in 3 project(s)"), "{out}");
    assert!(out.contains("2 client key(s)"), "{out}");
    for secret in ["AIzaSecret", "client-secret"] {
        assert!(!out.contains(secret) && !err.contains(secret), "{out}{err}");
    }
}

#[test]
fn check_names_the_setting_at_fault_and_exits_2() {
    let (status, out, err) = run(
        &[
            ("GEMINI_API_KEY", POOLED),
            ("PROXY_CLIENT_KEYS", CLIENT),
            ("GEMINI_MINUTE_LIMIT", "ten"),
        ],
        &["--check"],
    );
    assert_eq!(status.code(), Some(2), "{out}{err}");
    assert!(err.contains("GEMINI_MINUTE_LIMIT"), "{err}");
    assert!(out.is_empty(), "nothing would run: {out}");
}

#[test]
fn check_connects_to_the_store_and_refuses_one_that_does_not_answer() {
    let redis = RedisServer::start();
    let env = [("GEMINI_API_KEY", POOLED), ("PROXY_CLIENT_KEYS", CLIENT)];
    let mut good = env.to_vec();
    good.push(("REDIS_URL", redis.url.as_str()));
    let (status, out, err) = run(&good, &["--check"]);
    assert_eq!(status.code(), Some(0), "{out}{err}");
    assert!(out.contains("redis") && out.contains("reachable"), "{out}");

    // Nothing listens there; the password must not be printed.
    let dead = format!("redis://user:RedisSecretPw@127.0.0.1:{}", free_port());
    let mut bad = env.to_vec();
    bad.push(("REDIS_URL", dead.as_str()));
    let (status, out, err) = run(&bad, &["--check"]);
    assert_eq!(status.code(), Some(2), "{out}{err}");
    assert!(err.contains("REDIS_URL"), "{err}");
    assert!(
        !err.contains("RedisSecretPw") && !out.contains("RedisSecretPw"),
        "{err}"
    );
}

/// The variable names the config code reads: every `"PROXY_…"`, `"GEMINI_…"`, `"REDIS_…"`
/// string in `src/config/`.
fn variables_in_config_sources() -> std::collections::BTreeSet<String> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/config");
    let mut found = std::collections::BTreeSet::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        for piece in text.split('"').skip(1).step_by(2) {
            let is_var = ["PROXY_", "GEMINI_", "REDIS_"]
                .iter()
                .any(|p| piece.starts_with(p))
                && piece
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
            if is_var {
                found.insert(piece.to_string());
            }
        }
    }
    found
}

#[test]
fn help_lists_every_environment_variable_with_its_setting() {
    let (status, out, err) = run(&[], &["--help"]);
    assert!(status.success(), "{err}");
    let vars = variables_in_config_sources();
    assert!(vars.len() >= 25, "the scan finds the variables: {vars:?}");
    for var in vars.iter().map(String::as_str).chain(["RUST_LOG"]) {
        let line = out
            .lines()
            .find(|l| l.split_whitespace().next() == Some(var))
            .unwrap_or_else(|| panic!("--help does not list {var}:\n{out}"));
        let setting = line.trim_start().trim_start_matches(var).trim();
        assert!(
            !setting.is_empty(),
            "{var} has no setting beside it: {line}"
        );
    }
    assert!(out.contains("--check"), "{out}");
}

#[tokio::test]
async fn the_start_line_gives_the_dashboard_url_and_the_root_leads_there() {
    let proxy = Binary::start(
        &[("GEMINI_API_KEY", POOLED), ("PROXY_CLIENT_KEYS", CLIENT)],
        &[],
    );
    let dashboard = format!("{}/dashboard/", proxy.url);
    let logs = proxy.logs();
    let start = logs
        .lines()
        .find(|l| l.contains("listening"))
        .expect("a start line");
    assert!(start.contains(&format!("dashboard={dashboard}")), "{start}");

    let no_redirects = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let root = no_redirects
        .get(format!("{}/", proxy.url))
        .send()
        .await
        .unwrap();
    assert!(root.status().is_redirection(), "{}", root.status());
    assert_eq!(root.headers()["location"], "/dashboard/");
    // Followed, it is the page.
    let page = http().get(format!("{}/", proxy.url)).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("<html"));
}
