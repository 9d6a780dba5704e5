//! A fake Vertex AI on 127.0.0.1:0 with its OAuth token endpoint: a service account whose RSA
//! key is made at test time, `POST /token` that checks the JWT-bearer grant's signature with
//! the account's public key before minting `ya29.fake-N` (and a metadata server's token
//! path, which wants `Metadata-Flavor: Google`), and the model methods under
//! `/v1/projects/P/locations/L/publishers/google/models/M:ACTION` (generate, SSE stream,
//! countTokens, embedContent) and the OpenAI endpoint, which refuse a token it did not mint and
//! a `contents[]` entry without a role, as Vertex does. Every request is recorded.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::fake_upstream::Recorded;

/// The service account's key pair (PKCS#8 private PEM, SPKI public PEM), made once per test
/// binary (2048-bit RSA: Google's size, and the least ring signs with).
pub fn key_pair() -> &'static (String, String) {
    static PAIR: OnceLock<(String, String)> = OnceLock::new();
    PAIR.get_or_init(|| {
        use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
        let private = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).unwrap();
        let public = rsa::RsaPublicKey::from(&private);
        (
            private.to_pkcs8_pem(LineEnding::LF).unwrap().to_string(),
            public.to_public_key_pem(LineEnding::LF).unwrap(),
        )
    })
}

/// The service account's email.
pub const CLIENT_EMAIL: &str = "proxy@test-project.iam.gserviceaccount.com";

/// How the fake behaves; tests change it while it runs.
#[derive(Debug)]
pub struct VertexBehaviour {
    /// `expires_in` of minted tokens.
    pub expires_in: u64,
    /// The token endpoint refuses (400 invalid_grant).
    pub refuse_tokens: bool,
    /// Next model-method answers: a status answered with Vertex's bare error for it.
    pub script: VecDeque<u16>,
    /// Streams wait here after their first chunk until notified (a test sees the first chunk
    /// arrive while the stream is still open upstream).
    pub stream_gate: Option<Arc<tokio::sync::Notify>>,
}

#[derive(Default)]
pub struct VertexState {
    pub behaviour: Mutex<Option<VertexBehaviour>>,
    /// Model-method requests (token requests are counted, not recorded).
    pub recorded: Mutex<Vec<Recorded>>,
    /// Tokens minted.
    pub minted: AtomicU32,
    /// Requests to the token endpoint, refused ones too.
    pub token_requests: AtomicU32,
    /// Token requests whose JWT did not verify.
    pub bad_jwts: AtomicU32,
    url: OnceLock<String>,
}

pub struct FakeVertex {
    pub url: String,
    pub state: Arc<VertexState>,
    /// A service-account JSON file whose `token_uri` is this fake's `/token`.
    pub credentials_file: String,
}

impl FakeVertex {
    pub async fn start() -> FakeVertex {
        let state = Arc::new(VertexState::default());
        *state.behaviour.lock().unwrap() = Some(VertexBehaviour {
            expires_in: 3600,
            refuse_tokens: false,
            script: VecDeque::new(),
            stream_gate: None,
        });
        let app = Router::new().fallback(handle).with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let _ = state.url.set(url.clone());
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        let file = std::env::temp_dir().join(format!(
            "gqp-vertex-sa-{}-{}.json",
            std::process::id(),
            fastrand::u64(..)
        ));
        let sa = json!({
            "type": "service_account",
            "project_id": "test-project",
            "private_key_id": "key-1",
            "private_key": key_pair().0,
            "client_email": CLIENT_EMAIL,
            "client_id": "1",
            "token_uri": format!("{url}/token"),
        });
        std::fs::write(&file, sa.to_string()).unwrap();
        FakeVertex {
            url,
            state,
            credentials_file: file.to_string_lossy().into_owned(),
        }
    }

    pub fn behave(&self, f: impl FnOnce(&mut VertexBehaviour)) {
        f(self.state.behaviour.lock().unwrap().as_mut().unwrap());
    }

    pub fn recorded(&self) -> Vec<Recorded> {
        self.state.recorded.lock().unwrap().clone()
    }

    pub fn minted(&self) -> u32 {
        self.state.minted.load(Ordering::SeqCst)
    }

    pub fn token_requests(&self) -> u32 {
        self.state.token_requests.load(Ordering::SeqCst)
    }

    /// A `[[pool.vertex]]` entry for this fake.
    pub fn entry(&self, project: &str, location: &str) -> String {
        format!(
            "[[pool.vertex]]\nproject = \"{project}\"\nlocation = \"{location}\"\ncredentials_file = \"{}\"\nbase_url = \"{}\"\n",
            self.credentials_file, self.url
        )
    }
}

fn error(code: u16, status: &str, message: &str) -> Response {
    (
        StatusCode::from_u16(code).unwrap(),
        [("content-type", "application/json; charset=UTF-8")],
        json!({"error": {"code": code, "message": message, "status": status}}).to_string(),
    )
        .into_response()
}

#[derive(serde::Deserialize)]
struct Claims {
    iss: String,
    scope: String,
}

async fn handle(State(state): State<Arc<VertexState>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, 16 << 20)
        .await
        .unwrap_or_default();
    let path = parts.uri.path().to_string();
    if path == "/token" {
        return token(&state, &body);
    }
    // The metadata server of GCE/GKE (`GCE_METADATA_HOST`): a token for the instance's account.
    if path == "/computeMetadata/v1/instance/service-accounts/default/token" {
        if parts.headers.get("metadata-flavor").map(|v| v.as_bytes()) != Some(b"Google") {
            return (
                StatusCode::FORBIDDEN,
                "Missing Metadata-Flavor:Google header.",
            )
                .into_response();
        }
        let n = state.minted.fetch_add(1, Ordering::SeqCst) + 1;
        return axum::Json(json!({"access_token": format!("ya29.fake-{n}"),
            "expires_in": 3599, "token_type": "Bearer"}))
        .into_response();
    }
    let rec = Recorded {
        method: parts.method.to_string(),
        path: path.clone(),
        query: parts.uri.query().map(str::to_string),
        headers: parts.headers.clone(),
        body: body.clone(),
        at: std::time::Instant::now(),
        peer: None,
    };
    state.recorded.lock().unwrap().push(rec);
    let minted = state.minted.load(Ordering::SeqCst);
    let token_ok = parts
        .headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ya29.fake-"))
        .and_then(|n| n.parse::<u32>().ok())
        .is_some_and(|n| n >= 1 && n <= minted);
    if !token_ok || parts.headers.contains_key("x-goog-api-key") {
        return error(
            401,
            "UNAUTHENTICATED",
            "Request had invalid authentication credentials. Expected OAuth 2 access token.",
        );
    }
    if let Some(code) = state
        .behaviour
        .lock()
        .unwrap()
        .as_mut()
        .unwrap()
        .script
        .pop_front()
    {
        return match code {
            429 => error(
                429,
                "RESOURCE_EXHAUSTED",
                "Resource exhausted. Please try again later. Please refer to https://cloud.google.com/vertex-ai/generative-ai/docs/error-code-429 for more details.",
            ),
            c => error(c, "INTERNAL", "Internal error encountered."),
        };
    }
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    if let Some(contents) = v.get("contents").and_then(Value::as_array)
        && contents.iter().any(|c| c.get("role").is_none())
    {
        return error(
            400,
            "INVALID_ARGUMENT",
            "Please use a valid role: user, model.",
        );
    }
    if path.ends_with("/endpoints/openapi/chat/completions") {
        if v["stream"] == true {
            let chunk = json!({"id": "chatcmpl-vertex", "object": "chat.completion.chunk",
                "model": v["model"], "choices": [{"index": 0, "delta": {"content": "vertex chat"}}]});
            return Response::builder()
                .header("content-type", "text/event-stream")
                .body(Body::from(format!("data: {chunk}\n\ndata: [DONE]\n\n")))
                .unwrap();
        }
        return axum::Json(json!({
            "id": "chatcmpl-vertex", "object": "chat.completion", "model": v["model"],
            "choices": [{"index": 0, "finish_reason": "stop",
                "message": {"role": "assistant", "content": "vertex chat"}}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
        }))
        .into_response();
    }
    let Some((_, action)) = path.rsplit_once(':') else {
        return error(404, "NOT_FOUND", "no such method");
    };
    let usage = json!({"promptTokenCount": 4, "candidatesTokenCount": 2, "totalTokenCount": 6,
        "trafficType": "ON_DEMAND"});
    // What Vertex's answers carry and AI Studio's do not: a create time, the traffic type,
    // scored safety ratings, `citations` (AI Studio: `citationSources`).
    let ratings = json!([{"category": "HARM_CATEGORY_HARASSMENT", "probability": "NEGLIGIBLE",
        "probabilityScore": 0.02, "severity": "HARM_SEVERITY_NEGLIGIBLE", "severityScore": 0.01}]);
    match action {
        "generateContent" => axum::Json(json!({
            "candidates": [{"content": {"role": "model", "parts": [{"text": "from vertex"}]},
                "finishReason": "STOP", "safetyRatings": ratings,
                "citationMetadata": {"citations": [{"startIndex": 0, "endIndex": 4,
                    "uri": "https://example.com/a", "title": "A", "license": "mit",
                    "publicationDate": {"year": 2020, "month": 1, "day": 1}}]}}],
            "usageMetadata": usage,
            "modelVersion": "gemini-2.5-flash",
            "createTime": "2026-01-01T00:00:00Z",
            "responseId": "r1"
        }))
        .into_response(),
        "streamGenerateContent" => {
            let sse = parts.uri.query().is_some_and(|q| q.contains("alt=sse"));
            let chunks: Vec<String> = (0..2)
                .map(|i| {
                    let chunk = json!({
                        "candidates": [{"content": {"role": "model",
                            "parts": [{"text": format!("vertex {i} ")}]}, "safetyRatings": ratings}],
                        "usageMetadata": usage,
                        "modelVersion": "gemini-2.5-flash",
                        "createTime": "2026-01-01T00:00:00Z",
                        "responseId": "r1",
                    });
                    match (sse, i) {
                        (true, _) => format!("data: {chunk}\r\n\r\n"),
                        (false, 0) => format!("[{chunk}"),
                        (false, _) => format!("\n,\r\n{chunk}]"),
                    }
                })
                .collect();
            let gate = state
                .behaviour
                .lock()
                .unwrap()
                .as_ref()
                .unwrap()
                .stream_gate
                .clone();
            let stream = futures_util::stream::unfold(
                (chunks.into_iter(), gate, 0usize),
                |(mut it, gate, n)| async move {
                    let next = it.next()?;
                    if n == 1
                        && let Some(g) = &gate
                    {
                        g.notified().await;
                    }
                    Some((
                        Ok::<_, std::convert::Infallible>(Bytes::from(next)),
                        (it, gate, n + 1),
                    ))
                },
            );
            Response::builder()
                .header(
                    "content-type",
                    if sse {
                        "text/event-stream"
                    } else {
                        "application/json; charset=UTF-8"
                    },
                )
                .body(Body::from_stream(stream))
                .unwrap()
        }
        "countTokens" => {
            axum::Json(json!({"totalTokens": 7, "totalBillableCharacters": 20})).into_response()
        }
        "embedContent" => axum::Json(json!({"embedding": {"values": [0.5, 0.25]},
            "truncated": false}))
        .into_response(),
        _ => error(404, "NOT_FOUND", "no such method"),
    }
}

/// The JWT-bearer grant: the assertion verified with the account's public key (RS256, the
/// audience this endpoint, the cloud-platform scope) before a token is minted.
fn token(state: &VertexState, body: &Bytes) -> Response {
    state.token_requests.fetch_add(1, Ordering::SeqCst);
    let (refuse, expires_in) = {
        let b = state.behaviour.lock().unwrap();
        let b = b.as_ref().unwrap();
        (b.refuse_tokens, b.expires_in)
    };
    if refuse {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(
                json!({"error": "invalid_grant", "error_description": "Invalid JWT Signature."}),
            ),
        )
            .into_response();
    }
    let form: Vec<(String, String)> = url_pairs(body);
    let get = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    // An `authorized_user` file's refresh token (gcloud application-default credentials).
    if get("grant_type").as_deref() == Some("refresh_token") {
        if get("refresh_token").as_deref() == Some("1//refresh-token")
            && get("client_secret").as_deref() == Some("client-secret")
        {
            let n = state.minted.fetch_add(1, Ordering::SeqCst) + 1;
            return axum::Json(json!({"access_token": format!("ya29.fake-{n}"),
                "expires_in": expires_in, "token_type": "Bearer"}))
            .into_response();
        }
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": "invalid_grant", "error_description": "Bad Request"})),
        )
            .into_response();
    }
    let grant_ok =
        get("grant_type").as_deref() == Some("urn:ietf:params:oauth:grant-type:jwt-bearer");
    let audience = format!("{}/token", state.url.get().unwrap());
    let verified = get("assertion").and_then(|jwt| {
        let key = jsonwebtoken::DecodingKey::from_rsa_pem(key_pair().1.as_bytes()).unwrap();
        let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
        v.set_audience(&[audience.as_str()]);
        jsonwebtoken::decode::<Claims>(&jwt, &key, &v).ok()
    });
    match verified {
        Some(t)
            if grant_ok
                && t.claims.iss == CLIENT_EMAIL
                && t.claims.scope == "https://www.googleapis.com/auth/cloud-platform"
                && t.header.kid.as_deref() == Some("key-1") =>
        {
            let n = state.minted.fetch_add(1, Ordering::SeqCst) + 1;
            axum::Json(json!({"access_token": format!("ya29.fake-{n}"),
                "expires_in": expires_in, "token_type": "Bearer"}))
            .into_response()
        }
        _ => {
            state.bad_jwts.fetch_add(1, Ordering::SeqCst);
            (
                StatusCode::BAD_REQUEST,
                axum::Json(json!({"error": "invalid_grant", "error_description": "Invalid JWT Signature."})),
            )
                .into_response()
        }
    }
}

/// `a=b&c=d` decoded.
fn url_pairs(body: &[u8]) -> Vec<(String, String)> {
    String::from_utf8_lossy(body)
        .split('&')
        .filter_map(|p| p.split_once('='))
        .map(|(k, v)| {
            let v = percent_encoding::percent_decode_str(&v.replace('+', " "))
                .decode_utf8_lossy()
                .into_owned();
            (k.to_string(), v)
        })
        .collect()
}
