//! The response cache's own parts, below the request path: the key of a request ([`key`]),
//! the entries in memory or Redis ([`store`]) and the flights in progress ([`flight`]). The
//! tower step that uses them is [`crate::layers::cache`].

pub mod flight;
pub mod key;
pub mod store;

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use self::flight::Flights;
use self::store::Store;
use crate::config::CacheConfig;
use crate::quota::redis::SharedIo;

/// Unix ms, the clock entries' ages are told by (shared by replicas through Redis).
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// The cache: its settings, its backend and the flights in progress.
#[derive(Debug)]
pub struct ResponseCache {
    pub config: CacheConfig,
    pub store: Store,
    pub flights: Arc<Flights>,
    /// Entries this replica has stored so far: a leader asks the store again only when one
    /// was stored after its first lookup (a flight that landed in between).
    pub stored: AtomicU64,
}

impl ResponseCache {
    /// The cache `config` describes; `shared`: the quota store's Redis, if it has one.
    pub fn new(config: &CacheConfig, shared: Option<SharedIo>) -> ResponseCache {
        let store = match shared {
            Some(io) if config.uses_redis() => Store::Redis(io),
            _ => Store::memory(config.max_memory_bytes),
        };
        ResponseCache {
            config: config.clone(),
            store,
            flights: Arc::new(Flights::default()),
            stored: AtomicU64::new(0),
        }
    }
}
