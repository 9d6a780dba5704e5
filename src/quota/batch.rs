//! The Batch API's open jobs as the quota stores keep them ([`BatchJobs::batch_reserve`]
//! and the calls after it): one entry per job (`batches/ID`), per creation still waiting for
//! Google's answer (`hold:N`, with a lease, so a replica that died mid-creation frees it), and
//! per finished job whose results file is still to be costed (`file:files/ID`). Every entry
//! names a configured project and a job this proxy created, so the table is bounded by
//! `limits.batch_concurrent` x projects (twice that with the results files waiting), never by
//! what clients send. No key or client key is in an entry: key ids, project, model and names.

use serde::{Deserialize, Serialize};

use async_trait::async_trait;

use super::StoreError;

/// The field prefix of a creation's hold.
pub const HOLD: &str = "hold:";
/// The field prefix of a finished job's results file, until the file is costed.
pub const RESULTS: &str = "file:";
/// A results file waiting to be costed is forgotten after this long (Google keeps files 48 h).
pub const RESULTS_TTL_MS: i64 = 3 * 86_400_000;

/// One open batch job (or a creation's hold, or a results file to cost), as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchJob {
    /// The project holding it.
    #[serde(rename = "p")]
    pub project: String,
    /// The key id it was created with (a hash; never the key).
    #[serde(rename = "k")]
    pub kid: String,
    #[serde(rename = "m")]
    pub model: String,
    /// Its estimated enqueued tokens.
    #[serde(rename = "t")]
    pub tokens: u64,
    /// A hold's lease end, or a results file's expiry (Unix ms); `None` for an open job.
    #[serde(rename = "u", default, skip_serializing_if = "Option::is_none")]
    pub until_ms: Option<i64>,
    /// Its client in the usage ledger (`admin`, a client's name; `None`: anonymous).
    #[serde(rename = "c", default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    /// Who created it (the affinity's creator): a results file is theirs.
    #[serde(rename = "o", default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// What was reserved from its client's budgets at creation, until its results are costed.
    #[serde(rename = "b", default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<BatchBudget>,
}

/// A batch job's reservation in its client's budget counters: the micro-dollars added to its
/// day `day` and month `month` at creation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchBudget {
    #[serde(rename = "n")]
    pub name: String,
    #[serde(rename = "r")]
    pub micros: u64,
    #[serde(rename = "d")]
    pub day: i64,
    #[serde(rename = "mo")]
    pub month: i64,
}

/// A project that may take a new batch job, with the key that would create it.
#[derive(Debug, Clone)]
pub struct BatchCandidate {
    pub project: String,
    pub kid: String,
}

/// A batch creation asking for room: the job (its project and key left empty: the store fills
/// them with the chosen candidate's), where it may go, and the quotas it is held to.
#[derive(Debug, Clone)]
pub struct BatchReserve {
    pub job: BatchJob,
    pub candidates: Vec<BatchCandidate>,
    /// `limits.batch_concurrent`: jobs at once per project.
    pub concurrent: u64,
    /// `limits.batch_enqueued_tokens`: enqueued tokens per project and model.
    pub enqueued_tokens: u64,
    /// How long the hold lasts if the creation never reports back.
    pub lease_ms: u64,
}

/// Whether an entry holds batch quota (an open job, or a creation's hold still in its lease),
/// as opposed to a results file waiting to be costed.
pub fn holds_quota(field: &str, job: &BatchJob, now_ms: i64) -> bool {
    if field.starts_with(RESULTS) {
        return false;
    }
    !field.starts_with(HOLD) || job.until_ms.is_none_or(|u| u > now_ms)
}

/// Whether an entry has lapsed (a hold past its lease, a results file past its time).
pub fn lapsed(field: &str, job: &BatchJob, now_ms: i64) -> bool {
    (field.starts_with(HOLD) || field.starts_with(RESULTS))
        && job.until_ms.is_some_and(|u| u <= now_ms)
}

/// The candidate to take a job of `tokens` for `model`, given what every entry holds: the one
/// with the most token room among those under both quotas (ties: fewer open jobs, then the
/// candidates' order). The memory store's choice; `batch_reserve.lua` makes the same one.
pub fn choose<'a>(
    req: &BatchReserve,
    entries: impl Iterator<Item = (&'a str, &'a BatchJob)> + Clone,
    now_ms: i64,
) -> Option<usize> {
    let mut best: Option<(usize, u64, u64)> = None;
    for (i, c) in req.candidates.iter().enumerate() {
        let (mut jobs, mut enqueued) = (0u64, 0u64);
        for (field, j) in entries.clone() {
            if j.project == c.project && holds_quota(field, j, now_ms) {
                jobs += 1;
                if j.model == req.job.model {
                    enqueued = enqueued.saturating_add(j.tokens);
                }
            }
        }
        if jobs >= req.concurrent || enqueued.saturating_add(req.job.tokens) > req.enqueued_tokens {
            continue;
        }
        let room = req.enqueued_tokens - enqueued;
        if best.is_none_or(|(_, r, j)| room > r || (room == r && jobs < j)) {
            best = Some((i, room, jobs));
        }
    }
    best.map(|(i, _, _)| i)
}

/// Open batch jobs (and creations in flight) per project: how many, and their enqueued tokens
/// per model, for the status view.
pub fn per_project<'a>(
    entries: impl Iterator<Item = (&'a str, &'a BatchJob)>,
    now_ms: i64,
) -> std::collections::BTreeMap<String, (u64, std::collections::BTreeMap<String, u64>)> {
    let mut out: std::collections::BTreeMap<
        String,
        (u64, std::collections::BTreeMap<String, u64>),
    > = Default::default();
    for (field, j) in entries {
        if !holds_quota(field, j, now_ms) {
            continue;
        }
        let e = out.entry(j.project.clone()).or_default();
        e.0 += 1;
        *e.1.entry(j.model.clone()).or_default() += j.tokens;
    }
    out
}

/// Batch jobs, their creation holds and results files, shared by every replica ([`self`]).
/// A store that keeps none answers every call with an error.
#[async_trait]
pub trait BatchJobs: Send + Sync {
    /// Room for a new batch job ([`self`]): the candidate (its position in `req`) with the
    /// most room under `req`'s quotas, counting every replica's open jobs, held for it as
    /// `hold:N` (the name returned) until [`BatchJobs::batch_open`] or the hold's lease ends.
    /// `None`: no candidate has room; nothing was written.
    async fn batch_reserve(
        &self,
        _req: &BatchReserve,
    ) -> Result<Option<(usize, String)>, StoreError> {
        Err(no_batches())
    }
    /// Hold `hold` became batch job `name` (`job`, with its owner): it holds its project's
    /// batch quota until it is taken ([`BatchJobs::batch_take`]).
    async fn batch_open(
        &self,
        _hold: &str,
        _name: &str,
        _job: &BatchJob,
    ) -> Result<(), StoreError> {
        Err(no_batches())
    }
    /// Remove an entry (a job, a hold, a results file), handing it to exactly one caller
    /// across every replica sharing the store.
    async fn batch_take(&self, _field: &str) -> Result<Option<BatchJob>, StoreError> {
        Err(no_batches())
    }
    /// A finished job's results file (`files/ID`) to cost when it is downloaded: kept until
    /// taken or [`RESULTS_TTL_MS`], at most `cap` per project (the oldest go first).
    async fn batch_results(
        &self,
        _file: &str,
        _job: &BatchJob,
        _cap: u64,
    ) -> Result<(), StoreError> {
        Err(no_batches())
    }
    /// Every entry (jobs, holds, results files), by field.
    async fn batch_entries(&self) -> Result<Vec<(String, BatchJob)>, StoreError> {
        Err(no_batches())
    }
    /// One entry, if it is kept and not lapsed (a results file's download asks for its own).
    async fn batch_entry(&self, _field: &str) -> Result<Option<BatchJob>, StoreError> {
        Err(no_batches())
    }
}

fn no_batches() -> StoreError {
    StoreError::Protocol("this store keeps no batch jobs".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(p: &str, m: &str, t: u64) -> BatchJob {
        BatchJob {
            project: p.into(),
            kid: "k".into(),
            model: m.into(),
            tokens: t,
            until_ms: None,
            client: None,
            owner: None,
            budget: None,
        }
    }

    #[test]
    fn the_choice_takes_the_most_token_room_under_both_quotas_and_ignores_lapsed_holds() {
        let req = BatchReserve {
            job: job("", "m", 50),
            candidates: ["p1", "p2"]
                .iter()
                .map(|p| BatchCandidate {
                    project: (*p).into(),
                    kid: "k".into(),
                })
                .collect(),
            concurrent: 2,
            enqueued_tokens: 100,
            lease_ms: 1000,
        };
        let mut lapsed_hold = job("p2", "m", 90);
        lapsed_hold.until_ms = Some(5);
        let entries = [
            ("batches/a".to_string(), job("p1", "m", 10)),
            ("hold:1".to_string(), lapsed_hold),
            ("file:files/x".to_string(), job("p2", "m", 90)),
        ];
        let it = entries.iter().map(|(f, j)| (f.as_str(), j));
        // p2's hold lapsed and its results file holds nothing: p2 has all its room.
        assert_eq!(choose(&req, it.clone(), 10), Some(1));
        // Before the hold lapsed p2 had 10 left: p1 (90 left) takes it.
        assert_eq!(choose(&req, it.clone(), 1), Some(0));
        let view = per_project(it, 10);
        assert_eq!(view.len(), 1);
        assert_eq!(view["p1"].0, 1);
    }
}
