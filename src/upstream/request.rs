//! Building the request to Google (client credentials out, the pooled key in) and the answer's
//! headers back: where requests go, parsed once.

use std::borrow::Cow;

use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Uri};
use bytes::Bytes;
use http_body_util::Full;

use crate::config::BaseUrl;
use crate::secret::Secret;

/// Headers that belong to one connection, never forwarded (RFC 9110 section 7.6.1), plus those
/// the proxy sets itself.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
];

/// Client credentials: removed before the pooled key is added.
const CREDENTIAL_HEADERS: &[&str] = &["x-goog-api-key", "authorization"];

/// The query without `key` / `$key` (client credentials).
pub fn strip_credentials_from_query(query: &str) -> Cow<'_, str> {
    if !query.split('&').any(crate::auth::is_query_credential) {
        return Cow::Borrowed(query);
    }
    Cow::Owned(
        query
            .split('&')
            .filter(|p| !crate::auth::is_query_credential(p))
            .collect::<Vec<_>>()
            .join("&"),
    )
}

/// Where requests go: the upstream base URL, parsed once at load (parsing a URL per request,
/// host name processing included, showed in profiles).
#[derive(Debug, Clone)]
pub struct Upstream {
    base: BaseUrl,
}

impl Upstream {
    pub fn new(base: &BaseUrl) -> Upstream {
        Upstream { base: base.clone() }
    }

    /// The upstream URL for a client's path and query (credentials removed from the query).
    /// The path comes from a request line hyper already validated; `None` if it still will
    /// not form a URI.
    pub fn url(&self, path: &str, query: Option<&str>) -> Option<Uri> {
        self.url_from(path, query, None)
    }

    /// [`Upstream::url`], reusing `original` (the client's path and query as they came) when
    /// the URL's path and query are the same text: the common case under a root base URL,
    /// where a new one was written and checked byte by byte again.
    pub fn url_from(
        &self,
        path: &str,
        query: Option<&str>,
        original: Option<&http::uri::PathAndQuery>,
    ) -> Option<Uri> {
        if let Some(pq) = original
            && self.base.path.is_empty()
            && pq.path() == path
            && pq.query() == query
            && query.is_none_or(|q| {
                !q.is_empty() && !q.split('&').any(crate::auth::is_query_credential)
            })
        {
            let mut parts = http::uri::Parts::default();
            parts.scheme = Some(self.base.scheme.clone());
            parts.authority = Some(self.base.authority.clone());
            parts.path_and_query = Some(pq.clone());
            return Uri::from_parts(parts).ok();
        }
        let query = query
            .map(strip_credentials_from_query)
            .filter(|q| !q.is_empty());
        let mut pq = String::with_capacity(
            self.base.path.len() + path.len() + query.as_ref().map_or(0, |q| q.len() + 1),
        );
        pq.push_str(&self.base.path);
        pq.push_str(path);
        if let Some(q) = query {
            pq.push('?');
            pq.push_str(&q);
        }
        Uri::builder()
            .scheme(self.base.scheme.clone())
            .authority(self.base.authority.clone())
            .path_and_query(pq)
            .build()
            .ok()
    }
}

/// The pooled key as the header it travels in, built once per key, marked sensitive (never
/// printed by `http`'s Debug, never indexed by HPACK).
#[derive(Debug, Clone)]
pub struct KeyHeaders {
    pub goog: HeaderValue,
    pub bearer: HeaderValue,
}

impl KeyHeaders {
    pub fn new(key: &Secret) -> Option<KeyHeaders> {
        let mut goog = HeaderValue::from_str(key.expose()).ok()?;
        goog.set_sensitive(true);
        let mut bearer = HeaderValue::from_str(&format!("Bearer {}", key.expose())).ok()?;
        bearer.set_sensitive(true);
        Some(KeyHeaders { goog, bearer })
    }
}

/// The client's bound on its wait for quota (read by the proxy, never sent to Google).
pub const MAX_WAIT_HEADER: &str = "x-gemini-max-wait";

/// How long a request (or a Live setup) may wait: `configured` (`queue.max_wait_secs`), cut
/// to the client's own `max_wait_secs` when set, and shortened (never lengthened) by the
/// request's `x-gemini-max-wait`. `Err`: the header's value is not a number of seconds.
pub fn allowance(
    configured: std::time::Duration,
    client_max_secs: Option<f64>,
    headers: &HeaderMap,
) -> Result<std::time::Duration, String> {
    let mut max = configured;
    if let Some(secs) = client_max_secs {
        // Validated finite and non-negative when the client was defined.
        max = max.min(std::time::Duration::try_from_secs_f64(secs).unwrap_or(max));
    }
    match max_wait(headers) {
        None => Ok(max),
        Some(Ok(asked)) => Ok(max.min(asked)),
        Some(Err(message)) => Err(message),
    }
}

/// The client's `x-gemini-max-wait`, if sent: a number of seconds (0 or more), or the message
/// a malformed value is answered with.
pub fn max_wait(headers: &HeaderMap) -> Option<Result<std::time::Duration, String>> {
    // By a name made once: a `&str` name is parsed again at each look-up.
    const NAME: HeaderName = HeaderName::from_static(MAX_WAIT_HEADER);
    let v = headers.get(NAME)?;
    let secs = v
        .to_str()
        .ok()
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0);
    Some(match secs {
        Some(s) => Ok(std::time::Duration::from_secs_f64(s.min(1.0e7))),
        None => Err(format!(
            "The header {MAX_WAIT_HEADER} must be a number of seconds (0 or more), got {:?}.",
            String::from_utf8_lossy(v.as_bytes())
        )),
    })
}

/// What a request to Google is made of, before the pooled credential is added.
pub struct Outgoing<'a> {
    pub method: &'a Method,
    pub path: &'a str,
    pub query: Option<&'a str>,
    /// The client's headers (hop-by-hop and credentials are not passed on).
    pub headers: &'a HeaderMap,
    pub body: Bytes,
    /// The key goes as `Authorization: Bearer` (the OpenAI surface), else `x-goog-api-key`.
    pub bearer: bool,
}

/// Build the request to Google: same method, path and query (credentials removed), headers
/// minus hop-by-hop and credentials, plus the pooled key as `outgoing.bearer` says.
pub fn build_request(
    upstream: &Upstream,
    outgoing: Outgoing<'_>,
    key: &KeyHeaders,
) -> Option<Request<Full<Bytes>>> {
    build_request_from(upstream, outgoing, key, None)
}

/// [`build_request`] for a client's request whose path and query came as `original` (reused
/// for the URL when it is the same text, see [`Upstream::url_from`]).
pub fn build_request_from(
    upstream: &Upstream,
    outgoing: Outgoing<'_>,
    key: &KeyHeaders,
    original: Option<&http::uri::PathAndQuery>,
) -> Option<Request<Full<Bytes>>> {
    let Outgoing {
        method,
        path,
        query,
        headers,
        body,
        bearer,
    } = outgoing;
    let mut out = HeaderMap::with_capacity(headers.len() + 1);
    // Trace export on: the proxy writes the trace context of its own attempt (and the client's
    // `tracestate` only with it), so the client's is not copied first.
    let own_trace = crate::telemetry::otel::installed().is_some();
    for (name, value) in headers {
        let n = name.as_str();
        if HOP_BY_HOP.contains(&n)
            || CREDENTIAL_HEADERS.contains(&n)
            || n == "accept-encoding"
            || n == MAX_WAIT_HEADER
            || n == crate::fallback::REQUEST_HEADER
            || (own_trace && crate::telemetry::TRACE_CONTEXT_HEADERS.contains(&n))
        {
            continue;
        }
        out.append(name.clone(), value.clone());
    }
    if bearer {
        out.insert(http::header::AUTHORIZATION, key.bearer.clone());
    } else {
        out.insert(HeaderName::from_static("x-goog-api-key"), key.goog.clone());
    }
    let mut req = Request::new(Full::new(body));
    *req.method_mut() = method.clone();
    *req.uri_mut() = upstream.url_from(path, query, original)?;
    *req.headers_mut() = out;
    Some(req)
}

/// A hop-by-hop header of an answer, not passed back (content-length is kept: bytes pass
/// as-is).
fn hop_by_hop(name: &HeaderName) -> bool {
    let n = name.as_str();
    n != "content-length" && HOP_BY_HOP.contains(&n)
}

/// The upstream answer's own headers made the ones passed back, in place: hop-by-hop ones
/// removed, the rest kept without a copy. An answer usually has none to remove, which one look
/// at its names tells.
pub fn strip_response_headers(headers: &mut HeaderMap) {
    while let Some(name) = headers.keys().find(|n| hop_by_hop(n)).cloned() {
        headers.remove(&name);
    }
}

/// Response headers to pass back: all but hop-by-hop.
pub fn response_headers(upstream: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::with_capacity(upstream.len());
    for (name, value) in upstream {
        if hop_by_hop(name) {
            continue;
        }
        out.append(name.clone(), value.clone());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_urls_keep_path_and_query_and_drop_credentials() {
        let u = Upstream::new(
            &BaseUrl::parse("t", "https://generativelanguage.googleapis.com").unwrap(),
        );
        assert_eq!(
            u.url(
                "/v1beta/models/m:streamGenerateContent",
                Some("alt=sse&key=secret")
            )
            .unwrap()
            .to_string(),
            "https://generativelanguage.googleapis.com/v1beta/models/m:streamGenerateContent?alt=sse"
        );
        let u = Upstream::new(&BaseUrl::parse("t", "http://gw.local:8080/gemini/").unwrap());
        assert_eq!(
            u.url("/v1beta/files/a%2Fb", None).unwrap().to_string(),
            "http://gw.local:8080/gemini/v1beta/files/a%2Fb"
        );
    }

    #[test]
    fn a_client_path_and_query_reused_for_the_url_is_the_url_written_anew() {
        let root = Upstream::new(&BaseUrl::parse("t", "http://127.0.0.1:8080").unwrap());
        let under = Upstream::new(&BaseUrl::parse("t", "http://gw.local:8080/gemini/").unwrap());
        for pq in [
            "/v1beta/models/m:generateContent",
            "/v1beta/models/m:streamGenerateContent?alt=sse",
            "/v1beta/models/m:streamGenerateContent?alt=sse&key=secret",
            "/v1beta/models/m:generateContent?key=secret",
            "/v1beta/models/m:generateContent?%24key=secret&a=b",
            "/v1beta/models/m:generateContent?",
            "/v1beta/files/a%2Fb?pageSize=2",
        ] {
            let original: http::uri::PathAndQuery = pq.parse().unwrap();
            for up in [&root, &under] {
                let (path, query) = (original.path(), original.query());
                let reused = up.url_from(path, query, Some(&original)).unwrap();
                assert_eq!(reused, up.url(path, query).unwrap(), "{pq}");
                assert!(!reused.to_string().contains("secret"), "{pq}");
                // Another path (a fallback model's) is written anew.
                let other = up
                    .url_from("/v1beta/models/n:generateContent", query, Some(&original))
                    .unwrap();
                assert!(other.path().ends_with("/models/n:generateContent"), "{pq}");
            }
        }
    }

    #[test]
    fn response_headers_stripped_in_place_are_those_a_copy_keeps() {
        let mut h = HeaderMap::new();
        for (n, v) in [
            ("content-type", "application/json"),
            ("content-length", "12"),
            ("transfer-encoding", "chunked"),
            ("connection", "keep-alive"),
            ("keep-alive", "timeout=5"),
            ("x-goog-thing", "a"),
            ("x-goog-thing", "b"),
            ("date", "now"),
        ] {
            h.append(HeaderName::from_static(n), HeaderValue::from_static(v));
        }
        let copy = response_headers(&h);
        strip_response_headers(&mut h);
        assert_eq!(h, copy);
        assert_eq!(h.len(), 5);
        assert!(h.get("transfer-encoding").is_none() && h.get("connection").is_none());
        assert_eq!(h.get_all("x-goog-thing").iter().count(), 2);
    }

    #[test]
    fn credentials_are_found_and_stripped_from_queries() {
        assert_eq!(strip_credentials_from_query("alt=sse&key=abc"), "alt=sse");
        assert_eq!(strip_credentials_from_query("$key=abc&x=1"), "x=1");
    }
}
