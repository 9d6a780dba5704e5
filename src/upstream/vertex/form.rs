//! Requests in Vertex AI's form (`google-genai` with `vertexai=True`): a model method under
//! `/{v1|v1beta1}/projects/P/locations/L/publishers/google/models/M:ACTION` (or, in express
//! mode, `/{v}/publishers/google/models/M:ACTION`) is the AI Studio-form request
//! `/v1beta/models/M:ACTION`, served by whichever backend the pool picks. The client's project
//! and location are not the pool's: the pool chooses.

/// The methods whose bodies and answers the two forms share. Others (Vertex's `:predict`
/// embeddings, `:computeTokens`) are left as sent: answered 404 by the proxy.
const ACTIONS: &[&str] = &[
    "generateContent",
    "streamGenerateContent",
    "countTokens",
    "embedContent",
];

/// Whether `path` may be in Vertex form (cheap: two prefix tests).
pub fn maybe(path: &str) -> bool {
    path.starts_with("/v1beta1/") || path.starts_with("/v1/p")
}

/// The AI Studio-form path of a Vertex-form model method, if `path` is one.
pub fn to_ai_studio(path: &str) -> Option<String> {
    let rest = path
        .strip_prefix("/v1beta1/")
        .or_else(|| path.strip_prefix("/v1/"))?;
    let rest = match rest.strip_prefix("projects/") {
        Some(r) => {
            let mut parts = r.splitn(4, '/');
            let (_project, locations, _location, tail) =
                (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
            if locations != "locations" {
                return None;
            }
            tail
        }
        None => rest,
    };
    let method = rest.strip_prefix("publishers/google/models/")?;
    let (model, action) = method.split_once(':')?;
    if model.is_empty() || model.contains('/') || !ACTIONS.contains(&action) {
        return None;
    }
    Some(format!("/v1beta/models/{model}:{action}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vertex_model_methods_become_ai_studio_ones() {
        for p in [
            "/v1/projects/p/locations/us-central1/publishers/google/models/gemini-2.5-flash:generateContent",
            "/v1beta1/projects/p/locations/global/publishers/google/models/gemini-2.5-flash:generateContent",
            "/v1beta1/publishers/google/models/gemini-2.5-flash:generateContent",
        ] {
            assert!(maybe(p), "{p}");
            assert_eq!(
                to_ai_studio(p).as_deref(),
                Some("/v1beta/models/gemini-2.5-flash:generateContent"),
                "{p}"
            );
        }
        assert_eq!(
            to_ai_studio(
                "/v1/projects/p/locations/l/publishers/google/models/m:streamGenerateContent"
            )
            .as_deref(),
            Some("/v1beta/models/m:streamGenerateContent")
        );
    }

    #[test]
    fn anything_else_is_left_alone() {
        for p in [
            "/v1/models/m:generateContent",
            "/v1/projects/p/publishers/google/models/m:generateContent",
            "/v1/projects/p/locations/l/publishers/other/models/m:generateContent",
            "/v1/projects/p/locations/l/publishers/google/models/m",
            "/v1beta1/publishers/google/models/a/b:generateContent",
            "/v1beta1/publishers/google/models/text-embedding-005:predict",
        ] {
            assert_eq!(to_ai_studio(p), None, "{p}");
        }
        assert!(!maybe("/v1beta/models/m:generateContent"));
    }
}
