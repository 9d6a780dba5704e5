//! The cache key: SHA-256 of the method, the path and query without credentials, the body as
//! canonical JSON (object keys sorted, numbers as sent, strings re-escaped one way) and the
//! scope. Canonicalizing also tells whether the body names a project-bound resource (a file or
//! a cached content), which is never cached.

use sha2::{Digest, Sha256};

use crate::auth::QUERY_CREDENTIALS;

/// Deepest nesting canonicalized (serde_json refuses deeper bodies anyway).
const MAX_DEPTH: usize = 128;

/// Body fields that name a resource living in one Google project.
const PROJECT_BOUND: &[&str] = &[
    "cachedContent",
    "cached_content",
    "fileData",
    "file_data",
    "fileUri",
    "file_uri",
];

/// A body in canonical form, and what canonicalizing it noticed.
#[derive(Debug, PartialEq, Eq)]
pub struct Canonical {
    pub json: Vec<u8>,
    /// The body names a file or a cached content.
    pub project_bound: bool,
}

/// `body` as canonical JSON; `None` when it is not one JSON value (not cached then).
pub fn canonical(body: &[u8]) -> Option<Canonical> {
    let mut p = Parser {
        s: body,
        i: 0,
        project_bound: false,
    };
    let mut json = Vec::with_capacity(body.len());
    p.value(&mut json, 0)?;
    p.ws();
    (p.i == body.len()).then_some(Canonical {
        json,
        project_bound: p.project_bound,
    })
}

/// The key of a request: `scope` is the caller's digest (scope `client`) or a fixed tag.
pub fn key(method: &str, path: &str, query: Option<&str>, body: &[u8], scope: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    // Each part length-prefixed, so no two splits of the same bytes collide.
    for part in [method.as_bytes(), path.as_bytes()] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    let query = query_without_credentials(query);
    h.update((query.len() as u64).to_be_bytes());
    h.update(query.as_bytes());
    h.update((body.len() as u64).to_be_bytes());
    h.update(body);
    h.update((scope.len() as u64).to_be_bytes());
    h.update(scope);
    h.finalize().into()
}

/// The query's parameters but the credential ones, sorted (`alt=sse`, `prettyPrint=...`).
pub fn query_without_credentials(query: Option<&str>) -> String {
    let mut kept: Vec<&str> = query
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .filter(|p| {
            let name = p.split_once('=').map_or(*p, |(n, _)| n);
            !QUERY_CREDENTIALS.contains(&name)
        })
        .collect();
    kept.sort_unstable();
    kept.join("&")
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
    project_bound: bool,
}

impl Parser<'_> {
    fn ws(&mut self) {
        while self
            .s
            .get(self.i)
            .is_some_and(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
        {
            self.i += 1;
        }
    }

    fn value(&mut self, out: &mut Vec<u8>, depth: usize) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        self.ws();
        match *self.s.get(self.i)? {
            b'{' => self.object(out, depth),
            b'[' => self.array(out, depth),
            b'"' => {
                let s = self.string()?;
                write_string(out, &s);
                Some(())
            }
            b't' => self.literal(out, b"true"),
            b'f' => self.literal(out, b"false"),
            b'n' => self.literal(out, b"null"),
            b'-' | b'0'..=b'9' => self.number(out),
            _ => None,
        }
    }

    fn literal(&mut self, out: &mut Vec<u8>, word: &[u8]) -> Option<()> {
        if self.s.get(self.i..self.i + word.len())? != word {
            return None;
        }
        self.i += word.len();
        out.extend_from_slice(word);
        Some(())
    }

    /// A number kept as sent (`1.0` and `1` differ, as they may to Google).
    fn number(&mut self, out: &mut Vec<u8>) -> Option<()> {
        let start = self.i;
        while self
            .s
            .get(self.i)
            .is_some_and(|b| matches!(b, b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9'))
        {
            self.i += 1;
        }
        let text = &self.s[start..self.i];
        // Checked by serde_json, which knows JSON's number grammar.
        serde_json::from_slice::<serde::de::IgnoredAny>(text).ok()?;
        out.extend_from_slice(text);
        Some(())
    }

    /// A string token, decoded (escapes resolved) by serde_json.
    fn string(&mut self) -> Option<String> {
        let start = self.i;
        self.i += 1;
        loop {
            match *self.s.get(self.i)? {
                b'\\' => self.i += 2,
                b'"' => {
                    self.i += 1;
                    break;
                }
                _ => self.i += 1,
            }
        }
        serde_json::from_slice(self.s.get(start..self.i)?).ok()
    }

    fn array(&mut self, out: &mut Vec<u8>, depth: usize) -> Option<()> {
        self.i += 1;
        out.push(b'[');
        self.ws();
        if self.s.get(self.i) == Some(&b']') {
            self.i += 1;
            out.push(b']');
            return Some(());
        }
        loop {
            self.value(out, depth + 1)?;
            self.ws();
            match *self.s.get(self.i)? {
                b',' => {
                    self.i += 1;
                    out.push(b',');
                }
                b']' => {
                    self.i += 1;
                    out.push(b']');
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    fn object(&mut self, out: &mut Vec<u8>, depth: usize) -> Option<()> {
        self.i += 1;
        let mut members: Vec<(String, Vec<u8>)> = Vec::new();
        self.ws();
        if self.s.get(self.i) == Some(&b'}') {
            self.i += 1;
            out.extend_from_slice(b"{}");
            return Some(());
        }
        loop {
            self.ws();
            if self.s.get(self.i) != Some(&b'"') {
                return None;
            }
            let name = self.string()?;
            if PROJECT_BOUND.contains(&name.as_str()) {
                self.project_bound = true;
            }
            self.ws();
            if self.s.get(self.i) != Some(&b':') {
                return None;
            }
            self.i += 1;
            let mut value = Vec::new();
            self.value(&mut value, depth + 1)?;
            members.push((name, value));
            self.ws();
            match *self.s.get(self.i)? {
                b',' => self.i += 1,
                b'}' => {
                    self.i += 1;
                    break;
                }
                _ => return None,
            }
        }
        // Sorted by name; of a name given twice the last counts, as serde_json reads it.
        members.reverse();
        members.sort_by(|a, b| a.0.cmp(&b.0));
        members.dedup_by(|later, first| later.0 == first.0);
        out.push(b'{');
        for (n, (name, value)) in members.iter().enumerate() {
            if n > 0 {
                out.push(b',');
            }
            write_string(out, name);
            out.push(b':');
            out.extend_from_slice(value);
        }
        out.push(b'}');
        Some(())
    }
}

fn write_string(out: &mut Vec<u8>, s: &str) {
    // Writing a str into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(s: &str) -> String {
        String::from_utf8(canonical(s.as_bytes()).unwrap().json).unwrap()
    }

    #[test]
    fn keys_are_sorted_whitespace_dropped_numbers_kept_as_sent() {
        assert_eq!(
            canon(r#" { "b" : [1.0, 2e3, -0.10000000000000001], "a": {"z": null, "y": true} } "#),
            r#"{"a":{"y":true,"z":null},"b":[1.0,2e3,-0.10000000000000001]}"#
        );
        assert_ne!(canon(r#"{"t": 1}"#), canon(r#"{"t": 1.0}"#));
        // Escapes are resolved: two spellings of one string are one string.
        assert_eq!(canon(r#"{"a": "\u0041"}"#), canon(r#"{"a": "A"}"#));
        // The last of a name given twice counts.
        assert_eq!(canon(r#"{"a": 1, "a": 2}"#), r#"{"a":2}"#);
    }

    #[test]
    fn not_json_is_none_and_project_bound_fields_are_seen() {
        for bad in ["", "{", r#"{"a" 1}"#, "[1,]", "01x", r#"{"a":1} x"#, "nul"] {
            assert!(canonical(bad.as_bytes()).is_none(), "{bad:?}");
        }
        let deep = "[".repeat(200) + &"]".repeat(200);
        assert!(canonical(deep.as_bytes()).is_none());
        for bound in [
            r#"{"cachedContent": "cachedContents/x", "contents": []}"#,
            r#"{"contents": [{"parts": [{"fileData": {"fileUri": "https://x/files/a"}}]}]}"#,
        ] {
            assert!(
                canonical(bound.as_bytes()).unwrap().project_bound,
                "{bound}"
            );
        }
        assert!(
            !canonical(br#"{"contents": [{"parts": [{"text": "hi"}]}]}"#)
                .unwrap()
                .project_bound
        );
    }

    #[test]
    fn the_key_ignores_credentials_but_not_alt_or_scope() {
        let k = |q: Option<&str>, scope: &[u8]| key("POST", "/v1beta/models/m:x", q, b"{}", scope);
        assert_eq!(
            k(Some("alt=sse&key=A"), b"s"),
            k(Some("key=B&alt=sse"), b"s")
        );
        assert_ne!(k(Some("alt=sse"), b"s"), k(None, b"s"));
        assert_ne!(k(None, b"s"), k(None, b"t"));
        assert_eq!(
            query_without_credentials(Some("%24key=x&$key=y&alt=sse")),
            "alt=sse"
        );
    }
}
