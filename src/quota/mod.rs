//! Quota accounting: limits per (project, model), the sliding minute and the Pacific day, and
//! the [`QuotaStore`] trait (with its supertraits by concern) and its in-memory and Redis
//! implementations.

pub mod batch;
pub mod client;
pub mod clock;
pub mod holds;
pub mod limits;
pub mod live;
pub mod memory;
pub mod queue;
pub mod redis;
pub mod resilient;
pub mod settlement;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

pub use batch::{BatchJob, BatchJobs, BatchReserve};
pub use client::{ClientAdmit, ClientBudgets, ClientHold, ClientLimit, ClientPeriod};
pub use clock::{Clock, DayCache, DayInfo, ManualClock, SystemClock};
pub use holds::{Cooldown, KeyHealth, KeyState, Pins};
pub use limits::Limits;
pub use live::{LiveSlots, LiveUsage};
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

/// Counters of one (project, model) right now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Usage {
    pub minute_requests: u64,
    pub minute_tokens: u64,
    pub daily_requests: u64,
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

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("quota store unreachable: {0}")]
    Unreachable(String),
    #[error("quota store did not answer within {0} ms")]
    Timeout(u64),
    #[error("quota store answered something unexpected: {0}")]
    Protocol(String),
}

/// Shared quota state. Both implementations keep the same semantics; `tests/it/store_suite.rs`
/// runs one suite against each. Split by concern: this trait is admission and its counters;
/// its supertraits are the holds and disabled keys ([`KeyHealth`]), the resources pinned to a
/// key ([`Pins`]), Live sessions ([`LiveSlots`]), batch jobs ([`BatchJobs`]) and clients'
/// budgets ([`ClientBudgets`]). A `dyn QuotaStore` answers every one of their calls.
#[async_trait]
pub trait QuotaStore:
    KeyHealth + Pins + LiveSlots + BatchJobs + ClientBudgets + Send + Sync
{
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
    /// Clear counters (or cooldowns and disabled keys) for every replica sharing the store.
    async fn reset(&self, kind: ResetKind, scope: &ResetScope) -> Result<(), StoreError>;
    async fn ping(&self) -> Result<(), StoreError>;
    /// `memory` or `redis`.
    fn backend(&self) -> &'static str;
    /// The Redis connection and namespace, for the usage ledger to share (`None`: the store
    /// is this replica's memory, and so is the ledger).
    fn shared_io(&self) -> Option<redis::SharedIo> {
        None
    }
}

/// The fraction of room a project would have left after this request: the smallest of the three.
pub(crate) fn headroom(l: &Limits, u: &Usage, tokens: u64) -> f64 {
    let r = (l.minute.saturating_sub(u.minute_requests + 1)) as f64 / l.minute.max(1) as f64;
    let t = (l.token_minute.saturating_sub(u.minute_tokens + tokens)) as f64
        / l.token_minute.max(1) as f64;
    let d = (l.daily.saturating_sub(u.daily_requests + 1)) as f64 / l.daily.max(1) as f64;
    r.min(t).min(d)
}
