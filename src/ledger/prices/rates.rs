//! One model's rates: its entry checked (names the setting at fault) and turned into whole
//! nano-USD per token (per image, per second of video), and an answer's cost at them.

use super::{LONG_CONTEXT_TOKENS, PriceEntry, PriceError, TokenUsage};

/// Highest rate accepted, USD per 1M tokens (1 USD a token): far above any real price, low
/// enough that a rate in nano-USD per token fits comfortably in a `u64`.
const MAX_RATE: f64 = 1_000_000.0;

/// Highest price accepted per image or per second of video, USD.
const MAX_UNIT_PRICE: f64 = 1_000.0;

/// The rates of one tier, nano-USD per token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Tier {
    input: u64,
    output: u64,
    cached: u64,
}

/// One model's entry as configured and its rates in nano-USD per token.
#[derive(Debug, Clone)]
pub(super) struct Rates {
    pub(super) entry: PriceEntry,
    short: Tier,
    /// Present when the entry has any long-context rate.
    long: Option<Tier>,
    /// Nano-USD per audio token, in and out (`None`: the tier's text rate).
    input_audio: Option<u64>,
    output_audio: Option<u64>,
    /// Nano-USD per image and per second of video.
    per_image: u64,
    per_video_second: u64,
}

impl Rates {
    /// `(input - cached + tool) x input + cached x cached + (output + thinking) x output`, at the
    /// tier the prompt's size selects, the audio tokens among the fresh input and the output at
    /// the audio rates (when the entry has them); saturating, never wrapping.
    pub(super) fn cost_nano(&self, u: &TokenUsage) -> u64 {
        let tier = match self.long {
            Some(long) if u.input > LONG_CONTEXT_TOKENS => long,
            _ => self.short,
        };
        let fresh = u.input.saturating_sub(u.cached).saturating_add(u.tool);
        let fresh_audio = u.input_audio.min(fresh);
        let out = u.output.saturating_add(u.thinking);
        let out_audio = u.output_audio.min(out);
        (fresh - fresh_audio)
            .saturating_mul(tier.input)
            .saturating_add(fresh_audio.saturating_mul(self.input_audio.unwrap_or(tier.input)))
            .saturating_add(u.cached.saturating_mul(tier.cached))
            .saturating_add((out - out_audio).saturating_mul(tier.output))
            .saturating_add(out_audio.saturating_mul(self.output_audio.unwrap_or(tier.output)))
            .saturating_add(u.images.saturating_mul(self.per_image))
            .saturating_add(u.video_seconds.saturating_mul(self.per_video_second))
    }
}

/// Check one entry and turn its rates into nano-USD per token.
pub(super) fn check(name: &str, entry: PriceEntry) -> Result<Rates, PriceError> {
    let setting = format!("prices.{name:?}");
    if name.is_empty()
        || name.len() > 128
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(PriceError {
            setting,
            problem: format!(
                "the model name {name:?} must be 1-128 characters of letters, digits, '-', '_' \
                 or '.' (no `models/`)"
            ),
        });
    }
    let rate = |field: &str, usd: f64| -> Result<u64, PriceError> {
        if usd.is_finite() && (0.0..=MAX_RATE).contains(&usd) {
            // Exact for rates that are multiples of 0.001 USD per 1M tokens; at most 1e9.
            Ok((usd * 1000.0).round() as u64)
        } else {
            Err(PriceError {
                setting: format!("{setting}.{field}"),
                problem: format!(
                    "expected USD per 1M tokens, a number from 0 to {MAX_RATE}, got {usd}"
                ),
            })
        }
    };
    let opt = |field: &str, usd: Option<f64>| usd.map(|v| rate(field, v)).transpose();
    // A model priced per image or second of video need not name token rates.
    let per_unit = entry.per_image.is_some() || entry.per_video_second.is_some();
    let required = |field: &str, usd: Option<f64>| match usd {
        Some(v) => rate(field, v),
        None if per_unit => Ok(0),
        None => Err(PriceError {
            setting: format!("{setting}.{field}"),
            problem: "required (USD per 1M tokens), unless the model is priced per_image or \
                      per_video_second"
                .into(),
        }),
    };
    let unit = |field: &str, usd: Option<f64>| -> Result<u64, PriceError> {
        match usd {
            None => Ok(0),
            Some(v) if v.is_finite() && (0.0..=MAX_UNIT_PRICE).contains(&v) => {
                Ok((v * 1e9).round() as u64)
            }
            Some(v) => Err(PriceError {
                setting: format!("{setting}.{field}"),
                problem: format!("expected USD, a number from 0 to {MAX_UNIT_PRICE}, got {v}"),
            }),
        }
    };
    let per_image = unit("per_image", entry.per_image)?;
    let per_video_second = unit("per_video_second", entry.per_video_second)?;
    let input = required("input", entry.input)?;
    let output = required("output", entry.output)?;
    let cached = opt("cached", entry.cached)?;
    let input_audio = opt("input_audio", entry.input_audio)?;
    let output_audio = opt("output_audio", entry.output_audio)?;
    let input_long = opt("input_long", entry.input_long)?;
    let output_long = opt("output_long", entry.output_long)?;
    let cached_long = opt("cached_long", entry.cached_long)?;
    let short = Tier {
        input,
        output,
        cached: cached.unwrap_or(input),
    };
    let long =
        (input_long.is_some() || output_long.is_some() || cached_long.is_some()).then(|| {
            let input = input_long.unwrap_or(input);
            Tier {
                input,
                output: output_long.unwrap_or(output),
                cached: cached_long.or(cached).unwrap_or(input),
            }
        });
    Ok(Rates {
        entry,
        short,
        long,
        input_audio,
        output_audio,
        per_image,
        per_video_second,
    })
}
