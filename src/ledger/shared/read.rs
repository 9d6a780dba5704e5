//! Reading the shared ledger back: the buckets a query needs copied from Redis into this
//! replica's rings, a closed bucket once, an open one at most once a second, and every bucket
//! again when some replica wrote late (after an outage).

use std::collections::HashMap;

use crate::hashing::Map;

use super::super::Ledger;
use super::super::book::{Counters, HOUR_MS, HOURS, MINUTE_MS, MINUTES, Series};
use super::super::names;
use super::{SETTLE_GRACE_MS, Shared};
use crate::quota::StoreError;

/// When each bucket was last read from Redis (Unix ms), per ring, and the `late` counter seen.
#[derive(Default)]
pub(super) struct Reads {
    minutes: HashMap<i64, i64>,
    hours: HashMap<i64, i64>,
    late: Option<String>,
}

impl Shared {
    /// When the shared history starts: the first write any replica made.
    pub(crate) async fn since(&self) -> Option<i64> {
        if let Some(s) = *self.since.lock() {
            return Some(s);
        }
        let read = self.io.get("led:since").await.ok()??.parse().ok()?;
        *self.since.lock() = Some(read);
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
        // A replica wrote into buckets others may hold as final: read everything again.
        let late = self.io.get("led:late").await?;
        if late != reads.late {
            reads.minutes.clear();
            reads.hours.clear();
            reads.late = late;
        }
        let Reads { minutes, hours, .. } = &mut *reads;
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
        let parsed: Vec<Map<Series, Counters>> = read
            .into_iter()
            .map(|f| parse(ledger, f, &mut known))
            .collect();
        let mut book = ledger.book.lock();
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

/// A bucket's fields back into series (a field this version cannot read is skipped); `known`
/// remembers the series of each field name already seen.
fn parse(
    ledger: &Ledger,
    fields: Vec<(String, String)>,
    known: &mut HashMap<String, Series>,
) -> Map<Series, Counters> {
    let mut out: Map<Series, Counters> =
        Map::with_capacity_and_hasher(fields.len(), Default::default());
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
                let (m, asked) = match m.split_once('<') {
                    Some((m, a)) => (m, ledger.models.id(a, true)),
                    None => (m, names::NONE_ID),
                };
                let s = Series {
                    project: ledger.projects.id(p, true),
                    model: ledger.models.id(m, true),
                    key: ledger.keys.id(k, true),
                    client: ledger.clients.id(c, true),
                    asked,
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
