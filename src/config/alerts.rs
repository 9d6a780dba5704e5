//! `[alerts]`: how often rules are checked, how transitions are grouped and repeated, the
//! thresholds, and the channels (webhooks, e-mail). Webhook URLs and SMTP URLs are secrets:
//! no error here echoes them.

use std::collections::HashMap;
use std::time::Duration;

use serde::Deserialize;

use super::check::{ConfigError, bad, comma_list, env_value, secs, secs_or_zero};
use crate::secret::Secret;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Raw {
    evaluate_every_secs: f64,
    group_wait_secs: f64,
    repeat_interval_secs: f64,
    warn_percent: f64,
    critical_percent: f64,
    failure_streak: u32,
    daily_budget_usd: f64,
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

/// The body a webhook receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookFormat {
    Slack,
    Discord,
    Json,
    Alertmanager,
}

impl WebhookFormat {
    /// The name in `format` (and the `channel` label of the delivery counter).
    pub fn as_str(self) -> &'static str {
        match self {
            WebhookFormat::Slack => "slack",
            WebhookFormat::Discord => "discord",
            WebhookFormat::Json => "json",
            WebhookFormat::Alertmanager => "alertmanager",
        }
    }

    fn parse(setting: &str, s: &str) -> Result<WebhookFormat, ConfigError> {
        match s.trim() {
            "slack" => Ok(WebhookFormat::Slack),
            "discord" => Ok(WebhookFormat::Discord),
            "json" => Ok(WebhookFormat::Json),
            "alertmanager" => Ok(WebhookFormat::Alertmanager),
            other => Err(bad(
                setting,
                format!(
                    "expected \"slack\", \"discord\", \"json\" or \"alertmanager\", got {:?}",
                    other.chars().take(40).collect::<String>()
                ),
            )),
        }
    }

    /// Slack's and Discord's webhook hosts say what they speak; anything else gets `json`.
    fn guess(uri: &http::Uri) -> WebhookFormat {
        match uri.host().unwrap_or("") {
            "hooks.slack.com" => WebhookFormat::Slack,
            "discord.com" | "discordapp.com" | "canary.discord.com" | "ptb.discord.com" => {
                WebhookFormat::Discord
            }
            _ => WebhookFormat::Json,
        }
    }
}

/// One webhook: where (a secret: its path is the credential) and in which format.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    pub url: Secret,
    pub uri: SecretUri,
    pub format: WebhookFormat,
}

/// A parsed URL whose `Debug` hides it (the URL itself is the credential of most webhooks).
#[derive(Clone)]
pub struct SecretUri(pub http::Uri);

impl std::fmt::Debug for SecretUri {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretUri(***)")
    }
}

/// E-mail through one SMTP server.
#[derive(Debug, Clone)]
pub struct EmailConfig {
    /// The URL as lettre reads it (`smtp://` without `tls=` made opportunistic STARTTLS).
    pub smtp_url: Secret,
    pub from: String,
    pub to: Vec<String>,
}

/// `[alerts]`, validated.
#[derive(Debug, Clone)]
pub struct AlertsConfig {
    pub evaluate_every: Duration,
    /// Zero: every evaluation's transitions go out at once.
    pub group_wait: Duration,
    pub repeat_interval: Duration,
    pub warn_percent: f64,
    pub critical_percent: f64,
    pub failure_streak: u32,
    /// Zero: no budget rule.
    pub daily_budget_usd: f64,
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

fn webhook(setting: &str, url: Secret, format: Option<&str>) -> Result<WebhookConfig, ConfigError> {
    // Never echoed: the URL is the credential.
    let invalid = || {
        bad(
            setting,
            "expected an http(s) URL with a host and without user:password@ (not shown: a \
             webhook URL is a secret)",
        )
    };
    let uri: http::Uri = url.expose().trim().parse().map_err(|_| invalid())?;
    let ok = matches!(uri.scheme_str(), Some("http") | Some("https"))
        && uri.host().is_some_and(|h| !h.is_empty())
        && !uri.authority().is_some_and(|a| a.as_str().contains('@'));
    if !ok {
        return Err(invalid());
    }
    let format = match format {
        Some(f) if !f.trim().is_empty() => WebhookFormat::parse(setting, f)?,
        _ => WebhookFormat::guess(&uri),
    };
    Ok(WebhookConfig {
        url,
        uri: SecretUri(uri),
        format,
    })
}

/// `smtp://` (STARTTLS when offered, `?tls=required` insists) or `smtps://` (implicit TLS).
fn smtp_url(setting: &str, url: &Secret) -> Result<Secret, ConfigError> {
    let text = url.expose().trim();
    let (scheme, rest) = text.split_once("://").ok_or_else(|| {
        bad(
            setting,
            "expected smtp://[user:password@]host[:port][?tls=required] or smtps://... (not \
             shown: it may hold a password)",
        )
    })?;
    let host_part = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    let host = host_part.split(['/', '?', ':']).next().unwrap_or("");
    if host.is_empty() {
        return Err(bad(setting, "the SMTP URL names no host"));
    }
    match scheme {
        "smtps" => Ok(Secret::new(text)),
        "smtp" if text.contains("tls=") => {
            let tls = text.split("tls=").nth(1).unwrap_or("");
            let tls = tls.split('&').next().unwrap_or("");
            if !matches!(tls, "required" | "opportunistic") {
                return Err(bad(
                    setting,
                    "tls= must be \"required\" or \"opportunistic\"",
                ));
            }
            Ok(Secret::new(text))
        }
        "smtp" => {
            let sep = if text.contains('?') { '&' } else { '?' };
            Ok(Secret::new(format!("{text}{sep}tls=opportunistic")))
        }
        _ => Err(bad(
            setting,
            "expected a URL starting with smtp:// or smtps:// (not shown: it may hold a password)",
        )),
    }
}

fn mailbox(setting: &str, addr: &str) -> Result<String, ConfigError> {
    let addr = addr.trim();
    addr.parse::<lettre::message::Mailbox>()
        .map_err(|_| bad(setting, format!("{addr:?} is not an e-mail address")))?;
    Ok(addr.to_string())
}

pub(super) fn from_raw(
    raw: Raw,
    env: &HashMap<String, String>,
) -> Result<AlertsConfig, ConfigError> {
    let evaluate_every = secs("alerts.evaluate_every_secs", raw.evaluate_every_secs)?;
    let group_wait = secs_or_zero("alerts.group_wait_secs", raw.group_wait_secs)?;
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
        repeat_interval,
        warn_percent: raw.warn_percent,
        critical_percent: raw.critical_percent,
        failure_streak: raw.failure_streak,
        daily_budget_usd: raw.daily_budget_usd,
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
