//! Quota accounting: limits per (project, model), the sliding minute and the Pacific day, and
//! the [`QuotaStore`] trait with its in-memory and Redis implementations.

pub mod batch;
pub mod client;
pub mod clock;
pub mod limits;
pub mod memory;
pub mod queue;
pub mod redis;
pub mod resilient;
pub mod settlement;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

pub use batch::{BatchJob, BatchReserve};
pub use client::{ClientAdmit, ClientHold, ClientLimit, ClientPeriod};
pub use clock::{Clock, DayCache, DayInfo, ManualClock, SystemClock};
pub use limits::Limits;
pub use settlement::Settlement;

use crate::error::LimitKind;
use crate::secret::Secret;

/// How a key is picked among those whose project has room (the stores implement it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// The key whose project has the most headroom; ties in turn.
    Headroom,
    /// The first key in configuration order with room ("primary first, backup after").
    Ordered,
}

/// The quota store.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// `None`: in-memory counters (one replica).
    pub redis_url: Option<Secret>,
    pub namespace: String,
    pub timeout: Duration,
    pub on_error: resilient::StoreFailurePolicy,
    /// For a `rediss://` URL: extra trust roots and a client certificate.
    pub tls: RedisTls,
}

/// TLS to Redis (`rediss://`): trust roots beside the system's (`store.tls_ca_file`), and a
/// client certificate with its key for mutual TLS.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RedisTls {
    pub ca: Vec<rustls::pki_types::CertificateDer<'static>>,
    /// The certificate chain's PEM and the key's PEM (a secret: never printed).
    pub client: Option<(Vec<u8>, Secret)>,
}

/// The longest hold a store keeps (about 400 days): a caller's larger number is cut to it, so
/// no clock arithmetic wraps and Redis accepts every expiry.
pub const MAX_HOLD_MS: u64 = 400 * 86_400_000;

/// Length of the sliding window, in milliseconds.
pub const MINUTE_MS: i64 = 60_000;

/// One key that may serve a request, with the limits of its (project, model).
#[derive(Debug, Clone)]
pub struct Candidate {
    /// Position in the pool (configuration order).
    pub index: usize,
    /// Stable key id (a hash of the key; never the key).
    pub kid: Arc<str>,
    pub project: Arc<str>,
    pub limits: Limits,
}

/// What admission is asked to do.
#[derive(Debug, Clone)]
pub struct AdmitRequest {
    pub model: String,
    /// Estimated input tokens.
    pub tokens: u64,
    /// Keys that may serve it, in configuration order.
    pub candidates: Vec<Candidate>,
    pub strategy: Strategy,
    /// Where ties start, so equal keys take turns.
    pub rotation: u64,
    /// The client's own limits, checked first and reserved in the same atomic step as the
    /// pool's (`None`: a caller without limits the store counts).
    pub client: Option<ClientAdmit>,
}

/// A granted admission: counted in all three windows until settled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    /// Index of the chosen key in the pool.
    pub index: usize,
    pub kid: Arc<str>,
    pub project: Arc<str>,
    pub model: String,
    /// Store-assigned id of this admission.
    pub id: u64,
    /// Tokens reserved (the estimate).
    pub tokens: u64,
    /// Remaining after this admission, for `x-ratelimit-remaining-*` headers.
    pub remaining_requests: u64,
    pub remaining_tokens: u64,
    /// True when the store was unreachable and nothing was counted (fail-open).
    pub uncounted: bool,
    /// Counted in this replica's fallback memory while the shared store was down: settle there.
    pub local: bool,
    /// What it holds for its client (a slot, a place in its window, its budget reservation).
    pub client: Option<ClientHold>,
}

/// Why and until when admission said no.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdmitOutcome {
    Admitted(Reservation),
    /// Every usable key's project is at a limit. `retry_after_ms`: the earliest moment this
    /// request could be admitted; `limit` names the limit that holds it back there.
    Refused {
        limit: LimitKind,
        limit_value: u64,
        retry_after_ms: u64,
    },
    /// The client is at one of its own limits: nothing was written. `limit_value` is the
    /// limit's configured value (micro-dollars for a budget); `retry_after_ms` the earliest
    /// moment its own counters could let it in (a budget's period end).
    ClientRefused {
        limit: ClientLimit,
        limit_value: u64,
        retry_after_ms: u64,
    },
    /// No key usable: all disabled, or cooling down after Google's 429s. `retry_after_ms` is
    /// when the first cooldown ends (`None`: every key is disabled).
    Unavailable {
        retry_after_ms: Option<u64>,
    },
}

/// What a Live session reported using ([`QuotaStore::live_usage`]).
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

/// Counters of one (project, model) right now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Usage {
    pub minute_requests: u64,
    pub minute_tokens: u64,
    pub daily_requests: u64,
}

/// A key's standing in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyState {
    Active,
    Disabled { reason: String },
}

/// A cooldown on a (project, model), or on a whole project when `model` is `*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cooldown {
    pub project: String,
    pub model: String,
    pub remaining_ms: u64,
    pub reason: String,
}

/// Which counters an admin reset clears.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetKind {
    Minute,
    Daily,
    Tokens,
    All,
    Cooldowns,
}

/// Narrows a reset. `None` means every project / model.
#[derive(Debug, Clone, Default)]
pub struct ResetScope {
    pub projects: Option<Vec<String>>,
    pub kids: Option<Vec<String>>,
    pub model: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("quota store unreachable: {0}")]
    Unreachable(String),
    #[error("quota store did not answer within {0} ms")]
    Timeout(u64),
    #[error("quota store answered something unexpected: {0}")]
    Protocol(String),
}

/// Shared quota state. Both implementations keep the same semantics; `tests/it/store_suite.rs`
/// runs one suite against each.
#[async_trait]
pub trait QuotaStore: Send + Sync {
    /// Choose a key with room and reserve one request and `tokens` in the minute window and one
    /// request in the day, in one atomic step.
    async fn admit(&self, req: &AdmitRequest) -> Result<AdmitOutcome, StoreError>;
    /// Replace the reserved tokens with the real count (0 refunds them). The request stays.
    async fn settle(&self, r: &Reservation, actual_tokens: u64) -> Result<(), StoreError>;
    /// Settle without waiting when the store can do it on the spot (memory): saves a task spawn
    /// per request. Returns false when the caller must use [`QuotaStore::settle`].
    fn settle_now(&self, _r: &Reservation, _actual_tokens: u64) -> bool {
        false
    }
    /// Queue a settlement to be written in the background, batched with others (Redis).
    /// Returns false when the store has no such queue and the caller must spawn `settle`.
    fn settle_later(&self, _r: &Reservation, _actual_tokens: u64) -> bool {
        false
    }
    /// Current counters of every (project, model) that has any.
    async fn usage(&self) -> Result<Vec<(String, String, Usage)>, StoreError>;
    /// Put a (project, model) on hold; `model` `*` holds the whole project.
    async fn cool_down(
        &self,
        project: &str,
        model: &str,
        ms: u64,
        reason: &str,
    ) -> Result<(), StoreError>;
    async fn cooldowns(&self) -> Result<Vec<Cooldown>, StoreError>;
    /// Never use this key again until re-enabled.
    async fn disable_key(&self, kid: &str, reason: &str) -> Result<(), StoreError>;
    async fn key_states(&self, kids: &[Arc<str>]) -> Result<Vec<KeyState>, StoreError>;
    /// Remember which key created a resource (file, cache, upload session, ...).
    async fn set_affinity(&self, resource: &str, kid: &str, ttl_ms: u64) -> Result<(), StoreError>;
    async fn affinity(&self, resource: &str) -> Result<Option<String>, StoreError>;
    /// Clear counters (or cooldowns and disabled keys) for every replica sharing the store.
    async fn reset(&self, kind: ResetKind, scope: &ResetScope) -> Result<(), StoreError>;
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
    /// is charged as it arrives, [`QuotaStore::live_usage`]). The slot frees itself
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
    /// Each client's budget use, (today's, this month's) micro-dollars spent and reserved, for
    /// `(name, day, month)` in that order (a store that keeps none answers zeros).
    async fn client_spend(
        &self,
        clients: &[(Arc<str>, i64, i64)],
    ) -> Result<Vec<(u64, u64)>, StoreError> {
        Ok(vec![(0, 0); clients.len()])
    }
    /// Room for a new batch job ([`batch`]): the candidate (its position in `req`) with the
    /// most room under `req`'s quotas, counting every replica's open jobs, held for it as
    /// `hold:N` (the name returned) until [`QuotaStore::batch_open`] or the hold's lease ends.
    /// `None`: no candidate has room; nothing was written.
    async fn batch_reserve(
        &self,
        _req: &BatchReserve,
    ) -> Result<Option<(usize, String)>, StoreError> {
        Err(no_batches())
    }
    /// Hold `hold` became batch job `name` (`job`, with its owner): it holds its project's
    /// batch quota until it is taken ([`QuotaStore::batch_take`]).
    async fn batch_open(
        &self,
        _hold: &str,
        _name: &str,
        _job: &BatchJob,
    ) -> Result<(), StoreError> {
        Err(no_batches())
    }
    /// Remove an entry (a job, a hold, a results file), handing it to exactly one caller
    /// across every replica sharing the store.
    async fn batch_take(&self, _field: &str) -> Result<Option<BatchJob>, StoreError> {
        Err(no_batches())
    }
    /// A finished job's results file (`files/ID`) to cost when it is downloaded: kept until
    /// taken or [`batch::RESULTS_TTL_MS`], at most `cap` per project (the oldest go first).
    async fn batch_results(
        &self,
        _file: &str,
        _job: &BatchJob,
        _cap: u64,
    ) -> Result<(), StoreError> {
        Err(no_batches())
    }
    /// Every entry (jobs, holds, results files), by field.
    async fn batch_entries(&self) -> Result<Vec<(String, BatchJob)>, StoreError> {
        Err(no_batches())
    }
    /// Add `c.cost_micros` to client `c.name`'s day's and month's budget use when it fits its
    /// budgets (`c.caps`' other limits are not looked at), in one atomic step. `Some`: the
    /// budget it is at, its value and when to try again; nothing was written.
    async fn client_budget_reserve(
        &self,
        _c: &ClientAdmit,
    ) -> Result<Option<(ClientLimit, u64, u64)>, StoreError> {
        Ok(None)
    }
    /// Move client `name`'s budget use of `day` and `month` by `delta` micro-dollars (a
    /// period already over stays as it was).
    async fn client_budget_adjust(
        &self,
        _name: &str,
        _day: i64,
        _month: i64,
        _delta: i64,
    ) -> Result<(), StoreError> {
        Ok(())
    }
    async fn ping(&self) -> Result<(), StoreError>;
    /// `memory` or `redis`.
    fn backend(&self) -> &'static str;
    /// The Redis connection and namespace, for the usage ledger to share (`None`: the store
    /// is this replica's memory, and so is the ledger).
    fn shared_io(&self) -> Option<redis::SharedIo> {
        None
    }
}

fn no_batches() -> StoreError {
    StoreError::Protocol("this store keeps no batch jobs".into())
}

/// The fraction of room a project would have left after this request: the smallest of the three.
pub(crate) fn headroom(l: &Limits, u: &Usage, tokens: u64) -> f64 {
    let r = (l.minute.saturating_sub(u.minute_requests + 1)) as f64 / l.minute.max(1) as f64;
    let t = (l.token_minute.saturating_sub(u.minute_tokens + tokens)) as f64
        / l.token_minute.max(1) as f64;
    let d = (l.daily.saturating_sub(u.daily_requests + 1)) as f64 / l.daily.max(1) as f64;
    r.min(t).min(d)
}
