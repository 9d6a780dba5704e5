//! The Docker image's build stage, without a Docker engine: the crate is built from exactly the
//! files the Dockerfile's `COPY` lines put in the image (the build context filtered by
//! `.dockerignore`), so a file the sources embed at compile time (`include_str!` of the
//! dashboard's assets, the default config, the Lua scripts) that the image lacks fails here.
//!
//! The crate's unit-test build (`cargo test --no-run --lib --locked --offline`: the library
//! with every module, the unit tests' too) in a copy of those files under the system temp
//! directory, with the project's own target directory: a test target unifies the
//! dev-dependencies' features as the running test build did, so every dependency is the one that
//! build compiled and only the crate is compiled. (A `cargo check` would need the dependencies'
//! check artifacts, which CI no longer makes: its clippy lints during the test build, see
//! `.ci/run`; a plain `cargo build` would compile most of them again, for the features the
//! dev-dependencies add to tokio and a few others.) Which files exist does not depend on the
//! profile. Offline: the dependencies are the ones the running `cargo test` fetched.

use std::path::{Path, PathBuf};
use std::process::Command;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// One `COPY src... dest` of the build stage (no `--from`: those copy from another stage).
#[derive(Debug)]
struct Copy {
    sources: Vec<String>,
    dest: String,
}

/// The Dockerfile's instructions, continuation lines joined, comments dropped.
fn instructions(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        if let Some(head) = trimmed.strip_suffix('\\') {
            current.push_str(head);
            current.push(' ');
        } else {
            current.push_str(trimmed);
            out.push(std::mem::take(&mut current));
        }
    }
    out
}

/// The `WORKDIR` and the `COPY` lines of the first stage (the one that compiles).
fn build_stage(text: &str) -> (String, Vec<Copy>) {
    let mut workdir = String::from("/");
    let mut copies = Vec::new();
    let mut stages = 0;
    for ins in instructions(text) {
        let mut words = ins.split_whitespace();
        let op = words.next().unwrap_or_default().to_ascii_uppercase();
        if op == "FROM" {
            stages += 1;
            if stages > 1 {
                break;
            }
            continue;
        }
        match op.as_str() {
            "WORKDIR" => workdir = words.next().expect("WORKDIR names a directory").to_string(),
            "ADD" => panic!("the build stage uses ADD; this test reads COPY only: {ins}"),
            "COPY" => {
                let args: Vec<&str> = words.collect();
                assert!(
                    !args.first().is_some_and(|a| a.starts_with('[')),
                    "COPY's JSON form is not read by this test: {ins}"
                );
                if args.iter().any(|a| a.starts_with("--from")) {
                    continue;
                }
                let args: Vec<&str> = args.into_iter().filter(|a| !a.starts_with("--")).collect();
                let (dest, sources) = args.split_last().expect("COPY has a destination");
                assert!(!sources.is_empty(), "COPY with no source: {ins}");
                copies.push(Copy {
                    sources: sources.iter().map(|s| s.to_string()).collect(),
                    dest: dest.to_string(),
                });
            }
            _ => {}
        }
    }
    assert!(stages >= 1, "the Dockerfile has a FROM");
    (workdir, copies)
}

/// `.dockerignore` rules in order: (negated, pattern). The last rule that matches a path or
/// one of its parent directories decides, as Docker does.
fn ignore_rules(text: &str) -> Vec<(bool, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (neg, pat) = match l.strip_prefix('!') {
                Some(p) => (true, p.trim()),
                None => (false, l),
            };
            assert!(
                !pat.contains("**") && !pat.contains('?') && !pat.contains('['),
                ".dockerignore pattern `{l}` uses syntax this test does not read (only `*`)"
            );
            let pat = pat.trim_start_matches("./").trim_start_matches('/');
            (neg, pat.trim_end_matches('/').to_string())
        })
        .collect()
}

/// `*` matches any run of characters within one path component.
fn glob(pattern: &str, name: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == name,
        Some((head, tail)) => {
            let Some(rest) = name.strip_prefix(head) else {
                return false;
            };
            (0..=rest.len())
                .filter(|&i| rest.is_char_boundary(i))
                .any(|i| glob(tail, &rest[i..]))
        }
    }
}

/// The path (relative, `/`-separated) or one of its parents matches the pattern.
fn matches(pattern: &str, rel: &str) -> bool {
    let pat: Vec<&str> = pattern.split('/').collect();
    let parts: Vec<&str> = rel.split('/').collect();
    parts.len() >= pat.len() && pat.iter().zip(&parts).all(|(p, n)| glob(p, n))
}

fn ignored(rules: &[(bool, String)], rel: &str) -> bool {
    rules
        .iter()
        .rev()
        .find(|(_, pat)| matches(pat, rel))
        .is_some_and(|(neg, _)| !neg)
}

/// Copy `rel` (a file or a directory of the context) to `to`, skipping what is ignored.
/// Returns how many files it copied.
fn copy_tree(rules: &[(bool, String)], rel: &str, to: &Path) -> usize {
    let from = Path::new(ROOT).join(rel);
    if ignored(rules, rel) {
        return 0;
    }
    if from.is_dir() {
        std::fs::create_dir_all(to).unwrap();
        let mut n = 0;
        for entry in std::fs::read_dir(&from).unwrap() {
            let name = entry.unwrap().file_name().to_string_lossy().into_owned();
            n += copy_tree(rules, &format!("{rel}/{name}"), &to.join(&name));
        }
        n
    } else {
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(&from, to).unwrap();
        1
    }
}

/// The build context as the build stage sees it: every file its `COPY` lines copy, at its
/// place under the `WORKDIR`. Returns the directory of the `WORKDIR`.
fn image_sources(dockerfile: &str, dockerignore: &str, into: &Path) -> PathBuf {
    let (workdir, copies) = build_stage(dockerfile);
    let rules = ignore_rules(dockerignore);
    let top: Vec<String> = std::fs::read_dir(ROOT)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let root = into.join(workdir.trim_start_matches('/'));
    for copy in copies {
        let dest = root.join(copy.dest.trim_start_matches("./"));
        let into_dir = copy.dest.ends_with('/') || copy.sources.len() > 1;
        for source in &copy.sources {
            let source = source.trim_start_matches("./").trim_end_matches('/');
            let found: Vec<&String> = top.iter().filter(|n| glob(source, n)).collect();
            assert!(
                !found.is_empty(),
                "COPY {source}: no such file in the context"
            );
            for name in found {
                let is_dir = Path::new(ROOT).join(name).is_dir();
                // A directory's contents go into the destination; a file goes into it when it
                // is a directory (ends with `/`, or several sources), else becomes it.
                let to = if is_dir || !into_dir {
                    dest.clone()
                } else {
                    dest.join(name)
                };
                copy_tree(&rules, name, &to);
            }
        }
    }
    root
}

#[test]
fn the_crate_builds_from_exactly_the_files_the_dockerfile_copies() {
    let dockerfile = std::fs::read_to_string(Path::new(ROOT).join("Dockerfile")).unwrap();
    let dockerignore =
        std::fs::read_to_string(Path::new(ROOT).join(".dockerignore")).unwrap_or_default();
    let tmp = std::env::temp_dir().join(format!("gqp-docker-context-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let src = image_sources(&dockerfile, &dockerignore, &tmp);
    assert!(
        src.join("Cargo.toml").is_file() && src.join("src/main.rs").is_file(),
        "the build stage gets the manifest and the sources"
    );
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(ROOT).join("target"));
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["test", "--no-run", "--lib", "--locked", "--offline"])
        .current_dir(&src)
        .env("CARGO_TARGET_DIR", &target)
        // CI's clippy wrapper (`.ci/run`) is left out: this is about files, not lints. Its
        // `RUSTFLAGS` stays: the dependencies' builds are only reused under the same flags.
        .env_remove("RUSTC_WORKSPACE_WRAPPER");
    // What `cargo test` sets for a test process (`CARGO_MANIFEST_DIR`, `CARGO_PKG_NAME`, ...):
    // build scripts such as ring's rerun when these differ from the build's, and everything
    // above them (rustls, hyper-rustls, redis, ...) would be compiled again.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if [
            "CARGO_PKG_",
            "CARGO_MANIFEST_",
            "CARGO_CRATE_",
            "CARGO_BIN_",
            "CARGO_PRIMARY_",
        ]
        .iter()
        .any(|p| name.starts_with(p))
            || name == "OUT_DIR"
        {
            cmd.env_remove(&*name);
        }
    }
    let out = cmd.output().expect("cargo runs");
    let _ = std::fs::remove_dir_all(&tmp);
    assert!(
        out.status.success(),
        "the crate's build in the Dockerfile's build context failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn dockerignore_rules_are_read_as_docker_reads_them() {
    let rules = ignore_rules("*\n!src\n!Cargo.*\nsrc/skip*\n# comment\n");
    assert!(ignored(&rules, "target"));
    assert!(ignored(&rules, "target/debug/x"));
    assert!(!ignored(&rules, "src"));
    assert!(!ignored(&rules, "src/main.rs"));
    assert!(ignored(&rules, "src/skipped.rs"));
    assert!(!ignored(&rules, "Cargo.lock"));
    assert!(!ignored(&[], "anything"));
}

#[test]
fn copy_lines_are_read_with_continuations_and_only_from_the_build_stage() {
    let (workdir, copies) = build_stage(
        "FROM a AS build\nWORKDIR /src\nCOPY Cargo.toml \\\n  Cargo.lock ./\nCOPY --chown=1 src ./src\n\
         FROM b\nCOPY --from=build /src/x /x\nCOPY late /late\n",
    );
    assert_eq!(workdir, "/src");
    assert_eq!(copies.len(), 2);
    assert_eq!(copies[0].sources, ["Cargo.toml", "Cargo.lock"]);
    assert_eq!(copies[0].dest, "./");
    assert_eq!(copies[1].sources, ["src"]);
    assert_eq!(copies[1].dest, "./src");
}
