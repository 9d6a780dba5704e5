//! The ledger in Redis, shared by every replica: each replica sums its own requests per minute
//! and series for a second, then adds the sums into `{ns}:led:m:MINUTE` and `{ns}:led:h:HOUR`
//! hashes (field `project|model|key id|client`, value the packed [`Counters`]) riding on the
//! settlement call; minute hashes expire after 48 h, hour hashes after 35 days. Reads copy the
//! buckets back into this replica's rings: a closed bucket once, an open one at most once a
//! second.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::book::{Counters, HOUR_MS, HOURS, MINUTE_MS, MINUTES, Series};
use super::{Ledger, LedgerRef};
use crate::quota::StoreError;
use crate::quota::redis::{HashAdd, Rider, RiderBatch, SharedIo};

/// How long a replica sums before writing (the settlement call carries the sums).
const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// Minute hashes live 48 h (and a little, for the last writes of a bucket).
const MINUTE_TTL_SECS: u64 = 48 * 3600 + 600;
const HOUR_TTL_SECS: u64 = 35 * 24 * 3600 + 3600;
/// A bucket is read once more this long after it ended (writes of other replicas arrive within
/// a second or two of their requests), then never again.
const SETTLE_GRACE_MS: i64 = 2 * 60_000;
/// Fields kept for writing while Redis is unreachable; past it the oldest sums are dropped.
const BACKLOG_FIELDS: usize = 200_000;

pub(crate) struct Shared {
    io: SharedIo,
    pending: Mutex<Pending>,
    /// Serialises reads back from Redis, and remembers what was read.
    reads: tokio::sync::Mutex<Reads>,
    since: Mutex<Option<i64>>,
}

#[derive(Default)]
struct Pending {
    /// Sums per (minute, series) since the last write.
    sums: HashMap<(i64, Series), Counters>,
    last_take: Option<Instant>,
    /// Batches Redis did not take, oldest first.
    backlog: Vec<RiderBatch>,
    backlog_fields: usize,
}

/// When each bucket was last read from Redis (Unix ms), per ring.
#[derive(Default)]
struct Reads {
    minutes: HashMap<i64, i64>,
    hours: HashMap<i64, i64>,
}

struct LedgerRider(LedgerRef);

impl Rider for LedgerRider {
    fn take(&self) -> Option<RiderBatch> {
        let ledger = self.0.upgrade()?;
        ledger.shared.as_ref()?.take(&ledger)
    }

    fn put_back(&self, batch: RiderBatch) {
        if let Some(ledger) = self.0.upgrade()
            && let Some(s) = &ledger.shared
        {
            s.put_back(batch);
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
        }
    }

    pub(crate) fn attach(&self, ledger: LedgerRef) {
        if !self.io.attach(Arc::new(LedgerRider(ledger))) {
            tracing::warn!(
                "a usage ledger is already attached to this Redis store: this one records nothing"
            );
        }
    }

    pub(crate) fn add(&self, now_ms: i64, series: Series, c: &Counters) {
        let minute = now_ms.div_euclid(MINUTE_MS);
        let mut p = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        p.sums.entry((minute, series)).or_default().add(c);
    }

    /// Write what is pending now, in a call of its own (shutdown).
    pub(crate) async fn flush(&self, ledger: &Ledger) {
        let mut written = 0;
        while let Some(batch) = self.take_now(ledger, true) {
            if let Err(e) = self.io.write_now(&batch).await {
                tracing::warn!(error = %e, fields = fields_of(&batch), "the usage ledger's last sums could not be written to Redis");
                return;
            }
            written += fields_of(&batch);
        }
        if written > 0 {
            tracing::info!(fields = written, "usage ledger: last sums written");
        }
    }

    fn take(&self, ledger: &Ledger) -> Option<RiderBatch> {
        self.take_now(ledger, false)
    }

    /// What is due (everything when `force`): this second's sums and the oldest backlog batch.
    fn take_now(&self, ledger: &Ledger, force: bool) -> Option<RiderBatch> {
        let (sums, backlog) = {
            let mut p = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            let due = force || p.last_take.is_none_or(|t| t.elapsed() >= FLUSH_EVERY);
            if !due || (p.sums.is_empty() && p.backlog.is_empty()) {
                return None;
            }
            p.last_take = Some(Instant::now());
            let backlog = if p.backlog.is_empty() {
                None
            } else {
                let b = p.backlog.remove(0);
                p.backlog_fields -= fields_of(&b);
                Some(b)
            };
            (std::mem::take(&mut p.sums), backlog)
        };
        let mut batch = self.batch(ledger, sums);
        if let Some(old) = backlog {
            batch.since_ms = batch.since_ms.min(old.since_ms);
            batch.hashes.extend(old.hashes);
        }
        (!batch.hashes.is_empty()).then_some(batch)
    }

    /// The sums as hash additions: each minute's, and the same summed per hour.
    fn batch(&self, ledger: &Ledger, sums: HashMap<(i64, Series), Counters>) -> RiderBatch {
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
            hashes,
            since_ms: first,
        }
    }

    fn put_back(&self, batch: RiderBatch) {
        let mut p = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        p.backlog_fields += fields_of(&batch);
        p.backlog.push(batch);
        let mut dropped = 0;
        while p.backlog_fields > BACKLOG_FIELDS && p.backlog.len() > 1 {
            let b = p.backlog.remove(0);
            p.backlog_fields -= fields_of(&b);
            dropped += fields_of(&b);
        }
        if dropped > 0 {
            tracing::warn!(
                dropped,
                "Redis has not taken the usage ledger's sums for a while: the oldest are dropped"
            );
        }
    }

    /// When the shared history starts: the first write any replica made.
    pub(crate) async fn since(&self) -> Option<i64> {
        if let Some(s) = *self.since.lock().unwrap_or_else(|p| p.into_inner()) {
            return Some(s);
        }
        let read = self.io.get("led:since").await.ok()??.parse().ok()?;
        *self.since.lock().unwrap_or_else(|p| p.into_inner()) = Some(read);
        Some(read)
    }

    /// Copy the minute buckets from `minutes_from` and the hour buckets from `hours_from` (Unix
    /// ms; `None`: none) to now into the ledger's rings.
    pub(crate) async fn refresh(
        &self,
        ledger: &Ledger,
        minutes_from: Option<i64>,
        hours_from: Option<i64>,
    ) -> Result<(), StoreError> {
        let mut reads = self.reads.lock().await;
        let now = ledger.clock.now_ms();
        let Reads { minutes, hours } = &mut *reads;
        let m = minutes_from.map_or_else(Vec::new, |f| wanted(minutes, f, now, MINUTE_MS, MINUTES));
        let h = hours_from.map_or_else(Vec::new, |f| wanted(hours, f, now, HOUR_MS, HOURS));
        let mut suffixes: Vec<String> = m.iter().map(|i| format!("led:m:{i}")).collect();
        suffixes.extend(h.iter().map(|i| format!("led:h:{i}")));
        if suffixes.is_empty() {
            return Ok(());
        }
        let read = self.io.read_hashes(&suffixes).await?;
        // The same fields come back bucket after bucket: each name is looked up once.
        let mut known: HashMap<String, Series> = HashMap::new();
        let parsed: Vec<HashMap<Series, Counters>> = read
            .into_iter()
            .map(|f| parse(ledger, f, &mut known))
            .collect();
        let mut book = ledger.book.lock().unwrap_or_else(|p| p.into_inner());
        let mut parsed = parsed.into_iter();
        for (index, map) in m.iter().zip(parsed.by_ref()) {
            book.minutes.put(*index, map);
            minutes.insert(*index, now);
        }
        for (index, map) in h.iter().zip(parsed) {
            book.hours.put(*index, map);
            hours.insert(*index, now);
        }
        drop(book);
        prune(minutes, now.div_euclid(MINUTE_MS), MINUTES);
        prune(hours, now.div_euclid(HOUR_MS), HOURS);
        Ok(())
    }
}

/// Buckets of one ring from `from_ms` to `now` to read: never read, or read while still open
/// (before its end and the grace) and not within the last second.
fn wanted(read: &HashMap<i64, i64>, from_ms: i64, now: i64, width: i64, len: usize) -> Vec<i64> {
    let last = now.div_euclid(width);
    let first = from_ms.div_euclid(width).max(last - len as i64 + 1);
    (first..=last)
        .filter(|i| match read.get(i) {
            None => true,
            Some(at) => {
                let closed = *at >= (i + 1) * width + SETTLE_GRACE_MS;
                !closed && now - at >= 1000
            }
        })
        .collect()
}

fn prune(read: &mut HashMap<i64, i64>, last: i64, len: usize) {
    if read.len() > len {
        read.retain(|i, _| *i > last - len as i64);
    }
}

fn field_name(ledger: &Ledger, s: Series) -> String {
    format!(
        "{}|{}|{}|{}",
        ledger.projects.name(s.project),
        ledger.models.name(s.model),
        ledger.keys.name(s.key),
        ledger.clients.name(s.client)
    )
}

/// A bucket's fields back into series (a field this version cannot read is skipped); `known`
/// remembers the series of each field name already seen.
fn parse(
    ledger: &Ledger,
    fields: Vec<(String, String)>,
    known: &mut HashMap<String, Series>,
) -> HashMap<Series, Counters> {
    let mut out: HashMap<Series, Counters> = HashMap::with_capacity(fields.len());
    for (name, packed) in fields {
        let Some(counters) = Counters::unpack(&packed) else {
            continue;
        };
        let series = match known.get(&name) {
            Some(s) => *s,
            None => {
                let mut parts = name.splitn(4, '|');
                let (Some(p), Some(m), Some(k), Some(c)) =
                    (parts.next(), parts.next(), parts.next(), parts.next())
                else {
                    continue;
                };
                let s = Series {
                    project: ledger.projects.id(p, true),
                    model: ledger.models.id(m, true),
                    key: ledger.keys.id(k, true),
                    client: ledger.clients.id(c, true),
                };
                // Bounded by the names the dimensions keep apart.
                if known.len() < 1 << 20 {
                    known.insert(name, s);
                }
                s
            }
        };
        out.entry(series).or_default().add(&counters);
    }
    out
}

fn fields_of(b: &RiderBatch) -> usize {
    b.hashes.iter().map(|h| h.fields.len()).sum()
}
