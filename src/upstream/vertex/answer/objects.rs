//! An answer body split into the JSON objects at its top (whatever surrounds them: SSE's
//! `data: ` lines, a JSON array's brackets and commas, passed on as they are), each rewritten
//! as it completes; an object held meanwhile counts against the buffered-bytes budget.

use bytes::BytesMut;
use serde_json::Value;

use super::{Held, Kind, MAX_OBJECT_BYTES, rewrite};
use crate::budget::Reserved;
use crate::ledger::nesting::Nesting;

/// Splits a body into the JSON objects at its top (whatever surrounds them: SSE's `data: `
/// lines, a JSON array's brackets and commas, passed on as they are) and rewrites each.
#[derive(Debug)]
pub(super) struct Objects {
    kind: Kind,
    /// Where the object being read stands (depth 0: between objects).
    nesting: Nesting,
    /// The object being read.
    held: Vec<u8>,
    /// An object over [`MAX_OBJECT_BYTES`] (or over what the budget could take) came: the
    /// rest passes unchanged.
    gave_up: bool,
    /// What the held bytes count against (`None`: nothing, in unit tests).
    pub(super) budget: Option<Held>,
    /// The held bytes' reservations, given back as each object is sent.
    reserved: Vec<Reserved>,
    /// Bytes of `held` reserved so far.
    reserved_bytes: usize,
}

impl Objects {
    pub(super) fn new(kind: Kind) -> Objects {
        Objects {
            kind,
            nesting: Nesting::default(),
            held: Vec::new(),
            gave_up: false,
            budget: None,
            reserved: Vec::new(),
            reserved_bytes: 0,
        }
    }

    /// Count `held`'s growth against the budget; false when it cannot take it.
    fn reserve_held(&mut self) -> bool {
        let Some((budget, client)) = &self.budget else {
            return true;
        };
        let more = self.held.len().saturating_sub(self.reserved_bytes);
        if more == 0 {
            return true;
        }
        match budget.reserve(*client, more) {
            Some(r) => {
                self.reserved.push(r);
                self.reserved_bytes += more;
                true
            }
            None => false,
        }
    }

    /// Give the held bytes' reservations back.
    fn release(&mut self) {
        self.reserved.clear();
        self.reserved_bytes = 0;
    }

    /// Feed `chunk`; append to `out` what can be sent now.
    pub(super) fn feed(&mut self, chunk: &[u8], out: &mut BytesMut) {
        if self.gave_up {
            out.extend_from_slice(chunk);
            return;
        }
        let mut start = 0;
        let mut i = 0;
        while i < chunk.len() {
            if self.nesting.depth() == 0 {
                // Between objects: pass on everything up to the next `{`.
                match memchr::memchr(b'{', &chunk[i..]) {
                    Some(at) => {
                        out.extend_from_slice(&chunk[start..i + at]);
                        i += at;
                        start = i;
                        self.nesting = Nesting::opened();
                        i += 1;
                    }
                    None => {
                        out.extend_from_slice(&chunk[start..]);
                        return;
                    }
                }
                continue;
            }
            let b = chunk[i];
            i += 1;
            if self.nesting.step(b) {
                self.held.extend_from_slice(&chunk[start..i]);
                start = i;
                self.emit(out);
            }
        }
        if self.nesting.depth() > 0 {
            self.held.extend_from_slice(&chunk[start..]);
            let over = self.held.len() > MAX_OBJECT_BYTES;
            if over || !self.reserve_held() {
                tracing::warn!(
                    limit = MAX_OBJECT_BYTES,
                    over,
                    "a Vertex AI answer object is larger than the proxy may hold to rewrite: passed on in Vertex's form"
                );
                self.gave_up = true;
                out.extend_from_slice(&self.held);
                self.held = Vec::new();
                self.release();
            }
        }
    }

    /// The object just completed, rewritten (or as it came when it needs nothing, or is not
    /// JSON).
    fn emit(&mut self, out: &mut BytesMut) {
        self.release();
        let held = std::mem::take(&mut self.held);
        if let Ok(mut v) = serde_json::from_slice::<Value>(&held)
            && rewrite(self.kind, &mut v)
            && let Ok(bytes) = serde_json::to_vec(&v)
        {
            out.extend_from_slice(&bytes);
        } else {
            out.extend_from_slice(&held);
        }
        // The buffer is kept for the next object, unless a large one grew it.
        if held.capacity() <= 64 * 1024 {
            self.held = held;
            self.held.clear();
        }
    }

    /// The end of the body: whatever is held goes as it is.
    pub(super) fn finish(&mut self, out: &mut BytesMut) {
        out.extend_from_slice(&self.held);
        self.held.clear();
        self.release();
        self.nesting = Nesting::default();
    }
}
