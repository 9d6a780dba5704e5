//! The names of a span's attributes, as the OpenTelemetry semantic conventions 1.42.0 give them
//! (GenAI: development status), and the proxy's own under `gqp.`. Each is a [`Key`] whose OTLP
//! encoding is made at compile time, alone and as the head of a span's attribute: the exporter
//! copies it whole.

use super::pb::{LEN, tag1};

/// An attribute's name, with its encoding as OTLP's `KeyValue.key` field (tag, length, bytes).
pub struct Key {
    name: &'static str,
    /// The head of the key's `KeyValue` as a span's attribute (`Span.attributes`, field 9),
    /// for a value whose lengths take a byte each: the field's tag, its length, the `key` field
    /// ([`Key::wire`], from byte 2), `value`'s tag and length, and the `AnyValue` member's tag;
    /// the lengths and the member's tag are zeros, set as it is written ([`Key::span_head`]).
    span: [u8; Key::SPAN],
}

impl Key {
    /// Room for the encoded field: a name of up to 62 bytes.
    pub const WIRE: usize = 64;
    /// Room for the span attribute's head: the key field and 5 bytes.
    pub const SPAN: usize = Key::WIRE + 8;

    pub const fn new(name: &'static str) -> Key {
        let n = name.len();
        assert!(n + 2 <= Key::WIRE, "an attribute name longer than 62 bytes");
        let mut span = [0; Key::SPAN];
        // Field 9 (`attributes`), length-delimited, its length set as written; the key: field
        // 1, length-delimited, its length fitting one byte; field 2 (`value`), length-delimited.
        span[0] = tag1(9, LEN);
        span[2] = tag1(1, LEN);
        span[3] = n as u8;
        let mut i = 0;
        while i < n {
            span[4 + i] = name.as_bytes()[i];
            i += 1;
        }
        span[n + 4] = tag1(2, LEN);
        Key { name, span }
    }

    /// The span attribute's head, padded: its first [`Key::wire_len`] + 5 bytes are it, bytes
    /// 1 (the message's length), [`Key::wire_len`] + 3 (the value's) and + 4 (the member's
    /// tag) to be set.
    pub fn span_head(&self) -> &[u8; Key::SPAN] {
        &self.span
    }

    /// The encoded `key` field, padded: its first [`Key::wire_len`] bytes are it.
    pub fn wire(&self) -> &[u8; Key::WIRE] {
        match self.span[2..].first_chunk() {
            Some(wire) => wire,
            None => unreachable!("Key::SPAN is Key::WIRE + 8"),
        }
    }

    pub fn wire_len(&self) -> usize {
        self.name.len() + 2
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.name.fmt(f)
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Key) -> bool {
        self.name == other.name
    }
}

pub const OPERATION: &Key = &Key::new("gen_ai.operation.name");
pub const PROVIDER: &Key = &Key::new("gen_ai.provider.name");
/// The name before `gen_ai.provider.name` (conventions up to 1.36), for older backends.
pub const SYSTEM: &Key = &Key::new("gen_ai.system");
pub const REQUEST_MODEL: &Key = &Key::new("gen_ai.request.model");
pub const REQUEST_STREAM: &Key = &Key::new("gen_ai.request.stream");
pub const RESPONSE_MODEL: &Key = &Key::new("gen_ai.response.model");
pub const FINISH_REASONS: &Key = &Key::new("gen_ai.response.finish_reasons");
/// Seconds to the first chunk of the answer.
pub const TIME_TO_FIRST_CHUNK: &Key = &Key::new("gen_ai.response.time_to_first_chunk");
pub const INPUT_TOKENS: &Key = &Key::new("gen_ai.usage.input_tokens");
pub const OUTPUT_TOKENS: &Key = &Key::new("gen_ai.usage.output_tokens");
pub const REASONING_TOKENS: &Key = &Key::new("gen_ai.usage.reasoning.output_tokens");
pub const CACHED_TOKENS: &Key = &Key::new("gen_ai.usage.cache_read.input_tokens");
pub const INPUT_MESSAGES: &Key = &Key::new("gen_ai.input.messages");
pub const OUTPUT_MESSAGES: &Key = &Key::new("gen_ai.output.messages");
pub const METHOD: &Key = &Key::new("http.request.method");
pub const PATH: &Key = &Key::new("url.path");
pub const STATUS: &Key = &Key::new("http.response.status_code");
pub const ERROR_TYPE: &Key = &Key::new("error.type");
pub const CLIENT: &Key = &Key::new("gqp.client");
pub const PROJECT: &Key = &Key::new("gqp.project");
/// The pooled key's masked form (`AIza…abcd`), never the key.
pub const KEY: &Key = &Key::new("gqp.key");
/// `HIT`, `MISS` or `BYPASS` when the response cache looked at the request.
pub const CACHE: &Key = &Key::new("gqp.cache");
pub const QUEUE_WAIT_MS: &Key = &Key::new("gqp.queue.wait_ms");
pub const ATTEMPTS: &Key = &Key::new("gqp.attempts");
pub const ATTEMPT: &Key = &Key::new("gqp.attempt");
pub const ESTIMATED_TOKENS: &Key = &Key::new("gqp.estimated_tokens");
/// What the answer cost the project, in USD (the ledger's price table).
pub const COST_USD: &Key = &Key::new("gqp.cost_usd");
/// Google's answer as the proxy read it (`deliver`, `quota_exhausted`, ...).
pub const VERDICT: &Key = &Key::new("gqp.verdict");
/// Why the attempt was tried again (`gqp_retries_total{reason}`).
pub const RETRY_REASON: &Key = &Key::new("gqp.retry_reason");
/// The body ended (false: the client went away or the stream broke off).
pub const COMPLETE: &Key = &Key::new("gqp.complete");
pub const STORE: &Key = &Key::new("gqp.store");
/// How a Live session ended (`completed`, `shutdown`, a refusal's outcome, ...).
pub const LIVE_OUTCOME: &Key = &Key::new("gqp.live.outcome");
