//! `[queue]`: how long and how many requests may wait for quota instead of getting a 429, and
//! the bounds on what all waiters together (and one client's) may hold.

use std::time::Duration;

use serde::Deserialize;

use super::check::{ConfigError, bad, secs_or_zero};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Raw {
    max_wait_secs: f64,
    max_length: u64,
    max_waiters_total: u64,
    max_waiting_bytes: u64,
    max_client_share: f64,
}

/// The admission queue (see `quota::queue`).
#[derive(Debug, Clone)]
pub struct QueueConfig {
    /// Longest wait for quota; zero: no queue, refuse at once.
    pub max_wait: Duration,
    /// Most requests waiting per (model, quota family) in one replica.
    pub max_length: usize,
    /// Most requests waiting in all lines of one replica (the model is the client's choice:
    /// this, not `max_length`, bounds the queue).
    pub max_waiters_total: usize,
    /// Most request-body bytes all waiters of one replica hold together.
    pub max_waiting_bytes: u64,
    /// The fraction of `max_waiters_total` and of `max_waiting_bytes` one client may hold.
    pub max_client_share: f64,
}

impl QueueConfig {
    pub(super) fn from_raw(raw: Raw) -> Result<QueueConfig, ConfigError> {
        let max_wait = secs_or_zero(
            "queue.max_wait_secs (PROXY_QUEUE_MAX_WAIT_SECS)",
            raw.max_wait_secs,
        )?;
        for (name, v) in [
            ("queue.max_length", raw.max_length),
            (
                "queue.max_waiters_total (PROXY_QUEUE_MAX_WAITERS_TOTAL)",
                raw.max_waiters_total,
            ),
        ] {
            if v == 0 || v > 1_000_000 {
                return Err(bad(name, format!("expected 1 to 1000000, got {v}")));
            }
        }
        if raw.max_waiting_bytes < 1024 * 1024 {
            return Err(bad(
                "queue.max_waiting_bytes (PROXY_QUEUE_MAX_WAITING_BYTES)",
                format!(
                    "expected at least 1048576 (1 MiB), got {}",
                    raw.max_waiting_bytes
                ),
            ));
        }
        super::check::fraction("queue.max_client_share", raw.max_client_share)?;
        Ok(QueueConfig {
            max_wait,
            max_length: raw.max_length as usize,
            max_waiters_total: raw.max_waiters_total as usize,
            max_waiting_bytes: raw.max_waiting_bytes,
            max_client_share: raw.max_client_share,
        })
    }
}
