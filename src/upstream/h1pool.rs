//! HTTP/1.1 to the upstream over a pool of our own: one request at a time per connection, the
//! connection lent with the answer and given back by the answer's body once read to the end
//! (hyper-util's pool spawned a task per request to wait for that, hashed its key with SipHash
//! twice and moved the request through several futures: a tenth of a proxied request's
//! instructions), the most recently used taken first, closed after [`IDLE_TIMEOUT`] idle.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::uri::{Authority, Scheme};
use http::{HeaderValue, Request, Response, Uri};
use http_body_util::Full;
use hyper::client::conn::http1::SendRequest;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use parking_lot::Mutex;
use tower_service::Service;

use super::body::{Holds, ResponseBody};
use super::connect::{BoxError, Timed};

/// The sending half of one HTTP/1.1 connection.
type Sender = SendRequest<Full<Bytes>>;

/// A connection idle this long is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Idle connections kept per origin (one per request that was in flight at once).
const MAX_IDLE: usize = 256;
/// Origins with a pool of their own; beyond, a connection per request. The upstreams are named
/// in the configuration, so this is never reached in practice; it bounds the state regardless.
const MAX_ORIGINS: usize = 16;
/// Sends retried on another connection when the one taken closed before taking the request
/// (the upstream closed it while idle).
const CLOSED_RETRIES: usize = 2;
/// How often idle connections past their timeout are looked for.
const SWEEP_EVERY: Duration = Duration::from_secs(30);

/// The pool of HTTP/1.1 connections, per origin.
pub(super) struct H1Pool {
    inner: Arc<Inner>,
}

struct Inner {
    connector: Timed<HttpsConnector<HttpConnector>>,
    origins: Mutex<Origins>,
}

#[derive(Default)]
struct Origins {
    list: Vec<Origin>,
    /// The task that closes connections idle past their timeout runs.
    sweeping: bool,
}

struct Origin {
    scheme: Scheme,
    authority: Authority,
    /// The `Host` header for it: the authority, without the port when it is the default.
    host: HeaderValue,
    /// Idle connections, the most recently used last; each with when it was given back.
    idle: VecDeque<(Sender, Instant)>,
}

/// Why [`H1Pool::request`] got no answer head.
pub(super) enum H1Error {
    /// The request never left (no connection could be opened).
    Unsent(BoxError),
    /// It may have been sent.
    Failed(BoxError),
}

/// A connection lent to one request: given back to the pool by its answer's body when read to
/// the end; dropped otherwise (closing the connection, which holds an unread answer).
pub(super) struct Lent {
    send: Sender,
    pool: Weak<Inner>,
    origin: Option<usize>,
}

impl Lent {
    /// Give the connection back for the next request (once it has seen the answer's end,
    /// which it usually has by the time the body's last bytes are read).
    pub(super) fn give_back(mut self) {
        if self.send.is_closed() {
            return;
        }
        if self.send.is_ready() {
            self.keep();
            return;
        }
        // Dropped outside a runtime (at shutdown): the connection just closes.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if self.send.ready().await.is_ok() {
                    self.keep();
                }
            });
        }
    }

    fn keep(self) {
        let (Some(pool), Some(origin)) = (self.pool.upgrade(), self.origin) else {
            return;
        };
        let mut origins = pool.origins.lock();
        let Some(o) = origins.list.get_mut(origin) else {
            return;
        };
        if o.idle.len() >= MAX_IDLE {
            o.idle.pop_front();
        }
        o.idle.push_back((self.send, Instant::now()));
    }
}

impl H1Pool {
    pub(super) fn new(connector: Timed<HttpsConnector<HttpConnector>>) -> H1Pool {
        H1Pool {
            inner: Arc::new(Inner {
                connector,
                origins: Mutex::new(Origins::default()),
            }),
        }
    }

    /// Send `req` (its URI absolute) on an idle connection to its origin, or a new one. The
    /// origin is looked up and the request put in origin form before the future is made; the
    /// future keeps the request once (an `async fn` keeps its arguments twice,
    /// rust-lang/rust#62958).
    pub(super) fn request(
        &self,
        mut req: Request<Full<Bytes>>,
    ) -> impl Future<Output = Result<Response<ResponseBody>, H1Error>> + '_ {
        let prepared = self.prepare(&mut req);
        async move {
            let (origin, mut idle, absolute) = prepared?;
            let mut tries = 0;
            loop {
                let (mut send, reused) = match idle.take() {
                    Some(send) => (send, true),
                    // Boxed: rare once the pool is warm, and larger than the rest.
                    None => (
                        crate::boxed::apart(|| self.inner.open(&absolute)).await?,
                        false,
                    ),
                };
                match send.try_send_request(req).await {
                    Ok(resp) => {
                        let lent = Lent {
                            send,
                            pool: Arc::downgrade(&self.inner),
                            origin,
                        };
                        return Ok(
                            resp.map(|body| ResponseBody::new(body, Holds::Connection(lent)))
                        );
                    }
                    Err(mut e) => match e.take_message() {
                        // Never reached the connection (it closed meanwhile): another may
                        // take it.
                        Some(back) if reused && tries < CLOSED_RETRIES => {
                            tries += 1;
                            req = back;
                            idle = self.inner.take(origin);
                        }
                        // A connection just opened that closed at once (the upstream
                        // accepted and reset it): counted as possibly sent, as hyper-util's
                        // client did, so the quota step does not send it again elsewhere.
                        _ => return Err(H1Error::Failed(e.into_error().into())),
                    },
                }
            }
        }
    }

    /// The request's origin (its index, `None` when not pooled), an idle connection to it if
    /// one is ready, and its absolute URL (for the connector); the request put in origin form
    /// (`POST /v1beta/... HTTP/1.1`) with the authority in `Host`.
    fn prepare(
        &self,
        req: &mut Request<Full<Bytes>>,
    ) -> Result<(Option<usize>, Option<Sender>, Uri), H1Error> {
        let (origin, host, idle) = match (req.uri().scheme(), req.uri().authority()) {
            (Some(scheme), Some(authority)) => self.inner.checkout(scheme, authority),
            _ => {
                return Err(H1Error::Unsent(
                    format!("not an absolute URL: {}", req.uri().path()).into(),
                ));
            }
        };
        let path = req
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
        let absolute = std::mem::replace(req.uri_mut(), Uri::from(path));
        req.headers_mut().entry(http::header::HOST).or_insert(host);
        Ok((origin, idle, absolute))
    }
}

impl Inner {
    /// The origin's index (`None` past [`MAX_ORIGINS`]: not pooled), its `Host` header and its
    /// most recently used idle connection that is ready, in one look.
    fn checkout(
        self: &Arc<Self>,
        scheme: &Scheme,
        authority: &Authority,
    ) -> (Option<usize>, HeaderValue, Option<Sender>) {
        let mut origins = self.origins.lock();
        let found = origins
            .list
            .iter()
            .position(|o| o.authority == *authority && o.scheme == *scheme);
        let i = match found {
            Some(i) => i,
            None if origins.list.len() >= MAX_ORIGINS => {
                return (None, Origin::new(scheme, authority).host, None);
            }
            None => {
                origins.list.push(Origin::new(scheme, authority));
                if !std::mem::replace(&mut origins.sweeping, true) {
                    tokio::spawn(sweep(Arc::downgrade(self)));
                }
                origins.list.len() - 1
            }
        };
        let o = &mut origins.list[i];
        (Some(i), o.host.clone(), take_idle(&mut o.idle))
    }

    /// The most recently used idle connection to `origin` that is ready.
    fn take(&self, origin: Option<usize>) -> Option<Sender> {
        let mut origins = self.origins.lock();
        take_idle(&mut origins.list.get_mut(origin?)?.idle)
    }

    /// A new connection: TCP and TLS within the connect timeout ([`Timed`]), then HTTP/1.1 on
    /// it, driven by a task of its own.
    async fn open(&self, uri: &Uri) -> Result<Sender, H1Error> {
        let io = self
            .connector
            .clone()
            .call(uri.clone())
            .await
            .map_err(H1Error::Unsent)?;
        let (send, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| H1Error::Unsent(e.into()))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream HTTP/1.1 connection ended");
            }
        });
        Ok(send)
    }
}

/// The most recently given back of `idle` that is ready; the closed ones met on the way, and
/// all once one is past the idle timeout (the rest are older), dropped (which closes them).
fn take_idle(idle: &mut VecDeque<(Sender, Instant)>) -> Option<Sender> {
    let now = Instant::now();
    while let Some((send, since)) = idle.pop_back() {
        if now.saturating_duration_since(since) > IDLE_TIMEOUT {
            idle.clear();
            return None;
        }
        if send.is_ready() {
            return Some(send);
        }
    }
    None
}

impl Origin {
    fn new(scheme: &Scheme, authority: &Authority) -> Origin {
        let default_port = if *scheme == Scheme::HTTPS { 443 } else { 80 };
        let host = match authority.port_u16() {
            Some(p) if p == default_port => authority.host(),
            _ => authority.as_str(),
        };
        Origin {
            scheme: scheme.clone(),
            authority: authority.clone(),
            host: HeaderValue::from_str(host).unwrap_or_else(|_| HeaderValue::from_static("")),
            idle: VecDeque::new(),
        }
    }
}

/// Close connections idle past [`IDLE_TIMEOUT`], and those the upstream closed, until the pool
/// is gone.
async fn sweep(pool: Weak<Inner>) {
    loop {
        tokio::time::sleep(SWEEP_EVERY).await;
        let Some(pool) = pool.upgrade() else {
            return;
        };
        let now = Instant::now();
        let mut closed = 0;
        for o in &mut pool.origins.lock().list {
            let before = o.idle.len();
            o.idle.retain(|(send, since)| {
                !send.is_closed() && now.saturating_duration_since(*since) <= IDLE_TIMEOUT
            });
            closed += before - o.idle.len();
        }
        if closed > 0 {
            tracing::debug!(closed, "idle upstream HTTP/1.1 connections closed");
        }
    }
}
