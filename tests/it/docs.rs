//! Keeps README.md and docs/*.md true: every shell command in them (fenced `sh`/`bash`/`shell`
//! blocks, `$ ` lines, and inline `cargo …`/`scripts/…` spans) must be known to the table in
//! `classify`, which either runs it here (the binary's flags, the quick start's proxy, the curl
//! calls against that proxy and a fake upstream) or checks that it names a script, example or
//! test that CI builds and runs. An unknown command fails the test with a message saying where to
//! add it. Python blocks must parse; the TOML example must load as a config. No network.

use crate::common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::FakeUpstream;

const BIN: &str = env!("CARGO_BIN_EXE_gemini-quota-proxy");
const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// A command found in a document, with where it was.
#[derive(Debug, Clone)]
struct Found {
    file: String,
    line: usize,
    cmd: String,
}

#[derive(Default)]
struct Extracted {
    commands: Vec<Found>,
    python: Vec<Found>,
    toml: Vec<Found>,
}

fn documents() -> Vec<PathBuf> {
    let root = Path::new(ROOT);
    let mut files = vec![root.join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .expect("docs/ exists")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    docs.sort();
    files.extend(docs);
    files
}

/// Drops a trailing ` # comment` that is outside quotes.
fn strip_comment(line: &str) -> &str {
    let (mut single, mut double) = (false, false);
    let bytes = line.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'\'' if !double => single = !single,
            b'"' if !single => double = !double,
            b'#' if !single && !double && (i == 0 || bytes[i - 1].is_ascii_whitespace()) => {
                return line[..i].trim_end();
            }
            _ => {}
        }
    }
    line.trim_end()
}

fn is_shell(lang: &str) -> bool {
    matches!(lang, "sh" | "bash" | "shell" | "console")
}

fn extract(file: &Path) -> Extracted {
    let text = std::fs::read_to_string(file).unwrap();
    let name = file
        .strip_prefix(ROOT)
        .unwrap_or(file)
        .to_string_lossy()
        .into_owned();
    let mut out = Extracted::default();
    let mut fence: Option<(String, usize, String)> = None; // (lang, start line, body)
    let mut pending: Option<(usize, String)> = None; // a command continued with `\`
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        let trimmed = raw.trim_start();
        if let Some(rest) = trimmed.strip_prefix("```") {
            match fence.take() {
                None => fence = Some((rest.trim().to_string(), n, String::new())),
                Some((lang, start, body)) => {
                    let f = Found {
                        file: name.clone(),
                        line: start,
                        cmd: body,
                    };
                    match lang.as_str() {
                        "python" | "py" => out.python.push(f),
                        "toml" => out.toml.push(f),
                        _ => {}
                    }
                }
            }
            continue;
        }
        match &mut fence {
            Some((lang, _, body)) => {
                body.push_str(raw);
                body.push('\n');
                let shell = is_shell(lang);
                let line = if let Some(c) = trimmed.strip_prefix("$ ") {
                    c
                } else if shell {
                    trimmed
                } else {
                    continue;
                };
                let line = strip_comment(line);
                let (start, mut acc) = pending.take().unwrap_or((n, String::new()));
                if let Some(head) = line.strip_suffix('\\') {
                    acc.push_str(head);
                    pending = Some((start, acc));
                    continue;
                }
                acc.push_str(line);
                let cmd = acc.split_whitespace().collect::<Vec<_>>().join(" ");
                if !cmd.is_empty() {
                    out.commands.push(Found {
                        file: name.clone(),
                        line: start,
                        cmd: acc.trim().to_string(),
                    });
                }
            }
            None => {
                // Inline spans outside fences: `cargo …` and `scripts/…` are commands too.
                for (k, span) in raw.split('`').enumerate() {
                    if k % 2 == 1 {
                        let words: Vec<&str> = span
                            .split_whitespace()
                            .skip_while(|w| is_assignment(w))
                            .collect();
                        let first = words.first().copied().unwrap_or("");
                        if (first == "cargo" && words.len() > 1) || first.starts_with("scripts/") {
                            out.commands.push(Found {
                                file: name.clone(),
                                line: n,
                                cmd: span.to_string(),
                            });
                        }
                    }
                }
            }
        }
    }
    out
}

fn is_assignment(word: &str) -> bool {
    word.split_once('=').is_some_and(|(k, _)| {
        !k.is_empty()
            && k.chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
    })
}

/// What the test does with a command.
#[derive(Debug, PartialEq)]
enum Check {
    /// Run the built binary with these arguments; it must succeed.
    Binary(Vec<String>),
    /// The quick start: run the proxy with these variables, then the curl calls against it.
    RunProxy(Vec<(String, String)>),
    /// Run against the proxy started for `RunProxy`; must answer 200.
    Curl,
    /// `scripts/NAME`: exists, executable, `bash -n` clean; `test` must be what CI runs.
    Script(String),
    /// `examples/NAME.rs` exists (CI builds and lints every example: `.ci/run`'s
    /// `cargo test --no-run --all-targets` with clippy's lints).
    Example(String),
    /// `tests/NAME.rs` or `tests/NAME/main.rs` exists, and `tests/NAME/AREA.rs` for a filter
    /// `AREA::…` after it (CI runs every test target: `scripts/test`).
    TestTarget(String, Option<String>),
    /// A unit test filter such as `ledger::forecast::tests::backtest`: the module file holds a
    /// test function starting with the last segment (CI runs it: `scripts/test`).
    LibTest(String),
    /// Commands CI itself runs (`.ci/run`), or the Dockerfile's build step.
    Ci,
    /// Docker: no engine on the development and CI machines; the files it needs must exist and
    /// every `-e NAME` must be a documented variable.
    Docker,
    /// kubectl: no cluster on the development and CI machines; every file or directory given
    /// with `-f`/`-k` must exist (`tests/it/deploy_manifests.rs` validates them), a
    /// `create secret generic NAME` must name the Secret in `deploy/kubernetes/secret.yaml`, and
    /// every `--from-literal=NAME=...` must be a documented variable.
    Kubectl,
}

/// The table. A command not matched here fails the test.
fn classify(cmd: &str) -> Option<Check> {
    let words: Vec<&str> = cmd.split_whitespace().collect();
    let env: Vec<(String, String)> = words
        .iter()
        .take_while(|w| is_assignment(w))
        .map(|w| {
            let (k, v) = w.split_once('=').unwrap();
            (k.to_string(), v.to_string())
        })
        .collect();
    let rest: Vec<&str> = words[env.len()..].to_vec();
    let joined = rest.join(" ");
    let after = |prefix: &str| joined.strip_prefix(prefix).map(str::trim);
    if let Some(args) = after("cargo run --release -- ")
        .or_else(|| after("cargo run -- "))
        .or_else(|| after("target/release/gemini-quota-proxy "))
        .or_else(|| after("target/debug/gemini-quota-proxy "))
        && !args.is_empty()
    {
        return Some(Check::Binary(
            args.split_whitespace().map(String::from).collect(),
        ));
    }
    if joined == "cargo run --release" || joined == "cargo run" {
        return Some(Check::RunProxy(env));
    }
    if let Some(x) =
        after("cargo run --release --example ").or_else(|| after("cargo run --example "))
    {
        return Some(Check::Example(x.split_whitespace().next()?.to_string()));
    }
    if let Some(x) = after("cargo test --test ") {
        let mut words = x.split_whitespace();
        let target = words.next()?.to_string();
        // A filter after the target (`cargo test --test it queue::`): its first segment names
        // the area, tests/TARGET/AREA.rs.
        let area = words
            .next()
            .filter(|w| !w.starts_with('-'))
            .and_then(|w| w.split("::").next())
            .map(String::from);
        return Some(Check::TestTarget(target, area));
    }
    if let Some(x) = after("cargo test --lib ") {
        return Some(Check::LibTest(x.split_whitespace().next()?.to_string()));
    }
    if matches!(
        joined.as_str(),
        "cargo test --locked"
            | "cargo fmt --check"
            | "cargo clippy"
            | "cargo build --release"
            | "cargo build --release --locked"
    ) {
        return Some(Check::Ci);
    }
    if let Some(name) = rest.first().and_then(|w| w.strip_prefix("scripts/")) {
        return Some(Check::Script(name.to_string()));
    }
    if rest.first() == Some(&"curl") {
        return Some(Check::Curl);
    }
    if rest.first() == Some(&"docker") {
        return Some(Check::Docker);
    }
    if rest.first() == Some(&"kubectl") {
        return Some(Check::Kubectl);
    }
    None
}

fn all_extracted() -> Extracted {
    let mut all = Extracted::default();
    for f in documents() {
        let e = extract(&f);
        all.commands.extend(e.commands);
        all.python.extend(e.python);
        all.toml.extend(e.toml);
    }
    all
}

#[test]
fn the_extractor_sees_the_quick_start() {
    let all = all_extracted();
    let cmds: Vec<&str> = all.commands.iter().map(|f| f.cmd.as_str()).collect();
    assert!(cmds.contains(&"scripts/test"), "{cmds:?}");
    assert!(
        cmds.iter()
            .any(|c| classify(c).is_some_and(|k| matches!(k, Check::RunProxy(_)))),
        "{cmds:?}"
    );
    assert!(cmds.iter().any(|c| c.starts_with("curl ")), "{cmds:?}");
    assert_eq!(strip_comment("a 'b # c' # d"), "a 'b # c'");
    assert!(
        classify("FOO=1 cargo run --release --example bench")
            .is_some_and(|c| c == Check::Example("bench".into()))
    );
    assert!(classify("rm -rf /").is_none());
}

#[test]
fn every_documented_command_is_known_and_its_target_exists() {
    let all = all_extracted();
    let root = Path::new(ROOT);
    let ci = std::fs::read_to_string(root.join(".ci/run")).unwrap();
    let script_test = std::fs::read_to_string(root.join("scripts/test")).unwrap();
    let variables = std::fs::read_to_string(root.join("docs/configuration.md")).unwrap();
    let mut problems = Vec::new();
    for f in &all.commands {
        let at = format!("{}:{}: `{}`", f.file, f.line, f.cmd);
        let Some(check) = classify(&f.cmd) else {
            problems.push(format!(
                "{at}: not in the table of tests/it/docs.rs; add it to `classify` (run it there, or \
                 name the CI script or target that runs it)"
            ));
            continue;
        };
        match check {
            Check::Script(name) => {
                let p = root.join("scripts").join(&name);
                let ok = std::fs::metadata(&p).is_ok_and(|m| {
                    use std::os::unix::fs::PermissionsExt;
                    m.is_file() && m.permissions().mode() & 0o111 != 0
                });
                if !ok {
                    problems.push(format!("{at}: scripts/{name} is missing or not executable"));
                    continue;
                }
                let syntax = Command::new("bash").arg("-n").arg(&p).status().unwrap();
                if !syntax.success() {
                    problems.push(format!("{at}: scripts/{name} fails `bash -n`"));
                }
                match name.as_str() {
                    "test" if !ci.contains("scripts/test") => {
                        problems.push(format!("{at}: .ci/run no longer runs scripts/test"))
                    }
                    // Run by scripts/test, which CI runs.
                    "check-deploy" if !script_test.contains("scripts/check-deploy") => problems
                        .push(format!(
                            "{at}: scripts/test no longer runs scripts/check-deploy"
                        )),
                    "check-deploy" => {}
                    "run-tests" if !script_test.contains("scripts/run-tests") => problems.push(
                        format!("{at}: scripts/test no longer runs scripts/run-tests"),
                    ),
                    "run-tests" => {}
                    // Benchmarks take minutes and a quiet machine: syntax-checked here, their
                    // Rust parts (examples/) are built and linted by CI (`--all-targets`).
                    "test" | "bench" | "bench-h2" | "bench-exhaust" | "bench-fairness" => {}
                    // Three release builds and minutes of training on the benchmarks: likewise.
                    "build-pgo" => {}
                    // Reads a release build's machine code (CI builds none): run by hand with
                    // the benchmarks.
                    "stack-frames" => {}
                    // Their Python parts parsed (not run: callgrind takes minutes, perf
                    // samples a loaded machine).
                    "bench-instructions" | "profile-cpu" => {
                        let py = root.join(format!("scripts/{}.py", name.replace('-', "_")));
                        let parsed = Command::new("python3")
                            .args(["-c", "import ast, sys; ast.parse(open(sys.argv[1]).read())"])
                            .arg(&py)
                            .status()
                            .unwrap();
                        if !parsed.success() {
                            problems.push(format!("{at}: {} does not parse", py.display()));
                        }
                    }
                    other => problems.push(format!(
                        "{at}: scripts/{other} is not run by CI; add it to .ci/run or to this table"
                    )),
                }
            }
            Check::Example(name) => {
                if !root.join("examples").join(format!("{name}.rs")).is_file() {
                    problems.push(format!("{at}: examples/{name}.rs does not exist"));
                }
                if !ci.contains("--all-targets") {
                    problems.push(format!("{at}: .ci/run no longer builds examples"));
                }
            }
            Check::TestTarget(name, area) => {
                let dir = root.join("tests").join(&name);
                if !root.join("tests").join(format!("{name}.rs")).is_file()
                    && !dir.join("main.rs").is_file()
                {
                    problems.push(format!(
                        "{at}: neither tests/{name}.rs nor tests/{name}/main.rs exists"
                    ));
                }
                if let Some(area) = area.filter(|a| !a.is_empty())
                    && dir.join("main.rs").is_file()
                    && !dir.join(format!("{area}.rs")).is_file()
                {
                    problems.push(format!("{at}: tests/{name}/{area}.rs does not exist"));
                }
            }
            Check::LibTest(filter) => {
                let segs: Vec<&str> = filter.split("::").collect();
                let (func, module) = segs.split_last().unwrap();
                let module: Vec<&str> = module.iter().copied().filter(|s| *s != "tests").collect();
                let base = root.join("src").join(module.join("/"));
                let text = std::fs::read_to_string(base.with_extension("rs"))
                    .or_else(|_| std::fs::read_to_string(base.join("mod.rs")))
                    .unwrap_or_default();
                if !text.contains(&format!("fn {func}")) {
                    problems.push(format!(
                        "{at}: no test fn {func}… in src/{}",
                        module.join("/")
                    ));
                }
            }
            Check::Docker => {
                for file in ["Dockerfile", "docker-compose.yml"] {
                    if !root.join(file).is_file() {
                        problems.push(format!("{at}: {file} is missing"));
                    }
                }
                let words: Vec<&str> = f.cmd.split_whitespace().collect();
                for pair in words.windows(2) {
                    if pair[0] == "-e" {
                        let var = pair[1].split('=').next().unwrap();
                        if !variables.contains(&format!("`{var}`")) {
                            problems.push(format!("{at}: {var} is not a documented variable"));
                        }
                    }
                }
            }
            Check::Kubectl => {
                let words: Vec<&str> = f.cmd.split_whitespace().collect();
                for pair in words.windows(2) {
                    if matches!(pair[0], "-f" | "-k") && !root.join(pair[1]).exists() {
                        problems.push(format!("{at}: {} does not exist", pair[1]));
                    }
                }
                if let Some(i) = words
                    .windows(3)
                    .position(|w| w == ["create", "secret", "generic"])
                {
                    let name = words.get(i + 3).copied().unwrap_or("");
                    let secret =
                        std::fs::read_to_string(root.join("deploy/kubernetes/secret.yaml"))
                            .unwrap_or_default();
                    if !secret.contains("kind: Secret")
                        || !secret.contains(&format!("  name: {name}\n"))
                    {
                        problems.push(format!(
                            "{at}: deploy/kubernetes/secret.yaml does not describe Secret {name:?}"
                        ));
                    }
                    for w in &words {
                        if let Some(lit) = w.strip_prefix("--from-literal=") {
                            let var = lit.split('=').next().unwrap();
                            if !variables.contains(&format!("`{var}`")) {
                                problems.push(format!("{at}: {var} is not a documented variable"));
                            }
                        }
                    }
                }
            }
            Check::Ci => {}
            // Run by the tests below.
            Check::Binary(_) | Check::RunProxy(_) | Check::Curl => {}
        }
    }
    assert!(problems.is_empty(), "\n{}\n", problems.join("\n"));
}

#[test]
fn documented_binary_flags_work() {
    let all = all_extracted();
    let default = std::fs::read_to_string(Path::new(ROOT).join("config/default.toml")).unwrap();
    let mut ran = 0;
    for f in &all.commands {
        if let Some(Check::Binary(args)) = classify(&f.cmd) {
            let out = Command::new(BIN).args(&args).output().unwrap();
            assert!(
                out.status.success(),
                "{}:{}: `{}` failed: {}",
                f.file,
                f.line,
                f.cmd,
                String::from_utf8_lossy(&out.stderr)
            );
            if args == ["--print-default-config"] {
                assert_eq!(String::from_utf8_lossy(&out.stdout), default);
            }
            ran += 1;
        }
    }
    assert!(ran >= 1, "no binary command found in the docs");
    // The flags the README's table names.
    let help = Command::new(BIN).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for flag in ["--config", "--print-default-config"] {
        assert!(help.contains(flag), "--help lacks {flag}: {help}");
    }
}

#[test]
fn python_snippets_parse() {
    let all = all_extracted();
    assert!(!all.python.is_empty());
    if Command::new("python3").arg("--version").output().is_err() {
        println!("python3 not found: the Python snippets were not checked");
        return;
    }
    for f in &all.python {
        let mut child = Command::new("python3")
            .args(["-c", "import ast,sys; ast.parse(sys.stdin.read())"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(f.cmd.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}:{}: Python block does not parse: {}",
            f.file,
            f.line,
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The quick start as written: the proxy started with step 1's variables (plus the docs'
/// TOML example as `--config`, and the upstream pointed at a fake Gemini), then every curl call
/// of the docs against it, in their order, each answering 200 (201 for a creation).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quick_start_proxy_answers_every_documented_curl() {
    let all = all_extracted();
    let fake = FakeUpstream::start().await;
    let env = all
        .commands
        .iter()
        .find_map(|f| match classify(&f.cmd) {
            Some(Check::RunProxy(env)) => Some(env),
            _ => None,
        })
        .expect("a `cargo run --release` in the docs");
    let toml = all
        .toml
        .iter()
        .find(|f| f.cmd.contains("[[keys]]"))
        .expect("the config example in docs/configuration.md");
    let config = std::env::temp_dir().join(format!("gqp-docs-{}.toml", std::process::id()));
    std::fs::write(&config, &toml.cmd).unwrap();
    let admin = "docs-test-admin-token";
    let clients_file =
        std::env::temp_dir().join(format!("gqp-docs-clients-{}.json", std::process::id()));
    let _ = std::fs::remove_file(&clients_file);
    let mut cmd = Command::new(BIN);
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("GEMINI_UPSTREAM_URL", &fake.url)
        .env("PROXY_LISTEN", "127.0.0.1:0")
        .env("PROXY_ADMIN_TOKEN", admin)
        // The runtime clients API's examples create, change and revoke a client: kept here.
        .env("PROXY_CLIENTS_FILE", &clients_file)
        .env("RUST_LOG", "info")
        .arg("--config")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if !sent
                && line.contains("listening")
                && let Some(rest) = line.split("addr=").nth(1)
            {
                let addr = rest.split_whitespace().next().unwrap_or("").to_string();
                let _ = tx.send(Ok(addr));
                sent = true;
            } else if !sent {
                let _ = tx.send(Err(line));
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut log = Vec::new();
    let addr = loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(Ok(addr)) => break addr,
            Ok(Err(line)) => log.push(line),
            Err(_) => {
                let _ = child.kill();
                panic!("the quick-start proxy did not start: {}", log.join("\n"));
            }
        }
    };
    let curls: Vec<Found> = all
        .commands
        .iter()
        .filter(|f| classify(&f.cmd) == Some(Check::Curl))
        .cloned()
        .collect();
    assert!(curls.len() >= 3, "{curls:?}");
    let results = tokio::task::spawn_blocking(move || {
        let mut results = BTreeMap::new();
        for f in curls {
            let line = format!(
                "{} -sS --max-time 20 -w '\\n%{{http_code}}'",
                f.cmd.replace("127.0.0.1:8080", &addr)
            );
            let out = Command::new("sh")
                .arg("-c")
                .arg(&line)
                .env("PROXY_ADMIN_TOKEN", admin)
                .output()
                .unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
            results.insert(format!("{}:{}: `{}`", f.file, f.line, f.cmd), stdout);
        }
        results
    })
    .await
    .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_file(&config);
    let _ = std::fs::remove_file(&clients_file);
    let failed: Vec<String> = results
        .iter()
        // 201: a client created.
        .filter(|(_, out)| !matches!(out.lines().last(), Some("200" | "201")))
        .map(|(at, out)| format!("{at}\n  -> {out}"))
        .collect();
    assert!(failed.is_empty(), "\n{}\n", failed.join("\n"));
    assert!(
        !fake.calls(":generateContent").is_empty(),
        "the curl calls never reached the upstream"
    );
}
