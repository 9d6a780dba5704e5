//! What an answer costs under the configuration in force: the price table, the projects not
//! billed at list price and the Vertex AI entries' projects (never free tier), swapped whole by
//! a reload.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::{Billing, KeyInfo, Ledger, Prices, TokenUsage};

/// What an answer costs: the price table and the projects not billed at list price.
pub(super) struct Pricing {
    pub(super) prices: Arc<Prices>,
    pub(super) billing: HashMap<String, Billing>,
    /// The Vertex AI entries' projects.
    pub(super) vertex: HashSet<Arc<str>>,
}

/// The projects of `keys` that are Vertex AI entries.
pub(super) fn vertex_projects(keys: &[KeyInfo]) -> HashSet<Arc<str>> {
    keys.iter()
        .filter(|k| k.vertex)
        .map(|k| k.project.clone())
        .collect()
}

impl Ledger {
    /// A reloaded configuration's prices, billings and keys: answers ending from now on are
    /// priced so (whichever configuration admitted them), and the new keys get their masked
    /// names. History already recorded is kept as it is. (Clients are named as they are asked
    /// for, [`Ledger::client_id_named`].)
    pub fn reconfigure(
        &self,
        prices: Arc<Prices>,
        billing: HashMap<String, Billing>,
        keys: &[KeyInfo],
    ) {
        self.pricing.store(Arc::new(Pricing {
            prices,
            billing,
            vertex: vertex_projects(keys),
        }));
        let mut masked = self.masked.write();
        for k in keys {
            masked.insert(k.kid.clone(), k.masked.clone());
        }
    }

    /// What `usage` of `model` costs at list price, in micro-dollars (rounded up): what a
    /// client's budgets count, whichever project served it.
    pub fn list_cost_micros(&self, model: &str, usage: &TokenUsage) -> u64 {
        self.list_cost_served(false, model, usage)
    }

    /// [`Ledger::list_cost_micros`] at the prices of the backend that served it (`vertex`: a
    /// Vertex AI entry's, where they differ).
    pub fn list_cost_served(&self, vertex: bool, model: &str, usage: &TokenUsage) -> u64 {
        let prices = &self.pricing.load().prices;
        let nano = prices.cost_served(vertex, model, usage, Billing::Paid);
        nano.list_nano.div_ceil(1000)
    }

    /// Whether the price table prices `model` (exact name or a prefix entry).
    pub fn is_priced(&self, model: &str) -> bool {
        self.pricing.load().prices.entry_for(model).is_some()
    }

    /// A project's billing (a Vertex AI entry's is always paid: Vertex has no free tier).
    pub fn billing_of(&self, project: &str) -> Billing {
        let pricing = self.pricing.load();
        if pricing.vertex.contains(project) {
            return Billing::Paid;
        }
        pricing.billing.get(project).copied().unwrap_or_default()
    }
}
