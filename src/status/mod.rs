//! The proxy's own endpoints: `/healthz`, `/readyz`, `/metrics`, `/api/ai/quota-status/`
//! (GET: where every quota stands, [`snapshot`]; POST: admin reset), `/api/ai/usage/`
//! ([`usage`]: the ledger's history), `/api/ai/alerts/` ([`alerts`]) and
//! `/api/ai/cache/clear` ([`cache`]) and `/api/ai/config/reload` ([`config`]).

pub mod alert_rules;
pub mod alerts;
pub mod batches;
mod cache;
pub mod client_alerts;
mod client_budgets;
pub mod client_rows;
mod clients;
mod config;
pub mod dashboard;
mod exposition;
pub mod live;
pub mod snapshot;
pub mod usage;
mod views;

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use crate::auth::{Caller, authenticate_strict};
use crate::error::ApiError;
use crate::quota::resilient::StoreFailurePolicy;
use crate::quota::{ResetKind, ResetScope};
use crate::reload::Live;
use crate::state::AppState;
pub use exposition::metrics;
pub use snapshot::{Extras, Snapshot, record_gauges, snapshot};

pub async fn healthz() -> impl IntoResponse {
    Json(json!({"status": "ok"}))
}

/// Ready when the config is loaded (it is, or we would not run) and the store answers. While a
/// shared store is down the proxy still serves under the `local` and `fail-open` policies, so it
/// stays ready (200, `"status": "degraded"`); under `fail-closed` it refuses work, so 503.
pub async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    match state.store.ping().await {
        Ok(()) => Json(json!({"status": "ready", "store": state.store.backend()})).into_response(),
        Err(e) => {
            let code = match state.config.store.on_error {
                StoreFailurePolicy::FailClosed => http::StatusCode::SERVICE_UNAVAILABLE,
                _ => http::StatusCode::OK,
            };
            (
                code,
                Json(json!({"status": "degraded", "store": state.store.backend(),
                    "policy": state.config.store.on_error.as_str(), "error": e.to_string()})),
            )
                .into_response()
        }
    }
}

/// `GET /api/ai/whoami`: what the presented credential may do (`{"role": "admin"}` or
/// `"client"`), so the dashboard shows admin controls only to an admin. 401 otherwise.
pub async fn whoami(State(state): State<Arc<AppState>>, req: Request) -> Response {
    let (parts, _) = req.into_parts();
    match authenticate_strict(
        &state.config.auth,
        &state.clients,
        &parts.headers,
        parts.uri.query(),
    ) {
        Ok(Caller::Admin) => Json(json!({"role": "admin"})).into_response(),
        Ok(_) => Json(json!({"role": "client"})).into_response(),
        Err(ApiError::PermissionDenied(m)) => ApiError::Unauthenticated(m).into_response(),
        Err(e) => e.into_response(),
    }
}

/// GET and POST `/api/ai/quota-status/`.
pub async fn quota_status(State(state): State<Arc<AppState>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let result = match parts.method {
        Method::GET => get_status(&state, &parts.headers, parts.uri.query()).await,
        Method::POST => post_reset(&state, &parts.headers, parts.uri.query(), body).await,
        _ => Err(ApiError::MethodNotAllowed(
            "use GET to read or POST to reset".into(),
        )),
    };
    result.unwrap_or_else(IntoResponse::into_response)
}

async fn get_status(
    state: &AppState,
    headers: &HeaderMap,
    query: Option<&str>,
) -> Result<Response, ApiError> {
    // Reading the status always needs a credential, even where anonymous Gemini calls are allowed.
    let caller = authenticate_strict(&state.config.auth, &state.clients, headers, query).map_err(
        |e| match e {
            ApiError::PermissionDenied(m) => ApiError::Unauthenticated(m),
            other => other,
        },
    )?;
    state.status_viewed();
    let mut snap = snapshot(state, Extras::Cached).await;
    if caller != Caller::Admin {
        for_client(&mut snap.quota_status);
        snap.quota_status
            .clients
            .retain(|c| caller.client().is_some_and(|me| me.name == c.name));
        let me = caller.client().map(|c| c.name.to_string());
        snap.quota_status.batches = batches::views(state, Some(me.as_deref().unwrap_or(""))).await;
    }
    Ok(Json(snap).into_response())
}

/// What a client key may see of the pool: its capacity and health (limits, what is left,
/// keys' states and cooldowns, the queue, the store, the daily-limit forecast, alert counts),
/// not what the pool spends (the cost and the forecast's cost add up every client's usage)
/// nor where alerts are delivered.
fn for_client(status: &mut snapshot::QuotaStatus) {
    status.cost = None;
    if let Some(f) = &mut status.forecast {
        for line in f.pairs.iter_mut().chain(f.pool.iter_mut()) {
            line.projected_cost_usd = None;
        }
    }
    status.alerts.channels.clear();
    crate::pool::spend::hide_spend(
        &mut status.spend_caps,
        status.keys.iter_mut().map(|k| &mut k.reason),
    );
}

#[derive(Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
struct ResetBody {
    quota_type: String,
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    model: Option<String>,
}

const QUOTA_TYPES: &str = "\"minute\", \"daily\", \"tokens\", \"all\" or \"cooldowns\"";

/// Largest admin request body read (a reset is a few dozen bytes).
pub(crate) const ADMIN_BODY_LIMIT: usize = 64 * 1024;

async fn post_reset(
    state: &AppState,
    headers: &HeaderMap,
    query: Option<&str>,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    admin_only(state, headers, query, "resetting quotas")?;
    // Only an authenticated admin gets its body read, within the body timeout.
    let body = crate::layers::estimate::read_body(
        body,
        ADMIN_BODY_LIMIT,
        state.config.server.body_read_timeout,
    )
    .await?;
    let req: ResetBody = serde_json::from_slice(&body).map_err(|e| {
        ApiError::InvalidArgument(format!(
            "expected a JSON body {{\"quota_type\": {QUOTA_TYPES}, \"key\"?: masked id or name, \"model\"?: model}}: {e}"
        ))
    })?;
    let kind = match req.quota_type.as_str() {
        "minute" => ResetKind::Minute,
        "daily" => ResetKind::Daily,
        "tokens" => ResetKind::Tokens,
        "all" => ResetKind::All,
        "cooldowns" => ResetKind::Cooldowns,
        other => {
            return Err(ApiError::InvalidArgument(format!(
                "unknown quota_type {:?}: use {QUOTA_TYPES}",
                other.chars().take(40).collect::<String>()
            )));
        }
    };
    let keys: Vec<usize> = match &req.key {
        None => (0..state.pool.keys.len()).collect(),
        Some(k) => {
            let found: Vec<usize> = state
                .pool
                .keys
                .iter()
                .enumerate()
                .filter(|(_, p)| p.masked == *k || p.name == *k)
                .map(|(i, _)| i)
                .collect();
            if found.is_empty() {
                return Err(ApiError::InvalidArgument(format!(
                    "no pooled key has the masked id or name {:?}",
                    k.chars().take(40).collect::<String>()
                )));
            }
            found
        }
    };
    let projects: Vec<String> = keys
        .iter()
        .map(|&i| state.pool.keys[i].project.to_string())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let scope = ResetScope {
        projects: req.key.as_ref().map(|_| projects),
        kids: Some(
            keys.iter()
                .map(|&i| state.pool.keys[i].kid.to_string())
                .collect(),
        ),
        model: req.model.clone(),
    };
    state
        .store
        .reset(kind, &scope)
        .await
        .map_err(|e| ApiError::Unavailable(format!("reset failed: {e}")))?;
    if kind == ResetKind::Cooldowns {
        let kids: Vec<&str> = keys.iter().map(|&i| &*state.pool.keys[i].kid).collect();
        state.pool.health.forget_dead(&kids);
    }
    // Room may have freed for requests waiting in this replica's queue: their heads ask now.
    state.queues.ring_all();
    tracing::warn!(quota_type = %req.quota_type, key = req.key.as_deref().unwrap_or("*"),
        model = req.model.as_deref().unwrap_or("*"), "admin reset");
    let snap = snapshot(state, Extras::None).await;
    Ok(Json(ResetAnswer {
        success: true,
        reset: req,
        quota_status: snap.quota_status,
        timestamp: snap.timestamp,
    })
    .into_response())
}

/// Admin endpoints: 403 unless configured and presented.
pub(crate) fn admin_only(
    state: &AppState,
    headers: &HeaderMap,
    query: Option<&str>,
    what: &str,
) -> Result<(), ApiError> {
    if state.config.auth.admin_token.is_none() {
        return Err(ApiError::PermissionDenied(
            "admin endpoints are not configured: set PROXY_ADMIN_TOKEN".into(),
        ));
    }
    match authenticate_strict(&state.config.auth, &state.clients, headers, query)? {
        Caller::Admin => Ok(()),
        _ => Err(ApiError::PermissionDenied(format!(
            "{what} needs the admin token"
        ))),
    }
}

/// The answer to an admin reset: what was reset, and where every quota stands now.
#[derive(serde::Serialize)]
struct ResetAnswer {
    success: bool,
    reset: ResetBody,
    quota_status: snapshot::QuotaStatus,
    timestamp: String,
}

/// The proxy's own endpoints. Gemini paths never reach this router: the server sends them to
/// the Gemini service directly (and checks the header size of every request first).
/// The endpoints, each request on the generation serving when it came.
pub fn router(live: Live) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/api/ai/quota-status/", any(quota_status))
        .route("/api/ai/quota-status", any(quota_status))
        .route("/api/ai/whoami", get(whoami))
        .route("/", get(dashboard::root))
        .route("/dashboard", get(dashboard::redirect))
        .route("/dashboard/", get(dashboard::index))
        .route("/dashboard/{file}", get(dashboard::file))
        .route("/api/ai/cache/clear", any(cache::clear))
        .route("/api/ai/usage/", any(usage::usage))
        .route("/api/ai/usage", any(usage::usage))
        .route("/api/ai/alerts/", any(alerts::alerts))
        .route("/api/ai/alerts", any(alerts::alerts))
        .route("/api/ai/alerts/test", any(alerts::test))
        .route("/api/ai/config/reload", any(config::reload))
        .route("/api/ai/clients", any(clients::collection))
        .route("/api/ai/clients/", any(clients::collection))
        .route("/api/ai/clients/{name}", any(clients::one))
        .route("/api/ai/clients/{name}/rotate", any(clients::rotate))
        .fallback(not_found)
        .with_state(live)
}

/// 404 for anything outside the Gemini surface and the proxy's own endpoints.
pub async fn not_found(req: Request) -> Response {
    let path: String = req.uri().path().chars().take(120).collect();
    ApiError::NotFound(format!(
        "Nothing here: {path}. The proxy serves /v1beta/, /v1/, /upload/v1beta/, /upload/v1/, /download/v1beta/ and /download/v1/."
    ))
    .into_response()
}
