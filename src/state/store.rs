//! The quota store a generation starts with: this replica's memory, or Redis behind the
//! failure policy ([`ResilientStore`]); and the start-up check that says at once when the
//! configured one does not work.

use std::sync::Arc;

use super::AppState;
use crate::config::Config;
use crate::quota::memory::MemoryStore;
use crate::quota::redis::RedisStore;
use crate::quota::resilient::ResilientStore;
use crate::quota::{Clock, QuotaStore, StoreError};

impl AppState {
    /// At start: when the configured shared store does not work (a typo in `REDIS_URL`, a
    /// Cluster node that does not serve the namespace), say so at once as an error naming it
    /// (without its password) and the policy now in force, not only later in `/readyz`. A
    /// `rediss://` store whose certificate is not trusted is a setting to fix, not an outage to
    /// ride out: that is an `Err`, and start-up stops.
    pub async fn check_store_at_start(&self) -> Result<(), String> {
        if let Some(e) = self.client_store.load_error() {
            return Err(e.to_string());
        }
        let Some(url) = &self.config.store.redis_url else {
            return Ok(());
        };
        let shown = crate::quota::redis::redact_url(url.expose());
        let tls = url.expose().starts_with("rediss://");
        // Not on a request's path: a `rediss://` store that times out (a TLS handshake on a
        // loaded machine) is asked again for a while, so an untrusted certificate is told apart
        // from a slow store instead of being served past.
        let patience = std::time::Instant::now() + START_TLS_PATIENCE;
        let pinged = loop {
            match self.store.ping().await {
                Err(StoreError::Timeout(_)) if tls && std::time::Instant::now() < patience => {
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
                other => break other,
            }
        };
        match pinged {
            Ok(()) => tracing::info!(url = %shown, "quota store reachable"),
            Err(e) if tls && is_tls_trust_error(&e) => {
                return Err(format!(
                    "the Redis server at {shown} presented a certificate this proxy does not trust ({e}); \
                     set store.tls_ca_file (REDIS_TLS_CA_FILE) to the CA that signed it"
                ));
            }
            Err(e) => tracing::error!(
                url = %shown,
                policy = self.config.store.on_error.as_str(),
                error = %e,
                "the quota store does not work at start-up: serving under the store.on_error policy until it does"
            ),
        }
        Ok(())
    }
}

/// How long the start-up check keeps asking a `rediss://` store that times out.
const START_TLS_PATIENCE: std::time::Duration = std::time::Duration::from_secs(5);

/// Memory by default; Redis (behind the failure policy) when a URL is configured.
pub fn build_store(
    config: &Config,
    clock: Arc<dyn Clock>,
) -> Result<Arc<dyn QuotaStore>, StoreError> {
    let tz = config.limits.timezone;
    let window = config.limits.window_ms;
    if config.store.redis_url.is_none() {
        return Ok(Arc::new(MemoryStore::new(clock, tz).with_window(window)));
    }
    let redis = RedisStore::new(&config.store, tz)?.with_window(window);
    Ok(Arc::new(ResilientStore::new(
        Arc::new(redis),
        MemoryStore::new(clock, tz).with_window(window),
        config.store.on_error,
    )))
}

/// Whether a store error is a TLS certificate the proxy does not trust (rustls' words).
fn is_tls_trust_error(e: &StoreError) -> bool {
    let text = e.to_string();
    [
        "UnknownIssuer",
        "invalid peer certificate",
        "certificate verify",
        "NotValidForName",
    ]
    .iter()
    .any(|w| text.contains(w))
}
