//! A pool of Vertex AI entries alone (no AI Studio key): what it cannot serve is refused in
//! Google's envelope, naming the operation and why only an AI Studio key serves it.

use crate::error::ApiError;
use crate::route::Route;

/// The refusal of a request no Vertex entry serves (see [`super::serves`]), when the pool has
/// no AI Studio key.
pub fn refusal(path: &str, route: &Route, body: &[u8]) -> ApiError {
    let has = |s: &str| path.contains(s);
    let (what, why) = if route.upload || has("/files") {
        (
            "The Files API (files and uploads)".to_string(),
            "files exist only in the AI Studio project whose key uploaded them",
        )
    } else if has("/cachedContents") {
        (
            "cachedContents".to_string(),
            "cached contents exist only in the AI Studio project whose key created them",
        )
    } else if has("/batches")
        || matches!(
            route.action.as_deref(),
            Some("batchGenerateContent" | "asyncBatchEmbedContent")
        )
    {
        (
            "The Batch API".to_string(),
            "batch jobs are AI Studio's (Vertex AI has batch prediction jobs of its own)",
        )
    } else if has("/tunedModels") || has("/fileSearchStores") || has("/corpora") {
        (
            "This resource".to_string(),
            "it exists only in the AI Studio project whose key created it",
        )
    } else if super::rewrite::names_ai_studio_resource(body) {
        (
            "A request naming an AI Studio file or cached content".to_string(),
            "those exist only in the AI Studio project whose key created them",
        )
    } else {
        let what = match route.action.as_deref() {
            Some(a) => format!("The method :{a}"),
            None => "This operation".to_string(),
        };
        (
            what,
            "Vertex AI entries serve generateContent, streamGenerateContent, countTokens, embedContent and OpenAI chat completions only",
        )
    };
    ApiError::FailedPrecondition(format!(
        "{what} is served only by AI Studio keys ({why}), and this proxy's pool holds only Vertex AI entries ([[pool.vertex]]): add a Gemini API key (GEMINI_API_KEY or [[keys]]) to serve it."
    ))
}

/// Why a Live API session is refused by a pool of Vertex entries alone.
pub fn live_refusal() -> String {
    "The Live API is served only by AI Studio keys here (Live on Vertex AI is not proxied yet), and this proxy's pool holds only Vertex AI entries ([[pool.vertex]]): add a Gemini API key (GEMINI_API_KEY or [[keys]]) to serve it.".to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(method: http::Method, path: &str, body: &[u8]) -> String {
        let route = Route::parse(&method, path, None).unwrap();
        refusal(path, &route, body).to_string()
    }

    #[test]
    fn each_refusal_names_the_operation_and_why() {
        let m = message(http::Method::GET, "/v1beta/files", b"");
        assert!(m.starts_with("The Files API"), "{m}");
        assert!(m.contains("GEMINI_API_KEY"), "{m}");
        let m = message(http::Method::GET, "/v1beta/cachedContents/x", b"");
        assert!(m.starts_with("cachedContents"), "{m}");
        let m = message(
            http::Method::POST,
            "/v1beta/models/gemini-2.5-flash:batchGenerateContent",
            b"{}",
        );
        assert!(m.starts_with("The Batch API"), "{m}");
        let m = message(
            http::Method::POST,
            "/v1beta/models/gemini-2.5-flash:generateContent",
            br#"{"cachedContent":"cachedContents/x"}"#,
        );
        assert!(m.starts_with("A request naming"), "{m}");
        let m = message(
            http::Method::POST,
            "/v1beta/models/gemini-embedding-001:batchEmbedContents",
            b"{}",
        );
        assert!(m.starts_with("The method :batchEmbedContents"), "{m}");
    }
}
