//! The Live API WebSocket (`/ws/google.ai.generativelanguage.{v1beta|v1alpha}.GenerativeService
//! .BidiGenerateContent`): the client's upgrade, authenticated with its proxy key as REST calls
//! are; its `setup` read first; a pooled key chosen by session headroom and the session's slot
//! held in the store ([`slots`]); the upstream socket opened with that key, setup refusals
//! tried on the next key ([`setup`]); then every frame relayed both ways, usage counted and
//! resumption handles bound to their key ([`relay`]). A setup finding every project full waits
//! for a slot ([`wait`]). The session counts in its client's own limits, from a concurrent
//! slot to its budgets, and its usage in the project's TPM window ([`client`]). Ephemeral tokens created through the proxy ([`tokens`]) open
//! `BidiGenerateContentConstrained` sessions on the key that created them.

mod client;
mod relay;
mod setup;
pub mod slots;
pub mod tokens;
mod upstream;
mod wait;

use std::sync::Arc;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};

use crate::error::ApiError;
use crate::state::AppState;
use crate::telemetry::span::{self, Attr, RequestTrace, Value, attr};

pub use slots::LiveSessions;

/// The Live API's socket paths (`...Constrained`: for ephemeral tokens, v1alpha at Google).
/// google-genai asks for `v1` when given a base URL of its own: passed on as asked, Google's
/// answer decides.
const PATHS: [&str; 5] = [
    "/ws/google.ai.generativelanguage.v1.GenerativeService.BidiGenerateContent",
    "/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent",
    "/ws/google.ai.generativelanguage.v1alpha.GenerativeService.BidiGenerateContent",
    "/ws/google.ai.generativelanguage.v1alpha.GenerativeService.BidiGenerateContentConstrained",
    "/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContentConstrained",
];

/// Who a session is for: the client counted in the ledger, and for a token's session the
/// token and its key.
struct Who {
    client_id: u32,
    /// The client whose own limits the session counts in (`None`: anonymous or admin).
    client: Option<Arc<crate::clients::Client>>,
    token: Option<setup::TokenSession>,
}

/// The caller of an upgrade: a client key on `BidiGenerateContent`; on
/// `...Constrained`, an ephemeral token this proxy created (no client key: the session counts
/// for the client that created the token).
async fn who(
    state: &AppState,
    headers: &http::HeaderMap,
    query: Option<&str>,
    path: &str,
) -> Result<Who, ApiError> {
    if !path.ends_with("Constrained") {
        let caller = crate::auth::authenticate(&state.config.auth, &state.clients, headers, query)?;
        return Ok(Who {
            client_id: state.ledger_client(Some(&caller)),
            client: caller.client().cloned(),
            token: None,
        });
    }
    let Some(token) = tokens::presented(headers, query) else {
        return Err(ApiError::Unauthenticated(
            "BidiGenerateContentConstrained takes an ephemeral token (access_token=, or \
             Authorization: Token) created through this proxy with POST /v1alpha/auth_tokens"
                .into(),
        ));
    };
    let Some(bound) = tokens::lookup(state, &token).await else {
        return Err(ApiError::PermissionDenied(
            "The ephemeral token was not created through this proxy (or has expired): create \
             it with POST /v1alpha/auth_tokens here"
                .into(),
        ));
    };
    let client_id = if bound.client == "anonymous" {
        state.ledger.anonymous_id()
    } else {
        state.ledger.client_id_named(&bound.client)
    };
    let client = state.clients.load().by_name(&bound.client).cloned();
    Ok(Who {
        client_id,
        client,
        token: Some(setup::TokenSession {
            token,
            key: bound.key,
        }),
    })
}

/// The socket path `path` names, if it is one of the Live API's (after `prefix`, if given).
/// Doubled slashes before `ws` are taken as one: google-genai joins its base URL (kept with a
/// trailing `/`) and `/ws/...` into `//ws/...`.
pub fn live_path<'a>(path: &'a str, prefix: Option<&str>) -> Option<&'a str> {
    let one_slash = |p: &'a str| {
        let rest = p.trim_start_matches('/');
        (rest.len() < p.len()).then(|| &p[p.len() - rest.len() - 1..])
    };
    let known = |p: &'a str| one_slash(p).filter(|p| PATHS.contains(p));
    prefix
        .and_then(|pre| path.strip_prefix(pre))
        .and_then(known)
        .or_else(|| known(path))
}

/// The client side of a session, after the upgrade.
pub(crate) type ClientSocket = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// Close `ws` with `code` and `reason` (cut to the 123 bytes a close frame holds).
pub(crate) async fn close<S>(ws: &mut WebSocketStream<S>, code: CloseCode, reason: &str)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use futures_util::SinkExt;
    let mut cut = reason.len().min(123);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    let frame = CloseFrame {
        code,
        reason: reason[..cut].to_string().into(),
    };
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        ws.send(Message::Close(Some(frame))),
    )
    .await;
}

/// The settings of the client's side of a session: its messages and frames are held whole up
/// to `live.max_message_bytes`; small read and write buffers, as a session mostly waits.
fn client_ws_config(state: &AppState) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(8 * 1024)
        .write_buffer_size(0)
        .max_message_size(Some(state.config.live.max_message_bytes))
        .max_frame_size(Some(state.config.live.max_message_bytes))
}

/// Whether the request asks for a WebSocket (RFC 6455 section 4.2.1), and its key.
fn websocket_key(req: &http::Request<Body>) -> Option<&http::HeaderValue> {
    let h = req.headers();
    let has = |name: http::header::HeaderName, token: &str| {
        h.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    let ok = req.method() == http::Method::GET
        && has(http::header::UPGRADE, "websocket")
        && has(http::header::CONNECTION, "upgrade")
        && h.get(http::header::SEC_WEBSOCKET_VERSION)
            .is_some_and(|v| v.as_bytes() == b"13");
    ok.then(|| h.get(http::header::SEC_WEBSOCKET_KEY)).flatten()
}

/// Answer a request for the Live API socket at `path` (the path prefix taken off): refuse it as Google's envelope (not a WebSocket
/// upgrade, no or a wrong credential), or switch protocols and run the session in a task of
/// its own.
pub async fn handle(
    state: Arc<AppState>,
    sessions: Arc<LiveSessions>,
    mut req: http::Request<Body>,
    path: &str,
) -> Response {
    let Some(key) = websocket_key(&req).cloned() else {
        return ApiError::InvalidArgument(
            "The Live API is a WebSocket: send a GET with Upgrade: websocket and \
             Sec-WebSocket-Version: 13"
                .into(),
        )
        .into_response();
    };
    let who = match who(&state, req.headers(), req.uri().query(), path).await {
        Ok(w) => w,
        Err(e) => return e.into_response(),
    };
    if !state.pool.has_ai_studio {
        let why = crate::upstream::vertex::only::live_refusal();
        return ApiError::FailedPrecondition(why).into_response();
    }
    let allowance = match wait::allowance(&state, req.headers()) {
        Ok(a) => a,
        Err(message) => return ApiError::InvalidArgument(message).into_response(),
    };
    // The session's span (trace export on), a child of the upgrade's `traceparent`.
    let trace = SessionSpan(RequestTrace::start(req.headers(), "GET", path));
    let upgrade = hyper::upgrade::on(&mut req);
    let path = path.to_string();
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    tokio::spawn(async move {
        let io = match upgrade.await {
            Ok(io) => io,
            Err(e) => {
                tracing::debug!(error = %e, "live: the upgrade did not complete");
                return;
            }
        };
        let config = client_ws_config(&state);
        let ws =
            WebSocketStream::from_raw_socket(TokioIo::new(io), Role::Server, Some(config)).await;
        session(state, sessions, who, &path, allowance, ws, trace).await;
    });
    http::Response::builder()
        .status(http::StatusCode::SWITCHING_PROTOCOLS)
        .header(http::header::CONNECTION, "upgrade")
        .header(http::header::UPGRADE, "websocket")
        .header(http::header::SEC_WEBSOCKET_ACCEPT, accept)
        .body(Body::empty())
        .unwrap_or_else(|_| ApiError::Internal("upgrade".into()).into_response())
}

/// A Live session's span: events for its setup, Google's `goAway` ([`relay`]) and its close,
/// ended with the session.
struct SessionSpan(Option<RequestTrace>);

impl SessionSpan {
    fn refused(&self, outcome: &'static str) {
        if let Some(t) = &self.0 {
            t.set([Attr::new(attr::LIVE_OUTCOME, outcome)]);
            t.fail(outcome);
        }
    }
}

impl Drop for SessionSpan {
    fn drop(&mut self) {
        if let Some(t) = &self.0 {
            t.event("close", Vec::new());
            t.end();
        }
    }
}

/// One session, from the upgrade to the last frame.
async fn session(
    state: Arc<AppState>,
    sessions: Arc<LiveSessions>,
    who: Who,
    path: &str,
    allowance: std::time::Duration,
    mut client: ClientSocket,
    trace: SessionSpan,
) {
    if *sessions.stopping_now() {
        trace.refused("shutdown");
        slots::outcome("shutdown");
        close(&mut client, CloseCode::Away, "The proxy is shutting down").await;
        return;
    }
    let Some(_open) = sessions.enter(state.config.live.max_sessions) else {
        trace.refused("replica_full");
        slots::outcome("replica_full");
        let reason = format!(
            "This proxy replica holds its limit of {} Live sessions (live.max_sessions); try again later",
            state.config.live.max_sessions
        );
        close(&mut client, CloseCode::Again, &reason).await;
        return;
    };
    let Some((setup, first)) = setup::read_setup(&state, &mut client).await else {
        trace.refused("no_setup");
        return;
    };
    // The client's own limits first: a client at one never takes a project's slot.
    let opened = match client::check_priced(&state, &setup.model) {
        Ok(()) => client::open(&state, &sessions, who.client.as_ref(), &setup.model).await,
        Err(r) => Err(r),
    };
    let client_slot = match opened {
        Ok(s) => s,
        Err(refusal) => {
            trace.refused(refusal.outcome);
            slots::outcome(refusal.outcome);
            close(&mut client, refusal.code, &refusal.reason).await;
            return;
        }
    };
    if let Some(t) = &trace.0 {
        let model = setup.model.strip_prefix("models/").unwrap_or(&setup.model);
        let model = Value::text(model);
        t.record(|s| {
            s.name = span::Name::Pair("live", model.clone());
            s.set_preset(&span::GEMINI);
            s.set(Attr::new(attr::REQUEST_MODEL, model));
        });
    }
    let token = who.token.as_ref();
    let connecting = wait::connect(
        &state,
        &sessions,
        path,
        &setup,
        token,
        first,
        &mut client,
        allowance,
    );
    let connected = match connecting.await {
        Ok(c) => c,
        Err(refusal) => {
            trace.refused(refusal.outcome);
            slots::outcome(refusal.outcome);
            close(&mut client, refusal.code, &refusal.reason).await;
            return;
        }
    };
    if let Some(t) = &trace.0 {
        let key = &state.pool.keys[connected.key];
        t.event(
            "setup",
            vec![
                Attr::new(attr::KEY, Value::text(&key.masked)),
                Attr::new(attr::PROJECT, key.project.clone()),
            ],
        );
    }
    let model = setup.model.strip_prefix("models/").unwrap_or(&setup.model);
    let project = state.pool.keys[connected.key].project.clone();
    let meter = client::Meter::new(&state, project, Arc::from(model), who.client);
    let session = relay::Session {
        client_id: who.client_id,
        client_slot,
        meter,
    };
    relay::run(
        &state,
        &sessions,
        client,
        connected,
        &setup.model,
        session,
        trace.0.as_ref(),
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::live_path;

    #[test]
    fn live_paths_are_found_with_a_prefix_and_doubled_slashes() {
        let p = "/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent";
        assert_eq!(live_path(p, None), Some(p));
        assert_eq!(live_path(&format!("//{}", &p[1..]), None), Some(p));
        assert_eq!(live_path(&format!("/gemini{p}"), Some("/gemini")), Some(p));
        assert_eq!(live_path(&format!("/gemini/{p}"), Some("/gemini")), Some(p));
        assert_eq!(live_path("/ws/other", None), None);
        assert_eq!(live_path(&format!("/gemini{p}"), None), None);
    }
}
