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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_object_ends_at_its_own_closing_brace_not_at_one_inside_a_string() {
        let text = br#"{"a":[1,{"b":"}\"]"}],"c":"\\"}tail"#;
        let mut n = Nesting::default();
        let end = text.iter().position(|&b| n.step(b));
        assert_eq!(end, Some(text.len() - "tail".len() - 1));
        assert_eq!(n.depth(), 0);
    }
}
