//! The quota step's side of the Batch API ([`crate::batch`]): a batch creation goes out on the
//! key of the project with the most batch room (a 429 when none has any), holding that room
//! from then; a job's answer read through the proxy releases it when it says the job ended,
//! and records what its inline results used at batch prices.

use std::sync::Arc;

use bytes::Bytes;
use serde_json::Value;

use super::client;
use crate::auth::Caller;
use crate::batch::{self, Hold, Quotas};
use crate::error::ApiError;
use crate::layers::estimate::Estimated;
use crate::ledger::{Billing, TokenUsage};
use crate::quota::{ClientLimit, ClientPeriod};
use crate::route::QuotaFamily;
use crate::state::AppState;

/// For a batch creation: the key to create it with, chosen by batch room, and the hold on that
/// room (and on its client's budgets); `None` for any other call.
pub(super) async fn choose(
    state: &AppState,
    caller: &Caller,
    est: &Estimated,
    body: &Bytes,
    avoid: &[usize],
    client: u32,
) -> Option<Result<(usize, Hold), ApiError>> {
    if !batch::is_create(&est.route) {
        return None;
    }
    let model = est.route.model.as_deref()?;
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    // A file input's size is not known here: its job counts against the jobs at once only.
    let tokens = batch::inline_tokens(&v).unwrap_or(0);
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
    let candidates: Vec<batch::Candidate> = candidates
        .into_iter()
        .map(|c| batch::Candidate {
            index: c.index,
            kid: c.kid,
            project: c.project,
        })
        .collect();
    let quotas = Quotas {
        concurrent: state.config.limits.batch_concurrent,
        enqueued_tokens: state.config.limits.batch_enqueued_tokens,
    };
    Some(
        state
            .batches
            .reserve(&candidates, model, tokens, client, budget, quotas)
            .inspect_err(|_| state.metrics.refused("batch_quota")),
    )
}

/// A client with budgets may create a batch job only within them: what it spent (the store's
/// count of its synchronous requests) and what its batch jobs hold (open jobs' reservations,
/// finished jobs' cost) plus this job's estimate at batch prices (its inline input, and
/// [`client::DEFAULT_OUTPUT_TOKENS`] of output per request) must fit. The estimate is held
/// with the job until its results are costed. A 429 naming the budget otherwise.
async fn budget(
    state: &AppState,
    caller: &Caller,
    est: &Estimated,
    model: &str,
    tokens: u64,
    requests: u64,
) -> Result<Option<(Arc<str>, u64)>, ApiError> {
    let Some(part) = client::part(state, caller, &est.route, &est.estimate, model) else {
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
    let estimate = state
        .config
        .prices
        .batch_cost(model, &usage, Billing::Paid)
        .list_nano
        .div_ceil(1000);
    let p = part.period;
    let spent = state
        .store
        .client_spend(&[(part.name.clone(), p.day, p.month)])
        .await
        .ok()
        .and_then(|v| v.first().copied())
        .unwrap_or((0, 0));
    let held = state.batches.client_held(&part.name, p.day, p.month);
    let now = chrono::Utc::now().timestamp_millis();
    for (limit, cap, used, ends) in [
        (
            ClientLimit::DailyBudget,
            part.caps.daily_micros,
            spent.0.saturating_add(held.0),
            p.day_end_ms,
        ),
        (
            ClientLimit::MonthlyBudget,
            part.caps.monthly_micros,
            spent.1.saturating_add(held.1),
            p.month_end_ms,
        ),
    ] {
        if let Some(cap) = cap
            && used.saturating_add(estimate) > cap
        {
            state.clients.note_refusal(&part.name, limit.as_str());
            state.metrics.client_refused(&part.name, limit.as_str());
            let retry = (ends - now).max(1000) as u64;
            return Err(client::refusal(&part, model, limit, retry));
        }
    }
    Ok(Some((part.name, estimate)))
}

/// A creation's answer: the job it names holds its room until it ends.
pub(super) fn created(hold: Hold, answer: &[u8], owner: &str) {
    let Ok(v) = serde_json::from_slice::<Value>(answer) else {
        return;
    };
    let name = [v.get("name"), v.pointer("/metadata/name")]
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .find(|n| n.starts_with("batches/"));
    match name {
        Some(n) => hold.opened(n, owner),
        None => tracing::warn!(
            "a batch creation's answer names no batches/ID: its batch quota is not held"
        ),
    }
}

/// A job's answer read (get, cancel): when it says the job ended, its room is released and its
/// inline results' usage recorded at batch prices under the key and client that created it.
pub(super) async fn observed(state: &AppState, name: &str, answer: &[u8]) {
    let Ok(v) = serde_json::from_slice::<Value>(answer) else {
        return;
    };
    let Some((open, usage)) = state.batches.observe(name, &v) else {
        return;
    };
    // Results written to a file are in the job's project: the file goes with its key.
    if let Some(file) = batch::results_file(&v)
        && let Some(owner) = &open.owner
    {
        let named = serde_json::json!({ "name": file }).to_string();
        crate::pool::affinity::remember_created(&*state.store, named.as_bytes(), &open.kid, owner)
            .await;
    }
    record(state, name, &v, open, usage);
}

/// A job seen ended: released already; its inline results costed.
fn record(state: &AppState, name: &str, v: &Value, open: batch::Open, usage: Option<TokenUsage>) {
    tracing::info!(batch = name, project = %open.project, model = %open.model, state = batch::state_of(v).unwrap_or("done"), "batch job ended: its batch quota released");
    let Some(usage) = usage else {
        return;
    };
    let results = batch::results_count(v);
    let series = state.ledger.series_of(
        Some(&open.project),
        &open.model,
        Some(&open.kid),
        open.client,
        true,
    );
    let billed = state
        .ledger
        .batch_results(series, &open.model, &open.project, results, &usage);
    // Its client's budgets: the reservation went with the job; its cost counts from now.
    if let Some((name, _)) = &open.budget {
        let tz = state
            .clients
            .load()
            .by_name(name)
            .map_or(state.config.limits.timezone, |c| {
                c.limits.tz(state.config.limits.timezone)
            });
        let p = ClientPeriod::at(tz, chrono::Utc::now().timestamp_millis());
        state
            .batches
            .settle(name, p.day, p.month, billed.div_ceil(1000));
    }
}

/// Largest batch job answer the background check reads (inline results included).
const POLL_BODY_LIMIT: usize = 16 * 1024 * 1024;

/// Ask Google about every open batch job, with the key that created it: a job that ended is
/// released and costed ([`record`]), one Google no longer knows (404) is released. Jobs whose
/// key left the pool are released too (nobody can read them through this proxy any more).
pub async fn poll_once(state: &AppState) {
    use http_body_util::BodyExt;
    let upstream = crate::upstream::Upstream::new(&state.config.upstream.url);
    for (name, kid) in state.batches.open_jobs() {
        let Some((_, key)) = state.pool.by_kid(&kid) else {
            state.batches.forget(&name);
            continue;
        };
        let Some(req) = crate::upstream::build_request(
            &upstream,
            &http::Method::GET,
            &format!("/v1beta/{name}"),
            None,
            &http::HeaderMap::new(),
            Bytes::new(),
            false,
            &key.headers,
        ) else {
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
                state.batches.forget(&name);
            }
            _ => tracing::debug!(
                batch = name,
                "batch job check failed: asked again next time"
            ),
        }
    }
}
