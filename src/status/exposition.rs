//! `/metrics`: the Prometheus exposition, behind the metrics token when one is set: the
//! recorder's families, the store-derived gauges (refreshed at most once a second), and the
//! lines written here (cost as a fraction of a dollar, the queue, the buffered bytes).

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};

use super::{Extras, client_budgets, record_gauges, snapshot};
use crate::error::ApiError;
use crate::secret::presented_digest;
use crate::state::AppState;

/// How long the gauges from one status snapshot serve `/metrics` scrapes: a snapshot asks the
/// store several things, and scrapes (several Prometheus servers, a curl loop) must not turn
/// into store load.
const GAUGE_REFRESH: std::time::Duration = std::time::Duration::from_secs(1);

pub async fn metrics(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Some(token) = &state.config.metrics.token {
        let presented = crate::auth::bearer(&headers);
        match presented {
            None => {
                return ApiError::Unauthenticated(
                    "/metrics needs the metrics token: Authorization: Bearer TOKEN".into(),
                )
                .into_response();
            }
            Some(p) if !token.matches(&presented_digest(p)) => {
                return ApiError::PermissionDenied("the metrics token is not valid".into())
                    .into_response();
            }
            Some(_) => {}
        }
    }
    // Refresh the gauges that are only known by asking the store, at most once a second
    // (concurrent scrapes wait for the one refresh under way).
    {
        let mut last = state.gauges_refreshed.lock().await;
        if last.is_none_or(|at| at.elapsed() >= GAUGE_REFRESH) {
            record_gauges(&state.metrics, &snapshot(&state, Extras::None).await);
            client_budgets::record(&state).await;
            *last = Some(std::time::Instant::now());
        }
    }
    let mut text = state.metrics.render();
    cost_lines(&state, &mut text);
    queue_lines(&state, &mut text);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

/// `gqp_queue_length{model}`: requests waiting for quota in this replica, per model with a
/// line (read from the queue at scrape time, so a model's series exists only while it waits).
fn queue_lines(state: &AppState, text: &mut String) {
    use std::fmt::Write;
    let mut by_label: std::collections::BTreeMap<std::sync::Arc<str>, usize> = Default::default();
    for line in state.queues.lines() {
        *by_label
            .entry(crate::metrics::known_model_label(&line.model))
            .or_default() += line.length;
    }
    text.push_str("# HELP gqp_queue_waiting Requests waiting in this replica's admission queue for quota, all models.\n");
    text.push_str("# TYPE gqp_queue_waiting gauge\n");
    let _ = writeln!(text, "gqp_queue_waiting {}", state.queues.waiting());
    text.push_str("# HELP gqp_queue_length Requests waiting in this replica's admission queue for quota, by model (present while the model has waiters).\n");
    text.push_str("# TYPE gqp_queue_length gauge\n");
    for (model, n) in by_label {
        let _ = writeln!(
            text,
            "gqp_queue_length{{model=\"{}\"}} {}",
            crate::metrics::escape_label(&model),
            n
        );
    }
    text.push_str("# HELP gqp_queue_waiting_bytes Request-body bytes held by the requests waiting in this replica's admission queue (bounded by queue.max_waiting_bytes).\n");
    text.push_str("# TYPE gqp_queue_waiting_bytes gauge\n");
    let _ = writeln!(
        text,
        "gqp_queue_waiting_bytes {}",
        state.queues.waiting_bytes()
    );
    text.push_str("# HELP gqp_buffered_request_bytes Request-body bytes this process holds in memory now (read, waiting, being sent).\n");
    text.push_str("# TYPE gqp_buffered_request_bytes gauge\n");
    let _ = writeln!(text, "gqp_buffered_request_bytes {}", state.bodies.held());
    text.push_str("# HELP gqp_buffered_request_bytes_limit server.max_buffered_bytes: past it new requests get 503.\n");
    text.push_str("# TYPE gqp_buffered_request_bytes_limit gauge\n");
    let _ = writeln!(
        text,
        "gqp_buffered_request_bytes_limit {}",
        state.bodies.total()
    );
}

/// `gqp_cost_usd_total{model,client}`: written here because the metrics facade's counters are
/// integers, and a cost is a fraction of a dollar.
fn cost_lines(state: &AppState, text: &mut String) {
    use std::fmt::Write;
    // By model label (the process-wide cap): models past it add up under `other`.
    let mut by_label = std::collections::BTreeMap::<_, u64>::new();
    for (model, client, nano) in state.ledger.cost_totals() {
        *by_label
            .entry((crate::metrics::answered_model_label(&model), client))
            .or_default() += nano;
    }
    if by_label.is_empty() {
        return;
    }
    let totals = by_label.into_iter().map(|((m, c), n)| (m, c, n));
    text.push_str("# HELP gqp_cost_usd_total Cost of the answers served, in USD at the configured prices (0 for free-tier projects), since this process started.\n");
    text.push_str("# TYPE gqp_cost_usd_total counter\n");
    for (model, client, nano) in totals {
        let _ = writeln!(
            text,
            "gqp_cost_usd_total{{model=\"{}\",client=\"{}\"}} {}",
            crate::metrics::escape_label(&model),
            crate::metrics::escape_label(&client),
            nano as f64 / 1e9
        );
    }
}
