//! Acting on Google's error answers: hold the (project, model) a 429 names, adopt a lower limit
//! it reports, hold the whole project with backoff at Google's spend-based limits (a 429
//! naming spend, or bare 429s on several of its models), back the whole pool off from an
//! IP-level throttle (that model on every project, every model only when the throttle spans
//! models), and disable a dead key once a probe with that key alone has confirmed it.

use std::collections::BTreeSet;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use tower::{Service, ServiceExt};

use super::answer::read_upto;
use crate::error::LimitKind;
use crate::layers::forward::{ForwardError, Outbound};
use crate::pool::health::Throttle;
use crate::quota::DayInfo;
use crate::route::QuotaFamily;
use crate::state::Core;
use crate::upstream::{self, Upstream, Verdict};

/// Largest upstream error body read to classify it (they are a few hundred bytes).
pub(super) const ERROR_BODY_LIMIT: usize = 64 * 1024;

/// Hold what a 429 says ran out (and learn any lower limit it reports); a 429 without details
/// holds the (project, model) with a growing cooldown, and the whole pool when most projects
/// get one at once.
pub(super) async fn hold(
    state: &Core,
    index: usize,
    model: Option<&str>,
    family: QuotaFamily,
    verdict: &Verdict,
) {
    let key = &state.pool.keys[index];
    let store = &state.store;
    // A call that spends no quota (countTokens, files) has limits of its own at Google: its
    // 429 holds nothing here (holding `*` would stop every model of the project).
    let Some(model) = model else {
        state.metrics.upstream_429("free_call");
        return;
    };
    match verdict {
        Verdict::QuotaExhausted {
            cooldown_ms,
            kinds,
            reported,
        } => {
            for k in kinds {
                state.metrics.upstream_429(match k {
                    LimitKind::RequestsPerMinute => "per_minute",
                    LimitKind::TokensPerMinute => "tokens",
                    LimitKind::RequestsPerDay => "per_day",
                });
            }
            for (kind, value) in reported {
                state.pool.learn(&key.project, model, family, *kind, *value);
            }
            let reason = format!(
                "Gemini API 429: {} exhausted",
                kinds
                    .iter()
                    .map(|k| k.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            tracing::warn!(key = %key.masked, project = %key.project, model, cooldown_ms, "{reason}");
            if let Err(e) = store
                .cool_down(&key.project, model, *cooldown_ms, &reason)
                .await
            {
                tracing::warn!(error = %e, "could not record a cooldown");
            }
        }
        Verdict::SpendCapped {
            retry_delay_ms,
            named,
        } => {
            state.metrics.upstream_429("spend_cap");
            let reason = format!("Gemini API 429: spend-based limit ({named})");
            hold_project(state, index, *retry_delay_ms, &reason).await;
        }
        Verdict::RateLimited { retry_delay_ms } if key.vertex.is_some() => {
            // Vertex's Dynamic Shared Quota: hold this (project, location, model), move on.
            state.metrics.upstream_429("vertex_shared");
            let ms = retry_delay_ms
                .unwrap_or_else(|| state.pool.health.vertex_429_backoff(&key.project, model));
            tracing::warn!(entry = %key.masked, project = %key.project, model, cooldown_ms = ms, "Vertex AI 429 without quota details (shared capacity)");
            if let Err(e) = store
                .cool_down(
                    &key.project,
                    model,
                    ms,
                    "Vertex AI 429: shared capacity exhausted",
                )
                .await
            {
                tracing::warn!(error = %e, "could not record a cooldown");
            }
        }
        Verdict::RateLimited { retry_delay_ms } => {
            state.metrics.upstream_429("unknown");
            let health = &state.pool.health;
            health.saw_bare_429_on(model);
            let ms = retry_delay_ms.unwrap_or_else(|| health.bare_429_backoff(&key.project));
            tracing::warn!(key = %key.masked, project = %key.project, model, cooldown_ms = ms, "Gemini API 429 without details");
            if let Err(e) = store
                .cool_down(&key.project, model, ms, "Gemini API 429 without details")
                .await
            {
                tracing::warn!(error = %e, "could not record a cooldown");
            }
            // Most projects throttled at once: back off the pool rather than burn its keys. One
            // model out of capacity (a preview model) holds that model only; every model is
            // held only on evidence across models (bare 429s on two or more of them).
            if let Some(scope) = health.throttle() {
                let held = match scope {
                    Throttle::Model => model,
                    Throttle::AllModels => "*",
                };
                tracing::warn!(
                    cooldown_ms = ms,
                    model = held,
                    "most projects got 429s without details at once (an IP-level throttle?): backing off the whole pool"
                );
                // AI Studio's throttle: Vertex entries (another host) keep serving.
                let projects: BTreeSet<&str> = state
                    .pool
                    .keys
                    .iter()
                    .filter(|k| k.vertex.is_none())
                    .map(|k| &*k.project)
                    .collect();
                for p in projects {
                    let reason = "global backoff: Gemini API throttling this proxy";
                    if let Err(e) = store.cool_down(p, held, ms, reason).await {
                        tracing::warn!(error = %e, "could not record a cooldown");
                    }
                }
                // The next admission sees every project on hold: it waits or answers 429.
            }
            // Bare 429s on two models of one project (and not on most projects at once): a
            // limit of the whole project, such as a spend cap that names nothing.
            if health.bare_429_models_on(&key.project, model) >= 2 && health.throttle().is_none() {
                state.metrics.upstream_429("spend_cap");
                let reason = "Gemini API 429s without details on several models: a project-wide limit (spend cap?)";
                hold_project(state, index, *retry_delay_ms, reason).await;
            }
        }
        Verdict::Deliver | Verdict::DeadKey { .. } | Verdict::Transient => {}
    }
}

/// How long a Vertex entry whose token cannot be had is held (every model).
const TOKEN_HOLD_MS: u64 = 30_000;

/// Hold Vertex entry `index` (every model, every replica) after its token failed: reported in
/// the log and the status page's holds, tried again when the hold ends, not in a loop.
pub(super) async fn hold_entry(state: &Core, index: usize, error: &str) {
    let key = &state.pool.keys[index];
    let setting = key
        .vertex
        .as_ref()
        .map_or("", |v| v.credentials_setting.as_str());
    tracing::warn!(entry = %key.masked, project = %key.project, setting, error, hold_ms = TOKEN_HOLD_MS, "Vertex AI entry has no access token: held");
    state.metrics.refused("vertex_token");
    let reason = format!("Vertex AI access token unavailable ({setting}): {error}");
    if let Err(e) = state
        .store
        .cool_down(&key.project, "*", TOKEN_HOLD_MS, &reason)
        .await
    {
        tracing::warn!(error = %e, "could not record a cooldown");
    }
}

/// Hold key `index`'s whole project (every model, every replica) at a spend-based limit: 1 min,
/// doubling while it repeats, at most 1 h (longer only when Google's retry delay says so).
/// Keys stay enabled: the limit is the project's billing, not the key.
async fn hold_project(state: &Core, index: usize, retry_delay_ms: Option<u64>, reason: &str) {
    let key = &state.pool.keys[index];
    let ms = state
        .pool
        .health
        .spend_hold_ms(&key.project)
        .max(retry_delay_ms.unwrap_or(0));
    tracing::warn!(key = %key.masked, project = %key.project, cooldown_ms = ms, "{reason}: holding the project");
    if let Err(e) = state.store.cool_down(&key.project, "*", ms, reason).await {
        tracing::warn!(error = %e, "could not record a cooldown");
    }
}

/// Take a key out of the pool, for every replica sharing the store.
pub(super) async fn disable(state: &Core, index: usize, reason: &str) {
    let key = &state.pool.keys[index];
    tracing::error!(key = %key.masked, name = %key.name, reason = %reason, "pooled key disabled");
    state.pool.health.saw_dead(&key.kid, reason);
    if let Err(e) = state.store.disable_key(&key.kid, reason).await {
        tracing::warn!(error = %e, "could not record a disabled key in the store");
    }
}

/// Ask Google, with the key alone, whether it is dead: a call that spends no quota
/// (`GET /v1beta/models?pageSize=1`), sent through the same inner service. Only the same
/// verdict confirms; anything else (an answer, a timeout, another error) keeps the key.
pub(super) async fn probe_confirms_dead<S, B>(
    state: &Core,
    inner: S,
    upstream: &Upstream,
    index: usize,
) -> bool
where
    S: Service<Outbound, Response = http::Response<B>, Error = ForwardError>,
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let key = &state.pool.keys[index];
    let Some(uri) = upstream.url("/v1beta/models", Some("pageSize=1")) else {
        return false;
    };
    let timeout = state
        .config
        .upstream
        .request_timeout
        .min(Duration::from_secs(10));
    let mut req = http::Request::new(Full::new(Bytes::new()));
    *req.uri_mut() = uri;
    req.headers_mut()
        .insert("x-goog-api-key", key.headers.goog.clone());
    let probe = async {
        let mut inner = inner;
        let out = Outbound {
            request: req,
            key: index,
            via: None,
        };
        let resp = inner.ready().await.ok()?.call(out).await.ok()?;
        let status = resp.status().as_u16();
        let answer = read_upto(resp, ERROR_BODY_LIMIT, timeout).await.ok()?;
        let now = chrono::Utc::now().timestamp_millis();
        let day = DayInfo::at(state.config.limits.timezone, now);
        Some(upstream::classify(status, answer.head(), &day, now))
    };
    let verdict = tokio::time::timeout(timeout, probe).await.ok().flatten();
    let confirmed = matches!(verdict, Some(Verdict::DeadKey { .. }));
    tracing::info!(key = %key.masked, confirmed, "dead-key probe");
    confirmed
}

/// Whether Google's dead-key answer for key `index` may disable it: not when this request
/// already disabled one, and only when a probe with the key alone confirms it.
pub(super) async fn confirm_dead<S, B>(
    state: &Core,
    inner: S,
    upstream: &Upstream,
    index: usize,
    reason: &str,
    disabled_one: bool,
) -> bool
where
    S: Service<Outbound, Response = http::Response<B>, Error = ForwardError>,
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let masked = &state.pool.keys[index].masked;
    if disabled_one {
        tracing::warn!(key = %masked, reason, "a second key answered as dead in one request: answer delivered, key kept (at most one key is disabled per request)");
        return false;
    }
    let confirmed = probe_confirms_dead(state, inner, upstream, index).await;
    if !confirmed {
        tracing::warn!(key = %masked, reason, "the Gemini API answered as if the key were dead, but a probe with it did not confirm it: answer delivered, key kept");
    }
    confirmed
}
