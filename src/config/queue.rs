//! `[queue]`: how long and how many requests may wait for quota instead of getting a 429.

use std::time::Duration;

use serde::Deserialize;

use super::check::{ConfigError, bad, secs_or_zero};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Raw {
    max_wait_secs: f64,
    max_length: u64,
}

/// The admission queue (see `quota::queue`).
#[derive(Debug, Clone)]
pub struct QueueConfig {
    /// Longest wait for quota; zero: no queue, refuse at once.
    pub max_wait: Duration,
    /// Most requests waiting per (model, quota family) in one replica.
    pub max_length: usize,
}

impl QueueConfig {
    pub(super) fn from_raw(raw: Raw) -> Result<QueueConfig, ConfigError> {
        let max_wait = secs_or_zero(
            "queue.max_wait_secs (PROXY_QUEUE_MAX_WAIT_SECS)",
            raw.max_wait_secs,
        )?;
        if raw.max_length == 0 || raw.max_length > 1_000_000 {
            return Err(bad(
                "queue.max_length",
                format!("expected 1 to 1000000, got {}", raw.max_length),
            ));
        }
        Ok(QueueConfig {
            max_wait,
            max_length: raw.max_length as usize,
        })
    }
}
