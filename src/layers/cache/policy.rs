//! What the cache may hold: which calls are cacheable, what a request's `Cache-Control` asks,
//! whether a generation is deterministic enough to repeat, and whether an answer may be stored
//! (a clean `STOP` for every candidate, nothing blocked, no grounding or URL context that goes
//! stale).

use std::time::Duration;

use serde_json::Value;

use crate::config::cache::MAX_TTL;
use crate::layers::estimate::Estimated;

/// A cacheable call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `generateContent`, `streamGenerateContent`, OpenAI chat completions.
    Generate,
    /// `embedContent`, `batchEmbedContents`, OpenAI embeddings.
    Embed,
    /// `countTokens`.
    Count,
}

/// The kind of a cacheable call, `None` for the rest (uploads, files, models, tuned models,
/// batches: project-bound or not worth keeping).
pub fn kind(method: &http::Method, est: &Estimated) -> Option<Kind> {
    let route = &est.route;
    if *method != http::Method::POST || route.upload || route.resource.is_some() {
        return None;
    }
    if route.openai {
        return match route.family {
            crate::route::QuotaFamily::Generate => Some(Kind::Generate),
            crate::route::QuotaFamily::Embed => Some(Kind::Embed),
            _ => None,
        };
    }
    route.model.as_ref()?;
    match route.action.as_deref()? {
        "generateContent" | "streamGenerateContent" => Some(Kind::Generate),
        "embedContent" | "batchEmbedContents" => Some(Kind::Embed),
        "countTokens" => Some(Kind::Count),
        _ => None,
    }
}

/// What a request's `Cache-Control` asks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Directives {
    /// Skip the lookup, store the fresh answer.
    pub no_cache: bool,
    /// Neither read nor write.
    pub no_store: bool,
    /// Accept only entries younger than this; store with this time to live.
    pub max_age: Option<Duration>,
}

impl Directives {
    /// The directives of every `Cache-Control` header; unknown ones are ignored, as HTTP says.
    pub fn of(headers: &http::HeaderMap) -> Directives {
        let mut d = Directives::default();
        for v in headers.get_all(http::header::CACHE_CONTROL) {
            let Ok(v) = v.to_str() else { continue };
            for part in v.split(',') {
                let part = part.trim();
                let (name, value) = part.split_once('=').unwrap_or((part, ""));
                match name.trim().to_ascii_lowercase().as_str() {
                    "no-cache" => d.no_cache = true,
                    "no-store" => d.no_store = true,
                    "max-age" => {
                        if let Ok(n) = value.trim().trim_matches('"').parse::<u64>() {
                            d.max_age = Some(Duration::from_secs(n).min(MAX_TTL));
                        }
                    }
                    _ => {}
                }
            }
        }
        d
    }
}

/// Forwarded `x-goog-*` headers that cannot change Google's answer: the credential (stripped
/// before forwarding) and the SDKs' client telemetry.
const HARMLESS_GOOG: &[&str] = &["x-goog-api-key", "x-goog-api-client"];

/// Whether the request carries a header that is forwarded to Google and may shape its answer
/// (`x-goog-fieldmask` trims it, `x-goog-user-project` bills another project, ...): such an
/// answer is not the answer to the plain request, so it is neither read nor stored.
pub fn shapes_answer(headers: &http::HeaderMap) -> bool {
    headers.keys().any(|n| {
        let n = n.as_str();
        n.starts_with("x-goog-") && !HARMLESS_GOOG.contains(&n)
    })
}

/// The parts of a generation body that say how random its answer is.
/// Whether a generation asks for temperature 0 (the same answer each time, as far as Google
/// goes; the estimate read it from the body); embeddings and token counts always are.
pub fn deterministic(kind: Kind, temperature_zero: bool) -> bool {
    kind != Kind::Generate || temperature_zero
}

/// Whether a whole 200 answer may be stored: every candidate finished with `STOP` (in a stream,
/// the last `finishReason` seen for each candidate index; a generation must have at least one
/// candidate), nothing was blocked, no grounding or URL context metadata (search results and
/// pages change), and the answer reads as JSON (one value, a JSON-array stream or SSE events).
pub fn storable(kind: Kind, body: &[u8]) -> bool {
    let mut check = Check::default();
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Array(items)) => items.iter().for_each(|v| check.answer(v)),
        Ok(v) => check.answer(&v),
        Err(_) => {
            // Server-sent events: `data: {...}` lines (OpenAI ends with `data: [DONE]`).
            let text = match std::str::from_utf8(body) {
                Ok(t) => t,
                Err(_) => return false,
            };
            let mut events = 0;
            for line in text.lines() {
                let Some(data) = line.strip_prefix("data:") else {
                    continue;
                };
                let data = data.trim();
                if data == "[DONE]" {
                    continue;
                }
                match serde_json::from_str::<Value>(data) {
                    Ok(v) => check.answer(&v),
                    Err(_) => return false,
                }
                events += 1;
            }
            if events == 0 {
                return false;
            }
        }
    }
    !check.bad
        && check
            .finished
            .values()
            .all(|r| r.as_deref() == Some("STOP"))
        && (kind != Kind::Generate || !check.finished.is_empty())
}

/// Answer metadata that depends on the world at the time (search results, fetched pages).
const STALE_METADATA: &[&str] = &["groundingMetadata", "urlContextMetadata"];

#[derive(Default)]
struct Check {
    bad: bool,
    /// Per candidate (or OpenAI choice) index: the last finish reason seen, upper-cased.
    finished: std::collections::BTreeMap<u64, Option<String>>,
}

impl Check {
    fn answer(&mut self, v: &Value) {
        if v.pointer("/promptFeedback/blockReason").is_some()
            || STALE_METADATA.iter().any(|m| v.get(m).is_some())
        {
            self.bad = true;
        }
        let candidates = v.get("candidates").and_then(Value::as_array);
        // The OpenAI surface's choices say `finish_reason: "stop"`.
        let choices = v.get("choices").and_then(Value::as_array);
        for (list, field) in [(candidates, "finishReason"), (choices, "finish_reason")] {
            for (n, c) in list.into_iter().flatten().enumerate() {
                if STALE_METADATA.iter().any(|m| c.get(m).is_some()) {
                    self.bad = true;
                }
                let index = c.get("index").and_then(Value::as_u64).unwrap_or(n as u64);
                let seen = self.finished.entry(index).or_default();
                if let Some(r) = c.get(field).and_then(Value::as_str) {
                    *seen = Some(r.to_ascii_uppercase());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_control_directives_are_read() {
        let mut h = http::HeaderMap::new();
        assert_eq!(Directives::of(&h), Directives::default());
        h.append("cache-control", "No-Cache, max-age=30".parse().unwrap());
        h.append("cache-control", "no-store".parse().unwrap());
        let d = Directives::of(&h);
        assert!(d.no_cache && d.no_store);
        assert_eq!(d.max_age, Some(Duration::from_secs(30)));
    }

    #[test]
    fn goog_headers_but_the_key_and_telemetry_shape_the_answer() {
        let mut h = http::HeaderMap::new();
        h.insert("x-goog-api-key", "k".parse().unwrap());
        h.insert("x-goog-api-client", "google-genai-sdk/1.0".parse().unwrap());
        h.insert("content-type", "application/json".parse().unwrap());
        assert!(!shapes_answer(&h));
        for name in [
            "x-goog-fieldmask",
            "X-Goog-User-Project",
            "x-goog-request-params",
        ] {
            let mut h = h.clone();
            h.insert(
                http::HeaderName::try_from(name).unwrap(),
                "x".parse().unwrap(),
            );
            assert!(shapes_answer(&h), "{name}");
        }
    }

    #[test]
    fn only_temperature_zero_generations_are_deterministic() {
        assert!(deterministic(Kind::Generate, true));
        assert!(!deterministic(Kind::Generate, false));
        assert!(deterministic(Kind::Embed, false));
    }

    #[test]
    fn only_clean_finished_answers_are_storable() {
        let stop = br#"{"candidates": [{"finishReason": "STOP"}]}"#;
        assert!(storable(Kind::Generate, stop));
        for bad in [
            &br#"{"candidates": [{"finishReason": "MAX_TOKENS"}]}"#[..],
            br#"{"candidates": [{"finishReason": "SAFETY"}]}"#,
            br#"{"promptFeedback": {"blockReason": "SAFETY"}}"#,
            br#"{"candidates": [{"finishReason": "STOP", "groundingMetadata": {}}]}"#,
            br#"{"candidates": [{"content": {}}]}"#,
            b"not json",
        ] {
            assert!(
                !storable(Kind::Generate, bad),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let sse = b"data: {\"candidates\": [{}]}\r\n\r\ndata: {\"candidates\": [{\"finishReason\": \"STOP\"}]}\r\n\r\n";
        assert!(storable(Kind::Generate, sse));
        let cut = b"data: {\"candidates\": [{}]}\r\n\r\n";
        assert!(!storable(Kind::Generate, cut));
        let array = br#"[{"candidates": [{}]}, {"candidates": [{"finishReason": "STOP"}]}]"#;
        assert!(storable(Kind::Generate, array));
        assert!(storable(
            Kind::Embed,
            br#"{"embedding": {"values": [0.1]}}"#
        ));
        let chat = br#"{"choices": [{"finish_reason": "length"}]}"#;
        assert!(!storable(Kind::Generate, chat));
        assert!(storable(
            Kind::Generate,
            br#"{"choices": [{"index": 0, "finish_reason": "stop"}]}"#
        ));
    }

    #[test]
    fn every_candidate_must_stop_not_just_one() {
        for bad in [
            // One candidate stops, the other never says why it ended.
            &br#"{"candidates": [{"finishReason": "STOP"}, {"content": {}}]}"#[..],
            br#"{"candidates": [{"index": 0, "finishReason": "STOP"}, {"index": 1}]}"#,
            br#"{"candidates": [{"finishReason": "STOP"}, {"finishReason": "MAX_TOKENS"}]}"#,
            br#"{"choices": [{"finish_reason": "stop"}, {"index": 1}]}"#,
            br#"{"candidates": [{"finishReason": "STOP", "urlContextMetadata": {}}]}"#,
            br#"{"candidates": [{"finishReason": "STOP"}], "urlContextMetadata": {}}"#,
        ] {
            assert!(
                !storable(Kind::Generate, bad),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(storable(
            Kind::Generate,
            br#"{"candidates": [{"finishReason": "STOP"}, {"finishReason": "STOP"}]}"#
        ));
        // A stream: the last reason seen for each index counts.
        let both = b"data: {\"candidates\": [{\"index\": 0}, {\"index\": 1}]}\r\n\r\n\
data: {\"candidates\": [{\"index\": 1, \"finishReason\": \"STOP\"}]}\r\n\r\n\
data: {\"candidates\": [{\"index\": 0, \"finishReason\": \"STOP\"}]}\r\n\r\n";
        assert!(storable(Kind::Generate, both));
        let one_cut = b"data: {\"candidates\": [{\"index\": 0}, {\"index\": 1}]}\r\n\r\n\
data: {\"candidates\": [{\"index\": 1, \"finishReason\": \"STOP\"}]}\r\n\r\n";
        assert!(!storable(Kind::Generate, one_cut));
    }
}
