//! Where the runtime clients (the clients API's, see [`crate::clients`] for the registry) are kept, and how every replica learns of a change: with Redis,
//! the hash `{ns}:clients` (name -> [`Record`] as JSON) and the counter `{ns}:clients:version`,
//! bumped by every change in the same script, which each replica polls every
//! [`POLL_EVERY`] (reading the hash again only when it moved); in memory, the JSON file
//! `auth.clients_file`, written whole (temporary file, mode 0600, then rename) and read at
//! start. Either way, what is kept is handed to the [`Registry`] as [`Origin::Runtime`]
//! clients. Only SHA-256 digests of keys are kept.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

mod file;
pub mod record;
mod shared;

use self::file::{read_file, write_file};
use self::shared::{CREATE, DELETE, REPLACE, script, to_json};

use self::record::{Grace, Record, new_key};
use crate::clients::{ClientLimits, Origin, Registry};
use crate::quota::redis::SharedIo;

/// How often a replica asks Redis whether the runtime clients changed (a change is seen
/// everywhere within about this long).
pub const POLL_EVERY: Duration = Duration::from_millis(500);

/// Why a change to the runtime clients was not made.
#[derive(Debug, PartialEq)]
pub enum StoreOpError {
    /// Memory store without `auth.clients_file`.
    NotConfigured,
    Exists,
    NotFound,
    /// No room: at most this many runtime clients.
    Full(usize),
    Unavailable(String),
}

enum Backend {
    Unset,
    File(PathBuf),
    Redis(SharedIo),
}

#[derive(Default)]
struct Inner {
    records: BTreeMap<String, Record>,
    /// Redis: the version the records were read at (`None`: to be read).
    version: Option<i64>,
    /// When the next rotation's grace ends (the registry is set again then).
    next_expiry: Option<i64>,
    /// Redis: whether the last poll failed (warned once per outage).
    failing: bool,
}

/// The runtime clients (see the module docs).
pub struct ClientStore {
    backend: Backend,
    registry: Arc<Registry>,
    inner: tokio::sync::Mutex<Inner>,
    /// `auth.clients_file` could not be read at start: start-up stops with this.
    load_error: Option<String>,
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl ClientStore {
    /// In Redis when `shared`, else in `file` (read now) when set, else nowhere.
    pub fn new(
        file: Option<PathBuf>,
        shared: Option<SharedIo>,
        registry: Arc<Registry>,
    ) -> ClientStore {
        let mut inner = Inner::default();
        let mut load_error = None;
        let backend = match (shared, file) {
            (Some(io), _) => Backend::Redis(io),
            (None, Some(path)) => {
                match read_file(&path) {
                    Ok(records) => inner.records = records,
                    Err(e) => load_error = Some(e),
                }
                Backend::File(path)
            }
            (None, None) => Backend::Unset,
        };
        apply(&registry, &mut inner);
        ClientStore {
            backend,
            registry,
            inner: tokio::sync::Mutex::new(inner),
            load_error,
        }
    }

    /// Why `auth.clients_file` could not be read at start, if it could not.
    pub fn load_error(&self) -> Option<&str> {
        self.load_error.as_deref()
    }

    /// `redis`, `file` or `none`.
    pub fn backend(&self) -> &'static str {
        match self.backend {
            Backend::Unset => "none",
            Backend::File(_) => "file",
            Backend::Redis(_) => "redis",
        }
    }

    /// Bring the registry up to date: read Redis again if another replica changed it, and
    /// drop the graces that ended. Called every [`POLL_EVERY`].
    pub async fn refresh(&self) {
        let mut inner = self.inner.lock().await;
        if let Err(e) = self.sync(&mut inner).await {
            if !inner.failing {
                tracing::warn!(error = %e, "runtime clients could not be read from Redis: the last known ones are used");
            }
            inner.failing = true;
            return;
        }
        inner.failing = false;
        if inner.next_expiry.is_some_and(|t| t <= now_ms()) {
            apply(&self.registry, &mut inner);
        }
    }

    /// Add a client with a new key (returned, the only time it exists outside its holder).
    /// `room`: how many runtime clients there may be.
    pub async fn create(
        &self,
        name: &str,
        limits: ClientLimits,
        room: usize,
    ) -> Result<String, StoreOpError> {
        let (key, digest) = new_key()
            .map_err(|e| StoreOpError::Unavailable(format!("no random bytes for a key: {e}")))?;
        let record = Record {
            name: name.to_string(),
            key_sha256: digest,
            grace: Vec::new(),
            limits,
            created_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        };
        let mut inner = self.inner.lock().await;
        match &self.backend {
            Backend::Unset => return Err(StoreOpError::NotConfigured),
            Backend::File(path) => {
                self.usable()?;
                if inner.records.contains_key(name) {
                    return Err(StoreOpError::Exists);
                }
                if inner.records.len() >= room {
                    return Err(StoreOpError::Full(room));
                }
                let mut next = inner.records.clone();
                next.insert(name.to_string(), record);
                write_file(path, &next)?;
                inner.records = next;
            }
            Backend::Redis(io) => {
                let json = to_json(&record)?;
                let args = [name.to_string(), json, room.to_string()];
                match script(io, &CREATE, &args).await? {
                    -1 => return Err(StoreOpError::Exists),
                    -2 => return Err(StoreOpError::Full(room)),
                    _ => {}
                }
                inner.version = None;
                self.sync(&mut inner)
                    .await
                    .map_err(StoreOpError::Unavailable)?;
            }
        }
        apply(&self.registry, &mut inner);
        Ok(key)
    }

    /// Change a client's limits.
    pub async fn update(&self, name: &str, limits: ClientLimits) -> Result<(), StoreOpError> {
        self.change(name, |r| r.limits = limits.clone()).await
    }

    /// Give a client a new key (returned); the old one stays valid for `grace`.
    pub async fn rotate(&self, name: &str, grace: Duration) -> Result<String, StoreOpError> {
        let (key, digest) = new_key()
            .map_err(|e| StoreOpError::Unavailable(format!("no random bytes for a key: {e}")))?;
        let until_ms = now_ms().saturating_add(grace.as_millis() as i64);
        self.change(name, |r| {
            let old = std::mem::replace(&mut r.key_sha256, digest.clone());
            if !grace.is_zero() {
                r.grace.push(Grace {
                    key_sha256: old,
                    until_ms,
                });
            }
        })
        .await?;
        Ok(key)
    }

    /// Whether a runtime client of that name is kept (also when a configured client of the
    /// same name shadows it in the registry).
    pub async fn holds(&self, name: &str) -> bool {
        self.inner.lock().await.records.contains_key(name)
    }

    /// Revoke a client: its keys stop working at once (everywhere within [`POLL_EVERY`]).
    pub async fn delete(&self, name: &str) -> Result<(), StoreOpError> {
        let mut inner = self.inner.lock().await;
        match &self.backend {
            Backend::Unset => return Err(StoreOpError::NotConfigured),
            Backend::File(path) => {
                self.usable()?;
                let mut next = inner.records.clone();
                if next.remove(name).is_none() {
                    return Err(StoreOpError::NotFound);
                }
                write_file(path, &next)?;
                inner.records = next;
            }
            Backend::Redis(io) => {
                if script(io, &DELETE, &[name.to_string()]).await? == -1 {
                    return Err(StoreOpError::NotFound);
                }
                inner.version = None;
                self.sync(&mut inner)
                    .await
                    .map_err(StoreOpError::Unavailable)?;
            }
        }
        apply(&self.registry, &mut inner);
        Ok(())
    }

    /// Apply `edit` to the record of `name` (ended graces dropped), compare-and-set in Redis.
    async fn change(&self, name: &str, edit: impl Fn(&mut Record)) -> Result<(), StoreOpError> {
        let mut inner = self.inner.lock().await;
        match &self.backend {
            Backend::Unset => return Err(StoreOpError::NotConfigured),
            Backend::File(path) => {
                self.usable()?;
                let mut next = inner.records.clone();
                let r = next.get_mut(name).ok_or(StoreOpError::NotFound)?;
                r.prune(now_ms());
                edit(r);
                write_file(path, &next)?;
                inner.records = next;
            }
            Backend::Redis(io) => {
                // Another replica's change between our read and our write: read again, retry.
                let mut done = false;
                for _ in 0..5 {
                    self.sync(&mut inner)
                        .await
                        .map_err(StoreOpError::Unavailable)?;
                    let old = inner.records.get(name).ok_or(StoreOpError::NotFound)?;
                    let mut new = old.clone();
                    new.prune(now_ms());
                    edit(&mut new);
                    let args = [name.to_string(), to_json(old)?, to_json(&new)?];
                    match script(io, &REPLACE, &args).await? {
                        -1 => return Err(StoreOpError::NotFound),
                        -3 => inner.version = None,
                        _ => {
                            inner.version = None;
                            self.sync(&mut inner)
                                .await
                                .map_err(StoreOpError::Unavailable)?;
                            done = true;
                            break;
                        }
                    }
                }
                if !done {
                    return Err(StoreOpError::Unavailable(
                        "the client kept changing under this change; retry".into(),
                    ));
                }
            }
        }
        apply(&self.registry, &mut inner);
        Ok(())
    }

    fn usable(&self) -> Result<(), StoreOpError> {
        match &self.load_error {
            Some(e) => Err(StoreOpError::Unavailable(e.clone())),
            None => Ok(()),
        }
    }
}

/// Hand the records to the registry, the graces ended now left out.
fn apply(registry: &Registry, inner: &mut Inner) {
    let now = now_ms();
    let specs = inner.records.values().filter_map(|r| r.spec(now)).collect();
    inner.next_expiry = inner
        .records
        .values()
        .filter_map(|r| r.next_expiry(now))
        .min();
    registry.set(Origin::Runtime, specs);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp_file(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("gqp-clients-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("clients.json")
    }

    #[tokio::test]
    async fn a_file_store_keeps_clients_across_a_restart_without_their_keys() {
        use std::os::unix::fs::PermissionsExt;
        let path = tmp_file("restart");
        let registry = Arc::new(Registry::default());
        let store = ClientStore::new(Some(path.clone()), None, registry.clone());
        let limits = ClientLimits {
            rpm: Some(7),
            ..Default::default()
        };
        let key = store.create("team-a", limits.clone(), 10).await.unwrap();
        assert_eq!(
            store.create("team-a", limits.clone(), 10).await,
            Err(StoreOpError::Exists)
        );
        let digest = crate::secret::presented_digest(&key);
        assert!(registry.load().by_digest(&digest).is_some());
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains(&key), "only the digest is written");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);

        let again = Arc::new(Registry::default());
        let _restarted = ClientStore::new(Some(path.clone()), None, again.clone());
        let t = again.load();
        let c = t.by_digest(&digest).expect("the client is back");
        assert_eq!(
            (&*c.name, c.limits.rpm, c.origin),
            ("team-a", Some(7), Origin::Runtime)
        );
    }

    #[tokio::test]
    async fn a_rotation_keeps_the_old_key_for_its_grace_and_a_delete_revokes() {
        let path = tmp_file("rotate");
        let registry = Arc::new(Registry::default());
        let store = ClientStore::new(Some(path), None, registry.clone());
        let old = store
            .create("a", ClientLimits::default(), 10)
            .await
            .unwrap();
        let new = store.rotate("a", Duration::from_secs(3600)).await.unwrap();
        let known = |k: &str| {
            registry
                .load()
                .by_digest(&crate::secret::presented_digest(k))
                .is_some()
        };
        assert!(known(&old) && known(&new));
        let newer = store.rotate("a", Duration::ZERO).await.unwrap();
        assert!(!known(&new) && known(&newer));
        assert!(known(&old), "the first grace still runs");
        store.delete("a").await.unwrap();
        assert!(!known(&old) && !known(&newer));
        assert_eq!(store.delete("a").await, Err(StoreOpError::NotFound));
    }

    #[tokio::test]
    async fn without_a_file_or_redis_nothing_can_be_created_and_a_full_store_says_so() {
        let store = ClientStore::new(None, None, Arc::new(Registry::default()));
        assert_eq!(
            store.create("a", ClientLimits::default(), 10).await,
            Err(StoreOpError::NotConfigured)
        );
        let store = ClientStore::new(Some(tmp_file("full")), None, Arc::new(Registry::default()));
        store.create("a", ClientLimits::default(), 1).await.unwrap();
        assert_eq!(
            store.create("b", ClientLimits::default(), 1).await,
            Err(StoreOpError::Full(1))
        );
    }

    #[test]
    fn an_unreadable_file_is_an_error_at_start_not_an_empty_store() {
        let path = tmp_file("bad");
        std::fs::write(&path, "{not json").unwrap();
        let store = ClientStore::new(Some(path), None, Arc::new(Registry::default()));
        assert!(store.load_error().unwrap().contains("auth.clients_file"));
    }
}
