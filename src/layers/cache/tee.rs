//! The miss path's tee: the answer passes to the client frame by frame, untouched and
//! unbuffered, while a copy of each frame is kept with its boundary. When the stream ends
//! cleanly the copy is checked and stored off the client's path; a stream that fails, is cut
//! or is left by its client stores nothing, and one over the entry limit stops being copied.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, SizeHint};

use super::policy::{self, Kind};
use crate::cache::ResponseCache;
use crate::cache::flight::{Landed, Lead};
use crate::cache::store::Entry;
use crate::ledger::UsageScanner;

/// What storing a finished answer needs.
pub struct Pending {
    pub cache: Arc<ResponseCache>,
    pub key: [u8; 32],
    pub model: String,
    pub kind: Kind,
    pub ttl: Duration,
    pub content_type: Option<String>,
    /// Input tokens to count as saved when the answer reports no usage (embeddings).
    pub fallback_input: u64,
    /// The flight this answer leads, if any.
    pub lead: Option<Lead>,
}

/// The answer's body with a copy kept (see the module docs).
pub struct Tee {
    inner: Body,
    chunks: Vec<Bytes>,
    size: usize,
    /// The announced length (`content-length`): the server stops polling once it is sent.
    expected: Option<usize>,
    pending: Option<Pending>,
}

impl Tee {
    pub fn new(inner: Body, expected: Option<usize>, pending: Pending) -> Tee {
        Tee {
            inner,
            chunks: Vec::new(),
            size: 0,
            expected,
            pending: Some(pending),
        }
    }

    fn keep(&mut self, chunk: &Bytes) {
        self.size += chunk.len();
        let Some(p) = &self.pending else { return };
        if self.size > p.cache.config.max_entry_bytes {
            // Too large to store: stop copying; the followers go on their own.
            self.chunks = Vec::new();
            if let Some(p) = self.pending.take()
                && let Some(lead) = p.lead
            {
                lead.land(Landed::Unstorable);
            }
            return;
        }
        self.chunks.push(chunk.clone());
    }

    /// The stream ended cleanly: check and store the copy, off the client's path.
    fn finish(&mut self) {
        let Some(p) = self.pending.take() else { return };
        let chunks = std::mem::take(&mut self.chunks);
        // Outside a runtime (an embedder dropping the body elsewhere) nothing is stored.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(store(p, chunks));
        }
    }
}

async fn store(p: Pending, chunks: Vec<Bytes>) {
    let mut whole = Vec::with_capacity(chunks.iter().map(Bytes::len).sum());
    for c in &chunks {
        whole.extend_from_slice(c);
    }
    if !policy::storable(p.kind, &whole) {
        if let Some(lead) = p.lead {
            lead.land(Landed::Unstorable);
        }
        return;
    }
    let usage = UsageScanner::scan_all(&whole).unwrap_or(crate::ledger::TokenUsage {
        input: p.fallback_input,
        ..Default::default()
    });
    // The entry's own buffer (the upstream's read buffers are not held for its life), cut
    // back into the frames as they came.
    let whole = Bytes::from(whole);
    let mut at = 0;
    let chunks = chunks
        .iter()
        .map(|c| {
            at += c.len();
            whole.slice(at - c.len()..at)
        })
        .collect();
    let entry = Arc::new(Entry {
        status: 200,
        content_type: p.content_type,
        model: p.model,
        stored_at_ms: crate::cache::now_ms(),
        ttl_ms: p.ttl.as_millis() as u64,
        usage,
        chunks,
    });
    p.cache.store.put(p.key, entry.clone()).await;
    // Counted before the flight lands (and leaves the map): see `ResponseCache::stored`.
    p.cache
        .stored
        .fetch_add(1, std::sync::atomic::Ordering::Release);
    if let Some(lead) = p.lead {
        lead.land(Landed::Stored(entry));
    }
}

impl HttpBody for Tee {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(chunk) = frame.data_ref() {
                    this.keep(chunk);
                }
                // A body that knows it is done, or has sent its announced length, may not be
                // polled again.
                if this.inner.is_end_stream() || this.expected == Some(this.size) {
                    this.finish();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                // Dropping the pending store lands its flight as failed.
                this.pending = None;
                this.chunks = Vec::new();
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                this.finish();
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A stored answer replayed: its chunks, one frame each, as they first came.
pub struct Replay {
    chunks: std::vec::IntoIter<Bytes>,
    left: u64,
    exact: bool,
}

impl Replay {
    /// `exact`: announce the length (a whole answer); a stream goes chunked, frame by frame.
    pub fn new(chunks: Vec<Bytes>, exact: bool) -> Replay {
        let left = chunks.iter().map(|c| c.len() as u64).sum();
        Replay {
            chunks: chunks.into_iter(),
            left,
            exact,
        }
    }
}

impl HttpBody for Replay {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let next = self.chunks.next();
        if let Some(c) = &next {
            self.left -= c.len() as u64;
        }
        Poll::Ready(next.map(|c| Ok(Frame::data(c))))
    }

    fn is_end_stream(&self) -> bool {
        self.chunks.len() == 0
    }

    fn size_hint(&self) -> SizeHint {
        if self.exact {
            SizeHint::with_exact(self.left)
        } else {
            SizeHint::default()
        }
    }
}

impl Drop for Tee {
    fn drop(&mut self) {
        // Ended but not polled to its end (a whole body whose last frame was taken): store.
        if self.pending.is_some() && self.inner.is_end_stream() {
            self.finish();
        }
    }
}
