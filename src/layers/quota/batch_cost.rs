//! What a Batch API job's results cost, recorded once they are seen ([`crate::batch`]): inline
//! in the job's answer, or its results file as it is downloaded through the proxy; in the
//! usage ledger at batch prices under the key and client that created the job, and in its
//! client's budget counters in place of the reservation made at its creation.

use std::sync::Arc;

use crate::ledger::{Billing, TokenUsage};
use crate::quota::batch::BatchJob;
use crate::state::Core;

/// Where a finished job's results are recorded: the store (its client's budget), the usage
/// ledger and the prices (owned, so a download's end can record them after the request).
pub(super) struct Books {
    store: Arc<dyn crate::quota::QuotaStore>,
    ledger: Arc<crate::ledger::Ledger>,
    config: Arc<crate::config::Config>,
}

impl Books {
    pub(super) fn of(state: &Core) -> Books {
        Books {
            store: state.store.clone(),
            ledger: state.ledger.clone(),
            config: state.config.clone(),
        }
    }
}

/// A finished job's results (inline, or its results file read): recorded at batch prices in
/// the ledger under its key and client, and its client's budget reservation replaced by their
/// cost (no results: given back).
pub(super) async fn record(books: &Books, job: &BatchJob, usage: Option<TokenUsage>, results: u64) {
    let actual = match &usage {
        Some(usage) => {
            let client = match &job.client {
                Some(n) => books.ledger.client_id_named(n),
                None => books.ledger.anonymous_id(),
            };
            let series = books.ledger.series_of(
                Some(&job.project),
                &job.model,
                Some(&job.kid),
                client,
                true,
            );
            books
                .ledger
                .batch_results(series, &job.model, &job.project, results, usage);
            list_micros(&books.config.prices, &job.model, usage)
        }
        None => 0,
    };
    if let Some(b) = &job.budget {
        let delta =
            i64::try_from(actual).unwrap_or(i64::MAX) - i64::try_from(b.micros).unwrap_or(i64::MAX);
        if let Err(e) = books
            .store
            .client_budget_adjust(&b.name, b.day, b.month, delta)
            .await
        {
            tracing::warn!(error = %e, client = %b.name, "could not settle a batch job's budget reservation: the estimate stays counted");
        }
    }
}

/// A download of a finished job's results file waiting to be costed (`GET files/ID:download`,
/// answered 200): what to do once all of it has passed, i.e. take it from the store (once,
/// across replicas) and record its usage at batch prices ([`record`]). `None` for any other
/// answer.
pub(super) async fn results_download(
    state: &Core,
    route: &crate::route::Route,
    status: http::StatusCode,
) -> Option<crate::batch::results::OnEnd> {
    if status != http::StatusCode::OK || route.action.as_deref() != Some("download") {
        return None;
    }
    let file = route
        .resource
        .as_deref()
        .filter(|r| r.starts_with("files/"))?;
    let field = format!("{}{file}", crate::quota::batch::RESULTS);
    // One field read (most downloads are of files no batch job made).
    state.store.batch_entry(&field).await.ok()??;
    let books = Books::of(state);
    Some(Box::new(move |scan| {
        tokio::spawn(async move {
            match books.store.batch_take(&field).await {
                Ok(Some(job)) => {
                    record(&books, &job, Some(scan.usage), scan.responses).await;
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "a batch results file's cost not recorded"),
            }
        });
    }))
}

/// What `usage` of `model` costs at batch list prices, in micro-dollars (budgets count list
/// prices).
pub(super) fn list_micros(prices: &crate::ledger::Prices, model: &str, usage: &TokenUsage) -> u64 {
    prices
        .batch_cost(model, usage, Billing::Paid)
        .list_nano
        .div_ceil(1000)
}
