//! What each project spent since a moment (billed cost, summed from the hour buckets: the
//! monthly spend caps read it), and [`CostWatch`], told of each answer's billed cost as it is
//! recorded, so a watcher need not ask the ledger on every request.

use std::sync::Arc;

use super::Ledger;
use super::book::{HOUR_MS, field};
use crate::quota::StoreError;

/// Told of the billed cost of every answer on the projects it watches.
pub trait CostWatch: Send + Sync {
    /// Whether `project`'s costs are watched (asked once per answer, when it starts).
    fn watches(&self, project: &str) -> bool;
    /// An answer on `project` was recorded at `nano` billed nano-USD.
    fn billed(&self, project: &Arc<str>, nano: u64);
}

/// The watcher, as the ledger holds it.
pub(crate) struct Watcher(pub(crate) Arc<dyn CostWatch>);

impl Ledger {
    /// Tell `watch` of every billed cost from now on (replaces any watcher before it).
    pub fn watch_costs(&self, watch: Arc<dyn CostWatch>) {
        self.watch.store(Some(Arc::new(Watcher(watch))));
    }

    /// The watcher of `project`'s costs, if any watches it.
    pub(crate) fn watcher_of(&self, project: &str) -> Option<(Arc<dyn CostWatch>, Arc<str>)> {
        let w = self.watch.load();
        let w = w.as_ref()?;
        w.0.watches(project).then(|| (w.0.clone(), project.into()))
    }

    /// Billed cost (nano-USD) of each of `projects` since `from_ms`, to the hour (the hour
    /// `from_ms` falls in counts whole): every replica's, with Redis, read first (a closed
    /// hour once, the open one at most once a second).
    pub async fn project_costs_since(
        &self,
        from_ms: i64,
        projects: &[&str],
    ) -> Result<Vec<u64>, StoreError> {
        self.refresh(None, Some(from_ms)).await?;
        let ids: Vec<Option<u32>> = projects.iter().map(|p| self.projects.get(p)).collect();
        let mut out = vec![0u64; projects.len()];
        if ids.iter().all(Option::is_none) {
            return Ok(out);
        }
        let last = self.clock.now_ms().div_euclid(HOUR_MS);
        self.each_bucket(true, from_ms.div_euclid(HOUR_MS), last, |_, _, bucket| {
            for (s, c) in bucket {
                if let Some(i) = ids.iter().position(|id| *id == Some(s.project)) {
                    out[i] = out[i].saturating_add(c.0[field::COST]);
                }
            }
        });
        Ok(out)
    }

    /// What `tokens` input tokens of `model` cost `project` (nano-USD, billed): the least a
    /// request can cost before its answer says more.
    pub fn input_cost_nano(&self, model: &str, project: &str, tokens: u64) -> u64 {
        let usage = super::TokenUsage {
            input: tokens,
            ..super::TokenUsage::default()
        };
        self.pricing
            .load()
            .prices
            .cost(model, &usage, self.billing_of(project))
            .billed_nano
    }
}

#[cfg(test)]
mod tests {
    use parking_lot::Mutex;

    use super::*;
    use crate::ledger::TokenUsage;
    use crate::quota::{Clock, ManualClock};

    #[derive(Default)]
    struct Seen(Mutex<Vec<(String, u64)>>);

    impl CostWatch for Seen {
        fn watches(&self, project: &str) -> bool {
            project == "p"
        }
        fn billed(&self, project: &Arc<str>, nano: u64) {
            self.0.lock().push((project.to_string(), nano));
        }
    }

    #[tokio::test]
    async fn a_projects_cost_since_a_moment_is_summed_and_its_watcher_told() {
        let clock = Arc::new(ManualClock::new(1_780_000_000_000));
        let ledger = Ledger::in_memory_at(clock.clone());
        let seen = Arc::new(Seen::default());
        ledger.watch_costs(seen.clone());
        let usage = TokenUsage {
            input: 1_000_000,
            ..TokenUsage::default()
        };
        let record = |project: &str| {
            let s = ledger.series(Some(project), "gemini-2.5-flash", Some("k"), "c", true);
            ledger
                .tally(s, "gemini-2.5-flash".into(), project, None)
                .close(Some(usage));
        };
        record("p");
        let start = clock.now_ms();
        clock.advance(2 * HOUR_MS);
        record("p");
        record("q");
        // 1M input tokens of gemini-2.5-flash: $0.30.
        let costs = ledger
            .project_costs_since(start, &["p", "q", "unknown"])
            .await
            .unwrap();
        assert_eq!(costs, [600_000_000, 300_000_000, 0]);
        let later = ledger
            .project_costs_since(start + HOUR_MS, &["p"])
            .await
            .unwrap();
        assert_eq!(later, [300_000_000]);
        assert_eq!(
            *seen.0.lock(),
            [
                ("p".to_string(), 300_000_000),
                ("p".to_string(), 300_000_000)
            ]
        );
        assert_eq!(
            ledger.input_cost_nano("gemini-2.5-flash", "p", 1000),
            300_000
        );
    }
}
