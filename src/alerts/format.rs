//! The bodies of a notification: Slack (`text` and blocks), Discord (`content`, 2,000
//! characters at most), Alertmanager's webhook v4, the proxy's own `json`, and the e-mail's
//! subject and plain-text body.

use serde_json::{Value, json};

use super::{AlertView, Severity};
use crate::config::WebhookFormat;

/// Discord refuses longer `content`.
pub const DISCORD_MAX: usize = 2000;
/// Alerts given a Slack section each; Slack refuses a message of more than 50 blocks, so the
/// rest are counted in one more.
pub const SLACK_SECTIONS: usize = 45;

/// `firing` when any alert of the message fires, else `resolved`.
pub fn group_status(alerts: &[AlertView]) -> &'static str {
    if alerts.iter().any(|a| a.status == "firing") {
        "firing"
    } else {
        "resolved"
    }
}

/// One line per alert: `[FIRING critical] minute_usage_high: summary (model=m, project=p)`.
fn line(a: &AlertView) -> String {
    let labels: Vec<String> = a.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let head = match a.status {
        "firing" => format!("[FIRING {}]", a.severity.as_str()),
        _ => "[RESOLVED]".to_string(),
    };
    let mut s = format!("{head} {}: {}", a.rule, a.summary);
    if !labels.is_empty() {
        s.push_str(&format!(" ({})", labels.join(", ")));
    }
    s
}

/// The first line of every message: how many fire and resolve.
pub fn headline(alerts: &[AlertView]) -> String {
    let firing = alerts.iter().filter(|a| a.status == "firing").count();
    let resolved = alerts.len() - firing;
    let mut parts = Vec::new();
    if firing > 0 {
        parts.push(format!("{firing} firing"));
    }
    if resolved > 0 {
        parts.push(format!("{resolved} resolved"));
    }
    format!("gemini-quota-proxy alerts: {}", parts.join(", "))
}

fn dashboard(public_url: Option<&str>) -> Option<String> {
    public_url.map(|u| format!("{}/dashboard/", u.trim_end_matches('/')))
}

/// The plain text of a message (Slack's fallback, Discord's content, the e-mail's body).
pub fn text(alerts: &[AlertView], public_url: Option<&str>) -> String {
    let mut s = headline(alerts);
    for a in alerts {
        s.push('\n');
        s.push_str(&line(a));
    }
    if let Some(d) = dashboard(public_url) {
        s.push_str(&format!("\nDashboard: {d}"));
    }
    s
}

/// The JSON body of a webhook in `format`.
pub fn body(format: WebhookFormat, alerts: &[AlertView], public_url: Option<&str>) -> Value {
    match format {
        WebhookFormat::Json => json!({
            "version": "1",
            "status": group_status(alerts),
            "alerts": alerts.iter().map(|a| json!({
                "fingerprint": a.fingerprint,
                "rule": a.rule,
                "severity": a.severity,
                "status": a.status,
                "summary": a.summary,
                "labels": a.labels,
                "started_at": a.started_at,
                "resolved_at": a.resolved_at,
            })).collect::<Vec<_>>(),
        }),
        WebhookFormat::Slack => {
            let mut blocks = vec![json!({
                "type": "header",
                "text": {"type": "plain_text", "text": headline(alerts)},
            })];
            for a in alerts.iter().take(SLACK_SECTIONS) {
                blocks.push(json!({
                    "type": "section",
                    "text": {"type": "mrkdwn", "text": line(a)},
                }));
            }
            if alerts.len() > SLACK_SECTIONS {
                blocks.push(json!({
                    "type": "section",
                    "text": {"type": "mrkdwn", "text": format!("… and {} more", alerts.len() - SLACK_SECTIONS)},
                }));
            }
            if let Some(d) = dashboard(public_url) {
                blocks.push(json!({
                    "type": "context",
                    "elements": [{"type": "mrkdwn", "text": format!("<{d}|Dashboard>")}],
                }));
            }
            json!({"text": text(alerts, public_url), "blocks": blocks})
        }
        WebhookFormat::Discord => {
            let mut content = text(alerts, public_url);
            if content.chars().count() > DISCORD_MAX {
                let cut: String = content.chars().take(DISCORD_MAX - 1).collect();
                content = format!("{cut}…");
            }
            json!({"content": content})
        }
        WebhookFormat::Alertmanager => {
            let status = group_status(alerts);
            json!({
                "version": "4",
                "groupKey": "{}:{alertname=~\".*\"}",
                "truncatedAlerts": 0,
                "status": status,
                "receiver": "gemini-quota-proxy",
                "groupLabels": {},
                "commonLabels": {},
                "commonAnnotations": {},
                "externalURL": public_url.unwrap_or(""),
                "alerts": alerts.iter().map(|a| {
                    let mut labels = serde_json::Map::new();
                    labels.insert("alertname".into(), json!(a.rule));
                    labels.insert("severity".into(), json!(a.severity));
                    for (k, v) in &a.labels {
                        labels.insert(k.clone(), json!(v));
                    }
                    json!({
                        "status": a.status,
                        "labels": labels,
                        "annotations": {"summary": a.summary},
                        "startsAt": a.started_at,
                        // Alertmanager's "not ended" time.
                        "endsAt": a.resolved_at.as_deref().unwrap_or("0001-01-01T00:00:00Z"),
                        "generatorURL": dashboard(public_url).unwrap_or_default(),
                        "fingerprint": a.fingerprint,
                    })
                }).collect::<Vec<_>>(),
            })
        }
    }
}

/// The e-mail's subject: the first alert's rule and severity, and how many more.
pub fn subject(alerts: &[AlertView]) -> String {
    let Some(first) = alerts
        .iter()
        .max_by_key(|a| (a.status == "firing", a.severity == Severity::Critical))
    else {
        return "[gemini-quota-proxy] no alerts".into();
    };
    let state = match first.status {
        "firing" => format!("FIRING {}", first.severity.as_str()),
        _ => "RESOLVED".to_string(),
    };
    let more = match alerts.len() - 1 {
        0 => String::new(),
        n => format!(" (+{n} more)"),
    };
    format!("[gemini-quota-proxy] {state}: {}{more}", first.rule)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn alert(summary: &str) -> AlertView {
        AlertView {
            fingerprint: "0123456789abcdef".into(),
            rule: "daily_usage_high",
            severity: Severity::Critical,
            status: "firing",
            summary: summary.into(),
            labels: BTreeMap::from([("model".to_string(), "gemini-2.5-pro".to_string())]),
            started_at: "2026-11-29T01:00:00Z".into(),
            resolved_at: None,
            last_notified_at: None,
        }
    }

    #[test]
    fn discord_content_is_cut_to_its_limit() {
        let alerts: Vec<AlertView> = (0..100).map(|_| alert(&"x".repeat(100))).collect();
        let b = body(WebhookFormat::Discord, &alerts, None);
        let content = b["content"].as_str().unwrap();
        assert_eq!(content.chars().count(), DISCORD_MAX);
        assert!(content.starts_with("gemini-quota-proxy alerts: 100 firing"));
    }

    #[test]
    fn slack_messages_stay_within_fifty_blocks() {
        let alerts: Vec<AlertView> = (0..80).map(|_| alert("many")).collect();
        let b = body(WebhookFormat::Slack, &alerts, Some("https://p.example"));
        let blocks = b["blocks"].as_array().unwrap();
        assert!(blocks.len() <= 50, "{}", blocks.len());
        assert_eq!(blocks[SLACK_SECTIONS + 1]["text"]["text"], "… and 35 more");
    }

    #[test]
    fn subject_names_the_worst_rule_and_severity() {
        let mut warn = alert("w");
        warn.rule = "token_usage_high";
        warn.severity = Severity::Warning;
        let s = subject(&[warn, alert("c")]);
        assert_eq!(
            s,
            "[gemini-quota-proxy] FIRING critical: daily_usage_high (+1 more)"
        );
    }

    #[test]
    fn text_links_the_dashboard_when_the_public_url_is_known() {
        let t = text(&[alert("d")], Some("https://proxy.example/"));
        assert!(
            t.ends_with("Dashboard: https://proxy.example/dashboard/"),
            "{t}"
        );
        assert!(!text(&[alert("d")], None).contains("Dashboard"));
    }
}
