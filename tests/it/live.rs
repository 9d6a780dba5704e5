//! The Live API WebSocket through the proxy, against a fake Live upstream (tests/common/
//! live_upstream.rs): frames relayed byte-identical both ways, sessions held as a per-project
//! quota (Google's refusal moves a session to another key, all full is a clear close, a closed
//! session frees its slot, a dead replica's slots come back after the lease), resumption on the
//! same key, usage in the ledger, the replica's limits, and the google-genai Python SDK.

use crate::common;

use std::time::Duration;

use common::live_upstream::{FakeLive, PROMPT_AUDIO_TOKENS, PROMPT_TOKENS, TlsFront};
use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

const PATH: &str = "/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent";
const MODEL: &str = "models/gemini-2.5-flash-native-audio";
const KEYS: [&str; 2] = ["AIzaLiveKeyAAAAAAAA01", "AIzaLiveKeyBBBBBBBB02"];

fn ws_url(proxy: &str, path: &str) -> String {
    format!(
        "{}{path}?key={CLIENT_KEY}",
        proxy.replacen("http://", "ws://", 1)
    )
}

async fn connect(proxy: &str) -> Ws {
    let (ws, _) = tokio_tungstenite::connect_async(ws_url(proxy, PATH))
        .await
        .expect("the proxy accepts the upgrade");
    ws
}

/// The next message that is not a ping or pong, within 10 s.
async fn next(ws: &mut Ws) -> Option<Message> {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a message within 10 s");
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

/// Send `setup` (optionally resuming) and return Google's first answer.
async fn setup(ws: &mut Ws, resumption: Option<Value>) -> Message {
    let mut s =
        json!({"setup": {"model": MODEL, "generationConfig": {"responseModalities": ["TEXT"]}}});
    if let Some(r) = resumption {
        s["setup"]["sessionResumption"] = r;
    }
    ws.send(Message::Text(s.to_string().into())).await.unwrap();
    next(ws).await.expect("an answer to the setup")
}

/// A session open through the proxy (setupComplete seen).
async fn session(proxy: &str) -> Ws {
    let mut ws = connect(proxy).await;
    let first = setup(&mut ws, None).await;
    assert_eq!(json_of_message(&first), json!({"setupComplete": {}}));
    ws
}

/// The close frame the proxy sends, within 10 s.
async fn close_of(ws: &mut Ws) -> CloseFrame {
    match next(ws).await {
        Some(Message::Close(Some(f))) => f,
        other => panic!("expected a close frame, got {other:?}"),
    }
}

fn turn(text: &str) -> Message {
    let v = json!({"clientContent": {"turns": [{"role": "user", "parts": [{"text": text}]}], "turnComplete": true}});
    Message::Text(v.to_string().into())
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

/// Whether the sessions the store counts become `n` within 5 s (slots free in the background).
async fn count_becomes(proxy: &Proxy, n: u64) -> bool {
    let end = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        if live_count(proxy).await == n {
            return true;
        }
        if std::time::Instant::now() > end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn text_turns_and_binary_frames_are_relayed_unchanged_both_ways() {
    let fake = FakeLive::start(10).await;
    let proxy = start_proxy(&fake.url, ProxyOpts::keys(&KEYS[..1])).await;
    let mut ws = session(&proxy.url).await;

    ws.send(turn("hello there")).await.unwrap();
    let content = json_of_message(&next(&mut ws).await.unwrap());
    assert_eq!(
        content["serverContent"]["modelTurn"]["parts"][0]["text"],
        "echo: hello there"
    );
    let done = json_of_message(&next(&mut ws).await.unwrap());
    assert_eq!(done["serverContent"]["turnComplete"], true);

    // 16 KB of audio-like bytes, and a text frame that is not JSON: back byte for byte, as
    // the frame type they were sent in.
    let audio: Vec<u8> = (0..16 * 1024).map(|i| (i * 7 % 251) as u8).collect();
    ws.send(Message::Binary(audio.clone().into()))
        .await
        .unwrap();
    assert_eq!(next(&mut ws).await, Some(Message::Binary(audio.into())));
    ws.send(Message::Text("plain text, not JSON".into()))
        .await
        .unwrap();
    assert_eq!(
        next(&mut ws).await,
        Some(Message::Text("plain text, not JSON".into()))
    );

    // The upstream saw the pooled key only, and no client credential in the URL.
    let st = fake.state.lock().unwrap();
    assert_eq!(st.opened, vec![KEYS[0].to_string()]);
    assert!(!st.saw_client_key);
    assert_eq!(st.paths, vec![PATH.to_string()]);
}

#[tokio::test]
async fn a_setup_sent_as_a_binary_frame_and_a_path_prefix_work_too() {
    let fake = FakeLive::start(10).await;
    let proxy = start_proxy(
        &fake.url,
        ProxyOpts::keys(&KEYS[..1]).env("PROXY_PATH_PREFIX", "/gemini"),
    )
    .await;
    let url = ws_url(&proxy.url, &format!("/gemini{PATH}"));
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let s = json!({"setup": {"model": MODEL}});
    ws.send(Message::Binary(s.to_string().into_bytes().into()))
        .await
        .unwrap();
    let first = next(&mut ws).await.unwrap();
    assert_eq!(json_of_message(&first), json!({"setupComplete": {}}));
    assert_eq!(fake.state.lock().unwrap().paths, vec![PATH.to_string()]);
}

#[tokio::test]
async fn an_upgrade_without_a_valid_client_key_is_refused_with_googles_envelope() {
    let fake = FakeLive::start(10).await;
    let proxy = start_proxy(&fake.url, ProxyOpts::keys(&KEYS[..1])).await;
    let url = format!("{}{PATH}", proxy.url.replacen("http://", "ws://", 1));
    match tokio_tungstenite::connect_async(url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), 401);
            let body: Value = serde_json::from_slice(resp.body().as_deref().unwrap()).unwrap();
            assert_eq!(body["error"]["status"], "UNAUTHENTICATED");
        }
        other => panic!("expected a 401, got {:?}", other.map(|_| ())),
    }
    assert!(fake.opened().is_empty());
}

#[tokio::test]
async fn a_fourth_session_on_a_project_google_caps_at_three_goes_to_another_key() {
    // Google allows 3 sessions per project; the proxy is configured for more on project a, so
    // a's headroom looks best and Google's refusal is what moves the 4th session to b.
    let fake = FakeLive::start(3).await;
    let toml = format!(
        "[[keys]]\nkey = \"{}\"\nproject = \"pa\"\n[[keys]]\nkey = \"{}\"\nproject = \"pb\"\n\
         [limits.projects.pa]\nlive_sessions = 10\n[limits.projects.pb]\nlive_sessions = 1\n",
        KEYS[0], KEYS[1]
    );
    let proxy = start_proxy(&fake.url, ProxyOpts::keys(&[]).toml(&toml)).await;
    let mut open = Vec::new();
    for _ in 0..4 {
        open.push(session(&proxy.url).await);
    }
    let (opened, refused) = {
        let st = fake.state.lock().unwrap();
        (st.opened.clone(), st.refused.clone())
    };
    assert_eq!(
        opened,
        vec![KEYS[0], KEYS[0], KEYS[0], KEYS[1]],
        "three on a, the fourth on b"
    );
    assert_eq!(refused, vec![KEYS[0].to_string()]);
    // The refused attempt's slot was given back: 4 held, not 5.
    assert!(count_becomes(&proxy, 4).await);
    // a is held after Google's refusal: though the proxy counts room on a (3 of 10), a 5th
    // session does not ask Google on a again; b is full, so it is refused at once.
    let mut fifth = connect(&proxy.url).await;
    assert!(matches!(setup(&mut fifth, None).await, Message::Close(_)));
    assert_eq!(
        fake.state.lock().unwrap().refused.len(),
        1,
        "a was tried again"
    );
    // One of a's sessions ends: a is tried first again, and Google takes it.
    open.remove(0).close(None).await.unwrap();
    assert!(count_becomes(&proxy, 3).await);
    let _sixth = session(&proxy.url).await;
    assert_eq!(fake.opened().last().map(String::as_str), Some(KEYS[0]));
}

#[tokio::test]
async fn every_project_full_is_a_clear_close_naming_the_limit() {
    let fake = FakeLive::start(10).await;
    let proxy = start_proxy(
        &fake.url,
        ProxyOpts::keys(&KEYS).toml("[limits]\nlive_sessions = 1\n"),
    )
    .await;
    let _a = session(&proxy.url).await;
    let _b = session(&proxy.url).await;
    let mut third = connect(&proxy.url).await;
    let f = match setup(&mut third, None).await {
        Message::Close(Some(f)) => f,
        other => panic!("expected a close, got {other:?}"),
    };
    assert_eq!(f.code, CloseCode::Again);
    assert!(f.reason.contains("limits.live_sessions"), "{}", f.reason);
    assert_eq!(fake.opened().len(), 2, "the third never reached Google");
}

#[tokio::test]
async fn google_refusing_on_every_key_is_a_clear_close_too() {
    let fake = FakeLive::start(1).await;
    let proxy = start_proxy(
        &fake.url,
        ProxyOpts::keys(&KEYS).toml("[limits]\nlive_sessions = 5\n"),
    )
    .await;
    let _a = session(&proxy.url).await;
    let _b = session(&proxy.url).await;
    let mut third = connect(&proxy.url).await;
    let f = match setup(&mut third, None).await {
        Message::Close(Some(f)) => f,
        other => panic!("expected a close, got {other:?}"),
    };
    assert_eq!(f.code, CloseCode::Again);
    assert_eq!(fake.state.lock().unwrap().refused.len(), 2);
}

#[tokio::test]
async fn a_session_closed_by_either_side_frees_its_slot() {
    let fake = FakeLive::start(10).await;
    let proxy = start_proxy(
        &fake.url,
        ProxyOpts::keys(&KEYS[..1]).toml("[limits]\nlive_sessions = 1\n"),
    )
    .await;
    // The client closes: its code and reason reach Google's side, the slot frees.
    let mut ws = session(&proxy.url).await;
    assert_eq!(live_count(&proxy).await, 1);
    ws.close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "done".into(),
    }))
    .await
    .unwrap();
    assert!(
        count_becomes(&proxy, 0).await,
        "the client's close freed the slot"
    );
    assert!(eventually(Duration::from_secs(5), || fake.open(KEYS[0]) == 0).await);

    // Google closes: the client gets Google's code and reason, the slot frees.
    let mut ws = session(&proxy.url).await;
    ws.send(Message::Text("close-me".into())).await.unwrap();
    let f = close_of(&mut ws).await;
    assert_eq!((f.code, f.reason.as_str()), (CloseCode::Normal, "bye"));
    assert!(
        count_becomes(&proxy, 0).await,
        "Google's close freed the slot"
    );
    // And the slot is usable again.
    let _again = session(&proxy.url).await;
}

#[tokio::test]
async fn a_resumed_session_goes_to_the_key_that_issued_its_handle() {
    let fake = FakeLive::start(10).await;
    let proxy = start_proxy(
        &fake.url,
        ProxyOpts::keys(&KEYS).toml("[limits]\nlive_sessions = 100\n"),
    )
    .await;
    for _ in 0..3 {
        let mut ws = connect(&proxy.url).await;
        let first = setup(&mut ws, Some(json!({}))).await;
        assert_eq!(json_of_message(&first), json!({"setupComplete": {}}));
        let update = json_of_message(&next(&mut ws).await.unwrap());
        let handle = update["sessionResumptionUpdate"]["newHandle"]
            .as_str()
            .unwrap()
            .to_string();
        let issuer = fake.state.lock().unwrap().handles[&handle].clone();
        drop(ws);
        // Several resumptions: the rotation alone would alternate the keys.
        for _ in 0..3 {
            let mut ws = connect(&proxy.url).await;
            let first = setup(&mut ws, Some(json!({"handle": handle}))).await;
            assert_eq!(json_of_message(&first), json!({"setupComplete": {}}));
            let resumed = fake.state.lock().unwrap().resumed.last().cloned().unwrap();
            assert_eq!(resumed, (handle.clone(), issuer.clone()));
        }
    }
}

#[tokio::test]
async fn usage_metadata_of_each_turn_reaches_the_ledger() {
    let fake = FakeLive::start(10).await;
    let proxy = start_proxy(&fake.url, ProxyOpts::keys(&KEYS[..1])).await;
    let mut ws = session(&proxy.url).await;
    for text in ["one two", "three four five"] {
        ws.send(turn(text)).await.unwrap();
        next(&mut ws).await.unwrap();
        next(&mut ws).await.unwrap();
    }
    // Two turns: 11 prompt tokens each; "echo: one two" is 3 words, "echo: three four five" 4.
    let mut last = Value::Null;
    for _ in 0..500 {
        let r = http()
            .get(format!(
                "{}/api/ai/usage/?window=1h&group_by=none",
                proxy.url
            ))
            .header("x-goog-api-key", CLIENT_KEY)
            .send()
            .await
            .unwrap();
        last = json_of(r).await;
        if last["totals"]["requests"] == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let t = &last["totals"];
    assert_eq!(t["requests"], 2, "{last}");
    assert_eq!(t["input_tokens"], 2 * PROMPT_TOKENS);
    assert_eq!(t["output_tokens"], 3 + 4);
    let r = http()
        .get(format!(
            "{}/api/ai/usage/?window=1h&group_by=model",
            proxy.url
        ))
        .header("x-goog-api-key", CLIENT_KEY)
        .send()
        .await
        .unwrap();
    let by_model = json_of(r).await;
    assert_eq!(
        by_model["series"][0]["group"]["model"], "gemini-2.5-flash-native-audio",
        "{by_model}"
    );
}

#[tokio::test]
async fn an_audio_sessions_cost_in_the_ledger_prices_audio_and_text_tokens_apart() {
    let fake = FakeLive::start(10).await;
    let proxy = start_proxy(&fake.url, ProxyOpts::keys(&KEYS[..1])).await;
    let mut ws = connect(&proxy.url).await;
    let s =
        json!({"setup": {"model": MODEL, "generationConfig": {"responseModalities": ["AUDIO"]}}});
    ws.send(Message::Text(s.to_string().into())).await.unwrap();
    assert_eq!(
        json_of_message(&next(&mut ws).await.unwrap()),
        json!({"setupComplete": {}})
    );
    ws.send(turn("speak to me")).await.unwrap();
    next(&mut ws).await.unwrap();
    next(&mut ws).await.unwrap();
    // "echo: speak to me": 4 audio tokens out; 11 in, 8 of them audio.
    let out_audio = 4u64;
    let prices = &proxy.state.config.prices;
    assert_eq!(
        prices.entry_for("gemini-2.5-flash-native-audio"),
        Some("gemini-2.5-flash-native-audio")
    );
    let e = prices.entry("gemini-2.5-flash-native-audio").unwrap();
    let want = ((PROMPT_TOKENS - PROMPT_AUDIO_TOKENS) as f64 * e.input.unwrap()
        + PROMPT_AUDIO_TOKENS as f64 * e.input_audio.unwrap()
        + out_audio as f64 * e.output_audio.unwrap())
        / 1e6;
    let text_only =
        (PROMPT_TOKENS as f64 * e.input.unwrap() + out_audio as f64 * e.output.unwrap()) / 1e6;
    assert!(
        want > 2.0 * text_only,
        "the audio rates are the dearer ones"
    );
    let mut last = Value::Null;
    for _ in 0..500 {
        let r = http()
            .get(format!(
                "{}/api/ai/usage/?window=1h&group_by=none",
                proxy.url
            ))
            .header("x-goog-api-key", CLIENT_KEY)
            .send()
            .await
            .unwrap();
        last = json_of(r).await;
        if last["totals"]["requests"] == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let cost = last["totals"]["list_cost_usd"].as_f64().unwrap();
    assert!(
        (cost - want).abs() < 1e-12,
        "cost {cost} USD, the price table says {want} USD: {}",
        last["totals"]
    );
}

#[tokio::test]
async fn a_message_over_the_size_limit_closes_with_1009() {
    let fake = FakeLive::start(10).await;
    let proxy = start_proxy(
        &fake.url,
        ProxyOpts::keys(&KEYS[..1]).toml("[live]\nmax_message_bytes = 4096\n"),
    )
    .await;
    let mut ws = session(&proxy.url).await;
    ws.send(Message::Binary(vec![1u8; 8192].into()))
        .await
        .unwrap();
    let f = close_of(&mut ws).await;
    assert_eq!(f.code, CloseCode::Size);
    assert!(f.reason.contains("live.max_message_bytes"), "{}", f.reason);
}

#[tokio::test]
async fn an_idle_session_is_closed_and_frees_its_slot() {
    let fake = FakeLive::start(10).await;
    let proxy = start_proxy(
        &fake.url,
        ProxyOpts::keys(&KEYS[..1]).toml("[live]\nidle_timeout_secs = 0.3\n"),
    )
    .await;
    let mut ws = session(&proxy.url).await;
    let f = close_of(&mut ws).await;
    assert_eq!(f.code, CloseCode::Policy);
    assert!(f.reason.contains("live.idle_timeout_secs"), "{}", f.reason);
    assert!(count_becomes(&proxy, 0).await);
}

#[tokio::test]
async fn sessions_past_live_max_sessions_are_closed_at_once() {
    let fake = FakeLive::start(10).await;
    let proxy = start_proxy(
        &fake.url,
        ProxyOpts::keys(&KEYS[..1]).env("PROXY_LIVE_MAX_SESSIONS", "1"),
    )
    .await;
    let _a = session(&proxy.url).await;
    let mut b = connect(&proxy.url).await;
    let f = close_of(&mut b).await;
    assert_eq!(f.code, CloseCode::Again);
    assert!(f.reason.contains("live.max_sessions"), "{}", f.reason);
    assert_eq!(fake.opened().len(), 1);
}

#[tokio::test]
async fn a_setup_that_is_not_one_is_refused_with_1007() {
    let fake = FakeLive::start(10).await;
    let proxy = start_proxy(&fake.url, ProxyOpts::keys(&KEYS[..1])).await;
    let mut ws = connect(&proxy.url).await;
    ws.send(Message::Text("{\"hello\": 1}".into()))
        .await
        .unwrap();
    let f = close_of(&mut ws).await;
    assert_eq!(f.code, CloseCode::Invalid);
    assert!(fake.opened().is_empty());
}

/// A replica's sessions hold their slots in Redis while it lives (its renewals keep the leases
/// past their length), and a replica killed with SIGKILL frees them within the lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_replicas_session_slots_come_back_after_the_lease() {
    let redis = RedisServer::start();
    let fake = FakeLive::start(10).await;
    let toml = "[limits]\nlive_sessions = 1\n[live]\nlease_secs = 1\n";
    let file = std::env::temp_dir().join(format!("gqp-live-{}.toml", fastrand::u64(..)));
    std::fs::write(&file, toml).unwrap();
    let dying = common::binary::Binary::start(
        &[
            ("GEMINI_API_KEYS", KEYS[0]),
            ("PROXY_CLIENT_KEYS", CLIENT_KEY),
            ("GEMINI_UPSTREAM_URL", &fake.url),
            ("REDIS_URL", &redis.url),
        ],
        &["--config", file.to_str().unwrap()],
    );
    let survivor = start_proxy(
        &fake.url,
        ProxyOpts::keys(&KEYS[..1])
            .env("REDIS_URL", &redis.url)
            .toml(toml),
    )
    .await;
    let _held = session(&dying.url).await;

    // Three leases later the living replica has renewed its slot: the other is refused.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut refused = connect(&survivor.url).await;
    match setup(&mut refused, None).await {
        Message::Close(Some(f)) => assert_eq!(f.code, CloseCode::Again),
        other => panic!("expected a close while the slot is held, got {other:?}"),
    }

    // SIGKILL: no close, no cleanup; the lease runs out and the slot comes back.
    let killed = std::time::Instant::now();
    // SAFETY: a plain kill(2) of the child this test started.
    unsafe { libc::kill(dying.pid() as i32, libc::SIGKILL) };
    assert!(
        count_becomes(&survivor, 0).await,
        "the dead replica's slot was not freed"
    );
    println!(
        "slot freed {} ms after the kill (lease 1000 ms)",
        killed.elapsed().as_millis()
    );
    // A closed session frees its slot in Redis at once, not at the end of its lease.
    let mut mine = session(&survivor.url).await;
    mine.close(None).await.unwrap();
    assert!(count_becomes(&survivor, 0).await);
    let _ = std::fs::remove_file(file);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn google_genai_live_connect_works_through_the_proxy_and_to_a_wss_upstream() {
    // Google's side over TLS (wss://, trusted through upstream.ca_file); the SDK always speaks
    // wss:// to its base URL, so the proxy too sits behind a TLS front, as in production.
    let fake = FakeLive::start(10).await;
    let upstream = TlsFront::start(&fake.url).await;
    let proxy = start_proxy(
        &upstream.url,
        ProxyOpts::keys(&KEYS[..1])
            .env(
                "GEMINI_UPSTREAM_CA_FILE",
                upstream.ca_file.to_str().unwrap(),
            )
            .toml("[limits]\nlive_sessions = 1\n"),
    )
    .await;
    let front = TlsFront::start(&proxy.url).await;
    let stdout = common::sdk::run_python(
        "genai_live_check.py",
        &front.url,
        &front.ca_file,
        CLIENT_KEY,
    )
    .await;
    assert!(stdout.contains("google-genai live checks passed"));
    let st = fake.state.lock().unwrap();
    assert_eq!(st.opened, vec![KEYS[0].to_string()]);
    assert!(!st.saw_client_key);
}

/// The value of the metric line that starts with `series` (`name{labels}`), if any.
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn open_sessions_per_project_and_their_outcomes_are_in_the_metrics() {
    let fake = FakeLive::start(10).await;
    let toml = format!(
        "[[keys]]\nkey = \"{}\"\nproject = \"live-metrics-project\"\n[limits]\nlive_sessions = 1\n",
        KEYS[0]
    );
    let proxy = start_proxy(&fake.url, ProxyOpts::keys(&[]).toml(&toml)).await;
    let gauge = "gqp_live_sessions{project=\"live-metrics-project\"}";
    let mut ws = session(&proxy.url).await;
    assert_eq!(metric(&metrics_text(&proxy.url).await, gauge), Some(1.0));
    // Refused for the limit: counted by outcome (the recorder is shared by this file's tests,
    // so only growth is asserted).
    let refused = "gqp_live_sessions_total{outcome=\"refused_full\"}";
    let before = metric(&metrics_text(&proxy.url).await, refused).unwrap_or(0.0);
    let mut second = connect(&proxy.url).await;
    assert!(matches!(setup(&mut second, None).await, Message::Close(_)));
    let mut grew = false;
    for _ in 0..500 {
        let text = metrics_text(&proxy.url).await;
        if metric(&text, refused).unwrap_or(0.0) > before {
            grew = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(grew, "refused_full was not counted");
    ws.close(None).await.unwrap();
    let mut zero = false;
    for _ in 0..500 {
        if metric(&metrics_text(&proxy.url).await, gauge) == Some(0.0) {
            zero = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(zero, "the gauge did not come back to 0");
    let text = metrics_text(&proxy.url).await;
    assert!(metric(&text, "gqp_live_sessions_total{outcome=\"completed\"}").unwrap_or(0.0) >= 1.0);
    // No key, client key or session id in any live metric.
    for l in text.lines().filter(|l| l.contains("gqp_live")) {
        assert!(!l.contains("AIza") && !l.contains(CLIENT_KEY), "{l}");
    }
}

#[tokio::test]
async fn pings_pongs_and_go_away_pass_through() {
    let fake = FakeLive::start(10).await;
    let proxy = start_proxy(&fake.url, ProxyOpts::keys(&KEYS[..1])).await;
    let mut ws = session(&proxy.url).await;
    ws.send(Message::Text("go-away".into())).await.unwrap();
    let m = next(&mut ws).await.unwrap();
    assert_eq!(json_of_message(&m), json!({"goAway": {"timeLeft": "50s"}}));
    // Google's ping reaches the client with its payload.
    ws.send(Message::Text("ping-me".into())).await.unwrap();
    let ping = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Some(Ok(Message::Ping(p))) = ws.next().await {
                return p;
            }
        }
    })
    .await
    .expect("Google's ping relayed");
    assert_eq!(&ping[..], b"upstream-ping");
    // The client's ping is answered with its payload.
    ws.send(Message::Ping(b"client-ping".to_vec().into()))
        .await
        .unwrap();
    let pong = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Some(Ok(Message::Pong(p))) = ws.next().await {
                return p;
            }
        }
    })
    .await
    .expect("a pong");
    assert_eq!(&pong[..], b"client-ping");
}

/// A client that sends and never reads: the echoes back up to the proxy, which stops reading
/// the upstream, which stops reading the proxy, which stops reading the client, whose sends
/// then stall. Without back-pressure the proxy would buffer all of it and every send complete.
#[tokio::test]
async fn a_client_that_never_reads_is_pushed_back_not_buffered() {
    let fake = FakeLive::start(10).await;
    let proxy = start_proxy(&fake.url, ProxyOpts::keys(&KEYS[..1])).await;
    let mut ws = session(&proxy.url).await;
    let frame: Vec<u8> = vec![7u8; 1 << 20];
    let mut sent = 0usize;
    let stalled = loop {
        let send = ws.send(Message::Binary(frame.clone().into()));
        match tokio::time::timeout(Duration::from_secs(2), send).await {
            Ok(r) => {
                r.unwrap();
                sent += 1;
            }
            Err(_) => break true,
        }
        if sent == 512 {
            break false;
        }
    };
    assert!(
        stalled,
        "512 MiB were taken without the client reading anything"
    );
    println!("the client's sends stalled after {sent} MiB");
}

#[tokio::test]
async fn a_shutdown_closes_open_sessions_with_1001_and_frees_their_slots() {
    let fake = FakeLive::start(10).await;
    let mut proxy = start_proxy(&fake.url, ProxyOpts::keys(&KEYS[..1])).await;
    let mut ws = session(&proxy.url).await;
    proxy.shutdown();
    let f = close_of(&mut ws).await;
    assert_eq!(f.code, CloseCode::Away);
    assert!(f.reason.contains("shutting down"), "{}", f.reason);
    assert!(count_becomes(&proxy, 0).await);
    assert!(eventually(Duration::from_secs(5), || fake.open(KEYS[0]) == 0).await);
    // The drain ends once the session is closed, well within the grace period.
    tokio::time::timeout(Duration::from_secs(10), &mut proxy.task)
        .await
        .expect("the proxy stopped")
        .unwrap();
}
