//! The status document's `batches`: each project's open Batch API jobs (every replica's, as the
//! store keeps them, creations in flight included), how many against `limits.batch_concurrent`
//! and their enqueued tokens per model against `limits.batch_enqueued_tokens`. A client key
//! sees only its own jobs.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::quota::batch;
use crate::state::AppState;

/// One project's open batch jobs.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct BatchesView {
    pub project: String,
    /// Jobs open now (and creations waiting for Google's answer).
    pub jobs: u64,
    /// `limits.batch_concurrent`.
    pub jobs_limit: u64,
    /// Their estimated enqueued tokens, per model.
    pub enqueued_tokens: BTreeMap<String, u64>,
    /// `limits.batch_enqueued_tokens` (per model).
    pub enqueued_tokens_limit: u64,
}

/// The projects with open jobs, by name; only `client`'s jobs when given (a client's own view).
/// A store failure reads as none open.
pub async fn views(state: &AppState, client: Option<&str>) -> Vec<BatchesView> {
    let entries = state.store.batch_entries().await.unwrap_or_default();
    let now = chrono::Utc::now().timestamp_millis();
    let mine = entries
        .iter()
        .filter(|(_, j)| client.is_none_or(|c| j.client.as_deref() == Some(c)))
        .map(|(f, j)| (f.as_str(), j));
    let limits = &state.config.limits;
    batch::per_project(mine, now)
        .into_iter()
        .map(|(project, (jobs, enqueued_tokens))| BatchesView {
            project,
            jobs,
            jobs_limit: limits.batch_concurrent,
            enqueued_tokens,
            enqueued_tokens_limit: limits.batch_enqueued_tokens,
        })
        .collect()
}
