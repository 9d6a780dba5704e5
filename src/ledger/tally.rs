//! One answer's tally: its tokens and cost recorded in the ledger when its body ends (or
//! when it is dropped unfinished), told to the cost watch and the trace span, and counted in
//! `gqp_tokens_total`.

use std::sync::Arc;

use super::prices::Cost;
use super::{Billing, CostWatch, Counters, Ledger, Series, TokenUsage, field};

/// The tokens and cost of one answer, recorded when its body ends (the usage comes last).
pub struct Tally {
    pub(super) ledger: Arc<Ledger>,
    pub(super) series: Series,
    pub(super) model: Arc<str>,
    pub(super) billing: Billing,
    /// Served by a Vertex AI entry: Vertex's prices.
    pub(super) vertex: bool,
    /// What an answer that reports no usage used (an embedding's, image's or video's
    /// estimate); `None`: nothing.
    pub(super) fallback: Option<TokenUsage>,
    pub(super) closed: bool,
    /// Who is told of this answer's cost, and the project it is told under.
    pub(super) watch: Option<(Arc<dyn CostWatch>, Arc<str>)>,
    /// Told the usage and billed cost (nano-USD) as recorded: the request's trace span.
    pub(super) seen: Option<UsageSeen>,
}

/// Told what an answer used and cost (nano-USD) when its tally records it.
pub type UsageSeen = Box<dyn FnOnce(&TokenUsage, u64) + Send + Sync>;

impl Tally {
    /// Tell `seen` the usage and cost this tally records (the request's trace span).
    pub fn on_record(&mut self, seen: UsageSeen) {
        self.seen = Some(seen);
    }

    /// Record the request with `usage` (the last usage object of the answer) and its cost.
    pub fn close(mut self, usage: Option<TokenUsage>) {
        self.record(usage);
    }

    /// Record an answer whose end was not seen: with `usage` if any was read, else what it
    /// would have been recorded with without usage, else `estimate` input tokens (Google ran
    /// the request; recording nothing would make it free).
    pub fn close_unfinished(mut self, usage: Option<TokenUsage>, estimate: u64) {
        let usage = usage.or(self.fallback).unwrap_or(TokenUsage {
            input: estimate,
            ..TokenUsage::default()
        });
        self.record(Some(usage));
    }

    fn record(&mut self, usage: Option<TokenUsage>) {
        if std::mem::replace(&mut self.closed, true) {
            return;
        }
        let usage = usage.or(self.fallback).unwrap_or_default();
        let cost = (self.ledger.pricing.load().prices).cost_served(
            self.vertex,
            &self.model,
            &usage,
            self.billing,
        );
        let c = answered(1, &usage, &cost);
        self.ledger.add(self.series, &c);
        metrics_for(&self.ledger, self.series, &usage, cost.billed_nano);
        if let Some((watch, project)) = &self.watch {
            watch.billed(project, cost.billed_nano);
        }
        if let Some(seen) = self.seen.take() {
            seen(&usage, cost.billed_nano);
        }
    }
}

impl Drop for Tally {
    /// An answer dropped before its body was read (an error on the way) still counts as sent.
    fn drop(&mut self) {
        self.record(None);
    }
}

/// One (model, client)'s `gqp_tokens_total` handles, by kind.
pub(super) type TokenCounters = Arc<[metrics::Counter; 5]>;

/// Token kinds of `gqp_tokens_total`, in [`TokenUsage`] order.
const TOKEN_KINDS: [&str; 5] = ["input", "cached", "output", "thinking", "tool"];

/// `gqp_tokens_total{model,kind,client}` and the per-(model, client) cost total. The client
/// of a series recorded here is one of this replica's configured callers, so the tables are
/// bounded by [`MODEL_CAP`] times the configured clients.
pub(super) fn metrics_for(ledger: &Ledger, series: Series, usage: &TokenUsage, cost_nano: u64) {
    let at = (series.model, series.client);
    let cached = ledger.token_counters.read().get(&at).cloned();
    let counters = cached.unwrap_or_else(|| {
        let name = crate::metrics::answered_model_label(&ledger.models.name(series.model));
        let client = ledger.clients.name(series.client).to_string();
        let made = Arc::new(TOKEN_KINDS.map(|kind| {
            metrics::counter!("gqp_tokens_total",
                "model" => name.to_string(), "kind" => kind, "client" => client.clone())
        }));
        ledger.token_counters.write().insert(at, made.clone());
        made
    });
    let values = [
        usage.input,
        usage.cached,
        usage.output,
        usage.thinking,
        usage.tool,
    ];
    for (c, n) in counters.iter().zip(values) {
        if n > 0 {
            c.increment(n);
        }
    }
    let mut totals = ledger.cost_totals.lock();
    let t = totals.entry(at).or_default();
    *t = t.saturating_add(cost_nano);
}

/// The counters of `requests` answers that used `usage` and cost `cost`.
pub(super) fn answered(requests: u64, usage: &TokenUsage, cost: &Cost) -> Counters {
    let mut c = Counters::default();
    c.0[field::REQUESTS] = requests;
    c.0[field::INPUT] = usage.input;
    c.0[field::CACHED] = usage.cached;
    c.0[field::OUTPUT] = usage.output;
    c.0[field::THINKING] = usage.thinking;
    c.0[field::TOOL] = usage.tool;
    c.0[field::IMAGES] = usage.images;
    c.0[field::VIDEO_SECONDS] = usage.video_seconds;
    c.0[field::COST] = cost.billed_nano;
    c.0[field::LIST_COST] = cost.list_nano;
    c.0[field::UNPRICED] = u64::from(!cost.priced);
    c
}
