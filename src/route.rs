//! Turns a Gemini API path into (version, model, action, referenced resource) and says which
//! quota family the call spends.

use crate::error::ApiError;
use smallvec::SmallVec;

/// Which set of limits a call spends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QuotaFamily {
    /// generateContent, streamGenerateContent, OpenAI chat: RPM, input TPM, RPD.
    Generate,
    /// embedContent, batchEmbedContents, OpenAI embeddings: the embed limits.
    Embed,
    /// Image generation (`imagen-*:predict`): the image limits, whose per-minute "tokens"
    /// are images (Google limits image models in images per minute).
    Image,
    /// Video generation (`veo-*:predictLongRunning`): the video limits, whose per-minute
    /// "tokens" are seconds of video.
    Video,
    /// countTokens, models, files, cachedContents, ...: no quota.
    Free,
}

impl QuotaFamily {
    /// The family whose limits a model's stored counters are held against, judged by the
    /// model's name (Google names its embedding models `*embedding*`). Counters are kept per
    /// model, so views of them (status, gauges) need this; admission knows the call itself.
    pub fn of_model(model: &str) -> QuotaFamily {
        if model.contains("embedding") {
            QuotaFamily::Embed
        } else if model.starts_with("imagen") {
            QuotaFamily::Image
        } else if model.starts_with("veo") {
            QuotaFamily::Video
        } else {
            QuotaFamily::Generate
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            QuotaFamily::Generate => "generate",
            QuotaFamily::Embed => "embed",
            QuotaFamily::Image => "image",
            QuotaFamily::Video => "video",
            QuotaFamily::Free => "free",
        }
    }
}

/// A parsed request path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// `v1beta` or `v1`.
    pub version: &'static str,
    /// Under `/upload/`.
    pub upload: bool,
    /// Under `/{v}/openai/`: Bearer auth upstream, model named in the body.
    pub openai: bool,
    /// Model id without the `models/` prefix, when the path names one.
    pub model: Option<String>,
    /// The `:action` suffix, when present.
    pub action: Option<String>,
    pub family: QuotaFamily,
    /// A resource that exists only in the project of the key that created it (key affinity):
    /// `files/abc`, `cachedContents/x`, `batches/x`, `tunedModels/x`, `fileSearchStores/x`,
    /// or `uploads/<upload_id>` for a resumable upload session.
    pub resource: Option<String>,
    /// The answer may name a resource created by this call, whose key must be remembered.
    pub creates_resource: bool,
    /// A server-streamed answer is expected (`streamGenerateContent`).
    pub streaming: bool,
    /// `GET /v1beta/files` and the like: a listing of this collection, whose answer a client
    /// sees only its own entries of.
    pub lists: Option<&'static str>,
    /// Google bills the call but its answer reports no usage (embeddings, images, videos,
    /// generateAnswer): it is settled and recorded at its estimate.
    pub unreported_usage: bool,
}

/// Collections whose members belong to the project that created them.
pub const OWNED_COLLECTIONS: &[&str] = &[
    "files",
    "cachedContents",
    "batches",
    "tunedModels",
    "fileSearchStores",
];

/// A model, resource or action name: Google's names are letters, digits, `-`, `_` and `.`.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 256
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn invalid(what: &str, value: &str) -> ApiError {
    let shown: String = value.chars().take(80).collect();
    ApiError::InvalidArgument(format!(
        "{what} {shown:?} is not valid: use letters, digits, '-', '_' and '.' only"
    ))
}

/// The query's `upload_id`, if any.
fn upload_id(query: Option<&str>) -> Option<&str> {
    query?
        .split('&')
        .find_map(|pair| pair.strip_prefix("upload_id="))
        .filter(|v| !v.is_empty())
}

impl Route {
    /// Parse `path` (raw, still percent-encoded) and `query`. Paths outside the Gemini surface
    /// are `NotFound`; names outside Google's alphabet (including encoded `/` and `..`) are
    /// `InvalidArgument`.
    pub fn parse(
        method: &http::Method,
        path: &str,
        query: Option<&str>,
    ) -> Result<Route, ApiError> {
        let not_found = || ApiError::NotFound(format!("no Gemini API method at {}", shorten(path)));
        // `/download/{v}/files/ID:download` (a file's bytes, a batch job's results) is a
        // files call like `/{v}/files/ID:download`.
        let (upload, rest) = match path.strip_prefix("/upload/") {
            Some(r) => (true, r),
            None => (
                false,
                path.strip_prefix("/download/")
                    .or_else(|| path.strip_prefix('/'))
                    .unwrap_or(path),
            ),
        };
        let (version, rest) = if let Some(r) = rest.strip_prefix("v1beta/") {
            ("v1beta", r)
        } else if let Some(r) = rest.strip_prefix("v1/") {
            ("v1", r)
        } else {
            return Err(not_found());
        };
        // In place: a Gemini method's path has a few segments (allocating for them showed in
        // the per-request profile).
        let segments: SmallVec<[&str; 8]> = rest.split('/').collect();
        if segments.iter().any(|s| s.is_empty()) {
            return Err(not_found());
        }
        let mut route = Route {
            version,
            upload,
            openai: false,
            model: None,
            action: None,
            family: QuotaFamily::Free,
            resource: None,
            creates_resource: false,
            streaming: false,
            lists: None,
            unreported_usage: false,
        };

        if segments[0] == "openai" {
            route.openai = true;
            route.family = match &segments[1..] {
                ["chat", "completions"] => QuotaFamily::Generate,
                ["embeddings"] => QuotaFamily::Embed,
                ["images", "generations"] => QuotaFamily::Image,
                _ => QuotaFamily::Free,
            };
            route.unreported_usage =
                matches!(route.family, QuotaFamily::Embed | QuotaFamily::Image);
            for s in &segments[1..] {
                if !valid_name(s) {
                    return Err(invalid("path segment", s));
                }
            }
            return Ok(route);
        }

        // The last segment may carry `:action` (models/m:generateContent, files/x:download).
        let last = segments.len() - 1;
        let (last_name, action) = match segments[last].split_once(':') {
            Some((name, action)) => (name, Some(action)),
            None => (segments[last], None),
        };
        if let Some(a) = action {
            if !valid_name(a) {
                return Err(invalid("method", a));
            }
            route.action = Some(a.to_string());
        }
        for (i, s) in segments.iter().enumerate() {
            let s = if i == last { last_name } else { s };
            if !valid_name(s) {
                let what = if i == 1 && segments[0] == "models" {
                    "model name"
                } else {
                    "resource name"
                };
                return Err(invalid(what, s));
            }
        }

        if upload {
            if let Some(id) = upload_id(query) {
                if !valid_name(id) {
                    return Err(invalid("upload_id", id));
                }
                route.resource = Some(format!("uploads/{id}"));
            }
            // Starting an upload creates a session; finishing it names the file.
            route.creates_resource = *method == http::Method::POST;
            return Ok(route);
        }

        let collection = segments[0];
        let name = if segments.len() > 1 {
            Some(if last == 1 { last_name } else { segments[1] })
        } else {
            None
        };
        match (collection, name) {
            ("models", Some(model)) => {
                route.model = Some(model.to_string());
                // A long-running operation (a Veo video) exists in the project that started it.
                if last == 3 && segments[2] == "operations" {
                    route.resource = Some(format!("operations/{last_name}"));
                }
            }
            ("tunedModels", Some(t)) => {
                route.model = Some(t.to_string());
                route.resource = Some(format!("tunedModels/{t}"));
            }
            (c, Some(n)) if OWNED_COLLECTIONS.contains(&c) => {
                route.resource = Some(format!("{c}/{n}"));
            }
            _ => {}
        }
        if let Some(a) = route.action.as_deref() {
            route.family = match a {
                // generateAnswer (attributed question answering) is billed by tokens like a
                // generate call, and its answer carries no usage.
                "generateContent" | "streamGenerateContent" | "generateAnswer" => {
                    QuotaFamily::Generate
                }
                "embedContent" | "batchEmbedContents" => QuotaFamily::Embed,
                "predict" => QuotaFamily::Image,
                "predictLongRunning" => QuotaFamily::Video,
                _ => QuotaFamily::Free,
            };
            route.unreported_usage = matches!(
                a,
                "generateAnswer"
                    | "embedContent"
                    | "batchEmbedContents"
                    | "predict"
                    | "predictLongRunning"
            );
            route.streaming = a == "streamGenerateContent";
            if matches!(
                a,
                "batchGenerateContent" | "asyncBatchEmbedContent" | "predictLongRunning"
            ) {
                route.creates_resource = true;
            }
        }
        if route.family != QuotaFamily::Free && route.model.is_none() {
            return Err(ApiError::InvalidArgument(format!(
                "{} needs a model: /{}/models/MODEL:{}",
                route.action.as_deref().unwrap_or("this method"),
                version,
                route.action.as_deref().unwrap_or("generateContent")
            )));
        }
        if *method == http::Method::GET && segments.len() == 1 && route.action.is_none() {
            route.lists = OWNED_COLLECTIONS.iter().copied().find(|c| *c == collection);
        }
        // Creating a cached content, tuned model or file search store names it in the answer.
        if *method == http::Method::POST
            && segments.len() == 1
            && route.action.is_none()
            && OWNED_COLLECTIONS.contains(&collection)
        {
            route.creates_resource = true;
        }
        Ok(route)
    }
}

fn shorten(path: &str) -> String {
    path.chars().take(120).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;

    fn post(path: &str) -> Result<Route, ApiError> {
        Route::parse(&Method::POST, path, None)
    }

    #[test]
    fn generate_and_stream_spend_generate_quota() {
        let r = post("/v1beta/models/gemini-2.5-flash:generateContent").unwrap();
        assert_eq!(r.model.as_deref(), Some("gemini-2.5-flash"));
        assert_eq!(r.action.as_deref(), Some("generateContent"));
        assert_eq!(r.family, QuotaFamily::Generate);
        assert!(!r.streaming);
        let r = post("/v1/models/gemini-2.0-flash:streamGenerateContent").unwrap();
        assert_eq!(r.version, "v1");
        assert!(r.streaming);
        assert_eq!(r.family, QuotaFamily::Generate);
    }

    #[test]
    fn count_tokens_models_and_files_spend_nothing() {
        for p in [
            "/v1beta/models/gemini-2.5-flash:countTokens",
            "/v1beta/models",
            "/v1beta/models/gemini-2.5-flash",
            "/v1beta/files/abc",
            "/v1beta/cachedContents",
        ] {
            assert_eq!(
                Route::parse(&Method::GET, p, None).unwrap().family,
                QuotaFamily::Free,
                "{p}"
            );
        }
    }

    #[test]
    fn embed_calls_spend_embed_quota() {
        let r = post("/v1beta/models/gemini-embedding-001:batchEmbedContents").unwrap();
        assert_eq!(r.family, QuotaFamily::Embed);
        assert_eq!(
            post("/v1beta/openai/embeddings").unwrap().family,
            QuotaFamily::Embed
        );
    }

    #[test]
    fn image_video_and_answer_calls_spend_quota_and_report_no_usage() {
        let r = post("/v1beta/models/imagen-4.0-generate-001:predict").unwrap();
        assert_eq!(r.family, QuotaFamily::Image);
        assert!(r.unreported_usage);
        let r = post("/v1beta/models/veo-3.0-generate-001:predictLongRunning").unwrap();
        assert_eq!(r.family, QuotaFamily::Video);
        assert!(r.unreported_usage);
        let r = post("/v1beta/openai/images/generations").unwrap();
        assert_eq!(r.family, QuotaFamily::Image);
        assert!(r.unreported_usage);
        let r = post("/v1beta/models/aqa:generateAnswer").unwrap();
        assert_eq!(r.family, QuotaFamily::Generate);
        assert!(r.unreported_usage);
        assert!(
            !post("/v1beta/models/gemini-2.5-flash:generateContent")
                .unwrap()
                .unreported_usage
        );
        assert_eq!(
            QuotaFamily::of_model("imagen-4.0-generate-001"),
            QuotaFamily::Image
        );
        assert_eq!(
            QuotaFamily::of_model("veo-3.0-generate-001"),
            QuotaFamily::Video
        );
    }

    #[test]
    fn openai_chat_is_generate_with_model_from_body() {
        let r = post("/v1beta/openai/chat/completions").unwrap();
        assert!(r.openai);
        assert_eq!(r.family, QuotaFamily::Generate);
        assert_eq!(r.model, None);
    }

    #[test]
    fn owned_resources_are_recognised_for_affinity() {
        let r = Route::parse(&Method::GET, "/v1beta/files/abc-123", None).unwrap();
        assert_eq!(r.resource.as_deref(), Some("files/abc-123"));
        let r = Route::parse(&Method::GET, "/v1beta/files/abc:download", None).unwrap();
        assert_eq!(r.resource.as_deref(), Some("files/abc"));
        let r = Route::parse(
            &Method::GET,
            "/download/v1beta/files/batch-out:download",
            Some("alt=media"),
        )
        .unwrap();
        assert_eq!(r.resource.as_deref(), Some("files/batch-out"));
        assert!(!r.upload);
        let r = post("/v1beta/tunedModels/my-tune:generateContent").unwrap();
        assert_eq!(r.resource.as_deref(), Some("tunedModels/my-tune"));
        assert_eq!(r.family, QuotaFamily::Generate);
        let r = Route::parse(
            &Method::PUT,
            "/upload/v1beta/files",
            Some("upload_id=UP1&upload_protocol=resumable"),
        )
        .unwrap();
        assert_eq!(r.resource.as_deref(), Some("uploads/UP1"));
        assert!(post("/v1beta/cachedContents").unwrap().creates_resource);
        assert!(
            post("/v1beta/models/veo-3.0-generate-001:predictLongRunning")
                .unwrap()
                .creates_resource
        );
        let r = Route::parse(
            &Method::GET,
            "/v1beta/models/veo-3.0-generate-001/operations/op1",
            None,
        )
        .unwrap();
        assert_eq!(r.resource.as_deref(), Some("operations/op1"));
        assert_eq!(r.family, QuotaFamily::Free);
        assert!(post("/upload/v1beta/files").unwrap().creates_resource);
    }

    #[test]
    fn rejects_names_outside_googles_alphabet() {
        for p in [
            "/v1beta/models/..%2f..%2fx:generateContent",
            "/v1beta/models/:generateContent",
            "/v1beta/models/a b:generateContent",
            "/v1beta/models/../x:generateContent",
            "/v1beta/models/gemini:gen%20erate",
        ] {
            let e = post(p).unwrap_err();
            assert!(
                matches!(e, ApiError::InvalidArgument(_) | ApiError::NotFound(_)),
                "{p}: {e:?}"
            );
        }
        assert!(matches!(
            post("/v1beta/models/:generateContent").unwrap_err(),
            ApiError::InvalidArgument(_)
        ));
    }

    #[test]
    fn paths_outside_the_surface_are_not_found() {
        for p in [
            "/",
            "/v2/models",
            "/admin",
            "/v1beta",
            "/upload/v2/files",
            "/v1beta//x",
        ] {
            assert!(matches!(post(p).unwrap_err(), ApiError::NotFound(_)), "{p}");
        }
    }
}
