//! Opening the pool's connections: TCP, TLS and the HTTP/2 handshake within the connect
//! timeout, the peer's stream cap watched for the connection's life, and a spare connection
//! opened ahead of need.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use hyper_util::client::legacy::connect::Connection;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::sync::watch;
use tower_service::Service;

use super::super::connect::{BoxError, describe_error, is_timeout};
use super::{ASSUMED_STREAMS, Conn, Inner, State};

/// How often a new connection looks for the peer's first SETTINGS, and then for changes to its
/// stream cap.
const SETTINGS_POLL: Duration = Duration::from_millis(2);
const CAP_POLL: Duration = Duration::from_secs(1);
/// After a connection failed to open, how long no spare one is opened ahead of need.
const SPARE_BACKOFF: Duration = Duration::from_secs(1);

enum OpenError {
    NotH2,
    Failed(BoxError),
}

impl Inner {
    /// Open the next connection before the open ones fill up: when their free stream slots
    /// fall below a quarter of a connection's cap and none is being opened, so that the
    /// requests arriving meanwhile take a slot at once instead of waiting for a TCP, TLS and
    /// HTTP/2 handshake (a round trip or three to Google; in the streams benchmark the stream
    /// that found every connection full waited 5-13 ms, one in a hundred). Not within
    /// [`SPARE_BACKOFF`] of a failed open: a refusing upstream gets no attempt per request.
    /// `free`: the open connections' free slots now.
    pub(super) fn open_spare(self: &Arc<Self>, st: &mut State, free: usize) {
        if st.opening > 0 {
            return;
        }
        if st.last_failure.is_some()
            && self.now_ms().saturating_sub(st.last_failure_ms)
                < u64::try_from(SPARE_BACKOFF.as_millis()).unwrap_or(u64::MAX)
        {
            return;
        }
        let cap = st.expected_streams.unwrap_or(ASSUMED_STREAMS);
        if free.saturating_mul(4) < cap {
            st.opening += 1;
            tokio::spawn(self.clone().open());
        }
    }

    /// Open one connection (run as its own task: it completes for the waiters even when the
    /// request that started it is gone).
    pub(super) async fn open(self: Arc<Self>) {
        let timeout = self.connect_timeout;
        let result = match tokio::time::timeout(timeout, self.connect()).await {
            Ok(r) => r,
            Err(_) => Err(OpenError::Failed(Box::new(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "no HTTP/2 connection (TCP, TLS and SETTINGS) within {}s",
                    timeout.as_secs_f64()
                ),
            )))),
        };
        {
            let mut st = self.lock();
            st.opening -= 1;
            match result {
                Ok(conn) => {
                    let streams = *conn.max_streams.borrow();
                    st.expected_streams = Some(streams);
                    st.conns.push(conn);
                    tracing::debug!(
                        streams,
                        connections = st.conns.len(),
                        "upstream HTTP/2 connection opened"
                    );
                }
                Err(OpenError::NotH2) => {
                    tracing::info!("the upstream did not choose HTTP/2 by ALPN: using HTTP/1.1");
                    self.not_h2.store(true, Ordering::Relaxed);
                }
                Err(OpenError::Failed(e)) => {
                    let kind = if is_timeout(&*e) {
                        std::io::ErrorKind::TimedOut
                    } else {
                        std::io::ErrorKind::Other
                    };
                    st.failures += 1;
                    st.last_failure = Some((kind, describe_error(&*e)));
                    st.last_failure_ms = self.now_ms();
                }
            }
        }
        self.changed.notify_waiters();
    }

    async fn connect(&self) -> Result<Arc<Conn>, OpenError> {
        let io = self
            .connector
            .clone()
            .call(self.origin.clone())
            .await
            .map_err(OpenError::Failed)?;
        if !io.connected().is_negotiated_h2() {
            return Err(OpenError::NotH2);
        }
        let (send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            // No stream before the peer's SETTINGS say how many it allows.
            .initial_max_send_streams(0)
            .handshake(io)
            .await
            .map_err(|e| OpenError::Failed(e.into()))?;
        let (announce, mut max_streams) = watch::channel(0usize);
        tokio::spawn(async move {
            let mut conn = std::pin::pin!(conn);
            // hyper reads frames in a task of its own, so nothing wakes this one when the
            // peer's SETTINGS change the cap: look again on a timer, often until the first
            // SETTINGS came, then every second.
            let mut tick = std::pin::pin!(tokio::time::sleep(SETTINGS_POLL));
            let ended = std::future::poll_fn(|cx| {
                let polled = conn.as_mut().poll(cx);
                let now = conn.current_max_send_streams();
                announce.send_if_modified(|v| std::mem::replace(v, now) != now);
                while tick.as_mut().poll(cx).is_ready() {
                    let every = if now == 0 { SETTINGS_POLL } else { CAP_POLL };
                    tick.as_mut().reset(tokio::time::Instant::now() + every);
                }
                polled
            })
            .await;
            if let Err(e) = ended {
                tracing::debug!(error = %e, "upstream HTTP/2 connection ended");
            }
        });
        max_streams.wait_for(|&n| n > 0).await.map_err(|_| {
            OpenError::Failed("the upstream closed the connection before its SETTINGS".into())
        })?;
        Ok(Arc::new(Conn {
            send,
            max_streams,
            in_flight: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(self.now_ms()),
            broken: AtomicBool::new(false),
        }))
    }
}
