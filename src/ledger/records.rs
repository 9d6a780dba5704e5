//! What the ledger records without a request's tally: a cache hit (what it saved) and a batch
//! job's results (at batch prices, under the key and client that created it).

use super::*;

impl Ledger {
    /// A request answered from the response cache: one hit and what it saved (its stored
    /// answer's usage, at `model`'s list price), under no project and no key.
    pub fn cache_hit(&self, model: &str, client: u32, usage: &TokenUsage) {
        let series = self.series_of(None, model, None, client, true);
        let cost = self.pricing.load().prices.cost(model, usage, Billing::Paid);
        let mut c = Counters::one(field::CACHE_HITS);
        c.0[field::SAVED_TOKENS] = usage
            .input
            .saturating_add(usage.output)
            .saturating_add(usage.thinking)
            .saturating_add(usage.tool);
        c.0[field::SAVED_COST] = cost.list_nano;
        self.add(series, &c);
    }

    /// A finished batch job's results: their tokens, and their cost at batch prices
    /// ([`Prices::batch_cost`]), under the series of the key that created it; `requests` is the
    /// number of results. Returns the cost billed, in nano-USD.
    pub fn batch_results(
        &self,
        series: Series,
        model: &str,
        project: &str,
        requests: u64,
        usage: &TokenUsage,
    ) -> u64 {
        let cost = self
            .pricing
            .load()
            .prices
            .batch_cost(model, usage, self.billing_of(project));
        self.add(series, &tally::answered(requests, usage, &cost));
        metrics_for(self, series, usage, cost.billed_nano);
        if let Some((watch, project)) = self.watcher_of(project) {
            watch.billed(&project, cost.billed_nano);
        }
        cost.billed_nano
    }
}
