//! `[live]`: what one replica lets Live API WebSocket sessions hold: how many at once, how big a
//! message, how long silent, how long to send `setup`, and the lease a session's quota slot is
//! counted under in a shared store.

use std::time::Duration;

use serde::Deserialize;

use super::check::{ConfigError, bad, secs, secs_or_zero};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Raw {
    max_sessions: u64,
    max_message_bytes: u64,
    idle_timeout_secs: f64,
    setup_timeout_secs: f64,
    lease_secs: f64,
}

/// The Live API sessions (see `crate::live`).
#[derive(Debug, Clone)]
pub struct LiveConfig {
    /// Most sessions open on this replica at once; one more gets a close (1013) at once.
    pub max_sessions: usize,
    /// Largest message (and frame) a client may send; a larger one closes the session (1009).
    pub max_message_bytes: usize,
    /// A session with no frame either way for this long is closed (1008); zero: never.
    pub idle_timeout: Duration,
    /// How long a client has to send `setup` after the upgrade (1008 after it).
    pub setup_timeout: Duration,
    /// A session's quota slot in a shared store expires this long after its last renewal;
    /// a living replica renews every third of it, so a dead replica's slots free within it.
    pub lease: Duration,
}

impl LiveConfig {
    pub(super) fn from_raw(raw: Raw) -> Result<LiveConfig, ConfigError> {
        if raw.max_sessions == 0 || raw.max_sessions > 1_000_000 {
            return Err(bad(
                "live.max_sessions (PROXY_LIVE_MAX_SESSIONS)",
                format!("expected 1 to 1000000, got {}", raw.max_sessions),
            ));
        }
        if !(1024..=(256 << 20)).contains(&raw.max_message_bytes) {
            return Err(bad(
                "live.max_message_bytes",
                format!(
                    "expected 1024 to 268435456 bytes, got {}",
                    raw.max_message_bytes
                ),
            ));
        }
        let lease = secs("live.lease_secs", raw.lease_secs)?;
        if lease < Duration::from_millis(300) {
            return Err(bad(
                "live.lease_secs",
                "must be at least 0.3 seconds (it is renewed every third of it)",
            ));
        }
        Ok(LiveConfig {
            max_sessions: raw.max_sessions as usize,
            max_message_bytes: raw.max_message_bytes as usize,
            idle_timeout: secs_or_zero("live.idle_timeout_secs", raw.idle_timeout_secs)?,
            setup_timeout: secs("live.setup_timeout_secs", raw.setup_timeout_secs)?,
            lease,
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::config::try_for_test;
    use crate::quota::limits::live_sessions;

    #[test]
    fn live_settings_are_validated_naming_the_setting() {
        let e = try_for_test("[live]\nmax_sessions = 0\n", &[]).unwrap_err();
        assert!(e.to_string().contains("live.max_sessions"), "{e}");
        let e = try_for_test("[live]\nlease_secs = 0.1\n", &[]).unwrap_err();
        assert!(e.to_string().contains("live.lease_secs"), "{e}");
        let e = try_for_test("[limits.models.m1]\nlive_sessions = 2\n", &[]).unwrap_err();
        assert!(
            e.to_string().contains("limits.models.m1.live_sessions"),
            "{e}"
        );
    }

    #[test]
    fn live_sessions_default_and_per_project() {
        let c = try_for_test("[limits.projects.p]\nlive_sessions = 7\n", &[]).unwrap();
        assert_eq!(live_sessions(&c.limits, "p"), 7);
        assert_eq!(live_sessions(&c.limits, "other"), 3);
        assert_eq!(c.live.max_sessions, 1000);
    }
}
