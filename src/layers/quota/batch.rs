//! The quota step's side of the Batch API ([`crate::batch`]): a batch creation goes out on the
//! key of the project with the most batch room in the shared store (a 429 when none has any),
//! holding that room, and its estimate in its client's budgets, from then; a job's answer read
//! through the proxy releases it when it says the job ended, and records what its results used
//! at batch prices (inline now, a results file when it is downloaded).

use bytes::Bytes;
use serde_json::Value;

use super::batch_cost::{Books, list_micros, record};
use super::client;
use crate::auth::Caller;
use crate::batch::{self, Hold};
use crate::error::ApiError;
use crate::layers::estimate::Estimated;
use crate::ledger::TokenUsage;
use crate::quota::batch::{BatchBudget, BatchCandidate, BatchJob, BatchReserve};
use crate::route::QuotaFamily;
use crate::state::Core;

/// For a batch creation: the key to create it with, chosen by batch room in the store every
/// replica shares, and the hold on that room (and on its client's budgets); `None` for any
/// other call.
pub(super) async fn choose(
    state: &Core,
    caller: &Caller,
    est: &Estimated,
    body: &Bytes,
    avoid: &[usize],
) -> Option<Result<(usize, Hold), ApiError>> {
    if !batch::is_create(&est.route) {
        return None;
    }
    let model = est.route.model.as_deref()?;
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let tokens = match batch::inline_tokens(&v) {
        Some(t) => t,
        None => file_tokens(state, batch::input_file(&v)).await,
    };
    let budget = match budget(state, caller, est, model, tokens, batch::requests_count(&v)).await {
        Ok(b) => b,
        Err(e) => return Some(Err(e)),
    };
    let mut candidates = state
        .pool
        .candidates(model, QuotaFamily::Generate, est.pinned);
    // The Batch API is AI Studio's: a Vertex entry never takes one.
    if state.pool.has_vertex {
        candidates.retain(|c| state.pool.keys[c.index].vertex.is_none());
    }
    if candidates.len() > avoid.len() {
        candidates.retain(|c| !avoid.contains(&c.index));
    }
    let limits = &state.config.limits;
    let req = BatchReserve {
        job: BatchJob {
            project: String::new(),
            kid: String::new(),
            model: model.to_string(),
            tokens,
            until_ms: None,
            client: ledger_name(caller),
            owner: None,
            budget,
        },
        candidates: candidates
            .iter()
            .map(|c| BatchCandidate {
                project: c.project.to_string(),
                kid: c.kid.to_string(),
            })
            .collect(),
        concurrent: limits.batch_concurrent,
        enqueued_tokens: limits.batch_enqueued_tokens,
        lease_ms: (state.config.upstream.request_timeout + HOLD_MARGIN).as_millis() as u64,
    };
    let reserved = if candidates.is_empty() {
        Ok(None)
    } else {
        state.store.batch_reserve(&req).await
    };
    let refused = match reserved {
        Ok(Some((i, hold))) => {
            let c = &candidates[i];
            let job = BatchJob {
                project: c.project.to_string(),
                kid: c.kid.to_string(),
                ..req.job
            };
            return Some(Ok((c.index, Hold::new(state.store.clone(), hold, job))));
        }
        Ok(None) => ApiError::PoolExhausted {
            message: format!(
                "No project of this proxy's pool has batch quota left for {model}: {} batch jobs at once per project (limits.batch_concurrent), {} enqueued tokens per project and model (limits.batch_enqueued_tokens); this batch is estimated at {tokens} tokens. Retry when a batch ends.",
                limits.batch_concurrent, limits.batch_enqueued_tokens
            ),
            retry_after_ms: 60_000,
        },
        Err(e) => ApiError::Unavailable(format!(
            "The quota store could not take this batch job's quota ({e}); retry shortly."
        )),
    };
    if let Some(b) = &req.job.budget {
        batch::refund(&*state.store, b).await;
    }
    state.metrics.refused("batch_quota");
    Some(Err(refused))
}

/// How long a creation's hold outlives `upstream.request_timeout` (its replica died before
/// Google answered).
const HOLD_MARGIN: std::time::Duration = std::time::Duration::from_secs(60);

/// The caller as the usage ledger names it (a client's name, `admin`; `None`: anonymous).
fn ledger_name(caller: &Caller) -> Option<String> {
    match caller {
        Caller::Client(c) => Some(c.name.to_string()),
        Caller::Admin => Some("admin".to_string()),
        Caller::Anonymous => None,
    }
}

/// Tokens a file-input batch enqueues: its input file's size (known when it was uploaded
/// through this proxy) at ~4 characters a token; 0 when the proxy never saw its size.
async fn file_tokens(state: &Core, file: Option<&str>) -> u64 {
    let Some(file) = file else { return 0 };
    match crate::pool::affinity::pin(&*state.store, file)
        .await
        .and_then(|p| p.size)
    {
        Some(size) => batch::file_tokens(size),
        None => {
            tracing::debug!(
                file,
                "a batch input file's size is unknown: its job counts against the jobs at once only"
            );
            0
        }
    }
}

/// A client with budgets may create a batch job only within them: this job's estimate at batch
/// prices (its input, and [`client::DEFAULT_OUTPUT_TOKENS`] of output per request) is reserved
/// in the store's budget counters, the same ones admission reads, when it fits what the client
/// has spent and reserved; it is settled against its results' cost when they are seen. A 429
/// naming the budget otherwise.
async fn budget(
    state: &Core,
    caller: &Caller,
    est: &Estimated,
    model: &str,
    tokens: u64,
    requests: u64,
) -> Result<Option<BatchBudget>, ApiError> {
    let Some(mut part) = client::part(state, caller, &est.route, &est.estimate, model) else {
        return Ok(None);
    };
    if !part.has_budgets() {
        return Ok(None);
    }
    let usage = TokenUsage {
        input: tokens,
        output: requests.saturating_mul(client::DEFAULT_OUTPUT_TOKENS),
        ..TokenUsage::default()
    };
    part.cost_micros = list_micros(&state.config.prices, model, &usage);
    match state.store.client_budget_reserve(&part).await {
        Ok(None) => Ok(Some(BatchBudget {
            name: part.name.to_string(),
            micros: part.cost_micros,
            day: part.period.day,
            month: part.period.month,
        })),
        Ok(Some((limit, _, retry))) => {
            state.clients.note_refusal(&part.name, limit.as_str());
            state.metrics.client_refused(&part.name, limit.as_str());
            Err(client::refusal(&part, model, limit, retry))
        }
        Err(e) => Err(ApiError::Unavailable(format!(
            "The quota store could not reserve this batch job's cost in its client's budgets ({e}); retry shortly."
        ))),
    }
}

/// A creation's answer: the job it names holds its room until it ends.
pub(super) async fn created(hold: Hold, answer: &[u8], owner: &str) {
    let Ok(v) = serde_json::from_slice::<Value>(answer) else {
        return;
    };
    let name = [v.get("name"), v.pointer("/metadata/name")]
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .find(|n| n.starts_with("batches/"));
    match name {
        Some(n) => hold.opened(n, owner).await,
        None => tracing::warn!(
            "a batch creation's answer names no batches/ID: its batch quota is not held"
        ),
    }
}

/// A job deleted (or that Google no longer knows): its quota released. Its budget reservation
/// stays counted (what it ran before it went is not known).
pub(super) async fn forget(state: &Core, name: &str) {
    if let Err(e) = state.store.batch_take(name).await {
        tracing::warn!(error = %e, batch = name, "could not release a batch job's quota");
    }
}

/// A job's answer read (get, cancel): when it says the job ended, its room is released (by
/// exactly one replica) and its inline results' usage recorded at batch prices under the key
/// and client that created it; a results file is kept to be costed when downloaded.
pub(super) async fn observed(state: &Core, name: &str, answer: &[u8]) {
    let Ok(v) = serde_json::from_slice::<Value>(answer) else {
        return;
    };
    if !batch::ended(&v) {
        return;
    }
    let job = match state.store.batch_take(name).await {
        Ok(Some(job)) => job,
        Ok(None) => return,
        Err(e) => {
            tracing::warn!(error = %e, batch = name, "could not release a finished batch job: asked again next time");
            return;
        }
    };
    tracing::info!(batch = name, project = %job.project, model = %job.model, state = batch::state_of(&v).unwrap_or("done"), "batch job ended: its batch quota released");
    // Results written to a file are in the job's project: the file goes with its key, and is
    // costed when it is downloaded through the proxy.
    if let Some(file) = batch::results_file(&v) {
        if let Some(owner) = &job.owner {
            let named = serde_json::json!({ "name": file }).to_string();
            crate::pool::affinity::remember_created(
                &*state.store,
                named.as_bytes(),
                &job.kid,
                owner,
            )
            .await;
        }
        let cap = state.config.limits.batch_concurrent;
        if let Err(e) = state.store.batch_results(file, &job, cap).await {
            tracing::warn!(error = %e, batch = name, "could not keep a batch job's results file to cost");
        }
        return;
    }
    record(
        &Books::of(state),
        &job,
        batch::results_usage(&v),
        batch::results_count(&v),
    )
    .await;
}

/// Largest batch job answer the background check reads (inline results included).
const POLL_BODY_LIMIT: usize = 16 * 1024 * 1024;

/// Ask Google about every open batch job (every replica's: the store's), with the key that
/// created it: a job that ended is released and costed ([`observed`]), one Google no longer knows (404) is released. Jobs whose
/// key left the pool are released too (nobody can read them through this proxy any more).
pub async fn poll_once(state: &Core) {
    use http_body_util::BodyExt;
    let upstream = crate::upstream::Upstream::new(&state.config.upstream.url);
    let entries = match state.store.batch_entries().await {
        Ok(e) => e,
        Err(e) => {
            tracing::debug!(error = %e, "batch jobs not read from the store: checked next time");
            return;
        }
    };
    for (name, job) in entries {
        if !name.starts_with("batches/") {
            continue;
        }
        let Some((_, key)) = state.pool.by_kid(&job.kid) else {
            forget(state, &name).await;
            continue;
        };
        let path = format!("/v1beta/{name}");
        let outgoing = crate::upstream::Outgoing {
            method: &http::Method::GET,
            path: &path,
            query: None,
            headers: &http::HeaderMap::new(),
            body: Bytes::new(),
            bearer: false,
        };
        let Some(req) = crate::upstream::build_request(&upstream, outgoing, &key.headers) else {
            continue;
        };
        let timeout = state.config.upstream.request_timeout;
        let asked = async {
            let resp = state.upstream.clone().request(req).await.ok()?;
            let status = resp.status();
            let body = http_body_util::Limited::new(resp.into_body(), POLL_BODY_LIMIT)
                .collect()
                .await
                .ok()?
                .to_bytes();
            Some((status, body))
        };
        match tokio::time::timeout(timeout, asked).await {
            Ok(Some((status, body))) if status.is_success() => {
                observed(state, &name, &body).await;
            }
            Ok(Some((status, _))) if status == http::StatusCode::NOT_FOUND => {
                forget(state, &name).await;
            }
            _ => tracing::debug!(
                batch = name,
                "batch job check failed: asked again next time"
            ),
        }
    }
}
