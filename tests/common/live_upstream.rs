//! A fake Gemini Live API upstream: a WebSocket server on loopback speaking Google's Live
//! protocol closely enough for the proxy's tests. `setup` -> `setupComplete` (and a
//! `sessionResumptionUpdate` when the setup asks for resumption); a `clientContent` text turn ->
//! an echo in `serverContent` then `turnComplete` with `usageMetadata`; any other text or binary
//! frame echoed unchanged; a per-key cap on open sessions, a setup over it refused with a close
//! as Google does (1011, `RESOURCE_EXHAUSTED`); the text `close-me` closes the session (1000,
//! "bye"), `go-away` answers with a `goAway`, `ping-me` with a ping. `POST .../auth_tokens`
//! (plain HTTP on the same port) creates an ephemeral token for the key that asked;
//! `BidiGenerateContentConstrained` takes only `?access_token=` of such a token (HTTP 401
//! otherwise) and counts the session for the token's key.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// Prompt tokens the fake reports per turn (and response tokens: the echo's length in words).
pub const PROMPT_TOKENS: u64 = 11;
/// Of those, the audio tokens an audio session (`responseModalities: ["AUDIO"]`) reports in
/// `promptTokensDetails`; its answer's tokens are all audio (`responseTokensDetails`).
pub const PROMPT_AUDIO_TOKENS: u64 = 8;

#[derive(Default)]
pub struct LiveState {
    /// Sessions open now, by pooled key.
    pub open: HashMap<String, usize>,
    /// Sessions opened (setup accepted), by key, in order.
    pub opened: Vec<String>,
    /// Setups refused for the cap, by key.
    pub refused: Vec<String>,
    /// Resumption handle -> the key that issued it.
    pub handles: HashMap<String, String>,
    /// Setups that carried a resumption handle: (handle, key that got it).
    pub resumed: Vec<(String, String)>,
    /// The paths and query strings the proxy asked for.
    pub paths: Vec<String>,
    /// Whether a client credential reached the upstream (it must not).
    pub saw_client_key: bool,
    /// Ephemeral token -> the key that created it.
    pub tokens: HashMap<String, String>,
    /// The bodies of the token requests, as received.
    pub token_requests: Vec<Value>,
    /// Whether a Constrained connection came with an API key too (it must not: the token is
    /// its credential).
    pub constrained_with_key: bool,
    next_handle: u64,
}

pub struct FakeLive {
    /// `http://127.0.0.1:PORT` (the proxy's `upstream.url`).
    pub url: String,
    pub state: Arc<Mutex<LiveState>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeLive {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeLive {
    /// A fake whose every key holds at most `cap` sessions.
    pub async fn start(cap: usize) -> FakeLive {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(LiveState::default()));
        let st = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let st = st.clone();
                tokio::spawn(async move {
                    let _ = tcp.set_nodelay(true);
                    let mut head = [0u8; 4];
                    match tcp.peek(&mut head).await {
                        Ok(4) if &head == b"POST" => create_token(tcp, st).await,
                        _ => serve(tcp, st, cap).await,
                    }
                });
            }
        });
        FakeLive { url, state, task }
    }

    pub fn open(&self, key: &str) -> usize {
        self.state
            .lock()
            .unwrap()
            .open
            .get(key)
            .copied()
            .unwrap_or(0)
    }

    pub fn opened(&self) -> Vec<String> {
        self.state.lock().unwrap().opened.clone()
    }
}

/// One `POST .../auth_tokens` over HTTP/1.1 (answered with `connection: close`): a token for
/// the `x-goog-api-key` that asked.
async fn create_token(mut tcp: tokio::net::TcpStream, st: Arc<Mutex<LiveState>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match tcp.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let header = |name: &str| {
        head.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    };
    let length: usize = header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + length {
        match tcp.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let key = header("x-goog-api-key").unwrap_or_default();
    let body: Value =
        serde_json::from_slice(&buf[head_end..head_end + length]).unwrap_or(Value::Null);
    let (status, answer) = if key.is_empty() || !head.contains("/auth_tokens ") {
        (
            "401 Unauthorized",
            json!({"error": {"code": 401, "status": "UNAUTHENTICATED"}}),
        )
    } else {
        let name = format!("auth_tokens/tok{}", fastrand::u64(..));
        let mut s = st.lock().unwrap();
        if key.contains("client-key") {
            s.saw_client_key = true;
        }
        s.tokens.insert(name.clone(), key);
        s.token_requests.push(body);
        ("200 OK", json!({"name": name}))
    };
    let answer = answer.to_string();
    let reply = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{answer}",
        answer.len()
    );
    let _ = tcp.write_all(reply.as_bytes()).await;
    let _ = tcp.shutdown().await;
}

/// The `access_token` of a query string, percent-decoded.
fn access_token(pq: &str) -> Option<String> {
    let q = pq.split_once('?')?.1;
    let v = q.split('&').find_map(|p| p.strip_prefix("access_token="))?;
    let v = percent_encoding::percent_decode_str(v).decode_utf8().ok()?;
    Some(v.into_owned())
}

// tungstenite's callback signature: its error type is an HTTP response.
#[allow(clippy::result_large_err)]
async fn serve(tcp: tokio::net::TcpStream, st: Arc<Mutex<LiveState>>, cap: usize) {
    let seen: Arc<Mutex<(String, String)>> = Arc::default();
    let s2 = seen.clone();
    let st2 = st.clone();
    let callback = move |req: &Request, resp: Response| {
        let mut key = req
            .headers()
            .get("x-goog-api-key")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let pq = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_default();
        // An ephemeral token's session: the token alone, one this fake created.
        if pq.contains("BidiGenerateContentConstrained") {
            let mut s = st2.lock().unwrap();
            if !key.is_empty() {
                s.constrained_with_key = true;
            }
            match access_token(&pq).and_then(|t| s.tokens.get(&t).cloned()) {
                Some(k) => key = k,
                None => {
                    let mut refusal =
                        tokio_tungstenite::tungstenite::handshake::server::ErrorResponse::new(None);
                    *refusal.status_mut() = http::StatusCode::UNAUTHORIZED;
                    return Err(refusal);
                }
            }
        }
        *s2.lock().unwrap() = (key, pq);
        Ok(resp)
    };
    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(tcp, callback).await else {
        return;
    };
    let (key, pq) = seen.lock().unwrap().clone();
    {
        let mut s = st.lock().unwrap();
        if pq.contains("client-key") || key.contains("client-key") {
            s.saw_client_key = true;
        }
        s.paths.push(pq);
    }
    // The setup: text or binary JSON.
    let setup: Value = match ws.next().await {
        Some(Ok(Message::Text(t))) => serde_json::from_str(&t).unwrap_or(Value::Null),
        Some(Ok(Message::Binary(b))) => serde_json::from_slice(&b).unwrap_or(Value::Null),
        _ => return,
    };
    if setup.get("setup").is_none() {
        let _ = ws
            .close(Some(CloseFrame {
                code: CloseCode::Invalid,
                reason: "setup expected".into(),
            }))
            .await;
        return;
    }
    let admitted = {
        let mut s = st.lock().unwrap();
        let open = s.open.entry(key.clone()).or_default();
        if *open >= cap {
            s.refused.push(key.clone());
            false
        } else {
            *open += 1;
            s.opened.push(key.clone());
            if let Some(h) = setup["setup"]["sessionResumption"]["handle"].as_str() {
                s.resumed.push((h.to_string(), key.clone()));
            }
            true
        }
    };
    if !admitted {
        let _ = ws
            .close(Some(CloseFrame {
                code: CloseCode::Error,
                reason: "RESOURCE_EXHAUSTED: the project's concurrent sessions are all in use"
                    .into(),
            }))
            .await;
        return;
    }
    session(&mut ws, &st, &key, &setup).await;
    let mut s = st.lock().unwrap();
    if let Some(n) = s.open.get_mut(&key) {
        *n -= 1;
    }
}

async fn session(
    ws: &mut tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
    st: &Arc<Mutex<LiveState>>,
    key: &str,
    setup: &Value,
) {
    // Google sends its JSON in binary frames.
    let json = |v: Value| Message::Binary(v.to_string().into_bytes().into());
    let audio = setup["setup"]["generationConfig"]["responseModalities"][0] == "AUDIO";
    if ws.send(json(json!({"setupComplete": {}}))).await.is_err() {
        return;
    }
    if setup["setup"].get("sessionResumption").is_some() {
        let handle = {
            let mut s = st.lock().unwrap();
            s.next_handle += 1;
            let h = format!("handle-{}-{}", s.next_handle, fastrand::u32(..));
            s.handles.insert(h.clone(), key.to_string());
            h
        };
        let update = json!({"sessionResumptionUpdate": {"newHandle": handle, "resumable": true}});
        if ws.send(json(update)).await.is_err() {
            return;
        }
    }
    while let Some(Ok(m)) = ws.next().await {
        let reply = match &m {
            Message::Text(t) if t.as_str() == "close-me" => {
                let _ = ws
                    .close(Some(CloseFrame {
                        code: CloseCode::Normal,
                        reason: "bye".into(),
                    }))
                    .await;
                while let Some(Ok(_)) = ws.next().await {}
                return;
            }
            // Google's notice that the connection ends soon, and a ping of its own.
            Message::Text(t) if t.as_str() == "go-away" => {
                json(json!({"goAway": {"timeLeft": "50s"}}))
            }
            Message::Text(t) if t.as_str() == "ping-me" => {
                Message::Ping(b"upstream-ping".to_vec().into())
            }
            Message::Text(t) => match serde_json::from_str::<Value>(t) {
                // Proto JSON takes either spelling; google-genai sends `client_content`.
                Ok(v) if v.get("clientContent").or(v.get("client_content")).is_some() => {
                    let c = v.get("clientContent").or(v.get("client_content")).unwrap();
                    let text = c["turns"][0]["parts"][0]["text"]
                        .as_str()
                        .unwrap_or("")
                        .to_string();
                    let answer = format!("echo: {text}");
                    let words = answer.split_whitespace().count() as u64;
                    let content =
                        json!({"serverContent": {"modelTurn": {"parts": [{"text": answer}]}}});
                    if ws.send(json(content)).await.is_err() {
                        return;
                    }
                    let mut done = json!({
                        "serverContent": {"turnComplete": true},
                        "usageMetadata": {
                            "promptTokenCount": PROMPT_TOKENS,
                            "responseTokenCount": words,
                            "totalTokenCount": PROMPT_TOKENS + words
                        }
                    });
                    // An audio session: the prompt partly audio, the answer all audio.
                    if audio {
                        done["usageMetadata"]["promptTokensDetails"] = json!([
                            {"modality": "TEXT", "tokenCount": PROMPT_TOKENS - PROMPT_AUDIO_TOKENS},
                            {"modality": "AUDIO", "tokenCount": PROMPT_AUDIO_TOKENS}
                        ]);
                        done["usageMetadata"]["responseTokensDetails"] =
                            json!([{"modality": "AUDIO", "tokenCount": words}]);
                    }
                    json(done)
                }
                _ => m.clone(),
            },
            Message::Binary(_) => m.clone(),
            Message::Close(_) => return,
            _ => continue,
        };
        if ws.send(reply).await.is_err() {
            return;
        }
    }
}

/// A TLS front on loopback: terminates TLS with a certificate for 127.0.0.1 signed by a CA made
/// at start (its PEM in `ca_file`) and pipes the bytes to `target`. In front of the proxy it
/// serves SDKs that always speak `wss://`; in front of [`FakeLive`] it is a `wss://` upstream.
pub struct TlsFront {
    /// `https://127.0.0.1:PORT`.
    pub url: String,
    pub ca_file: std::path::PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.ca_file);
    }
}

impl TlsFront {
    /// In front of `target` (`http://HOST:PORT`).
    pub async fn start(target: &str) -> TlsFront {
        use tokio_rustls::rustls;
        let target = target.trim_start_matches("http://").to_string();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "gqp live test CA");
        let ca =
            rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate().unwrap())
                .unwrap();
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
            .unwrap()
            .signed_by(&leaf_key, &ca)
            .unwrap();
        let ca_file = std::env::temp_dir().join(format!(
            "gqp-live-ca-{}-{}.pem",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::write(&ca_file, ca.as_ref().pem()).unwrap();
        let tls = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
        )
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("https://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (acceptor, target) = (acceptor.clone(), target.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let Ok(mut plain) = tokio::net::TcpStream::connect(&target).await else {
                        return;
                    };
                    let _ = plain.set_nodelay(true);
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                });
            }
        });
        TlsFront { url, ca_file, task }
    }
}
