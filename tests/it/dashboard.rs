//! The operator dashboard (`/dashboard/`) in a real headless Chromium, driven through
//! chromedriver's W3C WebDriver HTTP API, against the real proxy binary and a fake Gemini API.
//!
//! Needs `chromium` and `chromium-driver` (scripts/test installs them); without them the browser
//! test fails, it is never skipped.
//!
//! Regenerate the screenshot of the signed-in admin page (the path is relative to the crate root):
//!
//!     DASHBOARD_SCREENSHOT=dashboard.png cargo test --test it dashboard::

use crate::common;

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

const KEYS: &str = "AIzaDashboardKey0001,AIzaDashboardKey0002";

/// The real proxy binary in front of `upstream`, with the client key, the admin token and two
/// pooled keys, and `extra` settings.
fn start_proxy_process(upstream: &str, extra: &[(&str, &str)]) -> common::binary::Binary {
    let mut env = vec![
        ("GEMINI_API_KEYS", KEYS),
        ("PROXY_CLIENT_KEYS", CLIENT_KEY),
        ("PROXY_ADMIN_TOKEN", ADMIN_TOKEN),
        ("GEMINI_UPSTREAM_URL", upstream),
    ];
    env.extend_from_slice(extra);
    common::binary::Binary::start(&env, &[])
}

/// The first `names` found on PATH.
fn on_path(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    for dir in std::env::split_paths(&path) {
        for name in names {
            let p = dir.join(name);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    None
}

/// A program the browser test needs: `$ENV_VAR`, else the first of `names` on PATH, else a
/// failure that says how to install it.
fn required_program(env_var: &str, names: &[&str], package: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env_var) {
        return PathBuf::from(p);
    }
    on_path(names).unwrap_or_else(|| {
        panic!(
            "the dashboard test needs {} (Debian package {package}), which is not installed: \
             run scripts/test (it installs chromium and chromium-driver), or set {env_var}",
            names[0]
        )
    })
}

/// The W3C name of an element reference in WebDriver JSON.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A chromedriver process and one headless Chromium session in it. Dropping it deletes the
/// session (Chromium quits) and kills chromedriver, on success and on failure alike.
struct Browser {
    port: u16,
    driver: Child,
    session: Option<String>,
    http: reqwest::Client,
    /// Every browser log entry read so far.
    logs: Vec<Value>,
}

impl Browser {
    async fn start() -> Browser {
        let chromium = required_program(
            "CHROMIUM_BIN",
            &["chromium", "chromium-browser", "google-chrome"],
            "chromium",
        );
        let chromedriver =
            required_program("CHROMEDRIVER_BIN", &["chromedriver"], "chromium-driver");
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        let mut last_error = String::new();
        for _ in 0..3 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let driver = Command::new(&chromedriver)
                .arg(format!("--port={port}"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| {
                    panic!(
                        "could not run {} ({e}): run scripts/test (it installs chromium and chromium-driver)",
                        chromedriver.display()
                    )
                });
            let mut browser = Browser {
                port,
                driver,
                session: None,
                http: http.clone(),
                logs: Vec::new(),
            };
            if !browser.driver_ready(Duration::from_secs(20)).await {
                last_error = format!("chromedriver did not answer on port {port}");
                continue;
            }
            let caps = json!({"capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {
                    "binary": chromium.to_string_lossy(),
                    "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                             "--disable-dev-shm-usage", "--window-size=1280,800"],
                },
                "goog:loggingPrefs": {"browser": "ALL"},
            }}});
            let r = browser
                .http
                .post(format!("{}/session", browser.base()))
                .json(&caps)
                .send()
                .await
                .expect("chromedriver answers POST /session");
            let status = r.status();
            let v: Value = r.json().await.expect("chromedriver answers JSON");
            match v["value"]["sessionId"].as_str() {
                Some(id) if status.is_success() => {
                    browser.session = Some(id.to_string());
                    return browser;
                }
                _ => last_error = format!("chromedriver refused a new session ({status}): {v}"),
            }
        }
        panic!("no browser session: {last_error}");
    }

    fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    async fn driver_ready(&mut self, within: Duration) -> bool {
        let end = Instant::now() + within;
        while Instant::now() < end {
            if let Ok(Some(_)) = self.driver.try_wait() {
                return false;
            }
            if let Ok(r) = self
                .http
                .get(format!("{}/status", self.base()))
                .send()
                .await
                && let Ok(v) = r.json::<Value>().await
                && v["value"]["ready"] == true
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }

    /// One WebDriver command on the session: its `value`, or the driver's error.
    async fn try_cmd(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, Value> {
        let session = self.session.as_deref().expect("a session");
        let url = format!("{}/session/{session}{path}", self.base());
        let req = match method {
            "GET" => self.http.get(url),
            "DELETE" => self.http.delete(url),
            _ => self.http.post(url).json(&body.unwrap_or_else(|| json!({}))),
        };
        let r = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}"));
        let ok = r.status().is_success();
        let v: Value = r
            .json()
            .await
            .unwrap_or_else(|e| panic!("WebDriver {method} {path}: not JSON ({e})"));
        if ok {
            Ok(v["value"].clone())
        } else {
            Err(v["value"].clone())
        }
    }

    async fn cmd(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.try_cmd(method, path, body)
            .await
            .unwrap_or_else(|e| panic!("WebDriver {method} {path} failed: {e}"))
    }

    async fn goto(&self, url: &str) {
        self.cmd("POST", "/url", Some(json!({ "url": url }))).await;
    }

    /// The first element matching `css`, if any.
    async fn find(&self, css: &str) -> Option<String> {
        let body = json!({"using": "css selector", "value": css});
        match self.try_cmd("POST", "/element", Some(body)).await {
            Ok(v) => Some(
                v[ELEMENT]
                    .as_str()
                    .unwrap_or_else(|| panic!("find {css}: no element reference in {v}"))
                    .to_string(),
            ),
            Err(e) if e["error"] == "no such element" => None,
            Err(e) => panic!("find {css}: {e}"),
        }
    }

    async fn element(&self, css: &str) -> String {
        self.find(css)
            .await
            .unwrap_or_else(|| panic!("no element matches {css}"))
    }

    async fn click(&self, css: &str) {
        let el = self.element(css).await;
        self.cmd("POST", &format!("/element/{el}/click"), None)
            .await;
    }

    /// Clear the field `css` and type `text` into it.
    async fn type_into(&self, css: &str, text: &str) {
        let el = self.element(css).await;
        self.cmd("POST", &format!("/element/{el}/clear"), None)
            .await;
        self.cmd(
            "POST",
            &format!("/element/{el}/value"),
            Some(json!({ "text": text })),
        )
        .await;
    }

    /// The rendered text of `css` (WebDriver's "Get Element Text": empty when hidden).
    async fn text(&self, css: &str) -> String {
        let el = self.element(css).await;
        self.cmd("GET", &format!("/element/{el}/text"), None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Run `script` (a function body; `arguments` are `args`) in the page.
    async fn js(&self, script: &str, args: Value) -> Value {
        self.cmd(
            "POST",
            "/execute/sync",
            Some(json!({"script": script, "args": args})),
        )
        .await
    }

    /// Whether `css` matches an element that is rendered (not hidden, not display:none).
    async fn visible(&self, css: &str) -> bool {
        self.js(VISIBLE, json!([css])).await == true
    }

    /// Wait until `script` returns something truthy, up to `within`; that value.
    async fn wait_js(&mut self, what: &str, within: Duration, script: &str, args: Value) -> Value {
        let end = Instant::now() + within;
        loop {
            let v = self.js(script, args.clone()).await;
            let truthy = match &v {
                Value::Null | Value::Bool(false) => false,
                Value::String(s) => !s.is_empty(),
                Value::Number(n) => n.as_f64() != Some(0.0),
                _ => true,
            };
            if truthy {
                return v;
            }
            if Instant::now() >= end {
                let context = self.failure_context().await;
                panic!("timed out after {within:?} waiting for {what}\n{context}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn wait_visible(&mut self, css: &str, within: Duration) {
        let what = format!("{css} to be visible");
        self.wait_js(&what, within, VISIBLE, json!([css])).await;
    }

    /// A PNG of the viewport.
    async fn screenshot(&self) -> Vec<u8> {
        use base64::Engine as _;
        let b64 = self.cmd("GET", "/screenshot", None).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(b64.as_str().expect("base64 text"))
            .expect("the screenshot is base64");
        assert!(
            png.starts_with(b"\x89PNG\r\n\x1a\n"),
            "the screenshot is a PNG"
        );
        png
    }

    /// A PNG of the whole page: the window made as tall as the page for the shot.
    async fn full_page_screenshot(&self) -> Vec<u8> {
        // The window is taller than the viewport by the browser's frame: grow it until the
        // viewport holds the page (the page may also reflow at the new size).
        // DASHBOARD_SCREENSHOT_WIDTH (default 1280): e.g. 390 to see the page at phone width.
        let width: i64 = std::env::var("DASHBOARD_SCREENSHOT_WIDTH")
            .ok()
            .and_then(|w| w.parse().ok())
            .unwrap_or(1280);
        let mut height = 800;
        for _ in 0..4 {
            let v = self
                .js(
                    "return [Math.ceil(document.documentElement.scrollHeight), window.innerHeight];",
                    json!([]),
                )
                .await;
            let (page, viewport) = (v[0].as_i64().unwrap_or(800), v[1].as_i64().unwrap_or(800));
            if viewport >= page || height >= 4000 {
                break;
            }
            height = (height + page - viewport).min(4000);
            self.cmd(
                "POST",
                "/window/rect",
                Some(json!({"width": width, "height": height})),
            )
            .await;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let png = self.screenshot().await;
        self.cmd(
            "POST",
            "/window/rect",
            Some(json!({"width": 1280, "height": 800})),
        )
        .await;
        png
    }

    /// The browser log entries logged since the last call (chromedriver hands each out once);
    /// all of them are also kept in `self.logs`.
    async fn new_logs(&mut self) -> Vec<Value> {
        let v = self
            .cmd("POST", "/se/log", Some(json!({"type": "browser"})))
            .await;
        let entries = v.as_array().cloned().unwrap_or_default();
        self.logs.extend(entries.iter().cloned());
        entries
    }

    /// What the page shows and logged, and a screenshot in the target dir, for a failure message.
    async fn failure_context(&mut self) -> String {
        let body = self
            .try_cmd(
                "POST",
                "/execute/sync",
                Some(json!({"script": "return document.body ? document.body.innerText : ''", "args": []})),
            )
            .await
            .ok()
            .and_then(|v| v.as_str().map(|s| s.chars().take(3000).collect::<String>()))
            .unwrap_or_default();
        let _ = self.new_logs().await;
        let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard-failure.png");
        let saved = match self.try_cmd("GET", "/screenshot", None).await {
            Ok(Value::String(b64)) => {
                use base64::Engine as _;
                base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .ok()
                    .and_then(|png| std::fs::write(&shot, png).ok())
                    .map(|_| format!("screenshot: {}", shot.display()))
            }
            _ => None,
        };
        format!(
            "page text:\n{body}\nbrowser log:\n{}\n{}",
            self.logs
                .iter()
                .map(|e| format!("  {} {}", e["level"], e["message"]))
                .collect::<Vec<_>>()
                .join("\n"),
            saved.unwrap_or_default()
        )
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Drop cannot await: a plain HTTP/1.1 DELETE, so chromedriver quits Chromium (killing
        // chromedriver alone would leave Chromium running).
        if let Some(id) = self.session.take()
            && let Ok(mut s) = std::net::TcpStream::connect_timeout(
                &([127, 0, 0, 1], self.port).into(),
                Duration::from_secs(2),
            )
        {
            let _ = s.set_read_timeout(Some(Duration::from_secs(15)));
            let _ = write!(
                s,
                "DELETE /session/{id} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                self.port
            );
            let _ = s.read_to_end(&mut Vec::new());
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// `arguments[0]` matches an element that is rendered.
const VISIBLE: &str = "const e = document.querySelector(arguments[0]);
    return !!e && !e.closest('[hidden]') && e.getClientRects().length > 0
        && getComputedStyle(e).visibility !== 'hidden';";

/// `usage()`: the three usage values as the page shows them, for use inside scripts.
const USAGE_FN: &str = "const usage = () => { const t = s => { const e = document.querySelector(s);
        return e ? e.innerText.trim() : null; };
    return [t('#usage-minute .value'), t('#usage-daily .value'), t('#usage-tokens .value')]; };";

/// The three usage values as the page shows them.
async fn shown_usage(b: &Browser) -> Value {
    b.js(&format!("{USAGE_FN} return usage();"), json!([]))
        .await
}

/// The three usage values as the page must show them, from a quota-status answer: the busiest
/// model's pool (the first of `pool_by_model`), or `usage` before any model was used.
fn expected_usage(status: &Value) -> Value {
    let q = &status["quota_status"];
    let u = match q["pool_by_model"].as_array() {
        Some(models) if !models.is_empty() => &models[0],
        _ => &q["usage"],
    };
    let pair = |used: &str, limit: &str| {
        format!(
            "{} / {}",
            u[used]
                .as_u64()
                .unwrap_or_else(|| panic!("usage.{used} in {u}")),
            u[limit]
                .as_u64()
                .unwrap_or_else(|| panic!("usage.{limit} in {u}"))
        )
    };
    json!([
        pair("minute_requests", "minute_limit"),
        pair("daily_requests", "daily_limit"),
        pair("minute_tokens", "token_minute_limit"),
    ])
}

/// Wait until the page's usage values equal what `/api/ai/quota-status/` answers `cred` at about
/// the same time (the numbers may move, so both are read again until they agree); that answer.
async fn wait_page_matches_status(
    b: &mut Browser,
    proxy: &str,
    cred: &str,
    within: Duration,
) -> Value {
    let end = Instant::now() + within;
    loop {
        let shown = shown_usage(b).await;
        let (code, status) = quota_status(proxy, cred).await;
        assert_eq!(code, 200, "{status}");
        let expected = expected_usage(&status);
        if shown == expected {
            return status;
        }
        if Instant::now() >= end {
            let context = b.failure_context().await;
            panic!(
                "after {within:?} the page shows {shown} but /api/ai/quota-status/ says {expected}\n{context}"
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Type `token` into the sign-in form and submit it with its submit button.
async fn sign_in(b: &mut Browser, token: &str) {
    b.wait_visible(
        "form#signin input#token[type=password]",
        Duration::from_secs(10),
    )
    .await;
    b.type_into("input#token", token).await;
    let submit = b
        .js(
            "return document.querySelector('form#signin')
                .querySelector('button:not([type]), button[type=submit], input[type=submit]');",
            json!([]),
        )
        .await;
    let el = submit[ELEMENT]
        .as_str()
        .expect("form#signin has a submit button")
        .to_string();
    b.cmd("POST", &format!("/element/{el}/click"), None).await;
}

/// SEVERE browser log entries.
fn severe(entries: &[Value]) -> Vec<String> {
    entries
        .iter()
        .filter(|e| e["level"] == "SEVERE")
        .map(|e| {
            let text = |f: &str| e[f].as_str().unwrap_or_default().to_string();
            format!("{} ({})", text("message"), text("source"))
        })
        .collect()
}

const STEP: Duration = Duration::from_secs(15);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_signs_in_sees_the_proxy_numbers_and_an_admin_resets_the_daily_quota_in_a_real_browser()
 {
    let whole = Duration::from_secs(240);
    tokio::time::timeout(whole, dashboard_in_a_browser())
        .await
        .unwrap_or_else(|_| panic!("the browser test took longer than {whole:?}"));
}

async fn dashboard_in_a_browser() {
    // 1. The real binary in front of the fake Gemini API, with some traffic on two models.
    let fake = FakeUpstream::start().await;
    fake.behave(|b| b.prompt_tokens = Some(120));
    let clients_dir = std::env::temp_dir().join(format!(
        "gqp-dashboard-clients-{}-{}",
        std::process::id(),
        fastrand::u32(..)
    ));
    std::fs::create_dir_all(&clients_dir).unwrap();
    let clients_file = clients_dir.join("clients.json");
    let proxy = start_proxy_process(
        &fake.url,
        &[
            ("GEMINI_MINUTE_LIMIT", "30"),
            ("PROXY_CLIENTS_FILE", &clients_file.to_string_lossy()),
        ],
    );
    for (model, n) in [("gemini-2.5-flash", 4), ("gemini-2.5-pro", 2)] {
        for _ in 0..n {
            let r = generate(&proxy.url, model, "hello dashboard").await;
            assert_eq!(r.status(), 200, "{model}");
            r.text().await.unwrap();
        }
    }
    // One open Batch API job, shown in its line.
    let batch = http()
        .post(format!(
            "{}/v1beta/models/gemini-2.5-flash:batchGenerateContent",
            proxy.url
        ))
        .header("x-goog-api-key", CLIENT_KEY)
        .json(
            &serde_json::json!({"batch": {"inputConfig": {"requests": {"requests": [
                {"request": {"contents": [{"parts": [{"text": "x".repeat(40)}]}]}}
            ]}}}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(batch.status(), 200);
    let (code, status) = quota_status(&proxy.url, CLIENT_KEY).await;
    assert_eq!(code, 200, "{status}");
    let masked: Vec<String> = status["quota_status"]["keys"]
        .as_array()
        .expect("keys in the status")
        .iter()
        .map(|k| k["id"].as_str().expect("a key id").to_string())
        .collect();
    assert_eq!(masked.len(), 2, "{status}");

    // 2. A headless Chromium on the page.
    let mut b = Browser::start().await;
    let page = format!("{}/dashboard/", proxy.url);
    b.goto(&page).await;

    // (a) A wrong token: a message, and no app.
    sign_in(&mut b, "not-a-valid-token-000").await;
    b.wait_js(
        "#signin-error to say the token was not accepted",
        STEP,
        "const e = document.querySelector('#signin-error');
         return !!e && e.innerText.includes('not accepted');",
        json!([]),
    )
    .await;
    assert!(b.text("#signin-error").await.contains("not accepted"));
    assert!(!b.visible("#app").await, "#app shown after a wrong token");
    // The only errors allowed so far: the API's 401 to the wrong token.
    let logs = b.new_logs().await;
    let unexpected: Vec<String> = severe(&logs)
        .into_iter()
        .filter(|m| !(m.contains("/api/ai/") && m.contains(" 401 ") && m.ends_with("(network)")))
        .collect();
    assert!(
        unexpected.is_empty(),
        "console errors on the sign-in page: {unexpected:#?}"
    );

    // (b) The client key: the numbers the API gives, one row per pooled key, no admin section.
    sign_in(&mut b, CLIENT_KEY).await;
    b.wait_visible("#app", STEP).await;
    assert!(
        !b.visible("form#signin").await,
        "the sign-in form stays after signing in"
    );
    let status = wait_page_matches_status(&mut b, &proxy.url, CLIENT_KEY, STEP).await;
    assert_ne!(
        status["quota_status"]["usage"]["daily_requests"], 0,
        "the test's traffic counted"
    );
    // The pool per model, busiest first, as the API gives it (exact in each cell's title, the
    // text is compact: `600 / 2M`); never the sum across models.
    let pools = status["quota_status"]["pool_by_model"]
        .as_array()
        .expect("pool_by_model");
    assert_eq!(pools.len(), 2, "{status}");
    let rows = b
        .js(
            "return Array.from(document.querySelectorAll('#pool-models tbody tr[data-model]'))
                .map(r => [r.getAttribute('data-model')]
                    .concat(Array.from(r.querySelectorAll('td.num')).map(td => td.title.split(',')[0])));",
            json!([]),
        )
        .await;
    let expected_rows: Vec<Value> = pools
        .iter()
        .map(|m| {
            let pair = |used: &str, limit: &str| format!("{} / {}", m[used], m[limit]);
            json!([
                m["model"],
                pair("minute_requests", "minute_limit"),
                pair("daily_requests", "daily_limit"),
                pair("minute_tokens", "token_minute_limit"),
            ])
        })
        .collect();
    assert_eq!(rows, json!(expected_rows), "#pool-models rows");
    assert!(
        b.visible("#pool-models").await,
        "#pool-models hidden with two models"
    );
    let busiest = pools[0]["model"].as_str().unwrap();
    assert!(
        b.text("#usage-model").await.contains(busiest),
        "#usage-model names {busiest}"
    );
    let summed = format!("/ {}", status["quota_status"]["usage"]["minute_limit"]);
    assert_ne!(
        pools[0]["minute_limit"],
        status["quota_status"]["usage"]["minute_limit"]
    );
    assert!(
        !b.text(".usage-card").await.contains(&summed),
        "the usage card shows the sum across models ({summed})"
    );
    for id in &masked {
        let row = format!("#keys tr[data-key=\"{id}\"]");
        b.element(&row).await;
        let state = b.text(&format!("{row} td.state")).await;
        assert!(!state.trim().is_empty(), "no state shown for key {id}");
    }
    let q = &status["quota_status"];
    let health = if !q["errors"].as_array().unwrap().is_empty() {
        "Critical"
    } else if !q["warnings"].as_array().unwrap().is_empty() {
        "Warning"
    } else {
        "Healthy"
    };
    let shown = b.text("#health").await;
    assert!(
        shown.contains(health),
        "#health says {shown:?}, expected {health}: {q}"
    );
    b.element("ul#warnings").await;
    b.element("ul#errors").await;
    // The admission queue (on by default; nobody waits here).
    let queue = b.text("#queue").await;
    assert_eq!(queue.trim(), "Waiting for quota: none.", "{q}");
    // Live API sessions per project against its limit (none open here).
    let live = q["live_sessions"].as_array().expect("live_sessions");
    assert_eq!(live.len(), 2, "one line per project: {q}");
    let expected: Vec<String> = live
        .iter()
        .map(|p| {
            format!(
                "{} {} of {}",
                p["project"].as_str().unwrap(),
                p["open"],
                p["limit"]
            )
        })
        .collect();
    let shown = b.text("#live").await;
    assert_eq!(
        shown.trim(),
        format!("Live API sessions open: {}.", expected.join(", ")),
        "{q}"
    );
    // Open batch jobs per project: the one created above, its 10 tokens.
    let shown = b.text("#batches").await;
    assert!(
        shown.starts_with("Batch jobs open: ") && shown.contains("gemini-2.5-flash 10 tokens"),
        "{shown:?}: {q}"
    );
    // Which configuration serves.
    let config = b.text("#config").await;
    assert!(
        config.starts_with("Configuration: generation 1, loaded at ")
            && config.trim_end().ends_with("(at start)."),
        "{config:?}: {q}"
    );
    assert!(
        b.js(
            "return document.querySelector('#admin') === null;",
            json!([])
        )
        .await
            == true,
        "a client sees the #admin section"
    );
    // The clients table: a client key sees its own row only, and no controls.
    b.wait_visible("#clients tbody tr[data-client]", STEP).await;
    let rows = b
        .js(
            "return Array.from(document.querySelectorAll('#clients tbody tr[data-client]'))
                .map(r => r.getAttribute('data-client'));",
            json!([]),
        )
        .await;
    assert_eq!(rows, json!(["client1"]), "a client sees only its own row");
    assert!(
        !b.visible("#client-create").await,
        "a client sees the create form"
    );
    assert!(
        b.find("#clients button[data-client-action]")
            .await
            .is_none(),
        "a client sees client controls"
    );
    assert_eq!(
        b.text("#stale").await.trim(),
        "",
        "#stale while the proxy answers"
    );
    assert!(
        !b.text("#updated").await.trim().is_empty(),
        "#updated is empty"
    );
    // The token lives in sessionStorage only.
    let stored = b
        .js(
            "const has = s => Object.keys(s).some(k => (s.getItem(k) || '').includes(arguments[0]));
             return [has(sessionStorage), has(localStorage), document.cookie.includes(arguments[0])];",
            json!([CLIENT_KEY]),
        )
        .await;
    assert_eq!(
        stored,
        json!([true, false, false]),
        "[sessionStorage, localStorage, cookie]"
    );
    // It refreshes on its own: a new request shows up without touching the page.
    let before = shown_usage(&b).await;
    assert_eq!(
        generate(&proxy.url, "gemini-2.5-flash", "one more")
            .await
            .status(),
        200
    );
    b.wait_js(
        "the page to refresh by itself after a new request",
        STEP,
        &format!("{USAGE_FN} return JSON.stringify(usage()) !== arguments[0];"),
        json!([before.to_string()]),
    )
    .await;
    wait_page_matches_status(&mut b, &proxy.url, CLIENT_KEY, STEP).await;
    // A reload keeps the session (the token is in sessionStorage).
    b.goto(&page).await;
    b.wait_visible("#app", STEP).await;
    wait_page_matches_status(&mut b, &proxy.url, CLIENT_KEY, STEP).await;

    // (c) No console errors while signed in.
    let errors = severe(&b.new_logs().await);
    assert!(
        errors.is_empty(),
        "console errors on the client's page: {errors:#?}"
    );

    // (d) Sign out, then the admin: the admin section; a cancelled reset changes nothing, a
    // confirmed one zeroes the daily count.
    b.click("button#signout").await;
    b.wait_visible("form#signin", STEP).await;
    assert!(!b.visible("#app").await, "#app shown after signing out");
    let kept = b
        .js(
            "return Object.keys(sessionStorage).some(k => (sessionStorage.getItem(k) || '').includes(arguments[0]));",
            json!([CLIENT_KEY]),
        )
        .await;
    assert_eq!(
        kept, false,
        "the token stays in sessionStorage after signing out"
    );
    sign_in(&mut b, ADMIN_TOKEN).await;
    b.wait_visible("#app", STEP).await;
    b.wait_visible("#admin", STEP).await;
    b.element("select#reset-key").await;
    b.element("select#reset-model").await;
    let status = wait_page_matches_status(&mut b, &proxy.url, ADMIN_TOKEN, STEP).await;
    let daily = status["quota_status"]["usage"]["daily_requests"].clone();
    assert_ne!(daily, 0);

    // The admin creates a client: its key is shown once and works on the Gemini surface.
    b.wait_visible("form#client-create", STEP).await;
    b.type_into("#client-name", "team-z").await;
    b.type_into("#client-rpm", "60").await;
    b.type_into("#client-daily", "2").await;
    b.click("#client-create button[type=submit]").await;
    b.wait_visible("#client-key-box", STEP).await;
    let new_key = b.text("#client-new-key").await.trim().to_string();
    assert!(new_key.starts_with("gqp_"), "{new_key:?}");
    b.wait_visible("#clients tr[data-client=\"team-z\"]", STEP)
        .await;
    let limits = b
        .text("#clients tr[data-client=\"team-z\"] td.limits")
        .await;
    assert!(limits.contains("rpm 60"), "{limits:?}");
    b.element("#clients tr[data-client=\"team-z\"] td.budget .bar")
        .await;
    let with = |key: &str| {
        http()
            .post(format!(
                "{}/v1beta/models/gemini-2.5-flash:generateContent",
                proxy.url
            ))
            .header("x-goog-api-key", key.to_string())
            .json(&json!({"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}))
            .send()
    };
    assert_eq!(with(&new_key).await.unwrap().status(), 200);

    if let Some(path) = std::env::var_os("DASHBOARD_SCREENSHOT") {
        // Let charts finish drawing.
        tokio::time::sleep(Duration::from_millis(800)).await;
        let png = b.full_page_screenshot().await;
        std::fs::write(&path, png).unwrap_or_else(|e| panic!("write {path:?}: {e}"));
        eprintln!("dashboard screenshot: {}", PathBuf::from(&path).display());
    }

    // Done hides the key for good; revoking takes two clicks and the key gets 403.
    b.click("#client-key-done").await;
    assert!(!b.visible("#client-key-box").await);
    let page_text = b.js("return document.body.innerHTML;", json!([])).await;
    assert!(
        !page_text.as_str().unwrap_or_default().contains(&new_key),
        "the key stays on the page after Done"
    );
    let revoke = "#clients button[data-client-action=revoke][data-client-name=\"team-z\"]";
    b.click(revoke).await;
    b.wait_js(
        "the revoke button to ask for confirmation",
        STEP,
        "const e = document.querySelector(arguments[0]); return !!e && e.innerText.includes('Confirm');",
        json!([revoke]),
    )
    .await;
    assert_eq!(
        with(&new_key).await.unwrap().status(),
        200,
        "one click does not revoke"
    );
    b.click(revoke).await;
    b.wait_js(
        "team-z's row to go",
        STEP,
        "return !document.querySelector('#clients tr[data-client=\"team-z\"]');",
        json!([]),
    )
    .await;
    assert_eq!(with(&new_key).await.unwrap().status(), 403);
    // The team's calls counted in the pool's day: the reset below is checked from here.
    let (_, status) = quota_status(&proxy.url, ADMIN_TOKEN).await;
    let daily = status["quota_status"]["usage"]["daily_requests"].clone();

    let dialog_open = "const d = document.querySelector('dialog#confirm'); return !!d && d.open;";
    b.click("button[data-reset=\"daily\"]").await;
    b.wait_js("the confirm dialog to open", STEP, dialog_open, json!([]))
        .await;
    assert!(
        !b.text("#confirm-text").await.trim().is_empty(),
        "#confirm-text is empty"
    );
    b.click("button#confirm-no").await;
    b.wait_js(
        "the confirm dialog to close on No",
        STEP,
        "const d = document.querySelector('dialog#confirm'); return !!d && !d.open;",
        json!([]),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, after_no) = quota_status(&proxy.url, ADMIN_TOKEN).await;
    assert_eq!(
        after_no["quota_status"]["usage"]["daily_requests"], daily,
        "No reset the quota"
    );
    b.click("button[data-reset=\"daily\"]").await;
    b.wait_js(
        "the confirm dialog to open again",
        STEP,
        dialog_open,
        json!([]),
    )
    .await;
    b.click("button#confirm-yes").await;
    b.wait_js(
        "#usage-daily to show 0 after the reset",
        STEP,
        "const e = document.querySelector('#usage-daily .value');
         return !!e && e.innerText.trim().startsWith('0 /');",
        json!([]),
    )
    .await;
    let (_, after_yes) = quota_status(&proxy.url, ADMIN_TOKEN).await;
    assert_eq!(
        after_yes["quota_status"]["usage"]["daily_requests"], 0,
        "{after_yes}"
    );
    let errors = severe(&b.new_logs().await);
    assert!(
        errors.is_empty(),
        "console errors on the admin's page: {errors:#?}"
    );
    drop(b);
    drop(proxy);
    let _ = std::fs::remove_dir_all(&clients_dir);
}

#[tokio::test]
async fn the_dashboard_is_served_with_a_strict_content_security_policy_and_no_framing() {
    let fake = FakeUpstream::start().await;
    let proxy = start_proxy(&fake.url, ProxyOpts::keys(&["AIzaDashboardKey0001"])).await;
    let r = http()
        .get(format!("{}/dashboard/", proxy.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let h = r.headers().clone();
    let header = |name: &str| {
        h.get(name)
            .unwrap_or_else(|| panic!("no {name} header: {h:?}"))
            .to_str()
            .unwrap()
            .to_string()
    };
    let csp = header("content-security-policy");
    assert!(csp.contains("default-src 'self'"), "{csp}");
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    assert!(!csp.contains("unsafe-eval"), "{csp}");
    assert_eq!(header("x-frame-options"), "DENY");
    assert_eq!(header("referrer-policy"), "no-referrer");
    assert_eq!(header("x-content-type-options"), "nosniff");
    assert!(header("content-type").starts_with("text/html"));
    let html = r.text().await.unwrap();
    assert!(html.contains("<html") || html.contains("<!"), "{html}");
}
