//! The client alert rules, read off the clients' rows ([`super::client_rows`]):
//! `client_budget` (a client's budget spend today or this month, as admission counts it, at
//! `alerts.warn_percent` / `critical_percent` of its own daily or monthly budget) and `client_limited` (a client
//! refused by its own limits without a pause for at least `alerts.client_limited_minutes`).
//! Each carries the `client` label, so a client key sees only its own.

use std::collections::BTreeMap;

use super::client_rows::ClientRow;
use crate::alerts::{Active, Severity};
use crate::config::AlertsConfig;

/// Every client alert true now.
pub fn evaluate(cfg: &AlertsConfig, rows: &[ClientRow]) -> Vec<Active> {
    let mut out = Vec::new();
    for r in rows {
        for (period, used, budget) in [
            ("today", r.budget_used_usd.daily, r.limits.daily_budget_usd),
            (
                "this month",
                r.budget_used_usd.monthly,
                r.limits.monthly_budget_usd,
            ),
        ] {
            let (Some(used), Some(budget)) = (used, budget) else {
                continue;
            };
            let pct = (used / budget * 1000.0).round() / 10.0;
            let severity = if pct > cfg.critical_percent {
                Severity::Critical
            } else if pct >= cfg.warn_percent {
                Severity::Warning
            } else {
                continue;
            };
            let which = if period == "today" {
                "daily"
            } else {
                "monthly"
            };
            out.push(Active {
                rule: "client_budget",
                severity,
                labels: BTreeMap::from([
                    ("client", r.name.to_string()),
                    ("period", which.to_string()),
                ]),
                summary: format!(
                    "client {}: {used:.2} USD spent {period}, {pct}% of its {which} budget of {budget:.2} USD",
                    r.name
                ),
            });
        }
        let minutes = cfg.client_limited.as_secs() / 60;
        if minutes > 0
            && let Some(secs) = r.limited_secs
            && secs >= cfg.client_limited.as_secs()
        {
            out.push(Active {
                rule: "client_limited",
                severity: Severity::Warning,
                labels: BTreeMap::from([("client", r.name.to_string())]),
                summary: format!(
                    "client {} has been refused by its own {} limit for {} min (at least {minutes} min without a pause)",
                    r.name,
                    r.refused_limit.unwrap_or("-"),
                    secs / 60
                ),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clients::{ClientLimits, Origin};
    use crate::ledger::by_client::Period;
    use crate::status::client_rows::BudgetLeft;

    fn cfg(extra: &str) -> AlertsConfig {
        crate::config::for_test(
            &format!("[alerts]\nwarn_percent = 80\ncritical_percent = 95\n{extra}"),
            &[],
        )
        .alerts
    }

    fn row(name: &str, today: f64, month: f64, limited_secs: Option<u64>) -> ClientRow {
        let period = |c: f64| Period {
            requests: 1,
            tokens: 1,
            cost_usd: c,
        };
        ClientRow {
            name: name.into(),
            origin: Origin::Runtime,
            limits: ClientLimits {
                daily_budget_usd: Some(10.0),
                monthly_budget_usd: Some(100.0),
                ..Default::default()
            },
            today: Some(period(today)),
            month: Some(period(month)),
            budget_left_usd: BudgetLeft::default(),
            budget_used_usd: BudgetLeft {
                daily: Some(today),
                monthly: Some(month),
            },
            refused: 3,
            refused_limit: Some("rpm"),
            limited_secs,
        }
    }

    fn found(out: &[Active]) -> Vec<(&'static str, Severity, Vec<String>)> {
        let mut v: Vec<_> = out
            .iter()
            .map(|a| (a.rule, a.severity, a.labels.values().cloned().collect()))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn a_clients_budget_warns_at_warn_percent_and_is_critical_past_critical_percent() {
        let rows = [
            row("calm", 7.9, 50.0, None),
            row("warm", 8.0, 50.0, None),
            row("hot", 9.6, 96.0, None),
        ];
        assert_eq!(
            found(&evaluate(&cfg(""), &rows)),
            [
                (
                    "client_budget",
                    Severity::Warning,
                    vec!["warm".into(), "daily".into()]
                ),
                (
                    "client_budget",
                    Severity::Critical,
                    vec!["hot".into(), "daily".into()]
                ),
                (
                    "client_budget",
                    Severity::Critical,
                    vec!["hot".into(), "monthly".into()]
                ),
            ]
            .into_iter()
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect::<Vec<_>>()
        );
        let mut no_budget = row("free", 1e6, 1e6, None);
        no_budget.limits = ClientLimits::default();
        assert!(
            evaluate(&cfg(""), &[no_budget]).is_empty(),
            "no budget, no rule"
        );
        let mut unread = row("unread", 0.0, 0.0, None);
        unread.today = None;
        unread.month = None;
        unread.budget_used_usd = BudgetLeft::default();
        assert!(evaluate(&cfg(""), &[unread]).is_empty());
    }

    #[test]
    fn a_client_refused_long_enough_fires_client_limited_unless_the_rule_is_off() {
        let rows = [
            row("briefly", 0.0, 0.0, Some(299)),
            row("stuck", 0.0, 0.0, Some(300)),
            row("idle", 0.0, 0.0, None),
        ];
        let out = evaluate(&cfg(""), &rows);
        assert_eq!(
            found(&out),
            [("client_limited", Severity::Warning, vec!["stuck".into()])]
        );
        assert!(out[0].summary.contains("rpm"), "{}", out[0].summary);
        assert_eq!(
            found(&evaluate(&cfg("client_limited_minutes = 1\n"), &rows)),
            [
                ("client_limited", Severity::Warning, vec!["briefly".into()]),
                ("client_limited", Severity::Warning, vec!["stuck".into()])
            ]
        );
        assert!(evaluate(&cfg("client_limited_minutes = 0\n"), &rows).is_empty());
    }
}
