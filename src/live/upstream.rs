//! The upstream side of a Live session: Google's socket URL for the client's path (`https` ->
//! `wss`, `http` -> `ws` for a local fake), opened with a pooled key in `x-goog-api-key` (never in
//! the URL, which ends up in logs) over the same rustls trust roots as the REST client.

use parking_lot::Mutex;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

use crate::config::UpstreamConfig;

/// Google's side of a session.
pub(crate) type UpstreamSocket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Largest message taken from Google: its answers (audio, transcripts) are its own, but a
/// message is held whole before it is relayed, so even its size has a bound.
const MAX_UPSTREAM_MESSAGE: usize = 64 << 20;

/// Why the upstream socket did not open.
#[derive(Debug)]
pub(crate) enum OpenError {
    /// Google answered the upgrade with an HTTP status (429, 403, ...).
    Status(u16),
    /// No connection, TLS or handshake failure, or no answer in time.
    Failed(String),
}

/// The socket URL for the client's `path` under `upstream.url`.
pub(crate) fn url(cfg: &UpstreamConfig, path: &str) -> String {
    let scheme = if cfg.url.scheme == http::uri::Scheme::HTTPS {
        "wss"
    } else {
        "ws"
    };
    format!("{scheme}://{}{}{path}", cfg.url.authority, cfg.url.path)
}

/// The TLS settings for `upstream.ca_file`'s roots, built once per distinct file content
/// (loading the system's roots takes milliseconds: not once per session).
fn tls(cfg: &UpstreamConfig) -> Arc<rustls::ClientConfig> {
    type Cached = Option<(
        Vec<rustls::pki_types::CertificateDer<'static>>,
        Arc<rustls::ClientConfig>,
    )>;
    static CACHE: Mutex<Cached> = Mutex::new(None);
    let mut cache = CACHE.lock();
    if let Some((ca, tls)) = cache.as_ref()
        && *ca == cfg.ca
    {
        return tls.clone();
    }
    let built = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map(|b| {
        b.with_root_certificates(crate::upstream::client::trust_roots(&cfg.ca))
            .with_no_client_auth()
    });
    let tls = Arc::new(match built {
        Ok(mut t) => {
            // The WebSocket upgrade is an HTTP/1.1 request.
            t.alpn_protocols = vec![b"http/1.1".to_vec()];
            t
        }
        // The ring provider supports the default versions; this is not reached.
        Err(_) => rustls::ClientConfig::builder()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth(),
    });
    *cache = Some((cfg.ca.clone(), tls.clone()));
    tls
}

/// `text` without `url`'s query, should an error quote the URL: a token's session has its
/// token there, and errors are logged.
fn redact(text: String, url: &str) -> String {
    match url.split_once('?') {
        Some((_, query)) if text.contains(query) => text.replace(query, "(query left out)"),
        _ => text,
    }
}

/// Open Google's socket at `url` with `api_key` (none for a token's session: the token is in
/// `url`), within `timeout`.
pub(crate) async fn open(
    cfg: &UpstreamConfig,
    url: &str,
    api_key: Option<&http::HeaderValue>,
    timeout: Duration,
) -> Result<UpstreamSocket, OpenError> {
    let mut req = url
        .into_client_request()
        .map_err(|e| OpenError::Failed(redact(e.to_string(), url)))?;
    if let Some(k) = api_key {
        req.headers_mut().insert("x-goog-api-key", k.clone());
    }
    let config = WebSocketConfig::default()
        .read_buffer_size(8 * 1024)
        .write_buffer_size(0)
        .max_message_size(Some(MAX_UPSTREAM_MESSAGE))
        .max_frame_size(Some(MAX_UPSTREAM_MESSAGE));
    let connector = if url.starts_with("wss:") {
        Connector::Rustls(tls(cfg))
    } else {
        Connector::Plain
    };
    let opening =
        tokio_tungstenite::connect_async_tls_with_config(req, Some(config), true, Some(connector));
    match tokio::time::timeout(timeout, opening).await {
        Ok(Ok((ws, _))) => Ok(ws),
        Ok(Err(tokio_tungstenite::tungstenite::Error::Http(resp))) => {
            Err(OpenError::Status(resp.status().as_u16()))
        }
        Ok(Err(e)) => Err(OpenError::Failed(redact(e.to_string(), url))),
        Err(_) => Err(OpenError::Failed(format!(
            "no answer within {} ms",
            timeout.as_millis()
        ))),
    }
}
