//! Reading Google's error answers (QuotaFailure, RetryInfo, ErrorInfo) into a [`Verdict`]:
//! what the answer means for the key that got it.

use serde_json::Value;

use crate::error::LimitKind;
use crate::quota::{DayInfo, MINUTE_MS};

/// What an upstream answer means for the key that got it.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Pass it to the client.
    Deliver,
    /// A 429 naming the quota that ran out: hold the (project, model) for `cooldown_ms`.
    QuotaExhausted {
        cooldown_ms: u64,
        kinds: Vec<LimitKind>,
        /// Limits Google reported (`quotaValue`), by kind.
        reported: Vec<(LimitKind, u64)>,
    },
    /// A 429 without details (or an IP-level throttle).
    RateLimited { retry_delay_ms: Option<u64> },
    /// A 429 from Google's spend-based limits (a billing tier's monthly cap): the whole
    /// project is held, with backoff, until it clears. `named`: what the answer named (a
    /// `quotaId`, an `ErrorInfo` reason, or `message` when only the message said so).
    SpendCapped {
        retry_delay_ms: Option<u64>,
        named: String,
    },
    /// The key is dead: invalid, leaked or blocked.
    DeadKey { reason: String },
    /// 5xx: try again, preferably on another key.
    Transient,
}

/// `"26s"`, `"0s"`, `"38.962214405s"` → milliseconds. A number too large for milliseconds
/// saturates (callers clamp it to something sensible).
pub fn parse_duration_ms(s: &str) -> Option<u64> {
    let secs: f64 = s.trim().strip_suffix('s')?.parse().ok()?;
    // Float-to-integer casts saturate in Rust: 1e300 s becomes u64::MAX ms, never a wrap.
    (secs.is_finite() && secs >= 0.0).then(|| (secs * 1000.0).ceil() as u64)
}

/// The longest hold a number from Google may cause: until the next quota-day reset plus an
/// hour. Nothing Google sends can hold a key longer, or overflow a clock reading.
pub fn max_hold_ms(day: &DayInfo, now_ms: i64) -> u64 {
    let to_midnight = u64::try_from(day.next_midnight_ms.saturating_sub(now_ms)).unwrap_or(0);
    to_midnight.saturating_add(3_600_000)
}

/// `ErrorInfo.reason`s that say the key itself is unusable (never text a client could write).
const DEAD_KEY_REASONS: &[&str] = &[
    "API_KEY_INVALID",
    "API_KEY_EXPIRED",
    "API_KEY_SERVICE_BLOCKED",
];

/// Google's fixed message openings for dead keys. Only a *prefix* counts: Google echoes
/// client-chosen names inside messages ("... the File leaked or it may not exist.", "Unknown
/// name \"API key not valid\""), so a substring anywhere would let a client disable keys.
const DEAD_KEY_PREFIXES: &[(u16, &str, &str)] = &[
    (
        400,
        "API key not valid.",
        "API_KEY_INVALID: API key not valid",
    ),
    (
        403,
        "Your API key was reported as leaked",
        "PERMISSION_DENIED: key reported as leaked",
    ),
];

/// The dead-key verdict of an error answer, if it is one.
fn dead_key(status: u16, message: &str, reasons: &[&str]) -> Option<String> {
    if matches!(status, 400 | 401 | 403)
        && let Some(r) = reasons.iter().find(|r| DEAD_KEY_REASONS.contains(r))
    {
        return Some(format!("{r}: key rejected by the Gemini API"));
    }
    DEAD_KEY_PREFIXES
        .iter()
        .find(|(code, prefix, _)| *code == status && message.starts_with(prefix))
        .map(|(_, _, reason)| reason.to_string())
}

/// Read an error answer from Google. `body` may be a plain envelope or a JSON-array stream's
/// `[{"error": ...}]`. Every duration in it is clamped to [`max_hold_ms`].
pub fn classify(status: u16, body: &[u8], day: &DayInfo, now_ms: i64) -> Verdict {
    if status < 400 {
        return Verdict::Deliver;
    }
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let err = parsed.as_ref().and_then(|v| match v {
        Value::Array(a) => a.first().and_then(|e| e.get("error")),
        other => other.get("error"),
    });
    let message = err
        .and_then(|e| e.get("message"))
        .and_then(Value::as_str)
        .unwrap_or("");
    let details: &[Value] = err
        .and_then(|e| e.get("details"))
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    let reasons: Vec<&str> = details
        .iter()
        .filter(|d| type_is(d, "ErrorInfo"))
        .filter_map(|d| d.get("reason").and_then(Value::as_str))
        .collect();
    let max_hold = max_hold_ms(day, now_ms);

    match status {
        429 => {
            let retry_delay_ms = details
                .iter()
                .filter(|d| type_is(d, "RetryInfo"))
                .find_map(|d| d.get("retryDelay").and_then(Value::as_str))
                .and_then(parse_duration_ms)
                .map(|ms| ms.min(max_hold));
            let mut kinds = Vec::new();
            let mut reported = Vec::new();
            // Google's structured fields first: a reason or a violation naming spend.
            let mut spend = reasons
                .iter()
                .find(|r| names_spend(r))
                .map(|r| r.chars().take(120).collect::<String>());
            for d in details.iter().filter(|d| type_is(d, "QuotaFailure")) {
                for v in d
                    .get("violations")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let id = v.get("quotaId").and_then(Value::as_str).unwrap_or("");
                    let metric = v.get("quotaMetric").and_then(Value::as_str).unwrap_or("");
                    if names_spend(id) || names_spend(metric) {
                        spend.get_or_insert_with(|| {
                            if id.is_empty() { metric } else { id }
                                .chars()
                                .take(120)
                                .collect()
                        });
                        continue;
                    }
                    let kind = if id.contains("PerDay") || metric.contains("per_day") {
                        LimitKind::RequestsPerDay
                    } else if id.contains("InputTokens") || metric.contains("input_token") {
                        LimitKind::TokensPerMinute
                    } else if id.contains("PerMinute") || metric.contains("requests") {
                        LimitKind::RequestsPerMinute
                    } else {
                        continue;
                    };
                    kinds.push(kind);
                    let value = v.get("quotaValue").and_then(|q| match q {
                        Value::String(s) => s.parse::<u64>().ok(),
                        Value::Number(n) => n.as_u64(),
                        _ => None,
                    });
                    if let Some(value) = value {
                        reported.push((kind, value));
                    }
                }
            }
            // A spend cap outlasts any per-minute or per-day hold named with it. Without a
            // structured name, the message's fixed opening may say so (never its rest, which
            // can echo what a client sent).
            if spend.is_none() && kinds.is_empty() && opening_names_spend(message) {
                spend = Some("message".into());
            }
            if let Some(named) = spend {
                return Verdict::SpendCapped {
                    retry_delay_ms,
                    named,
                };
            }
            if kinds.is_empty() {
                return Verdict::RateLimited { retry_delay_ms };
            }
            // A per-day violation holds until midnight whatever retryDelay says; several: the
            // longest wins.
            let cooldown_ms = kinds
                .iter()
                .map(|k| match k {
                    LimitKind::RequestsPerDay => {
                        u64::try_from(day.next_midnight_ms.saturating_sub(now_ms))
                            .unwrap_or(0)
                            .max(1)
                    }
                    _ => retry_delay_ms.unwrap_or(MINUTE_MS as u64).max(1),
                })
                .max()
                .unwrap_or(MINUTE_MS as u64)
                .min(max_hold);
            Verdict::QuotaExhausted {
                cooldown_ms,
                kinds,
                reported,
            }
        }
        400 | 401 | 403 => match dead_key(status, message, &reasons) {
            Some(reason) => Verdict::DeadKey { reason },
            // Anything else (an unknown field, a file of another project, ...) is the
            // client's answer: delivered as Google sent it, never retried on other keys.
            None => Verdict::Deliver,
        },
        500 | 502 | 503 | 504 => Verdict::Transient,
        _ => Verdict::Deliver,
    }
}

/// Whether a structured field of Google's (a `quotaId`, `quotaMetric` or `ErrorInfo.reason`)
/// names a spend-based limit: spend, billing, cost or budget, in any case.
fn names_spend(field: &str) -> bool {
    let f = field.to_ascii_lowercase();
    ["spend", "billing", "cost", "budget"]
        .iter()
        .any(|w| f.contains(w))
}

/// Whether the opening of a 429's message (up to the first `:` or quote, after which Google
/// may quote a model or other client-chosen text) speaks of spend. "billing" alone does not
/// count: Google's ordinary quota message says "check your plan and billing details".
fn opening_names_spend(message: &str) -> bool {
    let end = message
        .find([':', '"', '\'', '`', '('])
        .unwrap_or(message.len());
    message[..end].to_ascii_lowercase().contains("spend")
}

fn type_is(detail: &Value, name: &str) -> bool {
    detail
        .get("@type")
        .and_then(Value::as_str)
        .is_some_and(|t| t.ends_with(&format!("google.rpc.{name}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono_tz::America::Los_Angeles;

    fn day(now: i64) -> DayInfo {
        DayInfo::at(Los_Angeles, now)
    }

    #[test]
    fn per_minute_429_cools_for_retry_delay() {
        let body = br#"{"error":{"code":429,"message":"quota","status":"RESOURCE_EXHAUSTED","details":[
          {"@type":"type.googleapis.com/google.rpc.QuotaFailure","violations":[{"quotaMetric":"generativelanguage.googleapis.com/generate_content_free_tier_requests","quotaId":"GenerateRequestsPerMinutePerProjectPerModel-FreeTier","quotaValue":"10"}]},
          {"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"38.962214405s"}]}}"#;
        let now = 1_780_000_000_000;
        match classify(429, body, &day(now), now) {
            Verdict::QuotaExhausted {
                cooldown_ms,
                kinds,
                reported,
            } => {
                assert_eq!(cooldown_ms, 38_963);
                assert_eq!(kinds, vec![LimitKind::RequestsPerMinute]);
                assert_eq!(reported, vec![(LimitKind::RequestsPerMinute, 10)]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn per_day_429_cools_until_pacific_midnight_whatever_retry_delay_says() {
        let body = br#"{"error":{"code":429,"status":"RESOURCE_EXHAUSTED","details":[
          {"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"5s"},
          {"@type":"type.googleapis.com/google.rpc.QuotaFailure","violations":[
            {"quotaId":"GenerateRequestsPerMinutePerProjectPerModel-FreeTier"},
            {"quotaId":"GenerateRequestsPerDayPerProjectPerModel-FreeTier","quotaValue":"250"}]}]}}"#;
        let now = 1_780_000_000_000;
        let d = day(now);
        match classify(429, body, &d, now) {
            Verdict::QuotaExhausted { cooldown_ms, .. } => {
                assert_eq!(cooldown_ms as i64, d.next_midnight_ms - now)
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bare_429_dead_keys_and_5xx_are_told_apart() {
        let now = 0;
        let bare = br#"{"error":{"code":429,"message":"Resource has been exhausted (e.g. check quota).","status":"RESOURCE_EXHAUSTED"}}"#;
        assert_eq!(
            classify(429, bare, &day(now), now),
            Verdict::RateLimited {
                retry_delay_ms: None
            }
        );
        let invalid = br#"{"error":{"code":400,"message":"API key not valid. Please pass a valid API key.","status":"INVALID_ARGUMENT","details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"API_KEY_INVALID","domain":"googleapis.com"}]}}"#;
        assert!(matches!(
            classify(400, invalid, &day(now), now),
            Verdict::DeadKey { .. }
        ));
        let leaked = br#"{"error":{"code":403,"message":"Your API key was reported as leaked. Please use another API key.","status":"PERMISSION_DENIED"}}"#;
        assert!(matches!(
            classify(403, leaked, &day(now), now),
            Verdict::DeadKey { .. }
        ));
        let file = br#"{"error":{"code":403,"message":"You do not have permission to access the File abc or it may not exist.","status":"PERMISSION_DENIED"}}"#;
        assert_eq!(classify(403, file, &day(now), now), Verdict::Deliver);
        assert_eq!(classify(503, b"{}", &day(now), now), Verdict::Transient);
        assert_eq!(classify(400, b"not json", &day(now), now), Verdict::Deliver);
        let wrapped = br#"[{"error":{"code":400,"message":"API key not valid.","status":"INVALID_ARGUMENT"}}]"#;
        assert!(matches!(
            classify(400, wrapped, &day(now), now),
            Verdict::DeadKey { .. }
        ));
    }

    #[test]
    fn client_chosen_text_in_a_message_is_never_a_dead_key() {
        let now = 0;
        // Google echoes a file name and an unknown field name inside its messages.
        let file = br#"{"error":{"code":403,"message":"You do not have permission to access the File leaked or it may not exist.","status":"PERMISSION_DENIED"}}"#;
        assert_eq!(classify(403, file, &day(now), now), Verdict::Deliver);
        let field = br#"{"error":{"code":400,"message":"Invalid JSON payload received. Unknown name \"API key not valid\": Cannot find field.","status":"INVALID_ARGUMENT","details":[{"@type":"type.googleapis.com/google.rpc.BadRequest","fieldViolations":[{"description":"Invalid JSON payload received. Unknown name \"API key not valid\": Cannot find field."}]}]}}"#;
        assert_eq!(classify(400, field, &day(now), now), Verdict::Deliver);
        let leaked_in_middle = br#"{"error":{"code":403,"message":"Model x: Your API key was reported as leaked","status":"PERMISSION_DENIED"}}"#;
        assert_eq!(
            classify(403, leaked_in_middle, &day(now), now),
            Verdict::Deliver
        );
    }

    #[test]
    fn structured_reasons_make_dead_keys_whatever_the_message() {
        let now = 0;
        for reason in [
            "API_KEY_INVALID",
            "API_KEY_EXPIRED",
            "API_KEY_SERVICE_BLOCKED",
        ] {
            let body = format!(
                r#"{{"error":{{"code":403,"message":"anything","status":"PERMISSION_DENIED","details":[{{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"{reason}","domain":"googleapis.com"}}]}}}}"#
            );
            match classify(403, body.as_bytes(), &day(now), now) {
                Verdict::DeadKey { reason: r } => assert!(r.starts_with(reason), "{r}"),
                other => panic!("{reason}: {other:?}"),
            }
        }
        let other_reason = br#"{"error":{"code":403,"message":"x","status":"PERMISSION_DENIED","details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"SERVICE_DISABLED"}]}}"#;
        assert_eq!(
            classify(403, other_reason, &day(now), now),
            Verdict::Deliver
        );
    }

    fn spend_429(details: &str, message: &str) -> Vec<u8> {
        format!(
            r#"{{"error":{{"code":429,"message":"{message}","status":"RESOURCE_EXHAUSTED","details":[{details}]}}}}"#
        )
        .into_bytes()
    }

    #[test]
    fn a_429_whose_violation_names_spend_is_a_spend_cap_whatever_else_it_names() {
        let now = 1_780_000_000_000;
        let body = spend_429(
            r#"{"@type":"type.googleapis.com/google.rpc.QuotaFailure","violations":[
                {"quotaId":"GenerateRequestsPerMinutePerProjectPerModel"},
                {"quotaMetric":"generativelanguage.googleapis.com/monthly_spend","quotaId":"MonthlySpendCapPerProject-Tier1"}]},
               {"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"30s"}"#,
            "You exceeded your current quota, please check your plan and billing details.",
        );
        assert_eq!(
            classify(429, &body, &day(now), now),
            Verdict::SpendCapped {
                retry_delay_ms: Some(30_000),
                named: "MonthlySpendCapPerProject-Tier1".into()
            }
        );
        let reason = spend_429(
            r#"{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"BILLING_CAP_EXCEEDED"}"#,
            "x",
        );
        assert!(matches!(
            classify(429, &reason, &day(now), now),
            Verdict::SpendCapped { named, .. } if named == "BILLING_CAP_EXCEEDED"
        ));
    }

    #[test]
    fn only_the_opening_of_a_message_can_name_a_spend_cap() {
        let now = 0;
        let said = spend_429("", "Your project has reached its monthly spend cap.");
        assert!(matches!(
            classify(429, &said, &day(now), now),
            Verdict::SpendCapped { named, .. } if named == "message"
        ));
        // Client-chosen text quoted after the opening, and Google's ordinary quota message
        // (which mentions billing), are not spend caps.
        for message in [
            "Quota exceeded for metric: generate_content_requests, model: spend-cap",
            r#"Resource exhausted for "spend""#,
            "You exceeded your current quota, please check your plan and billing details.",
        ] {
            assert_eq!(
                classify(429, &spend_429("", message), &day(now), now),
                Verdict::RateLimited {
                    retry_delay_ms: None
                },
                "{message}"
            );
        }
        // A per-minute violation with a message speaking of spend stays per-minute.
        let minute = spend_429(
            r#"{"@type":"type.googleapis.com/google.rpc.QuotaFailure","violations":[{"quotaId":"GenerateRequestsPerMinutePerProjectPerModel"}]}"#,
            "spend",
        );
        assert!(matches!(
            classify(429, &minute, &day(now), now),
            Verdict::QuotaExhausted { .. }
        ));
    }

    #[test]
    fn durations_from_google_are_clamped_to_the_next_reset_plus_an_hour() {
        let now = 1_780_000_000_000;
        let d = day(now);
        let cap = (d.next_midnight_ms - now) as u64 + 3_600_000;
        let huge = br#"{"error":{"code":429,"status":"RESOURCE_EXHAUSTED","details":[
          {"@type":"type.googleapis.com/google.rpc.QuotaFailure","violations":[{"quotaId":"GenerateRequestsPerMinutePerProjectPerModel"}]},
          {"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"9999999999999999s"}]}}"#;
        match classify(429, huge, &d, now) {
            Verdict::QuotaExhausted { cooldown_ms, .. } => assert_eq!(cooldown_ms, cap),
            other => panic!("{other:?}"),
        }
        let bare = br#"{"error":{"code":429,"status":"RESOURCE_EXHAUSTED","details":[
          {"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"1e300s"}]}}"#;
        assert_eq!(
            classify(429, bare, &d, now),
            Verdict::RateLimited {
                retry_delay_ms: Some(cap)
            }
        );
        assert_eq!(parse_duration_ms("1e300s"), Some(u64::MAX));
        assert_eq!(parse_duration_ms("-5s"), None);
        assert_eq!(parse_duration_ms("NaNs"), None);
    }
}
