//! The memory store's table of (project, model) buckets, and the sweep that drops those whose
//! window emptied (their day counts kept aside until the quota day ends), so the table never
//! grows with the model names clients send.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;

use super::bucket::Bucket;

/// The memory store's maps looked up per request (these tables, the clients'): hashed with
/// foldhash (seeded per process), not SipHash; their keys are bounded by the configuration and
/// the sweep.
pub(super) use crate::hashing::Map;

/// Today's admissions of a (project, model) whose bucket was dropped with an empty window.
#[derive(Debug, Clone, Copy)]
pub(super) struct DayCount {
    pub(super) day: i64,
    pub(super) requests: u64,
}

/// Sweep no more often than once per this many live buckets: a sweep scans them all, and
/// doubling the threshold from what survives keeps its cost amortised O(1) per new bucket.
const MIN_SWEEP_AT: usize = 1024;

/// Every (project, model) the store knows of.
#[derive(Debug)]
pub(super) struct Tables {
    /// project -> model -> counters: two lookups by `&str`, no key built per request.
    pub(super) live: Map<Arc<str>, Map<String, Arc<Mutex<Bucket>>>>,
    pub(super) live_len: usize,
    /// Day counts of pairs whose bucket was dropped, until their quota day ends: no log, no
    /// mutex, a few dozen bytes each.
    pub(super) days: Map<Arc<str>, Map<Box<str>, DayCount>>,
    /// Every id a dropped bucket handed out is at most this. A bucket made later starts above
    /// it, so a late settlement of a dropped bucket's admission can never match a new entry.
    pub(super) retired_ids: u64,
    /// Sweep when `live_len` reaches this, or when the quota day changes.
    pub(super) sweep_at: usize,
    pub(super) swept_day: i64,
}

impl Tables {
    pub(super) fn new() -> Self {
        Tables {
            live: Map::default(),
            live_len: 0,
            days: Map::default(),
            retired_ids: 0,
            sweep_at: MIN_SWEEP_AT,
            swept_day: i64::MIN,
        }
    }

    /// Drop every bucket whose window is empty, keeping a non-zero day count aside, and every
    /// day count of a past day. A bucket another task holds a handle to is left for the next
    /// sweep: we hold the write lock, so no new handle can be taken while we look, and an
    /// unshared bucket can be read and dropped without anyone admitting on it meanwhile.
    pub(super) fn sweep(&mut self, now: i64, day: i64) {
        let Tables {
            live,
            days,
            retired_ids,
            ..
        } = self;
        for (project, models) in live.iter_mut() {
            models.retain(|model, bucket| {
                let Some(b) = Arc::get_mut(bucket) else {
                    return true;
                };
                let b = b.get_mut();
                b.prune(now, day);
                if !b.log.is_empty() {
                    // A burst leaves a large buffer behind; give most of it back.
                    if b.log.capacity() > 4 * b.log.len() + 64 {
                        b.log.shrink_to(2 * b.log.len());
                    }
                    return true;
                }
                *retired_ids = (*retired_ids).max(b.next_id);
                if b.day_requests > 0 {
                    days.entry(project.clone()).or_default().insert(
                        model.as_str().into(),
                        DayCount {
                            day: b.day,
                            requests: b.day_requests,
                        },
                    );
                }
                false
            });
        }
        live.retain(|_, models| !models.is_empty());
        for models in days.values_mut() {
            models.retain(|_, d| d.day == day);
        }
        days.retain(|_, models| !models.is_empty());
        self.live_len = self.live.values().map(HashMap::len).sum();
        self.sweep_at = (2 * self.live_len).max(MIN_SWEEP_AT);
        self.swept_day = day;
    }

    pub(super) fn get(&self, project: &str, model: &str) -> Option<Arc<Mutex<Bucket>>> {
        self.live.get(project)?.get(model).cloned()
    }
}
