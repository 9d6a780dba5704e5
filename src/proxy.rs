//! The Gemini surface: authenticate, parse the route, read the body once, estimate, admit on a
//! key, forward, and on 429 / 5xx / dead key (before any byte reached the client) cool down or
//! disable that key and retry on another. One log line per request.
//!
//! Admission and forwarding live in one loop rather than two tower layers because a retry needs
//! both: the upstream's answer decides the next admission.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, request::Parts};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body_util::BodyExt;
use tokio::time::Instant;

use crate::auth::authenticate;
use crate::body::{ProxyBody, Settlement};
use crate::error::{ApiError, LimitKind};
use crate::estimate::{Estimate, estimate};
use crate::quota::{AdmitOutcome, AdmitRequest, DayInfo, Reservation};
use crate::route::{QuotaFamily, Route};
use crate::state::AppState;
use crate::upstream::{self, Verdict};

/// How long an affinity (resource → key) is remembered: Google keeps files 48 h.
const AFFINITY_TTL_MS: u64 = 7 * 86_400_000;
/// Largest upstream error body read to classify it (they are a few hundred bytes).
const ERROR_BODY_LIMIT: usize = 64 * 1024;
/// Largest create-call answer read whole to learn the name of what it created.
const CREATE_BODY_LIMIT: usize = 4 * 1024 * 1024;

/// What the request log line reports.
#[derive(Default)]
struct Trace {
    model: Option<String>,
    /// Pool index of the key used last.
    key: Option<usize>,
    attempts: u32,
    tokens: u64,
    /// Time from sending to the upstream's response head (the last attempt).
    upstream: Duration,
}

/// Axum handler for everything under `/v1beta/`, `/v1/` and `/upload/v1beta/`.
pub async fn handle(State(state): State<Arc<AppState>>, req: Request) -> Response {
    let started = Instant::now();
    let (parts, body) = req.into_parts();
    let mut trace = Trace::default();
    let resp = match pipeline(&state, &parts, body, &mut trace).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    };
    let status = resp.status().as_u16();
    let key = trace.key.map(|i| (i, state.pool.keys[i].masked.as_str()));
    tracing::info!(
        method = %parts.method,
        path = parts.uri.path(),
        model = trace.model.as_deref().unwrap_or("-"),
        status,
        latency_ms = started.elapsed().as_secs_f64() * 1000.0,
        key = key.map_or("-", |(_, k)| k),
        attempts = trace.attempts,
        est_tokens = trace.tokens,
        "request"
    );
    state.metrics.request(
        trace.model.as_deref(),
        key,
        status,
        started.elapsed(),
        trace.upstream,
    );
    resp
}

async fn read_body(body: Body, limit: usize, timeout: Duration) -> Result<Bytes, ApiError> {
    match tokio::time::timeout(timeout, axum::body::to_bytes(body, limit)).await {
        Ok(Ok(b)) => Ok(b),
        Ok(Err(e)) => {
            let too_big = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>())
                || e.to_string().contains("length limit");
            if too_big {
                Err(ApiError::PayloadTooLarge(format!(
                    "Request payload size exceeds the limit: {limit} bytes."
                )))
            } else {
                Err(ApiError::InvalidArgument(
                    "the request body could not be read".into(),
                ))
            }
        }
        Err(_) => Err(ApiError::RequestTimeout(format!(
            "the request body was not received within {}s",
            timeout.as_secs()
        ))),
    }
}

async fn pipeline(
    state: &Arc<AppState>,
    parts: &Parts,
    body: Body,
    trace: &mut Trace,
) -> Result<Response, ApiError> {
    let cfg = &state.config;
    let query = parts.uri.query();
    let route = Route::parse(&parts.method, parts.uri.path(), query)?;
    if let Err(e) = authenticate(cfg, &parts.headers, query) {
        // SDKs send upload chunks to the session URL without a key, as Google allows: the
        // upload_id is the capability. Accept it only for sessions this proxy started.
        let known_session = match (&e, route.upload, &route.resource) {
            (ApiError::Unauthenticated(_), true, Some(r)) => {
                matches!(state.store.affinity(r).await, Ok(Some(_)))
            }
            _ => false,
        };
        if !known_session {
            return Err(e);
        }
    }
    if let Some(len) = parts
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        && len > cfg.max_body_bytes as u64
    {
        return Err(ApiError::PayloadTooLarge(format!(
            "Request payload size exceeds the limit: {} bytes.",
            cfg.max_body_bytes
        )));
    }
    // Known from the path already: a request refused from here on is logged with its model.
    trace.model = route.model.clone();
    let body = read_body(body, cfg.max_body_bytes, cfg.body_read_timeout).await?;
    let est = estimate(&route, &body)?;
    // OpenAI-compatible calls name the model in the body.
    if trace.model.is_none() {
        trace.model = est.model.clone();
    }
    let model = trace.model.clone();
    trace.tokens = est.tokens;

    // Key affinity: a resource lives in the project of the key that created it.
    let resource = route
        .resource
        .clone()
        .or_else(|| est.references.first().cloned());
    let pinned = match &resource {
        Some(r) => match state.store.affinity(r).await {
            Ok(Some(kid)) => state.pool.by_kid(&kid).map(|(i, _)| i),
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(error = %e, "affinity lookup failed: using any key");
                None
            }
        },
        None => None,
    };
    let quota = match (&model, route.family) {
        (Some(m), QuotaFamily::Generate | QuotaFamily::Embed) => Some(m.clone()),
        _ => None,
    };
    forward_with_retries(state, parts, &route, &est, body, quota, pinned, trace).await
}

#[allow(clippy::too_many_arguments)]
async fn forward_with_retries(
    state: &Arc<AppState>,
    parts: &Parts,
    route: &Route,
    est: &Estimate,
    body: Bytes,
    quota_model: Option<String>,
    pinned: Option<usize>,
    trace: &mut Trace,
) -> Result<Response, ApiError> {
    let cfg = &state.config;
    let started = Instant::now();
    let deadline = started + cfg.retry_deadline;
    let streaming = route.streaming || est.stream;
    // Keys that failed this request (dead, or transient errors): avoided while others remain.
    let mut avoid: Vec<usize> = Vec::new();
    let mut attempt: u32 = 0;
    loop {
        attempt += 1;
        trace.attempts = attempt;
        let reservation = match &quota_model {
            Some(model) => Some(admit(state, route, est, model, pinned, &avoid, deadline).await?),
            None => None,
        };
        let index = match &reservation {
            Some(r) => r.index,
            None => free_key(state, pinned, &avoid),
        };
        let key = &state.pool.keys[index];
        trace.key = Some(index);
        // Dropped unsettled (an error, a retry) it refunds the estimate by itself.
        let settlement = reservation.map(|r| Settlement::new(state.store.clone(), r));
        let header_timeout = if streaming {
            cfg.stream_idle_timeout.min(cfg.request_timeout)
        } else {
            cfg.request_timeout
        };
        let Some(request) = upstream::build_request(
            &state.upstream,
            &parts.method,
            parts.uri.path(),
            parts.uri.query(),
            &parts.headers,
            body.clone(),
            route,
            &key.headers,
        ) else {
            return Err(ApiError::InvalidArgument(
                "the request path cannot be forwarded".into(),
            ));
        };
        let last_try = attempt >= cfg.max_attempts || Instant::now() >= deadline;
        let sent_at = Instant::now();
        let resp = match tokio::time::timeout(header_timeout, state.client.request(request)).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) | Err(_) if !last_try => {
                state.upstream_failures.fetch_add(1, Ordering::Relaxed);
                state.metrics.retry("network");
                drop(settlement);
                tracing::warn!(key = %key.masked, attempt, "upstream unreachable or silent: retrying");
                avoid.push(index);
                backoff(attempt, deadline).await;
                continue;
            }
            Ok(Err(e)) if upstream::is_timeout(&*e) => {
                return Err(ApiError::GatewayTimeout(format!(
                    "the Gemini API did not answer in time: {}",
                    upstream::describe_error(&*e)
                )));
            }
            Ok(Err(e)) => {
                return Err(ApiError::BadGateway(format!(
                    "the Gemini API could not be reached: {}",
                    upstream::describe_error(&*e)
                )));
            }
            Err(_) => {
                return Err(ApiError::GatewayTimeout(format!(
                    "the Gemini API did not answer within {}s",
                    header_timeout.as_secs()
                )));
            }
        };
        let status = resp.status();
        let mut headers = upstream::response_headers(resp.headers());

        if status.as_u16() >= 400 {
            // Small error body: read it whole to learn what happened, then pass it on unchanged.
            let bytes = read_limited(resp, ERROR_BODY_LIMIT, cfg.request_timeout).await?;
            // An error answer carries no usage: refund now, before any backoff.
            drop(settlement);
            // The body may have been cut at the limit: let the server count what is sent.
            headers.remove(http::header::CONTENT_LENGTH);
            let now = chrono::Utc::now().timestamp_millis();
            let day = DayInfo::at(cfg.limits.timezone, now);
            let verdict = upstream::classify(status.as_u16(), &bytes, &day, now);
            if verdict == Verdict::Transient {
                state.upstream_failures.fetch_add(1, Ordering::Relaxed);
            }
            let retry = react(state, index, quota_model.as_deref(), &verdict).await;
            // A 429 or a dead key takes that key out of the running, so trying the others is
            // bounded by the pool; 5xx get `max_attempts`.
            let budget = match verdict {
                Verdict::Transient | Verdict::Deliver => cfg.max_attempts,
                _ => cfg.max_attempts + state.pool.keys.len() as u32,
            };
            if retry && attempt < budget && Instant::now() < deadline {
                match verdict {
                    Verdict::QuotaExhausted { .. } | Verdict::RateLimited { .. } => {
                        state.metrics.retry("upstream_429")
                    }
                    Verdict::DeadKey { .. } => state.metrics.retry("dead_key"),
                    _ => {}
                }
                if matches!(verdict, Verdict::DeadKey { .. } | Verdict::Transient) {
                    avoid.push(index);
                }
                if verdict == Verdict::Transient {
                    backoff(attempt, deadline).await;
                }
                continue;
            }
            let mut out = Response::new(Body::from(bytes));
            *out.status_mut() = status;
            *out.headers_mut() = headers;
            trace.upstream = sent_at.elapsed();
            return Ok(out);
        }

        // Success: pass the answer through, streaming.
        state.upstream_failures.store(0, Ordering::Relaxed);
        rewrite_upload_url(state, parts, &mut headers, index).await;
        if let Some(r) = settlement.as_ref().and_then(Settlement::reservation) {
            if let Ok(v) = HeaderValue::from_str(&r.remaining_requests.to_string()) {
                headers.insert("x-ratelimit-remaining-requests", v);
            }
            if let Ok(v) = HeaderValue::from_str(&r.remaining_tokens.to_string()) {
                headers.insert("x-ratelimit-remaining-tokens", v);
            }
        }
        trace.upstream = sent_at.elapsed();
        if route.creates_resource && !streaming {
            let bytes = read_limited(resp, CREATE_BODY_LIMIT, cfg.request_timeout).await?;
            remember_created(state, &bytes, index).await;
            if let Some(s) = settlement {
                s.settle(crate::body::UsageScanner::scan_all(&bytes));
            }
            headers.remove(http::header::CONTENT_LENGTH);
            let mut out = Response::new(Body::from(bytes));
            *out.status_mut() = status;
            *out.headers_mut() = headers;
            return Ok(out);
        }
        let deadline = (!streaming).then(|| sent_at + cfg.request_timeout);
        let stream = ProxyBody::new(
            resp.into_body(),
            cfg.stream_idle_timeout,
            deadline,
            settlement,
        );
        let mut out = Response::new(Body::new(stream));
        *out.status_mut() = status;
        *out.headers_mut() = headers;
        return Ok(out);
    }
}

/// Admit on a key with room, waiting for a cooldown that ends within `max_wait`.
async fn admit(
    state: &Arc<AppState>,
    route: &Route,
    est: &Estimate,
    model: &str,
    pinned: Option<usize>,
    avoid: &[usize],
    deadline: Instant,
) -> Result<Reservation, ApiError> {
    let cfg = &state.config;
    let mut candidates = state.pool.candidates(model, route.family, pinned);
    if candidates.len() > avoid.len() {
        candidates.retain(|c| !avoid.contains(&c.index));
    }
    // A request no project could ever take is a client error, not a wait.
    let largest = candidates
        .iter()
        .map(|c| c.limits.max_request_tokens.min(c.limits.token_minute))
        .max()
        .unwrap_or(0);
    if est.tokens > largest {
        state.metrics.refused("max_request_tokens");
        return Err(ApiError::InvalidArgument(format!(
            "The request is estimated at {} input tokens, over this proxy's limit of {} tokens per request for {}.",
            est.tokens, largest, model
        )));
    }
    let request = AdmitRequest {
        model: model.to_string(),
        tokens: est.tokens,
        candidates,
        strategy: state.pool.strategy,
        rotation: state.pool.next_turn(),
    };
    let wait_until = (Instant::now() + cfg.max_wait).min(deadline);
    loop {
        let t0 = Instant::now();
        let outcome = state.store.admit(&request).await;
        state.metrics.store_admit(t0.elapsed(), outcome.is_ok());
        match outcome {
            Ok(AdmitOutcome::Admitted(r)) => return Ok(r),
            Ok(AdmitOutcome::Refused {
                limit,
                limit_value,
                retry_after_ms,
            }) => {
                state.metrics.refused(limit.as_str());
                return Err(ApiError::QuotaExceeded {
                    message: format!(
                        "Quota exceeded for {}: {} limit of {} reached in every project of this proxy's pool. Retry in {}.",
                        model,
                        describe(limit),
                        limit_value,
                        crate::error::format_retry_delay(retry_after_ms)
                    ),
                    limit,
                    model: model.to_string(),
                    limit_value,
                    retry_after_ms,
                });
            }
            Ok(AdmitOutcome::Unavailable { retry_after_ms }) => {
                let wake = retry_after_ms.map(|ms| Instant::now() + Duration::from_millis(ms));
                match wake {
                    Some(w) if w <= wait_until => {
                        tokio::time::sleep_until(w).await;
                        continue;
                    }
                    _ => {
                        state.metrics.refused("cooldown");
                        return Err(match retry_after_ms {
                            Some(ms) => ApiError::PoolExhausted {
                                message: format!(
                                    "Every key for {model} is cooling down after Gemini API rate limits. Retry in {}.",
                                    crate::error::format_retry_delay(ms)
                                ),
                                retry_after_ms: ms,
                            },
                            None => ApiError::Unavailable(
                                "Every pooled key is disabled; an admin must re-enable one.".into(),
                            ),
                        });
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "admission failed: quota store unavailable");
                return Err(ApiError::Unavailable(
                    "The quota store is unavailable; retry shortly.".into(),
                ));
            }
        }
    }
}

fn describe(limit: LimitKind) -> &'static str {
    match limit {
        LimitKind::RequestsPerMinute => "requests-per-minute",
        LimitKind::TokensPerMinute => "input-tokens-per-minute",
        LimitKind::RequestsPerDay => "requests-per-day",
    }
}

/// A key for a call that spends no quota: the pinned one, else the next usable in turn.
fn free_key(state: &AppState, pinned: Option<usize>, avoid: &[usize]) -> usize {
    if let Some(p) = pinned {
        return p;
    }
    let n = state.pool.keys.len();
    // What this replica saw die recently; the store stays the truth (an admin may re-enable a
    // key through another replica), so a local entry only counts for DISABLED_MEMORY.
    let disabled: Vec<usize> = state
        .disabled
        .lock()
        .map(|d| {
            d.iter()
                .filter(|(_, (_, at))| at.elapsed() < DISABLED_MEMORY)
                .map(|(i, _)| *i)
                .collect()
        })
        .unwrap_or_default();
    let start = state.pool.next_turn() as usize;
    (0..n)
        .map(|i| (start + i) % n)
        .find(|i| !avoid.contains(i) && !disabled.contains(i))
        .unwrap_or(start % n)
}

/// Act on an upstream error. Returns whether another attempt makes sense.
async fn react(
    state: &Arc<AppState>,
    index: usize,
    model: Option<&str>,
    verdict: &Verdict,
) -> bool {
    let key = &state.pool.keys[index];
    let model = model.unwrap_or("*");
    match verdict {
        Verdict::Deliver => false,
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
                state.pool.learn(&key.project, model, *kind, *value);
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
            if let Err(e) = state
                .store
                .cool_down(&key.project, model, *cooldown_ms, &reason)
                .await
            {
                tracing::warn!(error = %e, "could not record a cooldown");
            }
            true
        }
        Verdict::RateLimited { retry_delay_ms } => {
            state.metrics.upstream_429("unknown");
            let ms = retry_delay_ms.unwrap_or_else(|| state.bare_429_backoff(&key.project));
            tracing::warn!(key = %key.masked, project = %key.project, model, cooldown_ms = ms, "Gemini API 429 without details");
            if let Err(e) = state
                .store
                .cool_down(&key.project, model, ms, "Gemini API 429 without details")
                .await
            {
                tracing::warn!(error = %e, "could not record a cooldown");
            }
            if state.throttled_globally() {
                tracing::warn!(
                    cooldown_ms = ms,
                    "most keys got 429s without details at once (an IP-level throttle?): backing off the whole pool"
                );
                let projects: std::collections::BTreeSet<&str> =
                    state.pool.keys.iter().map(|k| &*k.project).collect();
                for p in projects {
                    if let Err(e) = state
                        .store
                        .cool_down(
                            p,
                            "*",
                            ms,
                            "global backoff: Gemini API throttling this proxy",
                        )
                        .await
                    {
                        tracing::warn!(error = %e, "could not record a cooldown");
                    }
                }
                // The next admission sees every project on hold: it waits or answers 429.
            }
            true
        }
        Verdict::DeadKey { reason } => {
            tracing::error!(key = %key.masked, name = %key.name, reason = %reason, "pooled key disabled");
            if let Ok(mut d) = state.disabled.lock() {
                d.insert(index, (reason.clone(), Instant::now()));
            }
            if let Err(e) = state.store.disable_key(&key.kid, reason).await {
                tracing::warn!(error = %e, "could not record a disabled key in the store");
            }
            true
        }
        Verdict::Transient => {
            state.metrics.retry("upstream_5xx");
            true
        }
    }
}

/// Exponential backoff with full jitter (100 ms base, 2 s cap), never past the deadline.
async fn backoff(attempt: u32, deadline: Instant) {
    let cap = 100u64.saturating_mul(1 << attempt.min(5)).min(2_000);
    let wait = Duration::from_millis(fastrand::u64(0..=cap));
    let until = (Instant::now() + wait).min(deadline);
    tokio::time::sleep_until(until).await;
}

/// Read a small answer whole: at most `limit` bytes (the rest is dropped), within `timeout`.
async fn read_limited(
    resp: http::Response<upstream::ResponseBody>,
    limit: usize,
    timeout: Duration,
) -> Result<Bytes, ApiError> {
    let read = async {
        let mut out = Vec::new();
        let mut body = resp.into_body();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| {
                ApiError::BadGateway(format!(
                    "the Gemini API answer broke off: {}",
                    upstream::describe_error(&e)
                ))
            })?;
            let Ok(chunk) = frame.into_data() else {
                continue;
            };
            let room = limit.saturating_sub(out.len());
            out.extend_from_slice(&chunk[..chunk.len().min(room)]);
            if out.len() >= limit {
                break;
            }
        }
        Ok(Bytes::from(out))
    };
    match tokio::time::timeout(timeout, read).await {
        Ok(r) => r,
        Err(_) => Err(ApiError::GatewayTimeout(format!(
            "the Gemini API answer did not finish within {}s",
            timeout.as_secs()
        ))),
    }
}

/// The upstream's resumable-upload URL points at Google: point it at this proxy instead, and
/// remember which key started the session.
async fn rewrite_upload_url(
    state: &AppState,
    parts: &Parts,
    headers: &mut http::HeaderMap,
    index: usize,
) {
    let Some(url) = headers
        .get("x-goog-upload-url")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
    else {
        return;
    };
    let Ok(uri) = url.parse::<http::Uri>() else {
        return;
    };
    let path_and_query = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let base = match &state.config.public_url {
        Some(b) => b.clone(),
        None => {
            let host = parts
                .headers
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or("localhost");
            let proto = parts
                .headers
                .get("x-forwarded-proto")
                .and_then(|h| h.to_str().ok())
                .filter(|p| *p == "https" || *p == "http")
                .unwrap_or("http");
            format!("{proto}://{host}")
        }
    };
    // A request that came in under the path prefix gets an upload URL under it too.
    let prefix = parts
        .extensions
        .get::<axum::extract::OriginalUri>()
        .and_then(|o| o.0.path().strip_suffix(parts.uri.path()))
        .unwrap_or("");
    if let Ok(v) = HeaderValue::from_str(&format!("{base}{prefix}{path_and_query}")) {
        headers.insert("x-goog-upload-url", v);
    }
    if let Some(id) = uri
        .query()
        .and_then(|q| q.split('&').find_map(|p| p.strip_prefix("upload_id=")))
        && crate::route::valid_name(id)
    {
        let kid = &state.pool.keys[index].kid;
        if let Err(e) = state
            .store
            .set_affinity(&format!("uploads/{id}"), kid, AFFINITY_TTL_MS)
            .await
        {
            tracing::warn!(error = %e, "could not remember the key of an upload session");
        }
    }
}

/// A create call's answer names what it created (`"name": "files/abc"`): pin it to the key.
async fn remember_created(state: &AppState, body: &[u8], index: usize) {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
        return;
    };
    let mut names = Vec::new();
    for candidate in [
        Some(&v),
        v.get("file"),
        v.get("metadata"),
        v.get("response"),
    ]
    .into_iter()
    .flatten()
    {
        if let Some(n) = candidate.get("name").and_then(|n| n.as_str()) {
            names.push(n.to_string());
        }
    }
    let kid = &state.pool.keys[index].kid;
    for name in names {
        let Some((collection, id)) = name.split_once('/') else {
            continue;
        };
        if [
            "files",
            "cachedContents",
            "batches",
            "tunedModels",
            "fileSearchStores",
        ]
        .contains(&collection)
            && crate::route::valid_name(id.split('/').next().unwrap_or(""))
        {
            let resource = format!("{collection}/{}", id.split('/').next().unwrap_or(""));
            if let Err(e) = state
                .store
                .set_affinity(&resource, kid, AFFINITY_TTL_MS)
                .await
            {
                tracing::warn!(error = %e, "could not remember the key of a created resource");
            }
        }
    }
}

/// 404 for anything outside the Gemini surface and the proxy's own endpoints.
pub async fn not_found(req: Request) -> Response {
    let path: String = req.uri().path().chars().take(120).collect();
    ApiError::NotFound(format!(
        "Nothing here: {path}. The proxy serves /v1beta/, /v1/, /upload/v1beta/ and /upload/v1/."
    ))
    .into_response()
}

/// Disabled keys this replica learned (by pool index), with their reasons and when.
pub type DisabledKeys = Mutex<HashMap<usize, (String, Instant)>>;

/// How long a key this replica saw die is skipped for free calls without asking the store.
const DISABLED_MEMORY: Duration = Duration::from_secs(60);
