//! Configuration reload without restart: [`Live`] holds the running generation
//! ([`AppState`]) and swaps in the next atomically when the file (or `SIGHUP`, or the admin
//! endpoint) asks; an invalid file changes nothing. [`watch`] holds the triggers.

pub mod watch;

use parking_lot::Mutex;
use std::sync::{Arc, Weak};

use arc_swap::ArcSwap;
use axum::extract::FromRef;
use serde::Serialize;

use crate::config::{Config, ConfigError, Sources};
use crate::state::{AppState, Generation};

/// Settings a running proxy cannot change: a reload reports them as "restart required" and
/// keeps their running values. (A path names one setting, or a whole table with a trailing
/// dot.)
pub const RESTART_ONLY: &[&str] = &[
    "server.listen",
    "server.path_prefix",
    "server.header_read_timeout_secs",
    "server.max_connections",
    "server.max_buffered_bytes",
    "server.max_buffered_client_share",
    "server.max_connections_per_ip",
    "server.idle_timeout_secs",
    "server.http2_keepalive_interval_secs",
    "server.http2_keepalive_timeout_secs",
    "server.http2_max_streams",
    "server.shutdown_grace_secs",
    "server.watch_config",
    "store.",
    "log.",
    "otel.",
    "limits.timezone",
    "limits.window_secs",
    "auth.clients_file",
];

/// Whether setting `path` is one only a restart applies.
pub fn restart_only(path: &str) -> bool {
    RESTART_ONLY.iter().any(|r| match r.strip_suffix('.') {
        Some(table) => path == table || path.starts_with(r),
        None => path == *r,
    })
}

/// What asked for a reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// `SIGHUP`.
    Signal,
    /// `POST /api/ai/config/reload`.
    Api,
    /// A change to the `--config` file (or its directory).
    File,
}

impl Origin {
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Signal => "sighup",
            Origin::Api => "api",
            Origin::File => "file",
        }
    }
}

/// A reload's outcome, as the endpoint answers it and the log line tells it.
#[derive(Debug, Clone, Serialize)]
pub struct Reloaded {
    /// Whether a new generation now serves (false: nothing reloadable changed).
    pub applied: bool,
    /// The generation serving now.
    #[serde(flatten)]
    pub generation: Generation,
    /// Settings whose value changed and now apply (names only, never values).
    pub changed: Vec<String>,
}

/// Why a reload changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The file (or environment) does not load: the running configuration stays.
    #[error("{0}; the running configuration stays")]
    Invalid(#[from] ConfigError),
    /// Built without [`Sources`] to read again (an embedding application's gateway).
    #[error("this gateway was built from a configuration in memory, with no file to read again")]
    NoSources,
}

/// The running generation and how to load the next. Cheap to clone.
#[derive(Clone)]
pub struct Live(Arc<Inner>);

struct Inner {
    current: ArcSwap<AppState>,
    /// Where the configuration was read from: read again on each reload. (A process's
    /// environment is the one it started with, so only the file can change.)
    sources: Option<Sources>,
    /// One reload at a time.
    reloading: Mutex<()>,
}

/// A [`Live`] that does not keep the gateway alive (background tasks hold these).
#[derive(Clone)]
pub struct WeakLive(Weak<Inner>);

impl WeakLive {
    pub fn upgrade(&self) -> Option<Live> {
        self.0.upgrade().map(Live)
    }
}

impl Live {
    /// Serving `state`; reloads read `sources` again (`None`: reloads are refused).
    pub fn new(state: Arc<AppState>, sources: Option<Sources>) -> Live {
        Live(Arc::new(Inner {
            current: ArcSwap::new(state),
            sources,
            reloading: Mutex::new(()),
        }))
    }

    /// The generation serving now. A request holds on to it until it ends.
    pub fn current(&self) -> Arc<AppState> {
        self.0.current.load_full()
    }

    pub fn downgrade(&self) -> WeakLive {
        WeakLive(Arc::downgrade(&self.0))
    }

    /// The `--config` file reloads read, if any.
    pub fn file(&self) -> Option<&str> {
        self.0.sources.as_ref()?.file.as_deref()
    }

    /// Read the configuration again and, when it loads and something reloadable changed,
    /// serve the next generation from now on. Requests under way finish on theirs.
    pub fn reload(&self, origin: Origin) -> Result<Reloaded, ReloadError> {
        let _one = self.0.reloading.lock();
        let result = self.next(origin);
        let current = self.current();
        match &result {
            Ok(r) if r.applied => {
                current
                    .metrics
                    .config_reload("applied", r.generation.number);
                tracing::info!(
                    generation = r.generation.number,
                    source = origin.as_str(),
                    changed = %r.changed.join(","),
                    restart_required = %r.generation.restart_required.get().join(","),
                    "configuration reloaded"
                );
                self.current().config.log_warnings();
            }
            Ok(r) => {
                current
                    .metrics
                    .config_reload("unchanged", r.generation.number);
                let pending = r.generation.restart_required.get();
                if !pending.is_empty() {
                    tracing::warn!(
                        source = origin.as_str(),
                        restart_required = %pending.join(","),
                        "configuration reload: only settings that need a restart changed; nothing applied"
                    );
                } else {
                    tracing::debug!(source = origin.as_str(), "configuration unchanged");
                }
            }
            Err(e) => {
                current
                    .metrics
                    .config_reload("invalid", current.generation.number);
                let setting = match e {
                    ReloadError::Invalid(c) => c.setting.as_str(),
                    ReloadError::NoSources => "-",
                };
                tracing::error!(
                    source = origin.as_str(),
                    setting,
                    error = %e,
                    generation = current.generation.number,
                    "configuration reload refused"
                );
            }
        }
        result
    }

    fn next(&self, origin: Origin) -> Result<Reloaded, ReloadError> {
        let sources = self.0.sources.as_ref().ok_or(ReloadError::NoSources)?;
        let old = self.current();
        let (config, changed, restart_required) = prepare(&old.config, Config::load(sources)?);
        // What waits for a restart is what this file asks for, applied or not.
        old.generation.restart_required.set(restart_required);
        if changed.is_empty() {
            return Ok(Reloaded {
                applied: false,
                generation: old.generation.clone(),
                changed,
            });
        }
        // Each Vertex entry's token first: one that cannot be had refuses the reload.
        let minted = crate::upstream::vertex::mint::before_reload(&config)?;
        let generation = Generation::new(
            old.generation.number + 1,
            origin.as_str(),
            old.generation.restart_required.clone(),
        );
        let next = Arc::new(old.successor(config, generation.clone()));
        minted.hand_to(next.pool.keys.iter().filter_map(|k| k.vertex.as_deref()));
        self.0.current.store(next);
        Ok(Reloaded {
            applied: true,
            generation,
            changed,
        })
    }
}

/// `loaded` made ready to follow `running`: its restart-only settings set back to the running
/// ones; with the settings that change (and apply) and those that wait for a restart.
fn prepare(running: &Config, mut loaded: Config) -> (Config, Vec<String>, Vec<String>) {
    let restart_required: Vec<String> = running
        .prints
        .changed(&loaded.prints)
        .into_iter()
        .filter(|p| restart_only(p))
        .collect();
    keep_running(&mut loaded, running);
    let changed = running.prints.changed(&loaded.prints);
    (loaded, changed, restart_required)
}

/// `config` with the restart-only settings of `running` (and their prints, so they keep
/// being reported until a restart).
fn keep_running(config: &mut Config, running: &Config) {
    let (s, r) = (&mut config.server, &running.server);
    s.listen = r.listen;
    s.path_prefix = r.path_prefix.clone();
    s.header_read_timeout = r.header_read_timeout;
    s.max_connections = r.max_connections;
    s.max_buffered_bytes = r.max_buffered_bytes;
    s.max_buffered_client_share = r.max_buffered_client_share;
    s.max_connections_per_ip = r.max_connections_per_ip;
    s.idle_timeout = r.idle_timeout;
    s.http2_keepalive_interval = r.http2_keepalive_interval;
    s.http2_keepalive_timeout = r.http2_keepalive_timeout;
    s.http2_max_streams = r.http2_max_streams;
    s.shutdown_grace = r.shutdown_grace;
    s.watch_config = r.watch_config;
    config.store = running.store.clone();
    config.log = running.log.clone();
    config.otel = running.otel.clone();
    config.limits.timezone = running.limits.timezone;
    config.limits.window_ms = running.limits.window_ms;
    config.prints = std::mem::take(&mut config.prints).keeping(&running.prints, restart_only);
}

/// Handlers of the proxy's own endpoints take `State<Arc<AppState>>`: the generation serving
/// when the request came.
impl FromRef<Live> for Arc<AppState> {
    fn from_ref(live: &Live) -> Arc<AppState> {
        live.current()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_listen_address_waits_for_a_restart_while_the_rest_applies() {
        let running = crate::config::for_test("", &[]);
        let loaded = crate::config::for_test(
            "[server]\nlisten = \"127.0.0.1:9999\"\nmax_body_bytes = 1000\n[limits]\nminute = 3\n",
            &[],
        );
        let (next, changed, restart) = prepare(&running, loaded);
        assert_eq!(restart, ["server.listen"]);
        assert_eq!(changed, ["limits.minute", "server.max_body_bytes"]);
        assert_eq!(next.server.listen, running.server.listen);
        assert_eq!(next.server.max_body_bytes, 1000);
        assert_eq!(next.limits.generate.minute, 3);
        // Reported again by the reload after, until a restart.
        let again = crate::config::for_test("[server]\nlisten = \"127.0.0.1:9999\"\n", &[]);
        let (_, _, restart) = prepare(&next, again);
        assert_eq!(restart, ["server.listen"]);
    }

    #[test]
    fn restart_only_settings_are_named_exactly_or_by_table() {
        for p in [
            "server.listen",
            "store.redis_url",
            "store.tls_ca_file",
            "log.format",
        ] {
            assert!(restart_only(p), "{p}");
        }
        for p in [
            "server.public_url",
            "server.listener",
            "storex.a",
            "limits.minute",
            "keys",
        ] {
            assert!(!restart_only(p), "{p}");
        }
    }
}
