//! Key affinity and ownership: a file, upload session, cached content, batch, tuned model or
//! file search store exists only in the project whose key created it, and belongs to the
//! client that created it through the proxy. Learn `resource -> (key id, client name)` from
//! create answers and upload URLs, look it up for later requests (another client gets Google's
//! "no permission or does not exist" answer, never the owner's key), filter listings to the
//! caller's own resources, and keep the resumable-upload sessions this proxy handed out (their
//! chunks may come without a key).

use axum::http::{HeaderMap, HeaderValue, Method};

use crate::auth::Caller;
use crate::error::ApiError;
use crate::quota::QuotaStore;
use crate::route::{Route, valid_name};

/// How long an affinity (resource -> key) is remembered: Google keeps files 48 h.
const AFFINITY_TTL_MS: u64 = 7 * 86_400_000;
/// How long an unfinished resumable upload session accepts keyless chunks: Google's session
/// URLs last about a week.
const UPLOAD_SESSION_TTL_MS: u64 = 7 * 86_400_000;

/// What the proxy remembers of a resource it saw created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pin {
    /// The key id whose project holds it.
    pub kid: String,
    /// The client that created it (its name, never its key); `None` for a pin stored before
    /// owners were recorded.
    pub client: Option<String>,
    /// A file's size in bytes, from Google's answer to its upload (a batch input file's
    /// enqueued tokens are estimated from it).
    pub size: Option<u64>,
}

impl Pin {
    /// As stored: `KID CLIENT` (neither holds a space), and ` SIZE` for a file.
    fn encode(kid: &str, client: &str) -> String {
        format!("{kid} {client}")
    }

    fn decode(value: &str) -> Pin {
        let mut parts = value.splitn(3, ' ');
        Pin {
            kid: parts.next().unwrap_or_default().to_string(),
            client: parts.next().map(str::to_string),
            size: parts.next().and_then(|s| s.parse().ok()),
        }
    }

    /// Whether `caller` (named `name`) may use the resource: the admin token and its owner
    /// may; so may a chunk of an upload session sent without a key (the session URL is the
    /// capability, as at Google). A resource pinned before owners were recorded is anyone's.
    pub fn allows(&self, resource: &str, caller: &Caller, name: &str) -> bool {
        match caller {
            Caller::Admin => true,
            Caller::Anonymous if resource.starts_with("uploads/") => true,
            _ => self.client.as_deref().is_none_or(|owner| owner == name),
        }
    }
}

/// A pin as stored, for a binding made outside this module (an ephemeral token's).
pub fn encode_pin(kid: &str, client: &str) -> String {
    Pin::encode(kid, client)
}

/// The pin of `resource`, if known (a store failure reads as unknown).
pub async fn pin(store: &dyn QuotaStore, resource: &str) -> Option<Pin> {
    match store.affinity(resource).await {
        Ok(value) => value.as_deref().map(Pin::decode),
        Err(e) => {
            tracing::warn!(error = %e, "affinity lookup failed: using any key");
            None
        }
    }
}

/// The client a created resource belongs to: the caller, or for a keyless chunk of an upload
/// session (which finishes the upload and names the file), the client that started it.
pub async fn creator(store: &dyn QuotaStore, route: &Route, caller: &Caller, name: &str) -> String {
    if *caller == Caller::Anonymous
        && let Some(session) = route
            .resource
            .as_deref()
            .filter(|r| r.starts_with("uploads/"))
        && let Some(owner) = pin(store, session).await.and_then(|p| p.client)
    {
        return owner;
    }
    name.to_string()
}

/// Google's own answer for a resource the caller's project does not hold: 403 "You do not
/// have permission to access the File NAME or it may not exist.", so another client learns
/// nothing it would not learn from Google.
pub fn not_yours(resource: &str) -> ApiError {
    let (collection, id) = resource.split_once('/').unwrap_or(("", resource));
    let kind = match collection {
        "files" => "File",
        "cachedContents" => "CachedContent",
        "batches" => "Batch",
        "tunedModels" => "TunedModel",
        "fileSearchStores" => "FileSearchStore",
        "operations" => "Operation",
        _ => "upload session",
    };
    ApiError::PermissionDenied(format!(
        "You do not have permission to access the {kind} {id} or it may not exist."
    ))
}

/// A listing (`GET /v1beta/files`, `cachedContents`, `batches`, ...) as `caller` may see it:
/// only the entries pinned to it. Entries created outside the proxy, or by another client, are
/// left out (the page may come out shorter than asked; `nextPageToken` is kept). `None`: the
/// answer is not a JSON object, passed on as it is.
pub async fn own_listing(
    store: &dyn QuotaStore,
    collection: &str,
    body: &[u8],
    caller: &Caller,
    name: &str,
) -> Option<Vec<u8>> {
    let mut v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let object = v.as_object_mut()?;
    for entries in object.values_mut().filter_map(|e| e.as_array_mut()) {
        // Each entry's resource (`None`: not a resource of the collection, a field Google may
        // add: kept), their pins looked up together rather than one round trip after another.
        let resources: Vec<Option<String>> = entries
            .iter()
            .map(|entry| {
                entry
                    .get("name")
                    .and_then(|n| n.as_str())
                    .and_then(|n| owned_resource(n).filter(|r| r.starts_with(collection)))
            })
            .collect();
        let pins = futures_util::future::join_all(resources.iter().map(|r| async move {
            match r {
                Some(resource) => pin(store, resource).await,
                None => None,
            }
        }))
        .await;
        let mut kept = Vec::with_capacity(entries.len());
        for ((entry, resource), pin) in entries.drain(..).zip(resources).zip(pins) {
            let mine = match resource {
                None => true,
                Some(resource) => {
                    pin.is_some_and(|p| p.client.is_some() && p.allows(&resource, caller, name))
                }
            };
            if mine {
                kept.push(entry);
            }
        }
        *entries = kept;
    }
    serde_json::to_vec(&v).ok()
}

/// `files/abc` (or `files/abc/anything`) as the pinned resource `files/abc`.
fn owned_resource(name: &str) -> Option<String> {
    let (collection, rest) = name.split_once('/')?;
    let id = rest.split('/').next().unwrap_or("");
    (crate::route::OWNED_COLLECTIONS.contains(&collection) && valid_name(id))
        .then(|| format!("{collection}/{id}"))
}

/// The base URL a client reached this proxy at (`public_url`, else scheme and `Host` of the
/// request), with the path prefix it came in under.
pub fn client_base(
    public_url: Option<&str>,
    headers: &HeaderMap,
    original_path: Option<&str>,
    path: &str,
) -> String {
    let base = match public_url {
        Some(b) => b.to_string(),
        None => {
            let host = headers
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or("localhost");
            let proto = headers
                .get("x-forwarded-proto")
                .and_then(|h| h.to_str().ok())
                .filter(|p| *p == "https" || *p == "http")
                .unwrap_or("http");
            format!("{proto}://{host}")
        }
    };
    // A request that came in under the path prefix gets an upload URL under it too.
    let prefix = original_path
        .and_then(|o| o.strip_suffix(path))
        .unwrap_or("");
    format!("{base}{prefix}")
}

/// The upstream's resumable-upload URL points at Google: point it at `client_base` instead,
/// and remember which key started the session and its exact path.
pub async fn remember_upload(
    store: &dyn QuotaStore,
    response: &mut HeaderMap,
    client_base: &str,
    kid: &str,
    client: &str,
) {
    let Some(url) = response
        .get("x-goog-upload-url")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
    else {
        return;
    };
    let Ok(uri) = url.parse::<http::Uri>() else {
        return;
    };
    // Only the session's own parameters go to the client: a `key` (or `$key`) the upstream
    // put in the URL would be the pooled key.
    let query: Vec<&str> = uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty() && !crate::auth::is_query_credential(p))
        .collect();
    let path_and_query = if query.is_empty() {
        uri.path().to_string()
    } else {
        format!("{}?{}", uri.path(), query.join("&"))
    };
    if let Ok(v) = HeaderValue::from_str(&format!("{client_base}{path_and_query}")) {
        response.insert("x-goog-upload-url", v);
    }
    if let Some(id) = uri
        .query()
        .and_then(|q| q.split('&').find_map(|p| p.strip_prefix("upload_id=")))
        && valid_name(id)
    {
        let remembered = match store
            .set_affinity(
                &format!("uploads/{id}"),
                &Pin::encode(kid, client),
                AFFINITY_TTL_MS,
            )
            .await
        {
            Ok(()) => {
                store
                    .set_affinity(&upload_session(id), uri.path(), UPLOAD_SESSION_TTL_MS)
                    .await
            }
            Err(e) => Err(e),
        };
        if let Err(e) = remembered {
            tracing::warn!(error = %e, "could not remember the key of an upload session");
        }
    }
}

/// An upload answered `final` or `cancelled` ends its session: later keyless chunks for it
/// are refused.
pub async fn end_upload_session(store: &dyn QuotaStore, route: &Route, response: &HeaderMap) {
    let ended = response
        .get("x-goog-upload-status")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|s| s == "final" || s == "cancelled");
    let Some(id) = route
        .resource
        .as_deref()
        .and_then(|r| r.strip_prefix("uploads/"))
    else {
        return;
    };
    if ended
        // Overwritten with an entry that has already expired: the session is gone for every
        // replica sharing the store.
        && let Err(e) = store.set_affinity(&upload_session(id), "", 0).await
    {
        tracing::warn!(error = %e, "could not end an upload session");
    }
}

/// A chunk of a resumable upload sent without a key: allowed only to the exact session path
/// this proxy handed out, with the methods of Google's resumable protocol, while the session
/// is open (it ends at `final` / `cancelled`, or after a week).
pub async fn keyless_upload_chunk(
    store: &dyn QuotaStore,
    method: &Method,
    headers: &HeaderMap,
    path: &str,
    route: &Route,
) -> bool {
    let Some(id) = route
        .resource
        .as_deref()
        .and_then(|r| r.strip_prefix("uploads/"))
    else {
        return false;
    };
    if !route.upload || method != Method::POST || !headers.contains_key("x-goog-upload-command") {
        return false;
    }
    matches!(
        store.affinity(&upload_session(id)).await,
        Ok(Some(p)) if p == path
    )
}

/// Where an open upload session's path is kept.
fn upload_session(id: &str) -> String {
    format!("upload-session/{id}")
}

/// A create call's answer names what it created (`"name": "files/abc"`): pin it to the key
/// and the client.
pub async fn remember_created(store: &dyn QuotaStore, body: &[u8], kid: &str, client: &str) {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
        return;
    };
    for candidate in [
        Some(&v),
        v.get("file"),
        v.get("metadata"),
        v.get("response"),
    ]
    .into_iter()
    .flatten()
    {
        let Some(name) = candidate.get("name").and_then(|n| n.as_str()) else {
            continue;
        };
        let mut pin = Pin::encode(kid, client);
        // A file's size (Google's `sizeBytes`, a string), for a batch reading it as input.
        if let Some(size) = candidate.get("sizeBytes").and_then(|s| {
            s.as_str()
                .and_then(|s| s.parse::<u64>().ok())
                .or(s.as_u64())
        }) {
            pin = format!("{pin} {size}");
        }
        // A long-running operation (a Veo video) is polled at models/M/operations/ID.
        if let ["models", _, "operations", id] = name.split('/').collect::<Vec<_>>()[..]
            && valid_name(id)
        {
            let resource = format!("operations/{id}");
            if let Err(e) = store.set_affinity(&resource, &pin, AFFINITY_TTL_MS).await {
                tracing::warn!(error = %e, "could not remember the key of a created resource");
            }
            continue;
        }
        if let Some(resource) = owned_resource(name)
            && let Err(e) = store.set_affinity(&resource, &pin, AFFINITY_TTL_MS).await
        {
            tracing::warn!(error = %e, "could not remember the key of a created resource");
        }
    }
}
