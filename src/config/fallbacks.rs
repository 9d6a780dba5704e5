//! `[fallbacks]`: whether fallback chains are on by default (`enabled`), and for each model the
//! ordered list of models a request for it may be served by when its own quota has no room or
//! Google answers it overloaded (`"gemini-2.5-pro" = ["gemini-2.5-flash", ...]`).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::Deserialize;

use super::check::{ConfigError, bad};

/// Most models one chain may list (each may be asked for admission per request).
pub const MAX_CHAIN: usize = 8;

/// One entry of the `[fallbacks]` table: `enabled` is a switch, every other key a chain.
/// (Untagged rather than a flattened struct: the `config` crate does not hand a flattened
/// struct its fields.)
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum Entry {
    Switch(bool),
    Chain(Vec<String>),
}

/// `[fallbacks]` as written; absent: off, no chains.
pub(super) type Raw = BTreeMap<String, Entry>;

/// The fallback chains (see `crate::fallback`).
#[derive(Debug, Clone, Default)]
pub struct FallbacksConfig {
    /// Whether a client without its own `fallbacks` setting has fallbacks.
    pub enabled: bool,
    /// Asked model -> the models that may serve it instead, in order.
    pub chains: HashMap<String, Vec<Arc<str>>>,
}

impl FallbacksConfig {
    pub(super) fn from_raw(raw: Raw) -> Result<FallbacksConfig, ConfigError> {
        let mut out = FallbacksConfig::default();
        for (key, entry) in raw {
            match (key.as_str(), entry) {
                ("enabled", Entry::Switch(on)) => out.enabled = on,
                ("enabled", Entry::Chain(_)) => {
                    return Err(bad("fallbacks.enabled", "expected true or false"));
                }
                (_, Entry::Switch(_)) => {
                    return Err(bad(
                        format!("fallbacks.\"{key}\""),
                        "expected a list of model names (only `enabled` is a switch)",
                    ));
                }
                (model, Entry::Chain(list)) => {
                    let setting = format!("fallbacks.\"{model}\"");
                    let asked = model.strip_prefix("models/").unwrap_or(model);
                    if !crate::route::valid_name(asked) {
                        return Err(bad(setting, "is not a model name"));
                    }
                    if list.len() > MAX_CHAIN {
                        return Err(bad(setting, format!("at most {MAX_CHAIN} models")));
                    }
                    let mut chain: Vec<Arc<str>> = Vec::with_capacity(list.len());
                    for m in &list {
                        let m = m.strip_prefix("models/").unwrap_or(m);
                        if !crate::route::valid_name(m) {
                            return Err(bad(
                                setting,
                                format!(
                                    "{m:?} is not a model name (letters, digits, '-', '_', '.')"
                                ),
                            ));
                        }
                        if m == asked {
                            return Err(bad(setting, "a model cannot be its own fallback"));
                        }
                        if !chain.iter().any(|c| &**c == m) {
                            chain.push(m.into());
                        }
                    }
                    out.chains.insert(asked.to_string(), chain);
                }
            }
        }
        Ok(out)
    }

    /// The configured chain for `model` (empty: none).
    pub fn chain(&self, model: &str) -> &[Arc<str>] {
        self.chains.get(model).map_or(&[], Vec::as_slice)
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{for_test, try_for_test};

    #[test]
    fn chains_and_the_switch_load_from_one_table() {
        let c = for_test(
            "[fallbacks]\nenabled = true\n\"gemini-2.5-pro\" = [\"gemini-2.5-flash\", \"models/gemini-2.5-flash-lite\"]\n",
            &[],
        );
        assert!(c.fallbacks.enabled);
        let chain: Vec<&str> = c
            .fallbacks
            .chain("gemini-2.5-pro")
            .iter()
            .map(|m| &**m)
            .collect();
        assert_eq!(chain, ["gemini-2.5-flash", "gemini-2.5-flash-lite"]);
        assert!(c.fallbacks.chain("gemini-2.5-flash").is_empty());
    }

    #[test]
    fn off_without_a_section() {
        let c = for_test("", &[]);
        assert!(!c.fallbacks.enabled);
        assert!(c.fallbacks.chains.is_empty());
    }

    #[test]
    fn bad_entries_name_their_setting() {
        for toml in [
            "[fallbacks]\n\"gemini-2.5-pro\" = [\"gemini-2.5-pro\"]\n",
            "[fallbacks]\n\"gemini-2.5-pro\" = [\"a b\"]\n",
            "[fallbacks]\n\"gemini-2.5-pro\" = true\n",
            "[fallbacks]\nenabled = [\"x\"]\n",
        ] {
            let e = try_for_test(toml, &[]).unwrap_err();
            assert!(e.setting.starts_with("fallbacks"), "{toml}: {e}");
        }
    }
}
