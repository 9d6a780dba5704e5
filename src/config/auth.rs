//! `[auth]`: the credentials clients present, the names they are counted under, and the admin
//! token.
//!
//! Clients come from `auth.client_keys` (plain keys, or `PROXY_CLIENT_KEYS` whose entries may
//! be `name:key`) and then from `[[auth.clients]]` tables (`name`, `key`). A client without a
//! name is `clientN`, N its 1-based position among all clients. The name (never the key) labels
//! the request log line, `gqp_requests_total`, the token and cost counters and the usage ledger.

use std::collections::HashSet;
use std::sync::Arc;

use serde::Deserialize;

use super::check::{ConfigError, bad};
use crate::secret::Secret;

/// Longest client name: it labels log lines and metric series.
pub const CLIENT_NAME_MAX: usize = 64;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Raw {
    pub(super) client_keys: Vec<Secret>,
    #[serde(default)]
    clients: Vec<RawClient>,
    allow_anonymous: bool,
    admin_token: Secret,
}

/// One `[[auth.clients]]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClient {
    name: String,
    key: Secret,
}

/// Who may call.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// Every client's key, in client order (see the module docs).
    pub client_keys: Vec<Secret>,
    /// Every client's name, in the same order as `client_keys`.
    pub client_names: Vec<Arc<str>>,
    pub allow_anonymous: bool,
    pub admin_token: Option<Secret>,
}

impl AuthConfig {
    /// `env_clients`: the entries of `PROXY_CLIENT_KEYS` (`name:key` or `key`) when it is set;
    /// they take the place of `auth.client_keys`.
    pub(super) fn from_raw(
        raw: Raw,
        env_clients: Option<Vec<String>>,
    ) -> Result<AuthConfig, ConfigError> {
        // (setting at fault, name if given, key)
        let mut listed: Vec<(&str, Option<String>, Secret)> = Vec::new();
        match env_clients {
            Some(entries) => {
                for e in entries {
                    let (name, key) = split_entry(&e);
                    listed.push((
                        "PROXY_CLIENT_KEYS",
                        name.map(str::to_string),
                        Secret::new(key),
                    ));
                }
            }
            None => {
                for k in raw.client_keys {
                    listed.push(("auth.client_keys", None, k));
                }
            }
        }
        for c in raw.clients {
            if c.key.is_empty() {
                return Err(bad(
                    "auth.clients",
                    format!("client {:?} has an empty key", c.name),
                ));
            }
            listed.push(("auth.clients", Some(c.name), c.key));
        }
        listed.retain(|(_, _, k)| !k.is_empty());
        if listed.is_empty() && !raw.allow_anonymous {
            return Err(bad(
                "PROXY_CLIENT_KEYS",
                "no client key configured: set PROXY_CLIENT_KEYS (a comma list of credentials your \
                 clients will send, each optionally as name:key), add [[auth.clients]] tables, or \
                 set auth.allow_anonymous = true in the config file",
            ));
        }
        let mut client_keys = Vec::with_capacity(listed.len());
        let mut client_names: Vec<Arc<str>> = Vec::with_capacity(listed.len());
        let mut seen_names = HashSet::new();
        let mut seen_keys = HashSet::new();
        for (i, (setting, name, key)) in listed.into_iter().enumerate() {
            let name = match name {
                Some(n) => {
                    check_client_name(setting, &n)?;
                    n
                }
                None => format!("client{}", i + 1),
            };
            if matches!(name.as_str(), "admin" | "anonymous" | "-" | "other") {
                return Err(bad(
                    setting,
                    format!("client name {name:?} is reserved (admin, anonymous, -, other)"),
                ));
            }
            if !seen_names.insert(name.clone()) {
                return Err(bad(
                    setting,
                    format!(
                        "client name {name:?} is used twice (a plain key entry is named clientN by its position)"
                    ),
                ));
            }
            if !seen_keys.insert(key.digest()) {
                return Err(bad(
                    setting,
                    format!("client {name:?} has the same key as an earlier client"),
                ));
            }
            client_keys.push(key);
            client_names.push(name.into());
        }
        let admin_token = Some(raw.admin_token).filter(|t| !t.is_empty());
        // The same value as both would make that client an admin: whoever holds a client key
        // could read every client's usage and reload the configuration.
        if let Some(admin) = &admin_token
            && let Some(i) = client_keys
                .iter()
                .position(|k| k.digest() == admin.digest())
        {
            return Err(bad(
                "auth.admin_token (PROXY_ADMIN_TOKEN)",
                format!(
                    "the admin token equals the key of client {:?}: give each its own value",
                    client_names[i]
                ),
            ));
        }
        Ok(AuthConfig {
            client_keys,
            client_names,
            allow_anonymous: raw.allow_anonymous,
            admin_token,
        })
    }

    /// The name of client `index` (`clientN` past the configured ones, which cannot happen).
    pub fn client_name(&self, index: usize) -> &str {
        self.client_names.get(index).map_or("other", |n| n)
    }
}

/// `name:key` or `key`. A key itself may hold `:` only when a name is given first.
fn split_entry(entry: &str) -> (Option<&str>, &str) {
    match entry.split_once(':') {
        Some((name, key)) => (Some(name.trim()), key.trim()),
        None => (None, entry.trim()),
    }
}

/// A client name: 1-64 characters of letters, digits, `-`, `_` and `.` (it labels log lines
/// and metric series; a project name's alphabet).
fn check_client_name(setting: &str, name: &str) -> Result<(), ConfigError> {
    if name.is_empty()
        || name.len() > CLIENT_NAME_MAX
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(bad(
            setting,
            format!(
                "client name {name:?} must be 1-{CLIENT_NAME_MAX} characters of letters, digits, '-', '_' or '.'"
            ),
        ));
    }
    Ok(())
}
