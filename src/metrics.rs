//! Prometheus metrics through the `metrics` facade: request outcomes, refusals, upstream 429s
//! by kind, retries, latency of the whole request and of the proxy's own share, store calls.
//! Labels carry masked key ids and model names only.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Install the process-wide Prometheus recorder (once; later calls return the same handle).
/// The application does this (`main`, a test harness, an embedder that wants `/metrics`), not
/// the library: an embedder may have its own recorder.
pub fn install_prometheus() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .ok()?
                .install_recorder()
                .ok()
        })
        .clone()
}

/// Records metrics; one process-wide recorder serves every gateway in the process (tests run
/// several).
#[derive(Clone)]
pub struct Metrics {
    handle: Option<PrometheusHandle>,
    // Label-free histograms are looked up once, not on every request.
    total: metrics::Histogram,
    upstream: metrics::Histogram,
    overhead: metrics::Histogram,
    admit: metrics::Histogram,
    /// `gqp_requests_total` handles by model, then by key slot and outcome: a registry lookup
    /// (labels allocated and hashed) once per combination instead of once per request.
    requests: Arc<RwLock<RequestCounters>>,
}

/// Model → counters by `key slot * 4 + outcome`.
type RequestCounters = HashMap<Box<str>, Vec<Option<metrics::Counter>>>;

const OUTCOMES: [&str; 4] = ["ok", "rate_limited", "client_error", "server_error"];

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
    /// Metrics recorded through the `metrics` facade (into whatever recorder is installed);
    /// `handle` renders `/metrics` (`None`: it renders nothing).
    pub fn new(handle: Option<PrometheusHandle>) -> Metrics {
        Metrics {
            handle,
            total: histogram!("gqp_request_duration_seconds"),
            upstream: histogram!("gqp_upstream_duration_seconds"),
            overhead: histogram!("gqp_proxy_overhead_seconds"),
            admit: histogram!("gqp_store_duration_seconds", "op" => "admit"),
            requests: Arc::default(),
        }
    }

    /// Fold the samples recorded since the last call into the histograms. The exporter keeps
    /// raw samples until then, so without this memory would grow between scrapes.
    pub fn upkeep(&self) {
        if let Some(h) = &self.handle {
            h.run_upkeep();
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        self.handle.as_ref().map(|h| h.render()).unwrap_or_default()
    }

    /// One finished request. `key`: the pool index and masked id of the key used last.
    pub fn request(
        &self,
        model: Option<&str>,
        key: Option<(usize, &str)>,
        status: u16,
        total: Duration,
        upstream: Duration,
    ) {
        let outcome = match status {
            200..=299 => 0,
            429 => 1,
            400..=499 => 2,
            _ => 3,
        };
        let model = model.unwrap_or("-");
        // Slot 0 is "no key"; key i is slot i + 1.
        let slot = key.map_or(0, |(i, _)| i + 1) * OUTCOMES.len() + outcome;
        let cached = self
            .requests
            .read()
            .ok()
            .and_then(|m| m.get(model)?.get(slot)?.clone());
        let counter = cached.unwrap_or_else(|| {
            let c = counter!("gqp_requests_total",
                "model" => model.to_string(),
                "outcome" => OUTCOMES[outcome],
                "key" => key.map_or("-", |(_, k)| k).to_string());
            // Bounded: models come from validated paths, but a client can name many; past
            // 1,000 of them the handle is simply not cached.
            if let Ok(mut m) = self.requests.write()
                && (m.len() < 1000 || m.contains_key(model))
            {
                let v = m.entry(model.into()).or_default();
                if v.len() <= slot {
                    v.resize(slot + 1, None);
                }
                v[slot] = Some(c.clone());
            }
            c
        });
        counter.increment(1);
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

    /// One admission call to the quota store (the only store call on the request path).
    pub fn store_admit(&self, took: Duration, ok: bool) {
        self.admit.record(took.as_secs_f64());
        if !ok {
            counter!("gqp_store_errors_total", "op" => "admit").increment(1);
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
        Metrics::new(None)
    }
}
