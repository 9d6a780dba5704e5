//! The streamed response body: passes upstream bytes through untouched while reading the
//! last usage object, enforces the idle gap and the whole-request deadline, and settles the
//! reservation and records the usage ([`AtEnd`]) when the stream ends, fails or the client goes
//! away.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame};
use tokio::time::{Instant, Sleep};

use crate::ledger::{Tally, TokenUsage, UsageScanner};
use crate::quota::Settlement;

/// What happens when an answer's body ends: its reservation settles to the input tokens Google
/// reported, and the ledger records its tokens and cost.
#[derive(Default)]
pub struct AtEnd {
    pub settlement: Option<Settlement>,
    pub tally: Option<Tally>,
}

impl AtEnd {
    pub fn is_empty(&self) -> bool {
        self.settlement.is_none() && self.tally.is_none()
    }

    /// Settle and record with the last usage read (`None`: the answer reported none).
    pub fn close(self, usage: Option<TokenUsage>) {
        if let Some(s) = self.settlement {
            s.settle(usage.map(|u| u.input));
        }
        if let Some(t) = self.tally {
            t.close(usage);
        }
    }
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
    inner: B,
    idle: Duration,
    /// Streams only: the longest gap between chunks.
    idle_timer: Option<Pin<Box<Sleep>>>,
    deadline: Option<Pin<Box<Sleep>>>,
    scanner: Option<UsageScanner>,
    at_end: Option<AtEnd>,
    done: bool,
}

impl<B> ProxyBody<B> {
    /// `deadline`: the whole-request limit of a non-streaming answer; without one (a stream)
    /// the body gets the idle-gap limit instead.
    pub fn new(inner: B, idle: Duration, deadline: Option<Instant>, at_end: AtEnd) -> Self {
        let at_end = (!at_end.is_empty()).then_some(at_end);
        ProxyBody {
            prefix: None,
            inner,
            idle,
            idle_timer: deadline
                .is_none()
                .then(|| Box::pin(tokio::time::sleep(idle))),
            deadline: deadline.map(|d| Box::pin(tokio::time::sleep_until(d))),
            scanner: at_end.as_ref().map(|_| UsageScanner::default()),
            at_end,
            done: false,
        }
    }

    /// Send `prefix` (already taken from the upstream body) before the rest of the body.
    pub fn with_prefix(mut self, prefix: Bytes) -> Self {
        if let Some(s) = self.scanner.as_mut() {
            s.feed(&prefix);
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
        self.finish();
        Poll::Ready(Some(Err(std::io::Error::other(why))))
    }
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
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(chunk) = frame.data_ref() {
                    if let Some(s) = this.scanner.as_mut() {
                        s.feed(chunk);
                    }
                    let idle = this.idle;
                    if let Some(t) = this.idle_timer.as_mut() {
                        t.as_mut().reset(Instant::now() + idle);
                    }
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
        // The client went away (or the server is shutting down): what was seen still settles.
        if !self.done {
            self.finish();
        }
    }
}
