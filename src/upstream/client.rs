//! The HTTP client to the Gemini API: hyper's pooled client over rustls (HTTP/2 by ALPN),
//! a connect timeout that covers TCP and TLS, trust roots, and reading its errors.

use std::time::Duration;

use axum::http::Uri;
use bytes::Bytes;
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::config::UpstreamConfig;

/// The pooled client to the upstream: HTTP/1.1, or HTTP/2 when TLS negotiates it.
pub type HttpClient = Client<Timed<HttpsConnector<HttpConnector>>, Full<Bytes>>;

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
    .with_root_certificates(trust_roots())
    .with_no_client_auth();
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_all_versions()
        .wrap_connector(http);
    let connector = Timed {
        inner: https,
        timeout: cfg.connect_timeout,
    };
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(256)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .build(connector)
}

/// Mozilla's roots (built in, so a bare container works) plus the system's store (so a
/// corporate TLS-inspecting gateway's CA, installed the usual way, is trusted too).
fn trust_roots() -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let native = rustls_native_certs::load_native_certs();
    let (added, unparsable) = roots.add_parsable_certificates(native.certs);
    tracing::debug!(
        system_roots = added,
        unparsable,
        errors = native.errors.len(),
        "TLS trust roots loaded"
    );
    roots
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
