//! One row per client (configured and runtime) for the clients API, the status page's clients
//! table and the client alert rules: its limits, what it used today and this month (from the
//! usage ledger, in its own time zone), the budget left, and its refusals by its own limits in
//! this replica. Never a key nor a key's digest.

use std::sync::Arc;

use serde::Serialize;

use crate::clients::{ClientLimits, Origin, REFUSAL_RUN_GAP};
use crate::ledger::by_client::Period;
use crate::quota::client::MICROS_PER_USD;
use crate::state::AppState;

/// A client's row.
#[derive(Debug, Clone, Serialize)]
pub struct ClientRow {
    #[serde(serialize_with = "as_str")]
    pub name: Arc<str>,
    pub origin: Origin,
    pub limits: ClientLimits,
    /// Its day and month, in its time zone (`None`: not read for this answer).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub today: Option<Period>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub month: Option<Period>,
    pub budget_left_usd: BudgetLeft,
    /// What its budgets count as spent (`None`: no such budget, or not read): the store's
    /// figure that admission enforces, list price of the settled answers plus the estimates
    /// of those in flight. It differs from `today`/`month`'s ledger cost, which is the billed
    /// cost (a free-tier project bills nothing while the budget still counts its list price).
    pub budget_used_usd: BudgetLeft,
    /// Requests refused by its own limits since this replica started.
    pub refused: u64,
    /// The limit that refused it last.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused_limit: Option<&'static str>,
    /// How long it has been refused without a pause of [`REFUSAL_RUN_GAP`] (`None`: it is
    /// not being refused now).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limited_secs: Option<u64>,
}

/// A figure per budget period (`None`: no such budget, or usage not read).
#[derive(Debug, Clone, Default, Serialize)]
pub struct BudgetLeft {
    pub daily: Option<f64>,
    pub monthly: Option<f64>,
}

/// Every client's row (only `only`'s when given), with its usage when `usage`.
pub async fn rows(state: &AppState, only: Option<&str>, usage: bool) -> Vec<ClientRow> {
    let table = state.clients.snapshot();
    let refusals: std::collections::HashMap<Arc<str>, crate::clients::Refused> =
        state.clients.refusals().into_iter().collect();
    let now = std::time::Instant::now();
    let mut out: Vec<ClientRow> = table
        .iter()
        .filter(|c| only.is_none_or(|n| n == &*c.name))
        .map(|c| {
            let r = refusals.get(&c.name);
            ClientRow {
                name: c.name.clone(),
                origin: c.origin,
                limits: c.limits.clone(),
                today: None,
                month: None,
                budget_left_usd: BudgetLeft::default(),
                budget_used_usd: BudgetLeft::default(),
                refused: r.map_or(0, |r| r.count),
                refused_limit: r.map(|r| r.limit),
                limited_secs: r
                    .filter(|r| now.saturating_duration_since(r.last) <= REFUSAL_RUN_GAP)
                    .map(|r| r.last.duration_since(r.since).as_secs()),
            }
        })
        .collect();
    if usage {
        add_usage(state, &mut out).await;
    }
    out
}

/// Read each row's today and month from the ledger, and its budgets' spend from the store
/// (what admission counts, so the budget left shown is the budget left enforced).
pub async fn add_usage(state: &AppState, rows: &mut [ClientRow]) {
    let tz = state.config.limits.timezone;
    let wanted: Vec<(Arc<str>, chrono_tz::Tz)> = rows
        .iter()
        .map(|r| (r.name.clone(), r.limits.tz(tz)))
        .collect();
    let used = state.ledger.client_usage(&wanted).await;
    let spent = budget_spend(state, rows).await;
    for r in rows {
        let u = used.get(&r.name).cloned().unwrap_or_default();
        // A store that cannot answer: the ledger's billed cost is the best figure left.
        let (day, month) = spent
            .get(&r.name)
            .copied()
            .unwrap_or((u.today.cost_usd, u.month.cost_usd));
        // In whole micro-dollars, as the store counts money (no 0.009000000000000001).
        let left = |budget: Option<f64>, used: f64| {
            budget.map(|b| ((b - used).max(0.0) * MICROS_PER_USD).round() / MICROS_PER_USD)
        };
        r.budget_used_usd = BudgetLeft {
            daily: r.limits.daily_budget_usd.map(|_| day),
            monthly: r.limits.monthly_budget_usd.map(|_| month),
        };
        r.budget_left_usd = BudgetLeft {
            daily: left(r.limits.daily_budget_usd, day),
            monthly: left(r.limits.monthly_budget_usd, month),
        };
        r.today = Some(u.today);
        r.month = Some(u.month);
    }
}

/// The budgeted rows' (day, month) spend in dollars, as the store counts it for admission.
async fn budget_spend(
    state: &AppState,
    rows: &[ClientRow],
) -> std::collections::HashMap<Arc<str>, (f64, f64)> {
    let spent = super::client_budgets::spend(state, rows.iter().map(|r| (&r.name, &r.limits)));
    spent
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|(name, day, month)| (name, (usd(day), usd(month))))
        .collect()
}

fn usd(micros: u64) -> f64 {
    micros as f64 / MICROS_PER_USD
}

fn as_str<S: serde::Serializer>(name: &Arc<str>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(name)
}
