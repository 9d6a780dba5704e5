//! Key affinity: a file, upload session, cached content, batch, tuned model or file search
//! store exists only in the project whose key created it. Learn `resource -> key id` from
//! create answers and upload URLs, look it up for later requests, and keep the resumable-upload
//! sessions this proxy handed out (their chunks may come without a key).

use axum::http::{HeaderMap, HeaderValue, Method};

use crate::quota::QuotaStore;
use crate::route::{Route, valid_name};

/// How long an affinity (resource -> key) is remembered: Google keeps files 48 h.
const AFFINITY_TTL_MS: u64 = 7 * 86_400_000;
/// How long an unfinished resumable upload session accepts keyless chunks: Google's session
/// URLs last about a week.
const UPLOAD_SESSION_TTL_MS: u64 = 7 * 86_400_000;
/// Collections whose members belong to the creating project.
const OWNED: [&str; 5] = [
    "files",
    "cachedContents",
    "batches",
    "tunedModels",
    "fileSearchStores",
];

/// The key id that created `resource`, if known (a store failure reads as unknown).
pub async fn owner(store: &dyn QuotaStore, resource: &str) -> Option<String> {
    match store.affinity(resource).await {
        Ok(kid) => kid,
        Err(e) => {
            tracing::warn!(error = %e, "affinity lookup failed: using any key");
            None
        }
    }
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
    let path_and_query = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    if let Ok(v) = HeaderValue::from_str(&format!("{client_base}{path_and_query}")) {
        response.insert("x-goog-upload-url", v);
    }
    if let Some(id) = uri
        .query()
        .and_then(|q| q.split('&').find_map(|p| p.strip_prefix("upload_id=")))
        && valid_name(id)
    {
        let remembered = match store
            .set_affinity(&format!("uploads/{id}"), kid, AFFINITY_TTL_MS)
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

/// A create call's answer names what it created (`"name": "files/abc"`): pin it to the key.
pub async fn remember_created(store: &dyn QuotaStore, body: &[u8], kid: &str) {
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
        // A long-running operation (a Veo video) is polled at models/M/operations/ID.
        if let ["models", _, "operations", id] = name.split('/').collect::<Vec<_>>()[..]
            && valid_name(id)
        {
            let resource = format!("operations/{id}");
            if let Err(e) = store.set_affinity(&resource, kid, AFFINITY_TTL_MS).await {
                tracing::warn!(error = %e, "could not remember the key of a created resource");
            }
            continue;
        }
        let Some((collection, rest)) = name.split_once('/') else {
            continue;
        };
        let id = rest.split('/').next().unwrap_or("");
        if OWNED.contains(&collection) && valid_name(id) {
            let resource = format!("{collection}/{id}");
            if let Err(e) = store.set_affinity(&resource, kid, AFFINITY_TTL_MS).await {
                tracing::warn!(error = %e, "could not remember the key of a created resource");
            }
        }
    }
}
