//! The ledger's part of the status page as it is served: today's and this month's cost, and
//! the forecast lines (per (project, model) and per pool model), from what the status page
//! passes in.

use serde::Serialize;

/// A (project, model) the status page knows, with its daily limit and today's count.
#[derive(Debug, Clone)]
pub struct PairInput {
    pub project: String,
    pub model: String,
    pub daily_limit: u64,
    pub used_today: u64,
}

/// A model across the pool: the sum of its daily limits and counts in the enabled projects.
#[derive(Debug, Clone)]
pub struct PoolInput {
    pub model: String,
    pub daily_limit: u64,
    pub used_today: u64,
}

#[derive(Debug, Clone, Serialize, Default, PartialEq)]
pub struct Money {
    pub cost_usd: f64,
    pub list_cost_usd: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct CostView {
    /// Since the quota day began (midnight in `limits.timezone`).
    pub today: Money,
    /// Since the first of this month, same zone.
    pub month: Money,
    /// Requests today whose model has no price (counted at 0).
    pub unpriced_requests_today: u64,
    /// `memory` (this replica since it started) or `redis` (every replica).
    pub source: &'static str,
}

/// One forecast line.
#[derive(Debug, Clone, Serialize)]
pub struct ForecastLine {
    /// `None` for a pool line (every enabled project).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    pub model: String,
    pub daily_limit: u64,
    pub used_today: u64,
    /// Requests by the reset (today's count included); `None` without enough history.
    pub projected_requests: Option<u64>,
    /// When the limit is reached, if before the reset.
    pub exhausted_at: Option<String>,
    pub resets_at: String,
    /// Today's cost (billed) so far plus the projected requests at today's cost per request.
    pub projected_cost_usd: Option<f64>,
    pub method: Option<&'static str>,
    /// Why there is no projection (`insufficient data`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ForecastView {
    /// The busiest [`MAX_PAIRS`] (project, model) pairs with a request today.
    pub pairs: Vec<ForecastLine>,
    /// Pairs with requests today left out of `pairs`.
    pub pairs_omitted: usize,
    pub pool: Vec<ForecastLine>,
}

/// Most (project, model) pairs forecast on one status page.
pub const MAX_PAIRS: usize = 500;

/// The ledger's part of the status page.
#[derive(Debug, Clone)]
pub struct Outlook {
    pub cost: CostView,
    pub forecast: ForecastView,
    /// One per quota projected to run out before the reset.
    pub warnings: Vec<String>,
}
