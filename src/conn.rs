//! What one client connection may hold, so that nobody locks everyone out: a cap on the
//! connections of one source address, and the idle and handshake timeouts that close a
//! connection with no request in flight (HTTP/1.1 keep-alive and HTTP/2 alike).

use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// The address a limit counts: an IPv4 address (an IPv4-mapped IPv6 one as IPv4), or an IPv6
/// address's /64, since one host usually holds a whole /64.
pub fn source(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// Open connections per source, at most `cap` each. Only sources with an open connection
/// have an entry, so the map never outgrows `server.max_connections`.
#[derive(Debug)]
pub struct PerSource {
    cap: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

impl PerSource {
    pub fn new(cap: usize) -> Arc<PerSource> {
        Arc::new(PerSource {
            cap,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// A slot for a new connection from `ip`, or `None` when its source is at the cap.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<SourceSlot> {
        let source = source(ip);
        let mut open = self.open.lock();
        let n = open.entry(source).or_insert(0);
        if *n >= self.cap {
            if *n == 0 {
                open.remove(&source);
            }
            return None;
        }
        *n += 1;
        Some(SourceSlot {
            table: self.clone(),
            source,
        })
    }

    /// Sources with an open connection (for tests of the bound).
    pub fn sources(&self) -> usize {
        self.open.lock().len()
    }
}

/// One open connection of a source: released when dropped (the connection closed).
#[derive(Debug)]
pub struct SourceSlot {
    table: Arc<PerSource>,
    source: IpAddr,
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut open = self.table.open.lock();
        if let Some(n) = open.get_mut(&self.source) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.source);
            }
        }
    }
}

/// Requests in flight on one connection, and when the last one ended. A request counts from
/// its arrival until its response body is done, so a long stream keeps its connection.
///
/// Nothing here wakes the idle watcher: a request's start and end only count and stamp, and
/// the watcher looks when its timer fires (once per idle period while the connection is busy).
/// Waking it at each request's start and end cost a notification, a task wake-up and a timer
/// set and cancelled per request.
#[derive(Debug)]
pub struct Activity {
    in_flight: AtomicUsize,
    served: AtomicBool,
    last: Mutex<Instant>,
}

impl Activity {
    pub fn new() -> Arc<Activity> {
        Arc::new(Activity {
            in_flight: AtomicUsize::new(0),
            served: AtomicBool::new(false),
            last: Mutex::new(Instant::now()),
        })
    }

    /// A request arrived: the connection is busy until the returned guard drops.
    pub fn begin(self: &Arc<Self>) -> Busy {
        self.served.store(true, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        Busy(self.clone())
    }

    /// Resolves once the connection has had no request in flight for `idle` (or, before its
    /// first request, for `handshake`).
    pub async fn idle(&self, handshake: Duration, idle: Duration) {
        loop {
            let limit = if self.served.load(Ordering::Relaxed) {
                idle
            } else {
                handshake
            };
            // Busy: look again a whole period later (its end restarts the clock anyway).
            if self.in_flight.load(Ordering::Acquire) > 0 {
                tokio::time::sleep(limit).await;
                continue;
            }
            let deadline = *self.last.lock() + limit;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

/// A future of the connection's task polled only when its own waker fired: the idle watcher
/// and the shutdown signal sit beside the connection in one `select!`, which polls every branch
/// at each of the connection's wake-ups (five a request); through this, a branch whose timer or
/// signal did not fire costs a flag's check.
pub struct OnWake<F> {
    inner: std::pin::Pin<Box<F>>,
    flag: Arc<WakeFlag>,
}

#[derive(Default)]
struct WakeFlag {
    woken: AtomicBool,
    task: futures_util::task::AtomicWaker,
}

impl std::task::Wake for WakeFlag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl<F: std::future::Future> OnWake<F> {
    pub fn new(inner: F) -> OnWake<F> {
        let flag = Arc::new(WakeFlag::default());
        // Polled the first time.
        flag.woken.store(true, Ordering::Relaxed);
        OnWake {
            inner: Box::pin(inner),
            flag,
        }
    }
}

impl<F: std::future::Future> std::future::Future for OnWake<F> {
    type Output = F::Output;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        self.flag.task.register(cx.waker());
        if !self.flag.woken.swap(false, Ordering::AcqRel) {
            return std::task::Poll::Pending;
        }
        let waker = std::task::Waker::from(self.flag.clone());
        self.inner
            .as_mut()
            .poll(&mut std::task::Context::from_waker(&waker))
    }
}

/// A request in flight (see [`Activity::begin`]).
#[derive(Debug)]
pub struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        *self.0.last.lock() = Instant::now();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its connection busy until it ends or is dropped. It passes the
/// body's size on: a mapping wrapper hid it, and every answer went out chunked (a WebSocket
/// client reads a refusal's body only when its length is given).
pub struct BusyBody<B> {
    inner: B,
    _busy: Busy,
}

impl<B> BusyBody<B> {
    pub fn new(inner: B, busy: Busy) -> Self {
        BusyBody { inner, _busy: busy }
    }
}

impl<B: hyper::body::Body + Unpin> hyper::body::Body for BusyBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<B::Data>, B::Error>>> {
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// Whether the bytes waiting on `stream` are HTTP/2's connection preface, found by peeking
/// (the bytes stay for hyper to read). A partial preface waits for more bytes to arrive, not
/// on a timer: the readiness the peek saw is cleared, so the task sleeps until the socket has
/// new data. `None`: the client closed or errored.
#[cfg(unix)]
pub async fn sniff(stream: &tokio::net::TcpStream, preface: &[u8]) -> Option<bool> {
    use std::os::fd::AsRawFd;
    use tokio::io::Interest;
    let mut buf = [0u8; 64];
    let want = preface.len().min(buf.len());
    loop {
        stream.readable().await.ok()?;
        let peeked = stream.try_io(Interest::READABLE, || {
            // SAFETY: recv into a buffer we own, of its length, on a descriptor we hold.
            let n = unsafe {
                libc::recv(
                    stream.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    want,
                    libc::MSG_PEEK,
                )
            };
            if n < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let n = n as usize;
            if n > 0 && n < want && buf[..n] == preface[..n] {
                // The start of the preface only: wait for the socket's next data (a
                // WouldBlock here clears the readiness this peek consumed).
                return Err(std::io::ErrorKind::WouldBlock.into());
            }
            Ok(n)
        });
        match peeked {
            Ok(0) => return None,
            Ok(n) => return Some(buf[..n] == preface[..n] && n == want),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(_) => return None,
        }
    }
}

/// Elsewhere: peek, and look again shortly on a partial preface.
#[cfg(not(unix))]
pub async fn sniff(stream: &tokio::net::TcpStream, preface: &[u8]) -> Option<bool> {
    let mut buf = [0u8; 64];
    let want = preface.len().min(buf.len());
    loop {
        let n = stream.peek(&mut buf[..want]).await.ok()?;
        if n == 0 {
            return None;
        }
        if buf[..n] != preface[..n] {
            return Some(false);
        }
        if n == want {
            return Some(true);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ipv6_source_is_its_64_and_a_mapped_ipv4_is_ipv4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        assert_eq!(source(a), source(b));
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(source(mapped), "10.0.0.1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn a_source_gets_its_cap_and_its_slots_back_when_connections_close() {
        let table = PerSource::new(2);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        let (a, b) = (table.admit(ip).unwrap(), table.admit(ip).unwrap());
        assert!(table.admit(ip).is_none(), "the third is over the cap");
        let c = table.admit(other).expect("another source is not affected");
        drop(a);
        let a = table.admit(ip).expect("a closed connection frees its slot");
        drop((a, b, c));
        assert_eq!(table.sources(), 0, "no entry without an open connection");
    }
}
