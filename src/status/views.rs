//! The status document's types, as `/api/ai/quota-status/` serializes them: the whole answer,
//! each key with its models' usage against their limits, the store, the queue, and the sums by
//! model.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::ledger::outlook::{CostView, ForecastView};
use crate::quota::{Limits, Usage};
use crate::state::AppState;

/// The whole answer.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    pub success: bool,
    pub quota_status: QuotaStatus,
    /// RFC 3339, seconds.
    pub timestamp: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct QuotaStatus {
    /// False exactly when `errors` is not empty.
    pub healthy: bool,
    pub warnings: Vec<String>,
    pub errors: Vec<String>,
    /// Every model with recent usage summed against every model's limits summed: kept for
    /// clients of the first version, but no request can use that room (a request spends one
    /// model's quota). Read `pool_by_model`. Before any use: one generate model's room.
    pub usage: UsageView,
    /// The pool per model, busiest first (by the highest of its three percentages): each
    /// model's usage in the enabled projects against the sum of its limits there, the room a
    /// request for that model has. At most [`MODELS_PER_KEY`]; empty before any use.
    pub pool_by_model: Vec<ModelUsageView>,
    /// Models with recent usage left out of `pool_by_model` (the least busy).
    pub pool_models_omitted: usize,
    pub keys: Vec<KeyView>,
    pub store: StoreView,
    /// Requests waiting for quota in this replica's admission queue.
    pub queue: QueueView,
    /// The configuration serving: `generation` (1 at start, one more per applied reload),
    /// `loaded_at`, `source` (`start`, `sighup`, `api`, `file`) and `restart_required`.
    pub config: crate::state::Generation,
    /// What today and this month cost, from the usage ledger (the status page only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost: Option<CostView>,
    /// When each daily quota runs out, from the usage ledger (the status page only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub forecast: Option<ForecastView>,
    /// Alerts firing now and the channels whose last delivery failed.
    pub alerts: crate::alerts::AlertsSummary,
    /// Each project with `monthly_spend_cap_usd`: this month's spend against its cap.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub spend_caps: Vec<crate::pool::spend::SpendCapView>,
    /// Every client's limits, usage today and this month (the status page only) and refusals
    /// (a client key sees only its own row).
    pub clients: Vec<super::client_rows::ClientRow>,
    /// Each project's open Live API sessions against its `limits.live_sessions`.
    pub live_sessions: Vec<super::live::LiveSessionsView>,
    /// Each project's open Batch API jobs and their enqueued tokens per model, against the
    /// batch limits (a client key sees only its own jobs).
    pub batches: Vec<super::batches::BatchesView>,
    /// Each model's pool-wide usage against the sum of its limits in the enabled projects
    /// (what the warnings above are counted from; the alert rules read it too).
    #[serde(skip)]
    pub models: BTreeMap<String, UsageView>,
}

/// One model's pool-wide usage against its limits.
#[derive(Debug, Clone, Serialize)]
pub struct ModelUsageView {
    pub model: String,
    #[serde(flatten)]
    pub usage: UsageView,
}

impl ModelUsageView {
    /// The highest of its three percentages: how close the model is to a refusal.
    fn busiest(&self) -> f64 {
        let p = &self.usage.usage_percentage;
        p.minute.max(p.daily).max(p.tokens)
    }
}

/// `models` as `pool_by_model` lists them: busiest first (then most requests today, then by
/// name), the first [`MODELS_PER_KEY`], and how many were left out.
pub(super) fn by_model(models: &BTreeMap<String, UsageView>) -> (Vec<ModelUsageView>, usize) {
    let mut list: Vec<ModelUsageView> = models
        .iter()
        .map(|(m, u)| ModelUsageView {
            model: m.clone(),
            usage: u.clone(),
        })
        .collect();
    list.sort_by(|a, b| {
        b.busiest()
            .total_cmp(&a.busiest())
            .then(b.usage.daily_requests.cmp(&a.usage.daily_requests))
            .then_with(|| a.model.cmp(&b.model))
    });
    let omitted = list.len().saturating_sub(MODELS_PER_KEY);
    list.truncate(MODELS_PER_KEY);
    (list, omitted)
}

/// Counters against their limits.
#[derive(Debug, Clone, Serialize)]
pub struct UsageView {
    pub minute_requests: u64,
    pub minute_limit: u64,
    pub minute_remaining: u64,
    pub daily_requests: u64,
    pub daily_limit: u64,
    pub daily_remaining: u64,
    pub minute_tokens: u64,
    pub token_minute_limit: u64,
    pub token_minute_remaining: u64,
    pub usage_percentage: Percentages,
}

#[derive(Debug, Clone, Serialize)]
pub struct Percentages {
    pub minute: f64,
    pub daily: f64,
    pub tokens: f64,
}

/// One pooled key (masked), its state and its project's usage per model.
#[derive(Debug, Clone, Serialize)]
pub struct KeyView {
    pub id: String,
    pub name: String,
    pub project: String,
    /// `ai-studio` (an API key) or `vertex` (a Vertex AI project in `location`).
    pub backend: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// `active`, `cooldown` or `disabled`.
    pub state: &'static str,
    pub reason: Option<String>,
    pub cooldown_until: Option<String>,
    /// The model held, `*` for the whole project.
    pub cooldown_model: Option<String>,
    /// The project's models with usage: the busiest [`MODELS_PER_KEY`] of them.
    pub models: BTreeMap<String, UsageView>,
    /// Models with usage today left out of `models` (client-chosen names can be many).
    pub models_omitted: usize,
}

/// Most models listed per key: model names come from clients, so the document (and the gauges
/// set from it) stays bounded however many a day brings.
pub const MODELS_PER_KEY: usize = 200;

#[derive(Debug, Clone, Serialize)]
pub struct StoreView {
    pub backend: &'static str,
    pub reachable: bool,
}

/// This replica's admission queue: per model, how many wait and for how long the oldest has.
#[derive(Debug, Clone, Serialize)]
pub struct QueueView {
    /// `queue.max_wait_secs` (0: no queue).
    pub max_wait_secs: f64,
    pub waiting: usize,
    pub models: Vec<QueueLineView>,
}

#[derive(Debug, Clone, Serialize)]
pub struct QueueLineView {
    pub model: String,
    /// The project of a line of requests pinned to one key (a file they name); absent for a
    /// model's shared line.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// `generate`, `embed`, `image` or `video`.
    pub family: &'static str,
    pub length: usize,
    pub oldest_wait_ms: u64,
}

impl QueueView {
    pub(super) fn of(state: &AppState) -> QueueView {
        let models: Vec<QueueLineView> = state
            .queues
            .lines()
            .into_iter()
            .map(|l| QueueLineView {
                model: l.model.to_string(),
                project: l.project.as_deref().map(str::to_string),
                family: l.family.as_str(),
                length: l.length,
                oldest_wait_ms: l.oldest_wait.as_millis() as u64,
            })
            .collect();
        QueueView {
            max_wait_secs: state.config.queue.max_wait.as_secs_f64(),
            waiting: models.iter().map(|l| l.length).sum(),
            models,
        }
    }
}

/// `used / limit` in percent, one decimal.
pub(super) fn pct(used: u64, limit: u64) -> f64 {
    if limit == 0 {
        return 0.0;
    }
    ((used as f64 / limit as f64) * 1000.0).round() / 10.0
}

impl UsageView {
    pub(super) fn new(u: &Usage, l: &Limits) -> UsageView {
        UsageView {
            minute_requests: u.minute_requests,
            minute_limit: l.minute,
            minute_remaining: l.minute.saturating_sub(u.minute_requests),
            daily_requests: u.daily_requests,
            daily_limit: l.daily,
            daily_remaining: l.daily.saturating_sub(u.daily_requests),
            minute_tokens: u.minute_tokens,
            token_minute_limit: l.token_minute,
            token_minute_remaining: l.token_minute.saturating_sub(u.minute_tokens),
            usage_percentage: Percentages {
                minute: pct(u.minute_requests, l.minute),
                daily: pct(u.daily_requests, l.daily),
                tokens: pct(u.minute_tokens, l.token_minute),
            },
        }
    }
}

pub(super) fn add(sum: &mut Limits, l: &Limits) {
    sum.minute += l.minute;
    sum.daily += l.daily;
    sum.token_minute += l.token_minute;
}

pub(super) fn add_usage(sum: &mut Usage, u: &Usage) {
    sum.minute_requests += u.minute_requests;
    sum.minute_tokens += u.minute_tokens;
    sum.daily_requests += u.daily_requests;
}
