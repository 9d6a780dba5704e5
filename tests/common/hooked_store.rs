//! A memory store with hooks for tests that need the store to misbehave or to be watched: the
//! next admissions fail as an unreachable Redis would, and the status's usage reads are
//! counted. Every other call is the memory store's own.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use gemini_quota_proxy::quota::memory::MemoryStore;
use gemini_quota_proxy::quota::{
    AdmitOutcome, AdmitRequest, BatchJobs, ClientBudgets, Cooldown, KeyHealth, KeyState, LiveSlots,
    Pins, QuotaStore, Reservation, ResetKind, ResetScope, StoreError, SystemClock, Usage,
};

pub struct HookedStore {
    pub inner: MemoryStore,
    /// The next this many admissions fail (`StoreError::Unreachable`).
    pub fail_admits: AtomicUsize,
    /// How many times `usage` was asked.
    pub usage_calls: Arc<AtomicUsize>,
}

impl HookedStore {
    /// A memory store on the system clock, quota days in Pacific time, no hook armed.
    pub fn new() -> HookedStore {
        HookedStore {
            inner: MemoryStore::new(Arc::new(SystemClock), chrono_tz::America::Los_Angeles),
            fail_admits: AtomicUsize::new(0),
            usage_calls: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// The first `n` admissions fail.
    pub fn failing_admits(self, n: usize) -> HookedStore {
        self.fail_admits.store(n, Ordering::SeqCst);
        self
    }
}

#[async_trait]
impl QuotaStore for HookedStore {
    async fn admit(&self, req: &AdmitRequest) -> Result<AdmitOutcome, StoreError> {
        let failing = self
            .fail_admits
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if failing {
            return Err(StoreError::Unreachable("connection refused (test)".into()));
        }
        self.inner.admit(req).await
    }
    async fn settle(&self, r: &Reservation, t: u64) -> Result<(), StoreError> {
        self.inner.settle(r, t).await
    }
    async fn usage(&self) -> Result<Vec<(String, String, Usage)>, StoreError> {
        self.usage_calls.fetch_add(1, Ordering::SeqCst);
        self.inner.usage().await
    }
    async fn reset(&self, k: ResetKind, s: &ResetScope) -> Result<(), StoreError> {
        self.inner.reset(k, s).await
    }
    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }
    fn backend(&self) -> &'static str {
        "memory"
    }
}

#[async_trait]
impl KeyHealth for HookedStore {
    async fn cool_down(&self, p: &str, m: &str, ms: u64, r: &str) -> Result<(), StoreError> {
        self.inner.cool_down(p, m, ms, r).await
    }
    async fn cooldowns(&self) -> Result<Vec<Cooldown>, StoreError> {
        self.inner.cooldowns().await
    }
    async fn disable_key(&self, kid: &str, reason: &str) -> Result<(), StoreError> {
        self.inner.disable_key(kid, reason).await
    }
    async fn key_states(&self, kids: &[Arc<str>]) -> Result<Vec<KeyState>, StoreError> {
        self.inner.key_states(kids).await
    }
}

#[async_trait]
impl Pins for HookedStore {
    async fn set_affinity(&self, r: &str, kid: &str, ttl: u64) -> Result<(), StoreError> {
        self.inner.set_affinity(r, kid, ttl).await
    }
    async fn affinity(&self, r: &str) -> Result<Option<String>, StoreError> {
        self.inner.affinity(r).await
    }
}

#[async_trait]
impl LiveSlots for HookedStore {
    async fn live_open(
        &self,
        p: &str,
        s: &str,
        limit: u64,
        lease: u64,
    ) -> Result<bool, StoreError> {
        self.inner.live_open(p, s, limit, lease).await
    }
    async fn live_renew(&self, held: &[(Arc<str>, String)], lease: u64) -> Result<(), StoreError> {
        self.inner.live_renew(held, lease).await
    }
    async fn live_close(&self, p: &str, s: &str) -> Result<(), StoreError> {
        self.inner.live_close(p, s).await
    }
    async fn live_counts(&self, projects: &[Arc<str>]) -> Result<Vec<u64>, StoreError> {
        self.inner.live_counts(projects).await
    }
}

/// No batch jobs and no client budgets: the traits' defaults, as before.
impl BatchJobs for HookedStore {}
impl ClientBudgets for HookedStore {}
