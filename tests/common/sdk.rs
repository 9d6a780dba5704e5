//! Driving the official SDKs from tests: the Python interpreter with google-genai, a
//! google-genai Live script run against a TLS front, and a Node script in `tests/js` that
//! prints one JSON line per call.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

/// The interpreter with google-genai: `GQP_PYTHON`, else the repository's `.venv`.
pub fn python() -> PathBuf {
    if let Ok(p) = std::env::var("GQP_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    assert!(
        venv.exists(),
        "this test needs Python with google-genai: run scripts/test (it creates .venv), or set GQP_PYTHON"
    );
    venv
}

/// Run `tests/python/{script}` with the SDK pointed at `proxy_url` (trusting `ca_file`) and
/// `client_key`, no Gemini key in its environment; its stdout, after checking it succeeded.
pub async fn run_python(
    script: &str,
    proxy_url: &str,
    ca_file: &std::path::Path,
    client_key: &str,
) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/python")
        .join(script);
    let out = tokio::process::Command::new(python())
        .arg(&path)
        .env("PROXY_URL", proxy_url)
        .env("SSL_CERT_FILE", ca_file)
        .env("CLIENT_KEY", client_key)
        .env_remove("GOOGLE_API_KEY")
        .env_remove("GEMINI_API_KEY")
        .env_remove("GOOGLE_GEMINI_BASE_URL")
        .output()
        .await
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "SDK script failed:\n{stdout}\n{stderr}"
    );
    stdout
}

/// What a Node SDK script printed: one JSON object per call, each with a `call` field.
pub struct NodeLines {
    lines: Vec<Value>,
    text: String,
}

impl NodeLines {
    /// The line of `call` (a failure shows everything the script printed).
    pub fn of(&self, call: &str) -> Value {
        self.lines
            .iter()
            .find(|l| l["call"] == call)
            .unwrap_or_else(|| panic!("no {call} line in:\n{}", self.text))
            .clone()
    }
}

/// Run `tests/js/{script}` (its packages installed by `npm ci`: `needs` names one to check)
/// against `proxy_url` with `client_key`, within `limit`, with `unset` removed from its
/// environment; what it printed, after checking it succeeded.
pub async fn run_node(
    script: &str,
    needs: &[&str],
    proxy_url: &str,
    client_key: &str,
    unset: &[&str],
    limit: Duration,
) -> NodeLines {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/js");
    for package in needs {
        assert!(
            dir.join("node_modules").join(package).is_dir(),
            "this test needs {package}: run scripts/test (it runs npm ci in tests/js)"
        );
    }
    let mut cmd = tokio::process::Command::new(std::env::var("GQP_NODE").unwrap_or("node".into()));
    cmd.arg(script)
        .current_dir(&dir)
        .env("PROXY_URL", proxy_url)
        .env("CLIENT_KEY", client_key);
    for var in unset {
        cmd.env_remove(var);
    }
    let out = tokio::time::timeout(limit, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("the SDK script ends within {limit:?}"))
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "SDK script failed:\n{stdout}\n{stderr}"
    );
    NodeLines {
        lines: stdout
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect(),
        text: format!("{stdout}\n{stderr}"),
    }
}
