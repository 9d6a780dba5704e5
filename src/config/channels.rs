//! Alert channels as configured: webhook URLs (secrets: never echoed) and their formats, SMTP
//! URLs (STARTTLS made the default for `smtp://`) and e-mail addresses.

use super::check::{ConfigError, bad};
use crate::secret::Secret;

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

    pub(super) fn parse(setting: &str, s: &str) -> Result<WebhookFormat, ConfigError> {
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

pub(super) fn webhook(
    setting: &str,
    url: Secret,
    format: Option<&str>,
) -> Result<WebhookConfig, ConfigError> {
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
pub(super) fn smtp_url(setting: &str, url: &Secret) -> Result<Secret, ConfigError> {
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

pub(super) fn mailbox(setting: &str, addr: &str) -> Result<String, ConfigError> {
    let addr = addr.trim();
    addr.parse::<lettre::message::Mailbox>()
        .map_err(|_| bad(setting, format!("{addr:?} is not an e-mail address")))?;
    Ok(addr.to_string())
}
