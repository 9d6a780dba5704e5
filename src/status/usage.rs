//! `GET /api/ai/usage/`: the ledger's history over a window, grouped (see
//! [`crate::ledger::query`]). A client key or the admin token may read it.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use http::Method;

use crate::auth::{QUERY_CREDENTIALS, authenticate_strict};
use crate::error::ApiError;
use crate::ledger::query::Query;
use crate::state::AppState;

pub async fn usage(State(state): State<Arc<AppState>>, req: Request) -> Response {
    let (parts, _) = req.into_parts();
    answer(&state, &parts)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn answer(state: &AppState, req: &http::request::Parts) -> Result<Response, ApiError> {
    if req.method != Method::GET {
        return Err(ApiError::MethodNotAllowed(
            "use GET to read the usage history".into(),
        ));
    }
    let query = req.uri.query();
    authenticate_strict(&state.config.auth, &req.headers, query).map_err(|e| match e {
        ApiError::PermissionDenied(m) => ApiError::Unauthenticated(m),
        other => other,
    })?;
    let q = Query::parse(query, &QUERY_CREDENTIALS).map_err(ApiError::InvalidArgument)?;
    let report = state.ledger.report(q).await.map_err(|e| {
        tracing::warn!(error = %e, "usage history could not be read");
        ApiError::Unavailable(
            "The usage history is in the shared store, which did not answer; retry shortly.".into(),
        )
    })?;
    Ok(Json(report).into_response())
}
