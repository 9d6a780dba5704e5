//! A Live session's part in its client's own limits (`[[auth.clients]]`): the models it may
//! call; one of its `max_concurrent` slots, held from setup to close (a lease in the store,
//! renewed with the project slots, so a replica that dies frees it within `live.lease_secs`);
//! its RPM, RPD and budgets checked before the session opens (it counts as one request); and
//! the usage Google reports charged as it arrives ([`Meter`]): input tokens into the project's
//! and the client's minute windows (TPM), the cost priced with the model's Live and audio
//! rates into the client's budgets. A session whose client reaches a budget is closed.

use std::sync::Arc;

use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use super::setup::Refusal;
use super::slots::LiveSessions;
use crate::clients::Client;
use crate::ledger::TokenUsage;
use crate::quota::client::{ClientAdmit, ClientLimit, ClientPeriod};
use crate::quota::{LiveUsage, QuotaStore};
use crate::state::AppState;

/// What a client must have left in a budget to open a session: a micro-dollar (the session's
/// cost is not known in advance; it is charged as it arrives).
const MIN_LEFT_MICROS: u64 = 1;

/// The client's part as the store counts it now, with `cost_micros`; `None`: it has no limit
/// the store counts.
fn admit_of(state: &AppState, client: &Client, cost_micros: u64) -> Option<ClientAdmit> {
    let l = &client.limits;
    if !l.counted() {
        return None;
    }
    let now = chrono::Utc::now().timestamp_millis();
    Some(ClientAdmit {
        name: client.name.clone(),
        caps: l.caps(),
        period: ClientPeriod::at(l.tz(state.config.limits.timezone), now),
        cost_micros,
        lease_ms: state.config.live.lease.as_millis() as u64,
    })
}

/// The close reason for a client at its own `limit`.
fn limited(name: &str, limit: ClientLimit, value: u64, retry_ms: u64) -> String {
    let what = match limit {
        ClientLimit::Concurrent => format!("{value} at once"),
        ClientLimit::DailyBudget | ClientLimit::MonthlyBudget => {
            format!(
                "{} USD",
                value as f64 / crate::quota::client::MICROS_PER_USD
            )
        }
        _ => value.to_string(),
    };
    // The limit first: a long client name is what the cut to 123 bytes takes off.
    format!(
        "Own limit {} ({what}) reached by client {name:?}; retry in {}",
        limit.as_str(),
        crate::error::format_retry_delay(retry_ms)
    )
}

/// A session on a model without a price goes to Google only where the configuration says so
/// (`limits.unpriced`), as a REST call: under `refuse` it is closed (1008) before any slot is
/// taken, so nothing Google bills passes unpriced (nor free against a budget).
pub(super) fn check_priced(state: &AppState, model: &str) -> Result<(), Refusal> {
    let bare = model.strip_prefix("models/").unwrap_or(model);
    if state.config.limits.unpriced != crate::quota::limits::Unpriced::Refuse
        || state.ledger.is_priced(bare)
    {
        return Ok(());
    }
    state.metrics.refused("unpriced");
    let shown: String = bare.chars().take(40).collect();
    Err(Refusal {
        code: CloseCode::Policy,
        reason: format!("{shown} has no price here and limits.unpriced = \"refuse\""),
        outcome: "unpriced",
    })
}

/// A client's slot for one session: freed in the store when dropped.
pub(super) struct ClientSlot {
    store: Arc<dyn QuotaStore>,
    sessions: Arc<LiveSessions>,
    name: Arc<str>,
    session: String,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        self.sessions.release_client(&self.session);
        let (store, name, session) = (
            self.store.clone(),
            self.name.clone(),
            std::mem::take(&mut self.session),
        );
        // Without a runtime (a test's end) the lease frees the slot.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if let Err(e) = store.live_client_close(&name, &session).await {
                    tracing::warn!(error = %e, "live: a client's session slot was not freed: its lease will free it");
                }
            });
        }
    }
}

/// Check `client`'s limits for a session on `model` and take its slot. `Ok(None)`: nothing to
/// hold (no client, or no limit the store counts). `Err`: the close the client gets.
pub(super) async fn open(
    state: &AppState,
    sessions: &Arc<LiveSessions>,
    client: Option<&Arc<Client>>,
    model: &str,
) -> Result<Option<ClientSlot>, Refusal> {
    let Some(client) = client else {
        return Ok(None);
    };
    let bare = model.strip_prefix("models/").unwrap_or(model);
    if !client.limits.allows_model(bare) {
        state.clients.note_refusal(&client.name, "models");
        state.metrics.client_refused(&client.name, "models");
        let shown: String = bare.chars().take(40).collect();
        return Err(Refusal {
            code: CloseCode::Policy,
            reason: format!("Client {:?} may not call model {shown:?}", &*client.name),
            outcome: "client_limited",
        });
    }
    let Some(admit) = admit_of(state, client, MIN_LEFT_MICROS) else {
        return Ok(None);
    };
    let session = format!("{:016x}", fastrand::u64(..));
    match state.store.live_client_open(&admit, &session).await {
        Ok(None) => {}
        Ok(Some((limit, value, retry_ms))) => {
            state.clients.note_refusal(&client.name, limit.as_str());
            state.metrics.client_refused(&client.name, limit.as_str());
            return Err(Refusal {
                code: CloseCode::Again,
                reason: limited(&client.name, limit, value, retry_ms),
                outcome: "client_limited",
            });
        }
        Err(e) => {
            tracing::warn!(error = %e, "live: the store could not take a client's session slot");
            return Err(Refusal {
                code: CloseCode::Again,
                reason: "The quota store did not answer: try again later".into(),
                outcome: "store_error",
            });
        }
    }
    // No slot to renew or free without a concurrency limit (its request counts stay).
    if client.limits.max_concurrent.is_none() {
        return Ok(None);
    }
    sessions.hold_client(&client.name, &session);
    Ok(Some(ClientSlot {
        store: state.store.clone(),
        sessions: sessions.clone(),
        name: client.name.clone(),
        session,
    }))
}

/// Charges one session's usage: its project's window always, its client's limits when it has
/// any; tells the relay (through [`Meter::over`]) when the client reached a budget.
pub(super) struct Meter {
    state: Arc<AppState>,
    project: Arc<str>,
    /// Without `models/`.
    model: Arc<str>,
    client: Option<Arc<Client>>,
    over: tokio::sync::watch::Sender<Option<String>>,
}

impl Meter {
    pub(super) fn new(
        state: &Arc<AppState>,
        project: Arc<str>,
        model: Arc<str>,
        client: Option<Arc<Client>>,
    ) -> Meter {
        Meter {
            state: state.clone(),
            project,
            model,
            client,
            over: tokio::sync::watch::channel(None).0,
        }
    }

    /// Resolves with the close reason once the client reached one of its budgets.
    pub(super) fn over(&self) -> impl Future<Output = String> + use<> {
        let mut rx = self.over.subscribe();
        async move {
            let reason = rx
                .wait_for(Option::is_some)
                .await
                .ok()
                .and_then(|r| r.clone());
            match reason {
                Some(r) => r,
                // The meter is gone: the session is over anyway.
                None => std::future::pending().await,
            }
        }
    }

    /// Charge one turn's `usage`, off the relay's path.
    pub(super) fn charge(&self, usage: &TokenUsage) {
        let client = self.client.as_ref().and_then(|c| {
            let budgets =
                c.limits.daily_budget_usd.is_some() || c.limits.monthly_budget_usd.is_some();
            let cost = if budgets {
                self.state.ledger.list_cost_micros(&self.model, usage)
            } else {
                0
            };
            admit_of(&self.state, c, cost)
        });
        if usage.input == 0 && client.as_ref().is_none_or(|c| c.cost_micros == 0) {
            return;
        }
        let caps = client.as_ref().map(|c| c.caps);
        let u = LiveUsage {
            project: self.project.clone(),
            model: self.model.clone(),
            tokens: usage.input,
            client,
        };
        let store = self.state.store.clone();
        let over = self.over.clone();
        let name = self.client.as_ref().map(|c| c.name.clone());
        tokio::spawn(async move {
            let (day, month) = match store.live_usage(&u).await {
                Ok(spent) => spent,
                Err(e) => {
                    tracing::warn!(error = %e, "live: a session's usage was not counted in the store");
                    return;
                }
            };
            let (Some(caps), Some(name)) = (caps, name) else {
                return;
            };
            let reached = match (caps.daily_micros, caps.monthly_micros) {
                (Some(b), _) if day >= b => Some((ClientLimit::DailyBudget, b)),
                (_, Some(b)) if month >= b => Some((ClientLimit::MonthlyBudget, b)),
                _ => None,
            };
            if let Some((limit, b)) = reached {
                let usd = b as f64 / crate::quota::client::MICROS_PER_USD;
                over.send_replace(Some(format!(
                    "Own limit {} ({usd} USD) spent by client {name:?}: the session ends",
                    limit.as_str()
                )));
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_limit_close_names_the_limit_and_fits_a_close_frame() {
        let r = limited("team-a", ClientLimit::Concurrent, 1, 1_000);
        assert!(r.starts_with("Own limit max_concurrent (1 at once)"), "{r}");
        assert!(r.contains("\"team-a\"") && r.len() <= 123, "{r}");
        let b = limited("team-a", ClientLimit::DailyBudget, 2_500_000, 3_600_000);
        assert!(b.contains("daily_budget_usd (2.5 USD)"), "{b}");
    }
}
