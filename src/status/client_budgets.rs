//! Clients' budget spend as the store counts it ([`spend`]: what the clients' rows show and
//! admission enforces), and `gqp_client_budget_used_ratio{client,period}` from it: each
//! budgeted client's share of its day's and month's budget spent and reserved, read when
//! `/metrics` refreshes its store-derived gauges (labels: clients with a budget only).

use std::sync::Arc;

use crate::config::ClientLimits;
use crate::quota::client::{ClientPeriod, micros};
use crate::state::AppState;

/// Each budgeted client's (today's, this month's) spend in micro-dollars, spent and reserved,
/// as the store counts it for admission (in its own time zone); clients without a budget are
/// left out. `None` when the store cannot answer (logged).
pub async fn spend<'a>(
    state: &AppState,
    clients: impl Iterator<Item = (&'a Arc<str>, &'a ClientLimits)>,
) -> Option<Vec<(Arc<str>, u64, u64)>> {
    let now = chrono::Utc::now().timestamp_millis();
    let tz = state.config.limits.timezone;
    let periods: Vec<(Arc<str>, i64, i64)> = clients
        .filter(|(_, l)| l.daily_budget_usd.is_some() || l.monthly_budget_usd.is_some())
        .map(|(name, l)| {
            let p = ClientPeriod::at(l.tz(tz), now);
            (name.clone(), p.day, p.month)
        })
        .collect();
    if periods.is_empty() {
        return Some(Vec::new());
    }
    match state.store.client_spend(&periods).await {
        Ok(spend) => Some(
            periods
                .into_iter()
                .zip(spend)
                .map(|((name, _, _), (day, month))| (name, day, month))
                .collect(),
        ),
        Err(e) => {
            tracing::warn!(error = %e, "reading the clients' budget use failed");
            None
        }
    }
}

/// Read every budgeted client's spend from the store and set its gauges.
pub async fn record(state: &AppState) {
    let table = state.clients.snapshot();
    let Some(spent) = spend(state, table.iter().map(|c| (&c.name, &c.limits))).await else {
        return;
    };
    for (name, day, month) in spent {
        let Some(c) = table.by_name(&name) else {
            continue;
        };
        for (period, budget, used) in [
            ("day", c.limits.daily_budget_usd, day),
            ("month", c.limits.monthly_budget_usd, month),
        ] {
            if let Some(b) = budget {
                let ratio = used as f64 / micros(b).max(1) as f64;
                metrics::gauge!(
                    "gqp_client_budget_used_ratio",
                    "client" => c.name.to_string(),
                    "period" => period
                )
                .set(ratio);
            }
        }
    }
}
