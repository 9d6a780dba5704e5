//! `[server]`: where the proxy listens and what it accepts from clients.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

use super::check::{BaseUrl, ConfigError, bad, secs};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Raw {
    listen: String,
    public_url: String,
    path_prefix: String,
    max_body_bytes: u64,
    max_buffered_bytes: u64,
    max_buffered_client_share: f64,
    header_read_timeout_secs: f64,
    body_read_timeout_secs: f64,
    max_connections: u64,
    max_connections_per_ip: u64,
    idle_timeout_secs: f64,
    http2_keepalive_interval_secs: f64,
    http2_keepalive_timeout_secs: f64,
    http2_max_streams: u64,
    shutdown_grace_secs: f64,
    watch_config: bool,
}

/// The listening side.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// Base URL clients use (resumable-upload URLs are rewritten to it); `None`: derived from
    /// each request's `Host`.
    pub public_url: Option<String>,
    /// Also serve the Gemini surface under this prefix (`/gemini` for a base URL of
    /// `http://proxy/gemini`); `None`: only at the root.
    pub path_prefix: Option<String>,
    pub max_body_bytes: usize,
    /// Request-body bytes the whole process may hold at once (read, waiting in the queue,
    /// being sent); past it new requests get 503 with `Retry-After`.
    pub max_buffered_bytes: usize,
    /// The fraction of `max_buffered_bytes` one client may hold.
    pub max_buffered_client_share: f64,
    pub header_read_timeout: Duration,
    pub body_read_timeout: Duration,
    pub max_connections: usize,
    /// Open connections one source may hold (an IPv6 source is its /64); more are refused
    /// at once.
    pub max_connections_per_ip: usize,
    /// A connection with no request in flight for this long is closed (HTTP/1.1 keep-alive
    /// and HTTP/2 alike). Before its first request the header-read timeout applies instead
    /// (the handshake timeout).
    pub idle_timeout: Duration,
    /// HTTP/2 PING sent after this long without a frame from the client; the connection is
    /// closed if no answer comes within `http2_keepalive_timeout`.
    pub http2_keepalive_interval: Duration,
    pub http2_keepalive_timeout: Duration,
    /// Concurrent streams one HTTP/2 connection may open.
    pub http2_max_streams: u32,
    pub shutdown_grace: Duration,
    /// Reload when the `--config` file's directory changes (SIGHUP and the admin endpoint
    /// reload either way).
    pub watch_config: bool,
}

/// Paths the proxy serves itself: a prefix may not shadow them.
const OWN_PATHS: [&str; 7] = [
    "/v1", "/v1beta", "/upload", "/api", "/healthz", "/readyz", "/metrics",
];

impl ServerConfig {
    /// Where the dashboard is for someone reading the start line: under `server.public_url`'s
    /// origin when it is set, else on the address bound (loopback for an unspecified one, which
    /// no browser can open).
    pub fn dashboard_url(&self, bound: SocketAddr) -> String {
        if let Some(public) = &self.public_url {
            let origin_end = public
                .find("://")
                .map(|i| i + 3)
                .and_then(|start| public[start..].find('/').map(|j| start + j))
                .unwrap_or(public.len());
            return format!("{}/dashboard/", &public[..origin_end]);
        }
        let mut addr = bound;
        if addr.ip().is_unspecified() {
            addr.set_ip(match addr.ip() {
                std::net::IpAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                std::net::IpAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        format!("http://{addr}/dashboard/")
    }

    pub(super) fn from_raw(raw: Raw) -> Result<ServerConfig, ConfigError> {
        let listen: SocketAddr = raw.listen.parse().map_err(|_| {
            bad(
                "server.listen (PROXY_LISTEN)",
                format!(
                    "expected host:port such as 127.0.0.1:8080, got {:?}",
                    raw.listen
                ),
            )
        })?;
        let public_url = if raw.public_url.trim().is_empty() {
            None
        } else {
            Some(BaseUrl::parse("server.public_url (PROXY_PUBLIC_URL)", &raw.public_url)?.text)
        };
        let path_prefix = match raw.path_prefix.trim().trim_end_matches('/') {
            "" => None,
            p if p.starts_with('/')
                && p[1..].split('/').all(|seg| {
                    !seg.is_empty()
                        && seg != ".."
                        && seg
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
                })
                && !OWN_PATHS.contains(&p) =>
            {
                Some(p.to_string())
            }
            p => {
                return Err(bad(
                    "server.path_prefix (PROXY_PATH_PREFIX)",
                    format!(
                        "expected a path such as /gemini (letters, digits, '-', '_', '.'), not clashing with the proxy's own paths; got {p:?}"
                    ),
                ));
            }
        };
        for (name, v) in [
            ("server.max_body_bytes", raw.max_body_bytes),
            ("server.max_connections", raw.max_connections),
            (
                "server.max_connections_per_ip (PROXY_MAX_CONNECTIONS_PER_IP)",
                raw.max_connections_per_ip,
            ),
            ("server.http2_max_streams", raw.http2_max_streams),
        ] {
            if v == 0 {
                return Err(bad(name, "must be at least 1"));
            }
        }
        if raw.max_buffered_bytes < raw.max_body_bytes {
            return Err(bad(
                "server.max_buffered_bytes (PROXY_MAX_BUFFERED_BYTES)",
                format!(
                    "must be at least server.max_body_bytes ({}), or a largest request could never be read; got {}",
                    raw.max_body_bytes, raw.max_buffered_bytes
                ),
            ));
        }
        super::check::fraction(
            "server.max_buffered_client_share",
            raw.max_buffered_client_share,
        )?;
        Ok(ServerConfig {
            listen,
            public_url,
            path_prefix,
            max_body_bytes: usize::try_from(raw.max_body_bytes).unwrap_or(usize::MAX),
            max_buffered_bytes: usize::try_from(raw.max_buffered_bytes).unwrap_or(usize::MAX),
            max_buffered_client_share: raw.max_buffered_client_share,
            header_read_timeout: secs(
                "server.header_read_timeout_secs",
                raw.header_read_timeout_secs,
            )?,
            body_read_timeout: secs("server.body_read_timeout_secs", raw.body_read_timeout_secs)?,
            max_connections: usize::try_from(raw.max_connections).unwrap_or(usize::MAX),
            max_connections_per_ip: usize::try_from(raw.max_connections_per_ip)
                .unwrap_or(usize::MAX),
            idle_timeout: secs(
                "server.idle_timeout_secs (PROXY_IDLE_TIMEOUT_SECS)",
                raw.idle_timeout_secs,
            )?,
            http2_keepalive_interval: secs(
                "server.http2_keepalive_interval_secs",
                raw.http2_keepalive_interval_secs,
            )?,
            http2_keepalive_timeout: secs(
                "server.http2_keepalive_timeout_secs",
                raw.http2_keepalive_timeout_secs,
            )?,
            http2_max_streams: u32::try_from(raw.http2_max_streams).unwrap_or(u32::MAX),
            shutdown_grace: secs("server.shutdown_grace_secs", raw.shutdown_grace_secs)?,
            watch_config: raw.watch_config,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::for_test;

    #[test]
    fn the_dashboard_url_is_one_a_browser_can_open() {
        let local = for_test("", &[]);
        let at = |a: &str| local.server.dashboard_url(a.parse().unwrap());
        assert_eq!(at("127.0.0.1:8080"), "http://127.0.0.1:8080/dashboard/");
        assert_eq!(at("0.0.0.0:9000"), "http://127.0.0.1:9000/dashboard/");
        assert_eq!(at("[::]:9000"), "http://[::1]:9000/dashboard/");
        let public = for_test("", &[("PROXY_PUBLIC_URL", "https://ai.example.com/gemini")]);
        assert_eq!(
            public.server.dashboard_url("0.0.0.0:1".parse().unwrap()),
            "https://ai.example.com/dashboard/"
        );
    }
}
