//! The router and the accept loop: header-read timeout, a cap on open connections with a
//! clean refusal, and graceful shutdown that lets in-flight streams finish within a grace period.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::error::ApiError;
use crate::gateway::{Gateway, GeminiService};

/// Largest total of header names and values a request may carry. hyper's read buffer limit is
/// only enforced while headers are incomplete, so a kept-alive connection can slip a larger
/// block through; this check holds for every request.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

/// The refusal for a header block over [`MAX_HEADER_BYTES`], if it is.
fn oversized_headers(headers: &http::HeaderMap) -> Option<Response> {
    let size: usize = headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum();
    (size > MAX_HEADER_BYTES).then(|| {
        ApiError::HeadersTooLarge(format!(
            "Request headers total {size} bytes, over the limit of {MAX_HEADER_BYTES} bytes."
        ))
        .into_response()
    })
}

/// Where the Gemini surface starts: everything under these (and under `server.path_prefix`
/// followed by these) is forwarded.
const GEMINI_ROOTS: [&str; 4] = ["/v1beta/", "/v1/", "/upload/v1beta/", "/upload/v1/"];

/// A path the proxy forwards (a root and something after it).
fn is_gemini_path(path: &str) -> bool {
    GEMINI_ROOTS
        .iter()
        .any(|root| path.len() > root.len() && path.starts_with(root))
}

/// `/prefix/v1beta/...` → `/v1beta/...`, keeping the original URI for the handler (as the
/// router's `nest` does). False, and the request untouched, for anything else.
fn strip_path_prefix(req: &mut Request, prefix: &str) -> bool {
    let Some(rest) = req.uri().path().strip_prefix(prefix) else {
        return false;
    };
    if !is_gemini_path(rest) {
        return false;
    }
    let path_and_query = match req.uri().query() {
        Some(q) => format!("{rest}?{q}"),
        None => rest.to_string(),
    };
    let mut parts = req.uri().clone().into_parts();
    let Ok(pq) = path_and_query.parse() else {
        return false;
    };
    parts.path_and_query = Some(pq);
    let Ok(uri) = http::Uri::from_parts(parts) else {
        return false;
    };
    let original = std::mem::replace(req.uri_mut(), uri);
    req.extensions_mut()
        .insert(axum::extract::OriginalUri(original));
    true
}

/// One request: Gemini paths go straight to the Gemini service (the router's layers cost more
/// than the routing at tens of thousands of requests a second); the rest to the router.
async fn dispatch(
    gemini: GeminiService,
    prefix: Option<Arc<str>>,
    router: Router,
    req: http::Request<hyper::body::Incoming>,
) -> Result<Response, std::convert::Infallible> {
    let mut req = req.map(axum::body::Body::new);
    if let Some(refusal) = oversized_headers(req.headers()) {
        return Ok(refusal);
    }
    let direct = is_gemini_path(req.uri().path())
        || prefix
            .as_deref()
            .is_some_and(|p| strip_path_prefix(&mut req, p));
    if direct {
        // Always ready: every step of the stack answers `poll_ready` at once.
        let mut gemini = gemini;
        return tower::Service::call(tower::ServiceExt::ready(&mut gemini).await?, req).await;
    }
    hyper::service::Service::call(&TowerToHyperService::new(router), req).await
}

const REFUSAL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: 113\r\n\r\n{\"error\":{\"code\":503,\"message\":\"The proxy has too many open connections; retry shortly.\",\"status\":\"UNAVAILABLE\"}}";

/// Serve `gateway` on `listener` until `shutdown` resolves, then drain for the grace period.
pub async fn serve(
    listener: TcpListener,
    gateway: Gateway,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    // Settings read once (a reload reports changes to these as needing a restart); no
    // generation is held here, so a replaced one is freed once its requests end.
    let (cfg, ledger) = {
        let state = gateway.state();
        (state.config.server.clone(), state.ledger.clone())
    };
    let router = gateway.router();
    let gemini = gateway.service();
    let prefix: Option<Arc<str>> = cfg.path_prefix.as_deref().map(Arc::from);
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(cfg.max_connections));
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(cfg.header_read_timeout)
        .max_buf_size(64 * 1024);
    builder.http2().timer(TokioTimer::new());
    let builder = Arc::new(builder);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (mut stream, _peer) = match accepted {
                    Ok(c) => c,
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let Ok(permit) = slots.clone().try_acquire_owned() else {
                    tracing::warn!(max = cfg.max_connections, "connection refused: too many open connections");
                    tokio::spawn(async move {
                        let _ = stream.write_all(REFUSAL).await;
                        let _ = stream.shutdown().await;
                    });
                    continue;
                };
                let (gemini, prefix, router) = (gemini.clone(), prefix.clone(), router.clone());
                let service = hyper::service::service_fn(move |req| {
                    dispatch(gemini.clone(), prefix.clone(), router.clone(), req)
                });
                let conn = builder.serve_connection(TokioIo::new(stream), service).into_owned();
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    let _ = conn.await;
                    drop(permit);
                });
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    tracing::info!(
        grace_secs = cfg.shutdown_grace.as_secs_f64(),
        "shutting down: draining open requests"
    );
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections closed"),
        () = tokio::time::sleep(cfg.shutdown_grace) => tracing::warn!("grace period over: closing remaining connections"),
    }
    // The last second of usage sums, not left for a settlement batch that will not come.
    ledger.flush().await;
    Ok(())
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
