//! Ephemeral tokens for the Live API: `POST /{v1alpha|v1beta}/auth_tokens` with a client key is
//! sent to Google with the pooled key that has the most session headroom, and the token Google
//! returns is remembered (as a digest) with that key and the creating client. A Live
//! connection to `BidiGenerateContentConstrained` that presents such a token (`?access_token=`,
//! `Authorization: Token`, or in `x-goog-api-key` as google-genai sends it) needs no client key:
//! it is served on the token's key and counted for the client that created the token. A token
//! used directly against Google bypasses the proxy: Google checks it, not the proxy.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use sha2::{Digest, Sha256};

use crate::error::ApiError;
use crate::state::AppState;

/// The paths a token is created at (after the path prefix, if any).
const PATHS: [&str; 2] = ["/v1alpha/auth_tokens", "/v1beta/auth_tokens"];

/// Largest create body taken from a client (a setup to lock in, a few KiB) or from Google.
const MAX_BODY: usize = 1 << 20;

/// Google's defaults and bounds for a token's life: 30 min unless `expireTime` says otherwise,
/// at most 20 h. The binding lives as long as the token (plus a minute for clock skew).
const DEFAULT_LIFE: Duration = Duration::from_secs(30 * 60);
const MAX_LIFE: Duration = Duration::from_secs(20 * 3600);
const SKEW: Duration = Duration::from_secs(60);

/// The token-creation path `path` names, if it is one (after `prefix`, if given).
pub fn tokens_path<'a>(path: &'a str, prefix: Option<&str>) -> Option<&'a str> {
    let known = |p: &'a str| PATHS.contains(&p).then_some(p);
    prefix
        .and_then(|pre| path.strip_prefix(pre))
        .and_then(known)
        .or_else(|| known(path))
}

/// The store's name for a token's binding: a digest, never the token (it is a credential).
pub(super) fn token_resource(token: &str) -> String {
    let d = Sha256::digest(token.as_bytes());
    format!("live-token/{}", hex::encode(&d[..16]))
}

/// The ephemeral token a Live connection presents: `?access_token=` (Google's documented way),
/// `Authorization: Token T`, or an `x-goog-api-key` holding `auth_tokens/...` (google-genai
/// sends the token in both headers).
pub(super) fn presented(headers: &http::HeaderMap, query: Option<&str>) -> Option<String> {
    let from_query = query.and_then(|q| {
        q.split('&').find_map(|p| {
            let v = p.strip_prefix("access_token=")?;
            percent_encoding::percent_decode_str(v)
                .decode_utf8()
                .ok()
                .map(|s| s.into_owned())
        })
    });
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    from_query
        .or_else(|| {
            header("authorization")
                .and_then(|v| v.strip_prefix("Token "))
                .map(|t| t.trim().to_string())
        })
        .or_else(|| {
            header("x-goog-api-key")
                .filter(|k| k.starts_with("auth_tokens/"))
                .map(str::to_string)
        })
        .filter(|t| !t.is_empty() && t.len() <= 1024)
}

/// A token this proxy created: the pool position of its key and the creating client's name.
#[derive(Debug, Clone)]
pub(super) struct Bound {
    pub key: usize,
    pub client: String,
}

/// The binding of `token`, if this proxy created it and its key is still in the pool.
pub(super) async fn lookup(state: &AppState, token: &str) -> Option<Bound> {
    let pin = crate::pool::affinity::pin(state.store.as_ref(), &token_resource(token)).await?;
    let (key, _) = state.pool.by_kid(&pin.kid)?;
    Some(Bound {
        key,
        client: pin.client.unwrap_or_else(|| "anonymous".into()),
    })
}

/// How long the token asked for in `body` lives (`expireTime`, RFC 3339), within Google's
/// bounds; Google's default when it names none.
fn life(body: &[u8]) -> Duration {
    let asked = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("expireTime")?.as_str().map(str::to_string))
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(&t).ok())
        .map(|t| (t.with_timezone(&chrono::Utc) - chrono::Utc::now()).to_std());
    match asked {
        Some(Ok(d)) => d.min(MAX_LIFE),
        // In the past: Google refuses it; nothing worth keeping.
        Some(Err(_)) => Duration::ZERO,
        None => DEFAULT_LIFE,
    }
}

/// Answer `POST .../auth_tokens`: create the token at Google with the key with the most session
/// headroom, remember it, and hand Google's answer back unchanged.
pub async fn create(
    state: Arc<AppState>,
    sessions: Arc<super::LiveSessions>,
    req: http::Request<Body>,
    path: &str,
) -> Response {
    if req.method() != http::Method::POST {
        return ApiError::MethodNotAllowed(format!("{path} takes POST")).into_response();
    }
    let caller = match crate::auth::authenticate(
        &state.config.auth,
        &state.clients,
        req.headers(),
        req.uri().query(),
    ) {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return ApiError::PayloadTooLarge(format!(
                "A token request over {MAX_BODY} bytes, or one that did not arrive whole"
            ))
            .into_response();
        }
    };
    let Some(&(i, _)) = super::setup::order(&state, &sessions, None).await.first() else {
        return ApiError::Unavailable("No usable key in the pool for an ephemeral token".into())
            .into_response();
    };
    let key = &state.pool.keys[i];
    let up = &state.config.upstream.url;
    let url = format!("{}://{}{}{path}", up.scheme, up.authority, up.path);
    let request = http::Request::post(url)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header("x-goog-api-key", key.headers.goog.clone())
        .body(Full::new(body.clone()));
    let Ok(request) = request else {
        return ApiError::Internal("the token request did not form".into()).into_response();
    };
    let within = state.config.upstream.request_timeout;
    let answer = async {
        let resp = state
            .upstream
            .clone()
            .request(request)
            .await
            .map_err(|e| e.detail)?;
        let (parts, body) = resp.into_parts();
        let bytes = Limited::new(body, MAX_BODY)
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok::<_, String>((parts.status, bytes))
    };
    let (status, answer) = match tokio::time::timeout(within, answer).await {
        Ok(Ok(a)) => a,
        Ok(Err(e)) => {
            tracing::warn!(key = %key.masked, error = %e, "live: the token request failed");
            return ApiError::BadGateway(format!("The Gemini API did not answer: {e}"))
                .into_response();
        }
        Err(_) => {
            return ApiError::GatewayTimeout("The Gemini API did not answer in time".into())
                .into_response();
        }
    };
    if status.is_success() {
        remember(&state, &answer, &key.kid, caller.name(), life(&body)).await;
    }
    let mut resp = (status, Body::from(answer)).into_response();
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json; charset=UTF-8"),
    );
    resp
}

/// Bind the token Google's `answer` names (`{"name": "auth_tokens/..."}`) to `kid` and `client`.
async fn remember(state: &AppState, answer: &Bytes, kid: &str, client: &str, life: Duration) {
    let name = serde_json::from_slice::<serde_json::Value>(answer)
        .ok()
        .and_then(|v| v.get("name")?.as_str().map(str::to_string));
    let Some(name) = name.filter(|n| !n.is_empty()) else {
        tracing::warn!("live: Google's token answer names no token: it is not bound to its key");
        return;
    };
    let pin = crate::pool::affinity::encode_pin(kid, client);
    let ttl = (life + SKEW).as_millis() as u64;
    if let Err(e) = state
        .store
        .set_affinity(&token_resource(&name), &pin, ttl)
        .await
    {
        tracing::warn!(error = %e, "live: an ephemeral token was not bound to its key");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_stored_as_a_digest() {
        let r = token_resource("auth_tokens/secret-token");
        assert!(r.starts_with("live-token/"));
        assert!(!r.contains("secret"));
    }

    #[test]
    fn a_token_is_found_in_the_query_or_either_header() {
        let mut h = http::HeaderMap::new();
        assert_eq!(
            presented(&h, Some("x=1&access_token=auth_tokens%2Fabc")).as_deref(),
            Some("auth_tokens/abc")
        );
        assert_eq!(presented(&h, None), None);
        h.insert("x-goog-api-key", "a-client-key".parse().unwrap());
        assert_eq!(presented(&h, None), None);
        h.insert("x-goog-api-key", "auth_tokens/k".parse().unwrap());
        assert_eq!(presented(&h, None).as_deref(), Some("auth_tokens/k"));
        h.insert("authorization", "Token auth_tokens/t".parse().unwrap());
        assert_eq!(presented(&h, None).as_deref(), Some("auth_tokens/t"));
    }

    #[test]
    fn a_tokens_life_is_its_expire_time_within_googles_bounds() {
        assert_eq!(life(b"{}"), DEFAULT_LIFE);
        let soon = (chrono::Utc::now() + chrono::Duration::minutes(10)).to_rfc3339();
        let d = life(format!(r#"{{"expireTime":"{soon}"}}"#).as_bytes());
        assert!(d > Duration::from_secs(500) && d <= Duration::from_secs(600));
        let far = (chrono::Utc::now() + chrono::Duration::days(9)).to_rfc3339();
        assert_eq!(
            life(format!(r#"{{"expireTime":"{far}"}}"#).as_bytes()),
            MAX_LIFE
        );
    }

    #[test]
    fn only_the_token_paths_are_taken() {
        assert_eq!(
            tokens_path("/v1alpha/auth_tokens", None),
            Some("/v1alpha/auth_tokens")
        );
        assert_eq!(
            tokens_path("/gemini/v1alpha/auth_tokens", Some("/gemini")),
            Some("/v1alpha/auth_tokens")
        );
        assert_eq!(tokens_path("/v1alpha/auth_tokens/x", None), None);
    }
}
