//! Admissions gathered into one run of `admit_many.lua` (`RedisStore::admit_all`) decide as
//! `admit.lua` decides them one after the other: the same key or refusal, retry time, remaining
//! counts and ids, and the same counters after, for random limits, sizes, strategies and times.
//! And gathering itself, through `admit`: concurrent admissions at a limit grant it exactly.

use super::*;
use proptest::prelude::*;

/// A store on `server` under `namespace`, on `clock`.
fn store_on(server: &RedisServer, namespace: &str, clock: &Arc<ManualClock>) -> RedisStore {
    RedisStore::connect(
        &Secret::new(server.url.clone()),
        namespace,
        std::time::Duration::from_secs(5),
        Los_Angeles,
    )
    .unwrap()
    .with_clock(clock.clone())
}

/// An admission's outcome as the comparison reads it.
fn seen(o: &AdmitOutcome) -> String {
    match o {
        AdmitOutcome::Admitted(r) => format!(
            "admitted key {} id {} remaining {}/{}",
            r.index, r.id, r.remaining_requests, r.remaining_tokens
        ),
        other => format!("{other:?}"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(40))]
    #[test]
    fn gathered_admissions_decide_as_one_after_the_other(
        // Per project: rpm, tpm, rpd.
        projects in proptest::collection::vec((1u64..6, 10u64..80, 2u64..12), 1..4),
        keys in proptest::collection::vec(0usize..3, 1..5),
        ordered in any::<bool>(),
        // Per round: the clock's step, then the admissions (tokens, rotation).
        rounds in proptest::collection::vec(
            (0i64..40_000, proptest::collection::vec((1u64..25, 0u64..6), 1..9)),
            1..7,
        ),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let server = RedisServer::start();
            let clock = Arc::new(ManualClock::new(T0));
            let (together, alone) = (store_on(&server, "together", &clock), store_on(&server, "alone", &clock));
            let cands: Vec<Candidate> = keys
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    let (rpm, tpm, rpd) = projects[p % projects.len()];
                    cand(i, &format!("p{}", p % projects.len()), limits(rpm, tpm, rpd))
                })
                .collect();
            for (step, asks) in &rounds {
                clock.advance(*step);
                let reqs: Vec<AdmitRequest> = asks
                    .iter()
                    .map(|(tokens, rotation)| {
                        let mut r = req(*tokens, cands.clone());
                        r.rotation = *rotation;
                        if ordered {
                            r.strategy = gemini_quota_proxy::quota::Strategy::Ordered;
                        }
                        r
                    })
                    .collect();
                let gathered = together.admit_all(&reqs).await.unwrap();
                prop_assert_eq!(gathered.len(), reqs.len());
                for (r, g) in reqs.iter().zip(&gathered) {
                    let one = alone.admit(r).await.unwrap();
                    prop_assert_eq!(seen(g), seen(&one));
                }
                let (mut u1, mut u2) = (together.usage().await.unwrap(), alone.usage().await.unwrap());
                u1.sort_by(|a, b| a.0.cmp(&b.0));
                u2.sort_by(|a, b| a.0.cmp(&b.0));
                prop_assert_eq!(format!("{u1:?}"), format!("{u2:?}"));
            }
            Ok(())
        })?;
    }
}

/// Through `admit`, 60 admissions at once against a minute of 25 on two keys of one project:
/// they gather while the first is in Redis, and exactly 25 are granted, the rest refused for
/// the minute with a retry time within it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_admissions_gathered_grant_exactly_the_limit() {
    let server = RedisServer::start();
    let clock = Arc::new(ManualClock::new(T0));
    let store = Arc::new(store_on(&server, "crowd", &clock));
    let r = req(
        3,
        vec![
            cand(0, "p", limits(25, 1_000_000, 1_000)),
            cand(1, "p", limits(25, 1_000_000, 1_000)),
        ],
    );
    let tasks: Vec<_> = (0..60)
        .map(|i| {
            let (store, mut r) = (store.clone(), r.clone());
            r.rotation = i;
            tokio::spawn(async move { store.admit(&r).await.unwrap() })
        })
        .collect();
    let (mut granted, mut refused, mut ids) = (0, 0, Vec::new());
    for t in tasks {
        match t.await.unwrap() {
            AdmitOutcome::Admitted(res) => {
                granted += 1;
                ids.push(res.id);
            }
            AdmitOutcome::Refused {
                limit,
                retry_after_ms,
                ..
            } => {
                refused += 1;
                assert_eq!(limit, LimitKind::RequestsPerMinute);
                assert!(retry_after_ms > 0 && retry_after_ms <= 60_000);
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!((granted, refused), (25, 35));
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 25, "each admission its own id");
    // Fewer script runs than admissions: some went together.
    let stats = server.cli(&["INFO", "commandstats"]).unwrap();
    let runs: u64 = stats
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_evalsha:calls="))
        .and_then(|l| l.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no EVALSHA count in {stats}"));
    assert!(runs < 60, "{runs} script runs for 60 admissions");
    let usage = store.usage().await.unwrap();
    assert_eq!(
        (usage[0].2.minute_requests, usage[0].2.minute_tokens),
        (25, 75)
    );
}

/// Admissions dropped while they lead a gate or wait at it (their requests went away) never
/// stall the others: with Redis blocked while 30 gather, every third dropped, the rest are all
/// answered once Redis is back, and a gate is free again after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_admissions_pass_their_gate_on() {
    use std::time::{Duration, Instant};
    // DEBUG is refused unless enabled (Redis 7); local: from loopback only.
    let server = RedisServer::start_with(&["--enable-debug-command", "local"]);
    let clock = Arc::new(ManualClock::new(T0));
    let store = Arc::new(store_on(&server, "dropped", &clock));
    let r = req(1, vec![cand(0, "p", limits(1_000, 1_000_000, 10_000))]);
    assert!(matches!(
        store.admit(&r).await.unwrap(),
        AdmitOutcome::Admitted(_)
    ));
    // DEBUG SLEEP blocks the whole server for 0.5 s: the first admission leads, in Redis; the
    // rest wait at its gate.
    let slept_from = Instant::now();
    let sleeper = server.sleep_in_background("0.5");
    tokio::time::sleep(Duration::from_millis(50)).await;
    let tasks: Vec<_> = (0..30)
        .map(|i| {
            let (store, mut r) = (store.clone(), r.clone());
            r.rotation = i;
            tokio::spawn(async move { store.admit(&r).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut kept = Vec::new();
    for (i, t) in tasks.into_iter().enumerate() {
        if i % 3 == 0 {
            t.abort();
        } else {
            kept.push(t);
        }
    }
    let t0 = Instant::now();
    for t in kept {
        let answer = tokio::time::timeout(Duration::from_secs(5), t)
            .await
            .expect("an admission stalled at its gate")
            .unwrap()
            .unwrap();
        assert!(matches!(answer, AdmitOutcome::Admitted(_)), "{answer:?}");
    }
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    // Redis really slept while they gathered.
    assert_eq!(sleeper.join().unwrap().trim(), "+OK");
    assert!(slept_from.elapsed() >= Duration::from_millis(450));
    let t1 = Instant::now();
    assert!(matches!(
        store.admit(&r).await.unwrap(),
        AdmitOutcome::Admitted(_)
    ));
    assert!(t1.elapsed() < Duration::from_secs(1), "{:?}", t1.elapsed());
    // The 20 kept and the two alone counted; the dropped ones at most once each.
    let usage = store.usage().await.unwrap();
    let counted = usage[0].2.minute_requests;
    assert!((22..=32).contains(&counted), "{counted}");
}
