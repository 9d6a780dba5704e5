//! Redis `QuotaStore`: one `EVALSHA` of a Lua script (Redis `TIME`, one `{hash tag}`) admits a
//! request; every call has a deadline; raw API keys never reach Redis (key ids only).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono_tz::Tz;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{FromRedisValue, Script, Value};

use super::{
    AdmitOutcome, AdmitRequest, Clock, Cooldown, DayCache, DayInfo, KeyState, QuotaStore,
    Reservation, ResetKind, ResetScope, StoreError, SystemClock, Usage,
};
use super::{RedisTls, StoreConfig};
use crate::secret::Secret;

mod admit;
mod settle;

pub use self::settle::{HashAdd, RideOutcome, Rider, RiderBatch};
use self::settle::{
    PendingSettle, RiderSlot, SETTLE_QUEUE, ride_outcome, settle_call, settle_writer,
};

macro_rules! lua {
    ($file:literal) => {
        concat!(
            include_str!("lua/prelude.lua"),
            include_str!(concat!("lua/", $file))
        )
    };
}

/// The Redis client for `url`: plain, or over rustls for `rediss://`, trusting the system's
/// roots plus `tls.ca` (the redis crate takes one PEM bundle of roots, so both go into it).
fn open_client(url: &Secret, tls: &RedisTls) -> Result<redis::Client, StoreError> {
    let invalid = |e: redis::RedisError| {
        StoreError::Unreachable(format!("invalid Redis URL: {:?}", e.kind()))
    };
    if !url.expose().starts_with("rediss://") || *tls == RedisTls::default() {
        return redis::Client::open(url.expose()).map_err(invalid);
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
    redis::Client::build_with_tls(
        url.expose(),
        redis::TlsCertificates {
            client_tls,
            root_cert,
        },
    )
    .map_err(|e| StoreError::Unreachable(format!("Redis TLS setup failed: {:?}", e.kind())))
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

/// Quota state shared by every replica pointed at one Redis.
pub struct RedisStore {
    conn: ConnectionManager,
    /// `{namespace}`: every key starts with it, so all keys share one cluster slot.
    prefix: String,
    timeout: Duration,
    days: DayCache,
    /// `None` in production (Redis `TIME`); tests inject a clock to travel in time.
    clock: Option<Arc<dyn Clock>>,
    admit: Script,
    settle: Script,
    usage: Script,
    cooldown: Script,
    reset: Script,
    /// Settlements waiting for the batch writer.
    settle_queue: tokio::sync::mpsc::Sender<PendingSettle>,
    /// What rides along with settlement batches (the usage ledger), once attached.
    rider: RiderSlot,
}

/// The usage ledger's way into the same Redis: its sums ride with settlement batches (see
/// [`Rider`]) and it reads its buckets back with [`SharedIo::read_hashes`]. Cheap to clone.
#[derive(Clone)]
pub struct SharedIo {
    conn: ConnectionManager,
    prefix: String,
    timeout: Duration,
    rider: RiderSlot,
    settle: Script,
}

impl std::fmt::Debug for SharedIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedIo")
            .field("prefix", &self.prefix)
            .finish()
    }
}

/// Hashes read per pipeline (one round trip each, under the store's deadline): a busy minute
/// of the ledger holds thousands of fields, so a pipeline stays small enough to answer in time.
const READ_CHUNK: usize = 8;

impl SharedIo {
    /// Attach the rider (once; a second call is ignored and returns false).
    pub fn attach(&self, rider: Arc<dyn Rider>) -> bool {
        self.rider.set(rider).is_ok()
    }

    /// `HGETALL` of every `{ns}:SUFFIX`, pipelined; a missing hash reads as empty.
    pub async fn read_hashes(
        &self,
        suffixes: &[String],
    ) -> Result<Vec<Vec<(String, String)>>, StoreError> {
        let mut out = Vec::with_capacity(suffixes.len());
        for chunk in suffixes.chunks(READ_CHUNK) {
            let mut pipe = redis::pipe();
            for s in chunk {
                pipe.cmd("HGETALL").arg(format!("{}:{s}", self.prefix));
            }
            let mut conn = self.conn.clone();
            let got: Vec<Vec<(String, String)>> =
                match tokio::time::timeout(self.timeout, pipe.query_async(&mut conn)).await {
                    Ok(r) => r.map_err(store_err)?,
                    Err(_) => return Err(StoreError::Timeout(self.timeout.as_millis() as u64)),
                };
            out.extend(got);
        }
        Ok(out)
    }

    /// Add `batch` now, in a call of its own (at shutdown: the last sums, not waiting for the
    /// next settlement batch).
    pub async fn write_now(&self, batch: &RiderBatch) -> (RideOutcome, Option<String>) {
        let inv = settle_call(&self.settle, &self.prefix, &[], Some(batch));
        let mut conn = self.conn.clone();
        match tokio::time::timeout(self.timeout, inv.invoke_async::<i64>(&mut conn)).await {
            Ok(Ok(_)) => (RideOutcome::Written, None),
            Ok(Err(e)) => (ride_outcome(&e), Some(e.to_string())),
            Err(_) => (RideOutcome::Retry, Some("timed out".into())),
        }
    }

    /// Run `script` with `KEYS` = `{ns}:SUFFIX` for each suffix (so every key shares the
    /// namespace's hash tag) and `args`, under the store's deadline.
    pub async fn run_script(
        &self,
        script: &Script,
        suffixes: &[String],
        args: &[String],
    ) -> Result<i64, StoreError> {
        let mut inv = script.prepare_invoke();
        for s in suffixes {
            inv.key(format!("{}:{s}", self.prefix));
        }
        for a in args {
            inv.arg(a);
        }
        let mut conn = self.conn.clone();
        match tokio::time::timeout(self.timeout, inv.invoke_async::<i64>(&mut conn)).await {
            Ok(r) => r.map_err(store_err),
            Err(_) => Err(StoreError::Timeout(self.timeout.as_millis() as u64)),
        }
    }

    /// The connection (shared with the store; cloning it is cheap).
    pub fn connection(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// `{namespace}`: the hash tag every key of this store starts with.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The deadline of one call.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// `GET {ns}:SUFFIX`.
    pub async fn get(&self, suffix: &str) -> Result<Option<String>, StoreError> {
        let mut conn = self.conn.clone();
        let mut cmd = redis::cmd("GET");
        cmd.arg(format!("{}:{suffix}", self.prefix));
        match tokio::time::timeout(self.timeout, cmd.query_async(&mut conn)).await {
            Ok(r) => r.map_err(store_err),
            Err(_) => Err(StoreError::Timeout(self.timeout.as_millis() as u64)),
        }
    }
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .finish()
    }
}

fn store_err(e: redis::RedisError) -> StoreError {
    if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() || e.is_timeout() {
        StoreError::Unreachable(e.to_string())
    } else {
        StoreError::Protocol(e.to_string())
    }
}

/// A Redis URL fit for a log line: any user and password replaced by `***`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "(not a URL)".into();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://***@{}", &rest[at + 1..]),
        None => url.to_string(),
    }
}

impl RedisStore {
    /// Connects lazily: construction never waits for Redis, so the proxy starts (degraded)
    /// while Redis is down and attaches when it comes up.
    /// The store `cfg` names (`cfg.redis_url` must be set), its day in `tz`.
    pub fn new(cfg: &StoreConfig, tz: Tz) -> Result<Self, StoreError> {
        let Some(url) = &cfg.redis_url else {
            return Err(StoreError::Unreachable("no Redis URL configured".into()));
        };
        Self::connect_tls(url, &cfg.namespace, cfg.timeout, tz, &cfg.tls)
    }

    /// A store at `url` under `namespace`, each call bounded by `timeout`, its day in `tz`.
    pub fn connect(
        url: &Secret,
        namespace: &str,
        timeout: Duration,
        tz: Tz,
    ) -> Result<Self, StoreError> {
        Self::connect_tls(url, namespace, timeout, tz, &RedisTls::default())
    }

    /// [`RedisStore::connect`], with `tls` for a `rediss://` URL (trust roots beside the
    /// system's, a client certificate).
    pub fn connect_tls(
        url: &Secret,
        namespace: &str,
        timeout: Duration,
        tz: Tz,
        tls: &RedisTls,
    ) -> Result<Self, StoreError> {
        let client = open_client(url, tls)?;
        let cfg = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        let conn = ConnectionManager::new_lazy_with_config(client, cfg).map_err(store_err)?;
        let prefix = format!("{{{namespace}}}");
        let settle = Script::new(lua!("settle.lua"));
        let (settle_queue, rx) = tokio::sync::mpsc::channel(SETTLE_QUEUE);
        let rider = RiderSlot::default();
        tokio::spawn(settle_writer(
            rx,
            conn.clone(),
            settle.clone(),
            prefix.clone(),
            timeout,
            rider.clone(),
        ));
        let admit = Script::new(lua!("admit.lua"));
        tokio::spawn(preload(conn.clone(), vec![admit.clone(), settle.clone()]));
        Ok(RedisStore {
            conn,
            prefix,
            timeout,
            days: DayCache::new(tz),
            clock: None,
            admit,
            settle,
            settle_queue,
            rider,
            usage: Script::new(lua!("usage.lua")),
            cooldown: Script::new(lua!("cooldown.lua")),
            reset: Script::new(lua!("reset.lua")),
        })
    }

    /// The ledger's handle on this Redis (same connection, same namespace).
    pub fn shared_io(&self) -> SharedIo {
        SharedIo {
            conn: self.conn.clone(),
            prefix: self.prefix.clone(),
            timeout: self.timeout,
            rider: self.rider.clone(),
            settle: self.settle.clone(),
        }
    }

    /// Count over a sliding window of `ms` instead of Google's 60 s (`limits.window_secs`,
    /// which tests shorten): the scripts that read the window are loaded with it written in.
    pub fn with_window(mut self, ms: u64) -> Self {
        let ms = ms.clamp(1, super::MAX_HOLD_MS);
        if ms != super::MINUTE_MS as u64 {
            let set = |src: &str| {
                Script::new(&src.replacen("local W = 60000", &format!("local W = {ms}"), 1))
            };
            self.admit = set(lua!("admit.lua"));
            self.usage = set(lua!("usage.lua"));
        }
        self
    }

    /// Use `clock` instead of Redis `TIME` (tests only: lets one suite travel in time).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = Some(clock);
        self
    }

    fn now_arg(&self) -> String {
        self.clock
            .as_ref()
            .map(|c| c.now_ms().to_string())
            .unwrap_or_default()
    }

    fn day(&self) -> DayInfo {
        let now = match &self.clock {
            Some(c) => c.now_ms(),
            None => SystemClock.now_ms(),
        };
        self.days.at(now)
    }

    /// The routing key every script declares (all keys it builds share its hash tag).
    fn route_key(&self) -> String {
        format!("{}:seq", self.prefix)
    }

    async fn run<T: FromRedisValue>(
        &self,
        inv: redis::ScriptInvocation<'_>,
    ) -> Result<T, StoreError> {
        let mut conn = self.conn.clone();
        self.deadline(inv.invoke_async(&mut conn)).await
    }

    /// Every store call gets `timeout`; Redis errors become `StoreError`s.
    async fn deadline<T>(
        &self,
        call: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(r) => r.map_err(store_err),
            Err(_) => Err(StoreError::Timeout(self.timeout.as_millis() as u64)),
        }
    }

    async fn cmd<T: FromRedisValue>(&self, cmd: redis::Cmd) -> Result<T, StoreError> {
        let mut conn = self.conn.clone();
        self.deadline(cmd.query_async(&mut conn)).await
    }
}

/// Loads the request-path scripts once Redis answers, so the first burst of requests does not
/// each pay a `NOSCRIPT` round trip. (After a Redis restart the client reloads on `NOSCRIPT`.)
async fn preload(conn: ConnectionManager, scripts: Vec<Script>) {
    for _ in 0..120 {
        let mut c = conn.clone();
        let mut ok = true;
        for s in &scripts {
            ok &= s.load_async(&mut c).await.is_ok();
        }
        if ok {
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// An integer in a script's answer.
fn int(v: &Value) -> Result<i64, StoreError> {
    match v {
        Value::Int(i) => Ok(*i),
        other => Err(StoreError::Protocol(format!(
            "expected an integer, got {other:?}"
        ))),
    }
}

#[async_trait]
impl QuotaStore for RedisStore {
    async fn admit(&self, req: &AdmitRequest) -> Result<AdmitOutcome, StoreError> {
        self.admit_script(req).await
    }

    async fn settle(&self, r: &Reservation, actual_tokens: u64) -> Result<(), StoreError> {
        if r.uncounted {
            return Ok(());
        }
        let mut inv = self.settle.prepare_invoke();
        inv.key(self.route_key())
            .key(format!("{}:led:since", self.prefix))
            .key(format!("{}:led:done:", self.prefix))
            .key(format!("{}:led:late", self.prefix))
            .arg(&self.prefix)
            .arg(1)
            .arg(&*r.project)
            .arg(&r.model)
            .arg(r.id)
            .arg(actual_tokens);
        let _: i64 = self.run(inv).await?;
        Ok(())
    }

    fn settle_later(&self, r: &Reservation, actual_tokens: u64) -> bool {
        if r.uncounted {
            return true;
        }
        let pending = PendingSettle {
            project: r.project.clone(),
            model: r.model.clone(),
            id: r.id,
            tokens: actual_tokens,
        };
        if self.settle_queue.try_send(pending).is_err() {
            tracing::warn!("settlement queue full: this request's estimate stays counted");
        }
        true
    }

    async fn usage(&self) -> Result<Vec<(String, String, Usage)>, StoreError> {
        let di = self.day();
        let mut inv = self.usage.prepare_invoke();
        inv.key(self.route_key())
            .arg(&self.prefix)
            .arg(di.offset_ms)
            .arg(self.now_arg());
        let v: Vec<Value> = self.run(inv).await?;
        let mut out = Vec::new();
        for chunk in v.chunks(4) {
            let [pm, c, t, d] = chunk else {
                return Err(StoreError::Protocol(
                    "usage script answered a partial row".into(),
                ));
            };
            let pm = String::from_redis_value(pm.clone())
                .map_err(|e| StoreError::Protocol(e.to_string()))?;
            let Some((project, model)) = pm.split_once('|') else {
                continue;
            };
            out.push((
                project.to_string(),
                model.to_string(),
                Usage {
                    minute_requests: int(c)?.max(0) as u64,
                    minute_tokens: int(t)?.max(0) as u64,
                    daily_requests: int(d)?.max(0) as u64,
                },
            ));
        }
        out.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        Ok(out)
    }

    async fn cool_down(
        &self,
        project: &str,
        model: &str,
        ms: u64,
        reason: &str,
    ) -> Result<(), StoreError> {
        let mut inv = self.cooldown.prepare_invoke();
        inv.key(self.route_key())
            .arg(&self.prefix)
            .arg(project)
            .arg(model)
            .arg(ms.clamp(1, super::MAX_HOLD_MS))
            .arg(reason)
            .arg(self.now_arg());
        let _: i64 = self.run(inv).await?;
        Ok(())
    }

    async fn cooldowns(&self) -> Result<Vec<Cooldown>, StoreError> {
        let members: Vec<String> = self
            .cmd(
                redis::cmd("SMEMBERS")
                    .arg(format!("{}:cds", self.prefix))
                    .clone(),
            )
            .await?;
        if members.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for pm in &members {
            if let Some((p, m)) = pm.split_once('|') {
                let k = format!("{}:cd:{p}:{m}", self.prefix);
                pipe.cmd("PTTL").arg(&k).cmd("GET").arg(&k);
            }
        }
        let mut conn = self.conn.clone();
        let v: Vec<Value> = self.deadline(pipe.query_async(&mut conn)).await?;
        let mut out = Vec::new();
        for (pm, pair) in members
            .iter()
            .filter(|pm| pm.contains('|'))
            .zip(v.chunks(2))
        {
            let (p, m) = pm.split_once('|').unwrap_or_default();
            let ttl = pair.first().map(int).transpose()?.unwrap_or(-2);
            if ttl > 0 {
                // The value is "until_ms|reason".
                let reason = pair
                    .get(1)
                    .and_then(|r| String::from_redis_value(r.clone()).ok())
                    .map(|v| v.split_once('|').map_or(v.clone(), |(_, r)| r.to_string()))
                    .unwrap_or_default();
                out.push(Cooldown {
                    project: p.to_string(),
                    model: m.to_string(),
                    remaining_ms: ttl as u64,
                    reason,
                });
            }
        }
        out.sort_by(|a, b| (&a.project, &a.model).cmp(&(&b.project, &b.model)));
        Ok(out)
    }

    async fn disable_key(&self, kid: &str, reason: &str) -> Result<(), StoreError> {
        // Thirty days: long enough to mean "until an admin acts", short enough to expire.
        let _: () = self
            .cmd(
                redis::cmd("SET")
                    .arg(format!("{}:dis:{kid}", self.prefix))
                    .arg(reason)
                    .arg("PX")
                    .arg(30u64 * 86_400_000)
                    .clone(),
            )
            .await?;
        Ok(())
    }

    async fn key_states(&self, kids: &[Arc<str>]) -> Result<Vec<KeyState>, StoreError> {
        if kids.is_empty() {
            return Ok(Vec::new());
        }
        let mut cmd = redis::cmd("MGET");
        for k in kids {
            cmd.arg(format!("{}:dis:{k}", self.prefix));
        }
        let v: Vec<Option<String>> = self.cmd(cmd).await?;
        Ok(v.into_iter()
            .map(|r| match r {
                Some(reason) => KeyState::Disabled { reason },
                None => KeyState::Active,
            })
            .collect())
    }

    async fn set_affinity(&self, resource: &str, kid: &str, ttl_ms: u64) -> Result<(), StoreError> {
        let _: () = self
            .cmd(
                redis::cmd("SET")
                    .arg(format!("{}:aff:{resource}", self.prefix))
                    .arg(kid)
                    .arg("PX")
                    .arg(ttl_ms.max(1))
                    .clone(),
            )
            .await?;
        Ok(())
    }

    async fn affinity(&self, resource: &str) -> Result<Option<String>, StoreError> {
        self.cmd(
            redis::cmd("GET")
                .arg(format!("{}:aff:{resource}", self.prefix))
                .clone(),
        )
        .await
    }

    async fn reset(&self, kind: ResetKind, scope: &ResetScope) -> Result<(), StoreError> {
        let di = self.day();
        let kind = match kind {
            ResetKind::Minute => "minute",
            ResetKind::Daily => "daily",
            ResetKind::Tokens => "tokens",
            ResetKind::All => "all",
            ResetKind::Cooldowns => "cooldowns",
        };
        let mut inv = self.reset.prepare_invoke();
        inv.key(self.route_key())
            .arg(&self.prefix)
            .arg(kind)
            .arg(di.offset_ms)
            .arg(
                scope
                    .projects
                    .as_ref()
                    .map(|p| p.join("|"))
                    .unwrap_or_default(),
            )
            .arg(scope.model.clone().unwrap_or_default())
            .arg(scope.kids.as_ref().map(|k| k.join("|")).unwrap_or_default())
            .arg(self.now_arg());
        let _: i64 = self.run(inv).await?;
        Ok(())
    }

    /// Reads a key of the namespace rather than sending PING: a node that answers PING but
    /// does not serve the namespace's slot (a Cluster node: `MOVED`, `CLUSTERDOWN`) or is
    /// still loading its data (`LOADING`) is not a working store.
    async fn ping(&self) -> Result<(), StoreError> {
        let _: Option<String> = self
            .cmd(
                redis::cmd("GET")
                    .arg(format!("{}:ping", self.prefix))
                    .clone(),
            )
            .await?;
        Ok(())
    }

    fn backend(&self) -> &'static str {
        "redis"
    }

    fn shared_io(&self) -> Option<SharedIo> {
        Some(RedisStore::shared_io(self))
    }
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn urls_are_logged_without_user_or_password() {
        assert_eq!(
            redact_url("redis://ops:hunter2@10.0.0.1:6379/0"),
            "redis://***@10.0.0.1:6379/0"
        );
        assert_eq!(
            redact_url("rediss://:p@ss@host:6380"),
            "rediss://***@host:6380"
        );
        assert_eq!(redact_url("redis://host:6379"), "redis://host:6379");
        assert_eq!(redact_url("host:6379"), "(not a URL)");
    }
}
