//! The alert channels as configured: each one's target (a webhook's URL and body format, or an
//! SMTP transport with its sender and recipients), the secrets never shown in its errors (the
//! URL, the SMTP password in every form lettre may repeat), its last status and its queue.

use parking_lot::Mutex;
use std::sync::Arc;

use lettre::message::Mailbox;
use lettre::{AsyncSmtpTransport, Tokio1Executor};
use serde::Serialize;

use super::TRY_TIMEOUT;
use crate::config::{Config, WebhookFormat};
use crate::secret::Secret;

pub(super) enum Target {
    Webhook {
        uri: http::Uri,
        format: WebhookFormat,
    },
    Email {
        transport: Box<AsyncSmtpTransport<Tokio1Executor>>,
        from: Mailbox,
        to: Vec<Mailbox>,
    },
}

/// One configured channel: where, and what its last delivery did.
pub struct Channel {
    /// `slack`, `discord`, `json`, `alertmanager` or `email`: the metric's label.
    pub kind: &'static str,
    pub(super) target: Target,
    /// Strings never shown in an error (the URL, the SMTP password).
    pub(super) secrets: Vec<String>,
    pub(super) status: Mutex<ChannelStatus>,
    /// Held while a message is sent (all its tries): messages reach a channel in the order
    /// their turns were taken (tokio's mutex is fair, first come first served), so a retried
    /// firing is never overtaken by the next group's resolved.
    pub(super) order: Arc<tokio::sync::Mutex<()>>,
}

/// A channel on the status page.
#[derive(Debug, Clone, Serialize, Default)]
pub struct ChannelStatus {
    /// 1-based position among the channels (webhooks in order, then e-mail).
    pub index: usize,
    pub channel: &'static str,
    /// The last message did not get through after every try.
    pub failing: bool,
    pub last_outcome: Option<&'static str>,
    pub last_error: Option<String>,
    pub last_attempt_at: Option<String>,
}

/// The channels of `config`: webhooks in order, then e-mail.
pub(super) fn channels(config: &Config) -> Vec<Channel> {
    let cfg = &config.alerts;
    let mut channels = Vec::new();
    for w in &cfg.webhooks {
        channels.push(Channel {
            kind: w.format.as_str(),
            target: Target::Webhook {
                uri: w.uri.0.clone(),
                format: w.format,
            },
            secrets: vec![w.url.expose().to_string()],
            status: Mutex::new(ChannelStatus::default()),
            order: Arc::default(),
        });
    }
    if let Some(e) = &cfg.email {
        // Checked at load (scheme, host, tls); a URL lettre still refuses leaves the
        // channel out, said once without the URL.
        match AsyncSmtpTransport::<Tokio1Executor>::from_url(e.smtp_url.expose()) {
            Ok(b) => channels.push(Channel {
                kind: "email",
                target: Target::Email {
                    transport: Box::new(b.timeout(Some(TRY_TIMEOUT)).build()),
                    from: e.from.parse().expect("checked at load"),
                    to: e.to.iter().filter_map(|a| a.parse().ok()).collect(),
                },
                secrets: smtp_secrets(&e.smtp_url),
                status: Mutex::new(ChannelStatus::default()),
                order: Arc::default(),
            }),
            Err(_) => tracing::error!(
                "alerts.email.smtp_url cannot be used (not shown: it may hold a password): e-mail alerts are off"
            ),
        }
    }
    for (i, c) in channels.iter_mut().enumerate() {
        let s = c.status.get_mut();
        s.index = i + 1;
        s.channel = c.kind;
    }
    channels
}

/// The parts of an SMTP URL never shown: the whole URL, its `user:password` and the password,
/// each as written and percent-decoded (the form lettre authenticates with, and so may
/// repeat in an error). A password of any length is hidden.
pub(super) fn smtp_secrets(url: &Secret) -> Vec<String> {
    let mut v = vec![url.expose().to_string()];
    if let Some((userinfo, _)) = url
        .expose()
        .split_once("://")
        .and_then(|(_, rest)| rest.rsplit_once('@'))
    {
        v.push(userinfo.to_string());
        if let Some((_, pass)) = userinfo.split_once(':') {
            v.push(pass.to_string());
            v.push(percent_decode(pass));
        }
        v.push(percent_decode(userinfo));
    }
    v.retain(|s| !s.is_empty());
    // Longest first: a password inside the user:password is replaced with the whole.
    v.sort_by_key(|s| std::cmp::Reverse(s.len()));
    v.dedup();
    v
}

/// `%XX` escapes decoded as lettre decodes the password it authenticates with (an invalid
/// escape kept as written, bytes that are not UTF-8 replaced).
fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

/// `text` with every secret replaced by `***`.
pub(super) fn scrub(text: &str, secrets: &[String]) -> String {
    let mut out = text.to_string();
    for s in secrets {
        if !s.is_empty() {
            out = out.replace(s.as_str(), "***");
        }
    }
    out
}
