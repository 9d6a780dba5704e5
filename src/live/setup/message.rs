//! The client's `setup` message, the first of a session (read within
//! `live.setup_timeout_secs`): the model it names and the resumption handle it carries, whose
//! key binding the store keeps under a digest.

use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use super::super::slots::outcome;
use super::super::{ClientSocket, close};
use crate::state::AppState;

/// How long a resumption handle stays bound to its key: Google honours one about 2 h after
/// its session ends.
pub(in crate::live) const RESUMPTION_TTL_MS: u64 = 2 * 3_600_000 + 600_000;

/// What the proxy reads of `setup`.
#[derive(Debug)]
pub(in crate::live) struct Setup {
    /// `models/...` as the client named it.
    pub model: String,
    /// `sessionResumption.handle`, when the client resumes.
    pub handle: Option<String>,
}

#[derive(serde::Deserialize)]
struct SetupMessage {
    setup: SetupBody,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct SetupBody {
    model: String,
    #[serde(default)]
    session_resumption: Option<Resumption>,
}

#[derive(serde::Deserialize)]
struct Resumption {
    #[serde(default)]
    handle: Option<String>,
}

/// The store's name for a resumption handle's key binding: a digest, so the handle itself
/// (which resumes a conversation) is never stored.
pub(in crate::live) fn handle_resource(handle: &str) -> String {
    let d = Sha256::digest(handle.as_bytes());
    format!("live-handle/{}", hex::encode(&d[..16]))
}

/// The client's first message, which must be `setup` naming a model (a text frame, or a binary
/// one holding the same JSON as some SDKs send). `None`: the client closed, sent something else
/// or nothing in time, and has been told.
pub(in crate::live) async fn read_setup(
    state: &AppState,
    client: &mut ClientSocket,
) -> Option<(Setup, Message)> {
    let within = state.config.live.setup_timeout;
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let next = tokio::time::timeout_at(deadline, client.next()).await;
        let msg = match next {
            Err(_) => {
                outcome("setup_timeout");
                let reason = format!(
                    "No setup message within {} s (live.setup_timeout_secs)",
                    within.as_secs_f64()
                );
                close(client, CloseCode::Policy, &reason).await;
                return None;
            }
            Ok(None) | Ok(Some(Err(_))) => {
                outcome("client_gone");
                return None;
            }
            Ok(Some(Ok(m))) => m,
        };
        let body: &[u8] = match &msg {
            Message::Text(t) => t.as_bytes(),
            Message::Binary(b) => b,
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
            Message::Close(_) => {
                outcome("client_gone");
                return None;
            }
        };
        return match serde_json::from_slice::<SetupMessage>(body) {
            Ok(m) if !m.setup.model.trim().is_empty() => {
                let setup = Setup {
                    model: m.setup.model,
                    handle: m
                        .setup
                        .session_resumption
                        .and_then(|r| r.handle)
                        .filter(|h| !h.is_empty()),
                };
                Some((setup, msg))
            }
            _ => {
                outcome("setup_invalid");
                close(
                    client,
                    CloseCode::Invalid,
                    "The first message must be {\"setup\": {\"model\": \"models/...\", ...}}",
                )
                .await;
                None
            }
        };
    }
}
