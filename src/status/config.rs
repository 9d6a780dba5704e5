//! `POST /api/ai/config/reload` (admin): read the configuration again and serve it from now on
//! (see [`crate::reload`]); a file that does not load is answered 400 naming the setting, and
//! the running configuration stays.

use axum::Json;
use axum::extract::{Request, State};
use axum::http::Method;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;
use crate::reload::{Live, Origin};

/// `POST /api/ai/config/reload`: `{"applied", "generation", "loaded_at", "source",
/// "restart_required", "changed"}` (setting names only, never values).
pub async fn reload(State(live): State<Live>, req: Request) -> Response {
    let (parts, _) = req.into_parts();
    let state = live.current();
    let run = async {
        if parts.method != Method::POST {
            return Err(ApiError::MethodNotAllowed(
                "use POST to reload the configuration".into(),
            ));
        }
        super::admin_only(
            &state,
            &parts.headers,
            parts.uri.query(),
            "reloading the configuration",
        )?;
        let reloading = live.clone();
        let outcome = tokio::task::spawn_blocking(move || reloading.reload(Origin::Api))
            .await
            .map_err(|_| ApiError::Internal("the reload stopped unexpectedly".into()))?;
        // Both refusals (a file that does not load, nothing to read again) are the caller's.
        outcome
            .map(|r| Json(r).into_response())
            .map_err(|e| ApiError::InvalidArgument(e.to_string()))
    };
    run.await.unwrap_or_else(IntoResponse::into_response)
}
