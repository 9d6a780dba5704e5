//! Prices per model and the cost of an answer: the embedded table (`config/prices.toml`) with the
//! user's `[prices."MODEL"]` entries laid over it, the entry that prices a model (exact name, else
//! longest prefix), and a [`TokenUsage`]'s cost in nano-USD under a project's [`Billing`].
//!
//! Rates are kept as whole nano-USD per token (1 USD per 1M tokens = 1,000 nano-USD per token), so
//! a cost is an integer and sums of costs stay exact. Every rate in the embedded table is a
//! multiple of 0.001 USD per 1M tokens, so nothing is lost; a finer user rate is rounded to that.

use parking_lot::Mutex;
use std::collections::{BTreeMap, HashSet};
use std::hash::{BuildHasher, RandomState};

use serde::Deserialize;

use super::TokenUsage;

mod rates;
mod table;
/// Vertex AI's prices where they differ from AI Studio's (`[vertex."MODEL"]` of the table).
mod vertex;

use self::rates::Rates;
use self::rates::check;

use self::table::EMBEDDED;
pub use self::table::{BATCH_FACTOR, PRICES_TOML};

/// A prompt (`promptTokenCount`) over this many tokens is billed at the long-context rates of a
/// model that has them.
pub const LONG_CONTEXT_TOKENS: u64 = 200_000;

/// Unpriced model names warned about, at most; past that no more warnings, so names clients
/// choose cannot grow memory.
const MAX_WARNED: usize = 200;

/// A project's billing is configured with its limits (`limits.projects.P.billing`).
pub use crate::quota::limits::Billing;

/// One model's rates as configured (USD per 1M tokens), the TOML shape of `[prices."MODEL"]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceEntry {
    /// Prompt tokens not served from the cache, and tool-use prompt tokens. Required, unless
    /// the model is priced per image or per second of video (then 0 when left out).
    #[serde(default)]
    pub input: Option<f64>,
    /// Candidates and thinking tokens (required as `input` is).
    #[serde(default)]
    pub output: Option<f64>,
    /// Cached prompt tokens; `None`: billed at the input rate.
    pub cached: Option<f64>,
    /// `input` for prompts over [`LONG_CONTEXT_TOKENS`]; `None`: `input`.
    pub input_long: Option<f64>,
    /// `output` for prompts over [`LONG_CONTEXT_TOKENS`]; `None`: `output`.
    pub output_long: Option<f64>,
    /// `cached` for prompts over [`LONG_CONTEXT_TOKENS`]; `None`: `cached`, else `input_long`.
    pub cached_long: Option<f64>,
    /// Audio prompt tokens not served from the cache (`promptTokensDetails` with modality
    /// `AUDIO`); `None`: billed at `input`.
    #[serde(default)]
    pub input_audio: Option<f64>,
    /// Audio output tokens (`candidatesTokensDetails` / the Live API's `responseTokensDetails`
    /// with modality `AUDIO`); `None`: billed at `output`.
    #[serde(default)]
    pub output_audio: Option<f64>,
    /// USD per image generated (image models).
    #[serde(default)]
    pub per_image: Option<f64>,
    /// USD per second of video generated (video models).
    #[serde(default)]
    pub per_video_second: Option<f64>,
    /// The day the figures were read (`YYYY-MM-DD`).
    pub as_of: Option<String>,
    /// The page they were read from.
    pub source: Option<String>,
}

/// What one answer cost, in nano-USD (1e-9 USD) so sums stay exact integers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cost {
    /// What the project pays: the list price, or 0 under [`Billing::Free`].
    pub billed_nano: u64,
    /// What it costs at list price, whatever the billing.
    pub list_nano: u64,
    /// `false` when no price matched the model (both costs are then 0).
    pub priced: bool,
}

/// A price entry at fault: which setting, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{setting}: {problem}")]
pub struct PriceError {
    /// The TOML path, such as `prices."gemini-2.5-pro".input`.
    pub setting: String,
    pub problem: String,
}

/// The price table: embedded entries with the user's laid over them.
#[derive(Debug)]
pub struct Prices {
    models: BTreeMap<String, Rates>,
    /// Vertex AI's entries that differ (the embedded ones no user entry replaced).
    vertex: BTreeMap<String, Rates>,
    /// Hashes of the unpriced model names already warned about (at most [`MAX_WARNED`]).
    warned: Mutex<HashSet<u64>>,
    hasher: RandomState,
}

impl Clone for Prices {
    /// The same table; the clone warns about unpriced models afresh.
    fn clone(&self) -> Self {
        Prices::from_models(self.models.clone(), self.vertex.clone())
    }
}

impl Prices {
    /// The embedded table with the user's entries laid over it (a user entry replaces a model's
    /// whole entry). Err names the setting at fault (e.g. negative or non-finite rate, empty
    /// model name).
    pub fn new(overrides: &BTreeMap<String, PriceEntry>) -> Result<Prices, String> {
        Prices::with_overrides(overrides).map_err(|e| e.to_string())
    }

    /// [`Prices::new`] with the error's setting and problem apart (for the config's error).
    pub fn with_overrides(overrides: &BTreeMap<String, PriceEntry>) -> Result<Prices, PriceError> {
        let mut models = EMBEDDED.prices.clone();
        for (name, entry) in overrides {
            let rates = check(name, entry.clone())?;
            models.insert(name.clone(), rates);
        }
        Ok(Prices::from_models(
            models,
            vertex::embedded_without(overrides),
        ))
    }

    /// The embedded table alone.
    pub fn embedded() -> Prices {
        Prices::from_models(EMBEDDED.prices.clone(), EMBEDDED.vertex.clone())
    }

    fn from_models(models: BTreeMap<String, Rates>, vertex: BTreeMap<String, Rates>) -> Prices {
        Prices {
            models,
            vertex,
            warned: Mutex::new(HashSet::new()),
            hasher: RandomState::new(),
        }
    }

    /// The name of the entry pricing `model`: exact name, else the longest entry name that is a
    /// prefix of it. Also strip a leading `models/` from `model` first.
    pub fn entry_for(&self, model: &str) -> Option<&str> {
        self.rates_for(model).map(|(name, _)| name)
    }

    /// One entry as configured, by its exact name.
    pub fn entry(&self, name: &str) -> Option<&PriceEntry> {
        self.models.get(name).map(|r| &r.entry)
    }

    /// Every entry as configured, by name.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &PriceEntry)> {
        self.models.iter().map(|(n, r)| (n.as_str(), &r.entry))
    }

    fn rates_for(&self, model: &str) -> Option<(&str, &Rates)> {
        find(&self.models, model)
    }

    /// Cost of `usage` for `model` under `billing`. Unpriced: all zero, priced=false, and a
    /// warning once per model name (for the first `MAX_WARNED` names only, so client-chosen
    /// names cannot grow memory).
    pub fn cost(&self, model: &str, usage: &TokenUsage, billing: Billing) -> Cost {
        let Some((_, rates)) = self.rates_for(model) else {
            self.warn_unpriced(model);
            return Cost::default();
        };
        let list_nano = rates.cost_nano(usage);
        Cost {
            billed_nano: match billing {
                Billing::Paid => list_nano,
                Billing::Free => 0,
            },
            list_nano,
            priced: true,
        }
    }

    /// Cost of a batch job's `usage` for `model`: [`Prices::cost`] times [`BATCH_FACTOR`].
    pub fn batch_cost(&self, model: &str, usage: &TokenUsage, billing: Billing) -> Cost {
        let c = self.cost(model, usage, billing);
        let scale = |n: u64| (n as f64 * *BATCH_FACTOR).round() as u64;
        Cost {
            billed_nano: scale(c.billed_nano),
            list_nano: scale(c.list_nano),
            priced: c.priced,
        }
    }

    fn warn_unpriced(&self, model: &str) {
        let id = self.hasher.hash_one(model);
        {
            let mut warned = self.warned.lock();
            if warned.len() >= MAX_WARNED || !warned.insert(id) {
                return;
            }
        }
        // The name is the client's: shortened, and Debug-quoted so it cannot forge log lines.
        let shown: String = model.chars().take(128).collect();
        tracing::warn!(
            model = ?shown,
            "no price for this model: its answers cost 0 and count as unpriced; \
             add [prices.\"MODEL\"] to the config to price it"
        );
    }
}

/// The entry of `table` pricing `model` (without a leading `models/`): its exact name, else the
/// longest entry name it starts with.
fn find<'a>(table: &'a BTreeMap<String, Rates>, model: &str) -> Option<(&'a str, &'a Rates)> {
    let model = model.strip_prefix("models/").unwrap_or(model);
    if let Some((name, rates)) = table.get_key_value(model) {
        return Some((name, rates));
    }
    // A walk over the entries (a few dozen at most, set by the config), not over the
    // prefixes of a name a client chose and may have made long.
    table
        .iter()
        .filter(|(name, _)| model.starts_with(name.as_str()))
        .max_by_key(|(name, _)| name.len())
        .map(|(name, rates)| (name.as_str(), rates))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(input: u64, cached: u64, tool: u64, output: u64, thinking: u64) -> TokenUsage {
        TokenUsage {
            input,
            cached,
            output,
            thinking,
            tool,
            ..TokenUsage::default()
        }
    }

    fn entry(input: f64, output: f64) -> PriceEntry {
        PriceEntry {
            input: Some(input),
            output: Some(output),
            per_image: None,
            per_video_second: None,
            input_audio: None,
            output_audio: None,
            cached: None,
            input_long: None,
            output_long: None,
            cached_long: None,
            as_of: None,
            source: None,
        }
    }

    #[test]
    fn image_output_per_image_and_video_per_second_are_priced_from_the_embedded_table() {
        let p = Prices::embedded();
        let cost = |model: &str, u: TokenUsage| p.cost(model, &u, Billing::Paid).list_nano;
        // One 1024x1024 image out of gemini-2.5-flash-image: 1,290 tokens at 30 USD per 1M.
        assert_eq!(
            cost("gemini-2.5-flash-image-preview", usage(0, 0, 0, 1290, 0)),
            38_700_000
        );
        let images = TokenUsage {
            images: 3,
            ..TokenUsage::default()
        };
        assert_eq!(cost("imagen-4.0-generate-001", images), 120_000_000);
        let video = TokenUsage {
            video_seconds: 8,
            ..TokenUsage::default()
        };
        assert_eq!(cost("veo-3.0-fast-generate-001", video), 1_200_000_000);
    }

    #[test]
    fn embedded_table_parses_and_dates_and_sources_every_entry() {
        let p = Prices::embedded();
        for model in [
            "gemini-2.5-pro",
            "gemini-2.5-flash",
            "gemini-2.5-flash-lite",
            "gemini-2.0-flash",
            "gemini-2.0-flash-lite",
            "gemini-3-pro-preview",
            "gemini-3.1-pro-preview",
            "gemini-3-flash-preview",
            "gemini-3.1-flash-lite",
            "gemini-embedding-001",
        ] {
            assert_eq!(p.entry_for(model), Some(model));
        }
        for (name, e) in p.entries() {
            // Token rates read on 2026-07-24; image and video rates added on 2026-12-06.
            assert!(
                matches!(e.as_of.as_deref(), Some("2026-07-24" | "2026-12-06")),
                "{name}"
            );
            // The Live models' rates are not in the checked table: their source says so.
            let source = e.source.as_deref().unwrap_or_default();
            if is_live(name) {
                assert!(
                    source.starts_with("unverified: ")
                        && source.contains("https://ai.google.dev/gemini-api/docs/pricing"),
                    "{name}: {source}"
                );
            } else {
                // Some add that Vertex AI's price is the same.
                assert!(
                    source == "https://ai.google.dev/gemini-api/docs/pricing"
                        || source.starts_with(
                            "https://ai.google.dev/gemini-api/docs/pricing; Vertex AI: the same"
                        ),
                    "{name}: {source}"
                );
            }
        }
        // Every table rate is a whole number of nano-USD per token (the rounding loses nothing).
        for (name, r) in EMBEDDED.prices.iter() {
            let e = &r.entry;
            for usd in e
                .input
                .into_iter()
                .chain(e.output)
                .chain(e.cached)
                .chain(e.input_long)
                .chain(e.output_long)
                .chain(e.cached_long)
            {
                assert!(
                    ((usd * 1000.0).round() - usd * 1000.0).abs() < 1e-6,
                    "{name}"
                );
            }
        }
    }

    #[test]
    fn pro_costs_fresh_and_tool_input_cached_input_and_output_with_thinking() {
        let p = Prices::embedded();
        let c = p.cost(
            "gemini-2.5-pro",
            &usage(1000, 200, 50, 300, 100),
            Billing::Paid,
        );
        let want = 850 * 1250 + 200 * 125 + 400 * 10_000;
        assert_eq!(
            c,
            Cost {
                billed_nano: want,
                list_nano: want,
                priced: true
            }
        );
        // 0.005 USD + 0.000025 + 0.004: 5,087,500 nano-USD.
        assert_eq!(want, 5_087_500);
    }

    #[test]
    fn prompts_over_200k_tokens_are_billed_at_the_long_context_rates() {
        let p = Prices::embedded();
        let c = p.cost(
            "gemini-2.5-pro",
            &usage(250_000, 200, 50, 300, 100),
            Billing::Paid,
        );
        assert_eq!(
            c.list_nano,
            (250_000 - 200 + 50) * 2500 + 200 * 250 + 400 * 15_000
        );
        // Exactly 200k is still the short tier.
        let c = p.cost("gemini-2.5-pro", &usage(200_000, 0, 0, 0, 0), Billing::Paid);
        assert_eq!(c.list_nano, 200_000 * 1250);
        // A model without a long tier keeps its rates.
        let c = p.cost(
            "gemini-2.5-flash",
            &usage(300_000, 0, 0, 10, 0),
            Billing::Paid,
        );
        assert_eq!(c.list_nano, 300_000 * 300 + 10 * 2500);
    }

    #[test]
    fn cached_tokens_without_a_cached_price_cost_the_input_rate() {
        let p = Prices::embedded();
        let c = p.cost(
            "gemini-2.0-flash-lite",
            &usage(1000, 400, 0, 0, 0),
            Billing::Paid,
        );
        assert_eq!(c.list_nano, 1000 * 75);
    }

    #[test]
    fn a_model_is_priced_by_the_longest_entry_its_name_starts_with() {
        let p = Prices::embedded();
        assert_eq!(
            p.entry_for("gemini-2.5-flash-lite-preview-x"),
            Some("gemini-2.5-flash-lite")
        );
        assert_eq!(
            p.entry_for("gemini-2.5-flash-preview-05-20"),
            Some("gemini-2.5-flash")
        );
        assert_eq!(p.entry_for("models/gemini-2.5-pro"), Some("gemini-2.5-pro"));
        assert_eq!(
            p.entry_for("models/gemini-2.5-flash-lite-001"),
            Some("gemini-2.5-flash-lite")
        );
        assert_eq!(p.entry_for("gemini-2"), None);
        assert_eq!(p.entry_for("xgemini-2.5-pro"), None);
        assert_eq!(p.entry_for(""), None);
        let c = p.cost(
            "models/gemini-2.5-flash-lite-preview-x",
            &usage(1000, 0, 0, 1000, 0),
            Billing::Paid,
        );
        assert_eq!(c.list_nano, 1000 * 100 + 1000 * 400);
    }

    #[test]
    fn an_override_replaces_a_whole_entry_and_a_new_model_is_added() {
        let mut o = BTreeMap::new();
        o.insert("gemini-2.5-pro".to_string(), entry(1.0, 8.0));
        o.insert("my-model".to_string(), entry(0.5, 1.5));
        let p = Prices::new(&o).unwrap();
        // The override has no cached or long rates: cached at the input rate, no long tier.
        let c = p.cost(
            "gemini-2.5-pro",
            &usage(300_000, 1000, 0, 10, 0),
            Billing::Paid,
        );
        assert_eq!(c.list_nano, 299_000 * 1000 + 1000 * 1000 + 10 * 8000);
        assert_eq!(p.entry_for("my-model-v2"), Some("my-model"));
        let c = p.cost("my-model", &usage(2000, 0, 0, 100, 0), Billing::Paid);
        assert_eq!(c.list_nano, 2000 * 500 + 100 * 1500);
        // The rest of the embedded table is still there.
        assert_eq!(p.entry_for("gemini-2.5-flash"), Some("gemini-2.5-flash"));
    }

    #[test]
    fn an_unpriced_model_costs_nothing_and_says_so() {
        let p = Prices::embedded();
        let c = p.cost("llama-3", &usage(1000, 0, 0, 1000, 0), Billing::Paid);
        assert_eq!(c, Cost::default());
        assert!(!c.priced);
        // Warned once per name, and never about more than MAX_WARNED names.
        p.cost("llama-3", &TokenUsage::default(), Billing::Paid);
        assert_eq!(p.warned.lock().len(), 1);
        for i in 0..1000 {
            p.cost(&format!("other-{i}"), &TokenUsage::default(), Billing::Paid);
        }
        assert_eq!(p.warned.lock().len(), MAX_WARNED);
    }

    #[test]
    fn a_free_project_pays_nothing_but_sees_the_list_price() {
        let p = Prices::embedded();
        let u = usage(1000, 200, 50, 300, 100);
        let c = p.cost("gemini-2.5-pro", &u, Billing::Free);
        assert_eq!(
            c,
            Cost {
                billed_nano: 0,
                list_nano: 5_087_500,
                priced: true
            }
        );
        assert_eq!(Billing::default(), Billing::Paid);
    }

    #[test]
    fn audio_tokens_are_priced_at_the_audio_rates_and_text_at_the_text_rates() {
        let p = Prices::embedded();
        // A Live turn: 20 text + 100 audio tokens in, 300 audio tokens out.
        let u = TokenUsage {
            input: 120,
            input_audio: 100,
            output: 300,
            output_audio: 300,
            ..TokenUsage::default()
        };
        let e = p
            .entry("gemini-2.5-flash-native-audio")
            .expect("a Live entry");
        let nano = |usd: Option<f64>| (usd.unwrap() * 1000.0).round() as u64;
        assert_eq!(
            p.cost(
                "gemini-2.5-flash-native-audio-preview-09-2025",
                &u,
                Billing::Paid
            )
            .list_nano,
            20 * nano(e.input) + 100 * nano(e.input_audio) + 300 * nano(e.output_audio)
        );
        assert!(e.input_audio > e.input && e.output_audio > e.output);
        // A model without audio rates bills audio at its text rates.
        let plain = p.cost("gemini-2.0-flash-lite", &u, Billing::Paid).list_nano;
        assert_eq!(plain, 120 * 75 + 300 * 300);
        // Audio in on gemini-2.5-flash: 1.00 USD per 1M, text 0.30.
        let rest = TokenUsage {
            input: 50,
            input_audio: 40,
            ..TokenUsage::default()
        };
        assert_eq!(
            p.cost("gemini-2.5-flash", &rest, Billing::Paid).list_nano,
            10 * 300 + 40 * 1000
        );
        // On gemini-2.5-flash-lite: 0.30, text 0.10.
        assert_eq!(
            p.cost("gemini-2.5-flash-lite", &rest, Billing::Paid)
                .list_nano,
            10 * 100 + 40 * 300
        );
    }

    /// The Live API's models in the embedded table.
    fn is_live(name: &str) -> bool {
        name.contains("native-audio") || name.contains("live")
    }

    #[test]
    fn huge_counts_saturate_instead_of_wrapping() {
        let p = Prices::embedded();
        let c = p.cost(
            "gemini-2.5-pro",
            &usage(u64::MAX, 0, u64::MAX, u64::MAX, 1),
            Billing::Paid,
        );
        assert_eq!(c.list_nano, u64::MAX);
        // More cached than prompt (a confused report): no underflow.
        let c = p.cost("gemini-2.5-pro", &usage(10, 20, 0, 0, 0), Billing::Paid);
        assert_eq!(c.list_nano, 20 * 125);
    }

    #[test]
    fn invalid_overrides_are_refused_naming_the_setting() {
        let cases = [
            (
                "gemini-2.5-pro",
                entry(-1.0, 1.0),
                "prices.\"gemini-2.5-pro\".input",
            ),
            ("m", entry(1.0, f64::NAN), "prices.\"m\".output"),
            (
                "m",
                PriceEntry {
                    cached_long: Some(f64::INFINITY),
                    ..entry(1.0, 1.0)
                },
                "prices.\"m\".cached_long",
            ),
            ("", entry(1.0, 1.0), "prices.\"\""),
            ("models/m", entry(1.0, 1.0), "prices.\"models/m\""),
        ];
        for (name, e, setting) in cases {
            let o = BTreeMap::from([(name.to_string(), e)]);
            let err = Prices::with_overrides(&o).unwrap_err();
            assert_eq!(err.setting, setting);
            let text = Prices::new(&o).unwrap_err();
            assert!(text.starts_with(setting), "{text}");
        }
    }
}
