//! Reading the deployment files for `tests/it/deploy_manifests.rs` and `tests/it/deploy_compose.rs`:
//! YAML documents as `serde_json::Value`, the environment variables docs/configuration.md documents, the
//! Dockerfile's user, and nginx directives.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};
use yaml_rust2::{Yaml, YamlLoader};

pub const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// `rel` under the repository root.
pub fn repo_path(rel: &str) -> PathBuf {
    Path::new(ROOT).join(rel)
}

/// Every YAML document of a file, as JSON values (aliases resolved, `<<` merge keys applied).
pub fn yaml_documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let docs = YamlLoader::load_from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not valid YAML: {e}", path.display()));
    docs.iter()
        .filter(|d| !matches!(d, Yaml::Null))
        .map(to_json)
        .collect()
}

fn to_json(y: &Yaml) -> Value {
    match y {
        Yaml::Real(s) => s
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map_or_else(|| Value::String(s.clone()), Value::Number),
        Yaml::Integer(i) => Value::from(*i),
        Yaml::String(s) => Value::String(s.clone()),
        Yaml::Boolean(b) => Value::Bool(*b),
        Yaml::Array(a) => Value::Array(a.iter().map(to_json).collect()),
        Yaml::Hash(h) => {
            let mut map = Map::new();
            // YAML 1.1 merge keys (`<<: *anchor`): the mapping's own keys win.
            if let Some(merged) = h.get(&Yaml::String("<<".into())) {
                let sources = match merged {
                    Yaml::Array(a) => a.clone(),
                    other => vec![other.clone()],
                };
                for s in sources {
                    if let Value::Object(m) = to_json(&s) {
                        map.extend(m);
                    }
                }
            }
            for (k, v) in h {
                let key = match k {
                    Yaml::String(s) if s == "<<" => continue,
                    Yaml::String(s) | Yaml::Real(s) => s.clone(),
                    Yaml::Integer(i) => i.to_string(),
                    Yaml::Boolean(b) => b.to_string(),
                    other => panic!("unsupported YAML key {other:?}"),
                };
                map.insert(key, to_json(v));
            }
            Value::Object(map)
        }
        Yaml::Null => Value::Null,
        Yaml::Alias(_) | Yaml::BadValue => panic!("unresolved YAML node {y:?}"),
    }
}

/// The environment variables docs/configuration.md documents: every `NAME` in the first column
/// of the table under "## Command line and environment".
pub fn documented_env_vars() -> BTreeSet<String> {
    let page = std::fs::read_to_string(repo_path("docs/configuration.md")).unwrap();
    let section = page
        .split("## Command line and environment")
        .nth(1)
        .expect("docs/configuration.md has a \"## Command line and environment\" section");
    let mut names = BTreeSet::new();
    for line in section
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
    {
        let first = line.split('|').nth(1).unwrap_or("");
        for (i, span) in first.split('`').enumerate() {
            if i % 2 == 1
                && span.len() > 1
                && span
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
            {
                names.insert(span.to_string());
            }
        }
    }
    assert!(
        names.contains("REDIS_URL") && names.contains("PROXY_CLIENT_KEYS"),
        "docs/configuration.md's variable table was not found where expected: {names:?}"
    );
    names
}

/// The Dockerfile's `USER uid:gid` of the runtime image.
pub fn dockerfile_user() -> (i64, i64) {
    let text = std::fs::read_to_string(repo_path("Dockerfile")).unwrap();
    let user = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("USER "))
        .next_back()
        .expect("the Dockerfile sets USER");
    let (uid, gid) = user
        .trim()
        .split_once(':')
        .unwrap_or((user.trim(), user.trim()));
    (
        uid.parse().expect("USER is numeric"),
        gid.parse().expect("USER's group is numeric"),
    )
}

/// nginx directives of a config file as (name, arguments), comments dropped, blocks flattened
/// (`upstream x {` counts as a directive `upstream` with argument `x`).
pub fn nginx_directives(text: &str) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    let mut current: Vec<String> = Vec::new();
    let mut word = String::new();
    let mut quote: Option<char> = None;
    let mut was_quoted = false;
    let flush = |word: &mut String, was_quoted: &mut bool, current: &mut Vec<String>| {
        if !word.is_empty() || *was_quoted {
            current.push(std::mem::take(word));
        }
        *was_quoted = false;
    };
    for line in text.lines() {
        for c in line.chars() {
            match (quote, c) {
                (Some(q), c) if c == q => quote = None,
                (Some(_), c) => word.push(c),
                (None, '"' | '\'') => {
                    quote = Some(c);
                    was_quoted = true;
                }
                (None, '#') => break,
                (None, ';' | '{' | '}') => {
                    flush(&mut word, &mut was_quoted, &mut current);
                    if !current.is_empty() {
                        let name = current.remove(0);
                        out.push((name, std::mem::take(&mut current)));
                    }
                }
                (None, c) if c.is_whitespace() => flush(&mut word, &mut was_quoted, &mut current),
                (None, c) => word.push(c),
            }
        }
        match quote {
            Some(_) => word.push('\n'),
            None => flush(&mut word, &mut was_quoted, &mut current),
        }
    }
    out
}

/// The arguments of every occurrence of `name`.
pub fn nginx_args<'a>(directives: &'a [(String, Vec<String>)], name: &str) -> Vec<&'a [String]> {
    directives
        .iter()
        .filter(|(n, _)| n == name)
        .map(|(_, a)| a.as_slice())
        .collect()
}

/// An nginx size (`20m`, `512k`, `1g`, bytes) in bytes.
pub fn nginx_size(s: &str) -> u64 {
    let (num, mult) = match s.chars().last() {
        Some('k' | 'K') => (&s[..s.len() - 1], 1024),
        Some('m' | 'M') => (&s[..s.len() - 1], 1024 * 1024),
        Some('g' | 'G') => (&s[..s.len() - 1], 1024 * 1024 * 1024),
        _ => (s, 1),
    };
    num.parse::<u64>()
        .unwrap_or_else(|_| panic!("not an nginx size: {s}"))
        * mult
}

/// An nginx time (`600s`, `10m`, `1h`, `500ms`, plain seconds) in seconds.
pub fn nginx_secs(s: &str) -> f64 {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let n: f64 = s[..split]
        .parse()
        .unwrap_or_else(|_| panic!("not an nginx time: {s}"));
    match &s[split..] {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86400.0,
        other => panic!("unknown nginx time unit {other} in {s}"),
    }
}
