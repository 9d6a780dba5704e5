//! The ledger in Redis, shared by every replica: each replica sums its own requests per minute
//! and series for a second, then adds the sums into `{ns}:led:m:MINUTE` and `{ns}:led:h:HOUR`
//! hashes (field `project|model|key id|client`, value the packed [`Counters`]) riding on the
//! settlement call; minute hashes expire after 48 h, hour hashes after 35 days. A batch carries
//! an id and Redis applies it once, so one sent again after a timeout is not counted twice.
//! Reads copy the buckets back into this replica's rings ([`read`]).

use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use self::read::Reads;
use super::book::{Counters, HOUR_MS, MINUTE_MS, Series};
use super::{Ledger, LedgerRef};

mod read;
use crate::quota::redis::{HashAdd, RideOutcome, Rider, RiderBatch, SharedIo};

/// How long a replica sums before writing (the settlement call carries the sums).
const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// Minute hashes live 48 h (and a little, for the last writes of a bucket).
const MINUTE_TTL_SECS: u64 = 48 * 3600 + 600;
const HOUR_TTL_SECS: u64 = 35 * 24 * 3600 + 3600;
/// A bucket is read once more this long after it ended (writes of other replicas arrive within
/// a second or two of their requests), then only when a late write is announced.
const SETTLE_GRACE_MS: i64 = 2 * 60_000;
/// (minute, series) sums kept for writing while Redis is unreachable; past it the oldest
/// minutes are dropped, with a warning.
const PENDING_CAP: usize = 100_000;
/// (minute, series) sums in one batch at most: one script call stays short.
const BATCH_ENTRIES: usize = 5_000;

pub(crate) struct Shared {
    io: SharedIo,
    pending: Mutex<Pending>,
    /// Serialises reads back from Redis, and remembers what was read.
    reads: tokio::sync::Mutex<Reads>,
    since: Mutex<Option<i64>>,
    /// This replica's part of batch ids (random), and the next batch's number.
    replica: u64,
    seq: AtomicU64,
    /// False when another ledger already rides on this store: this one records nothing.
    attached: AtomicBool,
}

#[derive(Default)]
struct Pending {
    /// Sums per (minute, series) not yet in a batch.
    sums: HashMap<(i64, Series), Counters>,
    last_take: Option<Instant>,
    /// The batch sent last and not known to be written: sent again, unchanged, until it is.
    inflight: Option<RiderBatch>,
    dropped: u64,
}

struct LedgerRider(LedgerRef);

impl Rider for LedgerRider {
    fn take(&self) -> Option<RiderBatch> {
        let ledger = self.0.upgrade()?;
        ledger.shared.as_ref()?.take(&ledger, false)
    }

    fn done(&self, outcome: RideOutcome) {
        if let Some(ledger) = self.0.upgrade()
            && let Some(s) = &ledger.shared
        {
            s.done(outcome);
        }
    }
}

impl Shared {
    pub(crate) fn new(io: SharedIo) -> Shared {
        Shared {
            io,
            pending: Mutex::new(Pending::default()),
            reads: tokio::sync::Mutex::new(Reads::default()),
            since: Mutex::new(None),
            replica: fastrand::u64(..),
            seq: AtomicU64::new(0),
            attached: AtomicBool::new(false),
        }
    }

    pub(crate) fn attach(&self, ledger: LedgerRef) {
        let ok = self.io.attach(Arc::new(LedgerRider(ledger)));
        self.attached.store(ok, Ordering::Relaxed);
        if !ok {
            tracing::warn!(
                "a usage ledger is already attached to this Redis store: this one records nothing"
            );
        }
    }

    pub(crate) fn add(&self, now_ms: i64, series: Series, c: &Counters) {
        if !self.attached.load(Ordering::Relaxed) {
            return;
        }
        let minute = now_ms.div_euclid(MINUTE_MS);
        let mut p = self.pending.lock();
        if p.sums.len() >= PENDING_CAP && !p.sums.contains_key(&(minute, series)) {
            drop_oldest(&mut p);
        }
        p.sums.entry((minute, series)).or_default().add(c);
    }

    /// Write what is pending now, in calls of their own (shutdown).
    pub(crate) async fn flush(&self, ledger: &Ledger) {
        let mut written = 0;
        while let Some(batch) = self.take(ledger, true) {
            let (outcome, error) = self.io.write_now(&batch).await;
            self.done(outcome);
            if let Some(error) = error {
                tracing::warn!(
                    error,
                    fields = fields_of(&batch),
                    "the usage ledger's last sums could not be written to Redis"
                );
                return;
            }
            written += fields_of(&batch);
        }
        if written > 0 {
            tracing::info!(fields = written, "usage ledger: last sums written");
        }
    }

    /// The batch to send: the one in flight again, else up to [`BATCH_ENTRIES`] sums, oldest
    /// minutes first; either once a second (at once when `force`, or when sums were left over).
    fn take(&self, ledger: &Ledger, force: bool) -> Option<RiderBatch> {
        let now = ledger.clock.now_ms();
        let mut p = self.pending.lock();
        let due = force || p.last_take.is_none_or(|t| t.elapsed() >= FLUSH_EVERY);
        if !due {
            return None;
        }
        if let Some(b) = &p.inflight {
            let b = b.clone();
            p.last_take = Some(Instant::now());
            return Some(b);
        }
        if p.sums.is_empty() {
            return None;
        }
        let sums: HashMap<(i64, Series), Counters> = if p.sums.len() <= BATCH_ENTRIES {
            std::mem::take(&mut p.sums)
        } else {
            let mut keys: Vec<(i64, Series)> = p.sums.keys().copied().collect();
            keys.sort_unstable_by_key(|k| k.0);
            keys.truncate(BATCH_ENTRIES);
            keys.into_iter()
                .filter_map(|k| p.sums.remove(&k).map(|c| (k, c)))
                .collect()
        };
        p.last_take = Some(Instant::now());
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let batch = self.batch(ledger, sums, format!("{:016x}:{seq}", self.replica), now);
        p.inflight = Some(batch.clone());
        Some(batch)
    }

    fn done(&self, outcome: RideOutcome) {
        let mut p = self.pending.lock();
        match outcome {
            RideOutcome::Written => {
                p.inflight = None;
                // Sums left over go next, without waiting.
                if !p.sums.is_empty() {
                    p.last_take = None;
                }
            }
            RideOutcome::Retry => {}
            RideOutcome::Rejected => {
                if let Some(b) = p.inflight.take() {
                    tracing::warn!(
                        fields = fields_of(&b),
                        "Redis rejected a batch of usage ledger sums: dropped"
                    );
                }
            }
        }
    }

    /// The sums as hash additions: each minute's, and the same summed per hour.
    fn batch(
        &self,
        ledger: &Ledger,
        sums: HashMap<(i64, Series), Counters>,
        id: String,
        now: i64,
    ) -> RiderBatch {
        let mut minutes: HashMap<i64, Vec<(String, String)>> = HashMap::new();
        let mut hours: HashMap<(i64, Series), Counters> = HashMap::new();
        let mut first = i64::MAX;
        for ((minute, series), c) in sums {
            first = first.min(minute * MINUTE_MS);
            minutes
                .entry(minute)
                .or_default()
                .push((field_name(ledger, series), c.pack()));
            hours
                .entry(((minute * MINUTE_MS).div_euclid(HOUR_MS), series))
                .or_default()
                .add(&c);
        }
        let mut by_hour: HashMap<i64, Vec<(String, String)>> = HashMap::new();
        for ((hour, series), c) in hours {
            by_hour
                .entry(hour)
                .or_default()
                .push((field_name(ledger, series), c.pack()));
        }
        let mut hashes: Vec<HashAdd> = minutes
            .into_iter()
            .map(|(m, fields)| HashAdd {
                suffix: format!("led:m:{m}"),
                ttl_secs: MINUTE_TTL_SECS,
                fields,
            })
            .collect();
        hashes.extend(by_hour.into_iter().map(|(h, fields)| HashAdd {
            suffix: format!("led:h:{h}"),
            ttl_secs: HOUR_TTL_SECS,
            fields,
        }));
        RiderBatch {
            id,
            hashes,
            since_ms: first,
            // A minute that ended before the grace: readers may hold it as final.
            late: first + MINUTE_MS + SETTLE_GRACE_MS <= now,
        }
    }
}

/// `PROJECT|MODEL|KEY|CLIENT`; a fallback's series names its model `SERVED<ASKED` (a model name
/// holds no `<`), which a replica of an earlier version reads as one more model.
fn field_name(ledger: &Ledger, s: Series) -> String {
    let asked = if s.asked == super::names::NONE_ID {
        String::new()
    } else {
        format!("<{}", ledger.models.name(s.asked))
    };
    format!(
        "{}|{}{asked}|{}|{}",
        ledger.projects.name(s.project),
        ledger.models.name(s.model),
        ledger.keys.name(s.key),
        ledger.clients.name(s.client)
    )
}

/// Make room in the pending sums: the oldest minute goes.
fn drop_oldest(p: &mut Pending) {
    let Some(oldest) = p.sums.keys().map(|k| k.0).min() else {
        return;
    };
    let before = p.sums.len();
    p.sums.retain(|k, _| k.0 != oldest);
    let dropped = (before - p.sums.len()) as u64;
    // One warning per 10,000 sums dropped, not one per request.
    if p.dropped / 10_000 != (p.dropped + dropped) / 10_000 || p.dropped == 0 {
        tracing::warn!(
            dropped_total = p.dropped + dropped,
            "Redis has not taken the usage ledger's sums for a long while: the oldest minutes are dropped"
        );
    }
    p.dropped += dropped;
}

fn fields_of(b: &RiderBatch) -> usize {
    b.hashes.iter().map(|h| h.fields.len()).sum()
}
