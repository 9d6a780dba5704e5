//! `[limits]`: the quota of each (project, model): defaults per family, overrides per model,
//! per project and per project and model, and the time zone of the quota day, validated into
//! the quota's own [`LimitsConfig`].

use std::collections::BTreeMap;

use chrono_tz::Tz;
use serde::Deserialize;

use super::check::{ConfigError, bad, check_name, secs};
use crate::quota::limits::{LimitOverride, LimitsConfig, ProjectLimits, QuotaDefaults, Unpriced};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Raw {
    minute: u64,
    daily: u64,
    token_minute: u64,
    max_request_tokens: u64,
    embed_minute: u64,
    embed_daily: u64,
    embed_token_minute: u64,
    live_sessions: u64,
    image_minute: u64,
    image_daily: u64,
    images_per_minute: u64,
    video_minute: u64,
    video_daily: u64,
    video_seconds_per_minute: u64,
    unpriced: Unpriced,
    timezone: String,
    window_secs: f64,
    #[serde(default = "batch_concurrent")]
    batch_concurrent: u64,
    #[serde(default = "batch_enqueued_tokens")]
    batch_enqueued_tokens: u64,
    #[serde(default)]
    models: BTreeMap<String, LimitOverride>,
    #[serde(default)]
    projects: BTreeMap<String, ProjectLimits>,
}

/// Google's concurrent batch jobs per project.
fn batch_concurrent() -> u64 {
    100
}

/// Tokens of batch requests enqueued at once per (project, model): Google's Tier 1 figure for
/// the 2.5 Flash models (Google sets it per tier and model).
fn batch_enqueued_tokens() -> u64 {
    3_000_000
}

/// Validate `[limits]` into the quota's own type.
pub(super) fn from_raw(l: Raw) -> Result<LimitsConfig, ConfigError> {
    let timezone: Tz = l.timezone.parse().map_err(|_| {
        bad(
            "limits.timezone",
            format!(
                "{:?} is not an IANA time zone such as America/Los_Angeles",
                l.timezone
            ),
        )
    })?;
    for (name, v) in [
        ("limits.minute (GEMINI_MINUTE_LIMIT)", l.minute),
        ("limits.daily (GEMINI_DAILY_LIMIT)", l.daily),
        (
            "limits.token_minute (GEMINI_TOKEN_MINUTE_LIMIT)",
            l.token_minute,
        ),
        (
            "limits.max_request_tokens (GEMINI_MAX_REQUEST_TOKENS)",
            l.max_request_tokens,
        ),
        ("limits.embed_minute", l.embed_minute),
        ("limits.embed_daily", l.embed_daily),
        ("limits.embed_token_minute", l.embed_token_minute),
        ("limits.live_sessions", l.live_sessions),
        ("limits.image_minute", l.image_minute),
        ("limits.image_daily", l.image_daily),
        ("limits.images_per_minute", l.images_per_minute),
        ("limits.video_minute", l.video_minute),
        ("limits.video_daily", l.video_daily),
        ("limits.batch_concurrent", l.batch_concurrent),
        ("limits.batch_enqueued_tokens", l.batch_enqueued_tokens),
        (
            "limits.video_seconds_per_minute",
            l.video_seconds_per_minute,
        ),
    ] {
        if v == 0 {
            return Err(bad(name, "must be at least 1"));
        }
    }
    for (model, o) in &l.models {
        check_name(&format!("limits.models.{model}"), model)?;
        check_override(&format!("limits.models.{model}"), o)?;
        per_project_only(&format!("limits.models.{model}"), o)?;
    }
    for (project, p) in &l.projects {
        check_name(&format!("limits.projects.{project}"), project)?;
        check_override(&format!("limits.projects.{project}"), &p.all_models)?;
        if let Some(cap) = p.monthly_spend_cap_usd
            && !(cap.is_finite() && cap > 0.0 && cap < 1e12)
        {
            return Err(bad(
                format!("limits.projects.{project}.monthly_spend_cap_usd"),
                format!("must be a positive number of US dollars (such as 250), not {cap}"),
            ));
        }
        for (model, o) in &p.models {
            check_override(&format!("limits.projects.{project}.models.{model}"), o)?;
            per_project_only(&format!("limits.projects.{project}.models.{model}"), o)?;
        }
    }
    Ok(LimitsConfig {
        generate: QuotaDefaults {
            minute: l.minute,
            daily: l.daily,
            token_minute: l.token_minute,
        },
        embed: QuotaDefaults {
            minute: l.embed_minute,
            daily: l.embed_daily,
            token_minute: l.embed_token_minute,
        },
        image: QuotaDefaults {
            minute: l.image_minute,
            daily: l.image_daily,
            token_minute: l.images_per_minute,
        },
        video: QuotaDefaults {
            minute: l.video_minute,
            daily: l.video_daily,
            token_minute: l.video_seconds_per_minute,
        },
        unpriced: l.unpriced,
        max_request_tokens: l.max_request_tokens,
        live_sessions: l.live_sessions,
        batch_concurrent: l.batch_concurrent,
        batch_enqueued_tokens: l.batch_enqueued_tokens,
        timezone,
        window_ms: secs("limits.window_secs", l.window_secs)?
            .as_millis()
            .clamp(1, u128::from(crate::quota::MAX_HOLD_MS)) as u64,
        models: l.models,
        projects: l.projects,
    })
}

fn check_override(setting: &str, o: &LimitOverride) -> Result<(), ConfigError> {
    for (field, v) in [
        ("minute", o.minute),
        ("daily", o.daily),
        ("token_minute", o.token_minute),
        ("max_request_tokens", o.max_request_tokens),
        ("live_sessions", o.live_sessions),
    ] {
        if v == Some(0) {
            return Err(bad(format!("{setting}.{field}"), "must be at least 1"));
        }
    }
    Ok(())
}

/// Live sessions are counted per project (Google's concurrent-session limit is a project's),
/// so a per-model `live_sessions` would be a limit on a count that is not kept.
fn per_project_only(setting: &str, o: &LimitOverride) -> Result<(), ConfigError> {
    if o.live_sessions.is_some() {
        return Err(bad(
            format!("{setting}.live_sessions"),
            "live sessions are counted per project: set live_sessions in [limits] or \
             [limits.projects.PROJECT]",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::config::{for_test, try_for_test};

    #[test]
    fn a_monthly_spend_cap_must_be_positive_dollars_and_names_its_setting() {
        for bad in ["0", "-5", "nan", "inf"] {
            let toml = format!("[limits.projects.p]\nmonthly_spend_cap_usd = {bad}\n");
            let e = try_for_test(&toml, &[]).expect_err(bad).to_string();
            assert!(
                e.contains("limits.projects.p.monthly_spend_cap_usd"),
                "{bad}: {e}"
            );
        }
        let c = for_test("[limits.projects.p]\nmonthly_spend_cap_usd = 250\n", &[]);
        assert_eq!(c.limits.projects["p"].monthly_spend_cap_usd, Some(250.0));
    }
}
