//! Counting what a request's contents hold: the text of Gemini `Content` objects and their
//! parts (text, inline media, file references, function calls and results) and of OpenAI
//! message parts, accumulated for the estimate.

use serde_json::Value;

use super::media::{IMAGE_TILE_TOKENS, media_tokens};
use super::{FILE_REFERENCE_TOKENS, bad};
use crate::error::ApiError;
use crate::route::valid_name;

#[derive(Default)]
pub(super) struct Acc {
    pub(super) chars: u64,
    pub(super) media_tokens: u64,
    pub(super) references: Vec<String>,
}

impl Acc {
    pub(super) fn text(&mut self, s: &str) {
        self.add_chars(s.chars().count() as u64);
    }

    pub(super) fn add_chars(&mut self, n: u64) {
        self.chars = self.chars.saturating_add(n);
    }

    fn add_media(&mut self, tokens: u64) {
        self.media_tokens = self.media_tokens.saturating_add(tokens);
    }

    /// A Content object: `{"role": ..., "parts": [...]}`. A bare string is tolerated as text.
    /// `at` names it in error messages (formatted only when there is an error).
    pub(super) fn content(
        &mut self,
        c: &Value,
        at: &dyn std::fmt::Display,
    ) -> Result<(), ApiError> {
        match c {
            Value::Object(o) => match o.get("parts") {
                Some(Value::Array(parts)) => {
                    for (j, p) in parts.iter().enumerate() {
                        self.part(p, at, j)?;
                    }
                    Ok(())
                }
                None => Ok(()),
                Some(_) => Err(bad(format!(
                    "Invalid value at '{at}.parts': expected an array"
                ))),
            },
            Value::String(s) => {
                self.text(s);
                Ok(())
            }
            _ => Err(bad(format!(
                "Invalid value at '{at}': expected a Content object"
            ))),
        }
    }

    fn part(&mut self, p: &Value, at: &dyn std::fmt::Display, j: usize) -> Result<(), ApiError> {
        let Some(o) = p.as_object() else {
            return Err(bad(format!(
                "Invalid value at '{at}.parts[{j}]': expected a Part object"
            )));
        };
        if let Some(t) = o.get("text") {
            match t {
                Value::String(s) => self.text(s),
                _ => {
                    return Err(bad(format!(
                        "Invalid value at '{at}.parts[{j}].text': expected a string"
                    )));
                }
            }
        }
        if let Some(d) = o.get("inlineData").or_else(|| o.get("inline_data")) {
            let mime = d
                .get("mimeType")
                .or_else(|| d.get("mime_type"))
                .and_then(Value::as_str)
                .unwrap_or("");
            let data = d.get("data").and_then(Value::as_str).unwrap_or("");
            self.add_media(media_tokens(mime, data));
        }
        if let Some(f) = o.get("fileData").or_else(|| o.get("file_data")) {
            self.add_media(FILE_REFERENCE_TOKENS);
            if let Some(uri) = f
                .get("fileUri")
                .or_else(|| f.get("file_uri"))
                .and_then(Value::as_str)
                && let Some(i) = uri.find("files/")
            {
                let name = &uri[i + "files/".len()..];
                let name = name.split(['?', '/', ':']).next().unwrap_or("");
                if valid_name(name) {
                    self.references.push(format!("files/{name}"));
                }
            }
        }
        for k in [
            "functionCall",
            "functionResponse",
            "executableCode",
            "codeExecutionResult",
        ] {
            if let Some(v) = o.get(k) {
                self.add_chars(json_text_len(v));
            }
        }
        Ok(())
    }

    pub(super) fn openai_part(&mut self, p: &Value) {
        match p.get("type").and_then(Value::as_str) {
            Some("text") => {
                if let Some(s) = p.get("text").and_then(Value::as_str) {
                    self.text(s);
                }
            }
            Some("image_url") => {
                let url = p
                    .get("image_url")
                    .and_then(|u| u.get("url").or(Some(u)))
                    .and_then(Value::as_str)
                    .unwrap_or("");
                self.add_media(
                    match url
                        .strip_prefix("data:")
                        .and_then(|r| r.split_once(";base64,"))
                    {
                        Some((mime, data)) => media_tokens(mime, data),
                        None => IMAGE_TILE_TOKENS,
                    },
                );
            }
            Some("input_audio") => {
                let data = p
                    .get("input_audio")
                    .and_then(|a| a.get("data"))
                    .and_then(Value::as_str)
                    .unwrap_or("");
                self.add_media(media_tokens("audio/unknown", data));
            }
            _ => self.add_chars(json_text_len(p)),
        }
    }
}

/// Total length of every string and object key in a JSON value: a cheap stand-in for its
/// serialized size, used for tool declarations and function calls.
pub(super) fn json_text_len(v: &Value) -> u64 {
    match v {
        Value::String(s) => s.len() as u64,
        Value::Array(a) => a.iter().map(json_text_len).sum(),
        Value::Object(o) => o
            .iter()
            .map(|(k, v)| k.len() as u64 + json_text_len(v))
            .sum(),
        Value::Number(_) | Value::Bool(_) => 4,
        Value::Null => 0,
    }
}
