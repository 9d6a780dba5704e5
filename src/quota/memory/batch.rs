//! The batch jobs and client budget moves of one replica's memory (the `QuotaStore` batch
//! calls, [`crate::quota::batch`]): the same entries Redis keeps, in a map under one lock.

use std::collections::HashMap;

use super::MemoryStore;
use crate::quota::batch::{self, BatchJob, BatchReserve};
use crate::quota::client::{ClientAdmit, ClientCaps, ClientLimit};

/// The entries, and the number of the next hold.
#[derive(Debug, Default)]
pub(super) struct Jobs {
    entries: HashMap<String, BatchJob>,
    next: u64,
}

impl Jobs {
    fn prune(&mut self, now: i64) {
        self.entries.retain(|f, j| !batch::lapsed(f, j, now));
    }
}

impl MemoryStore {
    pub(super) fn batch_reserve_now(&self, req: &BatchReserve) -> Option<(usize, String)> {
        let now = self.clock.now_ms();
        let mut jobs = self.batches.lock();
        jobs.prune(now);
        let i = batch::choose(req, jobs.entries.iter().map(|(f, j)| (f.as_str(), j)), now)?;
        jobs.next += 1;
        let hold = format!("{}{}", batch::HOLD, jobs.next);
        let c = &req.candidates[i];
        let lease = i64::try_from(req.lease_ms.min(crate::quota::MAX_HOLD_MS)).unwrap_or(0);
        let job = BatchJob {
            project: c.project.clone(),
            kid: c.kid.clone(),
            until_ms: Some(now.saturating_add(lease)),
            ..req.job.clone()
        };
        jobs.entries.insert(hold.clone(), job);
        Some((i, hold))
    }

    pub(super) fn batch_open_now(&self, hold: &str, name: &str, job: &BatchJob) {
        let mut jobs = self.batches.lock();
        jobs.entries.remove(hold);
        let job = BatchJob {
            until_ms: None,
            ..job.clone()
        };
        jobs.entries.insert(name.to_string(), job);
    }

    pub(super) fn batch_take_now(&self, field: &str) -> Option<BatchJob> {
        self.batches.lock().entries.remove(field)
    }

    pub(super) fn batch_results_now(&self, file: &str, job: &BatchJob, cap: u64) {
        let now = self.clock.now_ms();
        let mut jobs = self.batches.lock();
        jobs.prune(now);
        let field = format!("{}{file}", batch::RESULTS);
        let mut waiting: Vec<(i64, String)> = jobs
            .entries
            .iter()
            .filter(|(f, j)| f.starts_with(batch::RESULTS) && j.project == job.project)
            .filter(|(f, _)| **f != field)
            .map(|(f, j)| (j.until_ms.unwrap_or(0), f.clone()))
            .collect();
        waiting.sort();
        let over = (waiting.len() as u64 + 1).saturating_sub(cap.max(1)) as usize;
        for (_, f) in waiting.into_iter().take(over) {
            jobs.entries.remove(&f);
        }
        let job = BatchJob {
            until_ms: Some(now.saturating_add(batch::RESULTS_TTL_MS)),
            ..job.clone()
        };
        jobs.entries.insert(field, job);
    }

    pub(super) fn batch_entries_now(&self) -> Vec<(String, BatchJob)> {
        let now = self.clock.now_ms();
        let mut jobs = self.batches.lock();
        jobs.prune(now);
        jobs.entries
            .iter()
            .map(|(f, j)| (f.clone(), j.clone()))
            .collect()
    }

    /// [`crate::quota::QuotaStore::client_budget_reserve`]: its budgets only.
    pub(super) fn client_budget_reserve_now(
        &self,
        c: &ClientAdmit,
    ) -> Option<(ClientLimit, u64, u64)> {
        let c = ClientAdmit {
            caps: ClientCaps {
                daily_micros: c.caps.daily_micros,
                monthly_micros: c.caps.monthly_micros,
                ..ClientCaps::default()
            },
            ..c.clone()
        };
        self.client_budget_check_add(&c)
    }
}
