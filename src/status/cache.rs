//! `POST /api/ai/cache/clear` (admin): drop the response cache's entries, all or one model's.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Request, State};
use axum::http::Method;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use crate::error::ApiError;
use crate::state::AppState;

/// `POST /api/ai/cache/clear` (admin): drop every cached answer, or one model's
/// (`?model=NAME` or the body `{"model": "NAME"}`). Answers `cleared` (how many) and
/// `complete` (false when the Redis clear ran out of time and stopped: ask again).
pub async fn clear(State(state): State<Arc<AppState>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let run = async {
        if parts.method != Method::POST {
            return Err(ApiError::MethodNotAllowed(
                "use POST to clear the cache".into(),
            ));
        }
        super::admin_only(
            &state,
            &parts.headers,
            parts.uri.query(),
            "clearing the cache",
        )?;
        let body = crate::layers::estimate::read_body(
            body,
            super::ADMIN_BODY_LIMIT,
            state.config.server.body_read_timeout,
        )
        .await?;
        #[derive(Deserialize, Default)]
        #[serde(deny_unknown_fields)]
        struct ClearBody {
            #[serde(default)]
            model: Option<String>,
        }
        let asked: ClearBody = if body.iter().all(u8::is_ascii_whitespace) {
            ClearBody::default()
        } else {
            serde_json::from_slice(&body).map_err(|e| {
                ApiError::InvalidArgument(format!(
                    "expected no body or a JSON body {{\"model\"?: model}}: {e}"
                ))
            })?
        };
        let from_query = parts.uri.query().and_then(|q| {
            q.split('&')
                .find_map(|p| p.strip_prefix("model="))
                .map(str::to_string)
        });
        let model = asked
            .model
            .or(from_query)
            .map(|m| m.strip_prefix("models/").map(str::to_string).unwrap_or(m));
        if let Some(m) = &model
            && !crate::route::valid_name(m)
        {
            return Err(ApiError::InvalidArgument(format!(
                "model name {:?} is not valid",
                m.chars().take(80).collect::<String>()
            )));
        }
        let Some(cache) = &state.cache else {
            // Nothing to clear: the cache is off.
            return Ok(Json(json!({
                "success": true, "backend": "off", "model": model, "cleared": 0,
                "complete": true,
            }))
            .into_response());
        };
        let cleared = cache
            .store
            .clear(model.as_deref())
            .await
            .map_err(|e| ApiError::Unavailable(format!("clearing the cache failed: {e}")))?;
        tracing::warn!(
            model = model.as_deref().unwrap_or("*"),
            cleared = cleared.count,
            complete = cleared.complete,
            "admin cache clear"
        );
        Ok(Json(json!({
            "success": true,
            "backend": cache.store.backend(),
            "model": model,
            "cleared": cleared.count,
            "complete": cleared.complete,
        }))
        .into_response())
    };
    run.await.unwrap_or_else(IntoResponse::into_response)
}
