//! One suite, two stores: every test runs against the in-memory store and against a real,
//! private Redis, both on an injected clock. Plus the sliding-window invariant as a property
//! test, and real concurrency on Redis.

use crate::common;

use std::sync::Arc;

use chrono_tz::America::Los_Angeles;
use common::RedisServer;
use futures_util::future::LocalBoxFuture;
use gemini_quota_proxy::error::LimitKind;
use gemini_quota_proxy::quota::Strategy;
use gemini_quota_proxy::quota::memory::MemoryStore;
use gemini_quota_proxy::quota::redis::RedisStore;
use gemini_quota_proxy::quota::{
    AdmitOutcome, AdmitRequest, Candidate, Clock, DayInfo, KeyState, Limits, ManualClock,
    QuotaStore, ResetKind, ResetScope,
};
use gemini_quota_proxy::secret::Secret;

/// 2026-01-31 10:30:00 UTC (02:30 in Los Angeles).
const T0: i64 = 1_769_855_400_000;

fn limits(minute: u64, token_minute: u64, daily: u64) -> Limits {
    Limits {
        minute,
        token_minute,
        daily,
        max_request_tokens: u64::MAX,
    }
}

fn cand(index: usize, project: &str, l: Limits) -> Candidate {
    Candidate {
        index,
        kid: format!("kid{index}").into(),
        project: project.into(),
        limits: l,
    }
}

fn req(tokens: u64, cands: Vec<Candidate>) -> AdmitRequest {
    AdmitRequest {
        model: "gemini-2.5-flash".into(),
        tokens,
        candidates: cands,
        strategy: Strategy::Headroom,
        rotation: 0,
        client: None,
    }
}

pub(crate) struct Harness {
    store: Arc<dyn QuotaStore>,
    clock: Arc<ManualClock>,
    _redis: Option<Arc<RedisServer>>,
}

fn memory() -> Harness {
    let clock = Arc::new(ManualClock::new(T0));
    Harness {
        store: Arc::new(MemoryStore::new(clock.clone(), Los_Angeles)),
        clock,
        _redis: None,
    }
}

fn redis() -> Harness {
    let server = RedisServer::start();
    let clock = Arc::new(ManualClock::new(T0));
    let store = RedisStore::connect(
        &Secret::new(server.url.clone()),
        "suite",
        std::time::Duration::from_secs(2),
        Los_Angeles,
    )
    .unwrap()
    .with_clock(clock.clone());
    Harness {
        store: Arc::new(store),
        clock,
        _redis: Some(Arc::new(server)),
    }
}

/// Declare a test that runs against both stores (and, through [`SUITE`], a Redis Cluster).
macro_rules! both {
    ($name:ident, $body:expr) => {
        pub(crate) mod $name {
            use super::*;
            /// The test's body, for any store.
            pub fn run(h: Harness) -> LocalBoxFuture<'static, ()> {
                Box::pin(($body)(h))
            }
            #[tokio::test]
            async fn memory_store() {
                run(memory()).await
            }
            #[tokio::test]
            async fn redis_store() {
                let h = redis();
                // Closures capture fields, not the whole harness: keep the server alive here.
                let _server = h._redis.clone();
                run(h).await
            }
            #[test]
            fn is_run_on_a_cluster_too() {
                assert!(
                    SUITE.iter().any(|(n, _)| *n == stringify!($name)),
                    "add {} to SUITE",
                    stringify!($name)
                );
            }
        }
    };
}

/// Every test declared with `both!`, run once more against a Redis Cluster by
/// `cluster_store_passes_the_suite`.
type Body = fn(Harness) -> LocalBoxFuture<'static, ()>;
const SUITE: &[(&str, Body)] = &[
    (
        "sliding_minute_refuses_at_the_limit_and_frees_exactly_sixty_seconds_later",
        sliding_minute_refuses_at_the_limit_and_frees_exactly_sixty_seconds_later::run,
    ),
    (
        "tokens_are_counted_and_settlement_replaces_the_estimate",
        tokens_are_counted_and_settlement_replaces_the_estimate::run,
    ),
    (
        "day_limit_holds_until_pacific_midnight_then_resets",
        day_limit_holds_until_pacific_midnight_then_resets::run,
    ),
    (
        "keys_of_one_project_share_counters_and_other_projects_take_over",
        keys_of_one_project_share_counters_and_other_projects_take_over::run,
    ),
    (
        "ordered_strategy_fills_the_primary_first",
        ordered_strategy_fills_the_primary_first::run,
    ),
    (
        "cooldowns_and_disabled_keys_are_skipped",
        cooldowns_and_disabled_keys_are_skipped::run,
    ),
    (
        "a_hold_of_any_length_holds_and_never_wraps",
        a_hold_of_any_length_holds_and_never_wraps::run,
    ),
    (
        "resets_clear_what_they_name_and_nothing_else",
        resets_clear_what_they_name_and_nothing_else::run,
    ),
    (
        "affinity_remembers_the_creating_key_until_it_expires",
        affinity_remembers_the_creating_key_until_it_expires::run,
    ),
    (
        "live_session_slots_hold_the_limit_and_free_on_close_or_lapsed_lease",
        live_session_slots_hold_the_limit_and_free_on_close_or_lapsed_lease::run,
    ),
    (
        "a_clients_live_slots_hold_its_max_concurrent_and_live_usage_counts_in_windows_and_budgets",
        a_clients_live_slots_hold_its_max_concurrent_and_live_usage_counts_in_windows_and_budgets::run,
    ),
    (
        "a_client_s_minute_limits_refuse_before_the_pool_and_write_nothing",
        clients::a_client_s_minute_limits_refuse_before_the_pool_and_write_nothing::run,
    ),
    (
        "a_client_s_day_limit_holds_until_its_own_midnight",
        clients::a_client_s_day_limit_holds_until_its_own_midnight::run,
    ),
    (
        "a_client_s_slot_frees_at_settlement_or_when_its_lease_ends",
        clients::a_client_s_slot_frees_at_settlement_or_when_its_lease_ends::run,
    ),
    (
        "a_client_s_budget_reserves_the_estimate_and_settles_to_the_real_cost",
        clients::a_client_s_budget_reserves_the_estimate_and_settles_to_the_real_cost::run,
    ),
    (
        "batch_jobs_go_where_the_most_room_is_and_hold_it_until_taken_once",
        batches::batch_jobs_go_where_the_most_room_is_and_hold_it_until_taken_once::run,
    ),
    (
        "a_batch_budget_reservation_fits_the_budget_or_is_refused_and_is_moved_later",
        batches::a_batch_budget_reservation_fits_the_budget_or_is_refused_and_is_moved_later::run,
    ),
];

#[path = "store_suite/batches.rs"]
mod batches;
#[path = "store_suite/clients.rs"]
mod clients;
#[path = "store_suite/gathered.rs"]
mod gathered;

async fn admitted(h: &Harness, r: &AdmitRequest) -> bool {
    matches!(h.store.admit(r).await.unwrap(), AdmitOutcome::Admitted(_))
}

both!(
    sliding_minute_refuses_at_the_limit_and_frees_exactly_sixty_seconds_later,
    |h: Harness| async move {
        let r = req(1, vec![cand(0, "p", limits(3, 1000, 100))]);
        for i in 0..3 {
            assert!(admitted(&h, &r).await);
            h.clock.advance(10_000 * (i + 1));
        }
        // Admissions at T0, T0+10s, T0+30s; now T0+60s: the first left the window exactly now.
        assert!(
            admitted(&h, &r).await,
            "the oldest admission should have expired at 60 s"
        );
        h.clock.advance(1_000);
        match h.store.admit(&r).await.unwrap() {
            AdmitOutcome::Refused {
                limit,
                limit_value,
                retry_after_ms,
            } => {
                assert_eq!(limit, LimitKind::RequestsPerMinute);
                assert_eq!(limit_value, 3);
                // The T0+10s admission leaves at T0+70s; now is T0+61s.
                assert_eq!(retry_after_ms, 9_000);
            }
            other => panic!("{other:?}"),
        }
        h.clock.advance(9_000);
        assert!(admitted(&h, &r).await);
    }
);

both!(
    tokens_are_counted_and_settlement_replaces_the_estimate,
    |h: Harness| async move {
        let r = req(300, vec![cand(0, "p", limits(100, 500, 100))]);
        let AdmitOutcome::Admitted(first) = h.store.admit(&r).await.unwrap() else {
            panic!()
        };
        assert_eq!(first.remaining_tokens, 200);
        match h.store.admit(&r).await.unwrap() {
            AdmitOutcome::Refused {
                limit,
                retry_after_ms,
                ..
            } => {
                assert_eq!(limit, LimitKind::TokensPerMinute);
                assert_eq!(retry_after_ms, 60_000);
            }
            other => panic!("{other:?}"),
        }
        // Google says the first one was only 100 tokens: now 300 more fit.
        h.store.settle(&first, 100).await.unwrap();
        assert!(admitted(&h, &r).await);
        let usage = h.store.usage().await.unwrap();
        assert_eq!(usage.len(), 1);
        assert_eq!(
            (
                usage[0].2.minute_requests,
                usage[0].2.minute_tokens,
                usage[0].2.daily_requests
            ),
            (2, 400, 2)
        );
    }
);

both!(
    day_limit_holds_until_pacific_midnight_then_resets,
    |h: Harness| async move {
        let r = req(1, vec![cand(0, "p", limits(100, 1000, 2))]);
        assert!(admitted(&h, &r).await);
        assert!(admitted(&h, &r).await);
        let midnight = DayInfo::at(Los_Angeles, h.clock.now_ms()).next_midnight_ms;
        match h.store.admit(&r).await.unwrap() {
            AdmitOutcome::Refused {
                limit,
                retry_after_ms,
                ..
            } => {
                assert_eq!(limit, LimitKind::RequestsPerDay);
                assert_eq!(retry_after_ms as i64, midnight - h.clock.now_ms());
            }
            other => panic!("{other:?}"),
        }
        h.clock.set(midnight - 1);
        assert!(!admitted(&h, &r).await);
        h.clock.set(midnight);
        assert!(
            admitted(&h, &r).await,
            "a new Pacific day starts at midnight"
        );
    }
);

both!(
    keys_of_one_project_share_counters_and_other_projects_take_over,
    |h: Harness| async move {
        let l = limits(2, 1000, 100);
        let cands = vec![
            cand(0, "shared", l),
            cand(1, "shared", l),
            cand(2, "other", l),
        ];
        let mut projects = Vec::new();
        for i in 0..4 {
            let mut r = req(1, cands.clone());
            r.rotation = i;
            match h.store.admit(&r).await.unwrap() {
                AdmitOutcome::Admitted(res) => projects.push(res.project.to_string()),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(projects.iter().filter(|p| *p == "shared").count(), 2);
        assert_eq!(projects.iter().filter(|p| *p == "other").count(), 2);
        assert!(!admitted(&h, &req(1, cands)).await);
    }
);

both!(
    ordered_strategy_fills_the_primary_first,
    |h: Harness| async move {
        let l = limits(2, 1000, 100);
        let mut r = req(1, vec![cand(0, "a", l), cand(1, "b", l)]);
        r.strategy = Strategy::Ordered;
        let mut order = Vec::new();
        for _ in 0..4 {
            let AdmitOutcome::Admitted(res) = h.store.admit(&r).await.unwrap() else {
                panic!()
            };
            order.push(res.index);
        }
        assert_eq!(order, [0, 0, 1, 1]);
    }
);

both!(
    cooldowns_and_disabled_keys_are_skipped,
    |h: Harness| async move {
        let l = limits(100, 1000, 100);
        let r = req(1, vec![cand(0, "a", l), cand(1, "b", l)]);
        h.store
            .cool_down("a", "gemini-2.5-flash", 30_000, "429 per minute")
            .await
            .unwrap();
        h.store
            .disable_key("kid1", "API_KEY_INVALID")
            .await
            .unwrap();
        match h.store.admit(&r).await.unwrap() {
            AdmitOutcome::Unavailable {
                retry_after_ms: Some(ms),
            } => assert!(ms > 25_000 && ms <= 30_000, "{ms}"),
            other => panic!("{other:?}"),
        }
        let states = h
            .store
            .key_states(&["kid0".into(), "kid1".into()])
            .await
            .unwrap();
        assert_eq!(states[0], KeyState::Active);
        assert!(matches!(&states[1], KeyState::Disabled { reason } if reason == "API_KEY_INVALID"));
        let cds = h.store.cooldowns().await.unwrap();
        assert_eq!(cds.len(), 1);
        assert_eq!(cds[0].project, "a");
        h.store
            .reset(
                ResetKind::Cooldowns,
                &ResetScope {
                    kids: Some(vec!["kid0".into(), "kid1".into()]),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert!(admitted(&h, &r).await);
        assert!(h.store.cooldowns().await.unwrap().is_empty());
    }
);

both!(
    a_hold_of_any_length_holds_and_never_wraps,
    |h: Harness| async move {
        let l = limits(100, 1000, 100);
        let r = req(1, vec![cand(0, "a", l)]);
        // The largest number a caller could pass: the store neither wraps nor refuses it.
        h.store
            .cool_down("a", "gemini-2.5-flash", u64::MAX, "huge")
            .await
            .unwrap();
        match h.store.admit(&r).await.unwrap() {
            AdmitOutcome::Unavailable {
                retry_after_ms: Some(ms),
            } => assert!(ms > 86_400_000, "{ms}"),
            other => panic!("{other:?}"),
        }
    }
);

both!(
    resets_clear_what_they_name_and_nothing_else,
    |h: Harness| async move {
        let r = req(10, vec![cand(0, "p", limits(100, 1000, 100))]);
        for _ in 0..3 {
            assert!(admitted(&h, &r).await);
        }
        h.store
            .reset(ResetKind::Minute, &ResetScope::default())
            .await
            .unwrap();
        let u = h.store.usage().await.unwrap()[0].2;
        assert_eq!(
            (u.minute_requests, u.minute_tokens, u.daily_requests),
            (0, 0, 3)
        );
        assert!(admitted(&h, &r).await);
        h.store
            .reset(ResetKind::Tokens, &ResetScope::default())
            .await
            .unwrap();
        let u = h.store.usage().await.unwrap()[0].2;
        assert_eq!(
            (u.minute_requests, u.minute_tokens, u.daily_requests),
            (1, 0, 4)
        );
        h.store
            .reset(ResetKind::All, &ResetScope::default())
            .await
            .unwrap();
        assert!(h.store.usage().await.unwrap().is_empty());
    }
);

both!(
    affinity_remembers_the_creating_key_until_it_expires,
    |h: Harness| async move {
        h.store
            .set_affinity("files/abc", "kid7", 60_000)
            .await
            .unwrap();
        assert_eq!(
            h.store.affinity("files/abc").await.unwrap().as_deref(),
            Some("kid7")
        );
        assert_eq!(h.store.affinity("files/other").await.unwrap(), None);
    }
);

both!(
    live_session_slots_hold_the_limit_and_free_on_close_or_lapsed_lease,
    |h: Harness| async move {
        let (s, p, q): (&dyn QuotaStore, Arc<str>, Arc<str>) =
            (h.store.as_ref(), "pa".into(), "pb".into());
        assert!(s.live_open(&p, "s1", 2, 30_000).await.unwrap());
        assert!(s.live_open(&p, "s2", 2, 30_000).await.unwrap());
        assert!(
            !s.live_open(&p, "s3", 2, 30_000).await.unwrap(),
            "over the limit"
        );
        // Taking a slot again for a session that holds one is no second slot.
        assert!(s.live_open(&p, "s2", 2, 30_000).await.unwrap());
        assert!(s.live_open(&q, "s9", 1, 30_000).await.unwrap());
        assert_eq!(
            s.live_counts(&[p.clone(), q.clone()]).await.unwrap(),
            vec![2, 1]
        );
        // A close frees one at once.
        s.live_close(&p, "s1").await.unwrap();
        assert_eq!(
            s.live_counts(std::slice::from_ref(&p)).await.unwrap(),
            vec![1]
        );
        assert!(s.live_open(&p, "s3", 2, 30_000).await.unwrap());
        // Renewed slots outlive their first lease; the one not renewed (a dead replica's) lapses.
        h.clock.advance(20_000);
        s.live_renew(
            &[(p.clone(), "s2".into()), (p.clone(), "s3".into())],
            30_000,
        )
        .await
        .unwrap();
        h.clock.advance(20_000);
        assert_eq!(
            s.live_counts(&[p.clone(), q.clone()]).await.unwrap(),
            vec![2, 0],
            "pb's slot lapsed, pa's were renewed"
        );
        assert!(s.live_open(&q, "s10", 1, 30_000).await.unwrap());
        // A lapsed slot is not brought back by a late renewal.
        h.clock.advance(31_000);
        s.live_renew(&[(p.clone(), "s2".into())], 30_000)
            .await
            .unwrap();
        assert_eq!(
            s.live_counts(std::slice::from_ref(&p)).await.unwrap(),
            vec![0]
        );
    }
);

both!(
    a_clients_live_slots_hold_its_max_concurrent_and_live_usage_counts_in_windows_and_budgets,
    |h: Harness| async move {
        use gemini_quota_proxy::quota::client::ClientCaps;
        use gemini_quota_proxy::quota::{ClientAdmit, ClientLimit, ClientPeriod, LiveUsage};
        let s = h.store.as_ref();
        let clock = h.clock.clone();
        let team = move |cost_micros: u64| ClientAdmit {
            name: "team".into(),
            caps: ClientCaps {
                max_concurrent: Some(2),
                tpm: Some(100_000),
                daily_micros: Some(500),
                ..ClientCaps::default()
            },
            period: ClientPeriod::at(Los_Angeles, clock.now_ms()),
            cost_micros,
            lease_ms: 30_000,
        };
        assert_eq!(s.live_client_open(&team(1), "s1").await.unwrap(), None);
        assert_eq!(s.live_client_open(&team(1), "s2").await.unwrap(), None);
        let (limit, value, _) = s
            .live_client_open(&team(1), "s3")
            .await
            .unwrap()
            .expect("at max_concurrent");
        assert_eq!((limit, value), (ClientLimit::Concurrent, 2));
        // A close frees one at once.
        s.live_client_close("team", "s1").await.unwrap();
        assert_eq!(s.live_client_open(&team(1), "s3").await.unwrap(), None);
        // A renewed slot outlives its first lease; s3, not renewed (a dead replica's), lapses.
        h.clock.advance(20_000);
        s.live_client_renew(&[("team".into(), "s2".into())], 30_000)
            .await
            .unwrap();
        h.clock.advance(20_000);
        assert_eq!(s.live_client_open(&team(1), "s4").await.unwrap(), None);
        assert!(
            s.live_client_open(&team(1), "s5").await.unwrap().is_some(),
            "s2 renewed and s4 hold both slots"
        );

        // Usage: one entry in the pair's minute window, the cost in the client's budgets.
        let used = LiveUsage {
            project: "pa".into(),
            model: "gemini-live-2.5-flash".into(),
            tokens: 400,
            client: Some(team(300)),
        };
        assert_eq!(s.live_usage(&used).await.unwrap(), (300, 300));
        assert_eq!(s.live_usage(&used).await.unwrap(), (600, 600));
        let pair = |u: Vec<(String, String, gemini_quota_proxy::quota::Usage)>| {
            u.into_iter()
                .find(|(p, m, _)| p == "pa" && m == "gemini-live-2.5-flash")
                .map(|(_, _, u)| u)
                .unwrap_or_default()
        };
        let u = pair(s.usage().await.unwrap());
        assert_eq!((u.minute_tokens, u.daily_requests), (800, 0));
        // Over its daily budget: no new session, whatever its slots.
        s.live_client_close("team", "s2").await.unwrap();
        let (limit, _, _) = s
            .live_client_open(&team(1), "s6")
            .await
            .unwrap()
            .expect("over budget");
        assert_eq!(limit, ClientLimit::DailyBudget);
        // The tokens leave the window with their minute.
        h.clock.advance(61_000);
        assert_eq!(pair(s.usage().await.unwrap()).minute_tokens, 0);
    }
);

/// Check the invariant on a log of admissions: any 60 s span holds at most `rpm` requests and
/// `tpm` tokens.
fn assert_no_over_admission(log: &[(i64, u64)], rpm: u64, tpm: u64) {
    for (i, &(t, _)) in log.iter().enumerate() {
        let window: Vec<&(i64, u64)> = log[i..]
            .iter()
            .take_while(|(u, _)| *u < t + 60_000)
            .collect();
        assert!(
            window.len() as u64 <= rpm,
            "{} requests within 60 s of {t}",
            window.len()
        );
        let tokens: u64 = window.iter().map(|(_, k)| k).sum();
        assert!(tokens <= tpm, "{tokens} tokens within 60 s of {t}");
    }
}

mod property {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        #[test]
        fn memory_store_never_over_admits_at_random_arrival_times(
            gaps in proptest::collection::vec(0i64..20_000, 1..150),
            sizes in proptest::collection::vec(0u64..400, 150),
            rpm in 1u64..8,
            tpm in 400u64..2000,
        ) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let h = memory();
                let mut log = Vec::new();
                let mut refused_with_room = 0;
                for (i, gap) in gaps.iter().enumerate() {
                    h.clock.advance(*gap);
                    let r = req(sizes[i], vec![cand(0, "p", limits(rpm, tpm, 1_000_000))]);
                    match h.store.admit(&r).await.unwrap() {
                        AdmitOutcome::Admitted(_) => log.push((h.clock.now_ms(), sizes[i])),
                        AdmitOutcome::Refused { retry_after_ms, .. } => {
                            // The promised moment really admits this request.
                            let now = h.clock.now_ms();
                            let in_window: Vec<_> = log.iter().filter(|(t, _)| *t > now - 60_000).collect();
                            if (in_window.len() as u64) < rpm && in_window.iter().map(|(_, k)| k).sum::<u64>() + sizes[i] <= tpm {
                                refused_with_room += 1;
                            }
                            prop_assert!(retry_after_ms > 0 && retry_after_ms <= 60_000);
                        }
                        AdmitOutcome::Unavailable { .. } | AdmitOutcome::ClientRefused { .. } => prop_assert!(false),
                    }
                }
                prop_assert_eq!(refused_with_room, 0, "refused a request that had room");
                assert_no_over_admission(&log, rpm, tpm);
                Ok(())
            })?;
        }
    }
}

#[tokio::test]
async fn redis_store_never_over_admits_at_random_arrival_times() {
    let h = redis();
    let mut rng = fastrand::Rng::with_seed(7);
    let (rpm, tpm) = (5, 1000);
    let mut log = Vec::new();
    for _ in 0..300 {
        h.clock.advance(rng.i64(0..15_000));
        let tokens = rng.u64(0..400);
        if let AdmitOutcome::Admitted(_) = h
            .store
            .admit(&req(
                tokens,
                vec![cand(0, "p", limits(rpm, tpm, 1_000_000))],
            ))
            .await
            .unwrap()
        {
            log.push((h.clock.now_ms(), tokens));
        }
    }
    assert!(log.len() > 50, "only {} admitted", log.len());
    assert_no_over_admission(&log, rpm, tpm);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_admissions_on_shared_redis_grant_exactly_the_limit() {
    let server = RedisServer::start();
    // Three "replicas": separate connections to one Redis, real Redis TIME.
    let stores: Vec<Arc<dyn QuotaStore>> = (0..3)
        .map(|_| {
            Arc::new(
                RedisStore::connect(
                    &Secret::new(server.url.clone()),
                    "conc",
                    std::time::Duration::from_secs(2),
                    Los_Angeles,
                )
                .unwrap(),
            ) as Arc<dyn QuotaStore>
        })
        .collect();
    let l = limits(5, 1_000_000, 1000);
    let cands = vec![cand(0, "a", l), cand(1, "b", l), cand(2, "c", l)];
    let mut tasks = Vec::new();
    for i in 0..120 {
        let s = stores[i % 3].clone();
        let mut r = req(10, cands.clone());
        r.rotation = i as u64;
        tasks.push(tokio::spawn(async move { s.admit(&r).await.unwrap() }));
    }
    let mut admitted = 0;
    for t in tasks {
        if let AdmitOutcome::Admitted(_) = t.await.unwrap() {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 15);
    // Raw keys never reach Redis; every key has an expiry.
    let keys = server.cli(&["KEYS", "*"]).unwrap();
    assert!(!keys.contains("AIza"));
    for k in keys.lines().filter(|l| l.starts_with('{')) {
        let ttl = server.cli(&["PTTL", k]).unwrap();
        assert!(!ttl.trim().starts_with("-1"), "{k} has no expiry");
    }
}

/// The window keys (sorted set and token hash) are not refreshed on every admission, only
/// when less than a minute of their life is left: after any admission they must still outlive
/// it by a minute, in the script's own time (the `exp` field) and in Redis's (their TTL).
#[tokio::test]
async fn redis_window_keys_always_outlive_the_newest_admission_by_a_minute() {
    let h = redis();
    let server = h._redis.clone().unwrap();
    let r = req(1, vec![cand(0, "p", limits(1000, 1_000_000, 100_000))]);
    let last_line = |s: String| {
        s.lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("")
            .trim()
            .to_string()
    };
    for step in 0..40 {
        h.clock.advance(if step % 10 == 9 { 61_000 } else { 7_000 });
        assert!(admitted(&h, &r).await);
        let keys = server.cli(&["KEYS", "*:p:*"]).unwrap();
        let window: Vec<&str> = keys
            .lines()
            .filter(|l| l.ends_with(":rq") || l.ends_with(":tk"))
            .collect();
        assert_eq!(window.len(), 2, "{keys}");
        for k in &window {
            let ttl: i64 = last_line(server.cli(&["PTTL", k]).unwrap())
                .parse()
                .unwrap();
            assert!(ttl > 60_000 && ttl <= 120_000, "{k}: PTTL {ttl}");
        }
        let tk = window.iter().find(|k| k.ends_with(":tk")).unwrap();
        let exp: i64 = last_line(server.cli(&["HGET", tk, "exp"]).unwrap())
            .parse()
            .unwrap();
        assert!(
            exp >= h.clock.now_ms() + 60_000,
            "step {step}: window keys expire at {exp}, under a minute after {}",
            h.clock.now_ms()
        );
    }
}

/// The window hash keeps its oldest entry's time (`first`) so an admission with nothing to drop
/// skips the sorted set's old end. Whatever leaves at once (one entry, more than the few read
/// with their times, all of them), and with the hash lost while the sorted set stays, the
/// counts are the window's own.
#[tokio::test]
async fn redis_window_counts_stay_exact_whatever_leaves_at_once_and_without_its_hash() {
    let h = redis();
    let server = h._redis.clone().unwrap();
    let r = req(5, vec![cand(0, "p", limits(1000, 1_000_000, 100_000))]);
    let minute = |h: &Harness| {
        let store = h.store.clone();
        async move {
            let usage = store.usage().await.unwrap();
            (usage[0].2.minute_requests, usage[0].2.minute_tokens)
        }
    };
    // 10 at T0, 1 at T0+30s: at T0+60s the 10 leave together (more than the 4 read with
    // their times), the one at T0+30s stays.
    for _ in 0..10 {
        assert!(admitted(&h, &r).await);
    }
    h.clock.advance(30_000);
    assert!(admitted(&h, &r).await);
    assert_eq!(minute(&h).await, (11, 55));
    h.clock.advance(30_000);
    assert_eq!(minute(&h).await, (1, 5));
    // One a second: each admission drops the one a minute older, no more.
    for _ in 0..5 {
        h.clock.advance(1_000);
        assert!(admitted(&h, &r).await);
    }
    assert_eq!(minute(&h).await, (6, 30));
    h.clock.advance(25_000);
    assert!(admitted(&h, &r).await);
    assert_eq!(minute(&h).await, (6, 30), "the T0+30s entry left at T0+90s");
    // The token hash goes (evicted), the sorted set stays: the entries still leave on time,
    // and the tokens counted again are only those admitted since.
    let keys = server.cli(&["KEYS", "*:p:*:tk"]).unwrap();
    let tk = keys.lines().find(|l| l.ends_with(":tk")).unwrap().trim();
    server.cli(&["DEL", tk]).unwrap();
    assert!(admitted(&h, &r).await);
    assert_eq!(minute(&h).await, (7, 5));
    h.clock.advance(61_000);
    assert!(admitted(&h, &r).await);
    assert_eq!(minute(&h).await, (1, 5));
    // The window empties: the next admission starts it again.
    h.clock.advance(61_000);
    assert_eq!(minute(&h).await, (0, 0));
    assert!(admitted(&h, &r).await);
    assert_eq!(minute(&h).await, (1, 5));
}

/// Redis that lost its scripts (a restart without persistence, `SCRIPT FLUSH`) gets them again
/// on the next call: admissions go on and count where they left off.
#[tokio::test]
async fn redis_admission_loads_its_script_again_after_a_script_flush() {
    let h = redis();
    let server = h._redis.clone().unwrap();
    let r = req(2, vec![cand(0, "p", limits(1000, 1_000_000, 100_000))]);
    assert!(admitted(&h, &r).await);
    server.cli(&["SCRIPT", "FLUSH"]).unwrap();
    assert!(admitted(&h, &r).await);
    assert!(admitted(&h, &r).await);
    let usage = h.store.usage().await.unwrap();
    assert_eq!(
        (usage[0].2.minute_requests, usage[0].2.minute_tokens),
        (3, 6)
    );
}

/// Keys Redis dropped on its own (an emptied sorted set, an evicted or expired pairs set) come
/// back with an expiry and on the status page.
#[tokio::test]
async fn redis_recreated_window_and_lost_pairs_set_recover() {
    let h = redis();
    let server = h._redis.clone().unwrap();
    let r = req(1, vec![cand(0, "p", limits(1000, 1_000_000, 100_000))]);
    assert!(admitted(&h, &r).await);
    let keys = server.cli(&["KEYS", "*:p:*:rq"]).unwrap();
    let rq = keys
        .lines()
        .find(|l| l.ends_with(":rq"))
        .unwrap()
        .to_string();
    let pairs = server
        .cli(&["KEYS", "*:pairs"])
        .unwrap()
        .lines()
        .find(|l| l.ends_with(":pairs"))
        .unwrap()
        .to_string();
    // The sorted set goes (as when pruning empties it); the next admission makes it anew.
    server.cli(&["DEL", &rq]).unwrap();
    h.clock.advance(1_000);
    assert!(admitted(&h, &r).await);
    let ttl = server.cli(&["PTTL", &rq]).unwrap();
    assert!(
        !ttl.trim().starts_with('-'),
        "{rq} came back without expiry: {ttl}"
    );
    // The pairs set goes mid-day: within a minute the pair is listed again.
    server.cli(&["DEL", &pairs]).unwrap();
    h.clock.advance(61_000);
    assert!(admitted(&h, &r).await);
    let usage = h.store.usage().await.unwrap();
    assert_eq!(
        usage.len(),
        1,
        "the pair is missing from the usage: {usage:?}"
    );
    assert_eq!(usage[0].2.daily_requests, 3);
}

/// Invariant 9 on the memory store: models a client makes up cost a bucket only while they
/// have admissions in the window; after that only a day count is kept, until midnight.
#[tokio::test]
async fn memory_store_drops_idle_models_but_keeps_their_day_counts_until_midnight() {
    let clock = Arc::new(ManualClock::new(T0));
    let store = MemoryStore::new(clock.clone(), Los_Angeles);
    let admit = |model: &str, l: Limits| {
        let mut r = req(1, vec![cand(0, "p", l)]);
        r.model = model.to_string();
        let store = &store;
        async move { store.admit(&r).await.unwrap() }
    };
    // A real model uses up its day.
    let daily = limits(100, 1_000_000, 2);
    for _ in 0..2 {
        assert!(matches!(
            admit("gemini-2.5-flash", daily).await,
            AdmitOutcome::Admitted(_)
        ));
    }
    // 20,000 made-up names over 20 minutes: a thousand new ones a minute.
    let roomy = limits(100, 1_000_000, 100);
    let mut most = 0;
    for i in 0..20_000 {
        if i % 1_000 == 0 {
            clock.advance(60_000);
        }
        assert!(matches!(
            admit(&format!("made-up-{i}"), roomy).await,
            AdmitOutcome::Admitted(_)
        ));
        most = most.max(store.tracked().buckets);
    }
    // The sweep runs when the table doubles from what survived the last one, so it never
    // holds more than twice the models of a minute, or its minimum threshold.
    assert!(most <= 2_100, "{most} buckets for 1,000 models a minute");

    clock.advance(60_000);
    store.usage().await.unwrap();
    let t = store.tracked();
    assert_eq!(t.buckets, 0, "every window is empty");
    assert_eq!(
        t.day_counts, 20_001,
        "each pair keeps its day count until midnight"
    );

    // The day count outlived the bucket: the real model is still at its daily limit.
    let midnight = DayInfo::at(Los_Angeles, clock.now_ms()).next_midnight_ms;
    match admit("gemini-2.5-flash", daily).await {
        AdmitOutcome::Refused {
            limit,
            retry_after_ms,
            ..
        } => {
            assert_eq!(limit, LimitKind::RequestsPerDay);
            assert_eq!(retry_after_ms as i64, midnight - clock.now_ms());
        }
        other => panic!("{other:?}"),
    }
    let usage = store.usage().await.unwrap();
    assert_eq!(usage.len(), 20_001);
    let flash = usage
        .iter()
        .find(|(_, m, _)| m == "gemini-2.5-flash")
        .unwrap();
    assert_eq!(flash.2.daily_requests, 2);

    // A new day: the day counts go too.
    clock.set(midnight);
    store.usage().await.unwrap();
    assert_eq!(store.tracked().day_counts, 0);
    assert!(matches!(
        admit("gemini-2.5-flash", daily).await,
        AdmitOutcome::Admitted(_)
    ));
}

/// A settlement that arrives after its bucket was dropped and made anew must not touch the new
/// bucket's admissions (ids are never reused), or a refund could let tokens over the limit.
#[tokio::test]
async fn memory_store_late_settlement_for_a_dropped_bucket_changes_nothing() {
    let clock = Arc::new(ManualClock::new(T0));
    let store = MemoryStore::new(clock.clone(), Los_Angeles);
    let r = req(300, vec![cand(0, "p", limits(100, 500, 100))]);
    let AdmitOutcome::Admitted(old) = store.admit(&r).await.unwrap() else {
        panic!()
    };
    clock.advance(60_000);
    store.usage().await.unwrap();
    assert_eq!(store.tracked().buckets, 0);
    let AdmitOutcome::Admitted(new) = store.admit(&r).await.unwrap() else {
        panic!()
    };
    assert_ne!(old.id, new.id);
    store.settle(&old, 0).await.unwrap();
    assert!(
        !matches!(store.admit(&r).await.unwrap(), AdmitOutcome::Admitted(_)),
        "300 + 300 tokens exceed 500"
    );
    let u = store.usage().await.unwrap()[0].2;
    assert_eq!((u.minute_tokens, u.daily_requests), (300, 2));
}

/// A reset of the day clears the day counts kept for dropped buckets too.
#[tokio::test]
async fn memory_store_daily_reset_clears_kept_day_counts() {
    let clock = Arc::new(ManualClock::new(T0));
    let store = MemoryStore::new(clock.clone(), Los_Angeles);
    let r = req(1, vec![cand(0, "p", limits(100, 1000, 1))]);
    assert!(matches!(
        store.admit(&r).await.unwrap(),
        AdmitOutcome::Admitted(_)
    ));
    clock.advance(60_000);
    store.usage().await.unwrap();
    assert_eq!(store.tracked().day_counts, 1);
    store
        .reset(ResetKind::Minute, &ResetScope::default())
        .await
        .unwrap();
    assert_eq!(
        store.tracked().day_counts,
        1,
        "a minute reset leaves days alone"
    );
    store
        .reset(ResetKind::Daily, &ResetScope::default())
        .await
        .unwrap();
    assert_eq!(store.tracked().day_counts, 0);
    assert!(store.usage().await.unwrap().is_empty());
    assert!(matches!(
        store.admit(&r).await.unwrap(),
        AdmitOutcome::Admitted(_)
    ));
}

/// Every test of the suite against a Redis Cluster (three masters), each under its own
/// namespace, reached through a seed node that does not serve that namespace's slot: every
/// script's keys are in `KEYS` and share the namespace's slot, so Cluster runs them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_store_passes_the_suite() {
    let cluster = common::cluster::RedisCluster::start(3, 0, 5_000);
    for (name, run) in SUITE {
        let ns = format!("suite-{}", &name[..name.len().min(24)]);
        let owner = cluster.master_of(cluster.keyslot(&ns), cluster.live_ports()[0]);
        let seed = cluster.other_master(cluster.keyslot(&ns));
        assert_ne!(Some(seed), owner);
        let clock = Arc::new(ManualClock::new(T0));
        let store = RedisStore::connect(
            &Secret::new(cluster.url(seed)),
            &ns,
            std::time::Duration::from_secs(2),
            Los_Angeles,
        )
        .unwrap()
        .with_clock(clock.clone());
        eprintln!("cluster: {name}");
        run(Harness {
            store: Arc::new(store),
            clock,
            _redis: None,
        })
        .await;
        // The namespace's keys are all on the master that serves its slot.
        let owner = owner.expect("the slot has a master");
        assert!(
            cluster.keys_on(owner).contains(&format!("{{{ns}}}:")),
            "{name}: no key of the namespace on its slot's master"
        );
        for p in cluster.live_ports().into_iter().filter(|p| *p != owner) {
            assert!(
                !cluster.keys_on(p).contains(&format!("{{{ns}}}:")),
                "{name}: a key of the namespace on another node"
            );
        }
    }
}

/// Around midnight a replica's clock may be on another day than Redis's: the day counted is
/// Redis's (a script answers with its day and the store names that day's keys), in admission,
/// usage and a daily reset.
#[tokio::test]
async fn the_day_counted_is_redis_s_when_the_replica_s_clock_is_on_another_day() {
    let server = RedisServer::start();
    let now = gemini_quota_proxy::quota::SystemClock.now_ms();
    // This replica names yesterday; Redis TIME says today.
    let store = RedisStore::connect(
        &Secret::new(server.url.clone()),
        "skew",
        std::time::Duration::from_secs(2),
        Los_Angeles,
    )
    .unwrap()
    .with_day_clock(Arc::new(ManualClock::new(now - 86_400_000)));
    let r = req(1, vec![cand(0, "p", limits(100, 1_000_000, 2))]);
    for _ in 0..2 {
        assert!(matches!(
            store.admit(&r).await.unwrap(),
            AdmitOutcome::Admitted(_)
        ));
    }
    match store.admit(&r).await.unwrap() {
        AdmitOutcome::Refused {
            limit: LimitKind::RequestsPerDay,
            retry_after_ms,
            ..
        } => assert!(
            retry_after_ms <= 86_400_000,
            "the wait is to Redis's next midnight: {retry_after_ms}"
        ),
        other => panic!("{other:?}"),
    }
    let today = DayInfo::at(Los_Angeles, now).day;
    let days = server.cli(&["KEYS", "*:day:*"]).unwrap();
    assert!(days.contains(&format!(":day:{today}")), "{days}");
    assert!(!days.contains(&format!(":day:{}", today - 1)), "{days}");
    let usage = store.usage().await.unwrap();
    assert_eq!(usage.len(), 1, "{usage:?}");
    assert_eq!(usage[0].2.daily_requests, 2);
    store
        .reset(ResetKind::Daily, &ResetScope::default())
        .await
        .unwrap();
    assert!(matches!(
        store.admit(&r).await.unwrap(),
        AdmitOutcome::Admitted(_)
    ));
}
