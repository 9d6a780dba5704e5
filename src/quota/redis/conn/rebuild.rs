//! Keeping a Redis Cluster connection current: a call that goes unanswered (a timeout, a lost
//! or refused node, a Cluster error left after the client's retries) gets the connection
//! rebuilt from the seeds and the nodes last named, in the background, one rebuild at a time
//! and at most one a [`REBUILD_GAP`], backing off to [`REBUILD_GAP_MAX`] while nothing answers.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use redis::{RedisError, RedisResult};

use super::{Inner, cluster_link};

/// Rebuilds of a Cluster connection: one at a time, at most one a [`REBUILD_GAP`].
#[derive(Default)]
pub(super) struct Rebuild {
    running: bool,
    last: Option<Instant>,
}

/// The least time between two rebuilds of a Cluster connection.
pub(super) const REBUILD_GAP: Duration = Duration::from_secs(1);
/// The most time between two rebuilds while calls stay unanswered.
const REBUILD_GAP_MAX: Duration = Duration::from_secs(30);

impl Inner {
    pub(super) fn answered(&self) {
        let ms = self.born.elapsed().as_millis() as u64;
        self.answered_ms.fetch_max(ms, Ordering::Relaxed);
        if self.gap_ms.load(Ordering::Relaxed) != REBUILD_GAP.as_millis() as u64 {
            self.gap_ms
                .store(REBUILD_GAP.as_millis() as u64, Ordering::Relaxed);
        }
    }

    /// A call on the Cluster connection got no answer: rebuild it in the background, unless a
    /// call was answered within [`REBUILD_GAP`] or a rebuild runs or ran within it.
    pub(super) fn suspect(self: &Arc<Self>) {
        let quiet_ms = (self.born.elapsed().as_millis() as u64)
            .saturating_sub(self.answered_ms.load(Ordering::Relaxed));
        if quiet_ms < REBUILD_GAP.as_millis() as u64 {
            return;
        }
        // Only from within the runtime (not while it is being torn down).
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let gap = Duration::from_millis(self.gap_ms.load(Ordering::Relaxed));
        {
            let mut r = self.rebuild.lock();
            if r.running || r.last.is_some_and(|at| at.elapsed() < gap) {
                return;
            }
            r.running = true;
        }
        let next = (gap * 2).min(REBUILD_GAP_MAX).as_millis() as u64;
        self.gap_ms.store(next, Ordering::Relaxed);
        let inner = self.clone();
        rt.spawn(async move {
            // Bounded here too: a rebuild that never ends would block every later one.
            let limit = inner.timeout * 3 + Duration::from_secs(1);
            let built = tokio::time::timeout(limit, cluster_link(&inner))
                .await
                .unwrap_or_else(|_| Err(Arc::from("rebuilding the cluster connection timed out")));
            match built {
                Ok(c) => {
                    *inner.link.write() = Some(c);
                    tracing::info!("Redis Cluster connection rebuilt after calls went unanswered");
                }
                Err(e) => {
                    tracing::debug!(error = %e, "rebuilding the Redis Cluster connection failed")
                }
            }
            let mut r = inner.rebuild.lock();
            r.running = false;
            r.last = Some(Instant::now());
        });
    }
}

/// Whether a failed Cluster call says the connection may be stale (no answer, a lost node, a
/// topology error left after the client's retries), not that Redis refused the command.
fn unanswered(e: &RedisError) -> bool {
    e.is_timeout()
        || e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_cluster_error()
        || e.kind() == redis::ErrorKind::ClusterConnectionNotFound
}

/// Notes a Cluster call that did not come back answered, including one its caller gave up on
/// at the store's deadline (not one dropped sooner: its client went away).
pub(super) struct Watch {
    inner: Arc<Inner>,
    answered: bool,
    started: Instant,
}

impl Watch {
    pub(super) fn new(inner: &Arc<Inner>) -> Watch {
        Watch {
            inner: inner.clone(),
            answered: false,
            started: Instant::now(),
        }
    }

    pub(super) fn saw<T>(mut self, r: &RedisResult<T>) {
        let answered = r.as_ref().err().is_none_or(|e| !unanswered(e));
        if answered {
            self.inner.answered();
        } else {
            self.inner.suspect();
        }
        // Seen either way: the drop below is for calls never seen.
        self.answered = true;
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        if !self.answered && self.started.elapsed() >= self.inner.timeout {
            self.inner.suspect();
        }
    }
}
