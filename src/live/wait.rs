//! Waiting for a session slot: a setup that finds every project holding its limit of Live
//! sessions (`limits.live_sessions`, or Google's refusal) waits up to `queue.max_wait_secs`
//! (shortened by the upgrade's `x-gemini-max-wait`, as REST calls are), trying again when a
//! slot on this replica is freed and every [`POLL`] (slots freed on other replicas, leases run
//! out, refusal holds lifted); then a close 1013 naming the limit.

use std::time::Duration;

use futures_util::StreamExt;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use super::ClientSocket;
use super::setup::{self, Connected, Refusal, Setup, TokenSession};
use crate::state::AppState;

/// How often a waiting setup tries again without being woken.
const POLL: Duration = Duration::from_millis(500);

/// The refusal outcome of "every project is full", the one worth waiting out.
pub(super) const FULL: &str = "refused_full";

/// How long a setup may wait for a slot: `queue.max_wait_secs`, shortened (never lengthened)
/// by the upgrade's `x-gemini-max-wait`. `Err`: the header's value is not a number of seconds.
pub(super) fn allowance(state: &AppState, headers: &http::HeaderMap) -> Result<Duration, String> {
    crate::upstream::request::allowance(state.config.queue.max_wait, None, headers)
}

/// [`setup::connect`], again and again while every project is full, for up to `allowance`.
/// The client must wait for `setupComplete`: anything but a ping from it meanwhile ends the
/// wait (its close or loss: the session is simply over).
#[allow(clippy::too_many_arguments)]
pub(super) async fn connect(
    state: &std::sync::Arc<AppState>,
    sessions: &std::sync::Arc<super::LiveSessions>,
    path: &str,
    setup: &Setup,
    token: Option<&TokenSession>,
    first: Message,
    client: &mut ClientSocket,
    allowance: Duration,
) -> Result<Connected, Refusal> {
    let started = Instant::now();
    let deadline = started + allowance;
    let mut waited = false;
    loop {
        // Made ready before the attempt, so a slot freed during it wakes the wait below.
        let freed = sessions.freed();
        tokio::pin!(freed);
        freed.as_mut().enable();
        let refusal = match setup::connect(state, sessions, path, setup, token, first.clone()).await
        {
            Err(r) if r.outcome == FULL && Instant::now() < deadline => r,
            Err(mut r) if r.outcome == FULL && waited => {
                r.reason = format!(
                    "{} (waited {:.1} s)",
                    r.reason,
                    started.elapsed().as_secs_f64()
                );
                return Err(r);
            }
            other => return other,
        };
        if !waited {
            waited = true;
            tracing::debug!(reason = %refusal.reason, "live: every project is full: the setup waits");
        }
        let until = (Instant::now() + POLL).min(deadline);
        tokio::select! {
            () = &mut freed => {}
            () = tokio::time::sleep_until(until) => {}
            m = client.next() => match m {
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => {
                    return Err(Refusal {
                        code: CloseCode::Away,
                        reason: "client went away".into(),
                        outcome: "client_gone",
                    });
                }
                Some(Ok(_)) => {
                    return Err(Refusal {
                        code: CloseCode::Policy,
                        reason: "A message before setupComplete: wait for it (the session waits for a free slot)".into(),
                        outcome: "setup_invalid",
                    });
                }
            },
        }
    }
}
