//! The Batch API counted: which project a new batch job goes to (the one with the most room
//! under `limits.batch_concurrent` jobs and `limits.batch_enqueued_tokens` per model), the
//! open jobs this replica holds those quotas for, their release when a job is seen to end (in
//! an answer anyone reads, or the background poll's), and what a finished job's inline results
//! used. Job names come from Google's answers to creations this proxy made, so the registry
//! grows with `limits` (at most `batch_concurrent` per project), never with what clients send.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;

use crate::error::ApiError;
use crate::ledger::{TokenUsage, UsageScanner};
use crate::route::Route;

/// One batch job holding its project's batch quotas.
#[derive(Debug, Clone)]
pub struct Open {
    /// The key it was created with (its key id, stable across reloads).
    pub kid: Arc<str>,
    pub project: Arc<str>,
    pub model: Arc<str>,
    /// Its estimated enqueued tokens.
    pub tokens: u64,
    /// Its client's ledger id.
    pub client: u32,
    /// Who created it (the affinity's creator), once created: a results file is theirs.
    pub owner: Option<Arc<str>>,
    /// Its client's name, when the client has budgets, and the micro-dollars reserved against
    /// them at creation (its estimate at batch prices), until its results are costed.
    pub budget: Option<(Arc<str>, u64)>,
}

/// The open batch jobs of this replica, and those being created.
#[derive(Debug, Default)]
pub struct Batches {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    open: HashMap<String, Open>,
    creating: HashMap<u64, Open>,
    next: u64,
    /// Per client with budgets: what its finished batch jobs cost (micro-dollars) in its day
    /// and month (`(day, month, day's, month's)`); one entry per configured client.
    settled: HashMap<Arc<str>, (i64, i64, u64, u64)>,
}

/// A key that may create the batch: its pool index, key id and project.
pub struct Candidate {
    pub index: usize,
    pub kid: Arc<str>,
    pub project: Arc<str>,
}

/// The quotas a batch creation is held to.
#[derive(Debug, Clone, Copy)]
pub struct Quotas {
    pub concurrent: u64,
    pub enqueued_tokens: u64,
}

/// A creation's hold on its project's batch quotas: released when dropped, unless the job was
/// created ([`Hold::opened`]).
pub struct Hold {
    batches: Arc<Batches>,
    id: u64,
}

impl Hold {
    /// The job was created under `name` (`batches/ID`) by `owner`: it holds the quotas until
    /// it ends.
    pub fn opened(self, name: &str, owner: &str) {
        let mut inner = self.batches.lock();
        if let Some(mut open) = inner.creating.remove(&self.id) {
            open.owner = Some(owner.into());
            inner.open.insert(name.to_string(), open);
        }
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.batches.lock().creating.remove(&self.id);
    }
}

impl Batches {
    fn lock(&self) -> parking_lot::MutexGuard<'_, Inner> {
        self.inner.lock()
    }

    /// Choose the key for a new batch job of `model` with `tokens` enqueued: on the project with
    /// the most token room among those under both quotas (ties: fewer open jobs, then the
    /// candidates' order), held until the creation ends. A 429 when no project has room.
    pub fn reserve(
        self: &Arc<Self>,
        candidates: &[Candidate],
        model: &str,
        tokens: u64,
        client: u32,
        budget: Option<(Arc<str>, u64)>,
        quotas: Quotas,
    ) -> Result<(usize, Hold), ApiError> {
        let mut inner = self.lock();
        let mut best: Option<(&Candidate, u64, u64)> = None;
        for c in candidates {
            let (jobs, enqueued) = inner.used(&c.project, model);
            if jobs >= quotas.concurrent || enqueued.saturating_add(tokens) > quotas.enqueued_tokens
            {
                continue;
            }
            let room = quotas.enqueued_tokens - enqueued;
            let better = match best {
                None => true,
                Some((_, r, j)) => room > r || (room == r && jobs < j),
            };
            if better {
                best = Some((c, room, jobs));
            }
        }
        let Some((chosen, _, _)) = best else {
            return Err(ApiError::PoolExhausted {
                message: format!(
                    "No project of this proxy's pool has batch quota left for {model}: {} batch jobs at once per project (limits.batch_concurrent), {} enqueued tokens per project and model (limits.batch_enqueued_tokens); this batch is estimated at {tokens} tokens. Retry when a batch ends.",
                    quotas.concurrent, quotas.enqueued_tokens
                ),
                retry_after_ms: 60_000,
            });
        };
        inner.next += 1;
        let id = inner.next;
        inner.creating.insert(
            id,
            Open {
                kid: chosen.kid.clone(),
                project: chosen.project.clone(),
                model: model.into(),
                tokens,
                client,
                owner: None,
                budget,
            },
        );
        Ok((
            chosen.index,
            Hold {
                batches: self.clone(),
                id,
            },
        ))
    }

    /// A batch job's answer (get, list entry, cancel) read: when it says the job ended, the
    /// job's quotas are released and it is handed back once, with what its inline results
    /// used (`None`: no inline results in this answer).
    pub fn observe(&self, name: &str, answer: &Value) -> Option<(Open, Option<TokenUsage>)> {
        if !ended(answer) {
            return None;
        }
        let open = self.lock().open.remove(name)?;
        Some((open, results_usage(answer)))
    }

    /// A job that no longer exists (deleted, or Google answered 404): released.
    pub fn forget(&self, name: &str) -> Option<Open> {
        self.lock().open.remove(name)
    }

    /// The open jobs, with the key each was created with (for the background poll).
    pub fn open_jobs(&self) -> Vec<(String, Arc<str>)> {
        self.lock()
            .open
            .iter()
            .map(|(n, o)| (n.clone(), o.kid.clone()))
            .collect()
    }

    /// What `client`'s batch jobs hold against its budgets: the reservations of its open (and
    /// being created) jobs, plus what its finished jobs cost in `day` and in `month`.
    pub fn client_held(&self, client: &str, day: i64, month: i64) -> (u64, u64) {
        let inner = self.lock();
        let reserved: u64 = inner
            .open
            .values()
            .chain(inner.creating.values())
            .filter_map(|o| o.budget.as_ref())
            .filter(|(name, _)| &**name == client)
            .map(|(_, micros)| *micros)
            .sum();
        let (d, m) = match inner.settled.get(client) {
            Some(&(sd, sm, dm, mm)) => (
                if sd == day { dm } else { 0 },
                if sm == month { mm } else { 0 },
            ),
            None => (0, 0),
        };
        (reserved.saturating_add(d), reserved.saturating_add(m))
    }

    /// A finished job of `client` cost `micros` (its reservation already went with the job):
    /// counted in its `day` and `month`.
    pub fn settle(&self, client: &Arc<str>, day: i64, month: i64, micros: u64) {
        let mut inner = self.lock();
        let e = inner
            .settled
            .entry(client.clone())
            .or_insert((day, month, 0, 0));
        if e.0 != day {
            (e.0, e.2) = (day, 0);
        }
        if e.1 != month {
            (e.1, e.3) = (month, 0);
        }
        e.2 = e.2.saturating_add(micros);
        e.3 = e.3.saturating_add(micros);
    }

    /// Jobs open (and being created) on `project`, and the tokens they hold for `model`.
    pub fn used_by(&self, project: &str, model: &str) -> (u64, u64) {
        self.lock().used(project, model)
    }
}

impl Inner {
    fn used(&self, project: &str, model: &str) -> (u64, u64) {
        let mut jobs = 0u64;
        let mut tokens = 0u64;
        for o in self.open.values().chain(self.creating.values()) {
            if &*o.project == project {
                jobs += 1;
                if &*o.model == model {
                    tokens = tokens.saturating_add(o.tokens);
                }
            }
        }
        (jobs, tokens)
    }
}

/// Whether a call creates a batch job of generation requests.
pub fn is_create(route: &Route) -> bool {
    route.action.as_deref() == Some("batchGenerateContent") && route.model.is_some()
}

/// The job a call names (`batches/ID`), if any.
pub fn named(route: &Route) -> Option<&str> {
    route
        .resource
        .as_deref()
        .filter(|r| r.starts_with("batches/"))
}

/// The job's state in an answer: the operation's `metadata.state`, or a bare batch's `state`.
pub fn state_of(answer: &Value) -> Option<&str> {
    answer
        .pointer("/metadata/state")
        .or_else(|| answer.get("state"))
        .and_then(Value::as_str)
}

/// Whether an answer says the job has ended (succeeded, failed, cancelled or expired).
pub fn ended(answer: &Value) -> bool {
    matches!(
        state_of(answer),
        Some(
            "BATCH_STATE_SUCCEEDED"
                | "BATCH_STATE_FAILED"
                | "BATCH_STATE_CANCELLED"
                | "BATCH_STATE_EXPIRED"
                | "JOB_STATE_SUCCEEDED"
                | "JOB_STATE_FAILED"
                | "JOB_STATE_CANCELLED"
                | "JOB_STATE_EXPIRED"
        )
    ) || answer.get("done").and_then(Value::as_bool) == Some(true)
}

/// What a finished job's inline results used: the sum of each response's `usageMetadata`
/// (`response.inlinedResponses.inlinedResponses[]`, or the same under `metadata.output`).
/// `None`: no inline results (a job whose results are a file, or not finished).
pub fn results_usage(answer: &Value) -> Option<TokenUsage> {
    let list = [
        "/response/inlinedResponses/inlinedResponses",
        "/metadata/output/inlinedResponses/inlinedResponses",
        "/output/inlinedResponses/inlinedResponses",
    ]
    .iter()
    .find_map(|p| answer.pointer(p).and_then(Value::as_array))?;
    let mut total = TokenUsage::default();
    for item in list {
        if let Some(u) = item.pointer("/response/usageMetadata") {
            let wrapped = serde_json::json!({ "usageMetadata": u }).to_string();
            if let Some(usage) = UsageScanner::scan_all(wrapped.as_bytes()) {
                total = total.plus(usage);
            }
        }
    }
    Some(total)
}

/// The file a finished job's results were written to (`files/ID`), if any.
pub fn results_file(answer: &Value) -> Option<&str> {
    [
        "/response/responsesFile",
        "/metadata/output/responsesFile",
        "/output/responsesFile",
    ]
    .iter()
    .find_map(|p| answer.pointer(p).and_then(Value::as_str))
}

/// How many requests a creation holds inline (1 for a file input: unknown here).
pub fn requests_count(body: &Value) -> u64 {
    body.pointer("/batch/inputConfig/requests/requests")
        .or_else(|| body.pointer("/batch/input_config/requests/requests"))
        .and_then(Value::as_array)
        .map_or(1, |a| a.len() as u64)
}

/// How many inline results an answer holds.
pub fn results_count(answer: &Value) -> u64 {
    [
        "/response/inlinedResponses/inlinedResponses",
        "/metadata/output/inlinedResponses/inlinedResponses",
        "/output/inlinedResponses/inlinedResponses",
    ]
    .iter()
    .find_map(|p| answer.pointer(p).and_then(Value::as_array))
    .map_or(0, |a| a.len() as u64)
}

/// Tokens a batch creation enqueues, estimated from its inline requests (characters of their
/// texts / 4, as the proxy estimates a generate call), else from the input file's size when
/// the caller knows it (`None`: a file input, estimated elsewhere).
pub fn inline_tokens(body: &Value) -> Option<u64> {
    let requests = body
        .pointer("/batch/inputConfig/requests/requests")
        .or_else(|| body.pointer("/batch/input_config/requests/requests"))
        .and_then(Value::as_array)?;
    let mut chars = 0u64;
    for r in requests {
        count_text(r, &mut chars);
    }
    Some(chars.div_ceil(4))
}

/// The input file a creation names (`files/ID`), if it takes its requests from a file.
pub fn input_file(body: &Value) -> Option<&str> {
    body.pointer("/batch/inputConfig/fileName")
        .or_else(|| body.pointer("/batch/input_config/file_name"))
        .and_then(Value::as_str)
}

fn count_text(v: &Value, acc: &mut u64) {
    match v {
        Value::Object(o) => {
            for (k, v) in o {
                match (k.as_str(), v) {
                    ("text", Value::String(s)) => *acc += s.chars().count() as u64,
                    _ => count_text(v, acc),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| count_text(v, acc)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cands() -> Vec<Candidate> {
        ["p1", "p2"]
            .iter()
            .enumerate()
            .map(|(i, p)| Candidate {
                index: i,
                kid: format!("k{i}").into(),
                project: (*p).into(),
            })
            .collect()
    }

    const Q: Quotas = Quotas {
        concurrent: 2,
        enqueued_tokens: 100,
    };

    #[test]
    fn creations_go_where_the_most_tokens_are_free_and_hold_them_until_the_job_ends() {
        let b = Arc::new(Batches::default());
        let (i, hold) = b.reserve(&cands(), "m", 60, 0, None, Q).unwrap();
        assert_eq!(i, 0);
        hold.opened("batches/a", "c");
        // p1 has 40 left: the next goes to p2.
        let (i, hold) = b.reserve(&cands(), "m", 50, 0, None, Q).unwrap();
        assert_eq!(i, 1);
        hold.opened("batches/b", "c");
        // 60 fits nowhere now (40 and 50 left); a failed creation frees its hold.
        assert!(b.reserve(&cands(), "m", 60, 0, None, Q).is_err());
        drop(b.reserve(&cands(), "m", 45, 0, None, Q).unwrap());
        assert_eq!(b.used_by("p2", "m"), (1, 50));
        // Another model has its own tokens, but the same job count.
        let (_, h) = b.reserve(&cands(), "other", 100, 0, None, Q).unwrap();
        h.opened("batches/c", "c");
        assert!(b.reserve(&cands(), "other", 100, 0, None, Q).is_ok());
        let running = json!({"name": "batches/a", "metadata": {"state": "BATCH_STATE_RUNNING"}});
        assert!(b.observe("batches/a", &running).is_none());
        let done = json!({"name": "batches/a", "metadata": {"state": "BATCH_STATE_SUCCEEDED"}, "done": true,
        "response": {"inlinedResponses": {"inlinedResponses": [
            {"response": {"usageMetadata": {"promptTokenCount": 10, "candidatesTokenCount": 5, "totalTokenCount": 15}}},
            {"response": {"usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 2, "totalTokenCount": 5}}},
            {"error": {"code": 400}}
        ]}}});
        let (open, usage) = b.observe("batches/a", &done).unwrap();
        assert_eq!(&*open.project, "p1");
        let usage = usage.unwrap();
        assert_eq!((usage.input, usage.output), (13, 7));
        assert!(b.observe("batches/a", &done).is_none(), "released once");
        assert_eq!(b.used_by("p1", "m"), (1, 0));
    }

    #[test]
    fn inline_requests_are_estimated_and_a_file_input_is_named() {
        let body = json!({"batch": {"displayName": "x", "inputConfig": {"requests": {"requests": [
            {"request": {"contents": [{"parts": [{"text": "abcdefgh"}]}]}, "metadata": {"key": "1"}},
            {"request": {"contents": [{"parts": [{"text": "abcd"}]}]}}
        ]}}}});
        assert_eq!(inline_tokens(&body), Some(3));
        let file = json!({"batch": {"input_config": {"file_name": "files/in1"}}});
        assert_eq!(inline_tokens(&file), None);
        assert_eq!(input_file(&file), Some("files/in1"));
    }
}
