//! Who may call: client keys for the Gemini surface and the status page, the admin token for
//! admin actions. Every comparison is constant-time.

use std::sync::Arc;

use axum::http::HeaderMap;

use crate::clients::{Client, Registry};
use crate::config::AuthConfig;
use crate::error::ApiError;
use crate::secret::presented_digest;

/// Query parameters that carry a client credential (`$key` also percent-encoded).
pub const QUERY_CREDENTIALS: [&str; 3] = ["key", "$key", "%24key"];

/// Whether a query parameter (`name=value`) carries a client credential.
pub fn is_query_credential(param: &str) -> bool {
    let name = param.split_once('=').map_or(param, |(n, _)| n);
    QUERY_CREDENTIALS.contains(&name)
}

/// Who presented what.
#[derive(Debug, Clone)]
pub enum Caller {
    Admin,
    /// A client of the [`Registry`], with its limits as they were when the request arrived.
    Client(Arc<Client>),
    /// No credential, allowed because `auth.allow_anonymous` is set.
    Anonymous,
}

impl PartialEq for Caller {
    fn eq(&self, other: &Caller) -> bool {
        match (self, other) {
            (Caller::Admin, Caller::Admin) | (Caller::Anonymous, Caller::Anonymous) => true,
            (Caller::Client(a), Caller::Client(b)) => a.name == b.name,
            _ => false,
        }
    }
}

impl Eq for Caller {}

impl Caller {
    /// The name a caller is counted and logged under: never the credential. A client key's
    /// name is the configured one (`[[auth.clients]]`, `name:key`, the runtime API), else
    /// `client1..N` by its position among the configured clients.
    pub fn name(&self) -> &str {
        match self {
            Caller::Admin => "admin",
            Caller::Client(c) => &c.name,
            Caller::Anonymous => "anonymous",
        }
    }

    /// A small dense index per caller (anonymous 1, admin 2, clients 3 and up, stable per
    /// name; 0 is kept for "no caller"), for tables bounded by the configured clients.
    pub fn slot(&self) -> usize {
        match self {
            Caller::Anonymous => 1,
            Caller::Admin => 2,
            Caller::Client(c) => c.slot,
        }
    }

    /// The client, when a client key called.
    pub fn client(&self) -> Option<&Arc<Client>> {
        match self {
            Caller::Client(c) => Some(c),
            _ => None,
        }
    }
}

/// The usage ledger's client id of `caller` (by its configured name; never its credential).
pub fn ledger_client(ledger: &crate::ledger::Ledger, caller: Option<&Caller>) -> u32 {
    match caller {
        Some(Caller::Client(c)) => *c.ledger_id.get_or_init(|| ledger.client_id_named(&c.name)),
        Some(Caller::Admin) => ledger.client_id_named("admin"),
        Some(Caller::Anonymous) | None => ledger.anonymous_id(),
    }
}

/// The caller of a request, as the authenticate step found it (a request extension, and on
/// the response for the log line and the request counter).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallerTag(pub Caller);

/// Check the credential a request presents. Missing: 401; unknown: 403.
pub fn authenticate(
    cfg: &AuthConfig,
    clients: &Registry,
    headers: &HeaderMap,
    query: Option<&str>,
) -> Result<Caller, ApiError> {
    check(cfg, clients, headers, query, cfg.allow_anonymous)
}

/// Like [`authenticate`], but a credential is always required, even where anonymous Gemini
/// calls are allowed (the status page and admin calls).
pub fn authenticate_strict(
    cfg: &AuthConfig,
    clients: &Registry,
    headers: &HeaderMap,
    query: Option<&str>,
) -> Result<Caller, ApiError> {
    check(cfg, clients, headers, query, false)
}

fn check(
    cfg: &AuthConfig,
    clients: &Registry,
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
            // A lookup by the SHA-256 of what was presented: its timing tells nothing about a
            // key (finding a preimage of a digest is the hard part, not guessing one).
            let table = clients.load();
            if admin {
                Ok(Caller::Admin)
            } else if let Some(client) = table.by_digest(&digest) {
                Ok(Caller::Client(client.clone()))
            } else if allow_anonymous && table.is_empty() {
                Ok(Caller::Anonymous)
            } else {
                Err(ApiError::PermissionDenied(
                    "The client credential is not valid for this proxy".into(),
                ))
            }
        }
    }
}

/// The token of an `Authorization: Bearer TOKEN` header.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
}

/// The credential a client presented: `x-goog-api-key`, `?key=` / `?$key=`, or Bearer.
pub fn client_credential<'a>(headers: &'a HeaderMap, query: Option<&'a str>) -> Option<&'a str> {
    if let Some(v) = headers.get("x-goog-api-key").and_then(|v| v.to_str().ok()) {
        return Some(v.trim());
    }
    if let Some(v) = bearer(headers) {
        return Some(v);
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
