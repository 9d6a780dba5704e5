//! The status document of `/api/ai/quota-status/`, typed: where every quota stands, per key and
//! model, with health warnings and errors. The Prometheus gauges are set from it separately
//! ([`record_gauges`]).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::ledger::outlook::{PairInput, PoolInput};
use crate::metrics::Metrics;
use crate::quota::{KeyState, Limits, Usage};
use crate::route::QuotaFamily;
use crate::state::AppState;

pub use super::views::*;
use super::views::{add, add_usage, by_model, pct};

/// Whether the document carries the ledger's cost and forecast (its outlook), and how fresh:
/// named apart from [`crate::ledger::outlook::Outlook`], which is that part itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Extras {
    /// Counters only (`/metrics`, the reset's answer).
    None,
    /// The last computed outlook when it is recent ([`crate::state::OUTLOOK_FRESH`]), else a
    /// new one (the status page: a full day of history for thousands of series takes far
    /// longer to read than the counters).
    Cached,
    /// Computed now (the background refresh).
    Fresh,
}

/// Ask the store and build the document, with the ledger's cost and forecast as `outlook` says.
pub async fn snapshot(state: &AppState, outlook: Extras) -> Snapshot {
    let store = &state.store;
    let reachable = store.ping().await.is_ok();
    let usage = store.usage().await.unwrap_or_default();
    let cooldowns = store.cooldowns().await.unwrap_or_default();
    let kids: Vec<Arc<str>> = state.pool.keys.iter().map(|k| k.kid.clone()).collect();
    let key_states = store
        .key_states(&kids)
        .await
        .unwrap_or_else(|_| kids.iter().map(|_| KeyState::Active).collect());
    let enabled_projects: BTreeSet<&str> = state
        .pool
        .keys
        .iter()
        .zip(&key_states)
        .filter(|(_, s)| **s == KeyState::Active)
        .map(|(k, _)| &*k.project)
        .collect();
    // Each model's pool-wide usage against the sum of its limits in every enabled project,
    // each resolved with the model's family, the overrides and what Google reported.
    let mut per_model: BTreeMap<&str, (Usage, Limits)> = BTreeMap::new();
    for (p, m, u) in &usage {
        let (sum, _) = per_model.entry(m.as_str()).or_insert_with(|| {
            let family = QuotaFamily::of_model(m);
            let mut limit = Limits::default();
            for p in &enabled_projects {
                add(&mut limit, &state.pool.limits_for(p, m, family));
            }
            (Usage::default(), limit)
        });
        if enabled_projects.contains(p.as_str()) {
            add_usage(sum, u);
        }
    }
    let mut total = Usage::default();
    let mut total_limit = Limits::default();
    if per_model.is_empty() {
        // Nothing used yet: the pool's room for a generate model, project by project.
        for p in &enabled_projects {
            add(
                &mut total_limit,
                &state.pool.limits_for(p, "", QuotaFamily::Generate),
            );
        }
    }
    let mut warnings: Vec<String> = Vec::new();
    let mut errors: Vec<String> = Vec::new();
    let pending = state.generation.restart_required.get();
    if !pending.is_empty() {
        warnings.push(format!(
            "the config file changes settings that only a restart applies: {}",
            pending.join(", ")
        ));
    }
    for (model, (u, l)) in &per_model {
        add_usage(&mut total, u);
        add(&mut total_limit, l);
        for (name, used, limit) in [
            ("minute", u.minute_requests, l.minute),
            ("daily", u.daily_requests, l.daily),
            ("token", u.minute_tokens, l.token_minute),
        ] {
            let p = pct(used, limit);
            if p > 95.0 {
                errors.push(format!("{model}: {name} usage at {p}% of the pool's limit"));
            } else if p >= 80.0 {
                warnings.push(format!("{model}: {name} usage at {p}% of the pool's limit"));
            }
        }
    }

    let now = chrono::Utc::now();
    let mut keys = Vec::with_capacity(state.pool.keys.len());
    for (k, s) in state.pool.keys.iter().zip(&key_states) {
        let cd = cooldowns
            .iter()
            .filter(|c| c.project == *k.project)
            .max_by_key(|c| c.remaining_ms);
        let (state_name, reason) = match (s, cd) {
            (KeyState::Disabled { reason }, _) => {
                warnings.push(format!(
                    "key {} ({}) is disabled: {}",
                    k.masked, k.name, reason
                ));
                ("disabled", Some(reason.clone()))
            }
            // A hold on one model: the key still serves others, but shows as cooling.
            (KeyState::Active, Some(c)) => ("cooldown", Some(c.reason.clone())),
            (KeyState::Active, None) => ("active", None),
        };
        let cooldown_until = cd.map(|c| {
            // Bounded before the arithmetic: a store's number never overflows a date.
            (now + chrono::Duration::milliseconds(c.remaining_ms.min(400 * 86_400_000) as i64))
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        });
        let mut used: Vec<&(String, String, Usage)> =
            usage.iter().filter(|(p, _, _)| p == &*k.project).collect();
        let models_omitted = used.len().saturating_sub(MODELS_PER_KEY);
        if models_omitted > 0 {
            used.sort_by_key(|(_, _, u)| {
                std::cmp::Reverse((u.minute_requests, u.minute_tokens, u.daily_requests))
            });
            used.truncate(MODELS_PER_KEY);
        }
        let models = used
            .into_iter()
            .map(|(p, m, u)| {
                let l = state.pool.limits_for(p, m, QuotaFamily::of_model(m));
                (m.clone(), UsageView::new(u, &l))
            })
            .collect();
        keys.push(KeyView {
            id: k.masked.clone(),
            name: k.name.clone(),
            project: k.project.to_string(),
            backend: if k.vertex.is_some() {
                "vertex"
            } else {
                "ai-studio"
            },
            location: k.vertex.as_ref().map(|v| v.location.clone()),
            state: state_name,
            reason,
            cooldown_until,
            cooldown_model: cd.map(|c| c.model.clone()),
            models,
            models_omitted,
        });
    }
    let all_cooling_or_disabled =
        state.pool.keys.iter().zip(&key_states).all(|(k, s)| {
            *s != KeyState::Active || cooldowns.iter().any(|c| c.project == *k.project)
        });
    if all_cooling_or_disabled {
        errors.push("every key is disabled or cooling down".into());
    }
    let failures = state.pool.health.failures();
    if failures >= 3 {
        warnings.push(format!(
            "{failures} upstream failures (5xx or unreachable) in a row"
        ));
    }
    if !reachable {
        use crate::quota::resilient::StoreFailurePolicy;
        warnings.push(
            match state.config.store.on_error {
                StoreFailurePolicy::Local => {
                    "quota store unreachable: counting in this replica only"
                }
                StoreFailurePolicy::FailOpen => {
                    "quota store unreachable: admitting without counting"
                }
                StoreFailurePolicy::FailClosed => "quota store unreachable: refusing requests",
            }
            .to_string(),
        );
    }
    let spend_caps = state.spend.views();
    for c in spend_caps.iter().filter(|c| c.reached) {
        warnings.push(format!(
            "project {} reached its monthly spend cap: held until {}",
            c.project, c.resets_at
        ));
    }
    let alerts = state.alerts.summary();
    for c in alerts.channels.iter().filter(|c| c.failing) {
        warnings.push(format!(
            "alert channel {} ({}) failing: {}",
            c.index,
            c.channel,
            c.last_error.as_deref().unwrap_or("no detail")
        ));
    }
    let cached = match outlook {
        Extras::Cached => state.cached_outlook(),
        _ => None,
    };
    let (cost, forecast) = if let Some(o) = cached {
        warnings.extend(o.warnings.iter().cloned());
        (Some(o.cost.clone()), Some(o.forecast.clone()))
    } else if outlook != Extras::None {
        let pairs: Vec<PairInput> = usage
            .iter()
            .filter(|(p, _, _)| enabled_projects.contains(p.as_str()))
            .map(|(p, m, u)| PairInput {
                project: p.clone(),
                model: m.clone(),
                daily_limit: state.pool.limits_for(p, m, QuotaFamily::of_model(m)).daily,
                used_today: u.daily_requests,
            })
            .collect();
        let pools: Vec<PoolInput> = per_model
            .iter()
            .map(|(m, (u, l))| PoolInput {
                model: m.to_string(),
                daily_limit: l.daily,
                used_today: u.daily_requests,
            })
            .collect();
        let o = Arc::new(state.ledger.outlook(&pairs, &pools).await);
        state.keep_outlook(o.clone());
        warnings.extend(o.warnings.iter().cloned());
        (Some(o.cost.clone()), Some(o.forecast.clone()))
    } else {
        (None, None)
    };
    let models: BTreeMap<String, UsageView> = per_model
        .iter()
        .map(|(m, (u, l))| (m.to_string(), UsageView::new(u, l)))
        .collect();
    let (pool_by_model, pool_models_omitted) = by_model(&models);
    let clients = super::client_rows::rows(state, None, outlook != Extras::None).await;
    let live_sessions = super::live::views(state).await;
    let batches = super::batches::views(state, None).await;
    Snapshot {
        success: true,
        quota_status: QuotaStatus {
            healthy: errors.is_empty(),
            warnings,
            errors,
            usage: UsageView::new(&total, &total_limit),
            pool_by_model,
            pool_models_omitted,
            keys,
            store: StoreView {
                backend: store.backend(),
                reachable,
            },
            queue: QueueView::of(state),
            config: state.generation.clone(),
            cost,
            forecast,
            alerts,
            spend_caps,
            clients,
            live_sessions,
            batches,
            models,
        },
        timestamp: now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    }
}

/// Set the gauges the status knows: keys cooling and disabled, and what is left of each
/// (key, model)'s minute, day and tokens beside its limit.
pub fn record_gauges(metrics: &Metrics, snap: &Snapshot) {
    let keys = &snap.quota_status.keys;
    let count = |s: &str| keys.iter().filter(|k| k.state == s).count();
    metrics.key_gauges(count("cooldown"), count("disabled"));
    for k in keys {
        for (model, u) in &k.models {
            let set = |window, remaining, limit| {
                metrics.remaining(&k.id, &k.project, model, window, remaining, limit)
            };
            set("minute", u.minute_remaining, u.minute_limit);
            set("daily", u.daily_remaining, u.daily_limit);
            set("tokens", u.token_minute_remaining, u.token_minute_limit);
        }
    }
}
