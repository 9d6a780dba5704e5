//! The proxy binary on a real Redis Cluster (six nodes: three masters with a replica each):
//! `REDIS_URL` names a node that does not serve the namespace's slot and the proxy finds the
//! cluster from it; three proxy processes admit exactly the limit together; the master serving
//! the namespace is killed under load, its replica takes over, and the proxy keeps answering
//! under `store.on_error` meanwhile and counts in Redis again within seconds, without a restart.

use crate::common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::binary::Binary;
use common::cluster::{RedisCluster, wait_until};
use common::*;

/// A proxy process with the client key, the pooled `keys` and `redis_url`, and `extra` settings.
fn start_proxy_process(
    upstream: &str,
    redis_url: &str,
    keys: &str,
    extra: &[(&str, &str)],
) -> Binary {
    let mut env = vec![
        ("GEMINI_API_KEYS", keys),
        ("PROXY_CLIENT_KEYS", CLIENT_KEY),
        ("GEMINI_UPSTREAM_URL", upstream),
        ("REDIS_URL", redis_url),
        // Refused at once rather than queued: every answer is in when it is counted.
        ("PROXY_QUEUE_MAX_WAIT_SECS", "0"),
    ];
    env.extend_from_slice(extra);
    Binary::start(&env, &[])
}

/// The integer under `key` on the node on `port` (0 when missing).
fn counter(cluster: &RedisCluster, port: u16, key: &str) -> u64 {
    cluster
        .cli(port, &["GET", key])
        .and_then(|v| v.lines().nth(1).and_then(|n| n.trim().parse().ok()))
        .unwrap_or(0)
}

/// Whether the proxy says its shared store is reachable (not degraded).
async fn store_reachable(proxy: &str) -> bool {
    quota_status(proxy, CLIENT_KEY).await.1["quota_status"]["store"]["reachable"] == true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_proxies_seeded_with_a_node_that_does_not_serve_the_namespace_admit_exactly_the_limit()
 {
    let cluster = RedisCluster::start(3, 1, 5_000);
    // The default namespace `gqp`: every key is `{gqp}:...`, in the slot of `gqp`.
    let slot = cluster.keyslot("gqp");
    let owner = cluster.master_of(slot, cluster.live_ports()[0]).unwrap();
    let seed = cluster.other_master(slot);
    assert_ne!(seed, owner);
    let fake = FakeUpstream::start().await;
    let keys = "AIzaClusterKey000001,AIzaClusterKey000002,AIzaClusterKey000003";
    let proxies: Vec<Binary> = (0..3)
        .map(|_| {
            start_proxy_process(
                &fake.url,
                &cluster.url(seed),
                keys,
                &[("GEMINI_MINUTE_LIMIT", "5")],
            )
        })
        .collect();
    let mut tasks = Vec::new();
    for i in 0..90 {
        let url = proxies[i % 3].url.clone();
        tasks.push(tokio::spawn(async move {
            generate(&url, "gemini-2.5-flash", "race")
                .await
                .status()
                .as_u16()
        }));
    }
    let mut codes = Vec::new();
    for t in tasks {
        codes.push(t.await.unwrap());
    }
    assert_eq!(codes.iter().filter(|c| **c == 200).count(), 15, "{codes:?}");
    assert_eq!(codes.iter().filter(|c| **c == 429).count(), 75, "{codes:?}");
    assert_eq!(fake.calls(":generateContent").len(), 15);
    for p in &proxies {
        assert!(store_reachable(&p.url).await, "a proxy is degraded");
        let logs = p.logs();
        assert!(
            logs.lines()
                .any(|l| l.contains("connected to Redis") && l.contains("cluster")),
            "the proxy did not say it found a cluster: {logs}"
        );
    }
    // Counted on the master that serves the namespace's slot (and its replica), nowhere else;
    // 15 admissions made 15 ids.
    assert_eq!(counter(&cluster, owner, "{gqp}:seq"), 15);
    let copies: Vec<u16> = std::iter::once(owner)
        .chain(cluster.replicas_of(owner))
        .collect();
    for p in cluster.live_ports() {
        let keys = cluster.keys_on(p);
        assert!(!keys.contains("AIza"), "a pooled key in Redis: {keys}");
        if !copies.contains(&p) {
            assert!(
                !keys.contains("{gqp}:"),
                "namespace keys on node {p}: {keys}"
            );
        }
    }
}

/// How the namespace's master fails.
#[derive(Debug, Clone, Copy)]
enum Failure {
    /// SIGKILL: its port refuses connections at once.
    Crash,
    /// SIGSTOP: its connections stay open and nothing answers (a hung host, a partition), so
    /// only the store's deadline ends a call.
    Hang,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_master_killed_under_load_is_followed_to_its_replica_and_counting_resumes_in_redis() {
    master_fails_under_load(Failure::Crash).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_master_that_hangs_under_load_costs_no_call_more_than_the_deadline_and_is_replaced() {
    master_fails_under_load(Failure::Hang).await;
}

/// The namespace's master fails (`how`) under load: every answer meanwhile comes under the
/// `local` policy within the deadlines, its replica is promoted, and the proxy counts in it
/// again within seconds, exactly, without a restart.
async fn master_fails_under_load(how: Failure) {
    // A silent master is failed over after about two seconds.
    let mut cluster = RedisCluster::start(3, 1, 2_000);
    let slot = cluster.keyslot("gqp");
    let owner = cluster.master_of(slot, cluster.live_ports()[0]).unwrap();
    let heir = *cluster
        .replicas_of(owner)
        .first()
        .expect("the namespace's master has a replica");
    let seed = cluster.other_master(slot);
    let fake = FakeUpstream::start().await;
    let proxy = start_proxy_process(
        &fake.url,
        &cluster.url(seed),
        "AIzaFailoverKey00001,AIzaFailoverKey00002",
        &[
            ("GEMINI_MINUTE_LIMIT", "1000000"),
            ("GEMINI_DAILY_LIMIT", "100000000"),
        ],
    );

    // Load: four clients in a loop, every answer's status and time kept.
    let stop = Arc::new(AtomicBool::new(false));
    let answers: Arc<Mutex<Vec<(u16, Duration)>>> = Arc::default();
    let mut load = Vec::new();
    for _ in 0..4 {
        let (url, stop, answers) = (proxy.url.clone(), stop.clone(), answers.clone());
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let status = generate(&url, "gemini-2.5-flash", "load")
                    .await
                    .status()
                    .as_u16();
                answers.lock().unwrap().push((status, t.elapsed()));
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }
    let counted_before = eventually(Duration::from_secs(30), || {
        counter(&cluster, owner, "{gqp}:seq") >= 20
    })
    .await;
    assert!(counted_before, "no counting in the cluster before the kill");

    let killed = Instant::now();
    match how {
        Failure::Crash => cluster.kill(owner),
        Failure::Hang => cluster.freeze(owner),
    }
    let promoted = tokio::task::block_in_place(|| {
        wait_until(Duration::from_secs(60), || {
            cluster
                .cli(heir, &["INFO", "replication"])
                .is_some_and(|i| i.contains("role:master"))
        })
    });
    assert!(promoted, "the replica was not promoted within 60 s");
    let promoted_after = killed.elapsed();

    // Back to counting in Redis: the proxy says so, and the new master's counters move.
    let mut back = false;
    let end = Instant::now() + Duration::from_secs(30);
    let mut seen = counter(&cluster, heir, "{gqp}:seq");
    while Instant::now() < end {
        let now = counter(&cluster, heir, "{gqp}:seq");
        if store_reachable(&proxy.url).await && now > seen {
            back = true;
            break;
        }
        seen = now;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        back,
        "the proxy did not count in the new master within 30 s"
    );
    let back_after = killed.elapsed();
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.await.unwrap();
    }
    eprintln!(
        "master failed ({how:?}): replica promoted after {promoted_after:?}, proxy counting in it after {back_after:?}"
    );

    // Meanwhile every request was answered under `local`, none held beyond the deadlines.
    let answers = answers.lock().unwrap().clone();
    assert!(answers.len() > 40, "only {} answers", answers.len());
    assert!(
        answers.iter().all(|(s, _)| *s == 200),
        "{:?}",
        answers
            .iter()
            .filter(|(s, _)| *s != 200)
            .collect::<Vec<_>>()
    );
    let slowest = answers.iter().map(|(_, d)| *d).max().unwrap();
    eprintln!("{} answers, the slowest in {slowest:?}", answers.len());
    assert!(
        slowest < Duration::from_secs(3),
        "an answer took {slowest:?}"
    );
    let logs = proxy.logs();
    assert!(logs.contains("quota store failing"), "{logs}");
    assert!(logs.contains("shared counting resumed"), "{logs}");
    if let Failure::Hang = how {
        // The client alone keeps asking the frozen master: the proxy's rebuild moved it on.
        assert!(logs.contains("Redis Cluster connection rebuilt"), "{logs}");
        assert!(
            slowest < Duration::from_millis(1500),
            "an answer took {slowest:?} against a 250 ms store deadline"
        );
    }

    // Exact again: ten admissions, ten ids on the new master.
    let before = counter(&cluster, heir, "{gqp}:seq");
    for _ in 0..10 {
        assert_eq!(
            generate(&proxy.url, "gemini-2.5-flash", "after")
                .await
                .status(),
            200
        );
    }
    assert_eq!(counter(&cluster, heir, "{gqp}:seq"), before + 10);
    assert!(store_reachable(&proxy.url).await);
}

/// A `generateContent` of `text` (temperature 0, so cacheable): (status, the cache header).
async fn cached_generate(proxy: &str, text: &str) -> (u16, String) {
    let r = http()
        .post(format!(
            "{proxy}/v1beta/models/gemini-2.5-flash:generateContent"
        ))
        .header("x-goog-api-key", CLIENT_KEY)
        .json(&serde_json::json!({
            "contents": [{"role": "user", "parts": [{"text": text}]}],
            "generationConfig": {"temperature": 0}
        }))
        .send()
        .await
        .unwrap();
    let cache = r
        .headers()
        .get("x-gemini-quota-proxy-cache")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    (r.status().as_u16(), cache)
}

/// The other Redis users on a Cluster, through a seed that does not serve the namespace: the
/// response cache (entries shared in Redis, and an admin clear, whose `SCAN` must run on the
/// node holding the namespace), the usage ledger (its sums written with settlements and read
/// back) and the status page's counters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_the_ledger_and_the_status_page_work_on_a_cluster() {
    let cluster = RedisCluster::start(3, 0, 5_000);
    let seed = cluster.other_master(cluster.keyslot("gqp"));
    let fake = FakeUpstream::start().await;
    let proxy = start_proxy(
        &fake.url,
        ProxyOpts::keys(&["AIzaClusterCacheKey01"])
            .env("REDIS_URL", &cluster.url(seed))
            .env("PROXY_CACHE", "on"),
    )
    .await;
    // Three rounds of miss, hit, clear (a clear that scanned another node would find nothing).
    // After a clear the round's prompt misses and is stored again, so the next clear finds it
    // beside the next round's entry.
    let until_hit = |text: String| {
        let url = proxy.url.clone();
        async move {
            for _ in 0..100 {
                if cached_generate(&url, &text).await.1 == "HIT" {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            false
        }
    };
    for round in 0..3 {
        let text = format!("cluster cache round {round}");
        assert_eq!(
            cached_generate(&proxy.url, &text).await,
            (200, "MISS".into())
        );
        assert!(until_hit(text.clone()).await, "round {round}: never a hit");
        let r = http()
            .post(format!("{}/api/ai/cache/clear", proxy.url))
            .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let j = json_of(r).await;
        let held = if round == 0 { 1 } else { 2 };
        assert_eq!(
            (j["cleared"].clone(), j["complete"].clone()),
            (held.into(), true.into()),
            "round {round}: {j}"
        );
        assert_eq!(cached_generate(&proxy.url, &text).await.1, "MISS");
        assert!(until_hit(text).await, "round {round}: not stored again");
    }
    // Six calls reached the upstream (two misses a round), each admitted in Redis: the status
    // page reads them back.
    assert_eq!(fake.calls(":generateContent").len(), 6);
    let (_, status) = quota_status(&proxy.url, CLIENT_KEY).await;
    assert_eq!(
        status["quota_status"]["store"]["reachable"], true,
        "{status}"
    );
    assert_eq!(
        status.pointer("/quota_status/usage/daily_requests"),
        Some(&serde_json::json!(6)),
        "{status}"
    );
    // The ledger's sums reach Redis with the settlement batches and are read back from it.
    let mut requests = serde_json::Value::Null;
    for _ in 0..100 {
        let r = http()
            .get(format!("{}/api/ai/usage/?window=1h", proxy.url))
            .header("x-goog-api-key", ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        requests = json_of(r).await["totals"]["requests"].clone();
        if requests.as_u64() >= Some(6) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        requests.as_u64() >= Some(6),
        "the ledger's totals: {requests}"
    );
    let owner = cluster
        .master_of(cluster.keyslot("gqp"), seed)
        .expect("a master");
    assert!(
        cluster.keys_on(owner).contains("{gqp}:led:m:"),
        "no ledger bucket on the namespace's master"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_refused_info_still_finds_the_cluster() {
    // Managed services and careful operators deny INFO (@dangerous) to the application user;
    // the proxy still tells the cluster from one node.
    let cluster = RedisCluster::start(3, 0, 5_000);
    for port in cluster.live_ports() {
        let ok = cluster.cli(
            port,
            &[
                "ACL",
                "SETUSER",
                "gqp",
                "on",
                ">gqp-pass",
                "~*",
                "&*",
                "+@all",
                "-@dangerous",
            ],
        );
        assert!(
            ok.is_some_and(|o| o.contains("OK")),
            "ACL SETUSER on {port}"
        );
    }
    let slot = cluster.keyslot("gqp");
    let seed = cluster.other_master(slot);
    let url = format!("redis://gqp:gqp-pass@127.0.0.1:{seed}");
    let fake = FakeUpstream::start().await;
    let proxy = start_proxy_process(
        &fake.url,
        &url,
        "AIzaClusterAclKey001",
        &[("GEMINI_MINUTE_LIMIT", "3")],
    );
    let mut codes = Vec::new();
    for _ in 0..5 {
        codes.push(
            generate(&proxy.url, "gemini-2.5-flash", "x")
                .await
                .status()
                .as_u16(),
        );
    }
    assert_eq!(codes, [200, 200, 200, 429, 429], "{}", proxy.logs());
    assert!(store_reachable(&proxy.url).await, "{}", proxy.logs());
    let owner = cluster.master_of(slot, seed).unwrap();
    assert_eq!(
        counter(&cluster, owner, "{gqp}:seq"),
        3,
        "counted on the owner"
    );
    assert!(
        proxy
            .logs()
            .lines()
            .any(|l| l.contains("connected to Redis") && l.contains("cluster")),
        "{}",
        proxy.logs()
    );
    assert!(!proxy.logs().contains("gqp-pass"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_protected_cluster_is_found_and_used_with_the_seeds_password() {
    // Managed clusters require AUTH on every node: the password in the seed URL must reach
    // every node the cluster names, not just the seed.
    let cluster = RedisCluster::start(3, 0, 5_000);
    let slot = cluster.keyslot("gqp");
    let seed = cluster.other_master(slot);
    let password = "cluster-secret-pw";
    for port in cluster.live_ports() {
        let ok = cluster.cli(port, &["CONFIG", "SET", "requirepass", password]);
        assert!(
            ok.is_some_and(|o| o.contains("OK")),
            "requirepass on {port}"
        );
    }
    let fake = FakeUpstream::start().await;
    let url = format!("redis://:{password}@127.0.0.1:{seed}");
    let proxy = start_proxy_process(
        &fake.url,
        &url,
        "AIzaClusterAuthKey01",
        &[("GEMINI_MINUTE_LIMIT", "3")],
    );
    let mut codes = Vec::new();
    for _ in 0..5 {
        codes.push(
            generate(&proxy.url, "gemini-2.5-flash", "x")
                .await
                .status()
                .as_u16(),
        );
    }
    assert_eq!(codes, [200, 200, 200, 429, 429], "{}", proxy.logs());
    // Counted in the cluster, not under the failure policy.
    let (_, status) = quota_status(&proxy.url, CLIENT_KEY).await;
    assert_eq!(
        status["quota_status"]["store"]["backend"], "redis",
        "{status}"
    );
    assert_eq!(
        status["quota_status"]["store"]["reachable"], true,
        "{status}"
    );
    let logs = proxy.logs();
    assert!(!logs.contains("quota store failing"), "{logs}");
    assert!(
        logs.lines()
            .any(|l| l.contains("connected to Redis") && l.contains("cluster")),
        "{logs}"
    );
    assert!(!logs.contains(password), "the password in a log line");
}
