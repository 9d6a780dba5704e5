//! The batch jobs of one replica's memory ([`BatchJobs`], [`crate::quota::batch`]): the same
//! entries Redis keeps, in a map under one lock.

use std::collections::HashMap;

use async_trait::async_trait;

use super::MemoryStore;
use crate::quota::StoreError;
use crate::quota::batch::{self, BatchJob, BatchJobs, BatchReserve};

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

#[async_trait]
impl BatchJobs for MemoryStore {
    async fn batch_reserve(
        &self,
        req: &BatchReserve,
    ) -> Result<Option<(usize, String)>, StoreError> {
        let now = self.clock.now_ms();
        let mut jobs = self.batches.lock();
        jobs.prune(now);
        let Some(i) = batch::choose(req, jobs.entries.iter().map(|(f, j)| (f.as_str(), j)), now)
        else {
            return Ok(None);
        };
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
        Ok(Some((i, hold)))
    }

    async fn batch_open(&self, hold: &str, name: &str, job: &BatchJob) -> Result<(), StoreError> {
        let mut jobs = self.batches.lock();
        jobs.entries.remove(hold);
        let job = BatchJob {
            until_ms: None,
            ..job.clone()
        };
        jobs.entries.insert(name.to_string(), job);
        Ok(())
    }

    async fn batch_take(&self, field: &str) -> Result<Option<BatchJob>, StoreError> {
        Ok(self.batches.lock().entries.remove(field))
    }

    async fn batch_results(&self, file: &str, job: &BatchJob, cap: u64) -> Result<(), StoreError> {
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
        Ok(())
    }

    async fn batch_entry(&self, field: &str) -> Result<Option<BatchJob>, StoreError> {
        let now = self.clock.now_ms();
        let mut jobs = self.batches.lock();
        jobs.prune(now);
        Ok(jobs.entries.get(field).cloned())
    }

    async fn batch_entries(&self) -> Result<Vec<(String, BatchJob)>, StoreError> {
        let now = self.clock.now_ms();
        let mut jobs = self.batches.lock();
        jobs.prune(now);
        Ok(jobs
            .entries
            .iter()
            .map(|(f, j)| (f.clone(), j.clone()))
            .collect())
    }
}
