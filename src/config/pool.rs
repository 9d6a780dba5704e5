//! `[pool]` and `[[keys]]`: the pooled Gemini keys (from the file and the environment) and how
//! one is picked.

use std::collections::{HashMap, HashSet};

use serde::Deserialize;

use super::check::{ConfigError, bad, check_name, comma_list, env_value};
pub use super::vertex::{Order, VertexConfig, VertexCredentials};
pub use crate::quota::Strategy;
use crate::secret::Secret;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Raw {
    strategy: String,
    order: String,
    #[serde(default)]
    vertex: Vec<super::vertex::RawVertex>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawKey {
    key: Secret,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    project: Option<String>,
}

/// One pooled Gemini key as configured.
#[derive(Debug, Clone)]
pub struct KeyConfig {
    pub key: Secret,
    pub name: Option<String>,
    pub project: Option<String>,
}

/// The key pool.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    pub strategy: Strategy,
    /// `[[keys]]` first, then `GEMINI_API_KEY`, `GEMINI_API_KEY_BACKUP`, `GEMINI_API_KEYS`.
    pub keys: Vec<KeyConfig>,
    /// How AI Studio keys and Vertex entries share work (`pool.order`).
    pub order: Order,
    /// `[[pool.vertex]]`: Vertex AI projects, after the keys in the pool.
    pub vertex: Vec<VertexConfig>,
}

/// The variables that add pooled keys, in order.
const KEY_VARIABLES: [&str; 3] = ["GEMINI_API_KEY", "GEMINI_API_KEY_BACKUP", "GEMINI_API_KEYS"];

impl PoolConfig {
    pub(super) fn from_raw(
        raw: Raw,
        raw_keys: Vec<RawKey>,
        env: &HashMap<String, String>,
    ) -> Result<PoolConfig, ConfigError> {
        let strategy = match raw.strategy.as_str() {
            "headroom" => Strategy::Headroom,
            "ordered" => Strategy::Ordered,
            other => {
                return Err(bad(
                    "pool.strategy",
                    format!("expected \"headroom\" or \"ordered\", got {other:?}"),
                ));
            }
        };
        let mut keys: Vec<KeyConfig> = Vec::new();
        let mut seen: HashSet<String> = HashSet::new();
        for (i, k) in raw_keys.into_iter().enumerate() {
            if k.key.is_empty() {
                return Err(bad(format!("keys[{i}].key"), "is empty"));
            }
            if let Some(p) = &k.project {
                check_name(&format!("keys[{i}].project"), p)?;
            }
            if seen.insert(k.key.expose().to_string()) {
                keys.push(KeyConfig {
                    key: k.key,
                    name: k.name.filter(|n| !n.is_empty()),
                    project: k.project.filter(|p| !p.is_empty()),
                });
            }
        }
        for var in KEY_VARIABLES {
            if let Some(v) = env_value(env, var) {
                for key in comma_list(v) {
                    if seen.insert(key.to_string()) {
                        keys.push(KeyConfig {
                            key: Secret::new(key),
                            name: None,
                            project: None,
                        });
                    }
                }
            }
        }
        if let Some(k) = keys
            .iter()
            .find(|k| !k.key.expose().bytes().all(|b| b.is_ascii_graphic()))
        {
            return Err(bad(
                "GEMINI_API_KEY / keys[].key",
                format!(
                    "the key {} holds spaces or characters an HTTP header cannot carry",
                    k.key.masked()
                ),
            ));
        }
        let vertex = super::vertex::entries(raw.vertex, env)?;
        // A pool of Vertex AI entries alone serves what they can (see docs/backends.md).
        if keys.is_empty() && vertex.is_empty() {
            return Err(bad(
                "GEMINI_API_KEY",
                "no Gemini API key configured: set GEMINI_API_KEY (and optionally \
                 GEMINI_API_KEY_BACKUP or GEMINI_API_KEYS, a comma list), add [[keys]] to the config file, \
                 or add [[pool.vertex]] entries",
            ));
        }
        Ok(PoolConfig {
            strategy,
            keys,
            order: Order::parse(&raw.order)?,
            vertex,
        })
    }
}
