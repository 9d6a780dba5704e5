//! An upstream answer's body: hyper's, and what it holds of the pool until it ends (an HTTP/2
//! stream slot, or an HTTP/1.1 connection to give back).

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body as _, Frame, Incoming};

use super::h1pool::Lent;
use super::h2pool::Slot;

/// What an answer's body holds of its pool until it ends.
pub(super) enum Holds {
    Nothing,
    /// An HTTP/2 stream slot: freed when the body ends or is dropped.
    Stream(#[expect(dead_code, reason = "held for its Drop, which frees the slot")] Slot),
    /// An HTTP/1.1 connection: given back when the body has been read to its end, closed when
    /// the body is dropped before (the connection holds the rest of an unread answer).
    Connection(Lent),
}

/// An upstream answer's body.
pub struct ResponseBody {
    inner: Incoming,
    holds: Holds,
}

impl ResponseBody {
    pub(super) fn new(inner: Incoming, holds: Holds) -> Self {
        ResponseBody { inner, holds }
    }

    fn release(&mut self) {
        if let Holds::Connection(lent) = std::mem::replace(&mut self.holds, Holds::Nothing) {
            lent.give_back();
        }
    }
}

impl hyper::body::Body for ResponseBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.release(),
            Poll::Ready(Some(Ok(_))) if self.inner.is_end_stream() => self.release(),
            // A failed body leaves its connection unusable: closed.
            Poll::Ready(Some(Err(_))) => self.holds = Holds::Nothing,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        // An answer with nothing left to read (no body, or all of it read and its end not
        // polled) leaves its connection reusable.
        if self.inner.is_end_stream() {
            self.release();
        }
    }
}
