//! Who shares the pool: every client (from `[[auth.clients]]`, `auth.client_keys` and the runtime
//! clients API), found by the SHA-256 of the key it presents, with its name and its own limits.
//!
//! The [`Registry`] is swapped whole (an `ArcSwap`), so a request reads it without a lock and a
//! reload or an admin change never blocks one. A client's slot (a small dense number for the
//! per-client tables in metrics and the queue) is given once per name and kept for the
//! process's life, so counters keyed by it stay with the right client across reloads.

/// The limits live with the configuration (the config file and the runtime API both give them).
pub use crate::config::client_limits as limits;

use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;

pub use limits::ClientLimits;

/// Most clients at once (configured and runtime together): every one has a slot in per-client
/// tables.
pub const MAX_CLIENTS: usize = 10_000;

/// Where a client was defined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// The config file or `PROXY_CLIENT_KEYS` (changed by a reload).
    Config,
    /// The runtime clients API (kept in the store or `auth.clients_file`).
    Runtime,
}

/// One client: its name, its limits, and where it came from. Never its key.
#[derive(Debug)]
pub struct Client {
    pub name: Arc<str>,
    pub limits: ClientLimits,
    pub origin: Origin,
    /// Dense and stable per name for the process's life (see the module docs); 3 and up, as
    /// [`crate::auth::Caller::slot`] keeps 0-2 for no caller, anonymous and admin.
    pub slot: usize,
    /// Its id in the usage ledger, looked up on its first request (the ledger lives as long
    /// as the registry: both are made with the first generation and kept by reloads).
    pub ledger_id: std::sync::OnceLock<u32>,
}

/// A client as defined, before the registry gives it a slot.
#[derive(Debug, Clone)]
pub struct ClientSpec {
    pub name: Arc<str>,
    /// SHA-256 of every key that identifies it (a rotated key stays valid for its grace).
    pub digests: Vec<[u8; 32]>,
    pub limits: ClientLimits,
    pub origin: Origin,
}

/// Every client, by the digest of its key and by name.
#[derive(Debug, Default)]
pub struct Table {
    by_digest: HashMap<[u8; 32], Arc<Client>>,
    by_name: HashMap<Arc<str>, Arc<Client>>,
    /// In definition order: configured clients first, then runtime ones.
    order: Vec<Arc<Client>>,
}

impl Table {
    /// The client whose key hashes to `digest`.
    pub fn by_digest(&self, digest: &[u8; 32]) -> Option<&Arc<Client>> {
        self.by_digest.get(digest)
    }

    pub fn by_name(&self, name: &str) -> Option<&Arc<Client>> {
        self.by_name.get(name)
    }

    /// Every client, configured first.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Client>> {
        self.order.iter()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

/// The live client table (see the module docs).
#[derive(Debug, Default)]
pub struct Registry {
    table: ArcSwap<Table>,
    /// Slot of every name ever seen.
    slots: Mutex<HashMap<Arc<str>, usize>>,
    /// The last definitions by origin, so a reload replaces the configured ones and keeps the
    /// runtime ones (and an admin change the reverse).
    defined: Mutex<(Vec<ClientSpec>, Vec<ClientSpec>)>,
    /// Refusals by a client's own limits in this replica, by name (at most one entry per
    /// client ever defined).
    refusals: Mutex<HashMap<Arc<str>, Refused>>,
}

/// A client's run of refusals by its own limits (in this replica).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    /// The limit that refused it last (`rpm`, `tpm`, `rpd`, `max_concurrent`,
    /// `daily_budget_usd`, `monthly_budget_usd`, `models`).
    pub limit: &'static str,
    /// When this run of refusals began: a refusal more than [`REFUSAL_RUN_GAP`] after the
    /// last one starts a new run.
    pub since: std::time::Instant,
    pub last: std::time::Instant,
    /// Refusals since the process started.
    pub count: u64,
}

/// A gap this long between two refusals ends a run (see [`Refused::since`]).
pub const REFUSAL_RUN_GAP: std::time::Duration = std::time::Duration::from_secs(60);

/// The clients of the configuration, as the registry takes them.
pub fn configured(auth: &crate::config::AuthConfig) -> Vec<ClientSpec> {
    auth.clients
        .iter()
        .map(|c| ClientSpec {
            name: c.name.clone(),
            digests: vec![c.credential.digest()],
            limits: c.limits.clone(),
            origin: Origin::Config,
        })
        .collect()
}

impl Registry {
    pub fn new(configured: Vec<ClientSpec>) -> Registry {
        let r = Registry::default();
        r.set(Origin::Config, configured);
        r
    }

    /// The table now (cheap: one atomic load).
    pub fn load(&self) -> arc_swap::Guard<Arc<Table>> {
        self.table.load()
    }

    /// The table now, to keep.
    pub fn snapshot(&self) -> Arc<Table> {
        self.table.load_full()
    }

    /// Replace every client of one origin. A runtime client whose name a configured one has
    /// taken is left out (the configured one wins); past [`MAX_CLIENTS`], the rest are left out
    /// with a warning.
    pub fn set(&self, origin: Origin, specs: Vec<ClientSpec>) {
        let mut defined = self.defined.lock();
        match origin {
            Origin::Config => defined.0 = specs,
            Origin::Runtime => defined.1 = specs,
        }
        let mut slots = self.slots.lock();
        let mut table = Table::default();
        for spec in defined.0.iter().chain(defined.1.iter()) {
            if table.by_name.contains_key(&spec.name) {
                tracing::warn!(client = %spec.name, "a runtime client has the name of a configured one: the configured one is used");
                continue;
            }
            if table.order.len() >= MAX_CLIENTS {
                tracing::warn!(client = %spec.name, "more than {MAX_CLIENTS} clients: this one is left out");
                continue;
            }
            let next = slots.len() + 3;
            let slot = *slots.entry(spec.name.clone()).or_insert(next);
            let client = Arc::new(Client {
                name: spec.name.clone(),
                limits: spec.limits.clone(),
                origin: spec.origin,
                slot,
                ledger_id: std::sync::OnceLock::new(),
            });
            for d in &spec.digests {
                table.by_digest.entry(*d).or_insert_with(|| client.clone());
            }
            table.by_name.insert(client.name.clone(), client.clone());
            table.order.push(client);
        }
        self.table.store(Arc::new(table));
    }

    /// Note that `name` was refused by its own `limit` just now.
    pub fn note_refusal(&self, name: &Arc<str>, limit: &'static str) {
        let now = std::time::Instant::now();
        let mut r = self.refusals.lock();
        if !r.contains_key(name) && r.len() >= 2 * MAX_CLIENTS {
            return;
        }
        let e = r.entry(name.clone()).or_insert(Refused {
            limit,
            since: now,
            last: now,
            count: 0,
        });
        if now.duration_since(e.last) > REFUSAL_RUN_GAP {
            e.since = now;
        }
        e.limit = limit;
        e.last = now;
        e.count += 1;
    }

    /// Every client refused by its own limits since the process started, with its last run.
    pub fn refusals(&self) -> Vec<(Arc<str>, Refused)> {
        let r = self.refusals.lock();
        r.iter().map(|(n, v)| (n.clone(), *v)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, key: &str, origin: Origin) -> ClientSpec {
        ClientSpec {
            name: name.into(),
            digests: vec![crate::secret::presented_digest(key)],
            limits: ClientLimits::default(),
            origin,
        }
    }

    #[test]
    fn refusals_are_kept_per_client_with_the_start_of_their_run() {
        let r = Registry::new(vec![]);
        let a: Arc<str> = "a".into();
        r.note_refusal(&a, "rpm");
        r.note_refusal(&a, "daily_budget_usd");
        let all = r.refusals();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].1.limit, "daily_budget_usd");
        assert_eq!(all[0].1.count, 2);
        assert!(all[0].1.since <= all[0].1.last);
    }

    #[test]
    fn a_client_keeps_its_slot_across_changes_and_configured_names_win() {
        let r = Registry::new(vec![spec("a", "ka", Origin::Config)]);
        r.set(Origin::Runtime, vec![spec("b", "kb", Origin::Runtime)]);
        let t = r.load();
        let (a, b) = (t.by_name("a").unwrap().slot, t.by_name("b").unwrap().slot);
        assert_ne!(a, b);
        assert!(a >= 3 && b >= 3);
        let digest = crate::secret::presented_digest("kb");
        assert_eq!(&*t.by_digest(&digest).unwrap().name, "b");
        // A reload drops `a` and adds `c`; `b` keeps its slot; `a` comes back with its own.
        r.set(
            Origin::Config,
            vec![
                spec("c", "kc", Origin::Config),
                spec("b", "kx", Origin::Config),
            ],
        );
        let t = r.load();
        assert!(t.by_name("a").is_none());
        assert_eq!(t.by_name("b").unwrap().slot, b);
        assert_eq!(
            t.by_name("b").unwrap().origin,
            Origin::Config,
            "configured wins"
        );
        assert!(
            t.by_digest(&digest).is_none(),
            "the runtime b's key is gone"
        );
        r.set(Origin::Config, vec![spec("a", "ka", Origin::Config)]);
        assert_eq!(r.load().by_name("a").unwrap().slot, a);
    }
}
