//! `[prices."MODEL"]`: the user's prices (USD per 1M tokens), laid over the embedded table
//! (`config/prices.toml`) and checked into the ledger's [`Prices`].

use std::collections::BTreeMap;
use std::sync::Arc;

use super::check::{ConfigError, bad};
use crate::ledger::prices::{PriceEntry, Prices};

/// `[prices]`: one table per model; absent: the embedded table alone.
pub(super) type Raw = BTreeMap<String, PriceEntry>;

/// The embedded table with the user's entries laid over it (each replaces a model's whole entry).
pub(super) fn from_raw(raw: Raw) -> Result<Arc<Prices>, ConfigError> {
    Prices::with_overrides(&raw)
        .map(Arc::new)
        .map_err(|e| bad(e.setting, e.problem))
}

#[cfg(test)]
mod tests {
    use crate::config::{for_test, try_for_test};
    use crate::ledger::TokenUsage;
    use crate::ledger::prices::{Billing, Prices};

    #[test]
    fn without_a_prices_section_the_embedded_table_applies() {
        let c = for_test("", &[]);
        assert_eq!(
            c.prices.entries().count(),
            Prices::embedded().entries().count()
        );
        assert_eq!(
            c.prices.entry("gemini-2.5-pro").and_then(|e| e.input),
            Some(1.25)
        );
    }

    #[test]
    fn quoted_model_tables_override_a_model_and_add_another() {
        let c = for_test(
            r#"
[prices."gemini-2.5-pro"]
input = 1
output = 8.5
cached = 0.1

[prices."my-model"]
input = 0.2
output = 0.8
as_of = "2026-08-01"
source = "https://example.com/our-contract"
"#,
            &[],
        );
        let pro = c.prices.entry("gemini-2.5-pro").expect("overridden");
        assert_eq!(
            (pro.input, pro.output, pro.cached),
            (Some(1.0), Some(8.5), Some(0.1))
        );
        // The whole entry is replaced: the embedded long-context rates are gone.
        assert_eq!(pro.input_long, None);
        let u = TokenUsage {
            input: 1000,
            output: 10,
            ..TokenUsage::default()
        };
        assert_eq!(
            c.prices.cost("gemini-2.5-pro", &u, Billing::Paid).list_nano,
            1000 * 1000 + 10 * 8500
        );
        assert_eq!(c.prices.entry_for("my-model-002"), Some("my-model"));
        assert_eq!(
            c.prices.cost("my-model", &u, Billing::Paid).list_nano,
            1000 * 200 + 10 * 800
        );
        assert_eq!(
            c.prices.entry_for("gemini-2.5-flash"),
            Some("gemini-2.5-flash")
        );
    }

    #[test]
    fn a_bad_price_or_an_unknown_price_field_names_its_setting() {
        let e = try_for_test(
            "[prices.\"gemini-2.5-pro\"]\ninput = -1\noutput = 10\n",
            &[],
        )
        .unwrap_err();
        assert_eq!(e.setting, "prices.\"gemini-2.5-pro\".input", "{e}");
        let e =
            try_for_test("[prices.\"m\"]\ninput = 1\noutput = 1\ncache = 0.1\n", &[]).unwrap_err();
        assert!(e.to_string().contains("cache"), "{e}");
        let e = try_for_test("[prices.\"m\"]\ninput = 1\n", &[]).unwrap_err();
        assert_eq!(e.setting, "prices.\"m\".output", "{e}");
        assert!(e.to_string().contains("per_image"), "{e}");
    }
}
