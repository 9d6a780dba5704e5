//! Alerts: a state machine of firing and resolved alerts with grouping and repeats
//! ([`engine`]), one claim per transition across replicas ([`claim`]), and delivery to webhooks
//! and e-mail off the request path ([`deliver`], bodies in [`format`](mod@format)). What fires comes from
//! the rules over the status snapshot (`status::alert_rules`); the gateway runs the evaluator
//! in the background and hands each evaluation to [`Alerts::observe`].

pub mod claim;
pub mod deliver;
pub mod engine;
pub mod format;

use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;
use sha2::{Digest, Sha256};

use self::claim::Claims;
use self::deliver::{Channel, ChannelReport, Delivery};
use self::engine::{Engine, Kind, Transition};
use crate::config::{AlertsConfig, Config};
use crate::metrics::Metrics;
use crate::quota::redis::SharedIo;

/// Rules about one replica's own condition (its run of upstream failures): kept out of the
/// cross-replica claim, each replica fires, repeats and resolves its own (one replica
/// recovering must not resolve the others').
pub const PER_REPLICA_RULES: &[&str] = &["upstream_failures"];

fn per_replica(rule: &str) -> bool {
    PER_REPLICA_RULES.contains(&rule)
}

/// How bad an alert is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Warning,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

/// An alert a rule finds true now.
#[derive(Debug, Clone)]
pub struct Active {
    pub rule: &'static str,
    pub severity: Severity,
    /// Project, model, key (masked id) or store backend: never a secret.
    pub labels: BTreeMap<&'static str, String>,
    pub summary: String,
}

impl Active {
    /// Rule and labels, hashed: the alert's identity across evaluations and replicas.
    pub fn fingerprint(&self) -> String {
        let mut h = Sha256::new();
        h.update(self.rule.as_bytes());
        for (k, v) in &self.labels {
            h.update([0]);
            h.update(k.as_bytes());
            h.update([b'=']);
            h.update(v.as_bytes());
        }
        hex::encode(&h.finalize()[..8])
    }

    fn view(&self, fingerprint: String, started_at: String) -> AlertView {
        AlertView {
            fingerprint,
            rule: self.rule,
            severity: self.severity,
            status: "firing",
            summary: self.summary.clone(),
            labels: self
                .labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
            started_at,
            resolved_at: None,
            last_notified_at: None,
        }
    }
}

/// An alert as the API and the `json` format show it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AlertView {
    pub fingerprint: String,
    pub rule: &'static str,
    pub severity: Severity,
    /// `firing` or `resolved`.
    pub status: &'static str,
    pub summary: String,
    pub labels: BTreeMap<String, String>,
    pub started_at: String,
    pub resolved_at: Option<String>,
    pub last_notified_at: Option<String>,
}

/// RFC 3339, seconds, UTC.
pub fn rfc3339(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// The status page's part: how many fire, and the channels whose last delivery failed.
#[derive(Debug, Clone, Serialize)]
pub struct AlertsSummary {
    pub firing: usize,
    pub critical: usize,
    pub channels: Vec<deliver::ChannelStatus>,
}

/// The alert engine of one replica, with its channels.
pub struct Alerts {
    engine: Arc<Mutex<Engine>>,
    claims: Arc<Claims>,
    delivery: Arc<Delivery>,
}

impl Alerts {
    /// Channels from `config.alerts`; claims in `shared` (the store's Redis) when there is one.
    pub fn new(config: &Config, shared: Option<SharedIo>) -> Alerts {
        Alerts {
            engine: Arc::new(Mutex::new(Engine::default())),
            claims: Arc::new(Claims::new(shared, &config.alerts)),
            delivery: Arc::new(Delivery::new(config)),
        }
    }

    /// The alerts of a reloaded configuration: the same engine (what fires, what was sent
    /// and when) and, in one replica, the same claims (the state each alert was last sent in,
    /// so a resolution after the reload is still sent), with `config`'s channels and, in
    /// Redis (which keeps the claims), its claim lifetimes.
    pub fn reconfigured(&self, config: &Config, shared: Option<SharedIo>) -> Alerts {
        let claims = match (&*self.claims, shared) {
            (Claims::Local(_), _) | (_, None) => self.claims.clone(),
            (Claims::Shared { .. }, Some(io)) => Arc::new(Claims::new(Some(io), &config.alerts)),
        };
        Alerts {
            engine: self.engine.clone(),
            claims,
            delivery: Arc::new(Delivery::new(config)),
        }
    }

    /// Take one evaluation (the alerts true now): the transitions, and the group when it is
    /// due, claimed and sent in a task of its own (in turn on each channel, after the groups
    /// before it); `last_notified_at` stamped once a channel accepted it.
    pub async fn observe(&self, cfg: &AlertsConfig, active: Vec<Active>, metrics: &Metrics) {
        let now = Instant::now();
        let (group, shared_firing) = {
            let mut engine = self.engine.lock();
            engine.observe(now, active, cfg.repeat_interval);
            metrics.alerts_firing(engine.firing_count());
            let shared = engine.notified_firing(|rule| !per_replica(rule));
            let grouping = (cfg.group_wait, cfg.group_interval);
            (engine.due(now, grouping, cfg.has_channels()), shared)
        };
        // Without a channel the transitions are only kept (API, status page): nothing to claim.
        if !cfg.has_channels() {
            return;
        }
        self.claims.refresh(&shared_firing).await;
        let Some(group) = group else {
            return;
        };
        let mut send: Vec<Transition> = Vec::new();
        for t in group {
            let claimed = if per_replica(t.alert.rule) {
                true
            } else {
                match t.kind {
                    Kind::Repeat => self.claims.repeat(&t.alert.fingerprint).await,
                    _ => self.claims.state(&t.alert.fingerprint, &t.state()).await,
                }
            };
            if claimed && t.kind != Kind::Lowered {
                send.push(t);
            }
        }
        if send.is_empty() {
            return;
        }
        let alerts: Vec<AlertView> = send.iter().map(|t| t.alert.clone()).collect();
        tracing::info!(
            alerts = alerts.len(),
            rules = %alerts.iter().map(|a| a.rule).collect::<Vec<_>>().join(","),
            "sending alert notifications"
        );
        // Places in each channel's queue now, in evaluation order; the sending off the
        // evaluator: a slow channel never delays the next evaluation.
        let turns = self.delivery.take_turns().await;
        let delivery = self.delivery.clone();
        let engine = self.engine.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            delivery
                .send_in_turn(turns, &alerts, &metrics, || {
                    engine.lock().notified(&send, &rfc3339(chrono::Utc::now()));
                })
                .await;
        });
    }

    /// Alerts firing now.
    pub fn firing(&self) -> Vec<AlertView> {
        self.engine.lock().firing()
    }

    /// The last 100 transitions, newest first.
    pub fn recent(&self) -> Vec<AlertView> {
        self.engine.lock().recent()
    }

    pub fn summary(&self) -> AlertsSummary {
        let (firing, critical) = {
            let e = self.engine.lock();
            (e.firing_count(), e.critical_count())
        };
        AlertsSummary {
            firing,
            critical,
            channels: self.delivery.statuses(),
        }
    }

    /// A test message to every channel, each outcome answered.
    pub async fn test(&self, metrics: &Metrics) -> Vec<ChannelReport> {
        let mut labels = BTreeMap::new();
        labels.insert("source".to_string(), "admin".to_string());
        let alert = AlertView {
            fingerprint: "test".into(),
            rule: "test",
            severity: Severity::Warning,
            status: "firing",
            summary: "Test notification from gemini-quota-proxy: this channel works.".into(),
            labels,
            started_at: rfc3339(chrono::Utc::now()),
            resolved_at: None,
            last_notified_at: None,
        };
        self.delivery.send_all(&[alert], metrics).await
    }

    /// The configured channels.
    pub fn channels(&self) -> &[Channel] {
        self.delivery.channels()
    }
}
