//! Admissions gathered in flight: while one admission for a (model, candidates) is in Redis,
//! the ones that arrive for the same wait, and the first of them then takes them all to Redis in
//! one run of `admit_many.lua`, which decides each in turn as `admit.lua` would have one after
//! the other. An admission alone, or with a client part (its own keys), goes as before.
//!
//! Redis runs one script at a time; each run costs a fixed part (the call, its arguments, the
//! clock, the flags and each window read) larger than deciding one admission. Gathered, that part
//! is paid once for all of them. Nobody waits for a timer: the waiting is the time the running
//! call takes anyway.

use std::collections::VecDeque;
use std::hash::{BuildHasher, Hash, Hasher};

use parking_lot::Mutex;
use redis::Value;
use tokio::sync::oneshot;

use super::super::{AdmitOutcome, AdmitRequest, Candidate};
use super::RedisStore;
use crate::hashing::Map;
use crate::quota::StoreError;

/// Most admissions in one run of `admit_many.lua` (one leading, the rest waiting).
const MOST_GATHERED: usize = 64;
/// Most admissions waiting at one gate; more go on their own, as before gathering.
const MOST_WAITING: usize = 1024;

/// The gates, one per (model, candidates) with an admission in Redis. A gate exists while its
/// admissions run or wait, so the table holds at most the admissions in flight. Its keys are a
/// seeded hash of a client-chosen model: two asks that collide share a gate, and its leader
/// takes only those that ask the same (`same_ask`), so a collision costs a wait, never a
/// wrong answer.
#[derive(Default)]
pub(super) struct Gather {
    gates: Mutex<Map<u64, VecDeque<Waiter>>>,
    hasher: foldhash::fast::RandomState,
}

/// An admission waiting at a gate, and where its answer goes.
struct Waiter {
    req: AdmitRequest,
    tx: oneshot::Sender<Turn>,
}

/// What a waiting admission is told.
enum Turn {
    /// Its answer: another admission took it to Redis.
    Done(Result<AdmitOutcome, StoreError>),
    /// Its turn to lead: it takes itself and those waiting with it to Redis.
    Lead,
}

impl Gather {
    /// The gate's number: the same for every admission that could go in one run with `req`.
    fn gate(&self, req: &AdmitRequest) -> u64 {
        let mut h = self.hasher.build_hasher();
        req.model.hash(&mut h);
        for c in &req.candidates {
            c.kid.hash(&mut h);
        }
        h.finish()
    }
}

/// Whether `a` and `b` can go in one run: the same model, strategy and candidates (keys,
/// projects, limits), neither with a client part.
fn same_ask(a: &AdmitRequest, b: &AdmitRequest) -> bool {
    let same = |x: &Candidate, y: &Candidate| {
        x.index == y.index && x.kid == y.kid && x.project == y.project && x.limits == y.limits
    };
    a.model == b.model
        && a.strategy == b.strategy
        && a.client.is_none()
        && b.client.is_none()
        && a.candidates.len() == b.candidates.len()
        && a.candidates
            .iter()
            .zip(&b.candidates)
            .all(|(x, y)| same(x, y))
}

/// Passes a gate on when its leader is done or dropped: to the first waiter still there, or,
/// with none, the gate closes.
struct Handoff<'a> {
    gather: &'a Gather,
    gate: u64,
}

impl Drop for Handoff<'_> {
    fn drop(&mut self) {
        hand_on(self.gather, self.gate);
    }
}

/// The gate `gate` to its first waiter still waiting, or closed when none is.
fn hand_on(gather: &Gather, gate: u64) {
    let mut gates = gather.gates.lock();
    let Some(waiting) = gates.get_mut(&gate) else {
        return;
    };
    while let Some(next) = waiting.pop_front() {
        if next.tx.send(Turn::Lead).is_ok() {
            return;
        }
    }
    gates.remove(&gate);
}

/// A waiting admission's end of its channel. Dropped with its turn to lead sent but not yet
/// read (the request went away just then), it passes the turn on, so the gate never stalls.
struct Waiting<'a> {
    gather: &'a Gather,
    gate: u64,
    rx: oneshot::Receiver<Turn>,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if let Ok(Turn::Lead) = self.rx.try_recv() {
            hand_on(self.gather, self.gate);
        }
    }
}

impl RedisStore {
    /// Admission, gathered with others for the same (model, candidates) when one is in Redis.
    pub(super) async fn admit_gathered(
        &self,
        req: &AdmitRequest,
    ) -> Result<AdmitOutcome, StoreError> {
        if req.client.is_some() {
            return self.admit_script(req).await;
        }
        let gate = self.gather.gate(req);
        let rx = {
            let mut gates = self.gather.gates.lock();
            match gates.get_mut(&gate) {
                None => {
                    gates.insert(gate, VecDeque::new());
                    Ok(None)
                }
                Some(waiting) if waiting.len() < MOST_WAITING => {
                    let (tx, rx) = oneshot::channel();
                    waiting.push_back(Waiter {
                        req: req.clone(),
                        tx,
                    });
                    Ok(Some(rx))
                }
                // A crowd at one gate: go alone (pipelined with the rest, as before gathering).
                Some(_) => Err(()),
            }
        };
        let Ok(rx) = rx else {
            return self.admit_script(req).await;
        };
        if let Some(rx) = rx {
            let mut waiting = Waiting {
                gather: &self.gather,
                gate,
                rx,
            };
            // Each leader's run is bounded by the store's timeout; two of them cover the run
            // that was in Redis when this one arrived and the one that takes it.
            match tokio::time::timeout(2 * self.timeout, &mut waiting.rx).await {
                Ok(Ok(Turn::Done(answer))) => return answer,
                Ok(Ok(Turn::Lead)) => {}
                // The admission that had taken it was dropped before its answer: it may have
                // been counted; asking alone may count it twice, never admit past a limit.
                Ok(Err(_)) => return self.admit_script(req).await,
                Err(_) => {
                    return Err(StoreError::Timeout(2 * self.timeout.as_millis() as u64));
                }
            }
        }
        let _handoff = Handoff {
            gather: &self.gather,
            gate,
        };
        // Those waiting that ask the same, in their order (up to a run's most); the rest stay.
        let others: Vec<Waiter> = {
            let mut gates = self.gather.gates.lock();
            let mut taken = Vec::new();
            if let Some(waiting) = gates.get_mut(&gate) {
                let mut rest = VecDeque::with_capacity(waiting.len());
                for w in waiting.drain(..) {
                    if taken.len() + 1 < MOST_GATHERED && same_ask(&w.req, req) {
                        taken.push(w);
                    } else {
                        rest.push_back(w);
                    }
                }
                *waiting = rest;
            }
            taken
        };
        if others.is_empty() {
            return self.admit_script(req).await;
        }
        let asks: Vec<&AdmitRequest> = others.iter().map(|w| &w.req).collect();
        match self.admit_many(req, &asks).await {
            Ok(mut answers) => {
                let mine = answers.remove(0);
                for (w, a) in others.into_iter().zip(answers) {
                    let _ = w.tx.send(Turn::Done(Ok(a)));
                }
                Ok(mine)
            }
            Err(e) => {
                for w in others {
                    let _ = w.tx.send(Turn::Done(Err(e.clone())));
                }
                Err(e)
            }
        }
    }

    /// Admissions asking the same (model, strategy and candidates, none with a client part)
    /// decided in one run, each in turn as if it came alone after the ones before it: what
    /// gathering sends. Public for the tests that hold it to `admit`'s decisions one by one.
    pub async fn admit_all(&self, reqs: &[AdmitRequest]) -> Result<Vec<AdmitOutcome>, StoreError> {
        match reqs {
            [] => Ok(Vec::new()),
            [one] => Ok(vec![self.admit_script(one).await?]),
            [first, rest @ ..] => {
                if !rest.iter().all(|r| same_ask(first, r)) {
                    return Err(StoreError::Protocol(
                        "admissions gathered must ask the same, without a client part".into(),
                    ));
                }
                let rest: Vec<&AdmitRequest> = rest.iter().collect();
                self.admit_many(first, &rest).await
            }
        }
    }

    /// One run of `admit_many.lua` for `first` and `rest` (all asking the same): one answer per
    /// admission, `first`'s first.
    async fn admit_many(
        &self,
        first: &AdmitRequest,
        rest: &[&AdmitRequest],
    ) -> Result<Vec<AdmitOutcome>, StoreError> {
        let v = self.admit_run(&self.admit_many, first, rest).await?;
        if v.len() != rest.len() + 1 {
            return Err(StoreError::Protocol(format!(
                "gathered admission answered {} answers for {}",
                v.len(),
                rest.len() + 1
            )));
        }
        let each = |i: usize| -> Result<&[Value], StoreError> {
            match &v[i] {
                Value::Array(a) => Ok(a),
                other => Err(StoreError::Protocol(format!(
                    "gathered admission answered {other:?}"
                ))),
            }
        };
        let mut out = Vec::with_capacity(v.len());
        out.push(self.admit_answer(first, each(0)?)?);
        for (i, r) in rest.iter().enumerate() {
            out.push(self.admit_answer(r, each(i + 1)?)?);
        }
        Ok(out)
    }
}
