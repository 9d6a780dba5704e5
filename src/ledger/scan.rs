//! Reads the usage an answer reports as it streams past ([`UsageScanner`]): the last usage
//! object of a body, whatever its framing (JSON, SSE, a JSON array), found with memchr and
//! parsed without copying the body.

use super::nesting::Nesting;
use super::tokens::{TokenUsage, parse};

/// The object names that hold usage: Google's, then the OpenAI surface's. Inside generated
/// text a quote is escaped (`\"usage\"`), so the closing quote keeps these from matching there.
const NEEDLES: [&[u8]; 2] = [b"\"usageMetadata\"", b"\"usage\""];
/// What both needles start with: one search finds either.
const STEM: &[u8] = b"\"usage";
/// Its searcher, built once (building one per chunk showed in profiles).
static STEM_FINDER: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| memchr::memmem::Finder::new(STEM));
/// The longest needle, less one: what a needle split across two chunks can leave in the first.
const CARRY: usize = 14;
/// A usage object longer than this is not one (it is abandoned, not buffered on).
const OBJECT_LIMIT: usize = 8 * 1024;

/// Reads the last usage object of a response body as it streams past, whatever its framing
/// (JSON, SSE, JSON array), without copying the body: only the small usage object is copied
/// and parsed. Google's stream usage is cumulative, so the last object seen is the total.
#[derive(Debug, Default)]
pub struct UsageScanner {
    last: Option<TokenUsage>,
    /// The last bytes of the previous chunk, for a needle split across two chunks.
    carry: Carry,
    /// A usage object being read, when one started.
    object: Option<Capture>,
}

/// A usage object being copied out, byte by byte (it is small).
#[derive(Debug)]
struct Capture {
    openai: bool,
    buf: Vec<u8>,
    /// Before the object's `{`: the colon seen yet?
    colon: bool,
    nesting: Nesting,
}

impl Capture {
    fn new(openai: bool) -> Capture {
        Capture {
            openai,
            // Filled only for an object split across chunks (one whole in a chunk is parsed
            // where it is).
            buf: Vec::new(),
            colon: false,
            nesting: Nesting::default(),
        }
    }
}

/// The last bytes of a chunk kept for the next, in place (a request's answer would otherwise
/// allocate for them): at most [`CARRY`], and while a needle is looked for across the join,
/// [`CARRY`] more of the next chunk.
/// Written out rather than a `SmallVec`, which cost 166 instructions more a request under
/// callgrind (in `feed` and `SmallVec::insert_from_slice`).
#[derive(Debug, Default)]
struct Carry {
    len: usize,
    bytes: [u8; 2 * CARRY],
}

impl Carry {
    fn as_slice(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn clear(&mut self) {
        self.len = 0;
    }

    fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// `more` after what is kept, as much of it as there is room for.
    fn extend(&mut self, more: &[u8]) {
        let n = more.len().min(self.bytes.len() - self.len);
        self.bytes[self.len..self.len + n].copy_from_slice(&more[..n]);
        self.len += n;
    }

    /// Only the last `keep` bytes kept.
    fn keep_last(&mut self, keep: usize) {
        let drop = self.len.saturating_sub(keep);
        self.bytes.copy_within(drop..self.len, 0);
        self.len -= drop;
    }
}

/// What feeding bytes to a capture came to.
enum Fed {
    /// It needs more bytes.
    More,
    /// The object ended at this offset (exclusive) of the bytes fed: its usage (`None`: not
    /// readable).
    Done(Option<TokenUsage>, usize),
    /// Not a usage object after all (or too long): stop at this offset.
    Abandon(usize),
}

impl Capture {
    fn feed(&mut self, bytes: &[u8]) -> Fed {
        let mut i = 0;
        // Where the object's `{` is, when it is in these bytes.
        let mut opened = None;
        // Before the object: blanks, the colon after the needle, then the object's `{`.
        while self.nesting.depth() == 0 {
            let Some(&b) = bytes.get(i) else {
                return Fed::More;
            };
            match b {
                b' ' | b'\t' | b'\r' | b'\n' => {}
                b':' if !self.colon => self.colon = true,
                b'{' if self.colon => {
                    self.nesting.step(b);
                    opened = Some(i);
                }
                _ => return Fed::Abandon(i),
            }
            i += 1;
        }
        // The object's bytes in this chunk: up to the byte that closes it.
        let rest = &bytes[i..];
        let (took, closed) = match self.nesting.close_in(rest) {
            Some(end) => (end, true),
            None => (rest.len(), false),
        };
        let held = self.buf.len() + usize::from(opened.is_some());
        let room = OBJECT_LIMIT.saturating_sub(held);
        if took > room {
            return Fed::Abandon(i + room);
        }
        if let (Some(at), true) = (opened, closed) {
            // Whole in this chunk (an answer's usual case): read where it is, not copied.
            return Fed::Done(parse(self.openai, &bytes[at..i + took]), i + took);
        }
        if opened.is_some() {
            // A usage object's usual size reserved: no growing byte by byte.
            self.buf.reserve(256);
            self.buf.push(b'{');
        }
        self.buf.extend_from_slice(&rest[..took]);
        if closed {
            Fed::Done(parse(self.openai, &self.buf), i + took)
        } else {
            Fed::More
        }
    }
}

impl UsageScanner {
    /// Read the next chunk of the body.
    pub fn feed(&mut self, chunk: &[u8]) {
        let mut rest = chunk;
        // A needle split between the previous chunk and this one.
        if self.object.is_none() && !self.carry.is_empty() {
            let carried = self.carry.len;
            self.carry.extend(&chunk[..chunk.len().min(CARRY)]);
            let found = first_needle(self.carry.as_slice());
            self.carry.truncate(carried);
            if let Some((start, end, openai)) = found
                && start < carried
            {
                // The needle ends inside this chunk.
                self.object = Some(Capture::new(openai));
                self.carry.clear();
                rest = &chunk[end.saturating_sub(carried)..];
            }
        }
        loop {
            if let Some(capture) = self.object.as_mut() {
                match capture.feed(rest) {
                    Fed::More => {
                        self.carry.clear();
                        return;
                    }
                    Fed::Done(usage, n) => {
                        if usage.is_some() {
                            self.last = usage;
                        }
                        self.object = None;
                        rest = &rest[n..];
                    }
                    Fed::Abandon(n) => {
                        self.object = None;
                        rest = &rest[n..];
                    }
                }
            }
            match first_needle(rest) {
                Some((_, end, openai)) => {
                    self.object = Some(Capture::new(openai));
                    // Bytes before an object never join bytes after it.
                    self.carry.clear();
                    rest = &rest[end..];
                }
                None => break,
            }
        }
        // Keep the tail, for a needle that continues in the next chunk: after a short chunk,
        // what was carried before still counts (none of it after a full tail).
        let tail = &rest[rest.len().saturating_sub(CARRY)..];
        self.carry.keep_last(CARRY - tail.len());
        self.carry.extend(tail);
    }

    /// The usage in a whole body.
    pub fn scan_all(body: &[u8]) -> Option<TokenUsage> {
        let mut s = UsageScanner::default();
        s.feed(body);
        s.last
    }

    /// The last usage object read whole, if any.
    pub fn usage(&self) -> Option<TokenUsage> {
        self.last
    }

    /// The last input-token count read, if any.
    pub fn tokens(&self) -> Option<u64> {
        self.last.map(|u| u.input)
    }
}

/// The first needle in `hay`: (start, end, is it the OpenAI one).
fn first_needle(hay: &[u8]) -> Option<(usize, usize, bool)> {
    let mut from = 0;
    while let Some(p) = STEM_FINDER.find(&hay[from..]).map(|p| from + p) {
        let after = &hay[p..];
        if after.starts_with(NEEDLES[0]) {
            return Some((p, p + NEEDLES[0].len(), false));
        }
        if after.starts_with(NEEDLES[1]) {
            return Some((p, p + NEEDLES[1].len(), true));
        }
        // Another name (`"usageFoo"`), or a needle cut off at the end (the carry finds it).
        from = p + 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan_in_pieces(s: &str, piece: usize) -> Option<TokenUsage> {
        let mut sc = UsageScanner::default();
        for c in s.as_bytes().chunks(piece) {
            sc.feed(c);
        }
        sc.usage()
    }

    #[test]
    fn audio_tokens_are_read_from_the_modality_details_of_rest_and_live_usage() {
        let live = r#"{"usageMetadata":{"promptTokenCount":120,"responseTokenCount":300,
            "promptTokensDetails":[{"modality":"TEXT","tokenCount":20},{"modality":"AUDIO","tokenCount":100}],
            "responseTokensDetails":[{"modality":"AUDIO","tokenCount":300}]}}"#;
        let u = UsageScanner::scan_all(live.as_bytes()).unwrap();
        assert_eq!(
            (u.input, u.input_audio, u.output, u.output_audio),
            (120, 100, 300, 300)
        );
        let rest = r#"{"usageMetadata":{"promptTokenCount":50,"candidatesTokenCount":7,
            "promptTokensDetails":[{"modality":"AUDIO","tokenCount":40}],
            "candidatesTokensDetails":[{"modality":"TEXT","tokenCount":7}]}}"#;
        let u = UsageScanner::scan_all(rest.as_bytes()).unwrap();
        assert_eq!((u.input_audio, u.output_audio), (40, 0));
    }

    #[test]
    fn keeps_the_last_cumulative_usage_never_a_sum() {
        let sse = "data: {\"usageMetadata\": {\"promptTokenCount\": 12, \"candidatesTokenCount\": 2, \"totalTokenCount\": 14}}\r\n\r\n\
                   data: {\"usageMetadata\": {\"promptTokenCount\": 12, \"cachedContentTokenCount\": 4, \"candidatesTokenCount\": 18, \"thoughtsTokenCount\": 7, \"toolUsePromptTokenCount\": 3, \"promptTokensDetails\": [{\"modality\": \"TEXT\", \"tokenCount\": 12}]}}\r\n\r\n";
        let want = TokenUsage {
            input: 12,
            cached: 4,
            output: 18,
            thinking: 7,
            tool: 3,
            ..TokenUsage::default()
        };
        for piece in [1, 2, 3, 7, 16, 1000] {
            assert_eq!(scan_in_pieces(sse, piece), Some(want), "piece {piece}");
        }
        let grows = "[{\"usageMetadata\":{\"promptTokenCount\":5}},\n{\"usageMetadata\":{\"promptTokenCount\": 1234}}]";
        for piece in [1, 5, 9, 1000] {
            assert_eq!(scan_in_pieces(grows, piece).map(|u| u.input), Some(1234));
        }
    }

    #[test]
    fn ignores_the_names_inside_generated_text_and_reads_openai_usage() {
        let body = r#"{"candidates":[{"content":{"parts":[{"text":"say \"usageMetadata\": {\"promptTokenCount\": 99} and \"usage\": {}"}]}}]}"#;
        assert_eq!(scan_in_pieces(body, 1000), None);
        let openai = r#"{"choices":[],"usage":{"prompt_tokens": 77,"completion_tokens":30,"prompt_tokens_details":{"cached_tokens":7},"completion_tokens_details":{"reasoning_tokens":20}}}"#;
        for piece in [1, 4, 1000] {
            assert_eq!(
                scan_in_pieces(openai, piece),
                Some(TokenUsage {
                    input: 77,
                    cached: 7,
                    output: 10,
                    thinking: 20,
                    tool: 0,
                    ..TokenUsage::default()
                })
            );
        }
    }

    #[test]
    fn openai_stream_chunks_with_null_usage_are_skipped() {
        let sse = "data: {\"choices\":[],\"usage\":null}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":2}}\n\ndata: [DONE]\n\n";
        for piece in [1, 3, 1000] {
            let u = scan_in_pieces(sse, piece).unwrap();
            assert_eq!((u.input, u.output), (5, 2), "piece {piece}");
        }
    }

    #[test]
    fn a_text_containing_braces_and_quotes_inside_usage_strings_is_read_whole() {
        let body = r#"{"usageMetadata":{"trafficType":"ON_DEMAND \"}{","promptTokenCount":9}}"#;
        assert_eq!(scan_in_pieces(body, 3).map(|u| u.input), Some(9));
    }
}
