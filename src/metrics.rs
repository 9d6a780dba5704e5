//! Prometheus metrics through the `metrics` facade: request outcomes, refusals, upstream 429s
//! by kind, retries, latency of the whole request and of the proxy's own share, store calls.
//! Labels carry masked key ids and model names only.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Records metrics; one process-wide recorder serves every app instance (tests run several).
#[derive(Clone)]
pub struct Metrics {
    handle: Option<PrometheusHandle>,
    // Label-free histograms are looked up once, not on every request.
    total: metrics::Histogram,
    upstream: metrics::Histogram,
    overhead: metrics::Histogram,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

const LATENCY_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

impl Metrics {
    pub fn new() -> Metrics {
        let handle = HANDLE
            .get_or_init(|| {
                PrometheusBuilder::new()
                    .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                    .ok()?
                    .install_recorder()
                    .ok()
            })
            .clone();
        Metrics {
            handle,
            total: histogram!("gqp_request_duration_seconds"),
            upstream: histogram!("gqp_upstream_duration_seconds"),
            overhead: histogram!("gqp_proxy_overhead_seconds"),
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        self.handle.as_ref().map(|h| h.render()).unwrap_or_default()
    }

    pub fn request(
        &self,
        model: Option<&str>,
        key: Option<&str>,
        status: u16,
        total: Duration,
        upstream: Duration,
    ) {
        let outcome = match status {
            200..=299 => "ok",
            429 => "rate_limited",
            400..=499 => "client_error",
            _ => "server_error",
        };
        counter!("gqp_requests_total",
            "model" => model.unwrap_or("-").to_string(),
            "outcome" => outcome,
            "key" => key.unwrap_or("-").to_string())
        .increment(1);
        self.total.record(total.as_secs_f64());
        if !upstream.is_zero() {
            self.upstream.record(upstream.as_secs_f64());
            self.overhead
                .record(total.saturating_sub(upstream).as_secs_f64());
        }
    }

    pub fn refused(&self, reason: &'static str) {
        counter!("gqp_admissions_refused_total", "reason" => reason).increment(1);
    }

    pub fn upstream_429(&self, kind: &'static str) {
        counter!("gqp_upstream_429_total", "kind" => kind).increment(1);
    }

    pub fn retry(&self, why: &'static str) {
        counter!("gqp_retries_total", "reason" => why).increment(1);
    }

    pub fn store_call(&self, op: &'static str, took: Duration, ok: bool) {
        histogram!("gqp_store_duration_seconds", "op" => op).record(took.as_secs_f64());
        if !ok {
            counter!("gqp_store_errors_total", "op" => op).increment(1);
        }
    }

    /// Gauges refreshed when the status is computed (on `/metrics` scrapes and status calls).
    pub fn key_gauges(&self, cooling: usize, disabled: usize) {
        gauge!("gqp_keys_cooling").set(cooling as f64);
        gauge!("gqp_keys_disabled").set(disabled as f64);
    }

    pub fn remaining(&self, key: &str, model: &str, window: &'static str, value: u64) {
        gauge!("gqp_quota_remaining", "key" => key.to_string(), "model" => model.to_string(), "window" => window)
            .set(value as f64);
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
