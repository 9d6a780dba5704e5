//! An established session's frames, relayed both ways unchanged (text, binary, ping, pong,
//! close with its code and reason). Each direction forwards one message at a time and reads the
//! next only once the last is written: a slow side stops the other's reads (TCP pushes back)
//! instead of growing a buffer. Google's messages are looked at as they pass, without copying:
//! `usageMetadata` (cumulative within a turn: the last one of a turn is kept and counted in the
//! ledger at `turnComplete` and charged to the quota store through the session's meter), and
//! `sessionResumptionUpdate.newHandle` (bound to the key). A client that reaches a budget
//! through the meter has its session closed.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use super::setup::{Connected, RESUMPTION_TTL_MS, handle_resource};
use super::slots::outcome;
use super::{ClientSocket, close};
use crate::ledger::{TokenUsage, UsageScanner};
use crate::state::AppState;
use crate::telemetry::span::{Attr, RequestTrace, attr};

/// After one side closed, the other has this long to finish its close handshake.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// What is learned from Google's messages.
struct Watch<'a> {
    state: &'a Arc<AppState>,
    key: usize,
    model: Arc<str>,
    client_id: u32,
    /// The last usage of the turn under way.
    pending: Option<TokenUsage>,
    /// Charges each turn's usage to the project's and the client's counters.
    meter: &'a super::client::Meter,
    /// The session's span (trace export on): told of Google's `goAway`.
    trace: Option<&'a RequestTrace>,
}

/// What a session counts in besides its project slot: its client in the ledger, its client's
/// slot (freed with the project's), and the meter its usage goes through.
pub(super) struct Session {
    pub client_id: u32,
    pub client_slot: Option<super::client::ClientSlot>,
    pub meter: super::client::Meter,
}

static USAGE: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"\"usageMetadata\""));
static TURN_COMPLETE: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"\"turnComplete\""));
static GO_AWAY: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"\"goAway\""));
static RESUMPTION: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"\"sessionResumptionUpdate\""));

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct TurnMessage {
    #[serde(default)]
    server_content: Option<ServerContent>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct ServerContent {
    #[serde(default)]
    turn_complete: bool,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct ResumptionMessage {
    session_resumption_update: ResumptionUpdate,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct ResumptionUpdate {
    #[serde(default)]
    new_handle: Option<String>,
}

impl Watch<'_> {
    /// Look at one of Google's messages (JSON in a text or binary frame); a new resumption
    /// handle in it is handed back, to be bound before the message is relayed.
    fn see(&mut self, body: &[u8]) -> Option<String> {
        if let Some(t) = self.trace
            && GO_AWAY.find(body).is_some()
        {
            t.event("goAway", Vec::new());
        }
        if USAGE.find(body).is_some()
            && let Some(u) = UsageScanner::scan_all(body)
        {
            self.pending = Some(u);
        }
        if TURN_COMPLETE.find(body).is_some()
            && serde_json::from_slice::<TurnMessage>(body)
                .ok()
                .and_then(|m| m.server_content)
                .is_some_and(|c| c.turn_complete)
        {
            self.count();
        }
        if RESUMPTION.find(body).is_some()
            && let Ok(m) = serde_json::from_slice::<ResumptionMessage>(body)
            && let Some(handle) = m.session_resumption_update.new_handle
            && !handle.is_empty()
        {
            return Some(handle);
        }
        None
    }

    fn see_message(&mut self, m: &Message) -> Option<String> {
        match m {
            Message::Text(t) => self.see(t.as_bytes()),
            Message::Binary(b) => self.see(b),
            _ => None,
        }
    }

    /// Bind a resumption handle to this session's key, before the client sees the handle: a
    /// client that resumes at once finds the binding there.
    async fn bind(&self, handle: &str) {
        let kid = &self.state.pool.keys[self.key].kid;
        let resource = handle_resource(handle);
        if let Err(e) = self
            .state
            .store
            .set_affinity(&resource, kid, RESUMPTION_TTL_MS)
            .await
        {
            tracing::warn!(error = %e, "live: a resumption handle was not bound to its key");
        }
    }

    /// Record the turn's usage in the ledger (per minute, by client, model and key).
    fn count(&mut self) {
        let Some(usage) = self.pending.take() else {
            return;
        };
        let key = &self.state.pool.keys[self.key];
        let ledger = &self.state.ledger;
        let series = ledger.series_of(
            Some(&key.project),
            &self.model,
            Some(&key.kid),
            self.client_id,
            true,
        );
        ledger
            .tally(series, self.model.clone(), &key.project, None)
            .close(Some(usage));
        self.meter.charge(&usage);
    }
}

/// How a direction of the relay ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// A close frame was forwarded.
    Closed,
    /// The socket ended or failed without a close.
    Gone,
    /// A client message over `live.max_message_bytes`.
    TooBig,
    /// No frame either way for `live.idle_timeout_secs`.
    Idle,
    /// The proxy shuts down.
    Shutdown,
    /// The client reached one of its budgets.
    OverBudget,
}

/// Which side a relay's end came from.
#[derive(Debug, Clone, Copy)]
enum Side {
    Client,
    Google,
}

/// Milliseconds since `start`, for the idle clock.
fn since(start: tokio::time::Instant) -> u64 {
    start.elapsed().as_millis() as u64
}

/// Relay until either side closes (or the session is idle past `live.idle_timeout_secs`).
pub(super) async fn run(
    state: &Arc<AppState>,
    sessions: &super::LiveSessions,
    mut client: ClientSocket,
    connected: Connected,
    model: &str,
    session: Session,
    trace: Option<&RequestTrace>,
) {
    let Session {
        client_id,
        client_slot,
        meter,
    } = session;
    let Connected {
        mut upstream,
        key,
        slot,
        first,
    } = connected;
    let mut watch = Watch {
        state,
        key,
        model: Arc::from(model.strip_prefix("models/").unwrap_or(model)),
        client_id,
        pending: None,
        meter: &meter,
        trace,
    };
    if let Some(handle) = watch.see_message(&first) {
        watch.bind(&handle).await;
    }
    if client.send(first).await.is_err() {
        outcome("client_gone");
        close(&mut upstream, CloseCode::Away, "client went away").await;
        return;
    }
    let started = tokio::time::Instant::now();
    let last = AtomicU64::new(0);
    let idle = state.config.live.idle_timeout;
    let (mut c_tx, mut c_rx) = client.split();
    let (mut u_tx, mut u_rx) = upstream.split();
    let mut over_reason = String::new();
    let ended = {
        let up = async {
            while let Some(m) = c_rx.next().await {
                last.store(since(started), Ordering::Relaxed);
                let m = match m {
                    Ok(m) => m,
                    Err(WsError::Capacity(_)) => return End::TooBig,
                    Err(_) => return End::Gone,
                };
                let is_close = m.is_close();
                if u_tx.send(m).await.is_err() {
                    return End::Gone;
                }
                if is_close {
                    return End::Closed;
                }
            }
            End::Gone
        };
        let down = async {
            while let Some(m) = u_rx.next().await {
                last.store(since(started), Ordering::Relaxed);
                let Ok(m) = m else { return End::Gone };
                if let Some(handle) = watch.see_message(&m) {
                    watch.bind(&handle).await;
                }
                let is_close = m.is_close();
                if c_tx.send(m).await.is_err() {
                    return End::Gone;
                }
                if is_close {
                    return End::Closed;
                }
            }
            End::Gone
        };
        let idle_watch = async {
            if idle.is_zero() {
                return std::future::pending::<()>().await;
            }
            loop {
                let quiet = Duration::from_millis(
                    since(started).saturating_sub(last.load(Ordering::Relaxed)),
                );
                if quiet >= idle {
                    return;
                }
                tokio::time::sleep(idle - quiet).await;
            }
        };
        tokio::pin!(up, down, idle_watch);
        // A close forwarded one way: the other side's answer to it comes back the other way.
        // The session is over for Google once either side closed: the slot frees at once, not
        // after the close handshake.
        let mut slot = Some((slot, client_slot));
        let over = meter.over();
        tokio::pin!(over);
        tokio::select! {
            e = &mut up => {
                drop(slot.take());
                if e == End::Closed {
                    let _ = tokio::time::timeout(CLOSE_GRACE, &mut down).await;
                }
                (Side::Client, e)
            }
            e = &mut down => {
                drop(slot.take());
                if e == End::Closed {
                    let _ = tokio::time::timeout(CLOSE_GRACE, &mut up).await;
                }
                (Side::Google, e)
            }
            () = &mut idle_watch => (Side::Client, End::Idle),
            () = sessions.stopping() => (Side::Client, End::Shutdown),
            r = &mut over => {
                over_reason = r;
                (Side::Client, End::OverBudget)
            }
        }
    };
    watch.count();
    let (mut client, mut upstream) = match (c_tx.reunite(c_rx), u_tx.reunite(u_rx)) {
        (Ok(c), Ok(u)) => (c, u),
        _ => return,
    };
    let ended_by = match ended {
        (_, End::Closed) => "completed",
        (Side::Client, End::Gone) => {
            close(&mut upstream, CloseCode::Away, "client went away").await;
            "client_gone"
        }
        (Side::Google, End::Gone) => {
            close(
                &mut client,
                CloseCode::Error,
                "the Gemini API connection ended without a close",
            )
            .await;
            "upstream_gone"
        }
        (_, End::TooBig) => {
            let reason = format!(
                "A message over {} bytes (live.max_message_bytes)",
                state.config.live.max_message_bytes
            );
            close(&mut client, CloseCode::Size, &reason).await;
            close(&mut upstream, CloseCode::Away, "client went away").await;
            "message_too_big"
        }
        (_, End::Idle) => {
            let reason = format!(
                "No frame either way for {} s (live.idle_timeout_secs)",
                idle.as_secs_f64()
            );
            close(&mut client, CloseCode::Policy, &reason).await;
            close(&mut upstream, CloseCode::Away, "idle").await;
            "idle"
        }
        (_, End::OverBudget) => {
            close(&mut client, CloseCode::Policy, &over_reason).await;
            close(&mut upstream, CloseCode::Away, "client went away").await;
            "over_budget"
        }
        (_, End::Shutdown) => {
            let reason = "The proxy is shutting down: reconnect (with sessionResumption to go on)";
            close(&mut client, CloseCode::Away, reason).await;
            close(&mut upstream, CloseCode::Away, "client went away").await;
            "shutdown"
        }
    };
    outcome(ended_by);
    if let Some(t) = trace {
        t.set([Attr::new(attr::LIVE_OUTCOME, ended_by)]);
    }
}
