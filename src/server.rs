//! The router and the accept loop: HTTP/1.1 or HTTP/2 told by a peek, header-read timeout, a cap on open connections
//! (in all and per source, see [`crate::conn`]) with a clean refusal, idle and handshake timeouts, HTTP/2 keep-alive
//! pings, and graceful shutdown that lets in-flight streams finish within a grace period.

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
use tokio::net::{TcpListener, TcpStream};
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
/// `/v1beta1/` is Vertex AI's (see [`crate::upstream::vertex::form`]).
const GEMINI_ROOTS: [&str; 7] = [
    "/v1beta/",
    "/v1/",
    "/upload/v1beta/",
    "/upload/v1/",
    "/v1beta1/",
    "/download/v1beta/",
    "/download/v1/",
];

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

/// One request on a connection: refused before its credential is looked at (`checked`), or
/// dispatched and its credential judged; its body keeps the connection busy until it is done.
/// The dispatch's future is made inside this one's, not before it and moved in: each move of
/// a future copies it whole.
async fn serve_one(
    checked: Result<Option<crate::throttle::Kind>, ApiError>,
    throttle: crate::throttle::Throttle,
    ip: std::net::IpAddr,
    busy: crate::conn::Busy,
    (gemini, prefix, router): (GeminiService, Option<Arc<str>>, Router),
    req: http::Request<hyper::body::Incoming>,
) -> Result<http::Response<crate::conn::BusyBody<axum::body::Body>>, std::convert::Infallible> {
    let resp = match checked {
        Ok(kind) => {
            let resp = dispatch(gemini, prefix, router, req).await?;
            if let Some(kind) = kind {
                throttle.judge(ip, kind, &resp);
            }
            resp
        }
        Err(refusal) => refusal.into_response(),
    };
    Ok(resp.map(|body| crate::conn::BusyBody::new(body, busy)))
}

/// One request: Gemini paths go straight to the Gemini service (the router's layers cost more
/// than the routing at tens of thousands of requests a second); the rest to the router. The
/// other ways are boxed: this future is copied whole when hyper takes it, and theirs (a Live
/// session's set-up, the router's) would make every request's several times larger.
///
/// An `async` block, not an `async fn`, which would keep its arguments twice (captured and as
/// locals, rust-lang/rust#62958).
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn keeps its arguments twice"
)]
fn dispatch(
    mut gemini: GeminiService,
    prefix: Option<Arc<str>>,
    router: Router,
    req: http::Request<hyper::body::Incoming>,
) -> impl Future<Output = Result<Response, std::convert::Infallible>> {
    async move {
        let mut req = req.map(axum::body::Body::new);
        if let Some(refusal) = oversized_headers(req.headers()) {
            return Ok(refusal);
        }
        if let Some(path) = crate::live::live_path(req.uri().path(), prefix.as_deref()) {
            let path = path.to_string();
            let (state, sessions) = (gemini.state(), gemini.live_sessions());
            return Ok(
                crate::boxed::apart(|| crate::live::handle(state, sessions, req, &path)).await,
            );
        }
        if let Some(path) = crate::live::tokens::tokens_path(req.uri().path(), prefix.as_deref()) {
            let path = path.to_string();
            let (state, sessions) = (gemini.state(), gemini.live_sessions());
            return Ok(crate::boxed::apart(|| {
                crate::live::tokens::create(state, sessions, req, &path)
            })
            .await);
        }
        let direct = is_gemini_path(req.uri().path())
            || prefix
                .as_deref()
                .is_some_and(|p| strip_path_prefix(&mut req, p));
        if direct {
            // Always ready: every step of the stack answers `poll_ready` at once.
            return tower::Service::call(tower::ServiceExt::ready(&mut gemini).await?, req).await;
        }
        crate::boxed::apart(|| {
            hyper::service::Service::call(&TowerToHyperService::new(router), req)
        })
        .await
    }
}

const REFUSAL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: 113\r\n\r\n{\"error\":{\"code\":503,\"message\":\"The proxy has too many open connections; retry shortly.\",\"status\":\"UNAVAILABLE\"}}";

/// HTTP/2's connection preface: a client speaking HTTP/2 without TLS ("prior knowledge") opens
/// with it.
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Whether the client opens with HTTP/2's preface, found by peeking: the bytes stay in the
/// socket for hyper to read. (hyper-util's auto builder reads them and hands them back through
/// a rewind buffer instead; hyper then reads the rest of the request head into its 8 KiB
/// buffer behind those bytes, which makes the buffer double to 16 KiB, held by every HTTP/1.1
/// connection for as long as it is open: a third of the memory of an open stream.) `None`: the
/// client closed, or sent nothing to tell within `timeout` (the header-read timeout).
async fn speaks_h2(stream: &TcpStream, timeout: Duration) -> Option<bool> {
    tokio::time::timeout(timeout, crate::conn::sniff(stream, H2_PREFACE))
        .await
        .ok()
        .flatten()
}

/// Grow the process's descriptor table now to hold `n` descriptors (at most the open-file
/// limit). The kernel doubles the table as descriptors are opened, and in a process with
/// several threads each doubling waits for an RCU grace period on the thread that opened the
/// descriptor: the accept loop. The first climb to 10,000 connections held new connections for
/// up to 15 ms at 256, 512, ... 8,192 descriptors (the streams benchmark's slowest first events,
/// `BENCH_SLOWEST`). Done once at start, the table costs 8 bytes of kernel memory per slot.
#[cfg(unix)]
fn reserve_descriptors(listener: &TcpListener, n: usize) {
    use std::os::fd::AsRawFd;
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return;
    }
    let top = u64::try_from(n)
        .unwrap_or(u64::MAX)
        .min(limit.rlim_cur)
        .saturating_sub(1);
    let Ok(top) = libc::c_int::try_from(top) else {
        return;
    };
    // A copy of the listener's descriptor numbered `top` or above makes the kernel size the
    // table for it; closing the copy keeps the table.
    // SAFETY: fcntl on a descriptor we own; the copy is closed at once.
    let copy = unsafe { libc::fcntl(listener.as_raw_fd(), libc::F_DUPFD_CLOEXEC, top) };
    if copy >= 0 {
        // SAFETY: `copy` is ours and used nowhere else.
        unsafe { libc::close(copy) };
    }
    tracing::debug!(
        descriptors = top + 1,
        reserved = copy >= 0,
        "descriptor table sized"
    );
}

#[cfg(not(unix))]
fn reserve_descriptors(_listener: &TcpListener, _n: usize) {}

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
    let sessions = gemini.live_sessions();
    let prefix: Option<Arc<str>> = cfg.path_prefix.as_deref().map(Arc::from);
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(cfg.max_connections));
    // A client connection each, as many to the upstream over HTTP/1.1, and some to spare.
    reserve_descriptors(&listener, cfg.max_connections.saturating_mul(2) + 256);
    let mut http1 = hyper::server::conn::http1::Builder::new();
    http1
        .timer(TokioTimer::new())
        .header_read_timeout(cfg.header_read_timeout)
        .max_buf_size(64 * 1024);
    let mut http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    http2
        .timer(TokioTimer::new())
        .max_concurrent_streams(cfg.http2_max_streams)
        .keep_alive_interval(cfg.http2_keepalive_interval)
        .keep_alive_timeout(cfg.http2_keepalive_timeout);
    let per_source = crate::conn::PerSource::new(cfg.max_connections_per_ip);
    let throttle = crate::throttle::Throttle::default();
    let idle_timeout = cfg.idle_timeout;
    let (http1, http2) = (Arc::new(http1), Arc::new(http2));
    let header_timeout = cfg.header_read_timeout;
    // Connections still peeking at their first bytes hold no request: shutdown closes them
    // at once instead of waiting out their header timeout.
    let (stopping, stop) = tokio::sync::watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (mut stream, peer) = match accepted {
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
                let Some(source_slot) = per_source.admit(peer.ip()) else {
                    // Closed at once, without a word: a source over its cap is opening
                    // connections faster than it uses them.
                    tracing::debug!(max = cfg.max_connections_per_ip, "connection refused: too many open connections from one source");
                    drop(stream);
                    continue;
                };
                let activity = crate::conn::Activity::new();
                let (gemini, prefix, router) = (gemini.clone(), prefix.clone(), router.clone());
                let busy_on = activity.clone();
                let throttle = throttle.clone();
                let ip = peer.ip();
                let service = hyper::service::service_fn(move |req| {
                    // Busy from the request's arrival until its response body is done.
                    let busy = busy_on.begin();
                    let checked = throttle.check(ip, &req);
                    let to = (gemini.clone(), prefix.clone(), router.clone());
                    serve_one(checked, throttle.clone(), ip, busy, to, req)
                });
                let watcher = graceful.watcher();
                let (http1, http2) = (http1.clone(), http2.clone());
                let mut stop = stop.clone();
                tokio::spawn(async move {
                    let h2 = tokio::select! {
                        h2 = speaks_h2(&stream, header_timeout) => h2,
                        _ = stop.wait_for(|s| *s) => None,
                    };
                    // A connection with nothing in flight past its idle (or, before its first
                    // request, handshake) timeout is dropped: closed, its slots freed.
                    // Polled only when their own timer or signal fires, not at each of the
                    // connection's wake-ups.
                    let idle = crate::conn::OnWake::new(activity.idle(header_timeout, idle_timeout));
                    match h2 {
                        Some(false) => {
                            // With upgrades: a Live API WebSocket takes the connection over.
                            // hyper-util's watcher takes no upgradeable connection: the same
                            // drain by hand (the watcher, held to the end, keeps the drain
                            // waiting for this connection).
                            let conn = http1
                                .serve_connection(TokioIo::new(stream), service)
                                .with_upgrades();
                            tokio::pin!(conn);
                            tokio::select! {
                                _ = conn.as_mut() => {}
                                () = idle => {}
                                () = crate::conn::OnWake::new(async { let _ = stop.wait_for(|s| *s).await; }) => {
                                    conn.as_mut().graceful_shutdown();
                                    let _ = conn.await;
                                }
                            }
                            drop(watcher);
                        }
                        Some(true) => {
                            // Boxed: the HTTP/1.1 connections' tasks need not carry its size.
                            let conn = http2.serve_connection(TokioIo::new(stream), service);
                            tokio::select! {
                                _ = Box::pin(watcher.watch(conn)) => {}
                                () = idle => {}
                            }
                        }
                        None => drop(watcher),
                    }
                    drop(source_slot);
                    drop(permit);
                });
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    let _ = stopping.send(true);
    // Live sessions hold no request to finish: each is closed at once (1001), in its own task.
    sessions.shut_down();
    let live_closed = async {
        while sessions.open() > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tracing::info!(
        grace_secs = cfg.shutdown_grace.as_secs_f64(),
        "shutting down: draining open requests"
    );
    tokio::select! {
        ((), ()) = async { tokio::join!(graceful.shutdown(), live_closed) } => tracing::info!("all connections closed"),
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
