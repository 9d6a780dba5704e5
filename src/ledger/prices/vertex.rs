//! Vertex AI's prices: the embedded table's `[vertex."MODEL"]` entries, where Google's Vertex
//! AI price list differs from the Gemini Developer API's paid tier (a model without one costs
//! the same on both). An answer a Vertex entry served is priced by the longest-named entry of
//! either table that prices its model, the Vertex one winning a tie, and always at list price
//! (Vertex AI has no free tier). A user's `[prices."MODEL"]` entry replaces the model's
//! price on both backends.

use std::collections::BTreeMap;

use super::table::EMBEDDED;
use super::{Billing, Cost, PriceEntry, Prices, Rates, TokenUsage, find};

/// The embedded Vertex entries, without those of models the user priced.
pub(super) fn embedded_without(
    overrides: &BTreeMap<String, PriceEntry>,
) -> BTreeMap<String, Rates> {
    let mut v = EMBEDDED.vertex.clone();
    v.retain(|name, _| !overrides.contains_key(name));
    v
}

impl Prices {
    /// Cost of `usage` for `model` as served by a Vertex entry (`vertex`) or an AI Studio key
    /// under `billing` ([`Prices::cost`]). A Vertex entry's answer is billed at list price.
    pub fn cost_served(
        &self,
        vertex: bool,
        model: &str,
        usage: &TokenUsage,
        billing: Billing,
    ) -> Cost {
        if !vertex {
            return self.cost(model, usage, billing);
        }
        match self.vertex_rates(model) {
            Some(rates) => {
                let list_nano = rates.cost_nano(usage);
                Cost {
                    billed_nano: list_nano,
                    list_nano,
                    priced: true,
                }
            }
            None => self.cost(model, usage, Billing::Paid),
        }
    }

    /// The Vertex entry pricing `model` on Vertex AI, if one does (else its AI Studio one).
    pub fn vertex_entry_for(&self, model: &str) -> Option<&str> {
        let v = find(&self.vertex, model)?;
        match find(&self.models, model) {
            Some((name, _)) if name.len() > v.0.len() => None,
            _ => Some(v.0),
        }
    }

    /// One Vertex entry as configured, by its exact name.
    pub fn vertex_entry(&self, name: &str) -> Option<&PriceEntry> {
        self.vertex.get(name).map(|r| &r.entry)
    }

    fn vertex_rates(&self, model: &str) -> Option<&Rates> {
        let name = self.vertex_entry_for(model)?;
        self.vertex.get(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(input: u64, output: u64) -> TokenUsage {
        TokenUsage {
            input,
            output,
            ..TokenUsage::default()
        }
    }

    #[test]
    fn every_vertex_entry_is_dated_and_sourced_and_differs_from_ai_studio() {
        let p = Prices::embedded();
        assert!(!EMBEDDED.vertex.is_empty());
        for (name, r) in EMBEDDED.vertex.iter() {
            assert!(
                r.entry.as_of.as_deref().is_some_and(|d| d.len() == 10),
                "{name}"
            );
            let source = r.entry.source.as_deref().unwrap_or_default();
            assert!(
                source.contains("https://cloud.google.com/vertex-ai/generative-ai/pricing"),
                "{name}: {source}"
            );
            // An entry here is one whose price differs: one equal to AI Studio's is left out.
            let u = usage(1_000_000, 1_000_000);
            assert_ne!(
                p.cost_served(true, name, &u, Billing::Paid),
                p.cost(name, &u, Billing::Paid),
                "{name}"
            );
        }
    }

    /// What a client's budgets are charged when its answer settles (micro-USD, list price):
    /// the price of the backend that served it.
    #[test]
    fn a_clients_budget_is_charged_at_the_serving_backends_list_price() {
        let ledger = crate::ledger::Ledger::in_memory();
        let u = usage(1_000_000, 1_000_000);
        assert_eq!(
            ledger.list_cost_served(true, "gemini-2.0-flash", &u),
            750_000
        );
        assert_eq!(
            ledger.list_cost_served(false, "gemini-2.0-flash", &u),
            500_000
        );
        assert_eq!(ledger.list_cost_micros("gemini-2.0-flash", &u), 500_000);
    }

    #[test]
    fn a_vertex_answer_is_priced_by_the_longest_entry_of_either_table_and_never_free() {
        let p = Prices::embedded();
        let u = usage(1_000_000, 1_000_000);
        // gemini-2.0-flash on Vertex: 0.15 in, 0.60 out (AI Studio: 0.10, 0.40).
        let c = p.cost_served(true, "gemini-2.0-flash-001", &u, Billing::Free);
        assert_eq!(c.list_nano, 750_000_000);
        assert_eq!(c.billed_nano, c.list_nano, "Vertex has no free tier");
        assert_eq!(
            p.cost_served(false, "gemini-2.0-flash-001", &u, Billing::Paid)
                .list_nano,
            500_000_000
        );
        // gemini-2.0-flash-lite is priced by its own (AI Studio) entry, not by the Vertex
        // gemini-2.0-flash one its name starts with.
        assert_eq!(p.vertex_entry_for("gemini-2.0-flash-lite"), None);
        assert_eq!(
            p.cost_served(true, "gemini-2.0-flash-lite", &u, Billing::Free),
            p.cost("gemini-2.0-flash-lite", &u, Billing::Paid)
        );
        // A user's entry prices the model on both backends.
        let mine = PriceEntry {
            input: Some(1.0),
            output: Some(1.0),
            cached: None,
            input_long: None,
            output_long: None,
            cached_long: None,
            input_audio: None,
            output_audio: None,
            per_image: None,
            per_video_second: None,
            as_of: None,
            source: None,
        };
        let overrides = BTreeMap::from([("gemini-2.0-flash".to_string(), mine)]);
        let p = Prices::with_overrides(&overrides).unwrap();
        assert_eq!(
            p.cost_served(true, "gemini-2.0-flash", &u, Billing::Paid)
                .list_nano,
            2_000_000_000
        );
    }
}
