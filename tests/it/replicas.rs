//! Several proxy processes (the real binary) sharing one real Redis.

use crate::common;

use std::time::Duration;

use common::binary::Binary;
use common::*;

/// A replica: the real binary with the client key, the pooled `keys` and the shared Redis,
/// and `extra` settings.
fn start_replica(upstream: &str, redis_url: &str, keys: &str, extra: &[(&str, &str)]) -> Binary {
    let mut env = vec![
        ("GEMINI_API_KEYS", keys),
        ("PROXY_CLIENT_KEYS", CLIENT_KEY),
        ("GEMINI_UPSTREAM_URL", upstream),
        ("REDIS_URL", redis_url),
    ];
    env.extend_from_slice(extra);
    Binary::start(&env, &[])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_on_one_redis_admit_exactly_the_pool_limit() {
    let redis = RedisServer::start();
    let fake = FakeUpstream::start().await;
    let keys = "AIzaReplicaKey000001,AIzaReplicaKey000002,AIzaReplicaKey000003";
    let replicas: Vec<Binary> = (0..3)
        .map(|_| {
            // Refused at once rather than queued: every answer is in by the time it is counted.
            let extra = [
                ("GEMINI_MINUTE_LIMIT", "5"),
                ("PROXY_QUEUE_MAX_WAIT_SECS", "0"),
            ];
            start_replica(&fake.url, &redis.url, keys, &extra)
        })
        .collect();
    let mut tasks = Vec::new();
    for i in 0..90 {
        let url = replicas[i % 3].url.clone();
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
    // No pooled key in Redis.
    assert!(!redis.all_keys().contains("AIza"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_429_seen_by_one_replica_makes_the_other_skip_that_key() {
    let redis = RedisServer::start();
    let fake = FakeUpstream::start().await;
    let keys = "AIzaSkipKey000000001,AIzaSkipKey000000002";
    let a = start_replica(
        &fake.url,
        &redis.url,
        keys,
        &[("PROXY_CLIENT_KEYS", CLIENT_KEY)],
    );
    let b = start_replica(&fake.url, &redis.url, keys, &[]);
    // The first call through A gets Google's per-day 429 on whichever key it used; A retries on
    // the other key, and from then on B never sends to the exhausted key either.
    fake.behave(|f| f.script.push_back(Scripted::PerDay429));
    assert_eq!(
        generate(&a.url, "gemini-2.5-flash", "one").await.status(),
        200
    );
    let calls = fake.calls(":generateContent");
    assert_eq!(calls.len(), 2);
    let exhausted = calls[0].key().unwrap();
    for _ in 0..4 {
        assert_eq!(
            generate(&b.url, "gemini-2.5-flash", "two").await.status(),
            200
        );
    }
    let later = &fake.calls(":generateContent")[2..];
    assert_eq!(later.len(), 4);
    assert!(
        later.iter().all(|r| r.key().unwrap() != exhausted),
        "B used the key A saw exhausted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_password_with_a_comma_is_one_url_not_a_list_of_cluster_seeds() {
    let redis = RedisServer::start();
    let password = "pa,ss,word";
    assert!(
        redis
            .cli(&["CONFIG", "SET", "requirepass", password])
            .is_some()
    );
    let fake = FakeUpstream::start().await;
    let url = format!("redis://:{password}@127.0.0.1:{}", redis.port);
    let proxy = start_replica(&fake.url, &url, "AIzaCommaKey00000001", &[]);
    assert_eq!(
        generate(&proxy.url, "gemini-2.5-flash", "hi")
            .await
            .status()
            .as_u16(),
        200
    );
    let (_, status) = quota_status(&proxy.url, CLIENT_KEY).await;
    assert_eq!(
        status["quota_status"]["store"]["backend"], "redis",
        "{status}"
    );
    assert_eq!(
        status["quota_status"]["store"]["reachable"], true,
        "{status}"
    );
    assert!(
        eventually(Duration::from_secs(5), || proxy
            .logs()
            .contains("connected to Redis mode=\"single node\""))
        .await,
        "{}",
        proxy.logs()
    );
    let logs = proxy.logs();
    assert!(
        !logs.contains("pa,ss") && !logs.contains("ss,word"),
        "the password in a log line"
    );
}
