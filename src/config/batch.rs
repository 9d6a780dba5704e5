//! `[batch]`: how often the proxy asks Google about the batch jobs it holds batch quota for
//! (`poll_secs`), so a job nobody reads still releases its room when it ends. The batch quotas
//! themselves are `[limits]`' (`batch_concurrent`, `batch_enqueued_tokens`).

use std::time::Duration;

use serde::Deserialize;

use super::check::{ConfigError, secs_or_zero};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Raw {
    #[serde(default = "poll_secs")]
    poll_secs: f64,
}

impl Default for Raw {
    fn default() -> Raw {
        Raw {
            poll_secs: poll_secs(),
        }
    }
}

fn poll_secs() -> f64 {
    60.0
}

/// The Batch API's background check.
#[derive(Debug, Clone)]
pub struct BatchConfig {
    /// Between two checks of the open batch jobs; zero: never (a job is released only when an
    /// answer about it is read through the proxy).
    pub poll: Duration,
}

impl BatchConfig {
    pub(super) fn from_raw(raw: Raw) -> Result<BatchConfig, ConfigError> {
        Ok(BatchConfig {
            poll: secs_or_zero("batch.poll_secs", raw.poll_secs)?,
        })
    }
}
