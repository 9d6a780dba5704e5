//! `[log]`: the format of log lines.

use serde::Deserialize;

use super::check::{ConfigError, bad};
pub use crate::telemetry::LogFormat;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Raw {
    format: String,
}

/// Logging.
#[derive(Debug, Clone)]
pub struct LogConfig {
    pub format: LogFormat,
}

impl LogConfig {
    pub(super) fn from_raw(raw: Raw) -> Result<LogConfig, ConfigError> {
        let format = match raw.format.as_str() {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => {
                return Err(bad(
                    "log.format (PROXY_LOG_FORMAT)",
                    format!("expected \"text\" or \"json\", got {other:?}"),
                ));
            }
        };
        Ok(LogConfig { format })
    }
}
