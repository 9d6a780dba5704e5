//! The `project|model` pairs the store has seen (the set every status read walks), scripts run
//! over them in chunks, and the admin reset of the pairs a scope names.

use redis::{Script, Value};

use super::{PAIRS_PER_CALL, RedisStore, int};
use crate::quota::{ResetKind, ResetScope, StoreError};

impl RedisStore {
    /// The `project|model` pairs counted in the last two days (the set admission keeps).
    pub(super) async fn pairs(&self) -> Result<Vec<(String, String)>, StoreError> {
        self.members(self.keys.pairs()).await
    }

    /// The `(project, model)` members of the `project|model` set `set`, sorted.
    pub(super) async fn members(&self, set: String) -> Result<Vec<(String, String)>, StoreError> {
        let members: Vec<String> = self.cmd(redis::cmd("SMEMBERS").arg(set).clone()).await?;
        let mut out: Vec<(String, String)> = members
            .iter()
            .filter_map(|pm| pm.split_once('|'))
            .map(|(p, m)| (p.to_string(), m.to_string()))
            .collect();
        out.sort();
        Ok(out)
    }

    /// Run a usage or reset `script` over `pairs` with `args` before the day: `KEYS` are each
    /// pair's window set, token hash and day count (and with `members`, the set of pairs last,
    /// each pair's member of it after the day in `ARGV`). The script answers `{1, day}` when
    /// Redis's day is not the one named (a moment around midnight): the keys of that day are
    /// sent.
    pub(super) async fn run_on_pairs(
        &self,
        script: &Script,
        pairs: &[(String, String)],
        args: &[String],
        members: bool,
    ) -> Result<Vec<Value>, StoreError> {
        let mut day = self.day().day;
        for _ in 0..3 {
            let mut inv = script.prepare_invoke();
            for (p, m) in pairs {
                let (rq, tk) = self.keys.window(p, m);
                inv.key(rq).key(tk).key(self.keys.day(p, m, day));
            }
            if members {
                inv.key(self.keys.pairs());
            }
            for a in args {
                inv.arg(a);
            }
            inv.arg(day);
            if members {
                for (p, m) in pairs {
                    inv.arg(format!("{p}|{m}"));
                }
            }
            let v: Vec<Value> = self.run(inv).await?;
            match v.first().map(int).transpose()? {
                Some(0) => return Ok(v),
                Some(1) if v.len() == 2 => day = int(&v[1])?,
                _ => {
                    return Err(StoreError::Protocol(format!(
                        "a store script answered {v:?}"
                    )));
                }
            }
        }
        Err(StoreError::Protocol(
            "the store script's day kept changing".into(),
        ))
    }

    /// An admin reset of `kind` over the pairs `scope` names (see [`QuotaStore::reset`]).
    pub(super) async fn reset_pairs(
        &self,
        kind: ResetKind,
        scope: &ResetScope,
    ) -> Result<(), StoreError> {
        let kind = match kind {
            ResetKind::Minute => "minute",
            ResetKind::Daily => "daily",
            ResetKind::Tokens => "tokens",
            ResetKind::All => "all",
            ResetKind::Cooldowns => {
                // Holds of the named pairs, and the named keys' disabled flags: one pipeline.
                let mut held = self.members(self.keys.held()).await?;
                held.retain(|(p, m)| wanted(scope, p, m));
                let kids = scope.kids.as_deref().unwrap_or_default();
                if held.is_empty() && kids.is_empty() {
                    return Ok(());
                }
                let mut del = redis::cmd("DEL");
                for (p, m) in &held {
                    del.arg(self.keys.cooldown(p, m));
                }
                for k in kids {
                    del.arg(self.keys.disabled(k));
                }
                let mut pipe = redis::pipe();
                pipe.add_command(del).ignore();
                if !held.is_empty() {
                    // The members as stored: split at the first `|`, joined again.
                    let members: Vec<String> =
                        held.iter().map(|(p, m)| format!("{p}|{m}")).collect();
                    pipe.cmd("SREM")
                        .arg(self.keys.held())
                        .arg(&members)
                        .ignore();
                }
                let mut conn = self.conn.clone();
                let () = self.deadline(pipe.query_async(&mut conn)).await?;
                return Ok(());
            }
        };
        let pairs: Vec<(String, String)> = self
            .pairs()
            .await?
            .into_iter()
            .filter(|(p, m)| wanted(scope, p, m))
            .collect();
        let args = [
            kind.to_string(),
            self.day().offset_ms.to_string(),
            self.now_arg(),
        ];
        for chunk in pairs.chunks(PAIRS_PER_CALL) {
            self.run_on_pairs(&self.reset, chunk, &args, false).await?;
        }
        Ok(())
    }
}

/// Whether an admin reset naming `projects` (all when `None`) and `model` (all when `None`)
/// covers the pair: a project-wide hold (`*`) is covered by any model.
fn wanted(scope: &ResetScope, project: &str, model: &str) -> bool {
    if let Some(ps) = &scope.projects
        && !ps.is_empty()
        && !ps.iter().any(|p| p == project)
    {
        return false;
    }
    match scope.model.as_deref() {
        Some(m) if !m.is_empty() => model == m || model == "*",
        _ => true,
    }
}
