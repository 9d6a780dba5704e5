//! Fallback chains: which models may serve a request instead of the one it asked for (the
//! `[fallbacks]` chain, the client's opt-in, the request's `x-gemini-fallback`), and the
//! request rewritten for the model that serves it (the path's model for the Gemini surface,
//! the body's `model` for the OpenAI-compatible one). The quota layer decides when: before
//! sending, when the asked model has no room within the request's allowance (a fallback with
//! room within what is left of it), or when Google answered it overloaded on every key tried
//! (a fallback with room now).

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderName};

use crate::config::FallbacksConfig;
use crate::route::{QuotaFamily, Route};

/// On an answer served by a fallback model: that model.
pub const MODEL_HEADER: HeaderName = HeaderName::from_static("x-gemini-quota-proxy-model");

/// A request's own say: `off`, or the models it accepts as fallbacks (comma separated).
pub const REQUEST_HEADER: &str = "x-gemini-fallback";

/// Most names read from a request's `x-gemini-fallback` (the rest are ignored).
const MAX_ACCEPTED: usize = 16;

/// Why a request was served by another model (the `reason` of `gqp_fallbacks_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// No project had room for the asked model within the request's allowance.
    NoRoom,
    /// Google answered 503 (overloaded) or 500 on every key tried for the asked model.
    Overloaded,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::NoRoom => "no_room",
            Reason::Overloaded => "overloaded",
        }
    }
}

/// A request served by a fallback model, for its answer's header and its log line.
#[derive(Debug, Clone)]
pub struct Fellback {
    pub asked: Arc<str>,
    pub served: Arc<str>,
    pub reason: Reason,
}

/// Whether a call may be served by another model at all: a text generation (not an
/// embedding, whose vectors differ per model, nor an image or video), naming no resource
/// bound to its model (a cached content, a tuned model) or project (a file).
pub fn eligible(route: &Route, pinned: bool) -> bool {
    route.family == QuotaFamily::Generate
        && !route.unreported_usage
        && route.resource.is_none()
        && !pinned
}

/// The models that may serve a request for `asked`, in order: the configured chain, when the
/// client (`fallbacks = true|false`, default `[fallbacks] enabled`) and the request allow it.
/// The request's `x-gemini-fallback: off` turns it off; a list keeps only the chain's models
/// it names, and opts in a client with no setting of its own.
pub fn chain(
    cfg: &FallbacksConfig,
    client_setting: Option<bool>,
    headers: &HeaderMap,
    asked: &str,
) -> Vec<Arc<str>> {
    let configured = cfg.chain(asked);
    if configured.is_empty() || client_setting == Some(false) {
        return Vec::new();
    }
    let said = headers.get(REQUEST_HEADER).map(|v| {
        String::from_utf8_lossy(v.as_bytes())
            .trim()
            .to_ascii_lowercase()
    });
    match said.as_deref() {
        None | Some("") | Some("on") | Some("true") => {
            if client_setting.unwrap_or(cfg.enabled) {
                configured.to_vec()
            } else {
                Vec::new()
            }
        }
        Some("off" | "false" | "none" | "0") => Vec::new(),
        Some(list) => {
            let accepted: Vec<&str> = list
                .split(',')
                .map(|m| m.trim())
                .map(|m| m.strip_prefix("models/").unwrap_or(m))
                .filter(|m| !m.is_empty())
                .take(MAX_ACCEPTED)
                .collect();
            configured
                .iter()
                .filter(|m| accepted.iter().any(|a| a.eq_ignore_ascii_case(m)))
                .cloned()
                .collect()
        }
    }
}

/// The request's path with `served` in place of `asked` (`/v1beta/models/ASKED:action` ->
/// `/v1beta/models/SERVED:action`); `None`: the path does not name `asked` that way.
pub fn rewrite_path(path: &str, asked: &str, served: &str) -> Option<String> {
    let needle = format!("/models/{asked}:");
    let at = path.find(&needle)?;
    let mut out = String::with_capacity(path.len() + served.len());
    out.push_str(&path[..at]);
    out.push_str("/models/");
    out.push_str(served);
    out.push(':');
    out.push_str(&path[at + needle.len()..]);
    Some(out)
}

/// An OpenAI-compatible body with its `model` set to `served` (Google's OpenAI surface takes
/// the bare name or `models/NAME`; the caller's form is kept). `None`: not a JSON object.
pub fn rewrite_body(body: &[u8], served: &str) -> Option<Bytes> {
    let mut v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let obj = v.as_object_mut()?;
    let prefixed = obj
        .get("model")
        .and_then(|m| m.as_str())
        .is_some_and(|m| m.starts_with("models/"));
    let name = if prefixed {
        format!("models/{served}")
    } else {
        served.to_string()
    };
    obj.insert("model".into(), serde_json::Value::String(name));
    serde_json::to_vec(&v).ok().map(Bytes::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(enabled: bool) -> FallbacksConfig {
        let mut c = FallbacksConfig {
            enabled,
            ..Default::default()
        };
        c.chains
            .insert("pro".into(), vec!["flash".into(), "lite".into()]);
        c
    }

    fn headers(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(REQUEST_HEADER, v.parse().unwrap());
        h
    }

    fn names(v: Vec<Arc<str>>) -> Vec<String> {
        v.iter().map(|m| m.to_string()).collect()
    }

    #[test]
    fn the_client_and_the_request_decide_over_the_default() {
        let none = HeaderMap::new();
        assert_eq!(
            names(chain(&cfg(true), None, &none, "pro")),
            ["flash", "lite"]
        );
        assert!(chain(&cfg(false), None, &none, "pro").is_empty());
        assert_eq!(
            names(chain(&cfg(false), Some(true), &none, "pro")),
            ["flash", "lite"]
        );
        assert!(chain(&cfg(true), Some(false), &none, "pro").is_empty());
        assert!(chain(&cfg(true), None, &headers("off"), "pro").is_empty());
        assert!(chain(&cfg(true), Some(true), &headers("Off"), "pro").is_empty());
        // A list keeps the chain's order, only the models it names, and opts in.
        assert_eq!(
            names(chain(
                &cfg(false),
                None,
                &headers("lite, models/flash, other"),
                "pro"
            )),
            ["flash", "lite"]
        );
        assert_eq!(
            names(chain(&cfg(true), None, &headers("lite"), "pro")),
            ["lite"]
        );
        // An operator's `fallbacks = false` holds whatever the request says.
        assert!(chain(&cfg(true), Some(false), &headers("flash"), "pro").is_empty());
        assert!(chain(&cfg(true), None, &none, "flash").is_empty());
    }

    #[test]
    fn the_path_and_the_openai_body_name_the_served_model() {
        assert_eq!(
            rewrite_path("/v1beta/models/pro:streamGenerateContent", "pro", "flash").as_deref(),
            Some("/v1beta/models/flash:streamGenerateContent")
        );
        assert_eq!(
            rewrite_path("/v1beta/openai/chat/completions", "pro", "flash"),
            None
        );
        let b = rewrite_body(br#"{"model":"models/pro","messages":[]}"#, "flash").unwrap();
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["model"], "models/flash");
        assert_eq!(v["messages"], serde_json::json!([]));
        let b = rewrite_body(br#"{"model":"pro"}"#, "flash").unwrap();
        assert_eq!(&b[..], br#"{"model":"flash"}"#);
        assert!(rewrite_body(b"[1]", "flash").is_none());
    }

    #[test]
    fn only_plain_text_generation_falls_back() {
        let post = |p| Route::parse(&http::Method::POST, p, None).unwrap();
        assert!(eligible(&post("/v1beta/models/pro:generateContent"), false));
        assert!(!eligible(&post("/v1beta/models/pro:generateContent"), true));
        assert!(eligible(&post("/v1beta/openai/chat/completions"), false));
        assert!(!eligible(&post("/v1beta/models/e:embedContent"), false));
        assert!(!eligible(
            &post("/v1beta/tunedModels/t:generateContent"),
            false
        ));
        assert!(!eligible(&post("/v1beta/models/aqa:generateAnswer"), false));
    }
}
