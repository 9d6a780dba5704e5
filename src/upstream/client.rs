//! The HTTP client to the Gemini API: HTTP/2 over as many connections as the peer's stream
//! cap needs ([`super::h2pool`]), or HTTP/1.1 over a pool of connections ([`super::h1pool`]);
//! rustls with Mozilla's roots, the system's and `upstream.ca_file`.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, Uri};
use http_body_util::Full;
use hyper_util::client::legacy::connect::HttpConnector;

use super::body::ResponseBody;
use super::connect::{Timed, describe_error, is_timeout};
use super::h1pool::{self, H1Pool};
use super::h2pool::{self, H2Pool};
use crate::config::UpstreamConfig;

/// The client to the upstream. Over https with `upstream.http2` (the default): HTTP/2 over as
/// many connections as the peer's stream cap requires ([`h2pool`]); else, and when the upstream
/// does not choose h2 by ALPN, HTTP/1.1 over [`h1pool`] (one connection per request in
/// flight, kept for reuse).
pub struct HttpClient {
    http1: H1Pool,
    h2: Option<H2Pool>,
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpClient")
            .field("http2", &self.h2.is_some())
            .finish_non_exhaustive()
    }
}

/// Why no answer head came back.
#[derive(Debug, thiserror::Error)]
#[error("{detail}")]
pub struct ForwardError {
    pub kind: ForwardErrorKind,
    /// A timeout ended it (connecting, or waiting for the head).
    pub timed_out: bool,
    /// The error and its causes (no URL, no header).
    pub detail: String,
}

/// Whether the request can have left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardErrorKind {
    /// No connection (TCP, TLS, refused, connect timeout), or the connection closed before
    /// taking it: the request never left.
    Unsent,
    /// The connection failed after the request was written.
    Lost,
    /// No answer head in time.
    Silent,
}

impl HttpClient {
    /// Send `req`; the answer's body streams (nothing is buffered here).
    pub async fn request(
        self: std::sync::Arc<Self>,
        req: Request<Full<Bytes>>,
    ) -> Result<http::Response<ResponseBody>, ForwardError> {
        let req = match &self.h2 {
            // Boxed apart: neither the HTTP/1.1 path (every caller's future) nor this poll's
            // frame carries its size.
            Some(pool) if !pool.refused() => {
                match crate::boxed::apart(|| pool.request(req)).await {
                    Ok(resp) => return Ok(resp),
                    Err(h2pool::H2Error::Unsent(e)) => return Err(send_error(true, &*e)),
                    Err(h2pool::H2Error::Failed(e)) => return Err(send_error(false, &*e)),
                    Err(h2pool::H2Error::NotH2(req)) => *req,
                }
            }
            _ => req,
        };
        match self.http1.request(req).await {
            Ok(resp) => Ok(resp),
            Err(h1pool::H1Error::Unsent(e)) => Err(send_error(true, &*e)),
            Err(h1pool::H1Error::Failed(e)) => Err(send_error(false, &*e)),
        }
    }
}

fn send_error(unsent: bool, e: &(dyn std::error::Error + 'static)) -> ForwardError {
    let timed_out = is_timeout(e);
    ForwardError {
        kind: if unsent {
            ForwardErrorKind::Unsent
        } else if timed_out {
            ForwardErrorKind::Silent
        } else {
            ForwardErrorKind::Lost
        },
        timed_out,
        detail: describe_error(e),
    }
}

/// hyper's client straight, not a higher-level one: per request it does no URL parsing, no
/// redirect policy and no extra service layers (they were a third of the proxy's CPU time).
/// The upstream is named in the config, so no HTTP(S)_PROXY detour either.
pub fn build_client(cfg: &UpstreamConfig) -> HttpClient {
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
    .with_root_certificates(trust_roots(&cfg.ca))
    .with_no_client_auth();
    // HTTP/1.1 only here (ALPN offers only http/1.1): HTTP/2 is the other pool's.
    let http1 = H1Pool::new(Timed {
        inner: hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls.clone())
            .https_or_http()
            .enable_http1()
            .wrap_connector(http.clone()),
        timeout: cfg.connect_timeout,
    });
    let origin = Uri::builder()
        .scheme(cfg.url.scheme.clone())
        .authority(cfg.url.authority.clone())
        .path_and_query("/")
        .build()
        .ok()
        .filter(|u| u.scheme_str() == Some("https"));
    let h2 = origin.filter(|_| cfg.http2).map(|origin| {
        // Offers h2 and http/1.1: an upstream that picks http/1.1 sends the pool to HTTP/1.1.
        let connector = Timed {
            inner: hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(tls)
                .https_only()
                .enable_all_versions()
                .wrap_connector(http),
            timeout: cfg.connect_timeout,
        };
        H2Pool::new(connector, origin, cfg.connect_timeout)
    });
    HttpClient { http1, h2 }
}

/// Mozilla's roots (built in, so a bare container works) plus the system's store (so a
/// corporate TLS-inspecting gateway's CA, installed the usual way, is trusted too) plus
/// `upstream.ca_file` (checked at config load, so none is refused here).
pub(crate) fn trust_roots(
    extra: &[rustls::pki_types::CertificateDer<'static>],
) -> rustls::RootCertStore {
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
