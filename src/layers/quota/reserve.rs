//! An attempt's room and key: the admission for the model serving (waiting in the queue within
//! the request's allowance), a fallback model with room when the pool has none for it, and the
//! key: the reservation's, a batch creation's by batch headroom, or the next usable one for a
//! call that spends nothing.

use super::admit::{self, Within};
use super::fallback::{Ask, Switched, Written};
use super::question::Want;
use super::step::{Attempt, Step};
use super::{batch, refusal, trace};
use crate::error::ApiError;
use crate::fallback::Reason;
use crate::quota::queue::Claim;
use crate::quota::{Reservation, Settlement};
use crate::state::Core;

impl<S> Step<'_, S> {
    /// The next attempt's reservation (`None`: a call that spends no quota). A fallback model
    /// admitted after Google's overload answer goes first; else the model serving is admitted,
    /// or, with no room for it within the request's allowance, the first fallback with room
    /// within what is left of it. No room anywhere is the answer.
    pub async fn reserve(&mut self) -> Result<Option<Reservation>, ApiError> {
        if let Some(switched) = self.preadmitted.take() {
            return Ok(Some(self.switch(*switched)));
        }
        let Some(model) = self.serving.clone() else {
            return Ok(None);
        };
        let cx = self.cx;
        // What this request holds while it waits, for the queue's bounds.
        let claim = Claim {
            client: self.account.as_deref().map_or(0, |a| a.client),
            weight: cx.caller.client().map_or(1, |c| c.limits.weight()),
            bytes: self.body.len() as u64,
        };
        let span = trace::admission(self.trace.as_ref(), cx.state);
        let want = Want {
            route: &cx.est.route,
            est: &cx.est.estimate,
            model: &model,
            pinned: cx.est.pinned,
            avoid: &self.avoid,
            client: self.client_part.clone().filter(|_| self.carried.is_none()),
            vertex_ok: self.vertex_ok,
        };
        let admitted = admit::admit(cx.state, want, self.within(claim)).await;
        let waited = match &admitted {
            Ok(a) => a.waited,
            Err(n) => n.waited,
        };
        trace::admitted(span, waited, admitted.as_ref().err().map(|n| &n.error));
        self.waited(waited);
        let refused = match admitted {
            Ok(a) => return Ok(Some(a.reservation)),
            Err(n) => n.error,
        };
        let switched = if refusal::is_pool_refusal(&refused) {
            let now = Written {
                model: &model,
                path: &self.path,
                body: &self.body,
            };
            let within = Ask::Within(self.within(claim));
            let with_client = self.carried.is_none();
            let next = self
                .chain
                .next_with_room(cx, now, with_client, Reason::NoRoom, within);
            crate::boxed::apart(|| next).await
        } else {
            None
        };
        let Some(switched) = switched else {
            self.served.refused = refusal::is_refusal(&refused);
            return Err(refused);
        };
        *self.fell = self.chain.fell.clone();
        self.waited(switched.waited);
        Ok(Some(self.switch(switched)))
    }

    /// The key for the attempt: the reservation's; for a call that spends no quota, a batch
    /// creation's project chosen by batch headroom, else the next usable key.
    pub async fn key(&mut self, reservation: Option<&Reservation>) -> Result<usize, ApiError> {
        if let Some(r) = reservation {
            return Ok(r.index);
        }
        let cx = self.cx;
        if !crate::batch::is_create(&cx.est.route) {
            return Ok(free_key(
                cx.state,
                cx.est.pinned,
                &self.avoid,
                self.vertex_ok,
            ));
        }
        // Boxed apart: a batch creation is rare, and its future (and poll) would make every
        // request's larger.
        // Tried again: the last attempt's hold and budget reservation given back first, or the
        // job would count twice against its project's batch room and its client's budgets.
        let (last, body, avoid) = (self.batch_hold.take(), &self.body, &self.avoid);
        let choose = async move {
            if let Some(hold) = last {
                (*hold).release().await;
            }
            batch::choose(cx.state, cx.caller, cx.est, body, avoid).await
        };
        match crate::boxed::apart(|| choose).await {
            Some(Ok((i, hold))) => {
                self.batch_hold = Some(Box::new(hold));
                Ok(i)
            }
            Some(Err(e)) => {
                self.served.refused = true;
                Err(e)
            }
            None => Ok(free_key(
                cx.state,
                cx.est.pinned,
                &self.avoid,
                self.vertex_ok,
            )),
        }
    }

    /// The attempt on key `index`, with its reservation's settlement (a retry's carried
    /// client part in it; an answer that carries no usage settles to its estimate).
    pub fn open(&mut self, index: usize, reservation: Option<Reservation>) -> Attempt {
        self.served.key = Some(index);
        let settlement = reservation.map(|r| {
            let mut s = Settlement::new(self.cx.state.store.clone(), r);
            if let Some(c) = self.carried.take() {
                s.carry_client(c);
            }
            if self.cx.est.route.unreported_usage {
                s.keeping_estimate_unreported()
            } else {
                s
            }
        });
        Attempt {
            index,
            settlement,
            span: None,
        }
    }

    /// How long an admission may wait now.
    fn within(&self, claim: Claim) -> Within {
        Within {
            deadline: self.deadline,
            allowance: self.allowance,
            claim,
        }
    }

    /// Time in line is not taken from the tries' budget, nor given twice.
    fn waited(&mut self, waited: Option<std::time::Duration>) {
        if let Some(w) = waited {
            self.served.waited = Some(self.served.waited.unwrap_or_default() + w);
            self.allowance = self.allowance.saturating_sub(w);
            self.deadline += w;
        }
    }

    /// Write the request for the fallback model admitted in `switched`: the model it is
    /// counted under (its quota, its client's part, its ledger series) and the path and body
    /// sent. Its keys are not the asked model's: none avoided, its tries counted anew.
    fn switch(&mut self, switched: Switched) -> Reservation {
        self.avoid.clear();
        self.base = self.attempt - 1;
        if let Some(a) = self.account.as_deref_mut() {
            a.model = switched.model.clone();
        }
        self.serving = Some(switched.model);
        self.client_part = switched.client_part;
        self.path = std::borrow::Cow::Owned(switched.path);
        self.body = switched.body;
        switched.reservation
    }
}

/// A key for a call that spends no quota: the pinned one, else the next usable in turn. Vertex
/// entries serve only what they can (`vertex_ok`), and only when `pool.order` does not put AI
/// Studio keys first; `vertex-first` tries them before the keys.
pub(super) fn free_key(
    state: &Core,
    pinned: Option<usize>,
    avoid: &[usize],
    vertex_ok: bool,
) -> usize {
    if let Some(p) = pinned {
        return p;
    }
    let pool = &state.pool;
    let n = pool.keys.len();
    // What this replica saw die recently (the store stays the truth).
    let health = &pool.health;
    let start = pool.next_turn() as usize;
    let usable = |i: &usize| !avoid.contains(i) && !health.recently_dead(&pool.keys[*i].kid);
    if !pool.has_vertex {
        return (0..n)
            .map(|i| (start + i) % n)
            .find(usable)
            .unwrap_or(start % n);
    }
    let vertex = |i: &usize| pool.keys[*i].vertex.is_some();
    let turn = || (0..n).map(|i| (start + i) % n);
    let studio = turn().filter(|i| !vertex(i)).find(usable);
    // A pool of Vertex entries alone: the next usable entry (what it cannot serve is refused
    // before this).
    let ai_studio_only = || {
        studio
            .or_else(|| turn().find(|i| !vertex(i)))
            .or_else(|| turn().find(usable))
            .unwrap_or(start % n)
    };
    if !vertex_ok {
        return ai_studio_only();
    }
    match pool.order {
        crate::config::Order::AiStudioFirst => ai_studio_only(),
        crate::config::Order::VertexFirst => turn()
            .filter(vertex)
            .find(usable)
            .or(studio)
            .unwrap_or_else(ai_studio_only),
        crate::config::Order::Headroom => turn().find(usable).unwrap_or_else(ai_studio_only),
    }
}
