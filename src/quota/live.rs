//! Live API sessions in the stores ([`LiveSlots`]): a project's session slots (each with a
//! lease, so a dead replica's slots free themselves), a client's concurrent slot for a session,
//! and the usage Google reports as a session runs ([`LiveUsage`]).

use std::sync::Arc;

use async_trait::async_trait;

use super::{ClientAdmit, ClientLimit, StoreError};

/// What a Live session reported using ([`LiveSlots::live_usage`]).
#[derive(Debug, Clone)]
pub struct LiveUsage {
    pub project: Arc<str>,
    /// The model without `models/`, as the pool's windows name it.
    pub model: Arc<str>,
    /// Input tokens (`promptTokenCount`), what TPM counts.
    pub tokens: u64,
    /// Its client, when it has limits the store counts: its caps and periods now, and in
    /// `cost_micros` the usage's cost.
    pub client: Option<ClientAdmit>,
}

/// Live API session slots and usage, counted across every replica sharing the store.
#[async_trait]
pub trait LiveSlots: Send + Sync {
    /// Take one of `project`'s Live API session slots for `session` when fewer than `limit`
    /// are held (by every replica sharing the store), in one atomic step. The slot frees
    /// itself `lease_ms` after it was taken or last renewed. True: taken.
    async fn live_open(
        &self,
        project: &str,
        session: &str,
        limit: u64,
        lease_ms: u64,
    ) -> Result<bool, StoreError>;
    /// Renew the leases of these (project, session) slots (those no longer held stay freed).
    async fn live_renew(
        &self,
        held: &[(Arc<str>, String)],
        lease_ms: u64,
    ) -> Result<(), StoreError>;
    /// Free a session's slot.
    async fn live_close(&self, project: &str, session: &str) -> Result<(), StoreError>;
    /// Live sessions open now in each of `projects`, in that order.
    async fn live_counts(&self, projects: &[Arc<str>]) -> Result<Vec<u64>, StoreError>;
    /// Take one of client `c.name`'s concurrent slots for Live session `session`, when it is
    /// under its `max_concurrent`, its RPM and RPD (the session counts as one request) and has
    /// `c.cost_micros` left in its budgets (nothing is reserved from them: the session's usage
    /// is charged as it arrives, [`LiveSlots::live_usage`]). The slot frees itself
    /// `c.lease_ms` after it was taken or last renewed. `Some`: the limit it is at, that
    /// limit's value and when to try again; nothing was written.
    async fn live_client_open(
        &self,
        _c: &ClientAdmit,
        _session: &str,
    ) -> Result<Option<(ClientLimit, u64, u64)>, StoreError> {
        Ok(None)
    }
    /// Renew the leases of these (client, session) slots (those no longer held stay freed).
    async fn live_client_renew(
        &self,
        _held: &[(Arc<str>, String)],
        _lease_ms: u64,
    ) -> Result<(), StoreError> {
        Ok(())
    }
    /// Free a Live session's slot of its client.
    async fn live_client_close(&self, _client: &str, _session: &str) -> Result<(), StoreError> {
        Ok(())
    }
    /// Count what a Live session used, as Google reported it (never refused: it is spent):
    /// its input tokens as one entry in its (project, model) minute window, so admissions see
    /// them against TPM, and for its client the same tokens in its minute window and the cost
    /// in its day's and month's budget use. Returns that budget use after it, (day, month)
    /// micro-dollars (zeros without a client).
    async fn live_usage(&self, _u: &LiveUsage) -> Result<(u64, u64), StoreError> {
        Ok((0, 0))
    }
}
