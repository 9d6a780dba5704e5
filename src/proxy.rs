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
use hyper::body::Incoming;
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
/// How long an unfinished resumable upload session accepts keyless chunks: Google's session
/// URLs last about a week.
const UPLOAD_SESSION_TTL_MS: u64 = 7 * 86_400_000;
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

/// Read a request body whole: at most `limit` bytes, within `timeout`.
pub async fn read_body(body: Body, limit: usize, timeout: Duration) -> Result<Bytes, ApiError> {
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
        let known_session = matches!(e, ApiError::Unauthenticated(_))
            && keyless_upload_chunk(state, parts, &route).await;
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
    // At most one key is disabled per client request, whatever Google answers.
    let mut disabled_one = false;
    // Only a read may be sent again once written: anything else Google may have run (and
    // billed, or created twice).
    let idempotent = matches!(parts.method, http::Method::GET | http::Method::HEAD);
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
        let outcome = tokio::time::timeout(header_timeout, state.client.request(request)).await;
        let resp = match outcome {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                state.upstream_failures.fetch_add(1, Ordering::Relaxed);
                // Only a request that never left (connect, TLS, refused) or one that spends
                // nothing may go again: after it was written Google may have run and billed it.
                let unsent = e.is_connect();
                if (unsent || idempotent) && !last_try {
                    state.metrics.retry("network");
                    drop(settlement);
                    tracing::warn!(key = %key.masked, attempt, error = %upstream::describe_error(&e), "upstream unreachable: retrying");
                    avoid.push(index);
                    backoff(attempt, deadline).await;
                    continue;
                }
                if !unsent {
                    // It may have run: it stays counted, estimate included.
                    keep_counted(settlement);
                }
                tracing::warn!(key = %key.masked, attempt, sent = !unsent, error = %upstream::describe_error(&e), "upstream request failed");
                return Err(if upstream::is_timeout(&e) {
                    ApiError::GatewayTimeout(format!(
                        "the Gemini API did not answer in time: {}",
                        upstream::describe_error(&e)
                    ))
                } else if unsent {
                    ApiError::BadGateway(format!(
                        "the Gemini API could not be reached: {}",
                        upstream::describe_error(&e)
                    ))
                } else {
                    ApiError::BadGateway(format!(
                        "the connection to the Gemini API failed after the request was sent ({}); it is not retried, since it may have run",
                        upstream::describe_error(&e)
                    ))
                });
            }
            Err(_) => {
                state.upstream_failures.fetch_add(1, Ordering::Relaxed);
                if idempotent && !last_try {
                    state.metrics.retry("network");
                    tracing::warn!(key = %key.masked, attempt, "upstream silent: retrying");
                    avoid.push(index);
                    backoff(attempt, deadline).await;
                    continue;
                }
                keep_counted(settlement);
                return Err(ApiError::GatewayTimeout(format!(
                    "the Gemini API did not answer within {}s",
                    header_timeout.as_secs()
                )));
            }
        };
        let status = resp.status();
        let mut headers = upstream::response_headers(resp.headers());

        if status.as_u16() >= 400 {
            // Error bodies are small: read one to learn what happened, then pass it on
            // unchanged (one over the limit is classified by its start and passed on whole).
            let answer = read_upto(resp, ERROR_BODY_LIMIT, cfg.request_timeout).await?;
            // An error answer carries no usage: refund now, before any backoff.
            drop(settlement);
            let now = chrono::Utc::now().timestamp_millis();
            let day = DayInfo::at(cfg.limits.timezone, now);
            let verdict = upstream::classify(status.as_u16(), answer.head(), &day, now);
            if verdict == Verdict::Transient {
                state.upstream_failures.fetch_add(1, Ordering::Relaxed);
            }
            let retry = react(
                state,
                index,
                quota_model.as_deref(),
                route.family,
                &verdict,
                &mut disabled_one,
            )
            .await;
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
            trace.upstream = sent_at.elapsed();
            return Ok(answer.into_response(status, headers, cfg, None));
        }

        // Success: pass the answer through, streaming.
        state.upstream_failures.store(0, Ordering::Relaxed);
        if route.upload {
            rewrite_upload_url(state, parts, &mut headers, index).await;
            end_upload_session(state, route, &headers).await;
        }
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
            let answer = read_upto(resp, CREATE_BODY_LIMIT, cfg.request_timeout).await?;
            match &answer {
                Answer::Whole(bytes) => remember_created(state, bytes, index).await,
                Answer::Over(..) => tracing::warn!(
                    key = %key.masked,
                    limit = CREATE_BODY_LIMIT,
                    "a create call's answer is larger than the proxy reads to learn the created name: passed on whole, its key affinity not recorded"
                ),
            }
            return Ok(answer.into_response(status, headers, cfg, settlement));
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
                    embed: route.family == QuotaFamily::Embed,
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
/// `disabled_one`: whether this client request already disabled a key (at most one may).
async fn react(
    state: &Arc<AppState>,
    index: usize,
    model: Option<&str>,
    family: QuotaFamily,
    verdict: &Verdict,
    disabled_one: &mut bool,
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
            if *disabled_one {
                tracing::warn!(key = %key.masked, reason = %reason, "a second key answered as dead in one request: answer delivered, key kept (at most one key is disabled per request)");
                return false;
            }
            if !probe_confirms_dead(state, index).await {
                tracing::warn!(key = %key.masked, reason = %reason, "the Gemini API answered as if the key were dead, but a probe with it did not confirm it: answer delivered, key kept");
                return false;
            }
            *disabled_one = true;
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

/// An upstream answer read to learn something from it.
enum Answer {
    /// The whole body, within the limit.
    Whole(Bytes),
    /// Over the limit: what was read, and the rest still to come.
    Over(Bytes, Incoming),
}

impl Answer {
    /// What was read (all of it, or its start).
    fn head(&self) -> &[u8] {
        match self {
            Answer::Whole(b) | Answer::Over(b, _) => b,
        }
    }

    /// Pass the answer on unchanged, the unread rest streamed after what was read.
    fn into_response(
        self,
        status: http::StatusCode,
        headers: http::HeaderMap,
        cfg: &crate::config::Config,
        settlement: Option<Settlement>,
    ) -> Response {
        let body = match self {
            Answer::Whole(bytes) => {
                if let Some(s) = settlement {
                    s.settle(crate::body::UsageScanner::scan_all(&bytes));
                }
                Body::from(bytes)
            }
            Answer::Over(head, rest) => Body::new(
                ProxyBody::new(
                    rest,
                    cfg.stream_idle_timeout,
                    Some(Instant::now() + cfg.request_timeout),
                    settlement,
                )
                .with_prefix(head),
            ),
        };
        let mut out = Response::new(body);
        *out.status_mut() = status;
        *out.headers_mut() = headers;
        out
    }
}

/// Read an answer whole if it fits in `limit` bytes, within `timeout`; a larger one stops at
/// the first chunk over the limit and keeps the rest unread.
async fn read_upto(
    resp: http::Response<Incoming>,
    limit: usize,
    timeout: Duration,
) -> Result<Answer, ApiError> {
    let mut body = resp.into_body();
    let read = async {
        let mut out = Vec::new();
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
            out.extend_from_slice(&chunk);
            if out.len() > limit {
                return Ok((false, out));
            }
        }
        Ok::<_, ApiError>((true, out))
    };
    let (whole, head) = match tokio::time::timeout(timeout, read).await {
        Ok(r) => r?,
        Err(_) => {
            return Err(ApiError::GatewayTimeout(format!(
                "the Gemini API answer did not finish within {}s",
                timeout.as_secs()
            )));
        }
    };
    Ok(if whole {
        Answer::Whole(Bytes::from(head))
    } else {
        Answer::Over(Bytes::from(head), body)
    })
}

/// An answer that may have been run upstream stays counted as admitted, estimate included
/// (dropping the settlement would refund the estimate).
fn keep_counted(settlement: Option<Settlement>) {
    if let Some(s) = settlement {
        let estimate = s.reservation().map(|r| r.tokens);
        s.settle(estimate);
    }
}

/// Ask Google, with the key alone, whether it is dead: a cheap call that spends no quota
/// (`GET /v1beta/models?pageSize=1`). Only the same verdict confirms; anything else (an
/// answer, a timeout, another error) keeps the key.
async fn probe_confirms_dead(state: &AppState, index: usize) -> bool {
    let key = &state.pool.keys[index];
    let Some(uri) = state.upstream.url("/v1beta/models", Some("pageSize=1")) else {
        return false;
    };
    let mut req = http::Request::new(http_body_util::Full::new(Bytes::new()));
    *req.uri_mut() = uri;
    req.headers_mut()
        .insert("x-goog-api-key", key.headers.goog.clone());
    let timeout = state.config.request_timeout.min(Duration::from_secs(10));
    let probe = async {
        let resp = state.client.request(req).await.ok()?;
        let status = resp.status().as_u16();
        let answer = read_upto(resp, ERROR_BODY_LIMIT, timeout).await.ok()?;
        let now = chrono::Utc::now().timestamp_millis();
        let day = DayInfo::at(state.config.limits.timezone, now);
        Some(upstream::classify(status, answer.head(), &day, now))
    };
    let verdict = tokio::time::timeout(timeout, probe).await.ok().flatten();
    tracing::info!(key = %key.masked, verdict = ?verdict.as_ref().map(|v| matches!(v, Verdict::DeadKey { .. })), "dead-key probe");
    matches!(verdict, Some(Verdict::DeadKey { .. }))
}

/// A chunk of a resumable upload sent without a key: allowed only to the exact session path
/// this proxy handed out, with the methods of Google's resumable protocol, while the session
/// is open (it ends at `final` / `cancelled`, or after [`UPLOAD_SESSION_TTL_MS`]).
async fn keyless_upload_chunk(state: &AppState, parts: &Parts, route: &Route) -> bool {
    let Some(id) = route
        .resource
        .as_deref()
        .and_then(|r| r.strip_prefix("uploads/"))
    else {
        return false;
    };
    if !route.upload
        || parts.method != http::Method::POST
        || !parts.headers.contains_key("x-goog-upload-command")
    {
        return false;
    }
    matches!(
        state.store.affinity(&upload_session(id)).await,
        Ok(Some(path)) if path == parts.uri.path()
    )
}

/// Where an open upload session's path is kept.
fn upload_session(id: &str) -> String {
    format!("upload-session/{id}")
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
        let remembered = match state
            .store
            .set_affinity(&format!("uploads/{id}"), kid, AFFINITY_TTL_MS)
            .await
        {
            Ok(()) => {
                state
                    .store
                    .set_affinity(&upload_session(id), uri.path(), UPLOAD_SESSION_TTL_MS)
                    .await
            }
            Err(e) => Err(e),
        };
        if let Err(e) = remembered {
            tracing::warn!(error = %e, "could not remember the key of an upload session");
        }
    }
}

/// An upload answered `final` or `cancelled` ends its session: later keyless chunks for it
/// are refused.
async fn end_upload_session(state: &AppState, route: &Route, headers: &http::HeaderMap) {
    let ended = headers
        .get("x-goog-upload-status")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|s| s == "final" || s == "cancelled");
    let Some(id) = route
        .resource
        .as_deref()
        .and_then(|r| r.strip_prefix("uploads/"))
    else {
        return;
    };
    if ended
        // Overwritten with an entry that has already expired: the session is gone for every
        // replica sharing the store.
        && let Err(e) = state.store.set_affinity(&upload_session(id), "", 0).await
    {
        tracing::warn!(error = %e, "could not end an upload session");
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
