//! How long `/api/ai/quota-status/` takes to build with 100 keys (each its own project) x 20
//! models: every pair with counters in the store, and a day of ledger history for every series
//! (the cost and forecast read it). Times the document as the endpoint makes it (counters read
//! now, cost and forecast as the background refresh last computed them) and its JSON, then what
//! that refresh takes.
//!
//! `cargo run --release --example status_bench`

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gemini_quota_proxy::ledger::{Counters, field};
use gemini_quota_proxy::quota::memory::MemoryStore;
use gemini_quota_proxy::quota::{AdmitRequest, Clock, ManualClock, QuotaStore, SystemClock};
use gemini_quota_proxy::route::QuotaFamily;
use gemini_quota_proxy::{Config, Gateway, Sources};

const KEYS: usize = 100;
const MODELS: usize = 20;
const MINUTES: i64 = 24 * 60;

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let keys: Vec<String> = (0..KEYS)
        .map(|i| format!("AIzaStatusBench{i:08}"))
        .collect();
    let env: HashMap<String, String> = [
        ("GEMINI_API_KEYS", keys.join(",")),
        ("PROXY_CLIENT_KEYS", "bench-client".to_string()),
        ("GEMINI_MINUTE_LIMIT", "1000000".to_string()),
        ("GEMINI_DAILY_LIMIT", "1000000".to_string()),
        ("GEMINI_UPSTREAM_URL", "http://127.0.0.1:9".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let config = Config::load(&Sources { file: None, env }).expect("config");
    let tz = config.limits.timezone;
    let now = SystemClock.now_ms();
    let clock = Arc::new(ManualClock::new(now - (MINUTES - 1) * 60_000));
    let store = Arc::new(MemoryStore::new(Arc::new(SystemClock), tz));
    let gateway = Gateway::builder(config)
        .store(store.clone())
        .ledger_clock(clock.clone())
        .build()
        .expect("gateway");
    let state = gateway.state().clone();
    let models: Vec<String> = (0..MODELS).map(|m| format!("gemini-model-{m}")).collect();

    // Every (project, model) with counters in the store.
    for model in &models {
        for i in 0..KEYS {
            let req = AdmitRequest {
                model: model.clone(),
                tokens: 100,
                candidates: state.pool.candidates(model, QuotaFamily::Generate, Some(i)),
                strategy: state.pool.strategy,
                rotation: 0,
                client: None,
            };
            store.admit(&req).await.expect("admit");
        }
    }
    // A day of ledger history for every series, each busy every minute.
    let series: Vec<_> = (0..KEYS * MODELS)
        .map(|n| {
            let k = &state.pool.keys[n % KEYS];
            state.ledger.series(
                Some(&k.project),
                &models[n / KEYS],
                Some(&k.kid),
                "client1",
                true,
            )
        })
        .collect();
    let mut c = Counters::default();
    c.0[field::REQUESTS] = 3;
    c.0[field::INPUT] = 1200;
    c.0[field::COST] = 4_500_000;
    let t = Instant::now();
    for _ in 0..MINUTES {
        for s in &series {
            state.ledger.add(*s, &c);
        }
        clock.advance(60_000);
    }
    clock.set(now);
    println!(
        "{KEYS} keys x {MODELS} models: {} pairs in the store, {} series-minutes of history (filled in {:.1} s)",
        KEYS * MODELS,
        KEYS * MODELS * MINUTES as usize,
        t.elapsed().as_secs_f64()
    );

    use gemini_quota_proxy::status::Extras;
    for (label, outlook) in [
        (
            "as the page gets it (cost and forecast computed in the background)",
            Extras::Cached,
        ),
        ("computing cost and forecast now", Extras::Fresh),
        ("counters only (what /metrics refreshes)", Extras::None),
    ] {
        let mut times = Vec::new();
        let mut size = 0;
        for _ in 0..21 {
            let t = Instant::now();
            let snap = gemini_quota_proxy::status::snapshot(&state, outlook).await;
            let body = serde_json::to_vec(&snap).expect("json");
            times.push(t.elapsed());
            size = body.len();
        }
        times.sort();
        println!(
            "status {label}: median {:.2} ms (min {:.2}, max {:.2}) over 21, {:.0} KB of JSON",
            millis(times[10]),
            millis(times[0]),
            millis(times[20]),
            size as f64 / 1024.0
        );
    }
}
