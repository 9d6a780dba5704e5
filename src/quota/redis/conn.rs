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
//!
//! The Cluster client follows `MOVED` and refreshes its topology when a node refuses or drops
//! its connection, but a master that hangs (a stopped process, a partitioned host) only makes
//! its calls time out, and the client keeps sending there after its replica was promoted. So a
//! call that fails for want of an answer (a timeout, a lost or refused connection, a Cluster
//! error left after the client's own retries) gets the Cluster connection rebuilt from the
//! seeds and every node the cluster last named, at most once a second, in the background.

use parking_lot::{Mutex, RwLock};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{Cmd, FromRedisValue, Pipeline, RedisError, RedisFuture, RedisResult, Value};

use super::super::{RedisTls, StoreError};
use super::nodes::{cluster_client, like, open_client, seed_urls, slot_nodes, tls_certificates};
use crate::secret::Secret;

mod rebuild;

use rebuild::{REBUILD_GAP, Rebuild, Watch};

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
    /// The nodes the cluster named when last asked, as URLs like the first seed's: a rebuild
    /// starts from them too, so a seed that hangs or is gone does not stop it.
    known: Mutex<Vec<Secret>>,
    /// The TLS material of `rediss://` seeds (roots, client certificate), made once.
    certs: Option<redis::TlsCertificates>,
    timeout: Duration,
    link: RwLock<Option<Link>>,
    attempt: Mutex<Option<Attempt>>,
    rebuild: Mutex<Rebuild>,
    /// When this handle was made, and when (ms after that) a Cluster call was last answered:
    /// a call that times out while others are answered is load, not a stale connection.
    born: Instant,
    answered_ms: AtomicU64,
    /// The least time between two rebuilds now: [`REBUILD_GAP`], doubled by each rebuild up to
    /// `rebuild::REBUILD_GAP_MAX` while calls stay unanswered (a whole cluster down), back to
    /// [`REBUILD_GAP`] at the first answer.
    gap_ms: AtomicU64,
}

impl Inner {
    fn current(&self) -> Option<Link> {
        self.link.read().clone()
    }
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
        // The system's roots are read and encoded once, not per connection (seeds are all
        // `redis://` or all `rediss://`, `config::store`).
        let certs = tls_certificates(seeds[0].expose(), tls);
        // Check every seed now, so a malformed one stops start-up rather than every call.
        for s in &seeds {
            open_client(s, certs.as_ref())?;
        }
        if seeds.len() > 1 {
            cluster_client(&seeds, certs.as_ref(), timeout)?;
        }
        Ok(RedisConn {
            inner: Arc::new(Inner {
                seeds,
                known: Mutex::new(Vec::new()),
                certs,
                timeout,
                link: RwLock::new(None),
                attempt: Mutex::new(None),
                rebuild: Mutex::new(Rebuild::default()),
                born: Instant::now(),
                answered_ms: AtomicU64::new(0),
                gap_ms: AtomicU64::new(REBUILD_GAP.as_millis() as u64),
            }),
        })
    }

    /// `"cluster"`, `"node"`, or `"unknown"` before first contact.
    pub fn mode(&self) -> &'static str {
        match self.inner.current() {
            Some(Link::Cluster(_)) => "cluster",
            Some(Link::Node(_)) => "node",
            None => "unknown",
        }
    }

    /// The connection, making first contact if it was not made yet.
    async fn link(&self) -> RedisResult<Link> {
        if let Some(l) = self.inner.current() {
            return Ok(l);
        }
        let attempt = {
            let mut slot = self.inner.attempt.lock();
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
            if let Some(l) = self.inner.current() {
                return Ok(l);
            }
            return Err(RedisError::from((
                redis::ErrorKind::Io,
                "Redis not reached",
                e.to_string(),
            )));
        }
        self.inner.current().ok_or_else(|| {
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
                let watch = Watch::new(&self.inner);
                let v = c.route_command(cmd.clone(), route).await;
                watch.saw(&v);
                Ok(T::from_redis_value(v?)?)
            }
        }
    }
}

/// First contact: the one seed is asked whether it is a Cluster node (several seeds mean a
/// Cluster), and the matching connection is made and kept.
async fn connect(inner: &Inner) -> Result<(), Arc<str>> {
    let err = |e: RedisError| Arc::<str>::from(e.to_string());
    let t = inner.timeout;
    // One seed: its client, kept for the connection if it is not a Cluster node.
    let mut single = None;
    let cluster = match inner.seeds.as_slice() {
        [one] => {
            let client =
                open_client(one, inner.certs.as_ref()).map_err(|e| Arc::from(e.to_string()))?;
            let cfg = redis::AsyncConnectionConfig::new()
                .set_connection_timeout(Some(t))
                .set_response_timeout(Some(t));
            let mut probe = client
                .get_multiplexed_async_connection_with_config(&cfg)
                .await
                .map_err(err)?;
            single = Some(client);
            match redis::cmd("INFO")
                .arg("cluster")
                .query_async::<String>(&mut probe)
                .await
            {
                Ok(info) => info.lines().any(|l| l.trim() == "cluster_enabled:1"),
                // An unanswered server is not reached at all.
                Err(e) if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() => {
                    return Err(err(e));
                }
                // A server that refuses INFO (renamed by a managed service, or an ACL user
                // without @dangerous): a cluster node still answers CLUSTER MYID (a single
                // node refuses it, cluster support disabled).
                Err(_) => redis::cmd("CLUSTER")
                    .arg("MYID")
                    .query_async::<String>(&mut probe)
                    .await
                    .is_ok(),
            }
        }
        _ => true,
    };
    let link = match single.filter(|_| !cluster) {
        None => cluster_link(inner).await?,
        Some(client) => {
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
        }
    };
    let mode = if cluster { "cluster" } else { "single node" };
    let mut slot = inner.link.write();
    if slot.is_none() {
        *slot = Some(link);
        tracing::info!(mode, seeds = inner.seeds.len(), "connected to Redis");
    }
    Ok(())
}

/// A new Cluster connection, from the seeds and the nodes the cluster named last time; the
/// nodes it names now are kept for the next one.
async fn cluster_link(inner: &Inner) -> Result<Link, Arc<str>> {
    let mut seeds = inner.seeds.clone();
    for k in inner.known.lock().iter() {
        if !seeds.iter().any(|s| s.expose() == k.expose()) {
            seeds.push(k.clone());
        }
    }
    let client = cluster_client(&seeds, inner.certs.as_ref(), inner.timeout)
        .map_err(|e| Arc::from(e.to_string()))?;
    let mut conn = client
        .get_async_connection()
        .await
        .map_err(|e| Arc::<str>::from(e.to_string()))?;
    // The nodes serving slots now (a failure to ask is no failure to connect).
    let slots = RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random);
    if let Ok(v) = conn
        .route_command(redis::cmd("CLUSTER").arg("SLOTS").clone(), slots)
        .await
    {
        let first = inner.seeds[0].expose();
        let nodes: Vec<Secret> = slot_nodes(&v)
            .into_iter()
            .map(|hp| Secret::new(like(first, &hp)))
            .collect();
        if !nodes.is_empty() {
            *inner.known.lock() = nodes;
        }
    }
    Ok(Link::Cluster(conn))
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            match self.link().await? {
                Link::Node(mut c) => c.req_packed_command(cmd).await,
                Link::Cluster(mut c) => {
                    let watch = Watch::new(&self.inner);
                    let r = c.req_packed_command(cmd).await;
                    watch.saw(&r);
                    r
                }
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
                Link::Cluster(mut c) => {
                    let watch = Watch::new(&self.inner);
                    let r = c.req_packed_commands(cmd, offset, count).await;
                    watch.saw(&r);
                    r
                }
            }
        })
    }

    fn get_db(&self) -> i64 {
        match self.inner.current() {
            Some(Link::Node(c)) => c.get_db(),
            _ => 0,
        }
    }
}
