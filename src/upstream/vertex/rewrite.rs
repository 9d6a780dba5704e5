//! An AI Studio-form request as Vertex AI takes it: the path under the entry's project and
//! location, and what differs in the body (every `contents[]` entry needs a `role`;
//! countTokens takes the request's fields at its top; the OpenAI surface names models
//! `google/MODEL`). A body that needs no change is sent as it came, unparsed.

use bytes::Bytes;
use serde_json::Value;

use crate::route::Route;

/// The Vertex path (under `prefix`, `/v1/projects/P/locations/L`) and body for `route`.
pub fn rewrite(prefix: &str, route: &Route, body: Bytes) -> (String, Bytes) {
    if route.openai {
        let path = format!("{prefix}/endpoints/openapi/chat/completions");
        return (path, openai_body(body));
    }
    let model = route.model.as_deref().unwrap_or_default();
    let action = route.action.as_deref().unwrap_or("generateContent");
    let path = format!("{prefix}/publishers/google/models/{model}:{action}");
    let body = match action {
        "countTokens" => edit(body, |v| {
            let mut changed = lift_generate_request(v);
            changed |= add_roles(v);
            changed
        }),
        "generateContent" | "streamGenerateContent" => edit(body, add_roles),
        _ => edit(body, drop_model),
    };
    (path, body)
}

/// Whether a body names something that exists only at AI Studio: an uploaded file
/// (`generativelanguage.googleapis.com/.../files/...`) or a cached content.
pub fn names_ai_studio_resource(body: &[u8]) -> bool {
    memchr::memmem::find(body, b"generativelanguage.googleapis.com").is_some()
        || memchr::memmem::find(body, b"\"cachedContent\"").is_some()
        || memchr::memmem::find(body, b"\"cached_content\"").is_some()
}

/// Apply `f` to the parsed body; re-serialise only if it changed something. A body that is not
/// JSON goes as it came (Vertex answers for it).
fn edit(body: Bytes, f: impl FnOnce(&mut Value) -> bool) -> Bytes {
    let Ok(mut v) = serde_json::from_slice::<Value>(&body) else {
        return body;
    };
    if !f(&mut v) {
        return body;
    }
    serde_json::to_vec(&v).map(Bytes::from).unwrap_or(body)
}

/// Give each `contents[]` entry without a `role` the role `user` (AI Studio assumes it for a
/// single turn; Vertex refuses the request).
fn add_roles(v: &mut Value) -> bool {
    let mut changed = drop_model(v);
    if let Some(contents) = v.get_mut("contents").and_then(Value::as_array_mut) {
        for c in contents.iter_mut().filter_map(Value::as_object_mut) {
            if !c.contains_key("role") {
                c.insert("role".into(), Value::String("user".into()));
                changed = true;
            }
        }
    }
    changed
}

/// AI Studio bodies may name the model again (`"model": "models/M"`); Vertex's do not.
fn drop_model(v: &mut Value) -> bool {
    v.as_object_mut()
        .is_some_and(|o| o.remove("model").is_some())
}

/// AI Studio's countTokens takes `{"generateContentRequest": {...}}`; Vertex takes its
/// `contents`, `systemInstruction`, `tools` and `generationConfig` at the top.
fn lift_generate_request(v: &mut Value) -> bool {
    let Some(obj) = v.as_object_mut() else {
        return false;
    };
    let Some(Value::Object(inner)) = obj
        .remove("generateContentRequest")
        .or_else(|| obj.remove("generate_content_request"))
    else {
        return false;
    };
    for (k, val) in inner {
        if k != "model" {
            obj.entry(k).or_insert(val);
        }
    }
    true
}

/// The OpenAI surface's `model` as Vertex's OpenAI endpoint names it: `google/MODEL`.
fn openai_body(body: Bytes) -> Bytes {
    edit(body, |v| {
        let Some(m) = v.get_mut("model") else {
            return false;
        };
        match m.as_str() {
            Some(name) if !name.contains('/') => {
                *m = Value::String(format!("google/{name}"));
                true
            }
            Some(name) if name.starts_with("models/") => {
                *m = Value::String(format!("google/{}", &name["models/".len()..]));
                true
            }
            _ => false,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(path: &str) -> Route {
        Route::parse(&http::Method::POST, path, None).unwrap()
    }

    fn json(b: &Bytes) -> Value {
        serde_json::from_slice(b).unwrap()
    }

    const P: &str = "/v1/projects/p1/locations/europe-west4";

    #[test]
    fn generate_goes_under_the_project_and_location_with_roles_added() {
        let body = Bytes::from_static(br#"{"contents":[{"parts":[{"text":"hi"}]}]}"#);
        let (path, out) = rewrite(
            P,
            &route("/v1beta/models/gemini-2.5-flash:generateContent"),
            body,
        );
        assert_eq!(
            path,
            "/v1/projects/p1/locations/europe-west4/publishers/google/models/gemini-2.5-flash:generateContent"
        );
        assert_eq!(json(&out)["contents"][0]["role"], "user");
    }

    #[test]
    fn a_body_that_needs_nothing_is_sent_byte_for_byte() {
        let body =
            Bytes::from_static(br#"{ "contents" : [{"role":"user","parts":[{"text":"hi"}]}] }"#);
        let (_, out) = rewrite(
            P,
            &route("/v1beta/models/m:streamGenerateContent"),
            body.clone(),
        );
        assert_eq!(out, body);
    }

    #[test]
    fn count_tokens_lifts_the_generate_request() {
        let body = Bytes::from_static(
            br#"{"generateContentRequest":{"model":"models/m","contents":[{"parts":[{"text":"a"}]}],"systemInstruction":{"parts":[{"text":"s"}]}}}"#,
        );
        let (path, out) = rewrite(P, &route("/v1beta/models/m:countTokens"), body);
        assert!(path.ends_with("/publishers/google/models/m:countTokens"));
        let v = json(&out);
        assert!(v.get("generateContentRequest").is_none());
        assert!(v.get("model").is_none());
        assert_eq!(v["contents"][0]["role"], "user");
        assert_eq!(v["systemInstruction"]["parts"][0]["text"], "s");
    }

    #[test]
    fn openai_chat_names_the_model_as_vertex_does() {
        let body = Bytes::from_static(br#"{"model":"gemini-2.5-flash","messages":[]}"#);
        let (path, out) = rewrite(P, &route("/v1beta/openai/chat/completions"), body);
        assert_eq!(path, format!("{P}/endpoints/openapi/chat/completions"));
        assert_eq!(json(&out)["model"], "google/gemini-2.5-flash");
    }

    #[test]
    fn files_and_cached_contents_stay_with_ai_studio() {
        assert!(names_ai_studio_resource(
            br#"{"contents":[{"parts":[{"fileData":{"fileUri":"https://generativelanguage.googleapis.com/v1beta/files/x"}}]}]}"#
        ));
        assert!(names_ai_studio_resource(
            br#"{"cachedContent":"cachedContents/x"}"#
        ));
        assert!(!names_ai_studio_resource(
            br#"{"contents":[{"parts":[{"text":"files"}]}]}"#
        ));
        assert!(!super::super::serves(
            &route("/v1beta/models/m:batchEmbedContents"),
            b"{}"
        ));
        assert!(super::super::serves(
            &route("/v1beta/models/m:embedContent"),
            b"{}"
        ));
    }
}
