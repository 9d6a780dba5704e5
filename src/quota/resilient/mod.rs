//! A shared store that never takes the proxy down: every call has a deadline, and while the
//! store is unreachable the configured policy applies (local counting, fail-closed or
//! fail-open) until a background probe sees it back. Admission, holds and pins here; Live
//! sessions, batch jobs and clients' budgets in `sessions`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;

use super::memory::MemoryStore;
use super::{
    AdmitOutcome, AdmitRequest, Cooldown, KeyHealth, KeyState, Pins, QuotaStore, Reservation,
    ResetKind, ResetScope, StoreError, Usage,
};

/// What admission does while the shared store is unreachable (`store.on_error`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreFailurePolicy {
    /// Count in this replica's memory until the store is back.
    Local,
    /// Refuse with 503.
    FailClosed,
    /// Admit without counting.
    FailOpen,
}

impl StoreFailurePolicy {
    /// The name used in `store.on_error`.
    pub fn as_str(self) -> &'static str {
        match self {
            StoreFailurePolicy::Local => "local",
            StoreFailurePolicy::FailClosed => "fail-closed",
            StoreFailurePolicy::FailOpen => "fail-open",
        }
    }
}

/// `primary` (Redis) with a fallback while it is unreachable.
pub struct ResilientStore {
    primary: Arc<dyn QuotaStore>,
    local: MemoryStore,
    policy: StoreFailurePolicy,
    degraded: Arc<AtomicBool>,
}

impl ResilientStore {
    /// Wraps `primary` and starts the probe that brings it back (needs a Tokio runtime).
    pub fn new(
        primary: Arc<dyn QuotaStore>,
        local: MemoryStore,
        policy: StoreFailurePolicy,
    ) -> Self {
        let degraded = Arc::new(AtomicBool::new(false));
        let probe_store = Arc::downgrade(&primary);
        let probe_flag = degraded.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(store) = probe_store.upgrade() else {
                    return;
                };
                if probe_flag.load(Ordering::Relaxed) && store.ping().await.is_ok() {
                    probe_flag.store(false, Ordering::Relaxed);
                    tracing::warn!(
                        backend = store.backend(),
                        "quota store reachable again: shared counting resumed"
                    );
                }
            }
        });
        ResilientStore {
            primary,
            local,
            policy,
            degraded,
        }
    }

    fn mark_down(&self, e: &StoreError) {
        if !self.degraded.swap(true, Ordering::Relaxed) {
            tracing::error!(
                error = %e,
                policy = ?self.policy,
                "quota store failing (unreachable, or answering what a working store would not): serving degraded until it is back"
            );
        }
    }

    fn is_down(&self) -> bool {
        self.degraded.load(Ordering::Relaxed)
    }
}

/// Run `$call` on the primary unless it is known down; on any failure (no answer, or an answer
/// that is not the expected one, such as a Cluster's `MOVED`) mark it down and fall back.
macro_rules! with_fallback {
    ($self:ident, $call:ident ( $($arg:expr),* ), $open:expr) => {{
        if !$self.is_down() {
            match $self.primary.$call($($arg),*).await {
                Ok(v) => return Ok(v),
                Err(e) => $self.mark_down(&e),
            }
        }
        match $self.policy {
            StoreFailurePolicy::Local => $self.local.$call($($arg),*).await,
            StoreFailurePolicy::FailClosed => Err(StoreError::Unreachable("shared quota store is down (fail-closed)".into())),
            StoreFailurePolicy::FailOpen => Ok($open),
        }
    }};
}

// After the macro: the module uses it.
mod sessions;

#[async_trait]
impl QuotaStore for ResilientStore {
    async fn admit(&self, req: &AdmitRequest) -> Result<AdmitOutcome, StoreError> {
        let open = || {
            let n = req.candidates.len().max(1);
            req.candidates
                .get((req.rotation % n as u64) as usize)
                .map_or(
                    AdmitOutcome::Unavailable {
                        retry_after_ms: None,
                    },
                    |c| {
                        AdmitOutcome::Admitted(Reservation {
                            index: c.index,
                            kid: c.kid.clone(),
                            project: c.project.clone(),
                            model: req.model.clone(),
                            id: 0,
                            tokens: req.tokens,
                            remaining_requests: c.limits.minute,
                            remaining_tokens: c.limits.token_minute,
                            uncounted: true,
                            local: false,
                            client: None,
                        })
                    },
                )
        };
        if !self.is_down() {
            match self.primary.admit(req).await {
                Ok(v) => return Ok(v),
                Err(e) => self.mark_down(&e),
            }
        }
        match self.policy {
            StoreFailurePolicy::Local => Ok(match self.local.admit(req).await? {
                AdmitOutcome::Admitted(mut r) => {
                    r.local = true;
                    AdmitOutcome::Admitted(r)
                }
                other => other,
            }),
            StoreFailurePolicy::FailClosed => Err(StoreError::Unreachable(
                "shared quota store is down (fail-closed)".into(),
            )),
            StoreFailurePolicy::FailOpen => Ok(open()),
        }
    }

    /// A reservation settles where it was counted: in local memory, or in the shared store
    /// (if that is down now, its estimate simply stays counted there).
    async fn settle(&self, r: &Reservation, actual_tokens: u64) -> Result<(), StoreError> {
        if r.local {
            return self.local.settle(r, actual_tokens).await;
        }
        if r.uncounted || self.is_down() {
            return Ok(());
        }
        self.primary.settle(r, actual_tokens).await
    }

    fn settle_later(&self, r: &Reservation, actual_tokens: u64) -> bool {
        if r.local {
            return self.local.settle_now(r, actual_tokens);
        }
        if r.uncounted || self.is_down() {
            return true;
        }
        self.primary.settle_later(r, actual_tokens)
    }

    async fn usage(&self) -> Result<Vec<(String, String, Usage)>, StoreError> {
        with_fallback!(self, usage(), Vec::new())
    }

    async fn reset(&self, kind: ResetKind, scope: &ResetScope) -> Result<(), StoreError> {
        with_fallback!(self, reset(kind, scope), ())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        if self.is_down() {
            return Err(StoreError::Unreachable("shared quota store is down".into()));
        }
        self.primary.ping().await
    }

    fn backend(&self) -> &'static str {
        self.primary.backend()
    }

    fn shared_io(&self) -> Option<super::redis::SharedIo> {
        self.primary.shared_io()
    }
}

#[async_trait]
impl KeyHealth for ResilientStore {
    async fn cool_down(
        &self,
        project: &str,
        model: &str,
        ms: u64,
        reason: &str,
    ) -> Result<(), StoreError> {
        with_fallback!(self, cool_down(project, model, ms, reason), ())
    }

    async fn cooldowns(&self) -> Result<Vec<Cooldown>, StoreError> {
        with_fallback!(self, cooldowns(), Vec::new())
    }

    async fn disable_key(&self, kid: &str, reason: &str) -> Result<(), StoreError> {
        with_fallback!(self, disable_key(kid, reason), ())
    }

    async fn key_states(&self, kids: &[Arc<str>]) -> Result<Vec<KeyState>, StoreError> {
        with_fallback!(
            self,
            key_states(kids),
            kids.iter().map(|_| KeyState::Active).collect()
        )
    }
}

#[async_trait]
impl Pins for ResilientStore {
    async fn set_affinity(&self, resource: &str, kid: &str, ttl_ms: u64) -> Result<(), StoreError> {
        with_fallback!(self, set_affinity(resource, kid, ttl_ms), ())
    }

    async fn affinity(&self, resource: &str) -> Result<Option<String>, StoreError> {
        with_fallback!(self, affinity(resource), None)
    }
}
