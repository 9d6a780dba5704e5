//! HTTP/2 to the upstream over as many connections as the load needs: a request takes a stream
//! slot on the least busy connection with one free (the peer's SETTINGS_MAX_CONCURRENT_STREAMS,
//! read live), and another connection is opened when every one is full, or ahead of need when
//! less than a quarter of a connection's streams are left, where hyper-util's pool would queue
//! the request behind its one connection's cap (Google allows about 100 streams per
//! connection, and a generation stream lasts tens of seconds).
//!
//! Slots are counted here, not by asking hyper (`SendRequest::is_ready` says nothing about
//! streams): taken under the pool's lock, given back when the response body ends or is dropped.

use parking_lot::{Mutex, MutexGuard};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body_util::Full;
use hyper::client::conn::http2::SendRequest;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use tokio::sync::{Notify, watch};

use super::body::{Holds, ResponseBody};
use super::connect::{BoxError, Timed};

mod open;

/// Streams a connection is assumed to allow until one has told (Google's figure): how many
/// waiting requests one connection being opened is expected to serve.
const ASSUMED_STREAMS: usize = 100;
/// A connection without streams for this long is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Sends retried on another connection when the chosen one closed before taking the request.
const CLOSED_RETRIES: usize = 2;

/// The pool of HTTP/2 connections to one upstream origin.
pub(super) struct H2Pool {
    inner: Arc<Inner>,
}

/// Why [`H2Pool::request`] did not send.
pub(super) enum H2Error {
    /// The upstream did not choose h2 by ALPN: send it over HTTP/1.1 instead.
    NotH2(Box<Request<Full<Bytes>>>),
    /// The request never reached a connection (none could be opened, or the one chosen closed
    /// before taking it): sending it again is safe.
    Unsent(BoxError),
    /// It may have been sent.
    Failed(BoxError),
}

struct Inner {
    connector: Timed<HttpsConnector<HttpConnector>>,
    /// Scheme and authority connected to.
    origin: Uri,
    /// Bounds TCP, TLS, the HTTP/2 handshake and the peer's first SETTINGS together.
    connect_timeout: Duration,
    state: Mutex<State>,
    /// Woken when a connection comes up or fails, and when a slot is given back.
    changed: Notify,
    /// The upstream answered a TLS handshake without choosing h2.
    not_h2: AtomicBool,
    epoch: Instant,
}

#[derive(Default)]
struct State {
    conns: Vec<Arc<Conn>>,
    /// Connections being opened.
    opening: usize,
    /// Requests in `acquire` without a slot yet.
    waiting: usize,
    /// The stream cap the latest connection announced.
    expected_streams: Option<usize>,
    /// Connections that failed to open so far, the latest failure and when (ms since the
    /// pool's epoch).
    failures: u64,
    last_failure: Option<(std::io::ErrorKind, String)>,
    last_failure_ms: u64,
}

struct Conn {
    send: SendRequest<Full<Bytes>>,
    /// The peer's SETTINGS_MAX_CONCURRENT_STREAMS, kept current by the connection's task.
    max_streams: watch::Receiver<usize>,
    in_flight: AtomicUsize,
    /// Milliseconds since the pool's epoch when `in_flight` last fell to 0.
    idle_since_ms: AtomicU64,
    /// A send found it closed: no new streams on it.
    broken: AtomicBool,
}

impl Conn {
    fn free(&self) -> usize {
        (*self.max_streams.borrow()).saturating_sub(self.in_flight.load(Ordering::Relaxed))
    }
}

/// One stream slot on one connection, held by the response body until it ends or is dropped.
pub(super) struct Slot {
    conn: Arc<Conn>,
    pool: Arc<Inner>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if self.conn.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.conn
                .idle_since_ms
                .store(self.pool.now_ms(), Ordering::Relaxed);
        }
        self.pool.changed.notify_waiters();
    }
}

/// A request counted in `State::waiting` until it leaves `acquire`, however it leaves.
struct Waiting<'a> {
    pool: &'a Inner,
    counted: bool,
}

impl Waiting<'_> {
    fn leave(&mut self, st: &mut State) {
        if std::mem::take(&mut self.counted) {
            st.waiting -= 1;
        }
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if self.counted {
            self.pool.lock().waiting -= 1;
        }
    }
}

impl H2Pool {
    pub(super) fn new(
        connector: Timed<HttpsConnector<HttpConnector>>,
        origin: Uri,
        connect_timeout: Duration,
    ) -> H2Pool {
        H2Pool {
            inner: Arc::new(Inner {
                connector,
                origin,
                connect_timeout,
                state: Mutex::new(State::default()),
                changed: Notify::new(),
                not_h2: AtomicBool::new(false),
                epoch: Instant::now(),
            }),
        }
    }

    /// Whether the upstream turned HTTP/2 down (every request goes over HTTP/1.1 then).
    pub(super) fn refused(&self) -> bool {
        self.inner.not_h2.load(Ordering::Relaxed)
    }

    /// Send on a connection with a free stream slot, opening one when all are full.
    pub(super) async fn request(
        &self,
        mut req: Request<Full<Bytes>>,
    ) -> Result<Response<ResponseBody>, H2Error> {
        let mut tries = 0;
        loop {
            let Some(slot) = self.inner.acquire().await.map_err(H2Error::Unsent)? else {
                return Err(H2Error::NotH2(Box::new(req)));
            };
            let mut send = slot.conn.send.clone();
            match send.try_send_request(req).await {
                Ok(resp) => {
                    return Ok(resp.map(|body| ResponseBody::new(body, Holds::Stream(slot))));
                }
                Err(mut e) => match e.take_message() {
                    // Never reached the connection (it closed meanwhile): another one may take it.
                    Some(back) if tries < CLOSED_RETRIES => {
                        slot.conn.broken.store(true, Ordering::Relaxed);
                        tries += 1;
                        req = back;
                    }
                    Some(_) => return Err(H2Error::Unsent(e.into_error().into())),
                    None => return Err(H2Error::Failed(e.into_error().into())),
                },
            }
        }
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock()
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// A stream slot; `None` when the upstream does not speak h2.
    async fn acquire(self: &Arc<Self>) -> Result<Option<Slot>, BoxError> {
        let mut waiting = Waiting {
            pool: self,
            counted: false,
        };
        let mut failures_before = None;
        loop {
            let changed = self.changed.notified();
            let mut changed = std::pin::pin!(changed);
            // Registered before the state is read, so no wake-up falls in between.
            changed.as_mut().enable();
            {
                let mut st = self.lock();
                if self.not_h2.load(Ordering::Relaxed) {
                    waiting.leave(&mut st);
                    return Ok(None);
                }
                self.prune(&mut st);
                // One pass: the least busy connection with a free slot (the first of equals),
                // and the free slots of all (`prune` just dropped the broken ones).
                let mut free_total = 0usize;
                let mut best: Option<(&Arc<Conn>, usize)> = None;
                for c in &st.conns {
                    let free = c.free();
                    free_total += free;
                    let busy = c.in_flight.load(Ordering::Relaxed);
                    if free > 0 && best.is_none_or(|(_, b)| busy < b) {
                        best = Some((c, busy));
                    }
                }
                if let Some((conn, _)) = best {
                    conn.in_flight.fetch_add(1, Ordering::AcqRel);
                    let slot = Slot {
                        conn: conn.clone(),
                        pool: self.clone(),
                    };
                    waiting.leave(&mut st);
                    self.open_spare(&mut st, free_total - 1);
                    return Ok(Some(slot));
                }
                let before = *failures_before.get_or_insert(st.failures);
                if st.failures != before
                    && let Some((kind, text)) = &st.last_failure
                {
                    // The connection this request waited for could not be opened.
                    let e = std::io::Error::new(*kind, text.clone());
                    waiting.leave(&mut st);
                    return Err(Box::new(e));
                }
                if !waiting.counted {
                    st.waiting += 1;
                    waiting.counted = true;
                }
                let coming = st
                    .opening
                    .saturating_mul(st.expected_streams.unwrap_or(ASSUMED_STREAMS));
                if st.waiting > coming {
                    st.opening += 1;
                    tokio::spawn(self.clone().open());
                }
            }
            changed.await;
        }
    }

    /// Drop connections that closed, and those idle past the idle timeout.
    fn prune(&self, st: &mut State) {
        let now = self.now_ms();
        let idle_ms = u64::try_from(IDLE_TIMEOUT.as_millis()).unwrap_or(u64::MAX);
        st.conns.retain(|c| {
            let idle = c.in_flight.load(Ordering::Acquire) == 0
                && now.saturating_sub(c.idle_since_ms.load(Ordering::Relaxed)) > idle_ms;
            !(c.send.is_closed() || c.broken.load(Ordering::Relaxed) || idle)
        });
    }
}
