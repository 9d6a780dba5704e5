//! What a traced answer says of itself as it passes: its finish reasons (`finishReason`,
//! OpenAI's `finish_reason`) and the model that answered (`modelVersion`), found with memchr
//! without parsing or copying the body, and, only with `otel.record_content`, its first
//! [`CONTENT_LIMIT`] bytes. Used for sampled requests only.

use super::record::Value;
use super::span::CONTENT_LIMIT;

/// Distinct finish reasons kept (a candidate count is small; the bound is for hostile input).
const MAX_REASONS: usize = 8;
/// Longest value read (a finish reason or a model name).
const MAX_VALUE: usize = 96;
/// Bytes of one chunk kept to find a needle split across two.
const CARRY: usize = 128;

/// The keys looked for, with their searchers built once (building one per chunk cost more
/// than the search): `"finish` for both spellings of the finish reason (one pass over the
/// answer, not two), then `"modelVersion"` (searched forward: memchr's reverse searcher cost
/// more, though it stops at the last one).
static NEEDLES: std::sync::LazyLock<[memchr::memmem::Finder<'static>; 2]> =
    std::sync::LazyLock::new(|| {
        use memchr::memmem::Finder;
        [Finder::new(b"\"finish"), Finder::new(b"\"modelVersion\"")]
    });

/// What may follow `"finish`: Gemini's `finishReason`, OpenAI's `finish_reason`.
const FINISH_ENDS: [&[u8]; 2] = [b"Reason\"", b"_reason\""];

#[derive(Clone, Copy)]
enum Field {
    Finish,
    Model,
}

/// The facts read so far.
#[derive(Debug, Default)]
pub struct AnswerFacts {
    /// As the attribute's items (short ones held in place: no allocation each).
    pub finish_reasons: Vec<Value>,
    pub model: Option<Value>,
    /// The answer's first bytes (with `record_content` only).
    pub content: Option<Vec<u8>>,
    carry: Vec<u8>,
}

impl AnswerFacts {
    pub fn new(record_content: bool) -> AnswerFacts {
        AnswerFacts {
            content: record_content.then(Vec::new),
            ..AnswerFacts::default()
        }
    }

    pub fn feed(&mut self, chunk: &[u8]) {
        self.feed_in(chunk, true);
    }

    /// The answer's last chunk: nothing is kept for a next one.
    pub fn feed_last(&mut self, chunk: &[u8]) {
        self.feed_in(chunk, false);
    }

    fn feed_in(&mut self, chunk: &[u8], more: bool) {
        if let Some(c) = self.content.as_mut() {
            let room = CONTENT_LIMIT.saturating_sub(c.len());
            c.extend_from_slice(&chunk[..chunk.len().min(room)]);
        }
        if !self.carry.is_empty() {
            // A needle that began in the last chunk: seen again here, found once more is
            // harmless (reasons are a set, the model is the last one).
            let mut joined = std::mem::take(&mut self.carry);
            joined.extend_from_slice(&chunk[..chunk.len().min(CARRY + MAX_VALUE)]);
            self.scan(&joined);
        }
        self.scan(chunk);
        self.carry.clear();
        if more {
            let keep = chunk.len().min(CARRY);
            self.carry.extend_from_slice(&chunk[chunk.len() - keep..]);
        }
    }

    fn scan(&mut self, hay: &[u8]) {
        let [finish, model] = &*NEEDLES;
        for at in finish.find_iter(hay) {
            let rest = &hay[at + finish.needle().len()..];
            if let Some(end) = FINISH_ENDS.iter().find(|e| rest.starts_with(e))
                && let Some(v) = value_after(&rest[end.len()..])
            {
                self.keep(Field::Finish, v);
            }
        }
        for at in model.find_iter(hay) {
            if let Some(v) = value_after(&hay[at + model.needle().len()..]) {
                self.keep(Field::Model, v);
            }
        }
    }

    /// Keep `value` unless it is the one kept already (compared as bytes: a stream repeats its
    /// model in every chunk); its UTF-8 checked only when it is kept.
    fn keep(&mut self, field: Field, value: &[u8]) {
        let text = || Value::from_utf8(value);
        match field {
            Field::Finish => {
                if self.finish_reasons.len() < MAX_REASONS
                    && !self
                        .finish_reasons
                        .iter()
                        .any(|r| r.str_bytes() == Some(value))
                    && let Some(v) = text()
                {
                    // Room for one: most answers have one reason (and then the list is
                    // boxed without a move).
                    self.finish_reasons.reserve_exact(1);
                    self.finish_reasons.push(v);
                }
            }
            Field::Model => {
                if self.model.as_ref().and_then(Value::str_bytes) != Some(value)
                    && let Some(v) = text()
                {
                    self.model = Some(v);
                }
            }
        }
    }
}

/// The string value after a key: `: "VALUE"` (whitespace allowed), when it is whole here.
fn value_after(rest: &[u8]) -> Option<&[u8]> {
    let mut i = 0;
    let skip = |i: &mut usize| {
        while rest.get(*i).is_some_and(|b| b.is_ascii_whitespace()) {
            *i += 1;
        }
    };
    skip(&mut i);
    (rest.get(i) == Some(&b':')).then_some(())?;
    i += 1;
    skip(&mut i);
    (rest.get(i) == Some(&b'"')).then_some(())?;
    let start = i + 1;
    let end = memchr::memchr2(b'"', b'\\', &rest[start..rest.len().min(start + MAX_VALUE)])?;
    (rest[start + end] == b'"').then(|| &rest[start..start + end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finish_reasons_and_model_are_read_across_chunks() {
        let body = br#"data: {"candidates":[{"content":{"parts":[{"text":"hi"}]},"finishReason": "STOP"}],"modelVersion":"gemini-2.5-flash-001"}"#;
        for (split, last) in (1..body.len()).flat_map(|i| [(i, false), (i, true)]) {
            let mut f = AnswerFacts::new(false);
            f.feed(&body[..split]);
            if last {
                f.feed_last(&body[split..]);
            } else {
                f.feed(&body[split..]);
            }
            assert_eq!(
                f.finish_reasons,
                vec![Value::text("STOP")],
                "split at {split}"
            );
            assert_eq!(
                f.model.as_ref().and_then(Value::as_str),
                Some("gemini-2.5-flash-001")
            );
            assert!(f.content.is_none());
        }
    }

    #[test]
    fn the_last_whole_model_of_the_answer_is_kept() {
        let mut f = AnswerFacts::new(false);
        f.feed(
            br#"data: {"modelVersion":"a"}
data: {"modelVersion":"b"}
data: {"modelVersion":"c"#,
        );
        assert_eq!(f.model.as_ref().and_then(Value::as_str), Some("b"));
        f.feed_last(br#"d"}"#);
        assert_eq!(f.model.as_ref().and_then(Value::as_str), Some("cd"));
    }

    #[test]
    fn openai_finish_reasons_are_read_and_kept_distinct() {
        let mut f = AnswerFacts::new(false);
        f.feed(br#"{"choices":[{"finish_reason":"stop"},{"finishMessage":"no"},{"finish_reason":"length"},{"finish_reason":"stop"}]}"#);
        assert_eq!(
            f.finish_reasons,
            vec![Value::text("stop"), Value::text("length")]
        );
    }

    #[test]
    fn a_value_is_kept_as_text_only_when_it_is_utf8() {
        let mut f = AnswerFacts::new(false);
        f.feed_last("{\"finishReason\":\"\u{e9}t\u{e9}\",\"modelVersion\":\"m\"}".as_bytes());
        assert_eq!(f.finish_reasons, vec![Value::text("\u{e9}t\u{e9}")]);
        assert_eq!(f.model.as_ref().and_then(Value::as_str), Some("m"));
        let mut f = AnswerFacts::new(false);
        f.feed_last(b"{\"finishReason\":\"\xff\",\"modelVersion\":\"\xc3\"}");
        assert!(f.finish_reasons.is_empty() && f.model.is_none());
    }

    #[test]
    fn content_is_kept_only_when_asked_and_bounded() {
        let mut f = AnswerFacts::new(true);
        f.feed(&vec![b'a'; CONTENT_LIMIT + 10]);
        assert_eq!(f.content.as_ref().map(Vec::len), Some(CONTENT_LIMIT));
    }

    #[test]
    fn hostile_values_are_bounded() {
        let mut f = AnswerFacts::new(false);
        for i in 0..100 {
            f.feed(format!(r#"{{"finishReason":"R{i}"}}"#).as_bytes());
        }
        assert_eq!(f.finish_reasons.len(), MAX_REASONS);
        let long = format!(r#"{{"modelVersion":"{}"}}"#, "m".repeat(1000));
        let mut f = AnswerFacts::new(false);
        f.feed(long.as_bytes());
        assert!(f.model.is_none());
    }
}
