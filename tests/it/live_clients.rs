//! Live sessions in a client's own limits (`[[auth.clients]]`), against the fake Live upstream
//! (tests/common/live_upstream.rs): a session holds one of the client's `max_concurrent` slots
//! from setup to close (a second one gets a clear close and never reaches Google; one opens
//! again once the first is closed; across replicas on one Redis, and a killed replica's slot
//! comes back after the lease); a session's usage counts in the project's TPM window and the
//! client's budget, priced at the model's Live rates; a client that reaches its budget has its
//! session closed and is refused the next one; under `limits.unpriced = "refuse"` a session on a
//! model without a price is closed before it reaches Google.

use crate::common;

use std::time::Duration;

use common::live_upstream::{FakeLive, PROMPT_TOKENS};
use common::*;
use futures_util::{SinkExt, StreamExt};
use gemini_quota_proxy::ledger::TokenUsage;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

const PATH: &str = "/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent";
const MODEL: &str = "gemini-2.5-flash-native-audio";
const KEYS: [&str; 1] = ["AIzaLiveClientKey0001"];
const TEAM_KEY: &str = "team-key-live-0123456789";

/// A proxy whose client `team` has `limits` (TOML lines); room for 10 sessions per project.
fn team(limits: &str) -> String {
    format!(
        "[limits]\nlive_sessions = 10\n[[auth.clients]]\nname = \"team\"\nkey = \"{TEAM_KEY}\"\n{limits}\n"
    )
}

/// What the proxy answers a setup on a new socket as `team`: `Ok` with the socket once
/// `setupComplete` came, else the close frame.
async fn try_session(proxy: &str) -> Result<Ws, CloseFrame> {
    try_session_with(proxy, TEAM_KEY).await
}

/// [`try_session`] with client key `key`.
async fn try_session_with(proxy: &str, key: &str) -> Result<Ws, CloseFrame> {
    let url = format!("{}{PATH}?key={key}", proxy.replacen("http://", "ws://", 1));
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("the proxy accepts the upgrade");
    let setup = json!({"setup": {"model": format!("models/{MODEL}")}});
    ws.send(Message::Text(setup.to_string().into()))
        .await
        .unwrap();
    match next(&mut ws).await {
        Some(Message::Close(Some(f))) => Err(f),
        Some(m) => {
            assert_eq!(json_of_message(&m), json!({"setupComplete": {}}));
            Ok(ws)
        }
        None => panic!("the socket ended without a close"),
    }
}

/// The next message that is not a ping or pong, within 10 s.
async fn next(ws: &mut Ws) -> Option<Message> {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), ws.next())
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

/// One text turn, read up to its `turnComplete`: the usage Google reported for it.
async fn turn(ws: &mut Ws) -> TokenUsage {
    let t = json!({"clientContent": {"turns": [{"role": "user", "parts": [{"text": "hi there"}]}], "turnComplete": true}});
    ws.send(Message::Text(t.to_string().into())).await.unwrap();
    loop {
        let m = json_of_message(&next(ws).await.expect("an answer"));
        if m["serverContent"]["turnComplete"] == true {
            let u = &m["usageMetadata"];
            return TokenUsage {
                input: u["promptTokenCount"].as_u64().unwrap(),
                output: u["responseTokenCount"].as_u64().unwrap(),
                ..TokenUsage::default()
            };
        }
    }
}

/// `team`'s (today's, this month's) budget use in micro-dollars, as the store holds it.
async fn spent(proxy: &Proxy) -> (u64, u64) {
    let tz = proxy.state.config.limits.timezone;
    let p = gemini_quota_proxy::quota::ClientPeriod::at(tz, chrono::Utc::now().timestamp_millis());
    proxy
        .state
        .store
        .client_spend(&[("team".into(), p.day, p.month)])
        .await
        .unwrap()[0]
}

/// The input tokens in the minute window of (project, `MODEL`).
async fn minute_tokens(proxy: &Proxy) -> u64 {
    let usage = proxy.state.store.usage().await.unwrap();
    usage
        .iter()
        .filter(|(_, m, _)| m == MODEL)
        .map(|(_, _, u)| u.minute_tokens)
        .sum()
}

/// Whether `team` can open a session within 10 s (a closed session frees its slot in a task
/// of its own, just after the close).
async fn opens_again(proxy: &str) -> Option<Ws> {
    for _ in 0..100 {
        if let Ok(ws) = try_session(proxy).await {
            return Some(ws);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

#[tokio::test]
async fn a_client_at_max_concurrent_1_gets_a_clear_close_on_its_second_session_and_opens_one_after_closing_the_first()
 {
    let fake = FakeLive::start(10).await;
    let proxy = start_proxy(
        &fake.url,
        ProxyOpts::keys(&KEYS).toml(&team("max_concurrent = 1")),
    )
    .await;
    let mut first = try_session(&proxy.url).await.expect("the first session");
    let refused = try_session(&proxy.url)
        .await
        .expect_err("the second is closed");
    assert_eq!(refused.code, CloseCode::Again, "{refused:?}");
    assert!(
        refused.reason.contains("\"team\"")
            && refused.reason.contains("max_concurrent (1 at once)"),
        "{}",
        refused.reason
    );
    assert_eq!(
        fake.opened().len(),
        1,
        "the refused one never reached Google"
    );
    // Its project had room: the client's own limit refused it.
    assert!(
        !refused.reason.contains("live_sessions"),
        "{}",
        refused.reason
    );

    first.close(None).await.unwrap();
    let again = opens_again(&proxy.url).await;
    assert!(again.is_some(), "closing the first freed the client's slot");
    assert_eq!(fake.opened().len(), 2);

    // Google ending a session frees the slot too.
    let mut second = again.unwrap();
    second.send(Message::Text("close-me".into())).await.unwrap();
    assert!(matches!(next(&mut second).await, Some(Message::Close(_))));
    assert!(opens_again(&proxy.url).await.is_some());
}

#[tokio::test]
async fn a_sessions_usage_counts_in_the_clients_budget_and_the_projects_tpm() {
    let fake = FakeLive::start(10).await;
    let proxy = start_proxy(
        &fake.url,
        ProxyOpts::keys(&KEYS).toml(&team("daily_budget_usd = 100.0\ntpm = 1000000")),
    )
    .await;
    let mut ws = try_session(&proxy.url).await.expect("a session");
    let mut used = turn(&mut ws).await;
    used = used.plus(turn(&mut ws).await);
    assert_eq!(used.input, 2 * PROMPT_TOKENS);
    // Priced at the Live model's rates (its own entry, not gemini-2.5-flash's by prefix).
    let per_turn = TokenUsage {
        input: used.input / 2,
        output: used.output / 2,
        ..TokenUsage::default()
    };
    let cost = proxy.state.ledger.list_cost_micros(MODEL, &per_turn);
    assert!(cost > 0);
    let mut last = (0, 0);
    for _ in 0..200 {
        last = spent(&proxy).await;
        if last.0 >= 2 * cost && minute_tokens(&proxy).await >= used.input {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        last,
        (2 * cost, 2 * cost),
        "each turn's cost in the day and month"
    );
    assert_eq!(
        minute_tokens(&proxy).await,
        used.input,
        "the input tokens in the project's minute window, where admissions see them"
    );
    ws.close(None).await.unwrap();
}

#[tokio::test]
async fn a_client_reaching_its_budget_has_its_session_closed_and_is_refused_the_next() {
    let fake = FakeLive::start(10).await;
    // Less than one turn costs.
    let proxy = start_proxy(
        &fake.url,
        ProxyOpts::keys(&KEYS).toml(&team("daily_budget_usd = 0.000001")),
    )
    .await;
    let mut ws = try_session(&proxy.url)
        .await
        .expect("a session: nothing spent yet");
    turn(&mut ws).await;
    match next(&mut ws).await {
        Some(Message::Close(Some(f))) => {
            assert_eq!(f.code, CloseCode::Policy, "{f:?}");
            assert!(f.reason.contains("daily_budget_usd"), "{}", f.reason);
        }
        other => panic!("expected the proxy's close, got {other:?}"),
    }
    let refused = try_session(&proxy.url)
        .await
        .expect_err("no session over the budget");
    assert_eq!(refused.code, CloseCode::Again);
    assert!(
        refused.reason.contains("daily_budget_usd"),
        "{}",
        refused.reason
    );
    assert_eq!(
        fake.opened().len(),
        1,
        "the refused one never reached Google"
    );
}

#[tokio::test]
async fn a_client_may_open_sessions_only_on_its_models() {
    let fake = FakeLive::start(10).await;
    let proxy = start_proxy(
        &fake.url,
        ProxyOpts::keys(&KEYS).toml(&team("models = [\"gemini-2.5-flash\"]")),
    )
    .await;
    let refused = try_session(&proxy.url).await.expect_err("refused");
    assert_eq!(refused.code, CloseCode::Policy);
    assert!(
        refused.reason.contains("may not call model"),
        "{}",
        refused.reason
    );
    assert!(fake.opened().is_empty());
}

#[tokio::test]
async fn under_limits_unpriced_refuse_a_session_on_a_model_without_a_price_is_closed() {
    let fake = FakeLive::start(10).await;
    let proxy = start_proxy(
        &fake.url,
        ProxyOpts::keys(&KEYS).toml("[limits]\nunpriced = \"refuse\"\n"),
    )
    .await;
    let url = format!(
        "{}{PATH}?key={CLIENT_KEY}",
        proxy.url.replacen("http://", "ws://", 1)
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let setup = json!({"setup": {"model": "models/unpriced-live-model"}});
    ws.send(Message::Text(setup.to_string().into()))
        .await
        .unwrap();
    match next(&mut ws).await {
        Some(Message::Close(Some(f))) => {
            assert_eq!(f.code, CloseCode::Policy);
            assert!(f.reason.contains("limits.unpriced"), "{}", f.reason);
        }
        other => panic!("expected a close, got {other:?}"),
    }
    assert!(fake.opened().is_empty());
    // A priced Live model still opens.
    let mut ok = try_session_with(&proxy.url, CLIENT_KEY)
        .await
        .expect("priced");
    ok.close(None).await.unwrap();
}

/// Two replicas on one Redis share the client's slots; a replica killed with SIGKILL frees its
/// session's client slot within the lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clients_session_slot_holds_across_replicas_and_a_killed_replicas_comes_back_after_the_lease()
 {
    let redis = RedisServer::start();
    let fake = FakeLive::start(10).await;
    let toml = format!("{}[live]\nlease_secs = 1\n", team("max_concurrent = 1"));
    let file = std::env::temp_dir().join(format!("gqp-live-clients-{}.toml", fastrand::u64(..)));
    std::fs::write(&file, &toml).unwrap();
    let dying = common::binary::Binary::start(
        &[
            ("GEMINI_API_KEYS", KEYS[0]),
            ("GEMINI_UPSTREAM_URL", &fake.url),
            ("REDIS_URL", &redis.url),
        ],
        &["--config", file.to_str().unwrap()],
    );
    let survivor = start_proxy(
        &fake.url,
        ProxyOpts::keys(&KEYS)
            .env("REDIS_URL", &redis.url)
            .toml(&toml),
    )
    .await;
    let _held = try_session(&dying.url)
        .await
        .expect("a session on one replica");
    // Three leases later the living replica has renewed the client's slot.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let refused = try_session(&survivor.url)
        .await
        .expect_err("refused on the other replica");
    assert!(
        refused.reason.contains("max_concurrent"),
        "{}",
        refused.reason
    );

    // SAFETY: a plain kill(2) of the child this test started.
    unsafe { libc::kill(dying.pid() as i32, libc::SIGKILL) };
    let mine = opens_again(&survivor.url).await;
    assert!(
        mine.is_some(),
        "the dead replica's client slot was not freed"
    );
    let _ = std::fs::remove_file(file);
}
