//! Settlements written to Redis off the response path: queued, then sent in batches of up to
//! [`SETTLE_BATCH`], one `EVALSHA` for all that are waiting.

use std::sync::Arc;
use std::time::Duration;

use redis::Script;
use redis::aio::ConnectionManager;

/// One settlement on its way to Redis.
pub(super) struct PendingSettle {
    pub(super) project: Arc<str>,
    pub(super) model: String,
    pub(super) id: u64,
    pub(super) tokens: u64,
}

/// Settlements in one batch at most (one EVALSHA).
pub(super) const SETTLE_BATCH: usize = 256;
/// Settlements queued at most; past that they are dropped (their estimates stay counted, which
/// errs on the safe side) and a warning is logged.
pub(super) const SETTLE_QUEUE: usize = 16_384;

/// Writes queued settlements: waits for one, takes whatever else is already queued (up to a
/// batch), and sends them in one `EVALSHA`. Under load that is one call for many requests; when
/// idle it adds no delay.
pub(super) async fn settle_writer(
    mut rx: tokio::sync::mpsc::Receiver<PendingSettle>,
    conn: ConnectionManager,
    script: Script,
    prefix: String,
    timeout: Duration,
) {
    let mut batch: Vec<PendingSettle> = Vec::with_capacity(SETTLE_BATCH);
    while rx.recv_many(&mut batch, SETTLE_BATCH).await > 0 {
        let mut inv = script.prepare_invoke();
        inv.key(format!("{prefix}:seq")).arg(&prefix);
        for p in &batch {
            inv.arg(&*p.project).arg(&p.model).arg(p.id).arg(p.tokens);
        }
        let mut c = conn.clone();
        match tokio::time::timeout(timeout, inv.invoke_async::<i64>(&mut c)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, settlements = batch.len(), "settling in Redis failed: estimates stay counted")
            }
            Err(_) => tracing::warn!(
                settlements = batch.len(),
                "settling in Redis timed out: estimates stay counted"
            ),
        }
        batch.clear();
    }
}
