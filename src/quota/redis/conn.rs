//! The connection to Redis: one node (a `ConnectionManager`) or a Redis Cluster (a
//! `ClusterConnection`, which follows `MOVED`/`ASK` and refreshes its view of the topology),
//! chosen at first contact and shared behind one clonable handle by every Redis user of the
//! proxy (quota store, settle writer, ledger, cache, alert claims).
//!
//! Cluster mode is taken when `store.redis_url` lists several seed nodes (comma-separated), or
//! when the one node named answers `INFO cluster` with `cluster_enabled:1`. Contact is made
//! lazily: building a handle never waits for Redis, and until the first contact succeeds every
//! call tries it again (one attempt at a time, run in its own task so a caller's deadline does
//! not cut it short), so a proxy started while Redis is down attaches when it comes up.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{Cmd, FromRedisValue, Pipeline, RedisError, RedisFuture, RedisResult, Value};

use super::super::{RedisTls, StoreError};
use crate::secret::Secret;

/// What the handle reaches once contact is made.
#[derive(Clone)]
enum Link {
    Node(ConnectionManager),
    Cluster(ClusterConnection),
}

/// One attempt at first contact, shared by every caller waiting on it.
type Attempt = Shared<BoxFuture<'static, Result<(), Arc<str>>>>;

struct Inner {
    /// The seed URLs (credentials included: never printed).
    seeds: Vec<Secret>,
    tls: RedisTls,
    timeout: Duration,
    link: OnceLock<Link>,
    attempt: Mutex<Option<Attempt>>,
}

/// A clonable handle on the store's Redis, one node or a Cluster (see the module docs).
#[derive(Clone)]
pub struct RedisConn {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RedisConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConn")
            .field("seeds", &self.inner.seeds.len())
            .field("mode", &self.mode())
            .finish()
    }
}

/// The seed URLs of `url`: a comma-separated list, each a full `redis://`/`rediss://` URL or a
/// bare `host:port` that takes the first URL's scheme, user and password.
pub fn seed_urls(url: &str) -> Vec<String> {
    let mut parts = url.split(',').map(str::trim).filter(|s| !s.is_empty());
    let Some(first) = parts.next() else {
        return Vec::new();
    };
    // `scheme://` and `user:password@` of the first URL, for bare host:port seeds.
    let (scheme, rest) = first.split_once("://").unwrap_or(("redis", first));
    let authority = &rest[..rest.find('/').unwrap_or(rest.len())];
    let userinfo = authority.rfind('@').map_or("", |at| &authority[..=at]);
    let mut out = vec![first.to_string()];
    for p in parts {
        if p.contains("://") {
            out.push(p.to_string());
        } else {
            out.push(format!("{scheme}://{userinfo}{p}"));
        }
    }
    out
}

impl RedisConn {
    /// A handle on `url` (one node, or a comma-separated list of Cluster seed nodes), each
    /// call's connection and answer bounded by `timeout`, with `tls` for `rediss://`. Fails
    /// only on a URL (or TLS material) that cannot work; never waits for Redis.
    pub fn new(url: &Secret, tls: &RedisTls, timeout: Duration) -> Result<Self, StoreError> {
        let seeds: Vec<Secret> = seed_urls(url.expose())
            .into_iter()
            .map(Secret::new)
            .collect();
        if seeds.is_empty() {
            return Err(StoreError::Unreachable("no Redis URL configured".into()));
        }
        // Check every seed now, so a malformed one stops start-up rather than every call.
        for s in &seeds {
            open_client(s, tls)?;
        }
        if seeds.len() > 1 {
            cluster_client(&seeds, tls, timeout)?;
        }
        Ok(RedisConn {
            inner: Arc::new(Inner {
                seeds,
                tls: tls.clone(),
                timeout,
                link: OnceLock::new(),
                attempt: Mutex::new(None),
            }),
        })
    }

    /// `"cluster"`, `"node"`, or `"unknown"` before first contact.
    pub fn mode(&self) -> &'static str {
        match self.inner.link.get() {
            Some(Link::Cluster(_)) => "cluster",
            Some(Link::Node(_)) => "node",
            None => "unknown",
        }
    }

    /// The connection, making first contact if it was not made yet.
    async fn link(&self) -> RedisResult<Link> {
        if let Some(l) = self.inner.link.get() {
            return Ok(l.clone());
        }
        let attempt = {
            let mut slot = self.inner.attempt.lock().unwrap_or_else(|p| p.into_inner());
            match slot.as_ref() {
                // One in flight: wait for it. A finished one that failed is replaced.
                Some(a) if a.peek().is_none() => a.clone(),
                _ => {
                    let inner = self.inner.clone();
                    let task = tokio::spawn(async move { connect(&inner).await });
                    let a: Attempt = async move {
                        match task.await {
                            Ok(r) => r,
                            Err(e) => Err(Arc::from(e.to_string())),
                        }
                    }
                    .boxed()
                    .shared();
                    *slot = Some(a.clone());
                    a
                }
            }
        };
        if let Err(e) = attempt.await {
            // A link made meanwhile by a later attempt counts.
            if let Some(l) = self.inner.link.get() {
                return Ok(l.clone());
            }
            return Err(RedisError::from((
                redis::ErrorKind::Io,
                "Redis not reached",
                e.to_string(),
            )));
        }
        self.inner.link.get().cloned().ok_or_else(|| {
            RedisError::from((redis::ErrorKind::Io, "Redis not reached (no link kept)"))
        })
    }

    /// Run `cmd`, a command naming no key (such as `SCAN`), on the node that serves `key`'s slot
    /// (its master): in a Cluster a keyless command would otherwise go to any node. On one
    /// node that node runs it.
    pub async fn query_at<T: FromRedisValue>(&self, key: &str, cmd: &Cmd) -> RedisResult<T> {
        match self.link().await? {
            Link::Node(mut c) => cmd.query_async(&mut c).await,
            Link::Cluster(mut c) => {
                let route = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(
                    Route::with_key(key, SlotAddr::Master),
                ));
                let v = c.route_command(cmd.clone(), route).await?;
                Ok(T::from_redis_value(v)?)
            }
        }
    }
}

/// First contact: the one seed is asked whether it is a Cluster node (several seeds mean a
/// Cluster), and the matching connection is made and kept.
async fn connect(inner: &Inner) -> Result<(), Arc<str>> {
    let err = |e: RedisError| Arc::<str>::from(e.to_string());
    let t = inner.timeout;
    let cluster = match inner.seeds.as_slice() {
        [one] => {
            let client = open_client(one, &inner.tls).map_err(|e| Arc::from(e.to_string()))?;
            let cfg = redis::AsyncConnectionConfig::new()
                .set_connection_timeout(Some(t))
                .set_response_timeout(Some(t));
            let mut probe = client
                .get_multiplexed_async_connection_with_config(&cfg)
                .await
                .map_err(err)?;
            match redis::cmd("INFO")
                .arg("cluster")
                .query_async::<String>(&mut probe)
                .await
            {
                Ok(info) => info.lines().any(|l| l.trim() == "cluster_enabled:1"),
                // A server that refuses INFO (renamed or disabled by a managed service) is
                // taken as one node; an unanswered one is not reached at all.
                Err(e) if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() => {
                    return Err(err(e));
                }
                Err(_) => false,
            }
        }
        _ => true,
    };
    let link = if cluster {
        let client =
            cluster_client(&inner.seeds, &inner.tls, t).map_err(|e| Arc::from(e.to_string()))?;
        Link::Cluster(client.get_async_connection().await.map_err(err)?)
    } else {
        let client =
            open_client(&inner.seeds[0], &inner.tls).map_err(|e| Arc::from(e.to_string()))?;
        let cfg = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(t))
            .set_response_timeout(Some(t))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        Link::Node(
            ConnectionManager::new_with_config(client, cfg)
                .await
                .map_err(err)?,
        )
    };
    let mode = if cluster { "cluster" } else { "single node" };
    if inner.link.set(link).is_ok() {
        tracing::info!(mode, seeds = inner.seeds.len(), "connected to Redis");
    }
    Ok(())
}

/// The Cluster client for `seeds`: every connection and answer bounded by `timeout`, a
/// request's retries (after `MOVED`, a lost node) within that same deadline, and TLS as for
/// one node.
fn cluster_client(
    seeds: &[Secret],
    tls: &RedisTls,
    timeout: Duration,
) -> Result<redis::cluster::ClusterClient, StoreError> {
    let mut b = ClusterClientBuilder::new(seeds.iter().map(|s| s.expose().to_string()))
        .connection_timeout(timeout)
        .response_timeout(timeout)
        // A retry (a redirect, a reconnect) waits 5 ms to a tenth of the deadline, never the
        // crate's default of over a second: the whole request is bounded by `timeout`.
        .retries(3)
        .min_retry_wait(5)
        .max_retry_wait((timeout.as_millis() as u64 / 10).max(6));
    if let Some(certs) = tls_certificates(seeds[0].expose(), tls) {
        b = b.certs(certs);
    }
    b.build().map_err(|e| {
        StoreError::Unreachable(format!("invalid Redis Cluster seeds: {:?}", e.kind()))
    })
}

/// The Redis client for one node at `url`: plain, or over rustls for `rediss://`, trusting the
/// system's roots plus `tls.ca`.
fn open_client(url: &Secret, tls: &RedisTls) -> Result<redis::Client, StoreError> {
    let invalid =
        |e: RedisError| StoreError::Unreachable(format!("invalid Redis URL: {:?}", e.kind()));
    match tls_certificates(url.expose(), tls) {
        None => redis::Client::open(url.expose()).map_err(invalid),
        Some(certs) => redis::Client::build_with_tls(url.expose(), certs).map_err(|e| {
            StoreError::Unreachable(format!("Redis TLS setup failed: {:?}", e.kind()))
        }),
    }
}

/// The TLS material for a `rediss://` URL given any `tls` setting: roots (the system's plus
/// `tls.ca`: the redis crate takes one PEM bundle of roots, so both go into it) and a client
/// certificate. `None`: plain, or the crate's defaults.
fn tls_certificates(url: &str, tls: &RedisTls) -> Option<redis::TlsCertificates> {
    if !url.starts_with("rediss://") || *tls == RedisTls::default() {
        return None;
    }
    let root_cert = (!tls.ca.is_empty()).then(|| {
        let mut pem = Vec::new();
        let native = rustls_native_certs::load_native_certs();
        for der in native.certs.iter().chain(tls.ca.iter()) {
            pem_block(&mut pem, der.as_ref());
        }
        pem
    });
    let client_tls = tls
        .client
        .as_ref()
        .map(|(cert, key)| redis::ClientTlsConfig {
            client_cert: cert.clone(),
            client_key: key.expose().as_bytes().to_vec(),
        });
    Some(redis::TlsCertificates {
        client_tls,
        root_cert,
    })
}

/// Append `der` to `out` as one PEM certificate block.
fn pem_block(out: &mut Vec<u8>, der: &[u8]) {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    out.extend_from_slice(b"-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.extend_from_slice(line);
        out.push(b'\n');
    }
    out.extend_from_slice(b"-----END CERTIFICATE-----\n");
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            match self.link().await? {
                Link::Node(mut c) => c.req_packed_command(cmd).await,
                Link::Cluster(mut c) => c.req_packed_command(cmd).await,
            }
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            match self.link().await? {
                Link::Node(mut c) => c.req_packed_commands(cmd, offset, count).await,
                Link::Cluster(mut c) => c.req_packed_commands(cmd, offset, count).await,
            }
        })
    }

    fn get_db(&self) -> i64 {
        match self.inner.link.get() {
            Some(Link::Node(c)) => c.get_db(),
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::seed_urls;

    #[test]
    fn a_comma_list_names_cluster_seeds_and_bare_hosts_borrow_the_first_urls_scheme_and_password() {
        assert_eq!(seed_urls("redis://h:1"), vec!["redis://h:1"]);
        assert_eq!(
            seed_urls("rediss://:pw@a:7000, b:7001 ,rediss://c:7002,"),
            vec![
                "rediss://:pw@a:7000",
                "rediss://:pw@b:7001",
                "rediss://c:7002"
            ]
        );
        assert_eq!(
            seed_urls("redis://a:1/0,b:2"),
            vec!["redis://a:1/0", "redis://b:2"]
        );
        assert!(seed_urls(" , ").is_empty());
    }
}
