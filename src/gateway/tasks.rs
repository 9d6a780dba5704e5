//! The gateway's background tasks, each running while the gateway's state lives: the metrics
//! exporter's upkeep, the status outlook's refresh, the alert evaluator, the runtime clients'
//! sync, the Batch API poll and the Live API slots' lease renewal.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::reload::WeakLive;

/// The exporter keeps histogram samples raw until upkeep folds them in: without it memory grows
/// with every request between scrapes (or for ever, where nobody scrapes). Runs while the
/// gateway's state lives.
pub(super) fn spawn_upkeep(live: WeakLive) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
        loop {
            tick.tick().await;
            let Some(live) = live.upgrade() else {
                return;
            };
            live.current().metrics.upkeep();
        }
    });
}

/// While the status page is watched (a dashboard open), its cost and forecast are computed
/// here every [`crate::state::OUTLOOK_REFRESH`], so the page itself answers from what is ready.
/// Runs while the gateway's state lives.
pub(super) fn spawn_outlook_refresh(live: WeakLive) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(crate::state::OUTLOOK_REFRESH);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(state) = live.upgrade().map(|l| l.current()) else {
                return;
            };
            if state.status_watched() {
                crate::status::snapshot(&state, crate::status::Extras::Fresh).await;
            }
        }
    });
}

/// Every [`crate::client_store::POLL_EVERY`]: the runtime clients brought up to date (another
/// replica's change read from Redis; a rotation's ended grace dropped). Runs while the gateway
/// lives.
pub(super) fn spawn_client_sync(live: WeakLive) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(crate::client_store::POLL_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(store) = live.upgrade().map(|l| l.current().client_store.clone()) else {
                return;
            };
            store.refresh().await;
        }
    });
}

/// Every serving `batch.poll_secs` (when not 0), from one period after start (the store is
/// first asked by the start-up check): Google asked about the open batch jobs the store holds
/// ([`crate::layers::quota::batch::poll_once`]). Runs while the gateway lives.
pub(super) fn spawn_batch_poll(live: WeakLive) {
    tokio::spawn(async move {
        let mut polls = false;
        loop {
            let Some(state) = live.upgrade().map(|l| l.current()) else {
                return;
            };
            let every = state.config.batch.poll;
            if polls && !every.is_zero() {
                crate::layers::quota::batch::poll_once(&state).await;
            }
            polls = true;
            drop(state);
            // A poll of 0 looks again later, in case a reload turns it on.
            let pause = if every.is_zero() {
                Duration::from_secs(5)
            } else {
                every
            };
            tokio::time::sleep(pause).await;
        }
    });
}

/// Renew every Live API slot this replica holds, every third of the serving `live.lease_secs`,
/// while the gateway lives: a replica that stops renewing (it died) frees its slots within a
/// lease. Also sets the open-session gauges.
pub(super) fn spawn_live_renewal(live: WeakLive, sessions: Arc<crate::live::LiveSessions>) {
    tokio::spawn(async move {
        loop {
            let Some(state) = live.upgrade().map(|l| l.current()) else {
                return;
            };
            let lease = state.config.live.lease;
            let held = sessions.held();
            crate::live::slots::refresh_gauges(&state, &held);
            if !held.is_empty()
                && let Err(e) = state
                    .store
                    .live_renew(&held, lease.as_millis() as u64)
                    .await
            {
                tracing::warn!(error = %e, sessions = held.len(), "live: session leases not renewed");
            }
            let clients = sessions.held_clients();
            if !clients.is_empty()
                && let Err(e) = state
                    .store
                    .live_client_renew(&clients, lease.as_millis() as u64)
                    .await
            {
                tracing::warn!(error = %e, sessions = clients.len(), "live: client slot leases not renewed");
            }
            drop(state);
            tokio::time::sleep(lease / 3).await;
        }
    });
}

/// How often the alert evaluator recomputes the ledger's outlook (cost and forecast) for the
/// `daily_quota_forecast` and `daily_budget` rules: both move slowly, and the outlook reads a
/// day of history, so it is not worth a runtime worker every evaluation when nobody watches.
pub const ALERT_OUTLOOK_EVERY: Duration = Duration::from_secs(60);

/// The alert evaluator looks at the serving `alerts.evaluate_every` at least this often.
const ALERT_PERIOD_CHECK: Duration = Duration::from_secs(1);

/// The alert evaluator: every `alerts.evaluate_every`, the rules over a status snapshot of the
/// counters, with the ledger's outlook (as cached for the status page) refreshed every
/// [`ALERT_OUTLOOK_EVERY`] and the last one carried in between (so the outlook's rules neither
/// resolve nor re-fire between refreshes), and the run of upstream failures, handed to the
/// alert engine, which sends in tasks of its own. Each evaluation on the generation serving
/// then; the period is the serving generation's `alerts.evaluate_every` (checked at least
/// every [`ALERT_PERIOD_CHECK`], so a reload that shortens it takes effect at once). Runs
/// while the gateway lives.
pub(super) fn spawn_alerts(live: WeakLive) {
    tokio::spawn(async move {
        // The first evaluation one period after start: nothing has been used yet, and the
        // store is not asked for a snapshot before anyone else asks.
        let mut outlook_at: Option<Instant> = None;
        let mut outlook = (None, None);
        let mut last = Instant::now();
        loop {
            let Some(every) = live
                .upgrade()
                .map(|l| l.current().config.alerts.evaluate_every)
            else {
                return;
            };
            let due = last + every;
            if Instant::now() < due {
                tokio::time::sleep_until(due.min(Instant::now() + ALERT_PERIOD_CHECK)).await;
                continue;
            }
            last = Instant::now();
            let Some(state) = live.upgrade().map(|l| l.current()) else {
                return;
            };
            let refresh = outlook_at.is_none_or(|at| at.elapsed() >= ALERT_OUTLOOK_EVERY);
            let extras = if refresh {
                crate::status::Extras::Cached
            } else {
                crate::status::Extras::None
            };
            let mut snap = crate::status::snapshot(&state, extras).await;
            if refresh {
                outlook_at = Some(Instant::now());
                outlook = (
                    snap.quota_status.cost.clone(),
                    snap.quota_status.forecast.clone(),
                );
            } else {
                snap.quota_status.cost = outlook.0.clone();
                snap.quota_status.forecast = outlook.1.clone();
                // The clients' budgets move with every answer: read at every evaluation.
                crate::status::client_rows::add_usage(&state, &mut snap.quota_status.clients).await;
            }
            let cfg = &state.config.alerts;
            let active = crate::status::alert_rules::evaluate(
                cfg,
                &snap.quota_status,
                state.pool.health.failures(),
            );
            state.alerts.observe(cfg, active, &state.metrics).await;
        }
    });
}
