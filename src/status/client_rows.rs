//! One row per client (configured and runtime) for the clients API, the status page's clients
//! table and the client alert rules: its limits, what it used today and this month (from the
//! usage ledger, in its own time zone), the budget left, and its refusals by its own limits in
//! this replica. Never a key nor a key's digest.

use std::sync::Arc;

use serde::Serialize;

use crate::clients::{ClientLimits, Origin, REFUSAL_RUN_GAP};
use crate::ledger::by_client::Period;
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

/// What is left of each budget it has (`None`: no such budget, or usage not read).
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

/// Read each row's today and month from the ledger, and the budgets left.
pub async fn add_usage(state: &AppState, rows: &mut [ClientRow]) {
    let tz = state.config.limits.timezone;
    let wanted: Vec<(Arc<str>, chrono_tz::Tz)> = rows
        .iter()
        .map(|r| (r.name.clone(), r.limits.tz(tz)))
        .collect();
    let used = state.ledger.client_usage(&wanted).await;
    for r in rows {
        let u = used.get(&r.name).cloned().unwrap_or_default();
        r.budget_left_usd = BudgetLeft {
            daily: r
                .limits
                .daily_budget_usd
                .map(|b| (b - u.today.cost_usd).max(0.0)),
            monthly: r
                .limits
                .monthly_budget_usd
                .map(|b| (b - u.month.cost_usd).max(0.0)),
        };
        r.today = Some(u.today);
        r.month = Some(u.month);
    }
}

fn as_str<S: serde::Serializer>(name: &Arc<str>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(name)
}
