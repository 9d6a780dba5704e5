//! The streamed response body: passes upstream bytes through untouched while reading the
//! last usage object, enforces the idle gap and the whole-request deadline, and settles the
//! reservation and records the usage ([`AtEnd`]) when the stream ends, fails or the client goes
//! away. A client that leaves before a non-streaming answer's usage arrives does not make the
//! request free: Google ran it. The rest of that answer is read in the background when it is
//! small ([`DRAIN_LIMIT`], [`DRAIN_TIME`]) to record its real usage; otherwise its estimate
//! stays counted.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame};
use tokio::time::{Instant, Sleep};

use crate::ledger::{ImageCounter, Tally, TokenUsage, UsageScanner};
use crate::quota::Settlement;

/// Most bytes read, after the client left, from the rest of a non-streaming answer to find
/// its usage; a larger rest is dropped and the estimate recorded.
pub const DRAIN_LIMIT: usize = 1024 * 1024;
/// Longest time spent reading that rest (never past the request's own deadline).
pub const DRAIN_TIME: Duration = Duration::from_secs(10);

/// What happens when an answer's body ends: its reservation settles to the input tokens Google
/// reported (an image call's: the images it returned), and the ledger records its tokens and
/// cost.
#[derive(Default)]
pub struct AtEnd {
    pub settlement: Option<Settlement>,
    pub tally: Option<Tally>,
    /// An image call's answer: its images, counted as it passes (the answer's usage).
    pub images: Option<ImageCounter>,
    /// Prices the answer's usage in micro-dollars for its client's budgets (`None`: its
    /// reservation holds no budget).
    pub pricer: Option<Pricer>,
}

/// Prices an answer's usage in micro-dollars.
pub type Pricer = Box<dyn Fn(&TokenUsage) -> u64 + Send + Sync>;

impl AtEnd {
    pub fn is_empty(&self) -> bool {
        self.settlement.is_none() && self.tally.is_none()
    }

    /// Read a chunk of the answer for what it counts besides usage (its images).
    pub fn feed(&mut self, chunk: &[u8]) {
        if let Some(c) = self.images.as_mut() {
            c.feed(chunk);
        }
    }

    /// Settle and record with the last usage read (`None`: the answer reported none), or, for
    /// an image call, with the images the whole answer held.
    pub fn close(self, usage: Option<TokenUsage>) {
        let (usage, settle_to) = match &self.images {
            Some(c) => (
                Some(TokenUsage {
                    images: c.count(),
                    ..TokenUsage::default()
                }),
                Some(c.count()),
            ),
            None => (usage, usage.map(|u| u.input)),
        };
        if let Some(s) = self.settlement {
            s.settle_costed(settle_to, price(&self.pricer, usage.as_ref()));
        }
        if let Some(t) = self.tally {
            t.close(usage);
        }
    }

    /// Settle and record an answer whose end was not seen (its client left, or it broke off):
    /// with its usage if any was read, else with the estimate as its input tokens, since
    /// Google ran the request. Recording no usage would refund it and make it free.
    pub fn close_unfinished(self, usage: Option<TokenUsage>) {
        let estimate = self
            .settlement
            .as_ref()
            .and_then(Settlement::reservation)
            .map_or(0, |r| r.tokens);
        if let Some(s) = self.settlement {
            let cost = price(&self.pricer, usage.as_ref());
            s.settle_costed(Some(usage.map_or(estimate, |u| u.input)), cost);
        }
        if let Some(t) = self.tally {
            t.close_unfinished(usage, estimate);
        }
    }
}

/// The answer's cost, when it reported usage and has a price to pay.
fn price(pricer: &Option<Pricer>, usage: Option<&TokenUsage>) -> Option<u64> {
    Some(pricer.as_ref()?(usage?))
}

/// Why a stream stopped early.
#[derive(Debug, thiserror::Error)]
enum StreamCut {
    #[error("upstream sent nothing for {0:?}")]
    Idle(Duration),
    #[error("upstream did not finish within the request timeout")]
    Deadline,
    #[error("upstream stream failed: {0}")]
    Upstream(String),
}

/// The body handed to the client: hyper's upstream body polled frame by frame (no stream
/// adapter, no copy).
pub struct ProxyBody<B> {
    /// Bytes already read from `inner` (an answer read to learn from it, a create call's or an
    /// error's, found too large to hold): sent first.
    prefix: Option<Bytes>,
    /// `None` only once dropped (handed to the background read).
    inner: Option<B>,
    idle: Duration,
    /// Streams only: the longest gap between chunks.
    idle_timer: Option<Pin<Box<Sleep>>>,
    deadline: Option<Pin<Box<Sleep>>>,
    deadline_at: Option<Instant>,
    scanner: Option<UsageScanner>,
    at_end: Option<AtEnd>,
    done: bool,
    /// A non-streaming answer only: reads the rest of the body in the background, once the
    /// client has left, to learn its usage (made where `B`'s bounds are known).
    drain: Option<fn(Drain<B>)>,
}

/// What the background read of an abandoned answer needs.
pub struct Drain<B> {
    inner: B,
    scanner: UsageScanner,
    at_end: AtEnd,
    until: Instant,
}

impl<B> ProxyBody<B>
where
    B: HttpBody<Data = Bytes> + Send + Unpin + 'static,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    /// `deadline`: the whole-request limit of a non-streaming answer; without one (a stream)
    /// the body gets the idle-gap limit instead.
    pub fn new(inner: B, idle: Duration, deadline: Option<Instant>, at_end: AtEnd) -> Self {
        let drain: Option<fn(Drain<B>)> = deadline.map(|_| drain_in_background::<B> as fn(_));
        let at_end = (!at_end.is_empty()).then_some(at_end);
        ProxyBody {
            prefix: None,
            inner: Some(inner),
            idle,
            idle_timer: deadline
                .is_none()
                .then(|| Box::pin(tokio::time::sleep(idle))),
            deadline: deadline.map(|d| Box::pin(tokio::time::sleep_until(d))),
            deadline_at: deadline,
            scanner: at_end.as_ref().map(|_| UsageScanner::default()),
            at_end,
            done: false,
            drain,
        }
    }
}

impl<B> ProxyBody<B> {
    /// Send `prefix` (already taken from the upstream body) before the rest of the body.
    pub fn with_prefix(mut self, prefix: Bytes) -> Self {
        if let Some(s) = self.scanner.as_mut() {
            s.feed(&prefix);
        }
        if let Some(e) = self.at_end.as_mut() {
            e.feed(&prefix);
        }
        self.prefix = Some(prefix);
        self
    }

    fn finish(&mut self) {
        self.done = true;
        if let Some(e) = self.at_end.take() {
            e.close(self.scanner.as_ref().and_then(UsageScanner::usage));
        }
    }

    fn cut(&mut self, why: StreamCut) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        tracing::warn!(reason = %why, "response stream cut");
        self.done = true;
        if let Some(e) = self.at_end.take() {
            e.close_unfinished(self.scanner.as_ref().and_then(UsageScanner::usage));
        }
        Poll::Ready(Some(Err(std::io::Error::other(why))))
    }
}

/// Read the rest of an abandoned answer (at most [`DRAIN_LIMIT`] bytes, until `until`) in a
/// task of its own, then settle and record it with the usage found, or with its estimate.
fn drain_in_background<B>(d: Drain<B>)
where
    B: HttpBody<Data = Bytes> + Send + Unpin + 'static,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        d.at_end.close_unfinished(d.scanner.usage());
        return;
    };
    handle.spawn(async move {
        let Drain {
            mut inner,
            mut scanner,
            mut at_end,
            until,
        } = d;
        let read = async {
            let mut read = 0usize;
            while let Some(frame) = http_body_util::BodyExt::frame(&mut inner).await {
                let Ok(frame) = frame else { return false };
                if let Some(chunk) = frame.data_ref() {
                    scanner.feed(chunk);
                    at_end.feed(chunk);
                    read += chunk.len();
                    if read > DRAIN_LIMIT {
                        return false;
                    }
                }
            }
            true
        };
        let whole = matches!(tokio::time::timeout_at(until, read).await, Ok(true));
        if whole {
            // Read to its end: settled as if the client had stayed.
            at_end.close(scanner.usage());
        } else {
            tracing::info!(
                limit = DRAIN_LIMIT,
                "the client left before an answer's usage arrived, and its rest was too large or slow to read: its estimate is recorded"
            );
            at_end.close_unfinished(scanner.usage());
        }
    });
}

impl<B> HttpBody for ProxyBody<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        if let Some(prefix) = this.prefix.take() {
            return Poll::Ready(Some(Ok(Frame::data(prefix))));
        }
        if let Some(d) = this.deadline.as_mut()
            && d.as_mut().poll(cx).is_ready()
        {
            return this.cut(StreamCut::Deadline);
        }
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(chunk) = frame.data_ref() {
                    if let Some(s) = this.scanner.as_mut() {
                        s.feed(chunk);
                    }
                    if let Some(e) = this.at_end.as_mut() {
                        e.feed(chunk);
                    }
                    let idle = this.idle;
                    if let Some(t) = this.idle_timer.as_mut() {
                        t.as_mut().reset(Instant::now() + idle);
                    }
                }
                // With a known length, hyper stops polling once it has the last byte: the
                // answer ended here, whether or not the body is polled again.
                if this.inner.as_ref().is_some_and(HttpBody::is_end_stream) {
                    this.finish();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.cut(StreamCut::Upstream(crate::upstream::describe_error(&e)))
            }
            Poll::Ready(None) => {
                this.finish();
                Poll::Ready(None)
            }
            Poll::Pending => {
                if let Some(t) = this.idle_timer.as_mut()
                    && t.as_mut().poll(cx).is_ready()
                {
                    let idle = this.idle;
                    return this.cut(StreamCut::Idle(idle));
                }
                Poll::Pending
            }
        }
    }

    // No size hint: the upstream's content-length header, passed on, tells the client; an
    // exact hint that disagreed with it (a 304's empty body) would trip hyper's checks.
    fn is_end_stream(&self) -> bool {
        self.done
    }
}

impl<B> Drop for ProxyBody<B> {
    fn drop(&mut self) {
        // The client went away (or the server is shutting down): Google ran the request.
        if self.done {
            return;
        }
        self.done = true;
        let Some(at_end) = self.at_end.take() else {
            return;
        };
        let scanner = self.scanner.take().unwrap_or_default();
        if scanner.usage().is_some() {
            at_end.close(scanner.usage());
            return;
        }
        // A non-streaming answer whose usage has not come yet: its rest is read for it.
        let drain = self.drain.take();
        let until =
            (Instant::now() + DRAIN_TIME).min(self.deadline_at.unwrap_or_else(Instant::now));
        match (drain, self.inner.take()) {
            (Some(drain), Some(inner)) => drain(Drain {
                inner,
                scanner,
                at_end,
                until,
            }),
            _ => at_end.close_unfinished(None),
        }
    }
}
