//! The proxy's own endpoints: `/healthz`, `/readyz`, `/metrics`, and `/api/ai/quota-status/`
//! (GET: where every quota stands; POST: admin reset).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use axum::Json;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::auth::{Caller, authenticate_strict};
use crate::config::StoreFailurePolicy;
use crate::error::ApiError;
use crate::quota::{KeyState, Limits, ResetKind, ResetScope, Usage};
use crate::route::QuotaFamily;
use crate::secret::presented_digest;
use crate::state::AppState;

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
            let code = match state.config.store_on_error {
                StoreFailurePolicy::FailClosed => http::StatusCode::SERVICE_UNAVAILABLE,
                _ => http::StatusCode::OK,
            };
            (
                code,
                Json(json!({"status": "degraded", "store": state.store.backend(),
                    "policy": state.config.store_on_error.as_str(), "error": e.to_string()})),
            )
                .into_response()
        }
    }
}

/// How long the gauges from one status snapshot serve `/metrics` scrapes: a snapshot asks the
/// store several things, and scrapes (several Prometheus servers, a curl loop) must not turn
/// into store load.
const GAUGE_REFRESH: std::time::Duration = std::time::Duration::from_secs(1);

pub async fn metrics(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Some(token) = &state.config.metrics_token {
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim);
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
            let _ = snapshot(&state).await;
            *last = Some(std::time::Instant::now());
        }
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
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
    authenticate_strict(&state.config, headers, query).map_err(|e| match e {
        ApiError::PermissionDenied(m) => ApiError::Unauthenticated(m),
        other => other,
    })?;
    Ok(Json(snapshot(state).await).into_response())
}

#[derive(Deserialize)]
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
const ADMIN_BODY_LIMIT: usize = 64 * 1024;

async fn post_reset(
    state: &AppState,
    headers: &HeaderMap,
    query: Option<&str>,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    let Some(_) = &state.config.admin_token else {
        return Err(ApiError::PermissionDenied(
            "admin endpoints are not configured: set PROXY_ADMIN_TOKEN".into(),
        ));
    };
    match authenticate_strict(&state.config, headers, query)? {
        Caller::Admin => {}
        _ => {
            return Err(ApiError::PermissionDenied(
                "resetting quotas needs the admin token".into(),
            ));
        }
    }
    // Only an authenticated admin gets its body read, within the body timeout.
    let body =
        crate::proxy::read_body(body, ADMIN_BODY_LIMIT, state.config.body_read_timeout).await?;
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
    if kind == ResetKind::Cooldowns
        && let Ok(mut d) = state.disabled.lock()
    {
        for i in &keys {
            d.remove(i);
        }
    }
    tracing::warn!(quota_type = %req.quota_type, key = req.key.as_deref().unwrap_or("*"),
        model = req.model.as_deref().unwrap_or("*"), "admin reset");
    let snap = snapshot(state).await;
    Ok(Json(json!({
        "success": true,
        "reset": {"quota_type": req.quota_type, "key": req.key, "model": req.model},
        "quota_status": snap["quota_status"],
        "timestamp": snap["timestamp"],
    }))
    .into_response())
}

fn pct(used: u64, limit: u64) -> f64 {
    if limit == 0 {
        return 0.0;
    }
    ((used as f64 / limit as f64) * 1000.0).round() / 10.0
}

fn usage_json(u: &Usage, minute_limit: u64, daily_limit: u64, token_limit: u64) -> Value {
    json!({
        "minute_requests": u.minute_requests,
        "minute_limit": minute_limit,
        "minute_remaining": minute_limit.saturating_sub(u.minute_requests),
        "daily_requests": u.daily_requests,
        "daily_limit": daily_limit,
        "daily_remaining": daily_limit.saturating_sub(u.daily_requests),
        "minute_tokens": u.minute_tokens,
        "token_minute_limit": token_limit,
        "token_minute_remaining": token_limit.saturating_sub(u.minute_tokens),
        "usage_percentage": {
            "minute": pct(u.minute_requests, minute_limit),
            "daily": pct(u.daily_requests, daily_limit),
            "tokens": pct(u.minute_tokens, token_limit),
        },
    })
}

/// The whole status document (the seed's shape, plus `keys` and `store`).
pub async fn snapshot(state: &AppState) -> Value {
    let store = &state.store;
    let reachable = store.ping().await.is_ok();
    let usage = store.usage().await.unwrap_or_default();
    let cooldowns = store.cooldowns().await.unwrap_or_default();
    let kids: Vec<Arc<str>> = state.pool.keys.iter().map(|k| k.kid.clone()).collect();
    let key_states = store
        .key_states(&kids)
        .await
        .unwrap_or_else(|_| kids.iter().map(|_| KeyState::Active).collect());
    let enabled_projects: BTreeSet<&str> = state
        .pool
        .keys
        .iter()
        .zip(&key_states)
        .filter(|(_, s)| **s == KeyState::Active)
        .map(|(k, _)| &*k.project)
        .collect();
    // Each model's pool-wide usage against the sum of its limits in every enabled project,
    // each resolved with the model's family, the overrides and what Google reported.
    let mut per_model: BTreeMap<&str, (Usage, Limits)> = BTreeMap::new();
    for (_, m, _) in &usage {
        per_model.entry(m.as_str()).or_insert_with(|| {
            let family = QuotaFamily::of_model(m);
            let mut limit = Limits::default();
            for p in &enabled_projects {
                let l = state.pool.limits_for(p, m, family);
                limit.minute += l.minute;
                limit.daily += l.daily;
                limit.token_minute += l.token_minute;
            }
            (Usage::default(), limit)
        });
    }
    for (p, m, u) in &usage {
        if !enabled_projects.contains(p.as_str()) {
            continue;
        }
        if let Some((sum, _)) = per_model.get_mut(m.as_str()) {
            sum.minute_requests += u.minute_requests;
            sum.minute_tokens += u.minute_tokens;
            sum.daily_requests += u.daily_requests;
        }
    }
    let mut total = Usage::default();
    let mut total_limit = Limits::default();
    if per_model.is_empty() {
        // Nothing used yet: the pool's room for a generate model, project by project.
        for p in &enabled_projects {
            let l = state.pool.limits_for(p, "", QuotaFamily::Generate);
            total_limit.minute += l.minute;
            total_limit.daily += l.daily;
            total_limit.token_minute += l.token_minute;
        }
    }
    let mut warnings: Vec<String> = Vec::new();
    let mut errors: Vec<String> = Vec::new();
    for (model, (u, l)) in &per_model {
        total.minute_requests += u.minute_requests;
        total.minute_tokens += u.minute_tokens;
        total.daily_requests += u.daily_requests;
        total_limit.minute += l.minute;
        total_limit.daily += l.daily;
        total_limit.token_minute += l.token_minute;
        for (name, used, limit) in [
            ("minute", u.minute_requests, l.minute),
            ("daily", u.daily_requests, l.daily),
            ("token", u.minute_tokens, l.token_minute),
        ] {
            let p = pct(used, limit);
            if p > 95.0 {
                errors.push(format!("{model}: {name} usage at {p}% of the pool's limit"));
            } else if p >= 80.0 {
                warnings.push(format!("{model}: {name} usage at {p}% of the pool's limit"));
            }
        }
    }
    let (minute_limit, daily_limit, token_limit) = (
        total_limit.minute,
        total_limit.daily,
        total_limit.token_minute,
    );

    let mut keys_json = Vec::new();
    let (mut cooling_n, mut disabled_n) = (0, 0);
    for (k, s) in state.pool.keys.iter().zip(&key_states) {
        let cd = cooldowns
            .iter()
            .filter(|c| c.project == *k.project)
            .max_by_key(|c| c.remaining_ms);
        let (state_name, reason) = match (s, cd) {
            (KeyState::Disabled { reason }, _) => {
                disabled_n += 1;
                warnings.push(format!(
                    "key {} ({}) is disabled: {}",
                    k.masked, k.name, reason
                ));
                ("disabled", Some(reason.clone()))
            }
            (KeyState::Active, Some(c)) if c.model == "*" => {
                cooling_n += 1;
                ("cooldown", Some(c.reason.clone()))
            }
            (KeyState::Active, Some(c)) => {
                // A hold on one model: the key still serves others, but shows as cooling.
                cooling_n += 1;
                ("cooldown", Some(c.reason.clone()))
            }
            (KeyState::Active, None) => ("active", None),
        };
        let now = chrono::Utc::now();
        let cooldown_until = cd.map(|c| {
            // Bounded before the arithmetic: a store's number never overflows a date.
            (now + chrono::Duration::milliseconds(c.remaining_ms.min(400 * 86_400_000) as i64))
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        });
        let mut models = BTreeMap::new();
        for (p, m, u) in &usage {
            if p == &*k.project {
                let l = state.pool.limits_for(p, m, QuotaFamily::of_model(m));
                state.metrics.remaining(
                    &k.masked,
                    m,
                    "minute",
                    l.minute.saturating_sub(u.minute_requests),
                );
                state.metrics.remaining(
                    &k.masked,
                    m,
                    "daily",
                    l.daily.saturating_sub(u.daily_requests),
                );
                state.metrics.remaining(
                    &k.masked,
                    m,
                    "tokens",
                    l.token_minute.saturating_sub(u.minute_tokens),
                );
                models.insert(m.clone(), usage_json(u, l.minute, l.daily, l.token_minute));
            }
        }
        keys_json.push(json!({
            "id": k.masked,
            "name": k.name,
            "project": &*k.project,
            "state": state_name,
            "reason": reason,
            "cooldown_until": cooldown_until,
            "cooldown_model": cd.map(|c| c.model.clone()),
            "models": models,
        }));
    }
    let all_cooling_or_disabled =
        state.pool.keys.iter().zip(&key_states).all(|(k, s)| {
            *s != KeyState::Active || cooldowns.iter().any(|c| c.project == *k.project)
        });
    if all_cooling_or_disabled {
        errors.push("every key is disabled or cooling down".into());
    }
    let failures = state
        .upstream_failures
        .load(std::sync::atomic::Ordering::Relaxed);
    if failures >= 3 {
        warnings.push(format!(
            "{failures} upstream failures (5xx or unreachable) in a row"
        ));
    }
    if !reachable {
        warnings.push(
            match state.config.store_on_error {
                StoreFailurePolicy::Local => {
                    "quota store unreachable: counting in this replica only"
                }
                StoreFailurePolicy::FailOpen => {
                    "quota store unreachable: admitting without counting"
                }
                StoreFailurePolicy::FailClosed => "quota store unreachable: refusing requests",
            }
            .to_string(),
        );
    }
    state.metrics.key_gauges(cooling_n, disabled_n);

    json!({
        "success": true,
        "quota_status": {
            "healthy": errors.is_empty(),
            "warnings": warnings,
            "errors": errors,
            "usage": usage_json(&total, minute_limit, daily_limit, token_limit),
            "keys": keys_json,
            "store": {"backend": store.backend(), "reachable": reachable},
        },
        "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    })
}
