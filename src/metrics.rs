//! Prometheus metrics through the `metrics` facade: request outcomes, refusals, upstream 429s
//! by kind, retries, latency of the whole request and of the proxy's own share, store calls.
//! Labels carry masked key ids and model names only.
//!
//! Model names come from clients, so the model label is capped (invariant 9): the first
//! [`MODEL_LABEL_CAP`] names keep their own series, later ones share [`OVERFLOW_MODEL`]. Gauges
//! of a (key, model) the store no longer reports are dropped after [`GAUGE_IDLE`].

use parking_lot::RwLock;
use std::sync::{Arc, LazyLock, OnceLock};
use std::time::Duration;

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use metrics_util::MetricKindMask;

mod describe;

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Distinct model label values; past this many, a model is labelled [`OVERFLOW_MODEL`].
/// Well above the number of Gemini models anyone uses, far below what hurts a scrape.
pub const MODEL_LABEL_CAP: usize = 200;

/// The model label of every model past [`MODEL_LABEL_CAP`].
pub const OVERFLOW_MODEL: &str = "other";

/// A gauge not set for this long is dropped from the exposition. Every gauge still meaningful
/// is set again by the status snapshot that `/metrics` takes before rendering, so only those
/// of (key, model) pairs that left the store's usage go.
pub const GAUGE_IDLE: Duration = Duration::from_secs(600);

/// The model label values handed out so far. Process-wide like the recorder, so several app
/// instances in one process (tests) still share one cap.
static MODEL_LABELS: LazyLock<ModelLabels> = LazyLock::new(|| ModelLabels::new(MODEL_LABEL_CAP));

/// First come, first served: a model keeps the label it got, so a series never changes name.
#[derive(Debug)]
pub struct ModelLabels {
    cap: usize,
    // foldhash, as `crate::hashing`'s tables (this module depends on no other of the proxy's).
    names: RwLock<std::collections::HashSet<Arc<str>, foldhash::fast::RandomState>>,
    overflow: Arc<str>,
    none: Arc<str>,
}

impl ModelLabels {
    pub fn new(cap: usize) -> Self {
        ModelLabels {
            cap,
            names: RwLock::default(),
            overflow: OVERFLOW_MODEL.into(),
            none: "-".into(),
        }
    }

    /// The label value for `model` (`None`: a request that named no model).
    pub fn get(&self, model: Option<&str>) -> Arc<str> {
        self.label(model, true)
    }

    /// The label `model` already has, else [`OVERFLOW_MODEL`]; a new label is handed out only
    /// when `may_add` (a model Google answered for: made-up names, answered 404, never take
    /// one of the cap's slots).
    pub fn label(&self, model: Option<&str>, may_add: bool) -> Arc<str> {
        let Some(model) = model else {
            return self.none.clone();
        };
        {
            let names = self.names.read();
            if let Some(l) = names.get(model) {
                return l.clone();
            }
            if !may_add || names.len() >= self.cap {
                return self.overflow.clone();
            }
        }
        let mut names = self.names.write();
        if let Some(l) = names.get(model) {
            return l.clone();
        }
        if names.len() >= self.cap {
            return self.overflow.clone();
        }
        let l: Arc<str> = model.into();
        names.insert(l.clone());
        l
    }
}

/// The model label `model` already has, else the overflow label (never hands out a new one).
pub fn known_model_label(model: &str) -> Arc<str> {
    MODEL_LABELS.label(Some(model), false)
}

/// The model label for a model Google answered for: its own while the cap has room, else
/// [`OVERFLOW_MODEL`]. The ledger's families (`gqp_tokens_total`, `gqp_cost_usd_total`) take
/// theirs here too, so every family shows the same capped set of model names.
pub fn answered_model_label(model: &str) -> Arc<str> {
    MODEL_LABELS.get(Some(model))
}

/// A label value as the exposition format writes it: `\`, `"` and newlines escaped.
pub fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Install the process-wide Prometheus recorder (once; later calls return the same handle).
/// The application does this (`main`, a test harness, an embedder that wants `/metrics`), not
/// the library: an embedder may have its own recorder.
pub fn install_prometheus() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .ok()?
                .idle_timeout(MetricKindMask::GAUGE, Some(GAUGE_IDLE))
                .install_recorder()
                .ok()
                .inspect(|_| describe::describe())
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
    /// `gqp_requests_total` handles by model label, then by key slot and outcome: a registry
    /// lookup (labels allocated and hashed) once per combination instead of once per request.
    /// As many models as labels: at most `MODEL_LABEL_CAP` + 2.
    requests: Arc<RwLock<RequestCounters>>,
}

/// Model label → client slot → counters by `key slot * 4 + outcome`.
type RequestCounters = std::collections::HashMap<
    Arc<str>,
    Vec<Vec<Option<metrics::Counter>>>,
    foldhash::fast::RandomState,
>;

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

    /// Metrics for a reloaded configuration: the same recorder and series, with the request
    /// counters looked up again (they are cached by key and client position, which a reload
    /// may change).
    pub fn renewed(&self) -> Metrics {
        Metrics::new(self.handle.clone())
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
    /// `client`: the caller's slot ([`crate::auth::Caller::slot`], 0 for none) and name.
    /// `waited`: time in the admission queue (neither Google's nor the proxy's work).
    #[allow(clippy::too_many_arguments)]
    pub fn request(
        &self,
        model: Option<&str>,
        key: Option<(usize, &str)>,
        client: (usize, &str),
        status: u16,
        total: Duration,
        upstream: Duration,
        waited: Duration,
    ) {
        let outcome = match status {
            200..=299 => 0,
            429 => 1,
            400..=499 => 2,
            _ => 3,
        };
        // Slot 0 is "no key"; key i is slot i + 1.
        let slot = key.map_or(0, |(i, _)| i + 1) * OUTCOMES.len() + outcome;
        let lookup = |name: &str| {
            self.requests
                .read()
                .get(name)?
                .get(client.0)?
                .get(slot)?
                .clone()
        };
        // A model with a label of its own is cached under its name: one lookup per request.
        let cached = lookup(model.unwrap_or("-"));
        let counter = cached.unwrap_or_else(|| {
            // Only a model Google served gets a label of its own (see `ModelLabels::label`).
            let model = MODEL_LABELS.label(model, outcome == 0);
            if let Some(c) = lookup(&model) {
                return c;
            }
            let c = counter!("gqp_requests_total",
                "model" => model.clone(),
                "outcome" => OUTCOMES[outcome],
                "key" => key.map_or("-", |(_, k)| k).to_string(),
                "client" => client.1.to_string());
            // Keyed by label, then by client and key slots (as many as configured), so bounded
            // by the label cap and the configuration.
            {
                let mut m = self.requests.write();
                let by_client = m.entry(model).or_default();
                if by_client.len() <= client.0 {
                    by_client.resize(client.0 + 1, Vec::new());
                }
                let v = &mut by_client[client.0];
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
            self.overhead.record(
                total
                    .saturating_sub(upstream)
                    .saturating_sub(waited)
                    .as_secs_f64(),
            );
        }
    }

    pub fn refused(&self, reason: &'static str) {
        counter!("gqp_admissions_refused_total", "reason" => reason).increment(1);
    }

    /// A client refused by its own `limit` (`rpm`, ..., `models`): labels bounded by the
    /// configured clients.
    pub fn client_refused(&self, client: &str, limit: &'static str) {
        counter!("gqp_client_refusals_total", "client" => client.to_string(), "limit" => limit)
            .increment(1);
    }

    /// One try of an alert notification on `channel` (a format or `email`, never a URL).
    pub fn alert_delivery(&self, channel: &'static str, outcome: &'static str) {
        counter!("gqp_alert_deliveries_total", "channel" => channel, "outcome" => outcome)
            .increment(1);
    }

    /// A configuration reload: `applied`, `unchanged` or `invalid`; `generation` serves now.
    pub fn config_reload(&self, outcome: &'static str, generation: u64) {
        counter!("gqp_config_reloads_total", "outcome" => outcome).increment(1);
        self.config_generation(generation);
    }

    /// The configuration generation serving now (1 at start, one more per applied reload).
    pub fn config_generation(&self, generation: u64) {
        gauge!("gqp_config_generation").set(generation as f64);
    }

    pub fn alerts_firing(&self, n: usize) {
        gauge!("gqp_alerts_firing").set(n as f64);
    }

    pub fn upstream_429(&self, kind: &'static str) {
        counter!("gqp_upstream_429_total", "kind" => kind).increment(1);
    }

    /// A request left the admission queue after `waited` (admitted or not).
    pub fn queue_wait(&self, waited: Duration) {
        histogram!("gqp_queue_wait_seconds").record(waited.as_secs_f64());
    }

    /// One cacheable request: `hit`, `miss` or `bypass`.
    pub fn cache(&self, result: &'static str) {
        counter!("gqp_cache_requests_total", "result" => result).increment(1);
    }

    pub fn retry(&self, why: &'static str) {
        counter!("gqp_retries_total", "reason" => why).increment(1);
    }

    /// A request served by a fallback model (both names come from `[fallbacks]`: bounded).
    pub fn fallback(&self, asked: &str, served: &str, reason: &'static str) {
        counter!("gqp_fallbacks_total", "asked" => asked.to_string(), "served" => served.to_string(), "reason" => reason)
            .increment(1);
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

    /// What is left of a (key, model)'s window (`minute`, `daily`, `tokens`), and the
    /// window's limit, with the same labels so `1 - remaining / limit` is the share used.
    /// Models past the label cap share one series, which shows whichever of them was set last.
    pub fn remaining(
        &self,
        key: &str,
        project: &str,
        model: &str,
        window: &'static str,
        remaining: u64,
        limit: u64,
    ) {
        let model = MODEL_LABELS.label(Some(model), false);
        let labels = [
            metrics::Label::new("key", key.to_string()),
            metrics::Label::new("project", project.to_string()),
            metrics::Label::new("model", model.to_string()),
            metrics::Label::new("window", window),
        ];
        gauge!("gqp_quota_remaining", labels.to_vec()).set(remaining as f64);
        gauge!("gqp_quota_limit", labels.to_vec()).set(limit as f64);
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_labels_past_the_cap_become_other_and_earlier_ones_stay() {
        let labels = ModelLabels::new(3);
        for m in ["a", "b", "c"] {
            assert_eq!(&*labels.get(Some(m)), m);
        }
        assert_eq!(&*labels.get(Some("d")), OVERFLOW_MODEL);
        assert_eq!(&*labels.get(Some("e")), OVERFLOW_MODEL);
        assert_eq!(&*labels.get(Some("a")), "a", "a model keeps its label");
        assert_eq!(&*labels.get(None), "-", "no model is not a client's choice");
        let fresh = ModelLabels::new(3);
        assert_eq!(&*fresh.label(Some("made-up"), false), OVERFLOW_MODEL);
        assert_eq!(&*fresh.label(Some("real"), true), "real");
        assert_eq!(
            &*fresh.label(Some("real"), false),
            "real",
            "kept once given"
        );
        assert_eq!(fresh.names.read().len(), 1, "a refused name takes no slot");
        assert_eq!(labels.names.read().len(), 3);
    }

    /// Through the real recorder: however many models are named, the exposition holds at most
    /// the cap plus `other` (and `-`) as model label values.
    #[test]
    fn request_and_gauge_series_stay_within_the_model_label_cap() {
        let m = Metrics::new(install_prometheus());
        for i in 0..(MODEL_LABEL_CAP + 500) {
            let model = format!("unit-flood-{i}");
            m.request(
                Some(&model),
                Some((0, "k...0")),
                (3, "client1"),
                200,
                Duration::ZERO,
                Duration::ZERO,
                Duration::ZERO,
            );
            m.remaining("k...0", "p", &model, "minute", 7, 10);
        }
        assert!(m.requests.read().len() <= MODEL_LABEL_CAP + 2);
        let text = m.render();
        if text.is_empty() {
            // Another recorder was installed first in this process: nothing to read back.
            return;
        }
        let values: std::collections::HashSet<&str> = text
            .lines()
            .filter(|l| {
                l.starts_with("gqp_requests_total{") || l.starts_with("gqp_quota_remaining{")
            })
            .filter_map(|l| l.split("model=\"").nth(1)?.split('"').next())
            .collect();
        assert!(
            values.len() <= MODEL_LABEL_CAP + 2,
            "{} model labels",
            values.len()
        );
        assert!(values.contains(OVERFLOW_MODEL));
    }
}
