//! Admission in the memory store: choose a key whose project has room, by the request's
//! strategy, and reserve in its bucket, all under that bucket's lock.

use std::sync::Arc;

use super::super::{AdmitOutcome, AdmitRequest, Candidate, Reservation, Strategy, headroom};
use super::{MemoryStore, by_project};
use crate::error::LimitKind;

impl MemoryStore {
    /// One pass of admission: `None` when every project that had room lost it to a concurrent
    /// admission between the look and the reservation.
    pub(super) fn admit_pass(&self, req: &AdmitRequest) -> Option<AdmitOutcome> {
        let now = self.clock.now_ms();
        let di = self.days.at(now);
        // Usable keys by project, read under the disabled-keys lock and no longer.
        let groups: Vec<(Arc<str>, Vec<&Candidate>)> = {
            let disabled = self.disabled.lock();
            by_project(&req.candidates)
                .into_iter()
                .map(|(p, keys)| {
                    let keys = if disabled.is_empty() {
                        keys
                    } else {
                        keys.into_iter()
                            .filter(|c| !disabled.contains_key(&*c.kid))
                            .collect()
                    };
                    (p, keys)
                })
                .collect()
        };
        let mut earliest_hold: Option<u64> = None;
        // (project position, usable keys, bucket, headroom)
        let mut open = Vec::new();
        let mut refused: Option<(LimitKind, u64, u64)> = None;
        for (pos, (project, keys)) in groups.into_iter().enumerate() {
            if keys.is_empty() {
                continue;
            }
            if let Some(left) = self.held(&project, &req.model, now) {
                earliest_hold = Some(earliest_hold.map_or(left, |e| e.min(left)));
                continue;
            }
            let limits = keys[0].limits;
            let bucket = self.bucket(&project, &req.model, di.day);
            let mut b = bucket.lock();
            b.prune(now, di.day);
            match b.refusal(&limits, req.tokens, now, &di) {
                Some(r) => {
                    if refused.is_none_or(|w| r.2 < w.2) {
                        refused = Some(r);
                    }
                }
                None => {
                    let h = headroom(&limits, &b.usage(), req.tokens);
                    drop(b);
                    open.push((pos, keys, bucket, h, limits));
                }
            }
        }
        if open.is_empty() {
            return Some(match (refused, earliest_hold) {
                (Some((limit, limit_value, wait)), hold) => AdmitOutcome::Refused {
                    limit,
                    limit_value,
                    retry_after_ms: hold.map_or(wait, |h| h.min(wait)),
                },
                (None, hold) => AdmitOutcome::Unavailable {
                    retry_after_ms: hold,
                },
            });
        }
        // Order the open projects: most headroom first (ties in turn), or configuration order.
        let n = open.len();
        let start = (req.rotation % n as u64) as usize;
        let mut order: Vec<usize> = (0..n).map(|i| (start + i) % n).collect();
        if req.strategy == Strategy::Headroom {
            order.sort_by(|&a, &b| open[b].3.total_cmp(&open[a].3));
        } else {
            order.sort_by_key(|&i| open[i].0);
        }
        for i in order {
            let (_, keys, bucket, _, limits) = &open[i];
            let mut b = bucket.lock();
            b.prune(now, di.day);
            // Another task may have taken the room since we looked: check again under the lock.
            if b.refusal(limits, req.tokens, now, &di).is_some() {
                continue;
            }
            let id = b.reserve(req.tokens, now);
            let u = b.usage();
            let key = if req.strategy == Strategy::Ordered {
                keys[0]
            } else {
                keys[(req.rotation % keys.len() as u64) as usize]
            };
            return Some(AdmitOutcome::Admitted(Reservation {
                index: key.index,
                kid: key.kid.clone(),
                project: key.project.clone(),
                model: req.model.clone(),
                id,
                tokens: req.tokens,
                remaining_requests: limits.minute.saturating_sub(u.minute_requests),
                remaining_tokens: limits.token_minute.saturating_sub(u.minute_tokens),
                uncounted: false,
                local: false,
                client: None,
            }));
        }
        // Every open project filled up while we chose: the caller asks again.
        None
    }
}
