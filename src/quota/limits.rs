//! The limits as configured (`[limits]`, loaded by `config::limits`) and resolving those of one
//! (project, model): defaults < per-model < per-project < per-project-per-model, with the embed,
//! image and video families starting from their own defaults.

use std::collections::BTreeMap;

use chrono_tz::Tz;
use serde::Deserialize;

use crate::route::QuotaFamily;

/// Billing of a project: `paid` (list price) or `free` (costs 0, list price still shown).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Billing {
    #[default]
    Paid,
    Free,
}

/// What to do with a billable call whose model has no price (`limits.unpriced`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Unpriced {
    /// Send it, counted against its limits and recorded as an unpriced request (cost 0).
    #[default]
    Count,
    /// Refuse it with a 400 before sending: nothing Google bills passes without a price.
    Refuse,
}

/// Limits that replace the defaults for one model or one project (any subset of fields).
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LimitOverride {
    pub minute: Option<u64>,
    pub daily: Option<u64>,
    pub token_minute: Option<u64>,
    pub max_request_tokens: Option<u64>,
    /// Live API sessions open at once (per project only: `[limits]` or a project's table).
    pub live_sessions: Option<u64>,
}

/// A project's own limits, per-model limits inside that project, how it is billed, and the
/// most it may spend in a calendar month.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ProjectLimits {
    #[serde(flatten)]
    pub all_models: LimitOverride,
    #[serde(default)]
    pub models: BTreeMap<String, LimitOverride>,
    /// `paid` (list price, the default) or `free` (costs 0; the list price is still shown).
    #[serde(default)]
    pub billing: Billing,
    /// The most the project may spend in a calendar month of `limits.timezone`, in USD, as the
    /// usage ledger prices it (`pool::spend` holds the project once it is reached).
    pub monthly_spend_cap_usd: Option<f64>,
}

/// The three limits of one quota family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaDefaults {
    pub minute: u64,
    pub daily: u64,
    pub token_minute: u64,
}

/// Every limit as configured (`quota::limits::resolve` turns them into one (project, model)'s).
#[derive(Debug, Clone)]
pub struct LimitsConfig {
    pub generate: QuotaDefaults,
    pub embed: QuotaDefaults,
    /// Image models: requests, and images per minute in place of tokens.
    pub image: QuotaDefaults,
    /// Video models: requests, and seconds of video per minute in place of tokens.
    pub video: QuotaDefaults,
    /// A billable call whose model has no price: counted, or refused.
    pub unpriced: Unpriced,
    pub max_request_tokens: u64,
    /// Live API sessions open at once per project, unless the project says otherwise.
    pub live_sessions: u64,
    /// Batch jobs open at once per project (`limits.batch_concurrent`).
    pub batch_concurrent: u64,
    /// Tokens of open batch jobs per (project, model) (`limits.batch_enqueued_tokens`).
    pub batch_enqueued_tokens: u64,
    pub timezone: Tz,
    /// Length of the sliding "minute" window in ms (`limits.window_secs`: Google's 60 s;
    /// tests shorten it).
    pub window_ms: u64,
    pub models: BTreeMap<String, LimitOverride>,
    pub projects: BTreeMap<String, ProjectLimits>,
}

/// The limits of one (project, model).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Limits {
    /// Requests in any 60 s span.
    pub minute: u64,
    /// Input tokens in any 60 s span.
    pub token_minute: u64,
    /// Requests per quota day.
    pub daily: u64,
    /// Largest estimate one request may have.
    pub max_request_tokens: u64,
}

impl Limits {
    fn apply(&mut self, o: &LimitOverride) {
        if let Some(v) = o.minute {
            self.minute = v;
        }
        if let Some(v) = o.token_minute {
            self.token_minute = v;
        }
        if let Some(v) = o.daily {
            self.daily = v;
        }
        if let Some(v) = o.max_request_tokens {
            self.max_request_tokens = v;
        }
    }
}

/// The limits for `model` in `project` for a call of `family`.
pub fn resolve(cfg: &LimitsConfig, project: &str, model: &str, family: QuotaFamily) -> Limits {
    let d = match family {
        QuotaFamily::Embed => cfg.embed,
        QuotaFamily::Image => cfg.image,
        QuotaFamily::Video => cfg.video,
        QuotaFamily::Generate | QuotaFamily::Free => cfg.generate,
    };
    let mut l = Limits {
        minute: d.minute,
        token_minute: d.token_minute,
        daily: d.daily,
        max_request_tokens: cfg.max_request_tokens,
    };
    if let Some(o) = cfg.models.get(model) {
        l.apply(o);
    }
    if let Some(p) = cfg.projects.get(project) {
        l.apply(&p.all_models);
        if let Some(o) = p.models.get(model) {
            l.apply(o);
        }
    }
    l
}

/// Live API sessions `project` may hold open at once: its `live_sessions`, else the default.
pub fn live_sessions(cfg: &LimitsConfig, project: &str) -> u64 {
    cfg.projects
        .get(project)
        .and_then(|p| p.all_models.live_sessions)
        .unwrap_or(cfg.live_sessions)
}

/// How `project` is billed: its `limits.projects.P.billing`, else paid.
pub fn billing(cfg: &LimitsConfig, project: &str) -> Billing {
    cfg.projects
        .get(project)
        .map(|p| p.billing)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_apply_from_model_to_project_to_project_model() {
        let c = crate::config::for_test(
            r#"
[limits]
minute = 10
embed_minute = 50
[limits.models.m1]
minute = 5
daily = 7
[limits.projects.p]
minute = 3
[limits.projects.p.models.m1]
token_minute = 99
"#,
            &[],
        );
        let l = &c.limits;
        assert_eq!(resolve(l, "q", "other", QuotaFamily::Generate).minute, 10);
        assert_eq!(resolve(l, "q", "other", QuotaFamily::Embed).minute, 50);
        let m1 = resolve(l, "q", "m1", QuotaFamily::Generate);
        assert_eq!((m1.minute, m1.daily), (5, 7));
        let pm1 = resolve(l, "p", "m1", QuotaFamily::Generate);
        assert_eq!((pm1.minute, pm1.daily, pm1.token_minute), (3, 7, 99));
    }

    #[test]
    fn a_project_is_billed_as_configured_and_paid_by_default() {
        let c = crate::config::for_test(
            r#"
[limits.projects.free-proj]
billing = "free"
[limits.projects.paid-proj]
billing = "paid"
[limits.projects.limited]
minute = 3
"#,
            &[],
        );
        let l = &c.limits;
        assert_eq!(billing(l, "free-proj"), Billing::Free);
        assert_eq!(billing(l, "paid-proj"), Billing::Paid);
        assert_eq!(billing(l, "limited"), Billing::Paid);
        assert_eq!(billing(l, "unknown"), Billing::Paid);
        // billing sits beside the flattened limits without disturbing them.
        assert_eq!(l.projects["limited"].all_models.minute, Some(3));
    }

    #[test]
    fn an_unknown_billing_is_refused_naming_the_setting() {
        let e = crate::config::try_for_test("[limits.projects.p]\nbilling = \"freee\"\n", &[])
            .unwrap_err();
        let text = e.to_string();
        assert!(text.contains("billing"), "{text}");
        assert!(text.contains("freee"), "{text}");
    }
}
