//! What differs in one answer object between Vertex AI and AI Studio, by the kind of answer:
//! Vertex-only fields dropped, citations named as AI Studio names them, the OpenAI surface's
//! `model` without Vertex's `google/`.

use serde_json::{Map, Value};

use crate::route::{QuotaFamily, Route};

/// Which answer a body is, for what to rewrite in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Generate,
    CountTokens,
    Embed,
    OpenAi,
}

impl Kind {
    /// The kind of answer a Vertex entry gives `route`, if it is one to rewrite.
    pub fn of(route: &Route) -> Option<Kind> {
        if route.openai {
            return (route.family == QuotaFamily::Generate).then_some(Kind::OpenAi);
        }
        match route.action.as_deref()? {
            "generateContent" | "streamGenerateContent" => Some(Kind::Generate),
            "countTokens" => Some(Kind::CountTokens),
            "embedContent" => Some(Kind::Embed),
            _ => None,
        }
    }
}

/// Rewrite one answer object in place; whether anything changed.
pub fn rewrite(kind: Kind, v: &mut Value) -> bool {
    let Some(o) = v.as_object_mut() else {
        return false;
    };
    match kind {
        Kind::Generate => generate(o),
        Kind::CountTokens => o.remove("totalBillableCharacters").is_some(),
        Kind::Embed => {
            let mut changed = false;
            o.retain(|k, _| {
                let keep = k == "embedding";
                changed |= !keep;
                keep
            });
            if let Some(e) = o.get_mut("embedding").and_then(Value::as_object_mut) {
                e.retain(|k, _| {
                    let keep = k == "values";
                    changed |= !keep;
                    keep
                });
            }
            changed
        }
        Kind::OpenAi => match o.get_mut("model") {
            Some(Value::String(m)) if m.starts_with("google/") => {
                *m = m["google/".len()..].to_string();
                true
            }
            _ => false,
        },
    }
}

/// A generate answer (or stream chunk): its Vertex-only fields dropped.
fn generate(o: &mut Map<String, Value>) -> bool {
    let mut changed = o.remove("createTime").is_some();
    if let Some(u) = o.get_mut("usageMetadata").and_then(Value::as_object_mut) {
        changed |= u.remove("trafficType").is_some();
    }
    if let Some(f) = o.get_mut("promptFeedback").and_then(Value::as_object_mut) {
        changed |= f.remove("blockReasonMessage").is_some();
        changed |= safety_ratings(f);
    }
    if let Some(cs) = o.get_mut("candidates").and_then(Value::as_array_mut) {
        for c in cs.iter_mut().filter_map(Value::as_object_mut) {
            changed |= c.remove("score").is_some();
            changed |= safety_ratings(c);
            if let Some(m) = c.get_mut("citationMetadata").and_then(Value::as_object_mut) {
                changed |= citations(m);
            }
        }
    }
    changed
}

/// AI Studio's safety ratings carry `category`, `probability` and `blocked` only.
fn safety_ratings(o: &mut Map<String, Value>) -> bool {
    let mut changed = false;
    if let Some(rs) = o.get_mut("safetyRatings").and_then(Value::as_array_mut) {
        for r in rs.iter_mut().filter_map(Value::as_object_mut) {
            for k in ["probabilityScore", "severity", "severityScore"] {
                changed |= r.remove(k).is_some();
            }
        }
    }
    changed
}

/// Vertex's `citations` (with `title`, `publicationDate`) are AI Studio's `citationSources`
/// (`startIndex`, `endIndex`, `uri`, `license`).
fn citations(m: &mut Map<String, Value>) -> bool {
    let Some(Value::Array(mut list)) = m.remove("citations") else {
        return false;
    };
    for c in list.iter_mut().filter_map(Value::as_object_mut) {
        c.retain(|k, _| matches!(k.as_str(), "startIndex" | "endIndex" | "uri" | "license"));
    }
    m.insert("citationSources".into(), Value::Array(list));
    true
}
