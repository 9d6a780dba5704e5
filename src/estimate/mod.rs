//! Request body → estimated input tokens (text, system instruction, tools, inline media), plus
//! what the body tells routing: the OpenAI `model` and `stream` fields and referenced resources.

use serde_json::Value;

mod content;
mod media;
mod plain;

use self::content::{Acc, json_text_len};
pub use self::media::{image_tokens, media_tokens};
use crate::error::ApiError;
use crate::route::{QuotaFamily, Route, valid_name};

/// Google: about four characters a token.
const CHARS_PER_TOKEN: u64 = 4;
/// A `fileData` reference's size is unknown before upload metadata is read: count it as one
/// image tile (documented guess; settlement corrects TPM with Google's own count).
const FILE_REFERENCE_TOKENS: u64 = 258;

/// What the body says, for admission and routing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Estimate {
    pub tokens: u64,
    /// OpenAI-compatible calls name the model in the body.
    pub model: Option<String>,
    /// OpenAI-compatible `"stream": true`.
    pub stream: bool,
    /// Resources the body references (`files/x`, `cachedContents/x`): key affinity.
    pub references: Vec<String>,
    /// The most output tokens the body asks for (`generationConfig.maxOutputTokens`, or
    /// OpenAI's `max_completion_tokens` / `max_tokens`), for a client's budget estimate.
    pub max_output: Option<u64>,
    /// Whether it asks for temperature 0 (`generationConfig.temperature`, or OpenAI's
    /// `temperature`): read here so the cache's policy does not parse the body again.
    pub temperature_zero: bool,
}

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError::InvalidArgument(msg.into())
}

/// Estimate the input tokens of a quota-spending request. Free calls are not parsed.
/// Malformed or wrongly shaped JSON is an `InvalidArgument` naming what is wrong.
pub fn estimate(route: &Route, body: &[u8]) -> Result<Estimate, ApiError> {
    if route.family == QuotaFamily::Free {
        return Ok(Estimate::default());
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(bad("request body is empty: expected a JSON object"));
    }
    // The common body (text contents, nothing else) is counted as it is parsed; anything else
    // is read as a tree below. Both count the same: text at four characters a token.
    if !route.openai
        && !own_shape(route.action.as_deref())
        && let Some(plain) = plain::read(body)
    {
        return Ok(Estimate {
            tokens: plain.chars.div_ceil(CHARS_PER_TOKEN),
            max_output: plain.max_output,
            temperature_zero: plain.temperature_zero,
            ..Estimate::default()
        });
    }
    tree(route, body)
}

/// The actions whose bodies [`tree`] reads by a shape of their own (its `match` below); every
/// other Gemini action's body is `contents`, which [`plain::read`] may count first. An arm added
/// there belongs here too.
fn own_shape(action: Option<&str>) -> bool {
    matches!(
        action,
        Some(
            "embedContent"
                | "predict"
                | "predictLongRunning"
                | "generateAnswer"
                | "batchEmbedContents"
        )
    )
}

/// The estimate of a body read as a JSON tree: any shape, and the errors worded.
fn tree(route: &Route, body: &[u8]) -> Result<Estimate, ApiError> {
    // serde_json refuses nesting deeper than 128 levels, so hostile depth is an error, not a crash.
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        bad(format!(
            "Invalid JSON payload received. {}",
            e.to_string().chars().take(200).collect::<String>()
        ))
    })?;
    let obj = v
        .as_object()
        .ok_or_else(|| bad("Invalid JSON payload received. Expected a JSON object"))?;
    let mut acc = Acc::default();
    let mut est = Estimate {
        max_output: obj
            .get("generationConfig")
            .and_then(|g| g.get("maxOutputTokens"))
            .or_else(|| obj.get("max_completion_tokens"))
            .or_else(|| obj.get("max_tokens"))
            .and_then(Value::as_u64),
        ..Estimate::default()
    };
    let temperature = if route.openai {
        obj.get("temperature")
    } else {
        obj.get("generationConfig")
            .or_else(|| obj.get("generation_config"))
            .and_then(|g| g.get("temperature"))
    };
    est.temperature_zero = temperature.and_then(Value::as_f64) == Some(0.0);

    if route.openai {
        if let Some(m) = obj.get("model") {
            let m = m
                .as_str()
                .ok_or_else(|| bad("Invalid value at 'model': expected a string"))?;
            let m = m.strip_prefix("models/").unwrap_or(m);
            if !valid_name(m) {
                return Err(bad(format!(
                    "model name {:?} is not valid",
                    m.chars().take(80).collect::<String>()
                )));
            }
            est.model = Some(m.to_string());
        } else {
            return Err(bad("Invalid value at 'model': required"));
        }
        est.stream = obj.get("stream").and_then(Value::as_bool).unwrap_or(false);
        match route.family {
            // OpenAI image generation: `n` images (default 1), counted as images.
            QuotaFamily::Image => {
                est.tokens = match obj.get("n") {
                    None | Some(Value::Null) => 1,
                    Some(v) => v
                        .as_u64()
                        .map(|n| n.min(MAX_COUNT))
                        .ok_or_else(|| bad("Invalid value at 'n': expected a whole number"))?,
                };
                return Ok(est);
            }
            QuotaFamily::Embed => match obj.get("input") {
                Some(Value::String(s)) => acc.text(s),
                Some(Value::Array(items)) => {
                    for i in items {
                        match i {
                            Value::String(s) => acc.text(s),
                            other => acc.add_chars(json_text_len(other)),
                        }
                    }
                }
                _ => {
                    return Err(bad(
                        "Invalid value at 'input': expected a string or an array",
                    ));
                }
            },
            _ => {
                let msgs = obj
                    .get("messages")
                    .and_then(Value::as_array)
                    .ok_or_else(|| bad("Invalid value at 'messages': expected an array"))?;
                for m in msgs {
                    match m.get("content") {
                        Some(Value::String(s)) => acc.text(s),
                        Some(Value::Array(parts)) => {
                            for p in parts {
                                acc.openai_part(p);
                            }
                        }
                        _ => {}
                    }
                }
                if let Some(t) = obj.get("tools") {
                    acc.add_chars(json_text_len(t));
                }
            }
        }
    } else {
        // The arms other than `_` are [`own_shape`]'s actions.
        match route.action.as_deref() {
            Some("embedContent") => {
                let content = obj
                    .get("content")
                    .ok_or_else(|| bad("Invalid value at 'content': required"))?;
                acc.content(content, &"content")?;
            }
            // An image call's "tokens" are the images it asks for; a video call's, the
            // seconds of video: the units Google limits and bills them by.
            Some("predict") => {
                est.tokens = media_units(obj, IMAGES_BY_DEFAULT, None)?;
                return Ok(est);
            }
            Some("predictLongRunning") => {
                est.tokens = media_units(obj, VIDEOS_BY_DEFAULT, Some(VIDEO_SECONDS_BY_DEFAULT))?;
                return Ok(est);
            }
            Some("generateAnswer") => {
                let contents = obj
                    .get("contents")
                    .and_then(Value::as_array)
                    .ok_or_else(|| bad("Invalid value at 'contents': expected an array"))?;
                for (i, c) in contents.iter().enumerate() {
                    acc.content(c, &format_args!("contents[{i}]"))?;
                }
                // The grounding passages given inline are read as input too.
                if let Some(p) = obj.get("inlinePassages") {
                    acc.add_chars(json_text_len(p));
                }
            }
            Some("batchEmbedContents") => {
                let reqs = obj
                    .get("requests")
                    .and_then(Value::as_array)
                    .ok_or_else(|| bad("Invalid value at 'requests': expected an array"))?;
                for (i, r) in reqs.iter().enumerate() {
                    if let Some(c) = r.get("content") {
                        acc.content(c, &format_args!("requests[{i}].content"))?;
                    }
                }
            }
            _ => {
                let contents = match obj.get("contents") {
                    Some(Value::Array(a)) => a,
                    Some(_) => {
                        return Err(bad(
                            "Invalid value at 'contents': expected an array of Content objects",
                        ));
                    }
                    None => return Err(bad("Invalid value at 'contents': required")),
                };
                for (i, c) in contents.iter().enumerate() {
                    acc.content(c, &format_args!("contents[{i}]"))?;
                }
                if let Some(si) = obj
                    .get("systemInstruction")
                    .or_else(|| obj.get("system_instruction"))
                {
                    acc.content(si, &"systemInstruction")?;
                }
                if let Some(t) = obj.get("tools") {
                    acc.add_chars(json_text_len(t));
                }
                if let Some(Value::String(cc)) = obj.get("cachedContent")
                    && let Some(id) = cc.strip_prefix("cachedContents/")
                    && valid_name(id)
                {
                    acc.references.push(cc.clone());
                }
            }
        }
    }
    // Saturating: thousands of images claiming 4294967295 px sides must not wrap the sum to a
    // small number (release) or panic (debug); u64::MAX is simply over every limit.
    est.tokens = acc
        .chars
        .div_ceil(CHARS_PER_TOKEN)
        .saturating_add(acc.media_tokens);
    est.references = acc.references;
    Ok(est)
}

/// Images an Imagen call makes when `parameters.sampleCount` is not given (Google's default).
const IMAGES_BY_DEFAULT: u64 = 4;
/// Videos a Veo call makes when `parameters.sampleCount` is not given.
const VIDEOS_BY_DEFAULT: u64 = 1;
/// Seconds of one video when `parameters.durationSeconds` is not given (Veo 3's length).
const VIDEO_SECONDS_BY_DEFAULT: u64 = 8;
/// Most images or videos one call may ask for, and seconds one video may last, as counted:
/// larger values are Google's to refuse, and must not make the estimate overflow.
const MAX_COUNT: u64 = 1_000;

/// The units a `:predict`-style call asks for: `instances` x `parameters.sampleCount` (else
/// `default_count`), times `parameters.durationSeconds` (else `seconds`) for videos.
fn media_units(
    obj: &serde_json::Map<String, Value>,
    default_count: u64,
    seconds: Option<u64>,
) -> Result<u64, ApiError> {
    let instances = obj
        .get("instances")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("Invalid value at 'instances': expected an array"))?;
    let params = obj.get("parameters");
    let number = |field: &str, default: u64| -> Result<u64, ApiError> {
        match params.and_then(|p| p.get(field)) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => v
                .as_u64()
                .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
                .map(|n| n.min(MAX_COUNT))
                .ok_or_else(|| {
                    bad(format!(
                        "Invalid value at 'parameters.{field}': expected a whole number"
                    ))
                }),
        }
    };
    let count = number("sampleCount", default_count)?;
    let seconds = match seconds {
        Some(d) => number("durationSeconds", d)?,
        None => 1,
    };
    Ok((instances.len() as u64).min(MAX_COUNT) * count * seconds)
}

#[cfg(test)]
mod tests {
    use super::media::*;
    use super::*;
    use base64::Engine;
    use http::Method;

    fn gen_route() -> Route {
        Route::parse(
            &Method::POST,
            "/v1beta/models/gemini-2.5-flash:generateContent",
            None,
        )
        .unwrap()
    }

    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    #[test]
    fn text_is_four_characters_a_token_across_contents_system_and_tools() {
        let body = serde_json::json!({
            "contents": [{"role": "user", "parts": [{"text": "a".repeat(400)}]},
                         {"role": "model", "parts": [{"text": "b".repeat(100)}]}],
            "systemInstruction": {"parts": [{"text": "c".repeat(100)}]},
        });
        let e = estimate(&gen_route(), body.to_string().as_bytes()).unwrap();
        assert_eq!(e.tokens, 150);
    }

    #[test]
    fn tool_declarations_add_tokens() {
        let without = serde_json::json!({"contents": [{"parts": [{"text": "hi"}]}]});
        let with = serde_json::json!({"contents": [{"parts": [{"text": "hi"}]}],
            "tools": [{"functionDeclarations": [{"name": "get_weather", "description": "x".repeat(400)}]}]});
        let a = estimate(&gen_route(), without.to_string().as_bytes())
            .unwrap()
            .tokens;
        let b = estimate(&gen_route(), with.to_string().as_bytes())
            .unwrap()
            .tokens;
        assert!(b >= a + 100, "{a} {b}");
    }

    #[test]
    fn small_png_is_one_tile_and_large_png_is_tiled() {
        let mut png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
        png.extend_from_slice(&300u32.to_be_bytes());
        png.extend_from_slice(&200u32.to_be_bytes());
        png.extend_from_slice(&[8, 6, 0, 0, 0]);
        assert_eq!(media_tokens("image/png", &b64(&png)), 258);
        png[16..20].copy_from_slice(&1600u32.to_be_bytes());
        png[20..24].copy_from_slice(&800u32.to_be_bytes());
        // 1600x800: 3 x 2 tiles of 768.
        assert_eq!(media_tokens("image/png", &b64(&png)), 6 * 258);
    }

    #[test]
    fn jpeg_size_is_read_from_its_frame_header() {
        let mut jpg = vec![0xff, 0xd8, 0xff, 0xe0, 0x00, 0x04, 0x00, 0x00];
        jpg.extend_from_slice(&[0xff, 0xc0, 0x00, 0x11, 0x08]);
        jpg.extend_from_slice(&1000u16.to_be_bytes()); // height
        jpg.extend_from_slice(&2000u16.to_be_bytes()); // width
        jpg.extend_from_slice(&[0; 12]);
        assert_eq!(media_tokens("image/jpeg", &b64(&jpg)), 3 * 2 * 258);
    }

    #[test]
    fn pdf_counts_pages_and_wav_counts_seconds() {
        let pdf = b"%PDF-1.4 /Type /Pages /Type /Page x /Type/Page y /Type /Page";
        assert_eq!(media_tokens("application/pdf", &b64(pdf)), 3 * 258);
        let mut wav = b"RIFF\0\0\0\0WAVEfmt ".to_vec();
        wav.resize(44, 0);
        wav[28..32].copy_from_slice(&16_000u32.to_le_bytes());
        wav.resize(44 + 16_000 * 10, 0);
        assert_eq!(media_tokens("audio/wav", &b64(&wav)), 10 * 32);
    }

    #[test]
    fn openai_chat_reads_model_stream_and_messages() {
        let r = Route::parse(&Method::POST, "/v1beta/openai/chat/completions", None).unwrap();
        let body = serde_json::json!({"model": "models/gemini-2.5-flash", "stream": true,
            "messages": [{"role": "user", "content": "x".repeat(40)}]});
        let e = estimate(&r, body.to_string().as_bytes()).unwrap();
        assert_eq!(e.model.as_deref(), Some("gemini-2.5-flash"));
        assert!(e.stream);
        assert_eq!(e.tokens, 10);
    }

    #[test]
    fn temperature_zero_is_read_where_each_surface_puts_it() {
        let openai = Route::parse(&Method::POST, "/v1beta/openai/chat/completions", None).unwrap();
        let zero = |r: &Route, mut body: serde_json::Value| {
            if r.openai {
                body["messages"] = serde_json::json!([{"role": "user", "content": "x"}]);
            } else {
                body["contents"] = serde_json::json!([{"parts": [{"text": "x"}]}]);
            }
            estimate(r, body.to_string().as_bytes())
                .unwrap()
                .temperature_zero
        };
        let g = gen_route();
        assert!(zero(
            &g,
            serde_json::json!({"generationConfig": {"temperature": 0}})
        ));
        assert!(zero(
            &g,
            serde_json::json!({"generationConfig": {"temperature": 0.0}})
        ));
        assert!(zero(
            &g,
            serde_json::json!({"generation_config": {"temperature": 0}})
        ));
        assert!(!zero(
            &g,
            serde_json::json!({"generationConfig": {"temperature": 0.7}})
        ));
        assert!(!zero(&g, serde_json::json!({})));
        assert!(!zero(&g, serde_json::json!({"temperature": 0})));
        let m = "gemini-2.5-flash";
        assert!(zero(
            &openai,
            serde_json::json!({"model": m, "temperature": 0})
        ));
        assert!(!zero(&openai, serde_json::json!({"model": m})));
        assert!(!zero(
            &openai,
            serde_json::json!({"model": m, "temperature": "0"})
        ));
    }

    #[test]
    fn file_and_cache_references_are_collected() {
        let body = serde_json::json!({"cachedContent": "cachedContents/c1",
            "contents": [{"parts": [{"fileData": {"fileUri": "https://generativelanguage.googleapis.com/v1beta/files/abc123", "mimeType": "image/png"}}]}]});
        let e = estimate(&gen_route(), body.to_string().as_bytes()).unwrap();
        assert_eq!(
            e.references,
            vec!["files/abc123".to_string(), "cachedContents/c1".to_string()]
        );
    }

    #[test]
    fn many_huge_images_saturate_instead_of_overflowing() {
        let mut png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
        png.extend_from_slice(&u32::MAX.to_be_bytes());
        png.extend_from_slice(&u32::MAX.to_be_bytes());
        let part = serde_json::json!({"inlineData": {"mimeType": "image/png", "data": b64(&png)}});
        let body = serde_json::json!({"contents": [{"parts": vec![part; 3000]}]});
        let e = estimate(&gen_route(), body.to_string().as_bytes()).unwrap();
        assert_eq!(e.tokens, u64::MAX);
    }

    #[test]
    fn a_plain_body_counts_as_its_tree_does_and_any_other_is_read_as_a_tree() {
        let plain = [
            r#"{"contents":[{"role":"user","parts":[{"text":"Write one short friendly greeting."}]}]}"#,
            r#"{"contents":[{"parts":[{"text":"h\u00e9llo\n\"x\""},{"text":"\ud83d\ude00"}]},{"role":"model"}],
                "systemInstruction":{"parts":[{"text":"be brief"}]},
                "generationConfig":{"temperature":0,"maxOutputTokens":64,"topK":3,"thinkingConfig":{"a":[1,2.5,"x",null,true]}}}"#,
            r#"{"contents":[],"generationConfig":null}"#,
            r#"{"contents":[{"parts":[]}],"generationConfig":{"temperature":0.5,"maxOutputTokens":null}}"#,
        ];
        for body in plain {
            assert!(plain::read(body.as_bytes()).is_some(), "{body}");
            let fast = estimate(&gen_route(), body.as_bytes()).unwrap();
            assert_eq!(fast, tree(&gen_route(), body.as_bytes()).unwrap(), "{body}");
        }
        // Not plain: read as a tree, with its own answer (an estimate, or the tree's error).
        let other = [
            r#"{"contents":[{"parts":[{"text":"a"}]}],"tools":[{"x":"yyyy"}]}"#,
            r#"{"contents":[{"parts":[{"text":"a"}]}],"cachedContent":"cachedContents/c1"}"#,
            r#"{"contents":[{"parts":[{"text":"a"},{"inlineData":{"mimeType":"image/png","data":""}}]}]}"#,
            r#"{"contents":[{"parts":[{"text":"a"}]}],"generation_config":{"temperature":0}}"#,
            r#"{"contents":[{"parts":[{"text":"a"}]}],"generationConfig":{"maxOutputTokens":5.0}}"#,
            r#"{"contents":[{"parts":[{"text":"a"}]}],"generationConfig":[5,0]}"#,
            r#"{"contents":[{"parts":[{"text":"a"}]}],"generationConfig":{"temperature":"0"}}"#,
            r#"{"contents":[{"parts":[{"text":"a"}]}],"generationConfig":{"temperature":1,"temperature":0}}"#,
            r#"{"contents":[{"parts":[{"text":"a"}]}],"contents":[{"parts":[{"text":"bbbbbbbb"}]}]}"#,
            r#"{"contents":["bare string content"]}"#,
            r#"{"contents":[["x"]]}"#,
            r#"[[{"parts":[{"text":"a"}]}]]"#,
            r#"{"contents":[{"parts":null}]}"#,
            r#"{"contents":[{"parts":[{"text":"a"}]}],"systemInstruction":null}"#,
            r#"{"contents":[{"parts":[{"text":null}]}]}"#,
            r#"{"contents":[{"role":1e400,"parts":[]}]}"#,
            r#"{"contents":[{"parts":[{"text":"a"}]}],"generationConfig":{"x":"\ud800"}}"#,
            r#"{"contents":[{"parts":[{"text":"a"}]}]} x"#,
        ];
        for body in other {
            assert!(plain::read(body.as_bytes()).is_none(), "{body}");
            let (a, b) = (
                estimate(&gen_route(), body.as_bytes()),
                tree(&gen_route(), body.as_bytes()),
            );
            assert_eq!(format!("{a:?}"), format!("{b:?}"), "{body}");
        }
        // Invalid UTF-8 in a value the plain reader does not keep is still refused.
        let bad_role = b"{\"contents\":[{\"role\":\"\xff\",\"parts\":[]}]}";
        assert!(plain::read(bad_role).is_none());
        assert!(estimate(&gen_route(), bad_role).is_err());
        // Another action's body is never read as a plain one.
        let embed = Route::parse(
            &Method::POST,
            "/v1beta/models/text-embedding-004:embedContent",
            None,
        )
        .unwrap();
        let body = plain[0].as_bytes();
        assert!(
            estimate(&embed, body).is_err(),
            "embedContent needs its content"
        );
    }

    #[test]
    fn malformed_and_misshaped_bodies_are_invalid_argument() {
        let deep = "[".repeat(100_000);
        for body in [
            &b"{not json"[..],
            b"",
            b"[]",
            b"{\"contents\": \"hello\"}",
            b"{\"contents\": [1]}",
            b"{\"contents\": [{\"parts\": [{\"text\": 5}]}]}",
            b"{\"contents\": [{\"parts\": [{\"text\": \"\xff\xfe\"}]}]}",
            deep.as_bytes(),
        ] {
            let e = estimate(&gen_route(), body).unwrap_err();
            assert!(matches!(e, ApiError::InvalidArgument(_)), "{e:?}");
        }
    }
}
