//! The router and the accept loop: header-read timeout, a cap on open connections with a
//! clean refusal, and graceful shutdown that lets in-flight streams finish within a grace period.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::error::ApiError;
use crate::state::AppState;
use crate::{proxy, status};

/// Largest total of header names and values a request may carry. hyper's read buffer limit is
/// only enforced while headers are incomplete, so a kept-alive connection can slip a larger
/// block through; this check holds for every request.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

async fn limit_headers(req: Request, next: Next) -> Response {
    let size: usize = req
        .headers()
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum();
    if size > MAX_HEADER_BYTES {
        return ApiError::HeadersTooLarge(format!(
            "Request headers total {size} bytes, over the limit of {MAX_HEADER_BYTES} bytes."
        ))
        .into_response();
    }
    next.run(req).await
}

/// The Gemini surface: everything the proxy forwards.
fn gemini_routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v1beta/{*rest}", any(proxy::handle))
        .route("/v1/{*rest}", any(proxy::handle))
        .route("/upload/v1beta/{*rest}", any(proxy::handle))
        .route("/upload/v1/{*rest}", any(proxy::handle))
}

/// Every route of the proxy.
pub fn app(state: Arc<AppState>) -> Router {
    let mut router = Router::new()
        .route("/healthz", get(status::healthz))
        .route("/readyz", get(status::readyz))
        .route("/metrics", get(status::metrics))
        .route("/api/ai/quota-status/", any(status::quota_status))
        .route("/api/ai/quota-status", any(status::quota_status))
        .merge(gemini_routes());
    if let Some(prefix) = &state.config.path_prefix {
        router = router.nest(prefix, gemini_routes());
    }
    router
        .fallback(proxy::not_found)
        .layer(axum::middleware::from_fn(limit_headers))
        .with_state(state)
}

const REFUSAL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: 113\r\n\r\n{\"error\":{\"code\":503,\"message\":\"The proxy has too many open connections; retry shortly.\",\"status\":\"UNAVAILABLE\"}}";

/// Serve `state` on `listener` until `shutdown` resolves, then drain for the grace period.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let cfg = state.config.clone();
    let router = app(state);
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
                let service = TowerToHyperService::new(router.clone());
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
