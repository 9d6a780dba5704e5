//! The embedded price table (`config/prices.toml`), parsed and checked once: its
//! `[prices."MODEL"]` and `[vertex."MODEL"]` entries as rates, and its `[batch] factor`.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use serde::Deserialize;

use super::PriceEntry;
use super::rates::{Rates, check};

/// The embedded price table (the repository's `config/prices.toml`).
pub const PRICES_TOML: &str = include_str!("../../../config/prices.toml");

/// `[batch]` of the embedded table: batch jobs cost every rate times `factor`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // as_of and source are notes for people
struct BatchRate {
    factor: f64,
    as_of: String,
    source: String,
}

/// The embedded table's parts, checked.
pub(super) struct Embedded {
    /// `[prices."MODEL"]`.
    pub(super) prices: BTreeMap<String, Rates>,
    /// `[vertex."MODEL"]`: Vertex AI's prices where they differ.
    pub(super) vertex: BTreeMap<String, Rates>,
    /// `[batch] factor`, within 0 and 1.
    pub(super) batch_factor: f64,
}

/// The embedded table, parsed and checked once (a fault in it is the build's: it panics).
pub(super) static EMBEDDED: LazyLock<Embedded> = LazyLock::new(|| {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct File {
        prices: BTreeMap<String, PriceEntry>,
        batch: BatchRate,
        #[serde(default)]
        vertex: BTreeMap<String, PriceEntry>,
    }
    let file: File = ::config::Config::builder()
        .add_source(::config::File::from_str(
            PRICES_TOML,
            ::config::FileFormat::Toml,
        ))
        .build()
        .and_then(|c| c.try_deserialize())
        .unwrap_or_else(|e| panic!("config/prices.toml does not parse: {e}"));
    let batch_factor = file.batch.factor;
    assert!(
        batch_factor.is_finite() && (0.0..=1.0).contains(&batch_factor),
        "config/prices.toml: [batch] factor must be within 0 and 1"
    );
    let checked = |table: BTreeMap<String, PriceEntry>, what: &str| {
        table
            .into_iter()
            .map(|(name, entry)| {
                let rates =
                    check(&name, entry).unwrap_or_else(|e| panic!("config/prices.toml: {what}{e}"));
                (name, rates)
            })
            .collect()
    };
    Embedded {
        prices: checked(file.prices, ""),
        vertex: checked(file.vertex, "vertex: "),
        batch_factor,
    }
});

/// What a batch job's tokens cost relative to the same synchronous calls (the embedded
/// table's `[batch] factor`).
pub static BATCH_FACTOR: LazyLock<f64> = LazyLock::new(|| EMBEDDED.batch_factor);
