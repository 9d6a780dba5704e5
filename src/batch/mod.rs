//! The Batch API counted: Google's batch answers read (a creation's requests and estimate, a
//! job's state, its inline results' usage, its results file), and a creation's [`Hold`] on its
//! project's batch quota. The open jobs themselves are the quota store's
//! ([`crate::quota::batch`]: in Redis, shared by every replica and kept across restarts),
//! chosen there by `limits.batch_concurrent` jobs and `limits.batch_enqueued_tokens` per model.

pub mod results;

use std::sync::Arc;

use serde_json::Value;

use crate::ledger::TokenUsage;
use crate::quota::QuotaStore;
use crate::quota::batch::{BatchBudget, BatchJob};
use crate::route::Route;

/// A creation's hold on its project's batch quota (and on its client's budgets): released
/// when dropped, unless the job was created ([`Hold::opened`]).
pub struct Hold {
    store: Arc<dyn QuotaStore>,
    /// The store's name of the hold (`hold:N`; empty: nothing held, the store was down).
    hold: String,
    /// The job as it will be kept: its project, key, model, tokens, client and budget.
    pub job: BatchJob,
    done: bool,
}

impl Hold {
    pub fn new(store: Arc<dyn QuotaStore>, hold: String, job: BatchJob) -> Hold {
        Hold {
            store,
            hold,
            job,
            done: false,
        }
    }

    /// The job was created under `name` (`batches/ID`) by `owner`: it holds the quotas until
    /// it is seen to end, in the store every replica shares.
    pub async fn opened(mut self, name: &str, owner: &str) {
        self.done = true;
        self.job.owner = Some(owner.to_string());
        if let Err(e) = self.store.batch_open(&self.hold, name, &self.job).await {
            tracing::warn!(error = %e, batch = name, "could not record an open batch job: its batch quota is held until the hold's lease ends");
        }
    }
}

impl Hold {
    /// Give the hold and its budget reservation back now, and wait for it (a creation tried
    /// again on another key reserves anew only once this one's room is free).
    pub async fn release(mut self) {
        self.done = true;
        give_back(&*self.store, &self.hold, self.job.budget.take()).await;
    }
}

/// A hold's room and budget reservation given back (the job was not created).
async fn give_back(store: &dyn QuotaStore, hold: &str, budget: Option<BatchBudget>) {
    if !hold.is_empty() {
        let _ = store.batch_take(hold).await;
    }
    if let Some(b) = budget {
        refund(store, &b).await;
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let (store, hold, budget) = (
            self.store.clone(),
            self.hold.clone(),
            self.job.budget.take(),
        );
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        rt.spawn(async move { give_back(&*store, &hold, budget).await });
    }
}

/// Give a batch job's budget reservation back (its creation failed).
pub async fn refund(store: &dyn QuotaStore, b: &BatchBudget) {
    let delta = -i64::try_from(b.micros).unwrap_or(i64::MAX);
    if let Err(e) = store
        .client_budget_adjust(&b.name, b.day, b.month, delta)
        .await
    {
        tracing::warn!(error = %e, client = %b.name, "could not give a batch reservation back: it stays counted");
    }
}

/// Whether a call creates a batch job of generation requests.
pub fn is_create(route: &Route) -> bool {
    route.action.as_deref() == Some("batchGenerateContent") && route.model.is_some()
}

/// The job a call names (`batches/ID`), if any.
pub fn named(route: &Route) -> Option<&str> {
    route
        .resource
        .as_deref()
        .filter(|r| r.starts_with("batches/"))
}

/// The job's state in an answer: the operation's `metadata.state`, or a bare batch's `state`.
pub fn state_of(answer: &Value) -> Option<&str> {
    answer
        .pointer("/metadata/state")
        .or_else(|| answer.get("state"))
        .and_then(Value::as_str)
}

/// Whether an answer says the job has ended (succeeded, failed, cancelled or expired).
pub fn ended(answer: &Value) -> bool {
    matches!(
        state_of(answer),
        Some(
            "BATCH_STATE_SUCCEEDED"
                | "BATCH_STATE_FAILED"
                | "BATCH_STATE_CANCELLED"
                | "BATCH_STATE_EXPIRED"
                | "JOB_STATE_SUCCEEDED"
                | "JOB_STATE_FAILED"
                | "JOB_STATE_CANCELLED"
                | "JOB_STATE_EXPIRED"
        )
    ) || answer.get("done").and_then(Value::as_bool) == Some(true)
}

/// A finished job's inline results (`response.inlinedResponses.inlinedResponses[]`, or the
/// same under `metadata.output` or `output`).
fn inlined(answer: &Value) -> Option<&Vec<Value>> {
    [
        "/response/inlinedResponses/inlinedResponses",
        "/metadata/output/inlinedResponses/inlinedResponses",
        "/output/inlinedResponses/inlinedResponses",
    ]
    .iter()
    .find_map(|p| answer.pointer(p).and_then(Value::as_array))
}

/// A creation's inline requests (`batch.inputConfig.requests.requests[]`, either spelling).
fn inline_requests(body: &Value) -> Option<&Vec<Value>> {
    body.pointer("/batch/inputConfig/requests/requests")
        .or_else(|| body.pointer("/batch/input_config/requests/requests"))
        .and_then(Value::as_array)
}

/// What a finished job's inline results used: the sum of each response's `usageMetadata`.
/// `None`: no inline results (a job whose results are a file, or not finished).
pub fn results_usage(answer: &Value) -> Option<TokenUsage> {
    let total = inlined(answer)?
        .iter()
        .filter_map(|item| item.pointer("/response/usageMetadata"))
        .filter_map(TokenUsage::from_usage_metadata)
        .fold(TokenUsage::default(), TokenUsage::plus);
    Some(total)
}

/// The file a finished job's results were written to (`files/ID`), if any.
pub fn results_file(answer: &Value) -> Option<&str> {
    [
        "/response/responsesFile",
        "/metadata/output/responsesFile",
        "/output/responsesFile",
    ]
    .iter()
    .find_map(|p| answer.pointer(p).and_then(Value::as_str))
}

/// How many requests a creation holds inline (1 for a file input: unknown here).
pub fn requests_count(body: &Value) -> u64 {
    inline_requests(body).map_or(1, |a| a.len() as u64)
}

/// How many inline results an answer holds.
pub fn results_count(answer: &Value) -> u64 {
    inlined(answer).map_or(0, |a| a.len() as u64)
}

/// Tokens a batch creation enqueues, estimated from its inline requests (characters of their
/// texts / 4, as the proxy estimates a generate call), else from the input file's size when
/// the caller knows it (`None`: a file input, estimated elsewhere).
pub fn inline_tokens(body: &Value) -> Option<u64> {
    let requests = inline_requests(body)?;
    let mut chars = 0u64;
    for r in requests {
        count_text(r, &mut chars);
    }
    Some(chars.div_ceil(4))
}

/// Tokens an input file of `size` bytes holds, at ~4 characters a token (its JSON included:
/// an estimate on the safe side).
pub fn file_tokens(size: u64) -> u64 {
    size.div_ceil(4)
}

/// The input file a creation names (`files/ID`), if it takes its requests from a file.
pub fn input_file(body: &Value) -> Option<&str> {
    body.pointer("/batch/inputConfig/fileName")
        .or_else(|| body.pointer("/batch/input_config/file_name"))
        .and_then(Value::as_str)
}

fn count_text(v: &Value, acc: &mut u64) {
    match v {
        Value::Object(o) => {
            for (k, v) in o {
                match (k.as_str(), v) {
                    ("text", Value::String(s)) => *acc += s.chars().count() as u64,
                    _ => count_text(v, acc),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| count_text(v, acc)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn inline_requests_are_estimated_and_a_file_input_is_named() {
        let body = json!({"batch": {"displayName": "x", "inputConfig": {"requests": {"requests": [
            {"request": {"contents": [{"parts": [{"text": "abcdefgh"}]}]}, "metadata": {"key": "1"}},
            {"request": {"contents": [{"parts": [{"text": "abcd"}]}]}}
        ]}}}});
        assert_eq!(inline_tokens(&body), Some(3));
        let file = json!({"batch": {"input_config": {"file_name": "files/in1"}}});
        assert_eq!(inline_tokens(&file), None);
        assert_eq!(input_file(&file), Some("files/in1"));
    }
}
