//! Stable-Rust fuzzing with proptest: the code that reads hostile bytes (request bodies, paths,
//! upstream error bodies, streamed answers) must never panic, whatever it is fed.
//! Every property runs `CASES` cases.

use base64::Engine;
use chrono_tz::America::Los_Angeles;
use gemini_quota_proxy::estimate::{estimate, media_tokens};
use gemini_quota_proxy::ledger::UsageScanner;
use gemini_quota_proxy::quota::DayInfo;
use gemini_quota_proxy::route::{QuotaFamily, Route};
use gemini_quota_proxy::upstream::{Verdict, classify};
use proptest::prelude::*;
use serde_json::{Map, Value, json};

const CASES: u32 = 2000;

/// The quota-spending routes whose bodies `estimate` parses.
const ESTIMATED_PATHS: [&str; 5] = [
    "/v1beta/models/gemini-2.5-flash:generateContent",
    "/v1beta/models/gemini-embedding-001:embedContent",
    "/v1beta/models/gemini-embedding-001:batchEmbedContents",
    "/v1beta/openai/chat/completions",
    "/v1beta/openai/embeddings",
];

fn routes() -> Vec<Route> {
    ESTIMATED_PATHS
        .iter()
        .map(|p| Route::parse(&http::Method::POST, p, None).unwrap())
        .collect()
}

fn google_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

// ---------------------------------------------------------------------------------------------
// Generators
// ---------------------------------------------------------------------------------------------

const KEYS: &[&str] = &[
    "contents",
    "parts",
    "text",
    "inlineData",
    "inline_data",
    "mimeType",
    "mime_type",
    "data",
    "fileData",
    "file_data",
    "fileUri",
    "file_uri",
    "systemInstruction",
    "system_instruction",
    "tools",
    "messages",
    "content",
    "model",
    "stream",
    "input",
    "requests",
    "role",
    "type",
    "image_url",
    "url",
    "input_audio",
    "functionCall",
    "functionResponse",
    "cachedContent",
];

const MIMES: &[&str] = &[
    "image/png",
    "image/jpeg",
    "image/gif",
    "image/webp",
    "IMAGE/PNG",
    "image/",
    "application/pdf",
    "audio/wav",
    "audio/mp3",
    "audio/unknown",
    "video/mp4",
    "text/plain",
    "application/json",
    "",
];

/// Headers of the formats `media_tokens` reads sizes from.
const MAGIC: &[&[u8]] = &[
    b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR",
    b"\xff\xd8",
    b"\xff\xd8\xff\xc0\x00\x11\x08",
    b"\xff\xd8\xff\xe0\x00\x00",
    b"\xff\xd8\xff\xff\xff",
    b"GIF89a",
    b"GIF8",
    b"RIFF\0\0\0\0WEBPVP8X",
    b"RIFF\0\0\0\0WEBPVP8 ",
    b"RIFF\0\0\0\0WEBPVP8L",
    b"RIFF\0\0\0\0WEBPxxxx",
    b"RIFF\0\0\0\0WAVEfmt ",
    b"%PDF-1.4 /Type /Page",
    b"%PDF-1.7\n/Type/Pages /Type\n/Page /Type",
    b"/Type",
    b"",
];

fn magic() -> BoxedStrategy<Vec<u8>> {
    prop::sample::select(MAGIC).prop_map(<[u8]>::to_vec).boxed()
}

/// base64 of a magic prefix and arbitrary bytes, sometimes damaged (cut, unpadded, garbage).
fn media_data() -> BoxedStrategy<String> {
    media_data_from(magic())
}

fn media_data_from(magic: BoxedStrategy<Vec<u8>>) -> BoxedStrategy<String> {
    let valid = (magic, prop::collection::vec(any::<u8>(), 0..600), 0u8..6).prop_map(
        |(mut head, tail, damage)| {
            head.extend_from_slice(&tail);
            let b64 = base64::engine::general_purpose::STANDARD.encode(&head);
            match damage {
                0 => b64.trim_end_matches('=').to_string(),
                1 => b64.chars().take(b64.len() / 2 + 1).collect(),
                2 => format!("{b64}!!not base64"),
                3 => format!("{b64}===="),
                _ => b64,
            }
        },
    );
    prop_oneof![
        4 => valid,
        1 => any::<String>(),
        1 => "[A-Za-z0-9+/=]{0,64}",
    ]
    .boxed()
}

/// A mime with data in its own format most of the time, or any pairing at all.
fn mime_and_data() -> BoxedStrategy<(String, String)> {
    let matched = prop::sample::select(vec![
        ("image/png", 0usize),
        ("image/jpeg", 1),
        ("image/jpeg", 2),
        ("image/gif", 5),
        ("image/webp", 7),
        ("image/webp", 8),
        ("image/webp", 9),
        ("audio/wav", 11),
        ("application/pdf", 12),
        ("application/pdf", 13),
    ])
    .prop_flat_map(|(mime, i)| {
        (
            Just(mime.to_string()),
            media_data_from(Just(MAGIC[i].to_vec()).boxed()),
        )
    });
    prop_oneof![3 => matched, 1 => (mime(), media_data())].boxed()
}

fn mime() -> BoxedStrategy<String> {
    prop_oneof![
        4 => prop::sample::select(MIMES).prop_map(String::from),
        1 => any::<String>(),
    ]
    .boxed()
}

fn key() -> BoxedStrategy<String> {
    prop_oneof![
        6 => prop::sample::select(KEYS).prop_map(String::from),
        1 => any::<String>(),
    ]
    .boxed()
}

fn leaf() -> BoxedStrategy<Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        any::<String>().prop_map(Value::String),
        prop::sample::select(MIMES).prop_map(|m| Value::String(m.into())),
        media_data().prop_map(Value::String),
        prop::sample::select(vec![
            "gemini-2.5-flash",
            "models/gemini-2.5-flash",
            "../x",
            "",
            "files/abc",
            "cachedContents/c1",
            "https://generativelanguage.googleapis.com/v1beta/files/abc123",
            "https://x/files/",
            "files/a?b",
            "data:image/png;base64,iVBORw0KGgo=",
            "data:;base64,",
            "text",
            "image_url",
            "input_audio",
        ])
        .prop_map(|s| Value::String(s.into())),
    ]
    .boxed()
}

/// Arbitrary JSON, weighted towards the shapes `estimate` walks.
fn json_value() -> BoxedStrategy<Value> {
    leaf()
        .prop_recursive(6, 96, 8, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::vec((key(), inner), 0..6)
                    .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
            ]
        })
        .boxed()
}

/// Mostly `good`, sometimes any JSON at all (a field of the wrong type).
fn or_wrong(good: BoxedStrategy<Value>) -> BoxedStrategy<Value> {
    prop_oneof![9 => good, 1 => json_value()].boxed()
}

/// An object from optional fields (absent when `None`) plus a few random keys.
fn object(fields: Vec<(&'static str, BoxedStrategy<Option<Value>>)>) -> BoxedStrategy<Value> {
    let random = prop::collection::vec((key(), json_value()), 0..2);
    (fields, random)
        .prop_map(|(fields, random)| {
            let mut m = Map::new();
            for (k, v) in random {
                m.insert(k, v);
            }
            for (k, v) in fields {
                if let Some(v) = v {
                    m.insert(k.to_string(), v);
                }
            }
            Value::Object(m)
        })
        .boxed()
}

fn opt(p: f64, v: BoxedStrategy<Value>) -> BoxedStrategy<Option<Value>> {
    prop::option::weighted(p, v).boxed()
}

fn string() -> BoxedStrategy<Value> {
    prop_oneof![
        3 => "[a-z ]{0,40}".prop_map(Value::String),
        1 => any::<String>().prop_map(Value::String),
    ]
    .boxed()
}

/// A `mimeType` / `data` pair whose data usually matches the mime's format.
fn inline_data() -> BoxedStrategy<Value> {
    (mime_and_data(), 0u8..4)
        .prop_map(|((mime, data), style)| match style {
            0 => json!({"mime_type": mime, "data": data}),
            _ => json!({"mimeType": mime, "data": data}),
        })
        .boxed()
}

fn part() -> BoxedStrategy<Value> {
    let file_data = object(vec![
        ("fileUri", opt(0.8, leaf())),
        (
            "mimeType",
            opt(
                0.5,
                prop::sample::select(MIMES).prop_map(|m| json!(m)).boxed(),
            ),
        ),
    ]);
    prop_oneof![
        4 => object(vec![("text", opt(0.9, or_wrong(string())))]),
        2 => object(vec![("inlineData", opt(0.9, or_wrong(inline_data())))]),
        1 => object(vec![("inline_data", opt(0.9, or_wrong(inline_data())))]),
        1 => object(vec![("fileData", opt(0.9, or_wrong(file_data)))]),
        1 => object(vec![
            ("functionCall", opt(0.5, json_value())),
            ("functionResponse", opt(0.5, json_value())),
            ("text", opt(0.3, or_wrong(string()))),
        ]),
        1 => json_value(),
    ]
    .boxed()
}

fn content() -> BoxedStrategy<Value> {
    prop_oneof![
        6 => object(vec![
            ("role", opt(0.7, prop::sample::select(vec!["user", "model"]).prop_map(|r| json!(r)).boxed())),
            ("parts", opt(0.9, or_wrong(prop::collection::vec(part(), 0..5).prop_map(Value::Array).boxed()))),
        ]),
        1 => string(),
        1 => json_value(),
    ]
    .boxed()
}

fn contents() -> BoxedStrategy<Value> {
    prop::collection::vec(content(), 0..4)
        .prop_map(Value::Array)
        .boxed()
}

/// generateContent / streamGenerateContent bodies.
fn gemini_body() -> BoxedStrategy<Value> {
    object(vec![
        ("contents", opt(0.9, or_wrong(contents()))),
        ("systemInstruction", opt(0.3, or_wrong(content()))),
        ("system_instruction", opt(0.1, or_wrong(content()))),
        ("tools", opt(0.3, json_value())),
        ("cachedContent", opt(0.2, leaf())),
    ])
}

/// embedContent and batchEmbedContents bodies.
fn embed_body() -> BoxedStrategy<Value> {
    let request = object(vec![
        ("model", opt(0.5, leaf())),
        ("content", opt(0.9, or_wrong(content()))),
    ]);
    object(vec![
        ("content", opt(0.6, or_wrong(content()))),
        (
            "requests",
            opt(
                0.6,
                or_wrong(
                    prop::collection::vec(request, 0..4)
                        .prop_map(Value::Array)
                        .boxed(),
                ),
            ),
        ),
    ])
}

fn openai_part() -> BoxedStrategy<Value> {
    let data_url = mime_and_data()
        .prop_map(|(mime, data)| json!(format!("data:{mime};base64,{data}")))
        .boxed();
    let image_url = prop_oneof![
        2 => data_url.clone().prop_map(|u| json!({"url": u})),
        1 => data_url,
        1 => leaf(),
    ]
    .boxed();
    object(vec![
        (
            "type",
            opt(
                0.9,
                or_wrong(
                    prop::sample::select(vec!["text", "image_url", "input_audio", "file"])
                        .prop_map(|t| json!(t))
                        .boxed(),
                ),
            ),
        ),
        ("text", opt(0.5, or_wrong(string()))),
        ("image_url", opt(0.5, image_url)),
        (
            "input_audio",
            opt(
                0.3,
                or_wrong(
                    media_data()
                        .prop_map(|d| json!({"data": d, "format": "wav"}))
                        .boxed(),
                ),
            ),
        ),
    ])
}

fn openai_model() -> BoxedStrategy<Value> {
    prop_oneof![
        4 => prop::sample::select(vec![
            "gemini-2.5-flash", "models/gemini-2.5-flash", "gemini-embedding-001",
        ])
        .prop_map(|m| json!(m)),
        2 => prop::sample::select(vec![
            "../x", "models/", "", "a b", "models/models/x", ".", "..", "x\u{0}",
        ])
        .prop_map(|m| json!(m)),
        1 => "(models/)?[A-Za-z0-9._%/-]{0,12}".prop_map(Value::String),
        1 => leaf(),
    ]
    .boxed()
}

/// OpenAI chat and embeddings bodies.
fn openai_body() -> BoxedStrategy<Value> {
    let message_content = prop_oneof![
        2 => string(),
        2 => prop::collection::vec(openai_part(), 0..4).prop_map(Value::Array),
        1 => json_value(),
    ]
    .boxed();
    let message = object(vec![
        (
            "role",
            opt(
                0.8,
                prop::sample::select(vec!["system", "user", "assistant"])
                    .prop_map(|r| json!(r))
                    .boxed(),
            ),
        ),
        ("content", opt(0.9, message_content)),
    ]);
    let input = prop_oneof![
        2 => string(),
        2 => prop::collection::vec(prop_oneof![3 => string(), 1 => json_value()], 0..4)
            .prop_map(Value::Array),
        1 => json_value(),
    ]
    .boxed();
    object(vec![
        ("model", opt(0.9, openai_model())),
        (
            "stream",
            opt(0.4, or_wrong(any::<bool>().prop_map(Value::Bool).boxed())),
        ),
        (
            "messages",
            opt(
                0.7,
                or_wrong(
                    prop::collection::vec(message, 0..4)
                        .prop_map(Value::Array)
                        .boxed(),
                ),
            ),
        ),
        ("input", opt(0.5, input)),
        ("tools", opt(0.2, json_value())),
    ])
}

/// A request body: shaped like one of the four request kinds (with wrong-typed fields mixed
/// in), or free-form JSON with the keys that matter.
fn json_body() -> BoxedStrategy<Value> {
    prop_oneof![
        3 => gemini_body(),
        2 => embed_body(),
        3 => openai_body(),
        2 => prop::collection::vec((key(), json_value()), 0..8)
            .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        1 => json_value(),
    ]
    .boxed()
}

/// A name: mostly Google's alphabet, sometimes hostile.
fn name() -> BoxedStrategy<String> {
    prop_oneof![
        6 => "[A-Za-z0-9._-]{1,24}",
        2 => prop::sample::select(vec![
            "gemini-2.5-flash", "..", ".", "", "%2e%2e", "..%2f..%2fx", "a%20b",
            "gemini%3Cscript%3E", "x:y", "a/b", "%00", "\u{0}", "é",
        ])
        .prop_map(String::from),
        1 => "[A-Za-z0-9._-]{250,260}",
        1 => any::<String>(),
    ]
    .boxed()
}

/// A path that is mostly Gemini-shaped, with hostile pieces mixed in.
fn path() -> BoxedStrategy<String> {
    let prefix = prop_oneof![
        8 => prop::sample::select(vec![
            "/v1beta/",
            "/v1beta/",
            "/v1beta/",
            "/v1/",
            "/upload/v1beta/",
            "/v1beta/openai/",
        ]),
        1 => prop::sample::select(vec!["/upload/v1/", "/v2/", "/", "", "v1beta/", "/upload/", "//v1beta/"]),
    ];
    let collection = prop_oneof![
        6 => prop::sample::select(vec![
            "models", "models", "models", "models", "files", "tunedModels", "cachedContents", "batches", "fileSearchStores",
            "chat", "embeddings",
        ])
        .prop_map(String::from),
        1 => name(),
    ];
    let action = prop::option::of(prop_oneof![
        4 => prop::sample::select(vec![
            "generateContent", "streamGenerateContent", "countTokens", "embedContent",
            "batchEmbedContents", "batchGenerateContent", "asyncBatchEmbedContent", "download",
            "completions",
        ])
        .prop_map(String::from),
        1 => name(),
    ]);
    let structured = (
        prefix,
        collection,
        prop_oneof![
            1 => prop::collection::vec(name(), 0..1),
            3 => prop::collection::vec(name(), 1..2),
            1 => prop::collection::vec(name(), 2..4),
        ],
        action,
    )
        .prop_map(|(p, c, names, a)| {
            let mut s = format!("{p}{c}");
            for n in names {
                s.push('/');
                s.push_str(&n);
            }
            if let Some(a) = a {
                s.push(':');
                s.push_str(&a);
            }
            s
        });
    prop_oneof![
        6 => structured,
        1 => "/v1beta/openai/(chat/completions|embeddings|models|chat|x/y)",
        1 => "[/a-z0-9.:%]{0,40}",
        1 => any::<String>(),
    ]
    .boxed()
}

fn query() -> BoxedStrategy<Option<String>> {
    prop::option::of(prop_oneof![
        2 => "upload_id=[A-Za-z0-9_.%-]{0,16}(&upload_protocol=resumable)?",
        1 => "(alt=sse&)?(key|\\$key|%24key)=[a-z]{0,8}",
        1 => any::<String>(),
    ])
    .boxed()
}

fn method() -> BoxedStrategy<http::Method> {
    prop::sample::select(vec![
        http::Method::GET,
        http::Method::POST,
        http::Method::PUT,
        http::Method::PATCH,
        http::Method::DELETE,
        http::Method::HEAD,
        http::Method::OPTIONS,
    ])
    .boxed()
}

/// A Google error body: the envelope with details of every kind, sometimes wrapped in an array.
fn google_error() -> BoxedStrategy<Value> {
    let type_name = prop_oneof![
        4 => prop::sample::select(vec![
            "type.googleapis.com/google.rpc.QuotaFailure",
            "type.googleapis.com/google.rpc.RetryInfo",
            "type.googleapis.com/google.rpc.ErrorInfo",
            "type.googleapis.com/google.rpc.Help",
            "google.rpc.QuotaFailure",
            "",
        ])
        .prop_map(|s| Value::String(s.into())),
        1 => leaf(),
    ]
    .boxed();
    let text = |choices: Vec<&'static str>| {
        prop_oneof![
            4 => prop::sample::select(choices).prop_map(|s| Value::String(s.into())),
            1 => leaf(),
        ]
        .boxed()
    };
    let violation = (
        text(vec![
            "GenerateRequestsPerMinutePerProjectPerModel-FreeTier",
            "GenerateRequestsPerDayPerProjectPerModel-FreeTier",
            "GenerateContentInputTokensPerModelPerMinute-FreeTier",
            "GenerateRequestsPerMinutePerProjectPerModel",
            "SomethingElse",
        ]),
        text(vec![
            "generativelanguage.googleapis.com/generate_content_free_tier_requests",
            "generativelanguage.googleapis.com/generate_content_free_tier_input_token_count",
            "x/per_day",
            "",
        ]),
        prop_oneof![
            Just(Value::Null),
            any::<u64>().prop_map(|n| json!(n)),
            any::<u64>().prop_map(|n| json!(n.to_string())),
            any::<i64>().prop_map(|n| json!(n)),
            leaf(),
        ],
    )
        .prop_map(|(id, metric, value)| {
            json!({"quotaId": id, "quotaMetric": metric, "quotaValue": value,
                   "quotaDimensions": {"location": "global", "model": "gemini-2.5-flash"}})
        })
        .boxed();
    let detail = (
        type_name,
        prop::collection::vec(violation, 0..4),
        text(vec![
            "26s",
            "0s",
            "38.962214405s",
            "-1s",
            "1e308s",
            "1e400s",
            "NaNs",
            "infs",
            "s",
            "18446744073709551616s",
            "5",
        ]),
        text(vec![
            "API_KEY_INVALID",
            "API_KEY_SERVICE_BLOCKED",
            "API_KEY_EXPIRED",
            "RATE_LIMIT_EXCEEDED",
        ]),
        prop::collection::vec(json_value(), 0..2),
    )
        .prop_map(|(t, violations, delay, reason, junk)| {
            json!({"@type": t, "violations": violations, "retryDelay": delay,
                   "reason": reason, "domain": "googleapis.com", "junk": junk})
        })
        .boxed();
    let details = prop_oneof![
        4 => prop::collection::vec(detail, 0..4).prop_map(Value::Array),
        1 => leaf(),
    ]
    .boxed();
    let envelope = (
        any::<u16>(),
        text(vec![
            "API key not valid. Please pass a valid API key.",
            "Your API key was reported as leaked. Please use another API key.",
            "Resource has been exhausted (e.g. check quota).",
            "The model is overloaded. Please try again later.",
        ]),
        text(vec![
            "RESOURCE_EXHAUSTED",
            "INVALID_ARGUMENT",
            "PERMISSION_DENIED",
            "UNAVAILABLE",
        ]),
        details,
    )
        .prop_map(|(code, message, status, details)| {
            json!({"error": {"code": code, "message": message, "status": status, "details": details}})
        })
        .boxed();
    prop_oneof![
        3 => envelope.clone(),
        1 => envelope.clone().prop_map(|e| json!([e])),
        1 => envelope.prop_map(|e| e["error"].clone()),
    ]
    .boxed()
}

// ---------------------------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------------------------

fn check_estimate_ok(route: &Route, body: &[u8]) -> Result<(), TestCaseError> {
    if let Ok(e) = estimate(route, body) {
        if let Some(m) = &e.model {
            prop_assert!(route.openai, "a model read from a non-OpenAI body: {m:?}");
            prop_assert!(google_name(m), "estimate accepted the model {m:?}");
        }
        if route.family == QuotaFamily::Free {
            prop_assert_eq!(e.tokens, 0);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    /// `estimate` on arbitrary bytes, for every quota-spending route.
    #[test]
    fn estimate_never_panics_on_arbitrary_bytes(
        body in prop_oneof![
            3 => prop::collection::vec(any::<u8>(), 0..512),
            1 => any::<String>().prop_map(String::into_bytes),
        ],
    ) {
        for route in routes() {
            check_estimate_ok(&route, &body)?;
        }
    }

    /// `estimate` on generated JSON shaped like Gemini and OpenAI requests, every route.
    #[test]
    fn estimate_never_panics_on_generated_json(body in json_body()) {
        let bytes = serde_json::to_vec(&body).unwrap();
        for route in routes() {
            check_estimate_ok(&route, &bytes)?;
        }
    }

    /// Nesting far past serde_json's recursion limit is an error, never a stack overflow.
    #[test]
    fn estimate_survives_deep_nesting(
        depth in 0usize..5000,
        opener in prop::sample::select(vec![
            ("[", "]"),
            (r#"{"a":"#, "}"),
            (r#"{"contents":"#, "}"),
            (r#"{"contents":[{"parts":[{"text":"#, "}]}]}"),
        ]),
    ) {
        let body = format!("{}1{}", opener.0.repeat(depth), opener.1.repeat(depth));
        for route in routes() {
            check_estimate_ok(&route, body.as_bytes())?;
        }
    }

    /// `media_tokens` on any mime and data; known kinds land on Google's token units.
    #[test]
    fn media_tokens_never_panics((mime, data) in mime_and_data()) {
        let t = media_tokens(&mime, &data);
        let m = mime.to_ascii_lowercase();
        if m.starts_with("image/") || m == "application/pdf" {
            prop_assert!(t >= 258 && t.is_multiple_of(258), "{mime}: {t}");
        } else if m.starts_with("audio/") {
            prop_assert!(t >= 32 && t.is_multiple_of(32), "{mime}: {t}");
        } else if m.starts_with("video/") {
            prop_assert!(t >= 263 && t.is_multiple_of(263), "{mime}: {t}");
        }
    }

    /// `Route::parse` on arbitrary methods, paths and queries: no panic, and every model or
    /// resource it accepts is in Google's alphabet.
    #[test]
    fn route_parse_never_panics_and_models_are_clean(
        method in method(),
        path in path(),
        query in query(),
    ) {
        if let Ok(r) = Route::parse(&method, &path, query.as_deref()) {
            if let Some(m) = &r.model {
                prop_assert!(
                    google_name(m) && m.len() <= 256 && m != "." && m != "..",
                    "model {m:?} from {path:?}"
                );
            }
            if let Some(a) = &r.action {
                prop_assert!(google_name(a), "action {a:?} from {path:?}");
            }
            if let Some(res) = &r.resource {
                let (collection, name) = res.split_once('/').unwrap();
                prop_assert!(google_name(collection) && google_name(name), "resource {res:?}");
            }
            if r.family != QuotaFamily::Free && !r.openai {
                prop_assert!(r.model.is_some(), "{path:?} spends quota without a model");
            }
        }
    }

    /// The same on fully arbitrary strings (not just Gemini-shaped ones).
    #[test]
    fn route_parse_never_panics_on_arbitrary_strings(
        method in method(),
        path in any::<String>(),
        query in prop::option::of(any::<String>()),
    ) {
        if let Ok(r) = Route::parse(&method, &path, query.as_deref())
            && let Some(m) = &r.model
        {
            prop_assert!(google_name(m), "model {m:?} from {path:?}");
        }
    }

    /// `classify` on any status and any bytes.
    #[test]
    fn classify_never_panics_on_arbitrary_bytes(
        status in 100u16..600,
        body in prop::collection::vec(any::<u8>(), 0..512),
        now in 946_684_800_000i64..4_102_444_800_000,
    ) {
        let v = classify(status, &body, &DayInfo::at(Los_Angeles, now), now);
        if status < 400 {
            prop_assert_eq!(v, Verdict::Deliver);
        }
    }

    /// `classify` on Google-like error envelopes with every kind of detail, valid or not.
    #[test]
    fn classify_never_panics_on_google_like_errors(
        status in prop_oneof![
            3 => prop::sample::select(vec![400u16, 401, 403, 404, 429, 500, 502, 503, 504]),
            1 => 100u16..600,
        ],
        body in google_error(),
        now in 946_684_800_000i64..4_102_444_800_000,
    ) {
        let bytes = serde_json::to_vec(&body).unwrap();
        let v = classify(status, &bytes, &DayInfo::at(Los_Angeles, now), now);
        match v {
            Verdict::QuotaExhausted { cooldown_ms, kinds, reported } => {
                prop_assert_eq!(status, 429);
                prop_assert!(cooldown_ms >= 1);
                prop_assert!(!kinds.is_empty());
                prop_assert!(reported.len() <= kinds.len());
            }
            Verdict::RateLimited { .. } => prop_assert_eq!(status, 429),
            Verdict::SpendCapped { named, .. } => {
                prop_assert_eq!(status, 429);
                prop_assert!(!named.is_empty() && named.chars().count() <= 120);
            }
            Verdict::DeadKey { reason } => {
                prop_assert!(matches!(status, 400 | 401 | 403));
                prop_assert!(!reason.is_empty());
            }
            Verdict::Transient => prop_assert!(matches!(status, 500 | 502 | 503 | 504)),
            Verdict::Deliver => prop_assert!(!matches!(status, 429 | 500 | 502 | 503 | 504)),
        }
    }

    /// `UsageScanner::feed` on arbitrary chunks, with the needles mixed in to stress the
    /// carry-over between chunks.
    #[test]
    fn usage_scanner_never_panics_on_arbitrary_chunks(
        chunks in prop::collection::vec(
            prop_oneof![
                3 => prop::collection::vec(any::<u8>(), 0..80),
                1 => prop::sample::select(vec![
                    b"\"promptTokenCount\"".to_vec(),
                    b"\"promptTokenCount\": ".to_vec(),
                    b"\"prompt_tokens\":".to_vec(),
                    b"\"usageMetadata\": {".to_vec(),
                    b"\"usage\":{\"prompt_tokens\":".to_vec(),
                    b"\"usageMeta".to_vec(),
                    b"data\":{".to_vec(),
                    b"}}".to_vec(),
                    b"\\\"".to_vec(),
                    b"\"promptToken".to_vec(),
                    b"Count\":1".to_vec(),
                    b"99999999999999999999999".to_vec(),
                    b" , ".to_vec(),
                    Vec::new(),
                ]),
            ],
            0..40,
        ),
    ) {
        let mut s = UsageScanner::default();
        for c in &chunks {
            s.feed(c);
        }
        let _ = s.tokens();
        let _ = UsageScanner::scan_all(&chunks.concat());
    }

    /// Split anywhere, the scanner reports what it reports for the whole body: the LAST
    /// `promptTokenCount` of a stream of cumulative usage objects.
    #[test]
    fn usage_scanner_is_split_invariant_and_keeps_the_last_count(
        items in prop::collection::vec(
            (any::<u64>(), "[ \t\r\n]{0,40}", prop::sample::select(vec!["", " ", "  "])),
            1..8,
        ),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..24),
    ) {
        let mut body = String::new();
        for (n, ws, colon_ws) in &items {
            body.push_str(&format!(
                "{{\"usageMetadata\":{{\"promptTokenCount\":{colon_ws}{n}}}}}{ws}"
            ));
        }
        let bytes = body.as_bytes();
        let last = items.last().unwrap().0;

        let mut whole = UsageScanner::default();
        whole.feed(bytes);
        prop_assert_eq!(whole.tokens(), Some(last));
        prop_assert_eq!(UsageScanner::scan_all(bytes).map(|u| u.input), Some(last));

        let mut points: Vec<usize> = cuts.iter().map(|i| i.index(bytes.len() + 1)).collect();
        points.push(0);
        points.push(bytes.len());
        points.sort_unstable();
        points.dedup();
        let mut pieces = UsageScanner::default();
        for w in points.windows(2) {
            pieces.feed(&bytes[w[0]..w[1]]);
        }
        prop_assert_eq!(pieces.tokens(), whole.tokens(), "cut at {:?}", points);
    }

    /// The same with every piece one byte long (the worst case for the carry-over).
    #[test]
    fn usage_scanner_byte_by_byte(
        items in prop::collection::vec((any::<u64>(), "[ \r\n]{0,3}"), 1..5),
    ) {
        let body: String = items
            .iter()
            .map(|(n, ws)| format!("{{\"usageMetadata\": {{\"promptTokenCount\": {n}}}}}{ws}"))
            .collect();
        let mut s = UsageScanner::default();
        for b in body.as_bytes() {
            s.feed(std::slice::from_ref(b));
        }
        prop_assert_eq!(s.tokens(), Some(items.last().unwrap().0));
    }
}

/// A pinned regression: thousands of images claiming 4294967295 px sides used to overflow the
/// token sum (a panic in debug builds, a wrapped, tiny estimate in release builds).
#[test]
fn estimate_saturates_on_huge_images() {
    let mut png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
    png.extend_from_slice(&u32::MAX.to_be_bytes());
    png.extend_from_slice(&u32::MAX.to_be_bytes());
    let data = base64::engine::general_purpose::STANDARD.encode(&png);
    let one = media_tokens("image/png", &data);
    assert_eq!(one, 5_592_406u64 * 5_592_406 * 258);
    let part = json!({"inlineData": {"mimeType": "image/png", "data": data}});
    for n in [2287usize, 2288, 3000, 10_000] {
        let body = json!({"contents": [{"parts": vec![part.clone(); n]}]});
        let e = estimate(&routes()[0], body.to_string().as_bytes()).unwrap();
        assert!(
            e.tokens >= one.saturating_mul(n as u64),
            "{n} images: {}",
            e.tokens
        );
    }
    let openai = json!({"model": "gemini-2.5-flash", "messages": [{"role": "user", "content":
        vec![json!({"type": "image_url", "image_url": {"url": format!("data:image/png;base64,{data}")}}); 3000]}]});
    let e = estimate(&routes()[3], openai.to_string().as_bytes()).unwrap();
    assert_eq!(e.tokens, u64::MAX);
}
