//! The streamed response body: passes upstream bytes through untouched while reading the
//! last `promptTokenCount`, enforces the idle gap and the whole-request deadline, and settles
//! the reservation when the stream ends, fails or the client goes away.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame};
use memchr::memmem;
use tokio::time::{Instant, Sleep};

use crate::quota::Settlement;

/// Finds the last reported input-token count in a byte stream, whatever its framing (JSON,
/// SSE, JSON array), without parsing JSON and without copying the body. Google's stream usage
/// is cumulative, so the last value seen is the total.
#[derive(Debug, Default)]
pub struct UsageScanner {
    last: Option<u64>,
    /// The tail of the previous chunk, for a match split across two chunks.
    carry: Vec<u8>,
}

const NEEDLES: [&[u8]; 2] = [b"\"promptTokenCount\"", b"\"prompt_tokens\""];
/// The needles' searchers, built once (building one per chunk showed in profiles).
static FINDERS: std::sync::LazyLock<[memmem::Finder<'static>; 2]> =
    std::sync::LazyLock::new(|| NEEDLES.map(memmem::Finder::new));
/// Longer than a needle, a colon, some spaces and a 20-digit number.
const WINDOW: usize = 48;

impl UsageScanner {
    pub fn feed(&mut self, chunk: &[u8]) {
        // Matches that start in the carried tail of the stream and end in this chunk.
        let head = &chunk[..chunk.len().min(WINDOW)];
        self.carry.extend_from_slice(head);
        let joined = std::mem::take(&mut self.carry);
        self.scan(&joined);
        self.carry = joined;
        self.scan(chunk);
        // Keep the last WINDOW bytes of the stream so far.
        if chunk.len() >= WINDOW {
            self.carry.clear();
            self.carry.extend_from_slice(&chunk[chunk.len() - WINDOW..]);
        } else {
            let excess = self.carry.len().saturating_sub(WINDOW);
            self.carry.drain(..excess);
        }
    }

    fn scan(&mut self, hay: &[u8]) {
        for finder in FINDERS.iter() {
            let len = finder.needle().len();
            for pos in finder.find_iter(hay) {
                if let Some(n) = number_after(&hay[pos + len..]) {
                    self.last = Some(n);
                }
            }
        }
    }

    /// The count in a whole body.
    pub fn scan_all(body: &[u8]) -> Option<u64> {
        let mut s = UsageScanner::default();
        s.scan(body);
        s.last
    }

    /// The last count seen, if any.
    pub fn tokens(&self) -> Option<u64> {
        self.last
    }
}

/// `  : 1234` → 1234. `None` when no complete number follows.
fn number_after(rest: &[u8]) -> Option<u64> {
    let mut i = 0;
    while i < rest.len() && rest[i].is_ascii_whitespace() {
        i += 1;
    }
    if rest.get(i) != Some(&b':') {
        return None;
    }
    i += 1;
    while i < rest.len() && rest[i].is_ascii_whitespace() {
        i += 1;
    }
    let start = i;
    while i < rest.len() && rest[i].is_ascii_digit() {
        i += 1;
    }
    // A number running into the end of the buffer may continue in the next chunk.
    if i == start || i == rest.len() {
        return None;
    }
    std::str::from_utf8(&rest[start..i]).ok()?.parse().ok()
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
    settlement: Option<Settlement>,
    done: bool,
}

impl<B> ProxyBody<B> {
    /// `deadline`: the whole-request limit of a non-streaming answer; without one (a stream)
    /// the body gets the idle-gap limit instead.
    pub fn new(
        inner: B,
        idle: Duration,
        deadline: Option<Instant>,
        settlement: Option<Settlement>,
    ) -> Self {
        ProxyBody {
            prefix: None,
            inner,
            idle,
            idle_timer: deadline
                .is_none()
                .then(|| Box::pin(tokio::time::sleep(idle))),
            deadline: deadline.map(|d| Box::pin(tokio::time::sleep_until(d))),
            scanner: settlement.as_ref().map(|_| UsageScanner::default()),
            settlement,
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
        if let Some(s) = self.settlement.take() {
            s.settle(self.scanner.as_ref().and_then(UsageScanner::tokens));
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

#[cfg(test)]
mod tests {
    use super::*;

    fn scan_in_pieces(s: &str, piece: usize) -> Option<u64> {
        let mut sc = UsageScanner::default();
        for c in s.as_bytes().chunks(piece) {
            sc.feed(c);
        }
        sc.tokens()
    }

    #[test]
    fn keeps_the_last_cumulative_count_never_a_sum() {
        let sse = "data: {\"usageMetadata\": {\"promptTokenCount\": 12, \"totalTokenCount\": 14}}\r\n\r\n\
                   data: {\"usageMetadata\": {\"promptTokenCount\": 12, \"totalTokenCount\": 30}}\r\n\r\n";
        for piece in [1, 2, 3, 7, 16, 1000] {
            assert_eq!(scan_in_pieces(sse, piece), Some(12), "piece {piece}");
        }
        let grows = "[{\"usageMetadata\":{\"promptTokenCount\":5}},\n{\"usageMetadata\":{\"promptTokenCount\": 1234}}]";
        for piece in [1, 5, 9, 1000] {
            assert_eq!(scan_in_pieces(grows, piece), Some(1234), "piece {piece}");
        }
    }

    #[test]
    fn ignores_the_name_inside_generated_text_and_reads_openai_usage() {
        let body =
            r#"{"candidates":[{"content":{"parts":[{"text":"say \"promptTokenCount\": 99"}]}}]}"#;
        assert_eq!(scan_in_pieces(body, 1000), None);
        let openai = r#"{"usage":{"prompt_tokens": 77,"completion_tokens":3}}"#;
        assert_eq!(scan_in_pieces(openai, 4), Some(77));
    }
}
