//! Who may call: client keys for the Gemini surface and the status page, the admin token for
//! admin actions. Every comparison is constant-time.

use axum::http::HeaderMap;

use crate::config::AuthConfig;
use crate::error::ApiError;
use crate::secret::{position, presented_digest};

/// Query parameters that carry a client credential (`$key` also percent-encoded).
pub const QUERY_CREDENTIALS: [&str; 3] = ["key", "$key", "%24key"];

/// Whether a query parameter (`name=value`) carries a client credential.
pub fn is_query_credential(param: &str) -> bool {
    let name = param.split_once('=').map_or(param, |(n, _)| n);
    QUERY_CREDENTIALS.contains(&name)
}

/// Who presented what.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    Admin,
    /// The client key at this position in `auth.client_keys`.
    Client(usize),
    /// No credential, allowed because `auth.allow_anonymous` is set.
    Anonymous,
}

impl Caller {
    /// The name a caller is counted and logged under: never the credential. A client key's
    /// name is the configured one (`[[auth.clients]]`, `name:key`), else `client1..N` by its
    /// position among the configured clients.
    pub fn name(self, auth: &AuthConfig) -> &str {
        match self {
            Caller::Admin => "admin",
            Caller::Client(i) => auth.client_name(i),
            Caller::Anonymous => "anonymous",
        }
    }

    /// A small dense index per caller (anonymous 1, admin 2, client i at 3 + i; 0 is kept for
    /// "no caller"), for tables bounded by the configured clients.
    pub fn slot(self) -> usize {
        match self {
            Caller::Anonymous => 1,
            Caller::Admin => 2,
            Caller::Client(i) => 3 + i,
        }
    }
}

/// The caller of a request, as the authenticate step found it (a request extension, and on
/// the response for the log line and the request counter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallerTag(pub Caller);

/// Check the credential a request presents. Missing: 401; unknown: 403.
pub fn authenticate(
    cfg: &AuthConfig,
    headers: &HeaderMap,
    query: Option<&str>,
) -> Result<Caller, ApiError> {
    check(cfg, headers, query, cfg.allow_anonymous)
}

/// Like [`authenticate`], but a credential is always required, even where anonymous Gemini
/// calls are allowed (the status page and admin calls).
pub fn authenticate_strict(
    cfg: &AuthConfig,
    headers: &HeaderMap,
    query: Option<&str>,
) -> Result<Caller, ApiError> {
    check(cfg, headers, query, false)
}

fn check(
    cfg: &AuthConfig,
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
            let client = position(&cfg.client_keys, &digest);
            if admin {
                Ok(Caller::Admin)
            } else if let Some(i) = client {
                Ok(Caller::Client(i))
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

/// The credential a client presented: `x-goog-api-key`, `?key=` / `?$key=`, or Bearer.
pub fn client_credential<'a>(headers: &'a HeaderMap, query: Option<&'a str>) -> Option<&'a str> {
    if let Some(v) = headers.get("x-goog-api-key").and_then(|v| v.to_str().ok()) {
        return Some(v.trim());
    }
    if let Some(v) = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
    {
        return Some(v.trim());
    }
    query?.split('&').find_map(|p| {
        let (name, value) = p.split_once('=')?;
        QUERY_CREDENTIALS.contains(&name).then_some(value)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_credential_is_found_in_the_header_bearer_or_query() {
        let mut h = HeaderMap::new();
        assert_eq!(client_credential(&h, Some("alt=sse&key=abc")), Some("abc"));
        assert_eq!(client_credential(&h, Some("%24key=abc")), Some("abc"));
        h.insert("authorization", "Bearer tok".parse().unwrap());
        assert_eq!(client_credential(&h, Some("key=abc")), Some("tok"));
        h.insert("x-goog-api-key", "goog".parse().unwrap());
        assert_eq!(client_credential(&h, None), Some("goog"));
    }
}
