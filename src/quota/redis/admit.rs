//! Admission in Redis: the candidates, their limits and key names prepared here, checked and
//! reserved by one run of `admit.lua`.

use super::super::{AdmitOutcome, AdmitRequest, Candidate, Reservation, Strategy};
use redis::Value;

use super::{RedisStore, int};
use crate::error::LimitKind;
use crate::quota::StoreError;

impl RedisStore {
    /// One `EVALSHA` of the admission script: choose a key with room and reserve, atomically.
    pub(super) async fn admit_script(
        &self,
        req: &AdmitRequest,
    ) -> Result<AdmitOutcome, StoreError> {
        let di = self.day();
        let (p, model) = (&self.prefix, &req.model);
        // Projects in order of first appearance (their limits: their first key's), and each
        // key's project number. Key names are built here, not in Lua (see admit.lua), exactly
        // as prelude.lua's `bucket`, `day_key` and `cooldown_key` build them.
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
        let mut inv = self.admit.prepare_invoke();
        inv.key(self.route_key())
            .arg(p)
            .arg(model)
            .arg(req.tokens)
            .arg(if req.strategy == Strategy::Ordered {
                "o"
            } else {
                "h"
            })
            .arg(req.rotation)
            .arg(di.offset_ms)
            .arg(di.next_midnight_ms)
            .arg(self.now_arg())
            .arg(di.day)
            .arg(req.candidates.len())
            .arg(projects.len());
        for c in &req.candidates {
            inv.arg(format!("{p}:dis:{}", c.kid));
        }
        for f in &projects {
            inv.arg(format!("{p}:cd:{}:{model}", f.project))
                .arg(format!("{p}:cd:{}:*", f.project));
        }
        for f in &projects {
            inv.arg(format!("{p}:{}:{model}:day:{}", f.project, di.day));
        }
        for at in &project_of {
            inv.arg(*at);
        }
        for f in &projects {
            inv.arg(f.limits.minute)
                .arg(f.limits.token_minute)
                .arg(f.limits.daily)
                .arg(format!("{p}:{}:{model}:rq", f.project))
                .arg(format!("{p}:{}:{model}:tk", f.project))
                .arg(format!("{}|{model}", f.project))
                .arg(&*f.project);
        }
        inv.arg(format!("{p}:seq")).arg(format!("{p}:pairs"));
        let v: Vec<Value> = self.run(inv).await?;
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
                }))
            }
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
