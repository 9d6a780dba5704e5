//! Admission in Redis: the candidates, their limits and key names prepared here, checked and
//! reserved by one run of `admit.lua`.

use super::super::{AdmitOutcome, AdmitRequest, Candidate, ClientHold, Reservation, Strategy};
use redis::Value;

use super::{RedisStore, int};
use crate::error::LimitKind;
use crate::quota::{DayInfo, StoreError};

impl RedisStore {
    /// One `EVALSHA` of the admission script: choose a key with room and reserve, atomically.
    /// (A second one only in the moment around midnight when Redis's clock is on another day
    /// than this proxy's: the script names the day, and the keys of that day are sent.)
    pub(super) async fn admit_script(
        &self,
        req: &AdmitRequest,
    ) -> Result<AdmitOutcome, StoreError> {
        let v = self.admit_run(&self.admit, req, &[]).await?;
        self.admit_answer(req, &v)
    }

    /// `script` run for `req` (admit.lua) or for `req` and `rest` (admit_many.lua), again with
    /// Redis's day when it names another ({3, day}: alone the answer, gathered each answer):
    /// the script's answer.
    pub(super) async fn admit_run(
        &self,
        script: &redis::Script,
        req: &AdmitRequest,
        rest: &[&AdmitRequest],
    ) -> Result<Vec<Value>, StoreError> {
        let (projects, project_of) = projects(req);
        let mut di = self.day();
        for _ in 0..3 {
            let mut cmd = self.admit_cmd(script, req, &projects, &project_of, &di);
            if !rest.is_empty() {
                cmd.arg(rest.len());
                for r in rest {
                    cmd.arg(r.tokens).arg(r.rotation);
                }
            }
            let v: Vec<Value> = self.eval(script, &cmd).await?;
            let head = match v.first() {
                Some(Value::Array(first)) if !rest.is_empty() => first.as_slice(),
                _ => v.as_slice(),
            };
            if head.len() == 2 && matches!(head.first().map(int), Some(Ok(3))) {
                // Redis's day: its next midnight is worked out in the script.
                di.day = int(&head[1])?;
                di.next_midnight_ms = 0;
                continue;
            }
            return Ok(v);
        }
        Err(StoreError::Protocol(
            "the admission script's day kept changing".into(),
        ))
    }

    /// The admission script's call (`script`: admit.lua, or admit_many.lua which takes the
    /// same and the further admissions after them): every key it touches in `KEYS` (in the
    /// order admit.lua reads them), limits and choices in `ARGV`. Built straight into one
    /// command, each key name written into one reused buffer: no string per name, no copy of
    /// the arguments.
    fn admit_cmd(
        &self,
        script: &redis::Script,
        req: &AdmitRequest,
        projects: &[&Candidate],
        project_of: &[usize],
        di: &DayInfo,
    ) -> redis::Cmd {
        let day = di.day;
        let (k, model) = (&self.keys, req.model.as_str());
        let client_keys = if req.client.is_some() { 6 } else { 0 };
        let key_count = req.candidates.len() + 5 * projects.len() + 2 + client_keys;
        let mut cmd = Self::evalsha(script, key_count);
        let mut name = String::with_capacity(128);
        let mut key = |cmd: &mut redis::Cmd, write: &dyn Fn(&mut String)| {
            name.clear();
            write(&mut name);
            cmd.arg(name.as_str());
        };
        for c in &req.candidates {
            key(&mut cmd, &|o| k.write_disabled(o, &c.kid));
        }
        for f in projects {
            key(&mut cmd, &|o| k.write_cooldown(o, &f.project, model));
            key(&mut cmd, &|o| k.write_cooldown(o, &f.project, "*"));
        }
        for f in projects {
            key(&mut cmd, &|o| k.write_day(o, &f.project, model, day));
        }
        for f in projects {
            key(&mut cmd, &|o| k.write_window(o, &f.project, model, "rq"));
            key(&mut cmd, &|o| k.write_window(o, &f.project, model, "tk"));
        }
        key(&mut cmd, &|o| k.write_named(o, "seq"));
        key(&mut cmd, &|o| k.write_named(o, "pairs"));
        if let Some(c) = &req.client {
            for name in k.client(&c.name, c.period.day, c.period.month) {
                cmd.arg(name);
            }
        }
        cmd.arg(req.tokens)
            .arg(if req.strategy == Strategy::Ordered {
                "o"
            } else {
                "h"
            })
            .arg(req.rotation)
            .arg(di.offset_ms)
            .arg(di.next_midnight_ms)
            .arg(self.now_arg())
            .arg(day)
            .arg(req.candidates.len())
            .arg(projects.len());
        for at in project_of {
            cmd.arg(*at);
        }
        for f in projects {
            cmd.arg(f.limits.minute)
                .arg(f.limits.token_minute)
                .arg(f.limits.daily);
            name.clear();
            name.push_str(&f.project);
            name.push('|');
            name.push_str(model);
            cmd.arg(name.as_str());
        }
        match &req.client {
            Some(c) => client_args(&mut cmd, c),
            None => {
                cmd.arg("0");
            }
        }
        cmd
    }

    /// What the admission script answered, as an outcome.
    pub(super) fn admit_answer(
        &self,
        req: &AdmitRequest,
        v: &[Value],
    ) -> Result<AdmitOutcome, StoreError> {
        let code = v.first().map(int).transpose()?.unwrap_or(-1);
        match (code, v.len()) {
            (1, 5) => {
                let pos = usize::try_from(int(&v[1])?)
                    .map_err(|_| StoreError::Protocol("negative candidate".into()))?;
                let c = req
                    .candidates
                    .get(pos)
                    .ok_or_else(|| StoreError::Protocol("candidate out of range".into()))?;
                Ok(AdmitOutcome::Admitted(Reservation {
                    index: c.index,
                    kid: c.kid.clone(),
                    project: c.project.clone(),
                    model: req.model.clone(),
                    id: int(&v[2])? as u64,
                    tokens: req.tokens,
                    remaining_requests: int(&v[3])?.max(0) as u64,
                    remaining_tokens: int(&v[4])?.max(0) as u64,
                    uncounted: false,
                    local: false,
                    client: req.client.as_ref().map(|c| ClientHold {
                        name: c.name.clone(),
                        // The client's window and slot are by admission id, as the pool's.
                        id: int(&v[2]).map_or(0, |i| i as u64),
                        day: c.period.day,
                        month: c.period.month,
                        cost_micros: c.cost_micros,
                        actual_cost_micros: None,
                    }),
                }))
            }
            (4, 4) => Ok(AdmitOutcome::ClientRefused {
                limit: crate::quota::client::limit_from_code(int(&v[1])?).ok_or_else(|| {
                    StoreError::Protocol(format!("admission script answered {v:?}"))
                })?,
                limit_value: int(&v[2])?.max(0) as u64,
                retry_after_ms: int(&v[3])?.max(1) as u64,
            }),
            (0, 4) => Ok(AdmitOutcome::Refused {
                limit: match int(&v[1])? {
                    1 => LimitKind::RequestsPerMinute,
                    2 => LimitKind::TokensPerMinute,
                    _ => LimitKind::RequestsPerDay,
                },
                limit_value: int(&v[2])?.max(0) as u64,
                retry_after_ms: int(&v[3])?.max(1) as u64,
            }),
            (2, 2) => {
                let ms = int(&v[1])?;
                Ok(AdmitOutcome::Unavailable {
                    retry_after_ms: (ms > 0).then_some(ms as u64),
                })
            }
            _ => Err(StoreError::Protocol(format!(
                "admission script answered {v:?}"
            ))),
        }
    }
}

/// The projects of `req`'s candidates in order of first appearance (their limits: their first
/// key's), and each key's project number (1-based).
fn projects(req: &AdmitRequest) -> (Vec<&Candidate>, Vec<usize>) {
    let mut projects: Vec<&Candidate> = Vec::new();
    let mut project_of: Vec<usize> = Vec::with_capacity(req.candidates.len());
    for c in &req.candidates {
        let at = match projects.iter().position(|f| f.project == c.project) {
            Some(at) => at,
            None => {
                projects.push(c);
                projects.len() - 1
            }
        };
        project_of.push(at + 1);
    }
    (projects, project_of)
}

/// A client's part of a script's arguments (client.lua's `client_check`): its caps (0: none),
/// the cost reserved, its lease and its periods' ends.
pub(super) fn client_args(cmd: &mut redis::Cmd, c: &crate::quota::ClientAdmit) {
    let caps = c.caps;
    let n = |v: Option<u64>| v.unwrap_or(0);
    cmd.arg("1");
    for v in [
        caps.rpm,
        caps.tpm,
        caps.rpd,
        caps.max_concurrent,
        caps.daily_micros,
        caps.monthly_micros,
    ] {
        cmd.arg(n(v));
    }
    cmd.arg(c.cost_micros);
    cmd.arg(c.lease_ms.clamp(1, crate::quota::MAX_HOLD_MS));
    cmd.arg(c.period.day_end_ms);
    cmd.arg(c.period.month_end_ms);
}
