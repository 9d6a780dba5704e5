//! What triggers a reload besides the admin endpoint: `SIGHUP`, and a change in the directory
//! of the `--config` file (the directory, not the file: an editor's rename-over and a
//! Kubernetes ConfigMap's `..data` symlink swap replace the file without writing to it).

use parking_lot::Mutex;
use std::collections::HashSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};

use super::{Origin, WeakLive};

/// Events this close together are one change (an editor writes, renames, changes modes).
pub const SETTLE: Duration = Duration::from_millis(300);
/// A change is reloaded this long after it at the latest, however busy the directory.
pub const SETTLE_AT_MOST: Duration = Duration::from_secs(3);

/// `SIGHUP`s from now on (instead of the default, which ends the process).
pub fn sighup() -> std::io::Result<tokio::signal::unix::Signal> {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
}

/// Reload on every one of `hangups` ([`sighup`]) while the gateway lives.
pub fn spawn_sighup(live: WeakLive, mut hangups: tokio::signal::unix::Signal) {
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            let Some(live) = live.upgrade() else {
                return;
            };
            // Errors are logged by `reload`; the proxy goes on with what it runs.
            let _ = tokio::task::spawn_blocking(move || live.reload(Origin::Signal)).await;
        }
    });
}

/// Reload when something changes in `file`'s directory, or in the directory of the file it
/// links to (followed again after each change: a ConfigMap's `..data` moves to a new
/// directory), once events have settled for [`SETTLE`]. The watcher lives as long as the
/// task, which ends with the gateway.
pub fn spawn_file_watch(live: WeakLive, file: &Path) -> notify::Result<()> {
    let file = file.to_path_buf();
    let dir: PathBuf = match file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
    // The names an event must touch to matter: the file's, the name of what it links to, and
    // Kubernetes' `..data` and `..<timestamp>` entries. Anything else in the directory (a log
    // file, an editor's swap file) is not the configuration.
    let names = Arc::new(Mutex::new(watched_names(&file)));
    let seen = names.clone();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let relevant = match &event {
            Ok(e) if matches!(e.kind, notify::EventKind::Access(_)) => false,
            Ok(e) => {
                let names = seen.lock();
                e.paths.is_empty()
                    || e.paths.iter().any(|p| {
                        p.file_name().is_some_and(|n| {
                            n.to_string_lossy().starts_with("..") || names.contains(n)
                        })
                    })
            }
            Err(_) => true,
        };
        if relevant {
            // Full: a reload is already due, which will see this change too.
            let _ = tx.try_send(());
        }
    })?;
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    let mut target = follow(&mut watcher, &file, &dir, None);
    tracing::info!(dir = %dir.display(), "watching the config file's directory for changes");
    tokio::spawn(async move {
        while rx.recv().await.is_some() {
            // Let the burst settle: the last event restarts the wait, up to SETTLE_AT_MOST
            // (a directory other programs keep writing to still reloads).
            let burst = tokio::time::Instant::now();
            while burst.elapsed() < SETTLE_AT_MOST {
                match tokio::time::timeout(SETTLE, rx.recv()).await {
                    Ok(Some(())) => continue,
                    Ok(None) => return,
                    Err(_) => break,
                }
            }
            let Some(live) = live.upgrade() else {
                return;
            };
            let _ = tokio::task::spawn_blocking(move || live.reload(Origin::File)).await;
            target = follow(&mut watcher, &file, &dir, target);
            *names.lock() = watched_names(&file);
        }
    });
    Ok(())
}

/// The file names of `file` and of what it resolves to.
fn watched_names(file: &Path) -> HashSet<OsString> {
    let mut names: HashSet<OsString> = file.file_name().map(OsString::from).into_iter().collect();
    if let Some(n) = std::fs::canonicalize(file)
        .ok()
        .and_then(|f| f.file_name().map(OsString::from))
    {
        names.insert(n);
    }
    names
}

/// Watch the directory of the file `file` resolves to, when that is not `dir` (already
/// watched), instead of `watching` (the one it resolved to before). Returns what is watched.
fn follow(
    watcher: &mut notify::RecommendedWatcher,
    file: &Path,
    dir: &Path,
    watching: Option<PathBuf>,
) -> Option<PathBuf> {
    let resolved = std::fs::canonicalize(file)
        .ok()
        .and_then(|f| f.parent().map(Path::to_path_buf))
        .filter(|d| std::fs::canonicalize(dir).ok().as_deref() != Some(d.as_path()));
    if resolved == watching {
        return watching;
    }
    if let Some(old) = &watching {
        let _ = watcher.unwatch(old);
    }
    match resolved {
        Some(d) if watcher.watch(&d, RecursiveMode::NonRecursive).is_ok() => Some(d),
        _ => None,
    }
}
