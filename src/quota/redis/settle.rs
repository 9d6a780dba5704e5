//! Settlements written to Redis off the response path: queued, then sent in batches of up to
//! [`SETTLE_BATCH`], one `EVALSHA` for all that are waiting. Other counters may ride along in
//! the same call ([`Rider`]: the usage ledger's per-minute sums), so they cost no round trip
//! of their own; when such a call fails, the settlements are sent again alone, so a ledger
//! batch never takes them down with it.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use redis::Script;

use super::conn::RedisConn;
use super::keys::Keys;

/// One settlement on its way to Redis.
pub(super) struct PendingSettle {
    pub(super) project: Arc<str>,
    pub(super) model: String,
    pub(super) id: u64,
    pub(super) tokens: u64,
    /// Its client's part, if it has one.
    pub(super) client: Option<ClientSettle>,
}

/// A settlement's client part: its tokens, its slot freed, its budgets moved by `delta`
/// micro-dollars (the real cost less the reserved estimate).
pub(super) struct ClientSettle {
    pub(super) name: Arc<str>,
    pub(super) day: i64,
    pub(super) month: i64,
    pub(super) delta: i64,
}

impl PendingSettle {
    pub(super) fn of(r: &crate::quota::Reservation, tokens: u64) -> PendingSettle {
        PendingSettle {
            project: r.project.clone(),
            model: r.model.clone(),
            id: r.id,
            tokens,
            client: r.client.as_ref().map(|h| ClientSettle {
                name: h.name.clone(),
                day: h.day,
                month: h.month,
                delta: i64::try_from(h.actual_cost_micros.unwrap_or(0)).unwrap_or(i64::MAX)
                    - i64::try_from(h.cost_micros).unwrap_or(i64::MAX),
            }),
        }
    }
}

/// Settlements in one batch at most (one EVALSHA).
pub(super) const SETTLE_BATCH: usize = 256;
/// Settlements queued at most; past that they are dropped (their estimates stay counted, which
/// errs on the safe side) and a warning is logged.
pub(super) const SETTLE_QUEUE: usize = 16_384;
/// How often the writer asks the rider for its sums when no settlement comes to carry them.
const RIDER_TICK: Duration = Duration::from_secs(1);

/// Hashes of packed counters to add into, sent with a settlement batch.
#[derive(Debug, Default, Clone)]
pub struct RiderBatch {
    /// Names this batch (`REPLICA:SEQ`): Redis applies a batch once, however often it is sent
    /// (a call that timed out may have run).
    pub id: String,
    pub hashes: Vec<HashAdd>,
    /// Set once (`SET NX`) under `{ns}:led:since`: when the first batch was written.
    pub since_ms: i64,
    /// It adds into buckets other replicas may have read as final: `{ns}:led:late` is bumped
    /// so they read them again.
    pub late: bool,
}

/// Element-wise sums into fields of one hash: each value is space-separated integers, added
/// to the field's own (a missing field starts at zero).
#[derive(Debug, Clone)]
pub struct HashAdd {
    /// The key after the namespace prefix and a colon (`led:m:29456`).
    pub suffix: String,
    /// Seconds the hash lives after this write.
    pub ttl_secs: u64,
    pub fields: Vec<(String, String)>,
}

/// What rides along with settlements. The writer asks once a second when idle and at every
/// batch under load; the rider decides whether anything is due.
pub trait Rider: Send + Sync {
    /// Sums due for writing, if any. Until [`Rider::done`] says it was written, the same batch
    /// (same id, same sums) comes back.
    fn take(&self) -> Option<RiderBatch>;
    /// What became of the batch taken last.
    fn done(&self, outcome: RideOutcome);
}

/// What became of a rider's batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RideOutcome {
    Written,
    /// Not known to be written (Redis unreachable, or no answer in time): send it again.
    Retry,
    /// Redis answered with an error: the same batch would fail again, so it is dropped.
    Rejected,
}

/// Where the rider is attached once built (the store exists first).
pub(super) type RiderSlot = Arc<OnceLock<Arc<dyn Rider>>>;

/// Whether a failed call is worth sending again.
pub(super) fn ride_outcome(e: &redis::RedisError) -> RideOutcome {
    if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() || e.is_timeout() {
        RideOutcome::Retry
    } else {
        RideOutcome::Rejected
    }
}

/// One call of the settlement script: `batch` settled, `riding` added. Every key it touches is
/// in `KEYS`: the ledger's, and the token hash of each (project, model) in the batch (once).
pub(super) fn settle_call<'a>(
    script: &'a Script,
    keys: &Keys,
    batch: &[PendingSettle],
    riding: Option<&RiderBatch>,
) -> redis::ScriptInvocation<'a> {
    let mut inv = script.prepare_invoke();
    let done = riding.map_or_else(String::new, |r| r.id.clone());
    inv.key(keys.named("led:since"))
        .key(keys.named(&format!("led:done:{done}")))
        .key(keys.named("led:late"));
    // Each pair's token hash once, and each settlement's number in that list.
    let mut pairs: Vec<(&str, &str)> = Vec::new();
    let mut at: Vec<usize> = Vec::with_capacity(batch.len());
    for p in batch {
        let pair = (&*p.project, p.model.as_str());
        let i = match pairs.iter().position(|q| *q == pair) {
            Some(i) => i,
            None => {
                pairs.push(pair);
                inv.key(keys.tokens(pair.0, pair.1));
                pairs.len() - 1
            }
        };
        at.push(i + 1);
    }
    inv.arg(pairs.len()).arg(batch.len());
    for (p, i) in batch.iter().zip(&at) {
        inv.arg(*i).arg(p.id).arg(p.tokens);
    }
    // Client parts: four keys each, after the token hashes.
    let clients: Vec<(&PendingSettle, &ClientSettle)> = batch
        .iter()
        .filter_map(|p| p.client.as_ref().map(|c| (p, c)))
        .collect();
    inv.arg(clients.len());
    for (p, c) in clients {
        for key in keys.client_settle(&c.name, c.day, c.month) {
            inv.key(key);
        }
        inv.arg(p.id).arg(p.tokens).arg(c.delta);
    }
    if let Some(r) = riding {
        inv.arg(u8::from(r.late));
        for h in &r.hashes {
            inv.key(keys.named(&h.suffix))
                .arg(h.ttl_secs)
                .arg(h.fields.len());
            for (f, v) in &h.fields {
                inv.arg(f).arg(v);
            }
        }
        inv.arg(r.since_ms);
    }
    inv
}

/// One call of the settlement script, under the store's deadline: its outcome, and the error
/// if it failed.
async fn send(
    script: &Script,
    keys: &Keys,
    conn: &RedisConn,
    timeout: Duration,
    batch: &[PendingSettle],
    riding: Option<&RiderBatch>,
) -> (RideOutcome, Option<String>) {
    let inv = settle_call(script, keys, batch, riding);
    let mut c = conn.clone();
    match tokio::time::timeout(timeout, inv.invoke_async::<i64>(&mut c)).await {
        Ok(Ok(_)) => (RideOutcome::Written, None),
        Ok(Err(e)) => (ride_outcome(&e), Some(e.to_string())),
        Err(_) => (RideOutcome::Retry, Some("timed out".to_string())),
    }
}

/// Tries at sending settlements alone after the call that carried a ledger batch failed.
const ALONE_TRIES: u32 = 3;

/// Send `batch` without a ledger batch. Redis may have closed the connection over the failed
/// call (it does after a protocol error), so a try that finds no connection is made again
/// after a short pause while the connection is made again; an answer from Redis is final.
async fn settle_alone(
    script: &Script,
    keys: &Keys,
    conn: &RedisConn,
    timeout: Duration,
    batch: &[PendingSettle],
) {
    for attempt in 1..=ALONE_TRIES {
        let (outcome, error) = send(script, keys, conn, timeout, batch, None).await;
        let Some(error) = error else { return };
        if outcome != RideOutcome::Retry || attempt == ALONE_TRIES {
            tracing::warn!(
                error,
                settlements = batch.len(),
                "settling in Redis failed: estimates stay counted"
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(50 * u64::from(attempt))).await;
    }
}

/// Writes queued settlements: waits for one, takes whatever else is already queued (up to a
/// batch), and sends them in one `EVALSHA`, with whatever the rider has due. Under load that is
/// one call for many requests; when idle it adds no delay.
pub(super) async fn settle_writer(
    mut rx: tokio::sync::mpsc::Receiver<PendingSettle>,
    conn: RedisConn,
    script: Script,
    keys: Keys,
    timeout: Duration,
    rider: RiderSlot,
) {
    let mut batch: Vec<PendingSettle> = Vec::with_capacity(SETTLE_BATCH);
    let mut tick = tokio::time::interval(RIDER_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            n = rx.recv_many(&mut batch, SETTLE_BATCH) => if n == 0 { return },
            _ = tick.tick() => {}
        }
        let riding = rider.get().and_then(|r| r.take());
        if batch.is_empty() && riding.is_none() {
            continue;
        }
        let (outcome, error) = send(&script, &keys, &conn, timeout, &batch, riding.as_ref()).await;
        if let Some(error) = &error {
            tracing::warn!(
                error,
                settlements = batch.len(),
                ledger = riding.is_some(),
                "settling in Redis failed"
            );
        }
        if let (Some(r), Some(_)) = (rider.get(), &riding) {
            r.done(outcome);
        }
        // A ledger batch Redis cannot take (too large, a key of the wrong type) or a call that
        // timed out must not take the settlements with it: they go again on their own (a
        // settlement sets a reservation's tokens, so one applied twice is applied once).
        if outcome != RideOutcome::Written && riding.is_some() && !batch.is_empty() {
            settle_alone(&script, &keys, &conn, timeout, &batch).await;
        }
        batch.clear();
    }
}
