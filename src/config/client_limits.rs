//! `[[auth.clients]]` limits, a client's own (the runtime clients API gives them too; the client
//! registry applies them): requests and input tokens per minute, requests per day, requests in
//! flight, daily and monthly budgets, the models it may call, its weight in the queue's fair
//! share and its queue allowance. Any may be omitted; an omitted limit does not hold the client
//! back.

use serde::{Deserialize, Serialize};

use super::check::{ConfigError, bad};

/// Most model patterns one client may list (each is matched on every request).
pub const MAX_MODEL_PATTERNS: usize = 64;
/// Largest weight in the fair share.
pub const MAX_WEIGHT: u32 = 1000;

/// A client's limits, as configured. `None`: no limit of that kind.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientLimits {
    /// Requests per minute (sliding window, as the pool's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpm: Option<u64>,
    /// Input tokens per minute, counted as Google counts them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm: Option<u64>,
    /// Requests per day (the client's budget day, see `timezone`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpd: Option<u64>,
    /// Requests in flight at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent: Option<u64>,
    /// US dollars per day.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daily_budget_usd: Option<f64>,
    /// US dollars per calendar month.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monthly_budget_usd: Option<f64>,
    /// Model names it may call, `*` matching any run of characters (`gemini-2.5-*`); `None`:
    /// every model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub models: Option<Vec<String>>,
    /// Its weight in the queue's fair share (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    /// How long its requests may wait in the queue, at most `queue.max_wait_secs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_wait_secs: Option<f64>,
    /// The IANA time zone its days and months begin in (default `limits.timezone`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// Whether its requests may be served by a fallback model (`[fallbacks]`); `None`: as
    /// `fallbacks.enabled` says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallbacks: Option<bool>,
}

impl ClientLimits {
    /// Check every field; `setting` names the client's table in the error.
    pub fn validate(&self, setting: &str) -> Result<(), ConfigError> {
        for (name, v) in [
            ("rpm", self.rpm),
            ("tpm", self.tpm),
            ("rpd", self.rpd),
            ("max_concurrent", self.max_concurrent),
        ] {
            if v == Some(0) {
                return Err(bad(
                    format!("{setting}.{name}"),
                    "must be at least 1 (leave it out for no limit)",
                ));
            }
        }
        for (name, v) in [
            ("daily_budget_usd", self.daily_budget_usd),
            ("monthly_budget_usd", self.monthly_budget_usd),
        ] {
            if let Some(v) = v
                && !(v.is_finite() && v > 0.0 && v < 1.0e12)
            {
                return Err(bad(
                    format!("{setting}.{name}"),
                    format!("expected a positive number of dollars, got {v}"),
                ));
            }
        }
        if let Some(models) = &self.models {
            if models.len() > MAX_MODEL_PATTERNS {
                return Err(bad(
                    format!("{setting}.models"),
                    format!("at most {MAX_MODEL_PATTERNS} patterns"),
                ));
            }
            for m in models {
                let m = m.strip_prefix("models/").unwrap_or(m);
                if m.is_empty()
                    || m.len() > 128
                    || !m.bytes().all(|b| {
                        b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'*' | b'@')
                    })
                {
                    return Err(bad(
                        format!("{setting}.models"),
                        format!(
                            "{m:?} is not a model name or pattern (letters, digits, '-', '_', '.', '@', '*')"
                        ),
                    ));
                }
            }
        }
        if let Some(w) = self.weight
            && !(1..=MAX_WEIGHT).contains(&w)
        {
            return Err(bad(
                format!("{setting}.weight"),
                format!("expected 1 to {MAX_WEIGHT}, got {w}"),
            ));
        }
        if let Some(s) = self.max_wait_secs
            && !(s.is_finite() && (0.0..1.0e7).contains(&s))
        {
            return Err(bad(
                format!("{setting}.max_wait_secs"),
                format!("expected 0 or a positive number of seconds, got {s}"),
            ));
        }
        if let Some(tz) = &self.timezone
            && tz.parse::<chrono_tz::Tz>().is_err()
        {
            return Err(bad(
                format!("{setting}.timezone"),
                format!("{tz:?} is not an IANA time zone (e.g. Europe/Berlin)"),
            ));
        }
        Ok(())
    }

    /// Whether it may call `model` (a bare name, or `models/NAME`, or `tunedModels/NAME`).
    pub fn allows_model(&self, model: &str) -> bool {
        let Some(patterns) = &self.models else {
            return true;
        };
        let model = model
            .strip_prefix("models/")
            .or_else(|| model.strip_prefix("tunedModels/"))
            .unwrap_or(model);
        patterns
            .iter()
            .any(|p| glob(p.strip_prefix("models/").unwrap_or(p), model))
    }

    /// Its caps as the quota store counts them, money in micro-dollars.
    pub fn caps(&self) -> crate::quota::client::ClientCaps {
        use crate::quota::client::micros;
        crate::quota::client::ClientCaps {
            rpm: self.rpm,
            tpm: self.tpm,
            rpd: self.rpd,
            max_concurrent: self.max_concurrent,
            daily_micros: self.daily_budget_usd.map(micros),
            monthly_micros: self.monthly_budget_usd.map(micros),
        }
    }

    /// Its weight in the fair share.
    pub fn weight(&self) -> u32 {
        self.weight.unwrap_or(1)
    }

    /// The time zone its days begin in: its own, else `default`.
    pub fn tz(&self, default: chrono_tz::Tz) -> chrono_tz::Tz {
        self.timezone
            .as_deref()
            .and_then(|t| t.parse().ok())
            .unwrap_or(default)
    }

    /// Whether any limit is set that the store must count (rates, concurrency or budgets).
    pub fn counted(&self) -> bool {
        self.rpm.is_some()
            || self.tpm.is_some()
            || self.rpd.is_some()
            || self.max_concurrent.is_some()
            || self.daily_budget_usd.is_some()
            || self.monthly_budget_usd.is_some()
    }
}

/// `*` matches any run of characters (none included); everything else matches itself.
fn glob(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        // No `*`: the whole text must be the pattern.
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_patterns_match_whole_names_with_stars_for_any_run() {
        assert!(glob("gemini-2.5-flash", "gemini-2.5-flash"));
        assert!(!glob("gemini-2.5-flash", "gemini-2.5-flash-lite"));
        assert!(glob("gemini-2.5-*", "gemini-2.5-flash-lite"));
        assert!(glob("gemini-*-flash", "gemini-2.5-flash"));
        assert!(!glob("gemini-*-flash", "gemini-2.5-flash-lite"));
        assert!(glob("*", "anything"));
        assert!(glob("*lite", "gemini-2.5-flash-lite"));
        assert!(!glob("a*a", "a"));
        let l = ClientLimits {
            models: Some(vec![
                "models/gemini-2.5-*".into(),
                "text-embedding-004".into(),
            ]),
            ..Default::default()
        };
        assert!(l.allows_model("models/gemini-2.5-pro"));
        assert!(l.allows_model("text-embedding-004"));
        assert!(!l.allows_model("gemini-3-pro-preview"));
        assert!(ClientLimits::default().allows_model("gemini-3-pro-preview"));
    }

    #[test]
    fn bad_limits_are_refused_naming_the_field() {
        let cases = [
            (
                ClientLimits {
                    rpm: Some(0),
                    ..Default::default()
                },
                "auth.clients[0].rpm",
            ),
            (
                ClientLimits {
                    daily_budget_usd: Some(-1.0),
                    ..Default::default()
                },
                "auth.clients[0].daily_budget_usd",
            ),
            (
                ClientLimits {
                    weight: Some(0),
                    ..Default::default()
                },
                "auth.clients[0].weight",
            ),
            (
                ClientLimits {
                    models: Some(vec!["gemini 2.5".into()]),
                    ..Default::default()
                },
                "auth.clients[0].models",
            ),
            (
                ClientLimits {
                    timezone: Some("Mars/Olympus".into()),
                    ..Default::default()
                },
                "auth.clients[0].timezone",
            ),
        ];
        for (limits, setting) in cases {
            let e = limits.validate("auth.clients[0]").unwrap_err();
            assert_eq!(e.setting, setting);
        }
    }
}
