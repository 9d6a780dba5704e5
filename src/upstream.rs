//! The upstream HTTP client (hyper over rustls, pooled), building the upstream request (client
//! credentials out, pooled key in), and reading Google's error answers (QuotaFailure /
//! RetryInfo / ErrorInfo) into a verdict.

use std::borrow::Cow;
use std::time::Duration;

use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Uri};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use serde_json::Value;

use crate::config::Config;
use crate::error::LimitKind;
use crate::quota::{DayInfo, MINUTE_MS};
use crate::route::Route;
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

mod h2pool;

/// The client to the upstream. Over https with `upstream.http2` (the default): HTTP/2 over as
/// many connections as the peer's stream cap requires ([`h2pool`]); else, and when the upstream
/// does not choose h2 by ALPN, HTTP/1.1 over hyper-util's pool (one connection per request in
/// flight, kept for reuse).
pub struct HttpClient {
    http1: Client<Timed<HttpsConnector<HttpConnector>>, Full<Bytes>>,
    h2: Option<h2pool::H2Pool>,
}

impl HttpClient {
    /// Send `req`; the answer's body streams (nothing is buffered here).
    pub async fn request(
        &self,
        req: Request<Full<Bytes>>,
    ) -> Result<http::Response<ResponseBody>, BoxError> {
        let req = match &self.h2 {
            Some(pool) if !pool.refused() => match pool.request(req).await {
                Ok(resp) => return Ok(resp),
                Err(h2pool::H2Error::Failed(e)) => return Err(e),
                Err(h2pool::H2Error::NotH2(req)) => *req,
            },
            _ => req,
        };
        let resp = self.http1.request(req).await?;
        Ok(resp.map(|body| ResponseBody::new(body, None)))
    }
}

/// An upstream answer's body: hyper's, plus (HTTP/2) the stream slot it holds until it ends or
/// is dropped.
pub struct ResponseBody {
    inner: Incoming,
    slot: Option<h2pool::Slot>,
}

impl ResponseBody {
    fn new(inner: Incoming, slot: Option<h2pool::Slot>) -> Self {
        ResponseBody { inner, slot }
    }
}

impl hyper::body::Body for ResponseBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, hyper::Error>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        let ended = match &polled {
            std::task::Poll::Ready(None | Some(Err(_))) => true,
            std::task::Poll::Ready(Some(Ok(_))) => self.inner.is_end_stream(),
            std::task::Poll::Pending => false,
        };
        if ended {
            self.slot = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// A connector bounded as a whole, TCP and TLS handshake together (the TCP connector's own
/// timeout stops at the socket, and a handshake that stalls would otherwise hold a request
/// until its overall timeout).
#[derive(Clone)]
pub struct Timed<C> {
    inner: C,
    timeout: Duration,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl<C> tower_service::Service<Uri> for Timed<C>
where
    C: tower_service::Service<Uri>,
    C::Future: Send + 'static,
    C::Error: Into<BoxError>,
{
    type Response = C::Response;
    type Error = BoxError;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<C::Response, BoxError>> + Send>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connecting = self.inner.call(uri);
        let timeout = self.timeout;
        Box::pin(async move {
            match tokio::time::timeout(timeout, connecting).await {
                Ok(done) => done.map_err(Into::into),
                Err(_) => Err(Box::new(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "no connection (TCP and TLS) within {}s",
                        timeout.as_secs_f64()
                    ),
                )) as BoxError),
            }
        })
    }
}

/// hyper's client straight, not a higher-level one: per request it does no URL parsing, no
/// redirect policy and no extra service layers (they were a third of the proxy's CPU time).
/// The upstream is named in the config, so no HTTP(S)_PROXY detour either.
pub fn build_client(cfg: &Config) -> HttpClient {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.set_connect_timeout(Some(cfg.connect_timeout));
    // A long generation leaves the connection silent for minutes: keepalive probes keep NAT
    // and firewall state alive and find dead peers.
    http.set_keepalive(Some(Duration::from_secs(15)));
    http.set_keepalive_interval(Some(Duration::from_secs(15)));
    http.set_keepalive_retries(Some(3));
    http.enforce_http(false);
    let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("the ring provider supports the default TLS versions")
    .with_root_certificates(trust_roots(&cfg.upstream_ca))
    .with_no_client_auth();
    // HTTP/1.1 only here (ALPN offers only http/1.1): hyper-util's pool would put every
    // request on one HTTP/2 connection and queue them past the peer's stream cap.
    let http1_connector = Timed {
        inner: hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls.clone())
            .https_or_http()
            .enable_http1()
            .wrap_connector(http.clone()),
        timeout: cfg.connect_timeout,
    };
    let http1 = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(256)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .build(http1_connector);
    let origin = cfg
        .upstream_url
        .parse::<Uri>()
        .ok()
        .filter(|u| u.scheme_str() == Some("https"));
    let h2 = origin.filter(|_| cfg.upstream_http2).map(|origin| {
        // Offers h2 and http/1.1: an upstream that picks http/1.1 sends the pool to HTTP/1.1.
        let connector = Timed {
            inner: hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(tls)
                .https_only()
                .enable_all_versions()
                .wrap_connector(http),
            timeout: cfg.connect_timeout,
        };
        h2pool::H2Pool::new(connector, origin, cfg.connect_timeout)
    });
    HttpClient { http1, h2 }
}

/// Mozilla's roots (built in, so a bare container works) plus the system's store (so a
/// corporate TLS-inspecting gateway's CA, installed the usual way, is trusted too) plus
/// `upstream.ca_file` (checked at config load, so none is refused here).
fn trust_roots(extra: &[rustls::pki_types::CertificateDer<'static>]) -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let native = rustls_native_certs::load_native_certs();
    let (added, unparsable) = roots.add_parsable_certificates(native.certs);
    let (from_file, _) = roots.add_parsable_certificates(extra.iter().cloned());
    tracing::debug!(
        system_roots = added,
        unparsable,
        errors = native.errors.len(),
        ca_file_roots = from_file,
        "TLS trust roots loaded"
    );
    roots
}

fn is_credential_param(param: &str) -> bool {
    let name = param.split('=').next().unwrap_or("");
    name == "key" || name == "$key" || name == "%24key"
}

/// The query without `key` / `$key` (client credentials).
pub fn strip_credentials_from_query(query: &str) -> Cow<'_, str> {
    if !query.split('&').any(is_credential_param) {
        return Cow::Borrowed(query);
    }
    Cow::Owned(
        query
            .split('&')
            .filter(|p| !is_credential_param(p))
            .collect::<Vec<_>>()
            .join("&"),
    )
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
        (name == "key" || name == "$key" || name == "%24key").then_some(value)
    })
}

/// Where requests go: the upstream base URL, parsed once (parsing a URL per request, host
/// name processing included, showed in profiles).
#[derive(Debug, Clone)]
pub struct Upstream {
    scheme: http::uri::Scheme,
    authority: http::uri::Authority,
    base_path: String,
}

impl Upstream {
    pub fn new(base: &str) -> Result<Upstream, String> {
        let uri: Uri = base
            .parse()
            .map_err(|e: http::uri::InvalidUri| e.to_string())?;
        let (Some(scheme), Some(authority)) = (uri.scheme(), uri.authority()) else {
            return Err(format!("{base:?} is not an absolute http(s) URL"));
        };
        Ok(Upstream {
            scheme: scheme.clone(),
            authority: authority.clone(),
            base_path: uri.path().trim_end_matches('/').to_string(),
        })
    }

    /// The upstream URL for a client's path and query (credentials removed from the query).
    /// The path comes from a request line hyper already validated; `None` if it still will
    /// not form a URI.
    pub fn url(&self, path: &str, query: Option<&str>) -> Option<Uri> {
        let query = query
            .map(strip_credentials_from_query)
            .filter(|q| !q.is_empty());
        let mut pq = String::with_capacity(
            self.base_path.len() + path.len() + query.as_ref().map_or(0, |q| q.len() + 1),
        );
        pq.push_str(&self.base_path);
        pq.push_str(path);
        if let Some(q) = query {
            pq.push('?');
            pq.push_str(&q);
        }
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
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

/// Build the request to Google: same method, path and query (credentials removed), headers
/// minus hop-by-hop and credentials, plus the pooled key.
#[allow(clippy::too_many_arguments)]
pub fn build_request(
    upstream: &Upstream,
    method: &Method,
    path: &str,
    query: Option<&str>,
    headers: &HeaderMap,
    body: Bytes,
    route: &Route,
    key: &KeyHeaders,
) -> Option<Request<Full<Bytes>>> {
    let mut out = HeaderMap::with_capacity(headers.len() + 1);
    for (name, value) in headers {
        let n = name.as_str();
        if HOP_BY_HOP.contains(&n) || CREDENTIAL_HEADERS.contains(&n) || n == "accept-encoding" {
            continue;
        }
        out.append(name.clone(), value.clone());
    }
    if route.openai {
        out.insert(http::header::AUTHORIZATION, key.bearer.clone());
    } else {
        out.insert(HeaderName::from_static("x-goog-api-key"), key.goog.clone());
    }
    let mut req = Request::new(Full::new(body));
    *req.method_mut() = method.clone();
    *req.uri_mut() = upstream.url(path, query)?;
    *req.headers_mut() = out;
    Some(req)
}

/// An error and its causes, outermost first.
fn causes<'a>(
    e: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(e), |c| c.source())
}

/// Whether an upstream client error comes from a timeout (connecting included).
pub fn is_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    causes(e).any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
    })
}

/// An upstream client error with its causes ("client error (Connect): tcp connect error:
/// Connection refused"): the chain holds no URL and no header.
pub fn describe_error(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    for cause in causes(e).skip(1) {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
    }
    out
}

/// Response headers to pass back: all but hop-by-hop (content-length is kept: bytes pass as-is).
pub fn response_headers(upstream: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::with_capacity(upstream.len());
    for (name, value) in upstream {
        let n = name.as_str();
        if n != "content-length" && HOP_BY_HOP.contains(&n) {
            continue;
        }
        out.append(name.clone(), value.clone());
    }
    out
}

/// What an upstream answer means for the key that got it.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Pass it to the client.
    Deliver,
    /// A 429 naming the quota that ran out: hold the (project, model) for `cooldown_ms`.
    QuotaExhausted {
        cooldown_ms: u64,
        kinds: Vec<LimitKind>,
        /// Limits Google reported (`quotaValue`), by kind.
        reported: Vec<(LimitKind, u64)>,
    },
    /// A 429 without details (or an IP-level throttle).
    RateLimited { retry_delay_ms: Option<u64> },
    /// The key is dead: invalid, leaked or blocked.
    DeadKey { reason: String },
    /// 5xx: try again, preferably on another key.
    Transient,
}

/// `"26s"`, `"0s"`, `"38.962214405s"` → milliseconds.
pub fn parse_duration_ms(s: &str) -> Option<u64> {
    let secs: f64 = s.trim().strip_suffix('s')?.parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| (secs * 1000.0).ceil() as u64)
}

/// Read an error answer from Google. `body` may be a plain envelope or a JSON-array stream's
/// `[{"error": ...}]`.
pub fn classify(status: u16, body: &[u8], day: &DayInfo, now_ms: i64) -> Verdict {
    if status < 400 {
        return Verdict::Deliver;
    }
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let err = parsed.as_ref().and_then(|v| match v {
        Value::Array(a) => a.first().and_then(|e| e.get("error")),
        other => other.get("error"),
    });
    let message = err
        .and_then(|e| e.get("message"))
        .and_then(Value::as_str)
        .unwrap_or("");
    let details: &[Value] = err
        .and_then(|e| e.get("details"))
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    let reasons: Vec<&str> = details
        .iter()
        .filter(|d| type_is(d, "ErrorInfo"))
        .filter_map(|d| d.get("reason").and_then(Value::as_str))
        .collect();

    match status {
        429 => {
            let retry_delay_ms = details
                .iter()
                .filter(|d| type_is(d, "RetryInfo"))
                .find_map(|d| d.get("retryDelay").and_then(Value::as_str))
                .and_then(parse_duration_ms);
            let mut kinds = Vec::new();
            let mut reported = Vec::new();
            for d in details.iter().filter(|d| type_is(d, "QuotaFailure")) {
                for v in d
                    .get("violations")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let id = v.get("quotaId").and_then(Value::as_str).unwrap_or("");
                    let metric = v.get("quotaMetric").and_then(Value::as_str).unwrap_or("");
                    let kind = if id.contains("PerDay") || metric.contains("per_day") {
                        LimitKind::RequestsPerDay
                    } else if id.contains("InputTokens") || metric.contains("input_token") {
                        LimitKind::TokensPerMinute
                    } else if id.contains("PerMinute") || metric.contains("requests") {
                        LimitKind::RequestsPerMinute
                    } else {
                        continue;
                    };
                    kinds.push(kind);
                    let value = v.get("quotaValue").and_then(|q| match q {
                        Value::String(s) => s.parse::<u64>().ok(),
                        Value::Number(n) => n.as_u64(),
                        _ => None,
                    });
                    if let Some(value) = value {
                        reported.push((kind, value));
                    }
                }
            }
            if kinds.is_empty() {
                return Verdict::RateLimited { retry_delay_ms };
            }
            // A per-day violation holds until midnight whatever retryDelay says; several: the
            // longest wins.
            let cooldown_ms = kinds
                .iter()
                .map(|k| match k {
                    LimitKind::RequestsPerDay => (day.next_midnight_ms - now_ms).max(1) as u64,
                    _ => retry_delay_ms.unwrap_or(MINUTE_MS as u64).max(1),
                })
                .max()
                .unwrap_or(MINUTE_MS as u64);
            Verdict::QuotaExhausted {
                cooldown_ms,
                kinds,
                reported,
            }
        }
        400 if reasons.contains(&"API_KEY_INVALID") || message.contains("API key not valid") => {
            Verdict::DeadKey {
                reason: "API_KEY_INVALID: API key not valid".into(),
            }
        }
        401 if reasons.iter().any(|r| r.starts_with("API_KEY")) => Verdict::DeadKey {
            reason: format!("{}: key rejected", reasons[0]),
        },
        403 if reasons.contains(&"API_KEY_SERVICE_BLOCKED") => Verdict::DeadKey {
            reason: "API_KEY_SERVICE_BLOCKED".into(),
        },
        403 if message.to_ascii_lowercase().contains("leaked") => Verdict::DeadKey {
            reason: "PERMISSION_DENIED: key reported as leaked".into(),
        },
        500 | 502 | 503 | 504 => Verdict::Transient,
        _ => Verdict::Deliver,
    }
}

fn type_is(detail: &Value, name: &str) -> bool {
    detail
        .get("@type")
        .and_then(Value::as_str)
        .is_some_and(|t| t.ends_with(&format!("google.rpc.{name}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono_tz::America::Los_Angeles;

    fn day(now: i64) -> DayInfo {
        DayInfo::at(Los_Angeles, now)
    }

    #[test]
    fn per_minute_429_cools_for_retry_delay() {
        let body = br#"{"error":{"code":429,"message":"quota","status":"RESOURCE_EXHAUSTED","details":[
          {"@type":"type.googleapis.com/google.rpc.QuotaFailure","violations":[{"quotaMetric":"generativelanguage.googleapis.com/generate_content_free_tier_requests","quotaId":"GenerateRequestsPerMinutePerProjectPerModel-FreeTier","quotaValue":"10"}]},
          {"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"38.962214405s"}]}}"#;
        let now = 1_780_000_000_000;
        match classify(429, body, &day(now), now) {
            Verdict::QuotaExhausted {
                cooldown_ms,
                kinds,
                reported,
            } => {
                assert_eq!(cooldown_ms, 38_963);
                assert_eq!(kinds, vec![LimitKind::RequestsPerMinute]);
                assert_eq!(reported, vec![(LimitKind::RequestsPerMinute, 10)]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn per_day_429_cools_until_pacific_midnight_whatever_retry_delay_says() {
        let body = br#"{"error":{"code":429,"status":"RESOURCE_EXHAUSTED","details":[
          {"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"5s"},
          {"@type":"type.googleapis.com/google.rpc.QuotaFailure","violations":[
            {"quotaId":"GenerateRequestsPerMinutePerProjectPerModel-FreeTier"},
            {"quotaId":"GenerateRequestsPerDayPerProjectPerModel-FreeTier","quotaValue":"250"}]}]}}"#;
        let now = 1_780_000_000_000;
        let d = day(now);
        match classify(429, body, &d, now) {
            Verdict::QuotaExhausted { cooldown_ms, .. } => {
                assert_eq!(cooldown_ms as i64, d.next_midnight_ms - now)
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bare_429_dead_keys_and_5xx_are_told_apart() {
        let now = 0;
        let bare = br#"{"error":{"code":429,"message":"Resource has been exhausted (e.g. check quota).","status":"RESOURCE_EXHAUSTED"}}"#;
        assert_eq!(
            classify(429, bare, &day(now), now),
            Verdict::RateLimited {
                retry_delay_ms: None
            }
        );
        let invalid = br#"{"error":{"code":400,"message":"API key not valid. Please pass a valid API key.","status":"INVALID_ARGUMENT","details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"API_KEY_INVALID","domain":"googleapis.com"}]}}"#;
        assert!(matches!(
            classify(400, invalid, &day(now), now),
            Verdict::DeadKey { .. }
        ));
        let leaked = br#"{"error":{"code":403,"message":"Your API key was reported as leaked. Please use another API key.","status":"PERMISSION_DENIED"}}"#;
        assert!(matches!(
            classify(403, leaked, &day(now), now),
            Verdict::DeadKey { .. }
        ));
        let file = br#"{"error":{"code":403,"message":"You do not have permission to access the File abc or it may not exist.","status":"PERMISSION_DENIED"}}"#;
        assert_eq!(classify(403, file, &day(now), now), Verdict::Deliver);
        assert_eq!(classify(503, b"{}", &day(now), now), Verdict::Transient);
        assert_eq!(classify(400, b"not json", &day(now), now), Verdict::Deliver);
        let wrapped = br#"[{"error":{"code":400,"message":"API key not valid.","status":"INVALID_ARGUMENT"}}]"#;
        assert!(matches!(
            classify(400, wrapped, &day(now), now),
            Verdict::DeadKey { .. }
        ));
    }

    #[test]
    fn upstream_urls_keep_path_and_query_and_drop_credentials() {
        let u = Upstream::new("https://generativelanguage.googleapis.com").unwrap();
        assert_eq!(
            u.url(
                "/v1beta/models/m:streamGenerateContent",
                Some("alt=sse&key=secret")
            )
            .unwrap()
            .to_string(),
            "https://generativelanguage.googleapis.com/v1beta/models/m:streamGenerateContent?alt=sse"
        );
        let u = Upstream::new("http://gw.local:8080/gemini/").unwrap();
        assert_eq!(
            u.url("/v1beta/files/a%2Fb", None).unwrap().to_string(),
            "http://gw.local:8080/gemini/v1beta/files/a%2Fb"
        );
    }

    #[test]
    fn credentials_are_found_and_stripped_from_queries() {
        assert_eq!(strip_credentials_from_query("alt=sse&key=abc"), "alt=sse");
        assert_eq!(strip_credentials_from_query("$key=abc&x=1"), "x=1");
        let h = HeaderMap::new();
        assert_eq!(client_credential(&h, Some("alt=sse&key=abc")), Some("abc"));
    }
}
