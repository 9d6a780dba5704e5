//! The alert rules, read off the status snapshot (usage percentages as the status page counts
//! them, key states, the store's reachability, the ledger's cost and forecast) and the run of
//! upstream failures: which alerts are true now, for [`crate::alerts`]. A pure function,
//! bounded by the snapshot. Here beside the snapshot it reads, so [`crate::alerts`] (held by
//! the shared state) depends on neither the status nor the state.

use std::collections::{BTreeMap, BTreeSet};

use super::snapshot::{KeyView, QuotaStatus, UsageView};
use crate::alerts::{Active, Severity};
use crate::config::AlertsConfig;

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
    // Every key of a model cooling down, disabled or at a limit. The whole pool first: when
    // it fires, one alert says it all (not one more per model). Otherwise only the models a
    // key still serving shows (its list capped at MODELS_PER_KEY): the pool's model names are
    // whatever clients asked for, and must not become alerts unbounded.
    if !s.keys.is_empty() {
        // Whether key `k` can serve no request for model `m` ("*": any model) now.
        let spent = |k: &KeyView, m: &str| {
            k.state == "disabled"
                || (k.state == "cooldown"
                    && k.cooldown_model
                        .as_deref()
                        .is_some_and(|c| m == "*" || c == m || c == "*"))
                || k.models.get(m).is_some_and(|u| {
                    (u.minute_limit > 0 && u.minute_remaining == 0)
                        || (u.daily_limit > 0 && u.daily_remaining == 0)
                })
        };
        match s.keys.iter().find(|k| !spent(k, "*")) {
            None => out.push(Active {
                rule: "all_keys_exhausted",
                severity: Severity::Critical,
                labels: labels([("model", "*")]),
                summary: "every key is disabled or cooling down".to_string(),
            }),
            // A key neither disabled nor cooling down is spent for a model only at one of its
            // own models' limits: only its models can be spent on every key.
            Some(free) => {
                for m in free
                    .models
                    .keys()
                    .filter(|m| s.keys.iter().all(|k| spent(k, m)))
                {
                    out.push(Active {
                        rule: "all_keys_exhausted",
                        severity: Severity::Critical,
                        labels: labels([("model", m)]),
                        summary: format!("{m}: every key is cooling down, disabled or at a limit"),
                    });
                }
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
    out.extend(budget(cfg, s));
    out.extend(super::client_alerts::evaluate(cfg, &s.clients));
    out
}

/// Today's cost over the budget (critical), or projected over it by the reset (warning).
fn budget(cfg: &AlertsConfig, s: &QuotaStatus) -> Option<Active> {
    let budget = cfg.daily_budget_usd;
    let cost = s.cost.as_ref().filter(|_| budget > 0.0)?;
    let today = cost.today.cost_usd;
    let projected: f64 = s.forecast.as_ref().map_or(0.0, |f| {
        f.pool.iter().filter_map(|l| l.projected_cost_usd).sum()
    });
    let (severity, summary) = if today > budget {
        (
            Severity::Critical,
            format!("today's cost {today:.2} USD is over the daily budget of {budget:.2} USD"),
        )
    } else if projected > budget {
        (
            Severity::Warning,
            format!(
                "today's cost is projected at {projected:.2} USD by the reset, over the daily \
                 budget of {budget:.2} USD ({today:.2} USD so far)"
            ),
        )
    } else {
        return None;
    };
    Some(Active {
        rule: "daily_budget",
        severity,
        labels: BTreeMap::new(),
        summary,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::outlook::{CostView, ForecastLine, ForecastView, Money};
    use crate::status::snapshot::{KeyView, Percentages, QueueView, StoreView};

    fn usage_of(minute: u64, limit: u64) -> UsageView {
        let pct = |u: u64, l: u64| ((u as f64 / l as f64) * 1000.0).round() / 10.0;
        UsageView {
            minute_requests: minute,
            minute_limit: limit,
            minute_remaining: limit.saturating_sub(minute),
            daily_requests: minute,
            daily_limit: 1000,
            daily_remaining: 1000 - minute,
            minute_tokens: 0,
            token_minute_limit: 1000,
            token_minute_remaining: 1000,
            usage_percentage: Percentages {
                minute: pct(minute, limit),
                daily: pct(minute, 1000),
                tokens: 0.0,
            },
        }
    }

    fn key(id: &str, project: &str, state: &'static str, minute: u64) -> KeyView {
        KeyView {
            id: id.into(),
            name: id.into(),
            project: project.into(),
            backend: "ai-studio",
            location: None,
            state,
            reason: (state == "disabled").then(|| "API_KEY_INVALID".to_string()),
            cooldown_until: None,
            cooldown_model: None,
            models: BTreeMap::from([("m".to_string(), usage_of(minute, 10))]),
            models_omitted: 0,
        }
    }

    fn status(keys: Vec<KeyView>, pool_minute: u64, pool_limit: u64) -> QuotaStatus {
        QuotaStatus {
            healthy: true,
            warnings: vec![],
            errors: vec![],
            usage: usage_of(pool_minute, pool_limit),
            pool_by_model: vec![],
            pool_models_omitted: 0,
            keys,
            store: StoreView {
                backend: "redis",
                reachable: true,
            },
            queue: QueueView {
                max_wait_secs: 60.0,
                waiting: 0,
                models: vec![],
            },
            config: crate::state::Generation::new(1, "start", Default::default()),
            cost: None,
            forecast: None,
            alerts: crate::alerts::AlertsSummary {
                firing: 0,
                critical: 0,
                channels: vec![],
            },
            spend_caps: vec![],
            clients: vec![],
            live_sessions: vec![],
            batches: Vec::new(),
            models: BTreeMap::from([("m".to_string(), usage_of(pool_minute, pool_limit))]),
        }
    }

    fn cfg() -> AlertsConfig {
        crate::config::for_test("[alerts]\ndaily_budget_usd = 5\n", &[]).alerts
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
    fn the_pool_line_appears_only_where_several_projects_serve_a_model() {
        let s = status(vec![key("k1", "p1", "active", 8)], 8, 10);
        assert_eq!(
            found(&evaluate(&cfg(), &s, 0)),
            [(
                "minute_usage_high",
                Severity::Warning,
                vec!["m".into(), "p1".into()]
            )]
        );
        let s = status(
            vec![key("k1", "p1", "active", 10), key("k2", "p2", "active", 7)],
            17,
            20,
        );
        let out = found(&evaluate(&cfg(), &s, 0));
        assert!(out.contains(&("minute_usage_high", Severity::Warning, vec!["m".into()])));
        assert!(out.contains(&(
            "minute_usage_high",
            Severity::Critical,
            vec!["m".into(), "p1".into()]
        )));
        assert!(
            !out.iter().any(|a| a.0 == "all_keys_exhausted"),
            "p2 still has room"
        );
    }

    #[test]
    fn ten_thousand_client_model_names_with_every_key_cooling_make_one_alert() {
        let cooling = |id: &str, project: &str| {
            let mut k = key(id, project, "cooldown", 0);
            k.cooldown_model = Some("m".into());
            k
        };
        let mut s = status(vec![cooling("k1", "p1"), cooling("k2", "p2")], 0, 10);
        for i in 0..10_000 {
            s.models
                .insert(format!("client-model-{i}"), usage_of(0, 10));
        }
        let out = evaluate(&cfg(), &s, 0);
        let exhausted: Vec<_> = out
            .iter()
            .filter(|a| a.rule == "all_keys_exhausted")
            .map(|a| a.labels["model"].as_str())
            .collect();
        assert_eq!(exhausted, ["*"], "the whole pool, once");
        assert!(out.len() < 10, "{} alerts", out.len());

        // One key still free: per model, only the names the keys show, never the pool's.
        let mut s = status(
            vec![cooling("k1", "p1"), key("k2", "p2", "active", 10)],
            10,
            20,
        );
        for i in 0..10_000 {
            s.models
                .insert(format!("client-model-{i}"), usage_of(0, 10));
        }
        let out = evaluate(&cfg(), &s, 0);
        let exhausted: Vec<_> = out
            .iter()
            .filter(|a| a.rule == "all_keys_exhausted")
            .map(|a| a.labels["model"].as_str())
            .collect();
        assert_eq!(exhausted, ["m"], "k1 cools down for m, k2 is at m's limit");
        assert!(out.len() < 10, "{} alerts", out.len());
    }

    #[test]
    fn disabled_keys_an_unreachable_store_and_failure_streaks_alert() {
        let mut s = status(
            vec![
                key("AIza...0001", "p1", "disabled", 0),
                key("k2", "p2", "active", 0),
            ],
            0,
            10,
        );
        s.store.reachable = false;
        let out = found(&evaluate(&cfg(), &s, 3));
        assert_eq!(
            out,
            [
                (
                    "key_disabled",
                    Severity::Warning,
                    vec!["AIza...0001".into(), "p1".into()]
                ),
                (
                    "store_unreachable",
                    Severity::Critical,
                    vec!["redis".into()]
                ),
                ("upstream_failures", Severity::Warning, vec![]),
            ]
        );
        assert!(
            evaluate(&cfg(), &s, 2)
                .iter()
                .all(|a| a.rule != "upstream_failures")
        );
    }

    #[test]
    fn a_forecast_exhaustion_and_the_budget_alert() {
        let line = |project: Option<&str>, at: Option<&str>, cost| ForecastLine {
            project: project.map(str::to_string),
            model: "m".into(),
            daily_limit: 1000,
            used_today: 600,
            projected_requests: Some(1400),
            exhausted_at: at.map(str::to_string),
            resets_at: "2026-11-29T08:00:00Z".into(),
            projected_cost_usd: cost,
            method: Some("profile"),
            reason: None,
        };
        let mut s = status(vec![key("k1", "p1", "active", 0)], 0, 10);
        s.forecast = Some(ForecastView {
            pairs: vec![line(Some("p1"), Some("2026-11-29T05:00:00Z"), None)],
            pairs_omitted: 0,
            pool: vec![line(None, None, Some(6.0))],
        });
        s.cost = Some(CostView {
            today: Money {
                cost_usd: 2.0,
                list_cost_usd: 2.0,
            },
            month: Money::default(),
            unpriced_requests_today: 0,
            source: "memory",
        });
        let out = found(&evaluate(&cfg(), &s, 0));
        assert_eq!(
            out,
            [
                ("daily_budget", Severity::Warning, vec![]),
                (
                    "daily_quota_forecast",
                    Severity::Warning,
                    vec!["m".into(), "p1".into()]
                ),
            ]
        );
        s.cost.as_mut().unwrap().today.cost_usd = 5.5;
        let out = evaluate(&cfg(), &s, 0);
        let budget = out.iter().find(|a| a.rule == "daily_budget").unwrap();
        assert_eq!(budget.severity, Severity::Critical);
        assert!(budget.summary.contains("5.50 USD"), "{}", budget.summary);
    }
}
