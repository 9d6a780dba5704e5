//! `[upstream]`: where the Gemini API is and how long to wait for it.

use std::time::Duration;

use serde::Deserialize;

use super::check::{BaseUrl, ConfigError, bad, secs, secs_or_zero};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Raw {
    url: String,
    connect_timeout_secs: f64,
    request_timeout_secs: f64,
    stream_idle_timeout_secs: f64,
    max_attempts: u64,
    retry_deadline_secs: f64,
    max_wait_secs: f64,
    ca_file: String,
    http2: bool,
}

/// The Gemini API side.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub url: BaseUrl,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub stream_idle_timeout: Duration,
    pub max_attempts: u32,
    pub retry_deadline: Duration,
    pub max_wait: Duration,
    /// Extra trust roots for the upstream's TLS (`upstream.ca_file`), beside Mozilla's and the
    /// system's.
    pub ca: Vec<rustls::pki_types::CertificateDer<'static>>,
    /// Offer HTTP/2 to an https upstream (`upstream.http2`), over several connections.
    pub http2: bool,
}

impl UpstreamConfig {
    pub(super) fn from_raw(raw: Raw) -> Result<UpstreamConfig, ConfigError> {
        if raw.max_attempts == 0 {
            return Err(bad("upstream.max_attempts", "must be at least 1"));
        }
        Ok(UpstreamConfig {
            url: BaseUrl::parse("upstream.url (GEMINI_UPSTREAM_URL)", &raw.url)?,
            connect_timeout: secs("upstream.connect_timeout_secs", raw.connect_timeout_secs)?,
            request_timeout: secs("upstream.request_timeout_secs", raw.request_timeout_secs)?,
            stream_idle_timeout: secs(
                "upstream.stream_idle_timeout_secs",
                raw.stream_idle_timeout_secs,
            )?,
            max_attempts: u32::try_from(raw.max_attempts.min(20)).unwrap_or(20),
            retry_deadline: secs("upstream.retry_deadline_secs", raw.retry_deadline_secs)?,
            max_wait: secs_or_zero("upstream.max_wait_secs", raw.max_wait_secs)?,
            ca: super::check::load_ca_file(
                "upstream.ca_file (GEMINI_UPSTREAM_CA_FILE)",
                &raw.ca_file,
            )?,
            http2: raw.http2,
        })
    }
}
