//! The ledger's numbers in memory: [`Counters`] per series, and the rings that hold them per
//! minute (48 h) and per hour (35 days), fixed in size: a bucket's slot is reused once it is
//! older than the ring.

use crate::hashing::Map;

/// Minutes kept: 48 hours.
pub const MINUTES: usize = 48 * 60;
/// Hours kept: 35 days.
pub const HOURS: usize = 35 * 24;
pub const MINUTE_MS: i64 = 60_000;
pub const HOUR_MS: i64 = 3_600_000;

/// What a series counts, in this order everywhere (memory, Redis, JSON).
pub const FIELDS: [&str; 17] = [
    "requests",
    "upstream_429",
    "refused",
    "errors",
    "input_tokens",
    "cached_tokens",
    "output_tokens",
    "thinking_tokens",
    "tool_tokens",
    "cost_usd",
    "list_cost_usd",
    "unpriced_requests",
    "cache_hits",
    "saved_tokens",
    "saved_cost_usd",
    "images",
    "video_seconds",
];

/// Field positions in [`Counters`].
pub mod field {
    pub const REQUESTS: usize = 0;
    pub const UPSTREAM_429: usize = 1;
    pub const REFUSED: usize = 2;
    pub const ERRORS: usize = 3;
    pub const INPUT: usize = 4;
    pub const CACHED: usize = 5;
    pub const OUTPUT: usize = 6;
    pub const THINKING: usize = 7;
    pub const TOOL: usize = 8;
    /// Nano-USD (1e-9): integer sums stay exact.
    pub const COST: usize = 9;
    pub const LIST_COST: usize = 10;
    pub const UNPRICED: usize = 11;
    /// Requests answered from the response cache (no quota spent, no upstream call).
    pub const CACHE_HITS: usize = 12;
    /// Tokens those answers would have used (input, output, thinking, tool).
    pub const SAVED_TOKENS: usize = 13;
    /// What they would have cost at list price (nano-USD).
    pub const SAVED_COST: usize = 14;
    /// Images generated (image models), billed per image.
    pub const IMAGES: usize = 15;
    /// Seconds of video generated (video models), billed per second.
    pub const VIDEO_SECONDS: usize = 16;
}

/// One series' counts over one bucket (or a sum of them). Costs are in nano-USD.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters(pub [u64; FIELDS.len()]);

impl Counters {
    pub fn one(field: usize) -> Counters {
        let mut c = Counters::default();
        c.0[field] = 1;
        c
    }

    pub fn add(&mut self, o: &Counters) {
        for (a, b) in self.0.iter_mut().zip(o.0.iter()) {
            *a = a.saturating_add(*b);
        }
    }

    pub fn is_zero(&self) -> bool {
        self.0.iter().all(|v| *v == 0)
    }

    /// `"1 0 0 ..."`, the form kept in Redis; trailing zeros left out (they read back as 0).
    pub fn pack(&self) -> String {
        use std::fmt::Write;
        let used = self.0.iter().rposition(|v| *v != 0).map_or(1, |i| i + 1);
        let mut s = String::with_capacity(48);
        for (i, v) in self.0[..used].iter().enumerate() {
            if i > 0 {
                s.push(' ');
            }
            let _ = write!(s, "{v}");
        }
        s
    }

    /// The inverse of [`Counters::pack`]; missing trailing fields are 0 (a shorter record
    /// written by an older version), anything unreadable is `None`.
    pub fn unpack(s: &str) -> Option<Counters> {
        let mut c = Counters::default();
        for (i, part) in s.split_ascii_whitespace().enumerate() {
            if i >= FIELDS.len() {
                break;
            }
            c.0[i] = part.parse().ok()?;
        }
        Some(c)
    }
}

/// A series: (project, model, key, client) as ids of interned names, and the model the
/// requests asked for when a fallback served them with `model` (`NONE_ID`: the same).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Series {
    pub project: u32,
    pub model: u32,
    pub key: u32,
    pub client: u32,
    pub asked: u32,
}

/// One bucket: its index (time / width) and every series' counts in it.
#[derive(Debug, Default)]
pub struct Slot {
    pub index: i64,
    pub series: Map<Series, Counters>,
}

/// Buckets of one width, the last `len` of them.
#[derive(Debug)]
pub struct Ring {
    pub width_ms: i64,
    slots: Vec<Slot>,
}

impl Ring {
    pub fn new(width_ms: i64, len: usize) -> Ring {
        Ring {
            width_ms,
            slots: (0..len)
                .map(|_| Slot {
                    index: i64::MIN,
                    series: Map::default(),
                })
                .collect(),
        }
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    pub fn index_of(&self, t_ms: i64) -> i64 {
        t_ms.div_euclid(self.width_ms)
    }

    fn position(&self, index: i64) -> usize {
        index.rem_euclid(self.slots.len() as i64) as usize
    }

    /// The slot of bucket `index`, emptied first when it held an older bucket; `None` when the
    /// slot already holds a newer one (`index` is older than the ring).
    pub fn slot_mut(&mut self, index: i64) -> Option<&mut Slot> {
        let p = self.position(index);
        let slot = &mut self.slots[p];
        if slot.index > index {
            return None;
        }
        if slot.index < index {
            slot.index = index;
            slot.series.clear();
        }
        Some(slot)
    }

    /// Add to a series in bucket `index`.
    pub fn add(&mut self, index: i64, series: Series, c: &Counters) {
        if let Some(slot) = self.slot_mut(index) {
            slot.series.entry(series).or_default().add(c);
        }
    }

    /// Bucket `index`, if the ring holds it.
    pub fn get(&self, index: i64) -> Option<&Slot> {
        let slot = &self.slots[self.position(index)];
        (slot.index == index).then_some(slot)
    }

    /// Replace bucket `index` whole (a copy read from Redis).
    pub fn put(&mut self, index: i64, series: Map<Series, Counters>) {
        if let Some(slot) = self.slot_mut(index) {
            slot.series = series;
        }
    }

    /// Series-bucket entries held (for the bounded-state tests).
    pub fn entries(&self) -> usize {
        self.slots.iter().map(|s| s.series.len()).sum()
    }
}

/// Both rings.
#[derive(Debug)]
pub struct Book {
    pub minutes: Ring,
    pub hours: Ring,
}

impl Default for Book {
    fn default() -> Self {
        Book {
            minutes: Ring::new(MINUTE_MS, MINUTES),
            hours: Ring::new(HOUR_MS, HOURS),
        }
    }
}

impl Book {
    /// Count `c` for `series` at `t_ms` in both rings.
    pub fn add(&mut self, t_ms: i64, series: Series, c: &Counters) {
        let m = self.minutes.index_of(t_ms);
        self.minutes.add(m, series, c);
        let h = self.hours.index_of(t_ms);
        self.hours.add(h, series, c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Series = Series {
        project: 0,
        model: 0,
        key: 0,
        client: 0,
        asked: 0,
    };

    #[test]
    fn a_slot_is_reused_when_its_bucket_falls_out_of_the_ring() {
        let mut r = Ring::new(MINUTE_MS, 3);
        r.add(10, S, &Counters::one(field::REQUESTS));
        r.add(13, S, &Counters::one(field::ERRORS));
        assert!(r.get(10).is_none(), "13 took 10's slot");
        assert_eq!(r.get(13).unwrap().series[&S].0[field::ERRORS], 1);
        // Older than what the slot holds: dropped, not mixed in.
        r.add(10, S, &Counters::one(field::REQUESTS));
        assert_eq!(r.get(13).unwrap().series[&S].0[field::REQUESTS], 0);
        assert_eq!(r.entries(), 1);
    }

    #[test]
    fn counters_pack_and_unpack() {
        let mut c = Counters::default();
        c.0[field::COST] = 123_456_789_012;
        c.0[field::REQUESTS] = 3;
        assert_eq!(Counters::unpack(&c.pack()), Some(c));
        assert_eq!(Counters::one(field::REQUESTS).pack(), "1");
        assert_eq!(Counters::default().pack(), "0");
        assert_eq!(Counters::unpack("1 2").unwrap().0[1], 2);
        assert_eq!(Counters::unpack("1 x"), None);
    }
}
