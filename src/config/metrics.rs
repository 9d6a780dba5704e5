//! `[metrics]`: who may read `/metrics`.

use serde::Deserialize;

use crate::secret::Secret;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Raw {
    token: Secret,
}

/// The Prometheus endpoint.
#[derive(Debug, Clone, Default)]
pub struct MetricsConfig {
    /// Bearer token `/metrics` asks for; `None`: open (it shows masked key ids and projects).
    pub token: Option<Secret>,
}

impl MetricsConfig {
    pub(super) fn from_raw(raw: Raw) -> MetricsConfig {
        MetricsConfig {
            token: Some(raw.token).filter(|t| !t.is_empty()),
        }
    }
}
