//! The resilient store's Live sessions, batch jobs and clients' budgets: the shared store's,
//! with the policy while it is down; a slot or an entry made locally meanwhile is freed or
//! taken from both.

use std::sync::Arc;

use async_trait::async_trait;

use super::{ResilientStore, StoreFailurePolicy};
use crate::quota::{
    BatchJob, BatchJobs, BatchReserve, ClientAdmit, ClientBudgets, ClientLimit, LiveSlots,
    LiveUsage, StoreError,
};

#[async_trait]
impl LiveSlots for ResilientStore {
    /// Fail-open takes a slot without counting it, as admission admits uncounted.
    async fn live_open(
        &self,
        project: &str,
        session: &str,
        limit: u64,
        lease_ms: u64,
    ) -> Result<bool, StoreError> {
        with_fallback!(self, live_open(project, session, limit, lease_ms), true)
    }

    async fn live_renew(
        &self,
        held: &[(Arc<str>, String)],
        lease_ms: u64,
    ) -> Result<(), StoreError> {
        with_fallback!(self, live_renew(held, lease_ms), ())
    }

    async fn live_close(&self, project: &str, session: &str) -> Result<(), StoreError> {
        // Freed in both: a slot taken locally while the shared store was down lives there.
        let _ = self.local.live_close(project, session).await;
        with_fallback!(self, live_close(project, session), ())
    }

    async fn live_counts(&self, projects: &[Arc<str>]) -> Result<Vec<u64>, StoreError> {
        with_fallback!(self, live_counts(projects), vec![0; projects.len()])
    }

    /// Fail-open takes the client's slot without counting it, as admission admits uncounted.
    async fn live_client_open(
        &self,
        c: &ClientAdmit,
        session: &str,
    ) -> Result<Option<(ClientLimit, u64, u64)>, StoreError> {
        with_fallback!(self, live_client_open(c, session), None)
    }

    async fn live_client_renew(
        &self,
        held: &[(Arc<str>, String)],
        lease_ms: u64,
    ) -> Result<(), StoreError> {
        with_fallback!(self, live_client_renew(held, lease_ms), ())
    }

    async fn live_client_close(&self, client: &str, session: &str) -> Result<(), StoreError> {
        // Freed in both, as a project slot is.
        let _ = self.local.live_client_close(client, session).await;
        with_fallback!(self, live_client_close(client, session), ())
    }

    async fn live_usage(&self, u: &LiveUsage) -> Result<(u64, u64), StoreError> {
        with_fallback!(self, live_usage(u), (0, 0))
    }
}

#[async_trait]
impl BatchJobs for ResilientStore {
    /// Fail-open creates the batch job on the first candidate, held nowhere (hold `""`).
    async fn batch_reserve(
        &self,
        req: &BatchReserve,
    ) -> Result<Option<(usize, String)>, StoreError> {
        with_fallback!(self, batch_reserve(req), Some((0, String::new())))
    }

    async fn batch_open(&self, hold: &str, name: &str, job: &BatchJob) -> Result<(), StoreError> {
        if hold.is_empty() && self.policy == StoreFailurePolicy::FailOpen && self.is_down() {
            return Ok(());
        }
        let _ = self.local.batch_take(hold).await;
        with_fallback!(self, batch_open(hold, name, job), ())
    }

    /// Taken from both: an entry made locally while the shared store was down lives there.
    async fn batch_take(&self, field: &str) -> Result<Option<BatchJob>, StoreError> {
        let local = self.local.batch_take(field).await.ok().flatten();
        let shared: Result<Option<BatchJob>, StoreError> =
            async { with_fallback!(self, batch_take(field), None) }.await;
        Ok(shared?.or(local))
    }

    async fn batch_results(&self, file: &str, job: &BatchJob, cap: u64) -> Result<(), StoreError> {
        with_fallback!(self, batch_results(file, job, cap), ())
    }

    /// The shared store's entry, or one made locally while it was down.
    async fn batch_entry(&self, field: &str) -> Result<Option<BatchJob>, StoreError> {
        if let Ok(Some(j)) = self.local.batch_entry(field).await {
            return Ok(Some(j));
        }
        if self.policy == StoreFailurePolicy::Local && self.is_down() {
            return Ok(None);
        }
        async { with_fallback!(self, batch_entry(field), None) }.await
    }

    /// The shared store's entries and those made locally while it was down.
    async fn batch_entries(&self) -> Result<Vec<(String, BatchJob)>, StoreError> {
        let mut local = self.local.batch_entries().await.unwrap_or_default();
        if self.policy == StoreFailurePolicy::Local && self.is_down() {
            return Ok(local);
        }
        let shared: Result<Vec<(String, BatchJob)>, StoreError> =
            async { with_fallback!(self, batch_entries(), Vec::new()) }.await;
        let mut shared = shared?;
        local.retain(|(f, _)| !shared.iter().any(|(g, _)| g == f));
        shared.extend(local);
        Ok(shared)
    }
}

#[async_trait]
impl ClientBudgets for ResilientStore {
    async fn client_spend(
        &self,
        clients: &[(Arc<str>, i64, i64)],
    ) -> Result<Vec<(u64, u64)>, StoreError> {
        with_fallback!(self, client_spend(clients), vec![(0, 0); clients.len()])
    }

    async fn client_budget_reserve(
        &self,
        c: &ClientAdmit,
    ) -> Result<Option<(ClientLimit, u64, u64)>, StoreError> {
        with_fallback!(self, client_budget_reserve(c), None)
    }

    async fn client_budget_adjust(
        &self,
        name: &str,
        day: i64,
        month: i64,
        delta: i64,
    ) -> Result<(), StoreError> {
        with_fallback!(self, client_budget_adjust(name, day, month, delta), ())
    }
}
