//! The Live API's ephemeral tokens and waiting for a session slot, through the proxy against
//! the fake Live upstream (tests/common/live_upstream.rs): a token created through the proxy
//! opens a `BidiGenerateContentConstrained` session on the key that created it, counted for
//! the client that created it; a token the proxy did not create is refused; a setup finding
//! every project full waits for a slot, or is closed at once with `x-gemini-max-wait: 0`. The
//! google-genai SDKs (Python and JS) make and use a token through the proxy; the JS one also
//! opens a session with a client key.

use crate::common;

use std::time::Duration;

use common::live_upstream::{FakeLive, PROMPT_TOKENS};
use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

const PATH: &str = "/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent";
const CONSTRAINED: &str =
    "/ws/google.ai.generativelanguage.v1alpha.GenerativeService.BidiGenerateContentConstrained";
const MODEL: &str = "models/gemini-2.5-flash-native-audio";
const KEYS: [&str; 2] = ["AIzaLiveKeyAAAAAAAA01", "AIzaLiveKeyBBBBBBBB02"];

fn ws_base(proxy: &str) -> String {
    proxy.replacen("http://", "ws://", 1)
}

/// Open the socket at `url` with `headers`; the HTTP status when the proxy refuses it.
async fn open(url: &str, headers: &[(&str, &str)]) -> Result<Ws, (u16, String)> {
    let mut req = url.into_client_request().unwrap();
    for (k, v) in headers {
        req.headers_mut().insert(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            let body = resp
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).to_string())
                .unwrap_or_default();
            Err((resp.status().as_u16(), body))
        }
        Err(e) => panic!("the upgrade failed: {e}"),
    }
}

/// The next message that is not a ping or pong, within `secs`.
async fn next_within(ws: &mut Ws, secs: u64) -> Option<Message> {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(secs), ws.next())
            .await
            .expect("a message in time");
        match m {
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(m)) => return Some(m),
            _ => return None,
        }
    }
}

fn json_of_message(m: &Message) -> Value {
    match m {
        Message::Text(t) => serde_json::from_str(t).unwrap(),
        Message::Binary(b) => serde_json::from_slice(b).unwrap(),
        other => panic!("expected a JSON message, got {other:?}"),
    }
}

fn setup_message() -> Message {
    let s =
        json!({"setup": {"model": MODEL, "generationConfig": {"responseModalities": ["TEXT"]}}});
    Message::Text(s.to_string().into())
}

/// A session on the client-key path (setupComplete seen).
async fn session(proxy: &str) -> Ws {
    let url = format!("{}{PATH}?key={CLIENT_KEY}", ws_base(proxy));
    let mut ws = open(&url, &[])
        .await
        .expect("the proxy accepts the upgrade");
    ws.send(setup_message()).await.unwrap();
    let first = next_within(&mut ws, 10).await.unwrap();
    assert_eq!(json_of_message(&first), json!({"setupComplete": {}}));
    ws
}

async fn create_token(proxy: &str, body: &Value) -> reqwest::Response {
    http()
        .post(format!("{proxy}/v1alpha/auth_tokens"))
        .header("x-goog-api-key", CLIENT_KEY)
        .json(body)
        .send()
        .await
        .unwrap()
}

async fn live_count(proxy: &Proxy) -> u64 {
    let projects: Vec<std::sync::Arc<str>> = proxy
        .state
        .pool
        .keys
        .iter()
        .map(|k| k.project.clone())
        .collect();
    proxy
        .state
        .store
        .live_counts(&projects)
        .await
        .unwrap()
        .iter()
        .sum()
}

/// The usage totals grouped by client, once `requests` turns are counted (within 10 s).
async fn usage_by_client(proxy: &str, requests: u64) -> Value {
    let mut last = Value::Null;
    for _ in 0..1000 {
        let r = http()
            .get(format!("{proxy}/api/ai/usage/?window=1h&group_by=client"))
            .header("x-goog-api-key", CLIENT_KEY)
            .send()
            .await
            .unwrap();
        last = json_of(r).await;
        if last["totals"]["requests"] == requests {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    last
}

#[tokio::test]
async fn a_token_made_through_the_proxy_opens_a_constrained_session_on_its_key_for_its_client() {
    let fake = FakeLive::start(10).await;
    let toml = format!(
        "[[keys]]\nkey = \"{}\"\nproject = \"pa\"\n[[keys]]\nkey = \"{}\"\nproject = \"pb\"\n\
         [limits]\nlive_sessions = 3\n",
        KEYS[0], KEYS[1]
    );
    let proxy = start_proxy(&fake.url, ProxyOpts::keys(&[]).toml(&toml)).await;
    // Two of pa's three slots taken: the token goes to pb, which has the most headroom.
    for id in ["held-1", "held-2"] {
        let taken = proxy.state.store.live_open("pa", id, 3, 60_000).await;
        assert!(taken.unwrap());
    }
    let free = KEYS[1].to_string();

    let body = json!({"uses": 1, "bidiGenerateContentSetup": {"model": MODEL}});
    let r = create_token(&proxy.url, &body).await;
    assert_eq!(r.status(), 200);
    let token = json_of(r).await["name"].as_str().unwrap().to_string();
    assert!(token.starts_with("auth_tokens/"), "{token}");
    {
        let st = fake.state.lock().unwrap();
        assert_eq!(
            st.token_requests,
            vec![body],
            "the body is forwarded unchanged"
        );
        assert_eq!(
            st.tokens.get(&token),
            Some(&free),
            "made with the freer key"
        );
        assert!(!st.saw_client_key);
    }

    // No client key: the token is the credential.
    let url = format!(
        "{}{CONSTRAINED}?access_token={}",
        ws_base(&proxy.url),
        token.replace('/', "%2F")
    );
    let mut ws = open(&url, &[])
        .await
        .expect("the proxy takes its own token");
    ws.send(setup_message()).await.unwrap();
    let first = next_within(&mut ws, 10).await.unwrap();
    assert_eq!(json_of_message(&first), json!({"setupComplete": {}}));
    assert_eq!(
        fake.opened().last(),
        Some(&free),
        "served on the token's key"
    );
    assert_eq!(
        live_count(&proxy).await,
        3,
        "its slot is counted with pa's two"
    );
    {
        let st = fake.state.lock().unwrap();
        assert!(!st.constrained_with_key, "the token alone reached Google");
        let last = st.paths.last().unwrap();
        assert!(last.contains("Constrained?access_token="), "{last}");
    }

    // Its usage is counted for the client that made the token.
    let turn = json!({"clientContent": {"turns": [{"role": "user", "parts": [{"text": "hi"}]}], "turnComplete": true}});
    ws.send(Message::Text(turn.to_string().into()))
        .await
        .unwrap();
    next_within(&mut ws, 10).await.unwrap();
    next_within(&mut ws, 10).await.unwrap();
    let usage = usage_by_client(&proxy.url, 1).await;
    assert_eq!(usage["totals"]["input_tokens"], PROMPT_TOKENS, "{usage}");
    let client = &usage["series"][0]["group"]["client"];
    assert!(client.as_str().is_some_and(|c| c != "anonymous"), "{usage}");
}

#[tokio::test]
async fn a_constrained_connection_needs_a_token_this_proxy_made() {
    let fake = FakeLive::start(10).await;
    let proxy = start_proxy(&fake.url, ProxyOpts::keys(&KEYS[..1])).await;
    let base = ws_base(&proxy.url);
    // A token Google would know but the proxy did not make: refused before any upgrade.
    let (status, body) = open(
        &format!("{base}{CONSTRAINED}?access_token=auth_tokens%2Fnot-ours"),
        &[],
    )
    .await
    .expect_err("refused");
    assert_eq!(status, 403);
    assert!(body.contains("PERMISSION_DENIED"), "{body}");
    assert!(
        !body.contains("not-ours"),
        "the token is not echoed: {body}"
    );
    // A client key is not a token.
    let (status, body) = open(&format!("{base}{CONSTRAINED}?key={CLIENT_KEY}"), &[])
        .await
        .expect_err("refused");
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("access_token"), "{body}");
    // google-genai's way of presenting a made token works (x-goog-api-key and Authorization).
    let r = create_token(&proxy.url, &json!({"uses": 1})).await;
    let token = json_of(r).await["name"].as_str().unwrap().to_string();
    let auth = format!("Token {token}");
    let mut ws = open(
        &format!("{base}{CONSTRAINED}"),
        &[("x-goog-api-key", &token), ("authorization", &auth)],
    )
    .await
    .expect("taken");
    ws.send(setup_message()).await.unwrap();
    let first = next_within(&mut ws, 10).await.unwrap();
    assert_eq!(json_of_message(&first), json!({"setupComplete": {}}));
    assert_eq!(fake.opened().len(), 1);
    // Creating a token needs a client key like any call.
    let r = http()
        .post(format!("{}/v1alpha/auth_tokens", proxy.url))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

fn full_proxy_opts(wait_secs: &str) -> ProxyOpts {
    ProxyOpts::keys(&KEYS[..1])
        .toml("[limits]\nlive_sessions = 3\n")
        .env("PROXY_QUEUE_MAX_WAIT_SECS", wait_secs)
}

#[tokio::test]
async fn a_fourth_session_waits_for_a_slot_and_gets_in_when_one_of_three_closes() {
    let fake = FakeLive::start(10).await;
    let proxy = start_proxy(&fake.url, full_proxy_opts("60")).await;
    let mut open3 = vec![
        session(&proxy.url).await,
        session(&proxy.url).await,
        session(&proxy.url).await,
    ];
    let url = format!("{}{PATH}?key={CLIENT_KEY}", ws_base(&proxy.url));
    let mut fourth = open(&url, &[]).await.unwrap();
    fourth.send(setup_message()).await.unwrap();
    let waiting = tokio::spawn(async move {
        let first = next_within(&mut fourth, 60).await;
        (first, fourth)
    });
    assert_eq!(fake.opened().len(), 3, "the fourth has not reached Google");
    open3.remove(0).close(None).await.unwrap();
    let (first, _fourth) = waiting.await.unwrap();
    assert_eq!(
        json_of_message(&first.expect("an answer")),
        json!({"setupComplete": {}}),
        "the waiting setup got the freed slot"
    );
    assert_eq!(fake.opened().len(), 4);
}

#[tokio::test]
async fn with_x_gemini_max_wait_0_a_setup_finding_every_project_full_is_closed_at_once() {
    let fake = FakeLive::start(10).await;
    let proxy = start_proxy(&fake.url, full_proxy_opts("60")).await;
    let _open3 = [
        session(&proxy.url).await,
        session(&proxy.url).await,
        session(&proxy.url).await,
    ];
    let url = format!("{}{PATH}?key={CLIENT_KEY}", ws_base(&proxy.url));
    let mut fourth = open(&url, &[("x-gemini-max-wait", "0")]).await.unwrap();
    fourth.send(setup_message()).await.unwrap();
    // Well before the configured 60 s.
    match next_within(&mut fourth, 10).await {
        Some(Message::Close(Some(f))) => {
            assert_eq!(f.code, CloseCode::Again);
            assert!(f.reason.contains("limits.live_sessions"), "{}", f.reason);
        }
        other => panic!("expected a close, got {other:?}"),
    }
    // A value that is not a number of seconds is Google's envelope, before any upgrade.
    let (status, body) = open(&url, &[("x-gemini-max-wait", "soon")])
        .await
        .expect_err("refused");
    assert_eq!(status, 400);
    assert!(body.contains("x-gemini-max-wait"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn google_genai_makes_a_token_through_the_proxy_and_connects_with_it() {
    // The SDK speaks https:// and wss:// to its base URL: the proxy sits behind a TLS front.
    let fake = FakeLive::start(10).await;
    let proxy = start_proxy(&fake.url, ProxyOpts::keys(&KEYS)).await;
    let front = common::live_upstream::TlsFront::start(&proxy.url).await;
    let stdout = common::sdk::run_python(
        "genai_live_token_check.py",
        &front.url,
        &front.ca_file,
        CLIENT_KEY,
    )
    .await;
    assert!(stdout.contains("google-genai ephemeral token checks passed"));
    let st = fake.state.lock().unwrap();
    assert_eq!(st.tokens.len(), 1);
    let key = st.tokens.values().next().unwrap();
    assert_eq!(
        &st.opened,
        &vec![key.clone()],
        "the session on the token's key"
    );
    assert!(!st.constrained_with_key && !st.saw_client_key);
    let body = &st.token_requests[0];
    assert_eq!(body["uses"], 1, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn google_genai_js_live_connect_works_through_the_proxy_with_a_key_and_with_a_token() {
    let fake = FakeLive::start(10).await;
    let proxy = start_proxy(&fake.url, ProxyOpts::keys(&KEYS)).await;
    let out = common::sdk::run_node(
        "genai_live.mjs",
        &["@google/genai"],
        &proxy.url,
        CLIENT_KEY,
        &["GOOGLE_API_KEY", "GEMINI_API_KEY"],
        Duration::from_secs(90),
    )
    .await;
    let of = |call: &str| out.of(call);
    let live = of("live");
    assert_eq!(live["text"], "echo: hello js", "{live}");
    assert_eq!(live["promptTokens"], PROMPT_TOKENS, "{live}");
    let token = of("token");
    assert_eq!(token["text"], "echo: hello token", "{token}");
    let st = fake.state.lock().unwrap();
    assert_eq!(st.opened.len(), 2, "two sessions reached Google");
    assert_eq!(st.tokens.len(), 1);
    assert_eq!(
        st.tokens.values().next(),
        st.opened.last(),
        "the token's session on its key"
    );
    assert!(!st.saw_client_key && !st.constrained_with_key);
}
