//! Who may call: client keys for the Gemini surface and the status page, the admin token for
//! admin actions. Every comparison is constant-time.

use std::sync::Arc;

use axum::http::HeaderMap;

use crate::clients::{Client, Registry, Table};
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

/// The caller of a request, as the authenticate step found it (a request extension; on the
/// response it is the caller of the request's `layers::Outcome`).
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

/// Like [`authenticate`], with a credential that matched before found in `known` without
/// hashing it again (SHA-256 of the key was the step's largest cost); a credential that matches
/// now is remembered there.
pub fn authenticate_known(
    cfg: &AuthConfig,
    clients: &Registry,
    known: &KnownKeys,
    headers: &HeaderMap,
    query: Option<&str>,
) -> Result<Caller, ApiError> {
    let presented = client_credential(headers, query).filter(|c| !c.is_empty());
    let table = clients.load();
    let Some(presented) = presented else {
        return check_presented(cfg, &table, None, cfg.allow_anonymous);
    };
    if let Some(caller) = known.get(presented, &table) {
        return Ok(caller);
    }
    let caller = check_presented(cfg, &table, Some(presented), cfg.allow_anonymous)?;
    // Only a credential that matched the admin token or a client: what is remembered is bounded
    // by the configuration, never by what clients send.
    if matches!(caller, Caller::Admin | Caller::Client(_)) {
        known.insert(presented, &table, &caller);
    }
    Ok(caller)
}

/// Bytes of the longest credential [`KnownKeys`] remembers (longer ones are hashed each time).
const KNOWN_KEY_BYTES: usize = 64;
/// Slots of [`KnownKeys`]: a credential's slot is a keyed hash of it; a collision replaces.
const KNOWN_SLOTS: usize = 64;

/// Credentials that matched the admin token or a client, remembered with their caller so the
/// next request presenting one skips its SHA-256. A fixed number of slots, filled only by
/// credentials that matched: it never grows with what clients send. A slot is found by a
/// randomly keyed hash of the credential (its timing tells nothing about a key) and compared
/// in constant time, all [`KNOWN_KEY_BYTES`] of it whatever its length. The remembered callers
/// belong to one client table: when the table is swapped (a reload, a runtime client added or
/// revoked) nothing remembered is used until a credential matches the new one.
pub struct KnownKeys {
    /// Seeded per process (foldhash: cheaper than SipHash per request; a slot is all it picks).
    hasher: foldhash::fast::RandomState,
    slots: parking_lot::RwLock<Known>,
}

struct Known {
    /// The client table the callers were found in.
    table: Option<Arc<Table>>,
    slots: Vec<Option<KnownKey>>,
}

struct KnownKey {
    key: [u8; KNOWN_KEY_BYTES],
    len: usize,
    caller: Caller,
}

impl Default for KnownKeys {
    fn default() -> Self {
        KnownKeys {
            hasher: foldhash::fast::RandomState::default(),
            slots: parking_lot::RwLock::new(Known {
                table: None,
                slots: (0..KNOWN_SLOTS).map(|_| None).collect(),
            }),
        }
    }
}

impl std::fmt::Debug for KnownKeys {
    /// Never the credentials.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KnownKeys(***)")
    }
}

/// `presented` padded with zeros to [`KNOWN_KEY_BYTES`] (`None`: longer).
fn padded(presented: &str) -> Option<[u8; KNOWN_KEY_BYTES]> {
    let b = presented.as_bytes();
    let mut out = [0u8; KNOWN_KEY_BYTES];
    out.get_mut(..b.len())?.copy_from_slice(b);
    Some(out)
}

/// Equality of two padded credentials and their lengths, in time independent of their
/// contents (`subtle`: every byte compared, no early exit).
fn same_key(
    a: &[u8; KNOWN_KEY_BYTES],
    a_len: usize,
    b: &[u8; KNOWN_KEY_BYTES],
    b_len: usize,
) -> bool {
    use subtle::ConstantTimeEq;
    bool::from(a[..].ct_eq(&b[..]) & a_len.ct_eq(&b_len))
}

impl KnownKeys {
    fn slot(&self, presented: &str) -> usize {
        use std::hash::BuildHasher;
        (self.hasher.hash_one(presented.as_bytes()) % KNOWN_SLOTS as u64) as usize
    }

    /// The caller `presented` matched in `table`, if it is remembered.
    fn get(&self, presented: &str, table: &Arc<Table>) -> Option<Caller> {
        let key = padded(presented)?;
        let slot = self.slot(presented);
        let known = self.slots.read();
        if !known.table.as_ref().is_some_and(|t| Arc::ptr_eq(t, table)) {
            return None;
        }
        let entry = known.slots[slot].as_ref()?;
        same_key(&entry.key, entry.len, &key, presented.len()).then(|| entry.caller.clone())
    }

    /// Remember that `presented` matched `caller` in `table` (a new table forgets the old one's).
    fn insert(&self, presented: &str, table: &Arc<Table>, caller: &Caller) {
        let Some(key) = padded(presented) else {
            return;
        };
        let slot = self.slot(presented);
        let mut known = self.slots.write();
        if !known.table.as_ref().is_some_and(|t| Arc::ptr_eq(t, table)) {
            known.table = Some(table.clone());
            known.slots.iter_mut().for_each(|s| *s = None);
        }
        known.slots[slot] = Some(KnownKey {
            key,
            len: presented.len(),
            caller: caller.clone(),
        });
    }
}

fn check(
    cfg: &AuthConfig,
    clients: &Registry,
    headers: &HeaderMap,
    query: Option<&str>,
    allow_anonymous: bool,
) -> Result<Caller, ApiError> {
    let presented = client_credential(headers, query).filter(|c| !c.is_empty());
    check_presented(cfg, &clients.load(), presented, allow_anonymous)
}

/// `table`: the client table loaded once by the caller (the one a remembered caller belongs to).
fn check_presented(
    cfg: &AuthConfig,
    table: &Table,
    presented: Option<&str>,
    allow_anonymous: bool,
) -> Result<Caller, ApiError> {
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
    // By a name made once: a `&str` name is parsed again at each look-up.
    const GOOG_API_KEY: http::HeaderName = http::HeaderName::from_static("x-goog-api-key");
    if let Some(v) = headers.get(GOOG_API_KEY).and_then(|v| v.to_str().ok()) {
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
