//! The cache key: SHA-256 of the method, the path and query without credentials, the body's
//! canonical digest and the scope. The body's digest is built in one pass over its bytes, each
//! value hashed once (a string by its decoded text, a number as sent, an array by its items'
//! digests in order, an object by its members' names and digests sorted by name), so spacing,
//! key order and escape spellings do not matter and nesting costs nothing extra. A body that
//! names a field twice in one object is not canonical (Google and serde_json keep different
//! ones of the two, so which was asked is not clear) and is never cached. Canonicalizing also
//! tells whether the body names a project-bound resource (a file, a cached content, a file
//! search store), which is never cached.

use sha2::{Digest, Sha256};

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
    "fileSearchStoreNames",
    "file_search_store_names",
];

/// A body's canonical digest, and what canonicalizing it noticed.
#[derive(Debug, PartialEq, Eq)]
pub struct Canonical {
    pub digest: [u8; 32],
    /// The body names a file, a cached content or a file search store.
    pub project_bound: bool,
}

/// `body`'s canonical digest; `None` when it is not one JSON value, or an object in it names a
/// field twice (not cached then).
pub fn canonical(body: &[u8]) -> Option<Canonical> {
    let mut p = Parser {
        s: body,
        i: 0,
        project_bound: false,
    };
    let digest = p.value(0)?;
    p.ws();
    (p.i == body.len()).then_some(Canonical {
        digest,
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
        .filter(|p| !crate::auth::is_query_credential(p))
        .collect();
    kept.sort_unstable();
    kept.join("&")
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
    project_bound: bool,
}

/// One value's digest: a tag for its type, then its content.
fn digest(tag: u8, parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update([tag]);
    for p in parts {
        h.update((p.len() as u64).to_be_bytes());
        h.update(p);
    }
    h.finalize().into()
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

    fn value(&mut self, depth: usize) -> Option<[u8; 32]> {
        if depth > MAX_DEPTH {
            return None;
        }
        self.ws();
        match *self.s.get(self.i)? {
            b'{' => self.object(depth),
            b'[' => self.array(depth),
            b'"' => {
                let s = self.string()?;
                Some(digest(b's', &[s.as_bytes()]))
            }
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            b'-' | b'0'..=b'9' => self.number(),
            _ => None,
        }
    }

    fn literal(&mut self, word: &[u8]) -> Option<[u8; 32]> {
        if self.s.get(self.i..self.i + word.len())? != word {
            return None;
        }
        self.i += word.len();
        Some(digest(b'l', &[word]))
    }

    /// A number kept as sent (`1.0` and `1` differ, as they may to Google).
    fn number(&mut self) -> Option<[u8; 32]> {
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
        Some(digest(b'n', &[text]))
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

    fn array(&mut self, depth: usize) -> Option<[u8; 32]> {
        self.i += 1;
        let mut h = Sha256::new();
        h.update(b"a");
        self.ws();
        if self.s.get(self.i) == Some(&b']') {
            self.i += 1;
            return Some(h.finalize().into());
        }
        loop {
            h.update(self.value(depth + 1)?);
            self.ws();
            match *self.s.get(self.i)? {
                b',' => self.i += 1,
                b']' => {
                    self.i += 1;
                    return Some(h.finalize().into());
                }
                _ => return None,
            }
        }
    }

    fn object(&mut self, depth: usize) -> Option<[u8; 32]> {
        self.i += 1;
        // Names and their values' digests: the values themselves are already hashed.
        let mut members: Vec<(String, [u8; 32])> = Vec::new();
        self.ws();
        if self.s.get(self.i) == Some(&b'}') {
            self.i += 1;
            return Some(digest(b'o', &[]));
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
            let value = self.value(depth + 1)?;
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
        members.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        // A name given twice: which one counts differs between readers, so not canonical.
        if members.windows(2).any(|w| w[0].0 == w[1].0) {
            return None;
        }
        let mut h = Sha256::new();
        h.update(b"o");
        for (name, value) in &members {
            h.update((name.len() as u64).to_be_bytes());
            h.update(name.as_bytes());
            h.update(value);
        }
        Some(h.finalize().into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(s: &str) -> [u8; 32] {
        canonical(s.as_bytes()).unwrap().digest
    }

    #[test]
    fn key_order_and_whitespace_are_ignored_numbers_kept_as_sent() {
        assert_eq!(
            canon(r#" { "b" : [1.0, 2e3, -0.10000000000000001], "a": {"z": null, "y": true} } "#),
            canon(r#"{"a":{"y":true,"z":null},"b":[1.0,2e3,-0.10000000000000001]}"#)
        );
        assert_ne!(canon(r#"{"t": 1}"#), canon(r#"{"t": 1.0}"#));
        // Escapes are resolved: two spellings of one string are one string.
        assert_eq!(canon(r#"{"a": "\u0041"}"#), canon(r#"{"a": "A"}"#));
        // Structure counts: no two shapes of the same leaves share a digest.
        assert_ne!(canon(r#"[[1],2]"#), canon(r#"[1,[2]]"#));
        assert_ne!(canon(r#"{"a":"b"}"#), canon(r#"["a","b"]"#));
        assert_ne!(canon(r#""1""#), canon("1"));
        assert_ne!(canon(r#"{"ab":"c"}"#), canon(r#"{"a":"bc"}"#));
        assert_ne!(canon("[1,2]"), canon("[2,1]"));
    }

    #[test]
    fn a_name_given_twice_anywhere_is_not_canonical() {
        for dup in [
            r#"{"a": 1, "a": 2}"#,
            r#"{"contents": [1], "x": 0, "contents": [2]}"#,
            r#"{"c": [{"parts": [{"text": "x", "text": "y"}]}]}"#,
            r#"{"a": "1", "\u0061": "2"}"#,
        ] {
            assert!(canonical(dup.as_bytes()).is_none(), "{dup}");
        }
        // The same name in two objects is fine.
        assert!(canonical(br#"{"a": {"a": 1}, "b": [{"a": 1}, {"a": 2}]}"#).is_some());
    }

    #[test]
    fn a_deep_body_costs_one_pass() {
        // 128 levels of a 1 MB string: each byte is hashed once, not once per level.
        let deep = "[".repeat(120) + "\"" + &"x".repeat(1 << 20) + "\"" + &"]".repeat(120);
        let t = std::time::Instant::now();
        assert!(canonical(deep.as_bytes()).is_some());
        assert!(
            t.elapsed() < std::time::Duration::from_secs(2),
            "{:?}",
            t.elapsed()
        );
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
            r#"{"tools": [{"fileSearch": {"fileSearchStoreNames": ["fileSearchStores/s"]}}]}"#,
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
