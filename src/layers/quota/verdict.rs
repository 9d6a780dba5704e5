//! An error answer's consequences: read it (small), refund the attempt, act on what it means
//! for the key (Google's verdict: hold the quota that ran out, disable a dead key once a probe
//! confirms it, hold a Vertex entry whose credentials failed), then try again as the retry table
//! says, switch to a fallback model when every key tried was overloaded, or deliver it as it
//! came.

use axum::response::Response;

use super::answer::read_upto;
use super::fallback::{Ask, Written};
use super::react::{self, ERROR_BODY_LIMIT};
use super::step::{Attempt, Forward, Step, UpBody};
use super::trace;
use crate::body::AtEnd;
use crate::error::ApiError;
use crate::fallback::Reason;
use crate::layers::retry::{self, Failure};
use crate::ledger::field;
use crate::quota::DayInfo;
use crate::upstream::{self, Verdict};

impl<S> Step<'_, S> {
    /// React to the attempt's error answer: `Ok(None)` when the request is tried again (on
    /// another key, or a fallback model), else the answer to deliver.
    pub async fn react<B: UpBody>(
        &mut self,
        mut at: Attempt,
        resp: http::Response<B>,
    ) -> Result<Option<Response>, ApiError>
    where
        S: Forward<B>,
    {
        let state = self.cx.state;
        let cfg = &state.config.upstream;
        let status = resp.status();
        let headers = upstream::response_headers(resp.headers());
        // Error bodies are small: read one to learn what happened, then pass it on unchanged
        // (one over the limit is classified by its start and passed on whole).
        let answer = read_upto(resp, ERROR_BODY_LIMIT, cfg.request_timeout).await?;
        // An error answer carries no usage: refund now, before any backoff (the client's part
        // waits to see whether the request is tried again).
        let client_hold = at.release();
        let index = at.index;
        let key = &state.pool.keys[index];
        let verdict = if let Some(v) = &key.vertex
            && matches!(status.as_u16(), 401 | 403)
        {
            // A Vertex entry refused its token or its project's permissions: held (not
            // retried in a loop), its token dropped, the request tried elsewhere.
            v.tokens.forget();
            react::hold_entry(state, index, &format!("Vertex AI answered {status}")).await;
            None
        } else {
            if status == http::StatusCode::TOO_MANY_REQUESTS
                && let Some(a) = self.account.as_deref()
            {
                let series = a.series(state, Some(index), true);
                state.ledger.count(series, field::UPSTREAM_429);
            }
            let now = chrono::Utc::now().timestamp_millis();
            let day = DayInfo::at(state.config.limits.timezone, now);
            Some(upstream::classify(
                status.as_u16(),
                answer.head(),
                &day,
                now,
            ))
        };
        let (act, plan) = match &verdict {
            None => (true, retry::plan(Failure::EntryRefused, self.idempotent())),
            Some(v) => (
                self.act_on(index, v).await,
                retry::plan(Failure::Answer(v), self.idempotent()),
            ),
        };
        let retrying = act && self.retrying(&plan);
        trace::answered(
            &mut at.span,
            status,
            verdict.as_ref(),
            retrying.then_some(plan.reason),
        );
        if retrying {
            self.again(index, &plan, client_hold).await;
            return Ok(None);
        }
        drop(client_hold);
        // Overloaded on every key tried: a fallback model with room, before any byte reached
        // the client.
        if act
            && verdict == Some(Verdict::Transient)
            && matches!(status.as_u16(), 500 | 503)
            && self.fall_back().await
        {
            return Ok(None);
        }
        Ok(Some(answer.into_response(
            status,
            headers,
            cfg,
            AtEnd::default(),
        )))
    }

    /// Act on Google's verdict for key `index`; whether it was acted on (a dead-key answer a
    /// probe did not confirm, or a Vertex entry's, is delivered as it is).
    async fn act_on<B: UpBody>(&mut self, index: usize, verdict: &Verdict) -> bool
    where
        S: Forward<B>,
    {
        let state = self.cx.state;
        match verdict {
            Verdict::Transient => {
                state.pool.health.failure();
                true
            }
            // A Vertex entry has no API key to disable.
            Verdict::DeadKey { .. } if state.pool.keys[index].vertex.is_some() => false,
            Verdict::DeadKey { reason } => {
                let inner = self.inner.clone();
                let upstream = self.cx.upstream;
                let dead =
                    react::confirm_dead(state, inner, upstream, index, reason, self.disabled_one)
                        .await;
                if dead {
                    self.disabled_one = true;
                    react::disable(state, index, reason).await;
                }
                dead
            }
            other => {
                let family = self.cx.est.route.family;
                react::hold(state, index, self.serving.as_deref(), family, other).await;
                true
            }
        }
    }

    /// The next fallback model with room now, admitted for the next attempt; whether there
    /// was one.
    async fn fall_back(&mut self) -> bool {
        let Some(model) = self.serving.clone() else {
            return false;
        };
        let now = Written {
            model: &model,
            path: &self.path,
            body: &self.body,
        };
        let Some(switched) = self
            .chain
            .next_with_room(self.cx, now, true, Reason::Overloaded, Ask::Now)
            .await
        else {
            return false;
        };
        *self.fell = self.chain.fell.clone();
        self.cx.state.metrics.retry("fallback");
        self.preadmitted = Some(Box::new(switched));
        true
    }
}
