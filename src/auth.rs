//! Who may call: client keys for the Gemini surface and the status page, the admin token for
//! admin actions. Every comparison is constant-time.

use axum::http::HeaderMap;

use crate::config::Config;
use crate::error::ApiError;
use crate::secret::{matches_any, presented_digest};
use crate::upstream::client_credential;

/// Who presented what.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    Admin,
    Client,
    /// No credential, allowed because `auth.allow_anonymous` is set.
    Anonymous,
}

/// Check the credential a request presents. Missing: 401; unknown: 403.
pub fn authenticate(
    cfg: &Config,
    headers: &HeaderMap,
    query: Option<&str>,
) -> Result<Caller, ApiError> {
    check(cfg, headers, query, cfg.allow_anonymous)
}

/// Like [`authenticate`], but a credential is always required, even where anonymous Gemini
/// calls are allowed (the status page and admin calls).
pub fn authenticate_strict(
    cfg: &Config,
    headers: &HeaderMap,
    query: Option<&str>,
) -> Result<Caller, ApiError> {
    check(cfg, headers, query, false)
}

fn check(
    cfg: &Config,
    headers: &HeaderMap,
    query: Option<&str>,
    allow_anonymous: bool,
) -> Result<Caller, ApiError> {
    let presented = client_credential(headers, query).filter(|c| !c.is_empty());
    match presented {
        None if allow_anonymous => Ok(Caller::Anonymous),
        None => Err(ApiError::Unauthenticated(
            "Missing client credential: send it as the x-goog-api-key header, the key query \
             parameter, or Authorization: Bearer"
                .into(),
        )),
        Some(c) => {
            let digest = presented_digest(c);
            let admin = cfg.admin_token.as_ref().is_some_and(|t| t.matches(&digest));
            let client = matches_any(&cfg.client_keys, &digest);
            if admin {
                Ok(Caller::Admin)
            } else if client {
                Ok(Caller::Client)
            } else if allow_anonymous && cfg.client_keys.is_empty() {
                Ok(Caller::Anonymous)
            } else {
                Err(ApiError::PermissionDenied(
                    "The client credential is not valid for this proxy".into(),
                ))
            }
        }
    }
}
