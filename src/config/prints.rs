//! What a configuration was loaded from, setting by setting, as digests: a reload compares two
//! of these to name the settings that changed (never their values, which may be secrets).

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

/// One digest per setting of the merged TOML tree (embedded defaults, the file, the
/// environment's overrides): a table's settings each under their dotted path, an array (the
/// `[[keys]]`, a list of client keys) as one setting.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ConfigPrints(BTreeMap<String, [u8; 32]>);

impl std::fmt::Debug for ConfigPrints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ConfigPrints({} settings)", self.0.len())
    }
}

impl ConfigPrints {
    /// The digests of `tree`'s settings.
    pub fn of(tree: &serde_json::Value) -> ConfigPrints {
        let mut out = BTreeMap::new();
        walk(String::new(), tree, &mut out);
        ConfigPrints(out)
    }

    /// The settings whose value differs between `self` and `other`, or that only one has
    /// (a table entry added or removed), in path order.
    pub fn changed(&self, other: &ConfigPrints) -> Vec<String> {
        let mut out: Vec<String> = self
            .0
            .iter()
            .filter(|(path, d)| other.0.get(*path) != Some(d))
            .map(|(path, _)| path.clone())
            .collect();
        out.extend(
            other
                .0
                .keys()
                .filter(|path| !self.0.contains_key(*path))
                .cloned(),
        );
        out.sort();
        out
    }
}

impl ConfigPrints {
    /// Whether every setting at or under `path` (`cache`, `server.public_url`) is the same in
    /// both.
    pub fn same_under(&self, other: &ConfigPrints, path: &str) -> bool {
        let under = |p: &String| {
            p.strip_prefix(path)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
        };
        let mine = self.0.iter().filter(|(p, _)| under(p));
        let theirs = other.0.iter().filter(|(p, _)| under(p));
        mine.eq(theirs)
    }

    /// Without setting `path` (one the environment replaces, so the file's value is not used).
    pub fn forget(&mut self, path: &str) {
        self.0.remove(path);
    }

    /// These prints with the settings `keep` picks taken from `old` (settings a reload leaves
    /// at their running values): they keep being reported as changed until a restart.
    pub fn keeping(mut self, old: &ConfigPrints, keep: impl Fn(&str) -> bool) -> ConfigPrints {
        self.0.retain(|p, _| !keep(p));
        for (p, d) in &old.0 {
            if keep(p) {
                self.0.insert(p.clone(), *d);
            }
        }
        self
    }
}

fn walk(path: String, v: &serde_json::Value, out: &mut BTreeMap<String, [u8; 32]>) {
    match v {
        serde_json::Value::Object(map) if !map.is_empty() => {
            for (k, v) in map {
                let sub = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                walk(sub, v, out);
            }
        }
        _ => {
            let text = serde_json::to_string(v).unwrap_or_default();
            out.insert(path, Sha256::digest(text.as_bytes()).into());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_changed_added_and_removed_settings_and_arrays_as_one() {
        let a = ConfigPrints::of(&json!({
            "limits": {"minute": 15, "models": {"m1": {"minute": 5}}},
            "keys": [{"key": "A"}, {"key": "B"}],
            "auth": {"admin_token": "t1"}
        }));
        let b = ConfigPrints::of(&json!({
            "limits": {"minute": 10, "models": {"m2": {"minute": 5}}},
            "keys": [{"key": "A"}],
            "auth": {"admin_token": "t1"}
        }));
        assert_eq!(
            a.changed(&b),
            [
                "keys",
                "limits.minute",
                "limits.models.m1.minute",
                "limits.models.m2.minute"
            ]
        );
        assert!(a.changed(&a.clone()).is_empty());
        assert!(a.same_under(&b, "auth"));
        assert!(!a.same_under(&b, "limits"));
        assert!(!a.same_under(&b, "limits.models"));
        assert!(
            a.same_under(&b, "limits.mini"),
            "a prefix of a name is not its table"
        );
        let kept = b.clone().keeping(&a, |p| p.starts_with("limits."));
        assert_eq!(kept.changed(&a), ["keys"]);
        let shown = format!("{a:?}");
        assert!(!shown.contains("t1"), "{shown}");
    }
}
