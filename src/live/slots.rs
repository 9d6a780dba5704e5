//! This replica's Live sessions: how many are open (against `live.max_sessions`), which quota
//! slots they hold in the store (project, session id, and their clients' slots; the gateway
//! renews their leases while the replica lives), and freeing a slot when its session ends.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::quota::QuotaStore;

/// This replica's open sessions and the slots they hold. One per proxy, shared by every
/// configuration generation (sessions outlive a reload).
#[derive(Debug)]
pub struct LiveSessions {
    open: AtomicUsize,
    /// Session id -> its project, for every slot held in the store.
    held: Mutex<HashMap<String, Arc<str>>>,
    /// Session id -> its client, for every client slot held in the store (`super::client`).
    clients: Mutex<HashMap<String, Arc<str>>>,
    /// Projects Google refused a setup for quota, until when: left out until then, or until
    /// one of their sessions here ends (room may be free again). Bounded by the projects.
    refused: Mutex<HashMap<Arc<str>, std::time::Instant>>,
    /// True once the proxy shuts down: every session closes with 1001.
    stopping: tokio::sync::watch::Sender<bool>,
    /// Woken when a slot held here is freed: setups waiting for room try again at once.
    freed: tokio::sync::Notify,
}

impl Default for LiveSessions {
    fn default() -> Self {
        LiveSessions {
            open: AtomicUsize::new(0),
            held: Mutex::default(),
            clients: Mutex::default(),
            refused: Mutex::default(),
            stopping: tokio::sync::watch::channel(false).0,
            freed: tokio::sync::Notify::new(),
        }
    }
}

/// How long a project Google refused a session for quota is left out.
pub const REFUSED_HOLD: std::time::Duration = std::time::Duration::from_secs(10);

/// An open session on this replica (dropped: one fewer).
pub struct Open(Arc<LiveSessions>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl LiveSessions {
    /// Count a new session, unless `max` are open already.
    pub fn enter(self: &Arc<Self>, max: usize) -> Option<Open> {
        self.open
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Open(self.clone()))
    }

    /// The proxy shuts down: every session is closed (1001) and no new one starts.
    pub fn shut_down(&self) {
        self.stopping.send_replace(true);
    }

    /// Resolves once [`LiveSessions::shut_down`] was called.
    pub async fn stopping(&self) {
        let mut rx = self.stopping.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }

    /// Whether the proxy is shutting down.
    pub fn stopping_now(&self) -> tokio::sync::watch::Ref<'_, bool> {
        self.stopping.borrow()
    }

    /// Sessions open on this replica now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// The slots this replica holds, for renewal.
    pub fn held(&self) -> Vec<(Arc<str>, String)> {
        self.held
            .lock()
            .iter()
            .map(|(s, p)| (p.clone(), s.clone()))
            .collect()
    }

    /// The clients' slots this replica holds, (client, session), for renewal.
    pub fn held_clients(&self) -> Vec<(Arc<str>, String)> {
        self.clients
            .lock()
            .iter()
            .map(|(s, c)| (c.clone(), s.clone()))
            .collect()
    }

    pub(super) fn hold_client(&self, client: &Arc<str>, session: &str) {
        self.clients
            .lock()
            .insert(session.to_string(), client.clone());
    }

    pub(super) fn release_client(&self, session: &str) {
        self.clients.lock().remove(session);
    }

    /// Google refused a setup on `project` for quota: leave it out for [`REFUSED_HOLD`].
    pub fn refused(&self, project: &Arc<str>) {
        self.refused
            .lock()
            .insert(project.clone(), std::time::Instant::now() + REFUSED_HOLD);
    }

    /// Whether `project` is held after a refusal.
    pub fn is_refused(&self, project: &str) -> bool {
        let mut r = self.refused.lock();
        match r.get(project) {
            Some(until) if *until > std::time::Instant::now() => true,
            Some(_) => {
                r.remove(project);
                false
            }
            None => false,
        }
    }

    /// Resolves when a slot held on this replica is freed (create it before trying for a
    /// slot, so a slot freed meanwhile is not missed).
    pub fn freed(&self) -> tokio::sync::futures::Notified<'_> {
        self.freed.notified()
    }

    fn hold(&self, project: &Arc<str>, session: &str) {
        self.held
            .lock()
            .insert(session.to_string(), project.clone());
        metrics::gauge!("gqp_live_sessions", "project" => project.to_string()).increment(1.0);
    }

    fn release(&self, project: &Arc<str>, session: &str) {
        let was = self.held.lock().remove(session);
        self.refused.lock().remove(project);
        if was.is_some() {
            metrics::gauge!("gqp_live_sessions", "project" => project.to_string()).decrement(1.0);
        }
    }
}

/// A quota slot taken in the store: freed there when dropped (in a task: drop cannot wait).
pub struct Slot {
    store: Arc<dyn QuotaStore>,
    sessions: Arc<LiveSessions>,
    pub project: Arc<str>,
    session: String,
}

impl Slot {
    /// Take a slot of `project` (whose limit is `limit`) for `session`. `None`: full.
    pub async fn take(
        store: &Arc<dyn QuotaStore>,
        sessions: &Arc<LiveSessions>,
        project: &Arc<str>,
        session: &str,
        limit: u64,
        lease_ms: u64,
    ) -> Option<Slot> {
        match store.live_open(project, session, limit, lease_ms).await {
            Ok(true) => {}
            Ok(false) => return None,
            Err(e) => {
                tracing::warn!(error = %e, project = %project, "live: the store could not take a session slot");
                return None;
            }
        }
        sessions.hold(project, session);
        Some(Slot {
            store: store.clone(),
            sessions: sessions.clone(),
            project: project.clone(),
            session: session.to_string(),
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.sessions.release(&self.project, &self.session);
        let (store, sessions, project, session) = (
            self.store.clone(),
            self.sessions.clone(),
            self.project.clone(),
            std::mem::take(&mut self.session),
        );
        // Without a runtime (a test's end) the lease frees the slot.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if let Err(e) = store.live_close(&project, &session).await {
                    tracing::warn!(error = %e, "live: a session slot was not freed: its lease will free it");
                }
                // Once the store has it free: a setup woken earlier would find it taken.
                sessions.freed.notify_waiters();
            });
        }
    }
}

/// `gqp_live_sessions_total{outcome}`: how sessions ended (or were refused).
pub fn outcome(outcome: &'static str) {
    metrics::counter!("gqp_live_sessions_total", "outcome" => outcome).increment(1);
}

/// Set `gqp_live_sessions` of every configured project from the slots held (the exporter
/// drops a gauge left unchanged for a while; a session lasts minutes).
pub(crate) fn refresh_gauges(state: &crate::state::AppState, held: &[(Arc<str>, String)]) {
    let mut seen: Vec<&Arc<str>> = Vec::new();
    for k in &state.pool.keys {
        if seen.contains(&&k.project) {
            continue;
        }
        seen.push(&k.project);
        let n = held.iter().filter(|(p, _)| *p == k.project).count();
        metrics::gauge!("gqp_live_sessions", "project" => k.project.to_string()).set(n as f64);
    }
}
