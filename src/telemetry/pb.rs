//! The protobuf wire format as the OTLP encoder ([`super::otlp`]) writes it: [`Out`], a buffer
//! written at a position of its own and kept initialised past it, so that a field's fixed-size
//! pieces (an attribute's key, a tag and its length, an id) are copied into it whole, without a
//! length check or a call each; length-delimited fields are written in place and their length
//! put in front afterwards.

// Wire types. The functions are small and called for every field: marked `#[inline]` so that
// they are inlined into the encoder across the module's boundary.
pub(super) const VARINT: u32 = 0;
pub(super) const FIXED64: u32 = 1;
pub(super) const LEN: u32 = 2;
pub(super) const FIXED32: u32 = 5;

/// A field's tag as its one byte (fields 1 to 15), for a piece written whole.
pub(super) const fn tag1(field: u32, wire: u32) -> u8 {
    assert!(field < 16);
    (field << 3 | wire) as u8
}

/// Bytes initialised at a time past the position when more are needed (under 2 KiB: zeroed
/// with vector stores, not `rep stosb`).
const STEP: usize = 1024;

/// An encoded message being written: `buf[..n]` is it, `buf[n..]` room already initialised
/// (whatever it holds), cut off by [`Out::finish`].
pub(super) struct Out {
    buf: Vec<u8>,
    n: usize,
}

impl Out {
    /// An empty message with room for `bytes` kept (no copy of it until it grows past them).
    pub(super) fn with_capacity(bytes: usize) -> Out {
        Out {
            buf: Vec::with_capacity(bytes + STEP),
            n: 0,
        }
    }

    /// The message as written.
    pub(super) fn finish(mut self) -> Vec<u8> {
        self.buf.truncate(self.n);
        self.buf
    }

    /// `m` initialised bytes past the position.
    #[inline]
    fn room(&mut self, m: usize) {
        if self.n + m > self.buf.len() {
            self.grow(m);
        }
    }

    #[cold]
    #[inline(never)]
    fn grow(&mut self, m: usize) {
        self.buf.resize(self.n + m + STEP, 0);
    }

    /// Write up to `max` bytes through a [`Cursor`] (one check of the room for all of them):
    /// `f` writes, the position moves past what it wrote.
    #[inline(always)]
    pub(super) fn with(&mut self, max: usize, f: impl FnOnce(&mut Cursor<'_>)) {
        self.room(max);
        let mut c = Cursor {
            b: &mut self.buf[self.n..],
            i: 0,
        };
        f(&mut c);
        self.n += c.i;
    }

    #[inline]
    pub(super) fn byte(&mut self, b: u8) {
        self.with(1, |c| c.byte(b));
    }

    #[inline]
    pub(super) fn varint(&mut self, v: u64) {
        self.with(10, |c| c.varint(v));
    }

    #[inline]
    pub(super) fn tag(&mut self, field: u32, wire: u32) {
        self.varint(u64::from(field << 3 | wire));
    }

    /// The first `n` bytes of `bytes`: the whole array copied (a few moves, no call), the rest
    /// written over next.
    #[inline]
    pub(super) fn padded<const M: usize>(&mut self, bytes: &[u8; M], n: usize) {
        self.with(M, |c| c.padded(bytes, n));
    }

    #[inline]
    pub(super) fn array<const M: usize>(&mut self, bytes: [u8; M]) {
        self.with(M, |c| c.array(bytes));
    }

    #[inline]
    pub(super) fn bytes(&mut self, b: &[u8]) {
        self.room(b.len());
        self.buf[self.n..self.n + b.len()].copy_from_slice(b);
        self.n += b.len();
    }

    #[inline]
    pub(super) fn fixed64(&mut self, field: u32, v: u64) {
        self.tag(field, FIXED64);
        self.array(v.to_le_bytes());
    }

    #[inline]
    pub(super) fn bytes_field(&mut self, field: u32, b: &[u8]) {
        self.tag(field, LEN);
        self.varint(b.len() as u64);
        self.bytes(b);
    }

    /// A string or bytes field, left out when empty (proto3's default).
    #[inline]
    pub(super) fn opt_bytes(&mut self, field: u32, b: &[u8]) {
        if !b.is_empty() {
            self.bytes_field(field, b);
        }
    }

    #[inline]
    pub(super) fn opt_varint(&mut self, field: u32, v: u64) {
        if v != 0 {
            self.tag(field, VARINT);
            self.varint(v);
        }
    }

    /// A length-delimited field whose body `f` writes: the body is written in place and its
    /// length put in front of it afterwards (one move of the body, instead of sizing it first).
    pub(super) fn nested(&mut self, field: u32, f: impl FnOnce(&mut Out)) {
        self.nested_sized(field, 1, f)
    }

    /// [`Out::nested`] with room for a length of `room` bytes (1: under 128, 2: under 16 KiB)
    /// kept in front of the body: a body whose length fits is not moved; one whose length is
    /// shorter is moved back, one longer forward.
    pub(super) fn nested_sized(&mut self, field: u32, room: usize, f: impl FnOnce(&mut Out)) {
        self.tag(field, LEN);
        self.room(room);
        let at = self.n;
        self.n += room;
        f(self);
        let len = self.n - at - room;
        let k = varint_len(len as u64);
        if k != room {
            self.room(k.saturating_sub(room));
            self.buf.copy_within(at + room..self.n, at + k);
            self.n = at + k + len;
        }
        let mut c = Cursor {
            b: &mut self.buf[at..at + k],
            i: 0,
        };
        c.varint(len as u64);
    }
}

/// A few fields written into room checked once ([`Out::with`]): the slice and the position
/// stay in registers, each write a store and a bound the compiler checks.
pub(super) struct Cursor<'a> {
    b: &'a mut [u8],
    i: usize,
}

impl Cursor<'_> {
    #[inline(always)]
    pub(super) fn byte(&mut self, x: u8) {
        if let Some(to) = self.b.get_mut(self.i) {
            *to = x;
        }
        self.i += 1;
    }

    #[inline(always)]
    pub(super) fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.byte((v as u8) | 0x80);
            v >>= 7;
        }
        self.byte(v as u8);
    }

    /// The first `n` bytes of `bytes`: the whole array copied, the rest written over next.
    #[inline(always)]
    pub(super) fn padded<const M: usize>(&mut self, bytes: &[u8; M], n: usize) {
        if let Some(to) = self
            .b
            .get_mut(self.i..)
            .and_then(|s| s.first_chunk_mut::<M>())
        {
            *to = *bytes;
        }
        self.i += n.min(M);
    }

    #[inline(always)]
    pub(super) fn array<const M: usize>(&mut self, bytes: [u8; M]) {
        self.padded(&bytes, M);
    }

    /// The byte `back` bytes before the position set to `x` (a length written after).
    #[inline(always)]
    pub(super) fn set_back(&mut self, back: usize, x: u8) {
        if let Some(to) = self.i.checked_sub(back).and_then(|at| self.b.get_mut(at)) {
            *to = x;
        }
    }
}

/// `src` into `dst` at `at`, as one fixed-size move (a slice's `copy_from_slice` was a call
/// each, with its length check); nothing when it does not fit.
#[inline(always)]
pub(super) fn put<const M: usize>(dst: &mut [u8], at: usize, src: [u8; M]) {
    if let Some(to) = dst.get_mut(at..).and_then(|d| d.first_chunk_mut::<M>()) {
        *to = src;
    }
}

/// Bytes of `v` as a varint.
#[inline]
pub(super) fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_varints_length_is_what_writing_it_takes() {
        for v in [0, 1, 127, 128, 16_383, 16_384, 1 << 35, u64::MAX] {
            let mut out = Out::with_capacity(0);
            out.varint(v);
            assert_eq!(varint_len(v), out.finish().len(), "{v}");
        }
    }

    #[test]
    fn a_padded_piece_goes_out_with_its_length_only() {
        let mut out = Out::with_capacity(0);
        out.byte(b'x');
        out.padded(b"abcdefgh", 3);
        out.tag(16, FIXED32);
        assert_eq!(out.finish(), b"xabc\x85\x01");
    }

    #[test]
    fn a_nested_length_shorter_or_longer_than_its_room_moves_the_body() {
        for (room, len) in [(1, 5), (2, 5), (1, 300), (2, 300), (1, 20_000)] {
            let mut out = Out::with_capacity(0);
            out.nested_sized(1, room, |out| out.bytes(&vec![7; len]));
            out.byte(9);
            let bytes = out.finish();
            let head = 1 + varint_len(len as u64);
            assert_eq!(bytes.len(), head + len + 1, "{room} {len}");
            let mut prefix = Out::with_capacity(0);
            prefix.varint(len as u64);
            assert_eq!(&bytes[1..head], &prefix.finish()[..]);
            assert!(bytes[head..head + len].iter().all(|b| *b == 7));
            assert_eq!(bytes[head + len], 9);
        }
    }
}
