//! A session's start: the client's `setup` message ([`message`]), the
//! key chosen by session headroom (or the key a resumption handle is bound to), its slot taken,
//! Google's socket opened and the setup sent. Google refusing the setup for quota (or the key
//! failing to connect) moves on to the next key before the client sees anything; once Google
//! answers with anything but a close, the session is established and nothing is retried.

use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use super::slots::Slot;
use super::upstream::{self, OpenError, UpstreamSocket};
use crate::quota::{KeyState, limits};
use crate::state::AppState;

mod message;

pub(super) use self::message::{RESUMPTION_TTL_MS, Setup, handle_resource, read_setup};

/// An established upstream session.
pub(super) struct Connected {
    pub upstream: UpstreamSocket,
    /// The pool position of the key serving it.
    pub key: usize,
    pub slot: Slot,
    /// Google's first answer (`setupComplete`), for the client.
    pub first: Message,
}

/// Why no key took the session: the close the client gets.
#[derive(Debug)]
pub(super) struct Refusal {
    pub code: CloseCode,
    pub reason: String,
    pub outcome: &'static str,
}

/// Whether Google's close before `setupComplete` says the project is out of quota (concurrent
/// sessions or another limit): 1011, 1008 or 1013 with `RESOURCE_EXHAUSTED`, "quota" or
/// "exceeded" in the reason. Only the choice of the next key rests on it (each key is tried at
/// most once and none is disabled or held), so a reason shaped by what the client sent (a model
/// name echoed back) costs at most one attempt per key.
pub(super) fn quota_close(frame: Option<&CloseFrame>) -> bool {
    let Some(f) = frame else {
        return false;
    };
    let code = u16::from(f.code);
    let reason = f.reason.as_str().to_ascii_lowercase();
    matches!(code, 1008 | 1011 | 1013)
        && ["resource_exhausted", "quota", "exceeded", "too many"]
            .iter()
            .any(|w| reason.contains(w))
}

/// The keys to try, best first: the key a resumption handle is bound to alone, else every
/// usable key by free session slots in its project (most first; ties take turns). A project
/// Google refused for quota is held: left out for [`super::slots::REFUSED_HOLD`] or until one of
/// its sessions on this replica ends, as a 429 holds a project for REST calls.
pub(super) async fn order(
    state: &AppState,
    sessions: &super::LiveSessions,
    handle: Option<&str>,
) -> Vec<(usize, u64)> {
    let pool = &state.pool;
    let limit_of = |i: usize| limits::live_sessions(pool.limits_config(), &pool.keys[i].project);
    if let Some(handle) = handle {
        let bound = crate::pool::affinity::pin(state.store.as_ref(), &handle_resource(handle))
            .await
            .and_then(|pin| pool.by_kid(&pin.kid).map(|(i, _)| i));
        if let Some(i) = bound {
            return vec![(i, limit_of(i))];
        }
    }
    let kids: Vec<Arc<str>> = pool.keys.iter().map(|k| k.kid.clone()).collect();
    let states = state
        .store
        .key_states(&kids)
        .await
        .unwrap_or_else(|_| vec![KeyState::Active; kids.len()]);
    let mut projects: Vec<Arc<str>> = Vec::new();
    for k in &pool.keys {
        if !projects.contains(&k.project) {
            projects.push(k.project.clone());
        }
    }
    let counts = state
        .store
        .live_counts(&projects)
        .await
        .unwrap_or_else(|_| vec![0; projects.len()]);
    let n = pool.keys.len().max(1);
    let turn = (pool.next_turn() % n as u64) as usize;
    let mut usable: Vec<(usize, u64, u64)> = (0..pool.keys.len())
        .map(|j| (j + turn) % n)
        .filter(|&i| {
            // Live through a Vertex entry is not served (yet): AI Studio keys only.
            pool.keys[i].vertex.is_none()
                && matches!(states.get(i), Some(KeyState::Active) | None)
                && !pool.health.recently_dead(&pool.keys[i].kid)
                && !sessions.is_refused(&pool.keys[i].project)
        })
        .map(|i| {
            let p = projects
                .iter()
                .position(|p| *p == pool.keys[i].project)
                .unwrap_or(0);
            let limit = limit_of(i);
            let free = limit.saturating_sub(counts.get(p).copied().unwrap_or(0));
            (i, limit, free)
        })
        .collect();
    // Stable: equal headroom keeps the rotated order.
    usable.sort_by_key(|u| std::cmp::Reverse(u.2));
    usable.into_iter().map(|(i, l, _)| (i, l)).collect()
}

/// What is escaped in a query value: all but letters, digits and `-._~/` (a token's name is
/// `auth_tokens/...`).
const QUERY_VALUE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'/');

/// An ephemeral token's session: the token (Google's credential for it, sent as
/// `?access_token=`) and the pool position of the key that created it.
pub(super) struct TokenSession {
    pub token: String,
    pub key: usize,
}

/// Choose a key (a token's own key for a token's session), take its slot, open Google's socket
/// and send `first` (the setup); the next key while Google refuses for quota or a key cannot
/// connect.
pub(super) async fn connect(
    state: &Arc<AppState>,
    sessions: &Arc<super::LiveSessions>,
    path: &str,
    setup: &Setup,
    token: Option<&TokenSession>,
    first: Message,
) -> Result<Connected, Refusal> {
    let mut url = upstream::url(&state.config.upstream, path);
    if let Some(t) = token {
        let encoded = percent_encoding::utf8_percent_encode(&t.token, QUERY_VALUE);
        url = format!("{url}?access_token={encoded}");
    }
    let cfg = &state.config.live;
    let lease_ms = cfg.lease.as_millis() as u64;
    let session = format!("{:016x}", fastrand::u64(..));
    let candidates = match token {
        // Held after Google's refusal: not asked again until the hold is over (each attempt
        // may spend one of the token's uses).
        Some(t) if sessions.is_refused(&state.pool.keys[t.key].project) => Vec::new(),
        Some(t) => {
            let project = &state.pool.keys[t.key].project;
            vec![(
                t.key,
                limits::live_sessions(state.pool.limits_config(), project),
            )]
        }
        None => order(state, sessions, setup.handle.as_deref()).await,
    };
    let mut full: Vec<Arc<str>> = Vec::new();
    let mut last_error: Option<String> = None;
    for (i, limit) in candidates.iter().copied() {
        let key = &state.pool.keys[i];
        if full.contains(&key.project) {
            continue;
        }
        let Some(slot) = Slot::take(
            &state.store,
            sessions,
            &key.project,
            &session,
            limit,
            lease_ms,
        )
        .await
        else {
            full.push(key.project.clone());
            continue;
        };
        let timeout = state.config.upstream.connect_timeout + cfg.setup_timeout;
        // A token's session presents the token alone: it is Google's credential for it.
        let api_key = token.is_none().then_some(&key.headers.goog);
        let mut ws = match upstream::open(&state.config.upstream, &url, api_key, timeout).await {
            Ok(ws) => ws,
            Err(e) => {
                let text = match e {
                    OpenError::Status(429) => {
                        full.push(key.project.clone());
                        "HTTP 429".to_string()
                    }
                    OpenError::Status(s) => format!("HTTP {s}"),
                    OpenError::Failed(t) => t,
                };
                tracing::warn!(key = %key.masked, error = %text, "live: upstream socket did not open: trying the next key");
                last_error = Some(text);
                continue;
            }
        };
        if ws.send(first.clone()).await.is_err() {
            last_error = Some("the upstream closed before the setup was sent".into());
            continue;
        }
        match first_answer(&mut ws, cfg.setup_timeout).await {
            Answer::Message(m) => {
                return Ok(Connected {
                    upstream: ws,
                    key: i,
                    slot,
                    first: m,
                });
            }
            Answer::Closed(frame) if quota_close(frame.as_ref()) => {
                tracing::warn!(key = %key.masked, project = %key.project, "live: Google refused the setup for quota: trying the next key");
                // The slot first: freeing a slot lifts a project's hold.
                drop(slot);
                sessions.refused(&key.project);
                full.push(key.project.clone());
            }
            Answer::Closed(frame) => {
                // Refused for what the setup says (a model, a field): every key would be.
                let (code, reason) = frame.map_or((CloseCode::Error, String::new()), |f| {
                    (f.code, f.reason.as_str().to_string())
                });
                return Err(Refusal {
                    code,
                    reason,
                    outcome: "upstream_refused",
                });
            }
            Answer::Failed(t) => {
                tracing::warn!(key = %key.masked, error = %t, "live: no answer to the setup: trying the next key");
                last_error = Some(t);
            }
        }
    }
    // Projects left out after Google's refusal are full too, as far as waiting goes.
    let held = state
        .pool
        .keys
        .iter()
        .any(|k| sessions.is_refused(&k.project));
    if (!full.is_empty() || held) && last_error.is_none() {
        let limit = candidates
            .first()
            .map(|c| c.1)
            .or_else(|| {
                let k = state.pool.keys.first()?;
                Some(limits::live_sessions(
                    state.pool.limits_config(),
                    &k.project,
                ))
            })
            .unwrap_or(0);
        return Err(Refusal {
            code: CloseCode::Again,
            reason: format!(
                "Every project holds its limit of live sessions (limits.live_sessions, {limit}); try again later"
            ),
            outcome: super::wait::FULL,
        });
    }
    Err(Refusal {
        code: CloseCode::Again,
        reason: match last_error {
            Some(e) => format!("The Gemini API did not take the session: {e}"),
            None => "No usable key in the pool for a live session".into(),
        },
        outcome: "upstream_error",
    })
}

enum Answer {
    Message(Message),
    Closed(Option<CloseFrame>),
    Failed(String),
}

/// Google's first answer to the setup (pings skipped).
async fn first_answer(ws: &mut UpstreamSocket, within: std::time::Duration) -> Answer {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => return Answer::Failed("no answer to the setup in time".into()),
            Ok(None) => return Answer::Closed(None),
            Ok(Some(Err(e))) => return Answer::Failed(e.to_string()),
            Ok(Some(Ok(Message::Close(f)))) => return Answer::Closed(f),
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)))) => continue,
            Ok(Some(Ok(m))) => return Answer::Message(m),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(code: u16, reason: &str) -> CloseFrame {
        CloseFrame {
            code: CloseCode::from(code),
            reason: reason.to_string().into(),
        }
    }

    #[test]
    fn only_a_quota_reason_on_an_error_close_moves_to_the_next_key() {
        assert!(quota_close(Some(&frame(
            1011,
            "RESOURCE_EXHAUSTED: too many sessions"
        ))));
        assert!(quota_close(Some(&frame(
            1008,
            "You exceeded your current quota"
        ))));
        assert!(!quota_close(Some(&frame(1008, "models/nope is not found"))));
        assert!(!quota_close(Some(&frame(1000, "quota"))));
        assert!(!quota_close(None));
    }

    #[test]
    fn a_handle_is_stored_as_a_digest() {
        let r = handle_resource("secret-handle");
        assert!(r.starts_with("live-handle/"));
        assert!(!r.contains("secret"));
    }
}
