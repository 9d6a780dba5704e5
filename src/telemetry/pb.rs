//! The protobuf wire format as the OTLP encoder ([`super::otlp`]) writes it: varints, tags,
//! length-delimited fields (nested ones written in place, their length put in front after),
//! and [`Piece`]s, a few bytes gathered on the stack and appended with one copy.

// Wire types. The functions are small and called for every field: marked `#[inline]` so that
// they are inlined into the encoder across the module's boundary, as they were within it.
pub(super) const VARINT: u32 = 0;
pub(super) const FIXED64: u32 = 1;
pub(super) const LEN: u32 = 2;
pub(super) const FIXED32: u32 = 5;

#[inline]
pub(super) fn varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

#[inline]
pub(super) fn key(buf: &mut Vec<u8>, field: u32, wire: u32) {
    varint(buf, u64::from(field << 3 | wire));
}

/// A length-delimited field whose body `f` writes: the body is written in place and its
/// length put in front of it afterwards (one move of the body, instead of sizing it first).
pub(super) fn nested(buf: &mut Vec<u8>, field: u32, f: impl FnOnce(&mut Vec<u8>)) {
    nested_sized(buf, field, 1, f)
}

/// [`nested`] with room for a length of `room` bytes (1: under 128, 2: under 16 KiB) kept in
/// front of the body: a body whose length fits is not moved; one whose length is shorter is
/// moved back, one longer forward.
pub(super) fn nested_sized(
    buf: &mut Vec<u8>,
    field: u32,
    room: usize,
    f: impl FnOnce(&mut Vec<u8>),
) {
    key(buf, field, LEN);
    let at = buf.len();
    buf.extend_from_slice(&[0; 10][..room]);
    f(buf);
    let len = buf.len() - at - room;
    let mut prefix = Piece::<10>::new();
    prefix.varint(len as u64);
    let n = prefix.n;
    match n.cmp(&room) {
        std::cmp::Ordering::Equal => {}
        std::cmp::Ordering::Less => {
            buf.copy_within(at + room.., at + n);
            buf.truncate(at + n + len);
        }
        std::cmp::Ordering::Greater => {
            buf.resize(at + n + len, 0);
            buf.copy_within(at + room..at + room + len, at + n);
        }
    }
    buf[at..at + n].copy_from_slice(&prefix.b[..n]);
}

#[inline]
pub(super) fn bytes_field(buf: &mut Vec<u8>, field: u32, b: &[u8]) {
    key(buf, field, LEN);
    varint(buf, b.len() as u64);
    buf.extend_from_slice(b);
}

/// A string or bytes field, left out when empty (proto3's default).
#[inline]
pub(super) fn opt_bytes(buf: &mut Vec<u8>, field: u32, b: &[u8]) {
    if !b.is_empty() {
        bytes_field(buf, field, b);
    }
}

#[inline]
pub(super) fn opt_varint(buf: &mut Vec<u8>, field: u32, v: u64) {
    if v != 0 {
        key(buf, field, VARINT);
        varint(buf, v);
    }
}

#[inline]
pub(super) fn fixed64(buf: &mut Vec<u8>, field: u32, v: u64) {
    key(buf, field, FIXED64);
    buf.extend_from_slice(&v.to_le_bytes());
}

/// A few bytes gathered on the stack and appended whole ([`put`]): the fields of a span and an
/// attribute go out a piece at a time, not a byte at a time through the buffer's checks.
pub(super) struct Piece<const N: usize> {
    pub(super) b: [u8; N],
    pub(super) n: usize,
}

impl<const N: usize> Piece<N> {
    pub(super) fn new() -> Piece<N> {
        Piece { b: [0; N], n: 0 }
    }

    pub(super) fn byte(&mut self, x: u8) {
        self.b[self.n] = x;
        self.n += 1;
    }

    pub(super) fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.byte((v as u8) | 0x80);
            v >>= 7;
        }
        self.byte(v as u8);
    }

    pub(super) fn tag(&mut self, field: u32, wire: u32) {
        self.varint(u64::from(field << 3 | wire));
    }

    pub(super) fn array<const M: usize>(&mut self, bytes: [u8; M]) {
        self.padded(&bytes, M);
    }

    /// The first `n` bytes of `bytes`: the whole array copied (a few moves), the rest written
    /// over next.
    pub(super) fn padded<const M: usize>(&mut self, bytes: &[u8; M], n: usize) {
        // An array assigned, not a slice copied: moves, not a call.
        if let Some(to) = self.b[self.n..].first_chunk_mut::<M>() {
            *to = *bytes;
            self.n += n.min(M);
        }
    }

    pub(super) fn fixed64(&mut self, field: u32, v: u64) {
        self.tag(field, FIXED64);
        self.array(v.to_le_bytes());
    }

    pub(super) fn put(&self, buf: &mut Vec<u8>) {
        put(buf, &self.b, self.n);
    }
}

/// The first `n` bytes of `bytes` onto `buf`: the whole array copied (a few moves, no call to
/// `memcpy`), the length then set back.
pub(super) fn put<const N: usize>(buf: &mut Vec<u8>, bytes: &[u8; N], n: usize) {
    let at = buf.len();
    buf.extend_from_slice(bytes);
    buf.truncate(at + n);
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
            let mut buf = Vec::new();
            varint(&mut buf, v);
            assert_eq!(varint_len(v), buf.len(), "{v}");
            let mut piece = Piece::<10>::new();
            piece.varint(v);
            assert_eq!(&piece.b[..piece.n], &buf[..], "{v}");
        }
    }

    #[test]
    fn a_piece_goes_out_with_its_length_only() {
        let mut p = Piece::<16>::new();
        p.padded(b"abcdefgh", 3);
        p.tag(16, FIXED32);
        let mut buf = b"x".to_vec();
        p.put(&mut buf);
        assert_eq!(buf, b"xabc\x85\x01");
    }
}
