//! A batch job's results file costed as it is downloaded through the proxy: the JSONL body
//! (one `{"key", "response": {..., "usageMetadata"}}` a line) passes untouched while each
//! line's `usageMetadata` is added up, a line held at most [`LINE_CAP`] bytes (a longer one
//! keeps its last [`TAIL`] bytes, where a response's `usageMetadata` is written). When the
//! whole file has passed, what it used is handed on once (to be recorded at batch prices);
//! a download cut short hands on nothing.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame};

use crate::ledger::{TokenUsage, UsageScanner};

/// Longest line held whole.
pub const LINE_CAP: usize = 1 << 20;
/// What is kept of a longer line: its end.
pub const TAIL: usize = 64 << 10;

/// What a results file used: the sum of its lines' `usageMetadata`, and how many responses.
#[derive(Debug, Default)]
pub struct ResultsScan {
    line: Vec<u8>,
    pub usage: TokenUsage,
    pub responses: u64,
}

impl ResultsScan {
    pub fn feed(&mut self, mut chunk: &[u8]) {
        while let Some(at) = chunk.iter().position(|b| *b == b'\n') {
            self.push(&chunk[..at]);
            self.end_line();
            chunk = &chunk[at + 1..];
        }
        self.push(chunk);
    }

    /// The file ended (a last line without a newline counts).
    pub fn finish(&mut self) {
        self.end_line();
    }

    fn push(&mut self, bytes: &[u8]) {
        self.line.extend_from_slice(bytes);
        if self.line.len() > LINE_CAP {
            let cut = self.line.len() - TAIL;
            self.line.drain(..cut);
        }
    }

    fn end_line(&mut self) {
        let line = std::mem::take(&mut self.line);
        if line.iter().all(u8::is_ascii_whitespace) {
            return;
        }
        // The usage scanner finds the line's last `usageMetadata` object, in a whole line or in
        // the tail kept of a long one (where a response writes it).
        if let Some(u) = UsageScanner::scan_all(&line) {
            self.usage = self.usage.plus(u);
            self.responses += 1;
        }
    }
}

/// What to do with a complete file's usage.
pub type OnEnd = Box<dyn FnOnce(ResultsScan) + Send>;

/// A download's body, its results file costed when `costing` is set.
pub struct Costed<B> {
    inner: B,
    costing: Option<(ResultsScan, OnEnd)>,
}

impl<B> Costed<B> {
    pub fn new(inner: B, on_end: Option<OnEnd>) -> Self {
        Costed {
            inner,
            costing: on_end.map(|f| (ResultsScan::default(), f)),
        }
    }

    fn end(&mut self) {
        if let Some((mut scan, on_end)) = self.costing.take() {
            scan.finish();
            on_end(scan);
        }
    }
}

impl<B> HttpBody for Costed<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(chunk), Some((scan, _))) = (frame.data_ref(), this.costing.as_mut()) {
                    scan.feed(chunk);
                }
                if this.inner.is_end_stream() {
                    this.end();
                }
            }
            Poll::Ready(None) => this.end(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_lines_usage_is_added_up_across_chunks_and_a_long_lines_tail_still_counts() {
        let line = |p: u64, c: u64| {
            format!(
                "{{\"key\":\"k\",\"response\":{{\"candidates\":[],\"usageMetadata\":{{\"promptTokenCount\":{p},\"candidatesTokenCount\":{c},\"totalTokenCount\":{}}}}}}}\n",
                p + c
            )
        };
        let long = format!(
            "{{\"key\":\"big\",\"response\":{{\"candidates\":[{{\"content\":{{\"parts\":[{{\"text\":\"{}\"}}]}}}}],\"usageMetadata\":{{\"promptTokenCount\":7,\"candidatesTokenCount\":3}}}}}}",
            "y".repeat(LINE_CAP + 10)
        );
        let file = format!(
            "{}{}{{\"key\":\"e\",\"error\":{{\"code\":400}}}}\n{long}",
            line(10, 5),
            line(20, 1)
        );
        let mut s = ResultsScan::default();
        for chunk in file.as_bytes().chunks(7777) {
            s.feed(chunk);
        }
        s.finish();
        assert_eq!((s.usage.input, s.usage.output, s.responses), (37, 9, 3));
    }
}
