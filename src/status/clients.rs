//! `/api/ai/clients`: the operator's runtime clients (admin token only). `GET` lists every
//! client with its limits and usage; `POST` creates one and answers its key, once;
//! `PATCH /api/ai/clients/NAME` changes a runtime client's limits; `POST .../NAME/rotate`
//! gives it a new key, the old one valid for a grace; `DELETE .../NAME` revokes it. Kept by
//! [`crate::client_store`].

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use http::Method;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{ADMIN_BODY_LIMIT, admin_only};
use crate::client_store::StoreOpError;
use crate::clients::{ClientLimits, MAX_CLIENTS, Origin};
use crate::config::{check_client_name, is_reserved_name};
use crate::error::ApiError;
use crate::state::AppState;

/// A rotation's grace when the body names none.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(3600);
/// The longest grace a rotation may give the old key.
pub const MAX_GRACE: Duration = Duration::from_secs(7 * 24 * 3600);

/// `GET` (list) and `POST` (create) `/api/ai/clients`.
pub async fn collection(State(state): State<Arc<AppState>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let result = async {
        match parts.method {
            Method::GET => {
                admin_only(&state, &parts.headers, parts.uri.query(), "listing clients")?;
                list(&state).await
            }
            Method::POST => {
                admin_only(
                    &state,
                    &parts.headers,
                    parts.uri.query(),
                    "creating a client",
                )?;
                create(&state, read_json(&state, body).await?).await
            }
            _ => Err(ApiError::MethodNotAllowed(
                "use GET to list clients or POST to create one".into(),
            )),
        }
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

/// `GET`, `PATCH` and `DELETE` `/api/ai/clients/NAME`.
pub async fn one(
    State(state): State<Arc<AppState>>,
    name: Result<Path<String>, PathRejection>,
    req: Request,
) -> Response {
    let (parts, body) = req.into_parts();
    let result = async {
        let name = path_name(name)?;
        let what = match parts.method {
            Method::GET => "reading a client",
            Method::PATCH => "changing a client",
            Method::DELETE => "revoking a client",
            _ => {
                return Err(ApiError::MethodNotAllowed(
                    "use GET, PATCH (limits) or DELETE (revoke) on a client".into(),
                ));
            }
        };
        admin_only(&state, &parts.headers, parts.uri.query(), what)?;
        // A runtime client that a configured one of the same name shadows (the config gained
        // the name after it was made) can still be revoked: its record would come back to life
        // when the configured client is removed.
        let shadowed = parts.method == Method::DELETE
            && check_name(&name).is_ok()
            && state.client_store.holds(&name).await;
        let name = if shadowed {
            name
        } else {
            existing(&state, &name, parts.method != Method::GET)?
        };
        match parts.method {
            Method::GET => {
                let rows = super::client_rows::rows(&state, Some(&name), true).await;
                Ok(Json(json!({"client": rows.first()})).into_response())
            }
            Method::PATCH => update(&state, &name, read_json(&state, body).await?).await,
            _ => {
                state.client_store.delete(&name).await.map_err(op_error)?;
                tracing::warn!(client = %name, "admin revoked a runtime client");
                Ok(Json(json!({"success": true, "deleted": name})).into_response())
            }
        }
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RotateBody {
    #[serde(default)]
    grace_secs: Option<u64>,
}

/// `POST /api/ai/clients/NAME/rotate` `{"grace_secs": N}`.
pub async fn rotate(
    State(state): State<Arc<AppState>>,
    name: Result<Path<String>, PathRejection>,
    req: Request,
) -> Response {
    let (parts, body) = req.into_parts();
    let result = async {
        let name = path_name(name)?;
        if parts.method != Method::POST {
            return Err(ApiError::MethodNotAllowed(
                "use POST to rotate a client's key".into(),
            ));
        }
        admin_only(&state, &parts.headers, parts.uri.query(), "rotating a client's key")?;
        let name = existing(&state, &name, true)?;
        let body = read_body(&state, body).await?;
        let grace = if body.iter().all(u8::is_ascii_whitespace) {
            DEFAULT_GRACE
        } else {
            let b: RotateBody = serde_json::from_slice(&body).map_err(|e| {
                ApiError::InvalidArgument(format!(
                    "expected a JSON body {{\"grace_secs\"?: seconds the old key stays valid}}: {e}"
                ))
            })?;
            match b.grace_secs.map(Duration::from_secs) {
                None => DEFAULT_GRACE,
                Some(g) if g > MAX_GRACE => {
                    return Err(ApiError::InvalidArgument(format!(
                        "grace_secs must be 0 to {}",
                        MAX_GRACE.as_secs()
                    )));
                }
                Some(g) => g,
            }
        };
        let key = state
            .client_store
            .rotate(&name, grace)
            .await
            .map_err(op_error)?;
        tracing::warn!(client = %name, grace_secs = grace.as_secs(), "admin rotated a runtime client's key");
        Ok(secret_answer(
            StatusCode::OK,
            json!({"name": name, "key": key, "old_key_valid_for_secs": grace.as_secs(),
                "note": "the new key is shown this once: the proxy keeps only its SHA-256"}),
        ))
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

async fn list(state: &AppState) -> Result<Response, ApiError> {
    let rows = super::client_rows::rows(state, None, true).await;
    Ok(Json(json!({
        "success": true,
        "store": state.client_store.backend(),
        "max_clients": MAX_CLIENTS,
        "clients": rows,
    }))
    .into_response())
}

async fn create(state: &AppState, body: Map<String, Value>) -> Result<Response, ApiError> {
    let mut body = body;
    let name = match body.remove("name") {
        Some(Value::String(n)) => n,
        _ => {
            return Err(ApiError::InvalidArgument(
                "expected a JSON body {\"name\": \"team-a\", limits...}: name is missing or not a string".into(),
            ));
        }
    };
    check_name(&name)?;
    let limits = parse_limits(Value::Object(body))?;
    let table = state.clients.load();
    if table.by_name(&name).is_some() {
        return Err(ApiError::AlreadyExists(format!(
            "a client named {name:?} exists already"
        )));
    }
    let configured = table.iter().filter(|c| c.origin == Origin::Config).count();
    drop(table);
    let room = MAX_CLIENTS.saturating_sub(configured);
    let key = state
        .client_store
        .create(&name, limits.clone(), room)
        .await
        .map_err(op_error)?;
    tracing::warn!(client = %name, "admin created a runtime client");
    Ok(secret_answer(
        StatusCode::CREATED,
        json!({"name": name, "origin": Origin::Runtime, "limits": limits, "key": key,
            "note": "the key is shown this once: the proxy keeps only its SHA-256"}),
    ))
}

/// A merge patch of the limits: a field given replaces it, `null` removes it.
async fn update(
    state: &AppState,
    name: &str,
    patch: Map<String, Value>,
) -> Result<Response, ApiError> {
    let current = state
        .clients
        .load()
        .by_name(name)
        .map(|c| c.limits.clone())
        .unwrap_or_default();
    let mut merged = match serde_json::to_value(&current) {
        Ok(Value::Object(m)) => m,
        _ => Map::new(),
    };
    for (k, v) in patch {
        if v.is_null() {
            merged.remove(&k);
        } else {
            merged.insert(k, v);
        }
    }
    let limits = parse_limits(Value::Object(merged))?;
    state
        .client_store
        .update(name, limits.clone())
        .await
        .map_err(op_error)?;
    tracing::warn!(client = %name, "admin changed a runtime client's limits");
    Ok(Json(json!({"success": true, "name": name, "limits": limits})).into_response())
}

fn parse_limits(v: Value) -> Result<ClientLimits, ApiError> {
    let limits: ClientLimits = serde_json::from_value(v).map_err(|e| {
        ApiError::InvalidArgument(format!(
            "bad limits ({e}); the fields are rpm, tpm, rpd, max_concurrent, daily_budget_usd, \
             monthly_budget_usd, models, weight, max_wait_secs, timezone"
        ))
    })?;
    limits
        .validate("limits")
        .map_err(|e| ApiError::InvalidArgument(e.to_string()))?;
    Ok(limits)
}

fn check_name(name: &str) -> Result<(), ApiError> {
    let shown: String = name.chars().take(80).collect();
    check_client_name("name", name).map_err(|_| {
        ApiError::InvalidArgument(format!(
            "client name {shown:?} must be 1-64 characters of letters, digits, '-', '_' or '.'"
        ))
    })?;
    if is_reserved_name(name) {
        return Err(ApiError::InvalidArgument(format!(
            "client name {name:?} is reserved (admin, anonymous, -, other)"
        )));
    }
    Ok(())
}

/// The client named in the path: 404 if there is none; 409 if it is configured and `change`.
fn existing(state: &AppState, name: &str, change: bool) -> Result<String, ApiError> {
    check_name(name)?;
    match state.clients.load().by_name(name) {
        None => Err(ApiError::NotFound(format!("no client named {name:?}"))),
        Some(c) if change && c.origin == Origin::Config => Err(ApiError::Conflict(format!(
            "client {name:?} is defined in the configuration ([[auth.clients]], auth.client_keys \
             or PROXY_CLIENT_KEYS): edit the config and reload to change it"
        ))),
        Some(_) => Ok(name.to_string()),
    }
}

/// The name in the path; one that is not UTF-8 is a bad name, in Google's envelope.
fn path_name(p: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    p.map(|Path(n)| n).map_err(|_| {
        ApiError::InvalidArgument(
            "the client name in the path must be 1-64 letters, digits, '-', '_' or '.'".into(),
        )
    })
}

fn op_error(e: StoreOpError) -> ApiError {
    match e {
        StoreOpError::NotConfigured => ApiError::FailedPrecondition(
            "runtime clients need a place to be kept: set auth.clients_file (PROXY_CLIENTS_FILE) \
             or use the Redis store (store.redis_url)"
                .into(),
        ),
        StoreOpError::Exists => {
            ApiError::AlreadyExists("a client of that name exists already".into())
        }
        StoreOpError::NotFound => ApiError::NotFound("no runtime client of that name".into()),
        StoreOpError::Full(n) => ApiError::FailedPrecondition(format!(
            "no room for another runtime client ({n} at most, {MAX_CLIENTS} clients in all): revoke one first"
        )),
        StoreOpError::Unavailable(m) => {
            tracing::warn!(error = %m, "a runtime client change failed");
            ApiError::Unavailable(format!("the change was not made: {m}"))
        }
    }
}

async fn read_body(state: &AppState, body: axum::body::Body) -> Result<bytes::Bytes, ApiError> {
    crate::layers::estimate::read_body(
        body,
        ADMIN_BODY_LIMIT,
        state.config.server.body_read_timeout,
    )
    .await
}

async fn read_json(
    state: &AppState,
    body: axum::body::Body,
) -> Result<Map<String, Value>, ApiError> {
    let body = read_body(state, body).await?;
    match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(ApiError::InvalidArgument("expected a JSON object".into())),
        Err(e) => Err(ApiError::InvalidArgument(format!("not JSON: {e}"))),
    }
}

/// An answer holding a key: never cached.
fn secret_answer(status: StatusCode, body: Value) -> Response {
    let mut r = (status, Json(body)).into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}
