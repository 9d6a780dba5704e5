//! `gqp_client_budget_used_ratio{client,period}`: each budgeted client's share of its day's and
//! month's budget spent and reserved, read from the store when `/metrics` refreshes its
//! store-derived gauges (labels: configured clients with a budget only).

use std::sync::Arc;

use crate::quota::client::{ClientPeriod, micros};
use crate::state::AppState;

/// Read every budgeted client's spend from the store and set its gauges.
pub async fn record(state: &AppState) {
    let table = state.clients.snapshot();
    let now = chrono::Utc::now().timestamp_millis();
    let tz = state.config.limits.timezone;
    let budgeted: Vec<_> = table
        .iter()
        .filter(|c| c.limits.daily_budget_usd.is_some() || c.limits.monthly_budget_usd.is_some())
        .collect();
    if budgeted.is_empty() {
        return;
    }
    let periods: Vec<(Arc<str>, i64, i64)> = budgeted
        .iter()
        .map(|c| {
            let p = ClientPeriod::at(c.limits.tz(tz), now);
            (c.name.clone(), p.day, p.month)
        })
        .collect();
    let spend = match state.store.client_spend(&periods).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "reading the clients' budget use failed");
            return;
        }
    };
    for (c, (day, month)) in budgeted.iter().zip(spend) {
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
