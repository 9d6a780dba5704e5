//! The rules, read off the status snapshot (usage percentages as the status page counts them,
//! key states, the store's reachability, the ledger's cost and forecast) and the run of
//! upstream failures: which alerts are true now. A pure function, bounded by the snapshot.

use std::collections::{BTreeMap, BTreeSet};

use super::{Active, Severity};
use crate::config::AlertsConfig;
use crate::status::snapshot::{QuotaStatus, UsageView};

fn labels<const N: usize>(pairs: [(&'static str, &str); N]) -> BTreeMap<&'static str, String> {
    pairs.into_iter().map(|(k, v)| (k, v.to_string())).collect()
}

/// The three usage rules for one (project, model), or one model across the pool.
fn usage(
    cfg: &AlertsConfig,
    out: &mut Vec<Active>,
    u: &UsageView,
    what: &str,
    labels: &BTreeMap<&'static str, String>,
) {
    for (rule, name, pct, used, limit) in [
        (
            "minute_usage_high",
            "minute requests",
            u.usage_percentage.minute,
            u.minute_requests,
            u.minute_limit,
        ),
        (
            "daily_usage_high",
            "daily requests",
            u.usage_percentage.daily,
            u.daily_requests,
            u.daily_limit,
        ),
        (
            "token_usage_high",
            "input tokens per minute",
            u.usage_percentage.tokens,
            u.minute_tokens,
            u.token_minute_limit,
        ),
    ] {
        let severity = if pct > cfg.critical_percent {
            Severity::Critical
        } else if pct >= cfg.warn_percent {
            Severity::Warning
        } else {
            continue;
        };
        out.push(Active {
            rule,
            severity,
            labels: labels.clone(),
            summary: format!("{what}: {name} at {pct}% of the limit ({used} of {limit})"),
        });
    }
}

/// Every alert true now.
pub fn evaluate(cfg: &AlertsConfig, s: &QuotaStatus, failures: u32) -> Vec<Active> {
    let mut out = Vec::new();
    // Per (project, model): each project once, from any of its keys not disabled.
    let mut projects_seen = BTreeSet::new();
    let mut projects_per_model: BTreeMap<&str, usize> = BTreeMap::new();
    for k in s.keys.iter().filter(|k| k.state != "disabled") {
        if !projects_seen.insert(k.project.as_str()) {
            continue;
        }
        for (model, u) in &k.models {
            *projects_per_model.entry(model).or_default() += 1;
            let l = labels([("project", &k.project), ("model", model)]);
            usage(cfg, &mut out, u, &format!("{model} in {}", k.project), &l);
        }
    }
    // Per model across the pool, where more than one project serves it (with one, the pool
    // line would repeat the project's).
    for (model, u) in &s.models {
        if projects_per_model.get(model.as_str()).copied().unwrap_or(0) > 1 {
            let l = labels([("model", model)]);
            usage(cfg, &mut out, u, &format!("{model} across the pool"), &l);
        }
    }
    // Every key of a model cooling down, disabled or at a limit.
    if !s.keys.is_empty() {
        let mut models: Vec<&str> = s.models.keys().map(String::as_str).collect();
        models.push("*");
        for m in models {
            let exhausted = s.keys.iter().all(|k| {
                k.state == "disabled"
                    || (k.state == "cooldown"
                        && k.cooldown_model
                            .as_deref()
                            .is_some_and(|c| m == "*" || c == m || c == "*"))
                    || k.models.get(m).is_some_and(|u| {
                        (u.minute_limit > 0 && u.minute_remaining == 0)
                            || (u.daily_limit > 0 && u.daily_remaining == 0)
                    })
            });
            if exhausted {
                let what = if m == "*" {
                    "every key is disabled or cooling down".to_string()
                } else {
                    format!("{m}: every key is cooling down, disabled or at a limit")
                };
                out.push(Active {
                    rule: "all_keys_exhausted",
                    severity: Severity::Critical,
                    labels: labels([("model", m)]),
                    summary: what,
                });
            }
        }
    }
    if failures >= cfg.failure_streak {
        out.push(Active {
            rule: "upstream_failures",
            severity: Severity::Warning,
            labels: BTreeMap::new(),
            summary: format!("{failures} upstream failures (5xx or unreachable) in a row"),
        });
    }
    for k in s.keys.iter().filter(|k| k.state == "disabled") {
        out.push(Active {
            rule: "key_disabled",
            severity: Severity::Warning,
            labels: labels([("key", &k.id), ("project", &k.project)]),
            summary: format!(
                "key {} ({}) is disabled: {}",
                k.id,
                k.name,
                k.reason.as_deref().unwrap_or("no reason given")
            ),
        });
    }
    if !s.store.reachable {
        out.push(Active {
            rule: "store_unreachable",
            severity: Severity::Critical,
            labels: labels([("backend", s.store.backend)]),
            summary: format!("the {} quota store is unreachable", s.store.backend),
        });
    }
    if let Some(f) = &s.forecast {
        for line in f.pairs.iter().chain(&f.pool) {
            let Some(at) = &line.exhausted_at else {
                continue;
            };
            let (l, what) = match &line.project {
                Some(p) => (
                    labels([("project", p), ("model", &line.model)]),
                    format!("{} in {p}", line.model),
                ),
                None => (
                    labels([("model", &line.model)]),
                    format!("{} across the pool", line.model),
                ),
            };
            out.push(Active {
                rule: "daily_quota_forecast",
                severity: Severity::Warning,
                labels: l,
                summary: format!(
                    "{what}: the daily quota ({}) is forecast to run out at {at}, before the reset at {} ({} used, {} projected)",
                    line.daily_limit,
                    line.resets_at,
                    line.used_today,
                    line.projected_requests.unwrap_or(0)
                ),
            });
        }
    }
    if cfg.daily_budget_usd > 0.0 {
        if let Some(cost) = &s.cost {
            let today = cost.today.cost_usd;
            let projected: f64 = s.forecast.as_ref().map_or(0.0, |f| {
                f.pool.iter().filter_map(|l| l.projected_cost_usd).sum()
            });
            let budget = cfg.daily_budget_usd;
            let (severity, summary) = if today > budget {
                (
                    Some(Severity::Critical),
                    format!(
                        "today's cost {today:.2} USD is over the daily budget of {budget:.2} USD"
                    ),
                )
            } else if projected > budget {
                (
                    Some(Severity::Warning),
                    format!(
                        "today's cost is projected at {projected:.2} USD by the reset, over the daily budget of {budget:.2} USD ({today:.2} USD so far)"
                    ),
                )
            } else {
                (None, String::new())
            };
            if let Some(severity) = severity {
                out.push(Active {
                    rule: "daily_budget",
                    severity,
                    labels: BTreeMap::new(),
                    summary,
                });
            }
        }
    }
    out
}
