//! `[alerts]`: how often rules are checked, how transitions are grouped and repeated, the
//! thresholds, and the channels (webhooks, e-mail; each checked in [`super::channels`]) from
//! the TOML and the environment.

use std::collections::HashMap;
use std::time::Duration;

use serde::Deserialize;

use super::channels::{EmailConfig, WebhookConfig, WebhookFormat, mailbox, smtp_url, webhook};
use super::check::{ConfigError, bad, comma_list, env_value, secs, secs_or_zero};
use crate::secret::Secret;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Raw {
    evaluate_every_secs: f64,
    group_wait_secs: f64,
    group_interval_secs: f64,
    repeat_interval_secs: f64,
    warn_percent: f64,
    critical_percent: f64,
    failure_streak: u32,
    daily_budget_usd: f64,
    client_limited_minutes: u64,
    #[serde(default)]
    webhooks: Vec<RawWebhook>,
    email: RawEmail,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWebhook {
    url: Secret,
    #[serde(default)]
    format: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEmail {
    smtp_url: Secret,
    from: String,
    to: Vec<String>,
}

/// `[alerts]`, validated.
#[derive(Debug, Clone)]
pub struct AlertsConfig {
    pub evaluate_every: Duration,
    /// Zero: every evaluation's transitions go out at once.
    pub group_wait: Duration,
    /// Least time between two messages (zero: none); what changes meanwhile waits and goes
    /// out together.
    pub group_interval: Duration,
    pub repeat_interval: Duration,
    pub warn_percent: f64,
    pub critical_percent: f64,
    pub failure_streak: u32,
    /// Zero: no budget rule.
    pub daily_budget_usd: f64,
    /// How long a client must have been refused by its own limits to fire `client_limited`;
    /// zero: no such rule.
    pub client_limited: Duration,
    pub webhooks: Vec<WebhookConfig>,
    pub email: Option<EmailConfig>,
}

impl AlertsConfig {
    /// Whether any channel is configured (without one, rules are still evaluated for the API
    /// and the status page).
    pub fn has_channels(&self) -> bool {
        !self.webhooks.is_empty() || self.email.is_some()
    }
}

pub(super) fn from_raw(
    raw: Raw,
    env: &HashMap<String, String>,
) -> Result<AlertsConfig, ConfigError> {
    let evaluate_every = secs("alerts.evaluate_every_secs", raw.evaluate_every_secs)?;
    let group_wait = secs_or_zero("alerts.group_wait_secs", raw.group_wait_secs)?;
    let group_interval = secs_or_zero("alerts.group_interval_secs", raw.group_interval_secs)?;
    let repeat_interval = secs("alerts.repeat_interval_secs", raw.repeat_interval_secs)?;
    let pct_ok = |v: f64| v.is_finite() && v > 0.0 && v <= 100.0;
    if !pct_ok(raw.warn_percent) {
        return Err(bad(
            "alerts.warn_percent",
            format!(
                "expected a percentage above 0, at most 100, got {}",
                raw.warn_percent
            ),
        ));
    }
    if !pct_ok(raw.critical_percent) || raw.critical_percent < raw.warn_percent {
        return Err(bad(
            "alerts.critical_percent",
            format!(
                "expected a percentage at least alerts.warn_percent ({}), at most 100, got {}",
                raw.warn_percent, raw.critical_percent
            ),
        ));
    }
    if raw.failure_streak == 0 {
        return Err(bad("alerts.failure_streak", "must be at least 1"));
    }
    if !(raw.daily_budget_usd.is_finite() && raw.daily_budget_usd >= 0.0) {
        return Err(bad(
            "alerts.daily_budget_usd",
            "expected a number of US dollars, 0 or more",
        ));
    }
    let mut webhooks = Vec::new();
    for (i, w) in raw.webhooks.into_iter().enumerate() {
        webhooks.push(webhook(
            &format!("alerts.webhooks[{i}].url"),
            w.url,
            w.format.as_deref(),
        )?);
    }
    if let Some(url) = env_value(env, "PROXY_ALERT_WEBHOOK_URL") {
        let format = env_value(env, "PROXY_ALERT_WEBHOOK_FORMAT");
        if let Some(f) = format {
            WebhookFormat::parse("PROXY_ALERT_WEBHOOK_FORMAT", f)?;
        }
        webhooks.push(webhook(
            "PROXY_ALERT_WEBHOOK_URL",
            Secret::new(url),
            format,
        )?);
    }
    let smtp = env_value(env, "PROXY_SMTP_URL")
        .map(Secret::new)
        .unwrap_or(raw.email.smtp_url);
    let from = env_value(env, "PROXY_ALERT_EMAIL_FROM")
        .map(str::to_string)
        .unwrap_or(raw.email.from);
    let to: Vec<String> = match env_value(env, "PROXY_ALERT_EMAIL_TO") {
        Some(list) => comma_list(list).map(str::to_string).collect(),
        None => raw.email.to,
    };
    let email = if smtp.expose().trim().is_empty() {
        None
    } else {
        let smtp_url = smtp_url("alerts.email.smtp_url (PROXY_SMTP_URL)", &smtp)?;
        let from_setting = "alerts.email.from (PROXY_ALERT_EMAIL_FROM)";
        let to_setting = "alerts.email.to (PROXY_ALERT_EMAIL_TO)";
        if from.trim().is_empty() {
            return Err(bad(from_setting, "an SMTP URL is set: name the sender"));
        }
        if to.is_empty() {
            return Err(bad(
                to_setting,
                "an SMTP URL is set: name at least one recipient",
            ));
        }
        Some(EmailConfig {
            smtp_url,
            from: mailbox(from_setting, &from)?,
            to: to
                .iter()
                .map(|a| mailbox(to_setting, a))
                .collect::<Result<_, _>>()?,
        })
    };
    Ok(AlertsConfig {
        evaluate_every,
        group_wait,
        group_interval,
        repeat_interval,
        warn_percent: raw.warn_percent,
        critical_percent: raw.critical_percent,
        failure_streak: raw.failure_streak,
        daily_budget_usd: raw.daily_budget_usd,
        client_limited: Duration::from_secs(raw.client_limited_minutes.min(10_000) * 60),
        webhooks,
        email,
    })
}

#[cfg(test)]
mod tests {
    use crate::config::{WebhookFormat, try_for_test};

    #[test]
    fn defaults_check_every_ten_seconds_with_the_original_thresholds_and_no_channel() {
        let c = try_for_test("", &[]).unwrap().alerts;
        assert_eq!(c.evaluate_every.as_secs(), 10);
        assert_eq!(c.repeat_interval.as_secs(), 14400);
        assert_eq!((c.warn_percent, c.critical_percent), (80.0, 95.0));
        assert!(!c.has_channels());
    }

    #[test]
    fn webhook_format_is_guessed_from_the_host_unless_named() {
        for (url, format, want) in [
            (
                "https://hooks.slack.com/services/T/B/X",
                "",
                WebhookFormat::Slack,
            ),
            (
                "https://discord.com/api/webhooks/1/x",
                "",
                WebhookFormat::Discord,
            ),
            ("https://ops.example/hook", "", WebhookFormat::Json),
            (
                "https://ops.example/hook",
                "alertmanager",
                WebhookFormat::Alertmanager,
            ),
        ] {
            let c = try_for_test(
                "",
                &[
                    ("PROXY_ALERT_WEBHOOK_URL", url),
                    ("PROXY_ALERT_WEBHOOK_FORMAT", format),
                ],
            )
            .unwrap();
            assert_eq!(c.alerts.webhooks[0].format, want, "{url}");
        }
    }

    #[test]
    fn bad_channels_name_their_setting_without_showing_the_secret() {
        for (env, setting) in [
            (
                ("PROXY_ALERT_WEBHOOK_URL", "ftp://SECRETHOOK/x"),
                "PROXY_ALERT_WEBHOOK_URL",
            ),
            (
                (
                    "PROXY_ALERT_WEBHOOK_URL",
                    "https://u:SECRETHOOK@h.example/x",
                ),
                "PROXY_ALERT_WEBHOOK_URL",
            ),
            (
                ("PROXY_ALERT_WEBHOOK_FORMAT", "teams"),
                "PROXY_ALERT_WEBHOOK_FORMAT",
            ),
            (
                ("PROXY_SMTP_URL", "http://u:SECRETHOOK@mail"),
                "PROXY_SMTP_URL",
            ),
            (
                ("PROXY_SMTP_URL", "smtp://u:SECRETHOOK@mail:25"),
                "PROXY_ALERT_EMAIL_FROM",
            ),
        ] {
            let mut vars = vec![env];
            if env.0 == "PROXY_ALERT_WEBHOOK_FORMAT" {
                vars.push(("PROXY_ALERT_WEBHOOK_URL", "https://ops.example/h"));
            }
            let e = try_for_test("", &vars).unwrap_err();
            assert!(e.setting.contains(setting), "{e}");
            assert!(!e.to_string().contains("SECRETHOOK"), "{e}");
        }
    }

    #[test]
    fn smtp_without_tls_parameter_uses_starttls_when_offered() {
        let c = try_for_test(
            "",
            &[
                ("PROXY_SMTP_URL", "smtp://127.0.0.1:2525"),
                ("PROXY_ALERT_EMAIL_FROM", "proxy@example.com"),
                ("PROXY_ALERT_EMAIL_TO", "a@example.com, b@example.com"),
            ],
        )
        .unwrap();
        let e = c.alerts.email.unwrap();
        assert_eq!(
            e.smtp_url.expose(),
            "smtp://127.0.0.1:2525?tls=opportunistic"
        );
        assert_eq!(e.to, ["a@example.com", "b@example.com"]);
    }

    #[test]
    fn thresholds_out_of_order_are_refused() {
        let e =
            try_for_test("[alerts]\nwarn_percent = 90\ncritical_percent = 80\n", &[]).unwrap_err();
        assert_eq!(e.setting, "alerts.critical_percent");
    }
}
