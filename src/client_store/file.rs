//! `auth.clients_file`: the runtime clients as one JSON document (`{"clients": [...]}`), read at
//! start and written whole on every change (a temporary file beside it with mode 0600, synced,
//! then renamed over it), so a crash leaves the old file or the new one, never half of one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::StoreOpError;
use super::record::Record;

/// The file's shape.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct FileBody {
    clients: Vec<Record>,
}

/// The records in `path`; a missing file holds none.
pub(super) fn read_file(path: &Path) -> Result<BTreeMap<String, Record>, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => {
            return Err(format!(
                "auth.clients_file {}: cannot be read: {e}",
                path.display()
            ));
        }
    };
    let body: FileBody = serde_json::from_str(&text).map_err(|e| {
        format!(
            "auth.clients_file {}: not a clients file ({e}); fix or remove it",
            path.display()
        )
    })?;
    Ok(body
        .clients
        .into_iter()
        .map(|r| (r.name.clone(), r))
        .collect())
}

/// Write `records` to `path` whole: a temporary file beside it (mode 0600), synced, renamed
/// over it, so a crash leaves the old file or the new one.
pub(super) fn write_file(
    path: &Path,
    records: &BTreeMap<String, Record>,
) -> Result<(), StoreOpError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let body = FileBody {
        clients: records.values().cloned().collect(),
    };
    let text =
        serde_json::to_vec_pretty(&body).map_err(|e| StoreOpError::Unavailable(e.to_string()))?;
    let fail = |e: std::io::Error| {
        StoreOpError::Unavailable(format!(
            "auth.clients_file {} could not be written: {e}",
            path.display()
        ))
    };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp-{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(fail)?;
    f.write_all(&text)
        .and_then(|_| f.sync_all())
        .map_err(fail)?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        fail(e)
    })
}
