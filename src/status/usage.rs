//! `GET /api/ai/usage/`: the ledger's history over a window, grouped (see
//! [`crate::ledger::query`]). The admin token reads every client's usage; a client key only
//! its own client's rows and totals.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use http::Method;

use crate::auth::{Caller, QUERY_CREDENTIALS, authenticate_strict};
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
    let caller = authenticate_strict(&state.config.auth, &state.clients, &req.headers, query)
        .map_err(|e| match e {
            ApiError::PermissionDenied(m) => ApiError::Unauthenticated(m),
            other => other,
        })?;
    let mut q = Query::parse(query, &QUERY_CREDENTIALS).map_err(ApiError::InvalidArgument)?;
    // A client key reads its own client's rows and totals only, whatever the grouping; the
    // admin token reads everyone's.
    if caller != Caller::Admin {
        q.client = Some(caller.name().to_string().into());
    }
    let report = state.ledger.report(q).await.map_err(|e| {
        tracing::warn!(error = %e, "usage history could not be read");
        ApiError::Unavailable(
            "The usage history is in the shared store, which did not answer; retry shortly.".into(),
        )
    })?;
    Ok(Json(report).into_response())
}
