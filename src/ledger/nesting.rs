//! Where a byte stands in JSON's nesting, read byte by byte: inside a string (and just after an
//! escape there), and how many braces and brackets are open. The usage scanner ([`super::tokens`])
//! and the Vertex answer rewriter (`upstream::vertex::answer`) find where an object ends by it.

/// The nesting of the JSON text read so far.
#[derive(Debug, Default, Clone, Copy)]
pub struct Nesting {
    depth: usize,
    in_string: bool,
    escaped: bool,
}

impl Nesting {
    /// Open braces and brackets (0: outside any value).
    #[inline]
    pub fn depth(&self) -> usize {
        self.depth
    }

    /// Inside a value just opened (its `{` or `[` read elsewhere).
    #[inline]
    pub fn opened() -> Nesting {
        Nesting {
            depth: 1,
            ..Nesting::default()
        }
    }

    /// Read one byte; true when it closed the outermost value (the depth is back to 0).
    #[inline]
    pub fn step(&mut self, b: u8) -> bool {
        if self.in_string {
            match (self.escaped, b) {
                (true, _) => self.escaped = false,
                (false, b'\\') => self.escaped = true,
                (false, b'"') => self.in_string = false,
                _ => {}
            }
            return false;
        }
        match b {
            b'"' => self.in_string = true,
            b'{' | b'[' => self.depth += 1,
            b'}' | b']' => {
                self.depth = self.depth.saturating_sub(1);
                return self.depth == 0;
            }
            _ => {}
        }
        false
    }

    /// Read `bytes` on, as [`Nesting::step`] byte by byte would; the offset just past the byte
    /// that closed the outermost value, if one did. The bytes that change nothing where they
    /// stand (most of a value: names, digits, text) are skipped by a table look-up each.
    pub fn close_in(&mut self, bytes: &[u8]) -> Option<usize> {
        let mut i = 0;
        while i < bytes.len() {
            if !self.escaped {
                let mask = if self.in_string { IN_STRING } else { OUTSIDE };
                while i < bytes.len() && CLASS[bytes[i] as usize] & mask == 0 {
                    i += 1;
                }
                if i == bytes.len() {
                    return None;
                }
            }
            if self.step(bytes[i]) {
                return Some(i + 1);
            }
            i += 1;
        }
        None
    }
}

/// The bytes [`Nesting::step`] acts on outside strings (`"` and the braces and brackets)...
const OUTSIDE: u8 = 1;
/// ... and inside them (`"` and `\`).
const IN_STRING: u8 = 2;
const CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    t[b'"' as usize] = OUTSIDE | IN_STRING;
    t[b'\\' as usize] = IN_STRING;
    t[b'{' as usize] = OUTSIDE;
    t[b'}' as usize] = OUTSIDE;
    t[b'[' as usize] = OUTSIDE;
    t[b']' as usize] = OUTSIDE;
    t
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_in_reads_as_step_does_in_any_pieces() {
        let texts: [&[u8]; 4] = [
            br#"{"a":[1,{"b":"}\"]"}],"c":"\\"}tail"#,
            br#"{"promptTokenCount":12,"details":[{"modality":"TEXT","tokenCount":12}]} {"x":1}"#,
            br#"{"s":"\\\"}{"}"#,
            br#"{"open":"never closed"#,
        ];
        for text in texts {
            // Byte by byte with `step`: where the first value closes.
            let mut by_step = Nesting::default();
            let want = text.iter().position(|&b| by_step.step(b)).map(|i| i + 1);
            for cut in 0..=text.len() {
                let mut n = Nesting::default();
                let got = match n.close_in(&text[..cut]) {
                    Some(end) => Some(end),
                    None => n.close_in(&text[cut..]).map(|end| cut + end),
                };
                assert_eq!(got, want, "{} cut at {cut}", String::from_utf8_lossy(text));
            }
        }
    }

    #[test]
    fn an_object_ends_at_its_own_closing_brace_not_at_one_inside_a_string() {
        let text = br#"{"a":[1,{"b":"}\"]"}],"c":"\\"}tail"#;
        let mut n = Nesting::default();
        let end = text.iter().position(|&b| n.step(b));
        assert_eq!(end, Some(text.len() - "tail".len() - 1));
        assert_eq!(n.depth(), 0);
    }
}
