//! `/api/ai/alerts/`: GET lists the alerts firing and the last 100 transitions (the admin
//! token: all, with the channels; a client key: those about the pool's health and itself); `POST /api/ai/alerts/test` (admin) sends a test message to every
//! channel and answers each one's outcome.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Request, State};
use axum::http::Method;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::alerts::AlertView;
use crate::auth::{Caller, authenticate_strict};
use crate::error::ApiError;
use crate::state::AppState;

/// GET `/api/ai/alerts/`.
pub async fn alerts(State(state): State<Arc<AppState>>, req: Request) -> Response {
    let (parts, _) = req.into_parts();
    if parts.method != Method::GET {
        return ApiError::MethodNotAllowed(
            "use GET to list alerts, or POST /api/ai/alerts/test to send a test message".into(),
        )
        .into_response();
    }
    let caller = match authenticate_strict(
        &state.config.auth,
        &state.clients,
        &parts.headers,
        parts.uri.query(),
    ) {
        Ok(c) => c,
        Err(e) => {
            return match e {
                ApiError::PermissionDenied(m) => ApiError::Unauthenticated(m),
                other => other,
            }
            .into_response();
        }
    };
    if caller == Caller::Admin {
        return Json(json!({
            "success": true,
            "firing": state.alerts.firing(),
            "recent": state.alerts.recent(),
            "channels": state.alerts.summary().channels,
        }))
        .into_response();
    }
    let client = caller.name();
    let mine = |alerts: Vec<AlertView>| -> Vec<AlertView> {
        alerts
            .into_iter()
            .filter(|a| visible_to_client(a, client))
            .collect()
    };
    Json(json!({
        "success": true,
        "firing": mine(state.alerts.firing()),
        "recent": mine(state.alerts.recent()),
    }))
    .into_response()
}

/// A client key sees the alerts about the pool's health (keys exhausted or disabled, the
/// upstream failing, the store, the daily quota forecast) and those about itself; not the
/// spend (`daily_budget` adds up every client's cost), nor another client's alerts, nor the
/// channels alerts go to.
fn visible_to_client(alert: &AlertView, client: &str) -> bool {
    alert.rule != "daily_budget"
        && alert
            .labels
            .get("client")
            .is_none_or(|owner| owner == client)
}

/// POST `/api/ai/alerts/test`.
pub async fn test(State(state): State<Arc<AppState>>, req: Request) -> Response {
    let (parts, _) = req.into_parts();
    if parts.method != Method::POST {
        return ApiError::MethodNotAllowed("use POST to send a test message".into())
            .into_response();
    }
    if let Err(e) = super::admin_only(
        &state,
        &parts.headers,
        parts.uri.query(),
        "sending a test alert",
    ) {
        return e.into_response();
    }
    if state.alerts.channels().is_empty() {
        return ApiError::InvalidArgument(
            "no alert channel is configured: set [[alerts.webhooks]], [alerts.email] or PROXY_ALERT_WEBHOOK_URL".into(),
        )
        .into_response();
    }
    let channels = state.alerts.test(&state.metrics).await;
    let all = channels.iter().all(|c| c.outcome == "delivered");
    Json(json!({"success": all, "channels": channels})).into_response()
}
