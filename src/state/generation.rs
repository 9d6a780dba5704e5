//! Which configuration a generation is ([`Generation`]: its number, when and how it was
//! loaded) and the settings a reload found waiting for a restart ([`RestartRequired`]).

use std::sync::Arc;

/// One loaded configuration, as the status page shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Generation {
    /// 1 at start, one more per reload that changed something.
    #[serde(rename = "generation")]
    pub number: u64,
    /// When it was loaded, RFC 3339 (UTC).
    pub loaded_at: String,
    /// What loaded it: `start`, `sighup`, `api` or `file`.
    pub source: &'static str,
    /// Settings changed in the file that only a restart applies (`server.listen`,
    /// `store.redis_url`, ...), still at their running values: as of the last reload, whether
    /// or not it applied anything (so shared by the generations).
    pub restart_required: RestartRequired,
}

impl Generation {
    /// Generation `number`, loaded now by `source`, sharing `restart_required`.
    pub fn new(number: u64, source: &'static str, restart_required: RestartRequired) -> Generation {
        Generation {
            number,
            loaded_at: crate::alerts::rfc3339(chrono::Utc::now()),
            source,
            restart_required,
        }
    }
}

/// The settings waiting for a restart, as the last reload found them.
#[derive(Debug, Clone, Default)]
pub struct RestartRequired(Arc<parking_lot::Mutex<Vec<String>>>);

impl RestartRequired {
    pub fn get(&self) -> Vec<String> {
        self.0.lock().clone()
    }

    pub fn set(&self, settings: Vec<String>) {
        *self.0.lock() = settings;
    }
}

impl serde::Serialize for RestartRequired {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.get().serialize(s)
    }
}
