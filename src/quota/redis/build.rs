//! Building a [`RedisStore`]: its connection (lazy: the proxy starts while Redis is down), its
//! scripts (loaded once Redis answers, settings such as the window written into their source),
//! the settle writer, and the settings tests change (window, pairs cap, clocks).

use std::sync::Arc;
use std::time::Duration;

use chrono_tz::Tz;
use redis::Script;

use super::gather::Gather;
use super::keys::Keys;
use super::settle::{RiderSlot, SETTLE_QUEUE, settle_writer};
use super::{PAIRS_CAP, RedisConn, RedisStore, SharedIo};
use crate::quota::{Clock, DayCache, RedisTls, StoreConfig, StoreError};
use crate::secret::Secret;

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
        let conn = RedisConn::new(url, tls, timeout)?;
        let keys = Keys::new(namespace);
        let settle = Script::new(lua!("settle.lua"));
        let (settle_queue, rx) = tokio::sync::mpsc::channel(SETTLE_QUEUE);
        let rider = RiderSlot::default();
        tokio::spawn(settle_writer(
            rx,
            conn.clone(),
            settle.clone(),
            keys.clone(),
            timeout,
            rider.clone(),
        ));
        let admit = Script::new(lua!(admit));
        let admit_many = Script::new(lua!(admit_many));
        tokio::spawn(preload(
            conn.clone(),
            vec![admit.clone(), admit_many.clone(), settle.clone()],
        ));
        Ok(RedisStore {
            conn,
            keys,
            timeout,
            days: DayCache::new(tz),
            clock: None,
            day_clock: None,
            window_ms: crate::quota::MINUTE_MS as u64,
            pairs_cap: PAIRS_CAP,
            admit,
            admit_many,
            gather: Gather::default(),
            settle,
            settle_queue,
            rider,
            usage: Script::new(lua!("usage.lua")),
            cooldown: Script::new(lua!("cooldown.lua")),
            reset: Script::new(lua!("reset.lua")),
            client_alone: Script::new(lua!(client "client_alone.lua")),
            live_usage: Script::new(lua!("live_usage.lua")),
        })
    }

    /// The ledger's handle on this Redis (same connection, same namespace).
    pub fn shared_io(&self) -> SharedIo {
        SharedIo {
            conn: self.conn.clone(),
            keys: self.keys.clone(),
            timeout: self.timeout,
            rider: self.rider.clone(),
            settle: self.settle.clone(),
        }
    }

    /// Count over a sliding window of `ms` instead of Google's 60 s (`limits.window_secs`,
    /// which tests shorten): the scripts that read the window are loaded with it written in.
    pub fn with_window(mut self, ms: u64) -> Self {
        let ms = ms.clamp(1, crate::quota::MAX_HOLD_MS);
        if ms != self.window_ms {
            self.window_ms = ms;
            self.reload_scripts();
        }
        self
    }

    /// List at most `cap` pairs in the set of pairs instead of [`PAIRS_CAP`] (tests reach a
    /// small cap quickly).
    pub fn with_pairs_cap(mut self, cap: usize) -> Self {
        if cap != self.pairs_cap {
            self.pairs_cap = cap;
            self.reload_scripts();
        }
        self
    }

    /// The scripts whose source carries a setting, loaded with this store's written in.
    fn reload_scripts(&mut self) {
        let (ms, cap) = (self.window_ms, self.pairs_cap);
        let set = |src: &str| {
            Script::new(
                &src.replacen("local W = 60000", &format!("local W = {ms}"), 1)
                    .replacen(
                        &format!("local PAIRS_CAP = {PAIRS_CAP}"),
                        &format!("local PAIRS_CAP = {cap}"),
                        1,
                    ),
            )
        };
        self.admit = set(lua!(admit));
        self.admit_many = set(lua!(admit_many));
        self.usage = set(lua!("usage.lua"));
        self.client_alone = set(lua!(client "client_alone.lua"));
        self.live_usage = set(lua!("live_usage.lua"));
        // The admission scripts preloaded at construction are not these.
        tokio::spawn(preload(
            self.conn.clone(),
            vec![self.admit.clone(), self.admit_many.clone()],
        ));
    }

    /// Use `clock` instead of Redis `TIME` (tests only: lets one suite travel in time).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Name the day by `clock` while Redis `TIME` still counts (tests only: a replica whose
    /// clock is on another day than Redis's, as around midnight).
    pub fn with_day_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.day_clock = Some(clock);
        self
    }
}

/// Loads the request-path scripts once Redis answers, so the first burst of requests does not
/// each pay a `NOSCRIPT` round trip. (After a Redis restart the client reloads on `NOSCRIPT`.)
async fn preload(conn: RedisConn, scripts: Vec<Script>) {
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
