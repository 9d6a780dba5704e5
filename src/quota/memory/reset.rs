//! The admin reset of the memory store: minute windows, token counts, day counts or holds and
//! disabled keys, for every (project, model) or those a scope names.

use super::super::{ResetKind, ResetScope};
use super::MemoryStore;

impl MemoryStore {
    pub(super) fn reset_now(&self, kind: ResetKind, scope: &ResetScope) {
        // As in reset.lua: a model filter also takes in holds on the whole project (`*`).
        let in_scope = |project: &str, model: &str| {
            scope
                .projects
                .as_ref()
                .is_none_or(|ps| ps.iter().any(|p| p == project))
                && scope
                    .model
                    .as_ref()
                    .is_none_or(|m| m == model || model == "*")
        };
        if kind == ResetKind::Cooldowns {
            self.cooldowns.lock().retain(|(p, m), _| !in_scope(p, m));
            let mut d = self.disabled.lock();
            match &scope.kids {
                Some(kids) => kids.iter().for_each(|k| {
                    d.remove(k);
                }),
                None => d.clear(),
            }
            return;
        }
        for (_, _, b) in self
            .all_buckets()
            .into_iter()
            .filter(|(p, m, _)| in_scope(p, m))
        {
            let mut b = b.lock();
            if matches!(kind, ResetKind::Minute | ResetKind::All) {
                b.log.clear();
                b.tokens = 0;
            }
            if kind == ResetKind::Tokens {
                for e in b.log.iter_mut() {
                    e.tokens = 0;
                }
                b.tokens = 0;
            }
            if matches!(kind, ResetKind::Daily | ResetKind::All) {
                b.day_requests = 0;
            }
        }
        if matches!(kind, ResetKind::Daily | ResetKind::All) {
            for (project, models) in self.write().days.iter_mut() {
                models.retain(|model, _| !in_scope(project, model));
            }
        }
    }
}
