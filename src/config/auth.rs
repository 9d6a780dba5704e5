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
use super::client_limits::ClientLimits;
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
    clients_file: String,
}

/// One `[[auth.clients]]` table: a name, its key (or the key's SHA-256, so the file holds no
/// secret), and its limits ([`ClientLimits`]' fields, listed again: the `config` crate does
/// not hand a flattened struct its fields).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClient {
    name: String,
    #[serde(default)]
    key: Secret,
    #[serde(default)]
    key_sha256: String,
    rpm: Option<u64>,
    tpm: Option<u64>,
    rpd: Option<u64>,
    max_concurrent: Option<u64>,
    daily_budget_usd: Option<f64>,
    monthly_budget_usd: Option<f64>,
    models: Option<Vec<String>>,
    weight: Option<u32>,
    max_wait_secs: Option<f64>,
    timezone: Option<String>,
    fallbacks: Option<bool>,
}

impl RawClient {
    fn limits(&self) -> ClientLimits {
        ClientLimits {
            rpm: self.rpm,
            tpm: self.tpm,
            rpd: self.rpd,
            max_concurrent: self.max_concurrent,
            daily_budget_usd: self.daily_budget_usd,
            monthly_budget_usd: self.monthly_budget_usd,
            models: self.models.clone(),
            weight: self.weight,
            max_wait_secs: self.max_wait_secs,
            timezone: self.timezone.clone(),
            fallbacks: self.fallbacks,
        }
    }
}

/// How a configured client proves who it is.
#[derive(Debug, Clone)]
pub enum ClientCredential {
    Key(Secret),
    /// The SHA-256 of its key (`key_sha256`): the config holds no secret.
    Sha256([u8; 32]),
}

impl ClientCredential {
    pub fn digest(&self) -> [u8; 32] {
        match self {
            ClientCredential::Key(k) => k.digest(),
            ClientCredential::Sha256(d) => *d,
        }
    }

    /// The key itself, when the config gave it.
    pub fn key(&self) -> Option<&Secret> {
        match self {
            ClientCredential::Key(k) => Some(k),
            ClientCredential::Sha256(_) => None,
        }
    }
}

/// One configured client.
#[derive(Debug, Clone)]
pub struct ConfiguredClient {
    pub name: Arc<str>,
    pub credential: ClientCredential,
    pub limits: ClientLimits,
}

/// Who may call.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// Every configured client, in client order (see the module docs).
    pub clients: Vec<ConfiguredClient>,
    pub allow_anonymous: bool,
    pub admin_token: Option<Secret>,
    /// Where the runtime clients are kept when the store is in memory (`auth.clients_file`).
    pub clients_file: Option<std::path::PathBuf>,
}

impl AuthConfig {
    /// `env_clients`: the entries of `PROXY_CLIENT_KEYS` (`name:key` or `key`) when it is set;
    /// they take the place of `auth.client_keys`.
    pub(super) fn from_raw(
        raw: Raw,
        env_clients: Option<Vec<String>>,
    ) -> Result<AuthConfig, ConfigError> {
        // (setting at fault, name if given, credential, limits)
        let mut listed: Vec<(String, Option<String>, ClientCredential, ClientLimits)> = Vec::new();
        match env_clients {
            Some(entries) => {
                for e in entries {
                    let (name, key) = split_entry(&e);
                    if key.is_empty() {
                        continue;
                    }
                    listed.push((
                        "PROXY_CLIENT_KEYS".into(),
                        name.map(str::to_string),
                        ClientCredential::Key(Secret::new(key)),
                        ClientLimits::default(),
                    ));
                }
            }
            None => {
                for k in raw.client_keys.into_iter().filter(|k| !k.is_empty()) {
                    listed.push((
                        "auth.client_keys".into(),
                        None,
                        ClientCredential::Key(k),
                        ClientLimits::default(),
                    ));
                }
            }
        }
        for (i, c) in raw.clients.into_iter().enumerate() {
            let setting = format!("auth.clients[{i}]");
            let credential = match (c.key.is_empty(), c.key_sha256.trim()) {
                (false, "") => ClientCredential::Key(c.key.clone()),
                (true, "") => {
                    return Err(bad(
                        setting,
                        format!("client {:?} has neither key nor key_sha256", c.name),
                    ));
                }
                (true, hex) => ClientCredential::Sha256(parse_sha256(&setting, hex)?),
                (false, _) => {
                    return Err(bad(
                        setting,
                        format!("client {:?} has both key and key_sha256: give one", c.name),
                    ));
                }
            };
            let limits = c.limits();
            limits.validate(&setting)?;
            listed.push((setting, Some(c.name), credential, limits));
        }
        if listed.is_empty() && !raw.allow_anonymous {
            return Err(bad(
                "PROXY_CLIENT_KEYS",
                "no client key configured: set PROXY_CLIENT_KEYS (a comma list of credentials your \
                 clients will send, each optionally as name:key), add [[auth.clients]] tables, or \
                 set auth.allow_anonymous = true in the config file",
            ));
        }
        let mut clients = Vec::with_capacity(listed.len());
        let mut seen_names = HashSet::new();
        let mut seen_keys = HashSet::new();
        for (i, (setting, name, credential, limits)) in listed.into_iter().enumerate() {
            let setting = setting.as_str();
            let name = match name {
                Some(n) => {
                    check_client_name(setting, &n)?;
                    n
                }
                None => format!("client{}", i + 1),
            };
            if is_reserved_name(&name) {
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
            if !seen_keys.insert(credential.digest()) {
                return Err(bad(
                    setting,
                    format!("client {name:?} has the same key as an earlier client"),
                ));
            }
            clients.push(ConfiguredClient {
                name: name.into(),
                credential,
                limits,
            });
        }
        let admin_token = Some(raw.admin_token).filter(|t| !t.is_empty());
        // The same value as both would make that client an admin: whoever holds a client key
        // could read every client's usage and reload the configuration.
        if let Some(admin) = &admin_token
            && let Some(c) = clients
                .iter()
                .find(|c| c.credential.digest() == admin.digest())
        {
            return Err(bad(
                "auth.admin_token (PROXY_ADMIN_TOKEN)",
                format!(
                    "the admin token equals the key of client {:?}: give each its own value",
                    c.name
                ),
            ));
        }
        let clients_file = Some(raw.clients_file.trim())
            .filter(|f| !f.is_empty())
            .map(std::path::PathBuf::from);
        Ok(AuthConfig {
            clients,
            allow_anonymous: raw.allow_anonymous,
            admin_token,
            clients_file,
        })
    }
}

/// Names that are not clients' (the ledger's and the status page's own).
pub fn is_reserved_name(name: &str) -> bool {
    matches!(name, "admin" | "anonymous" | "-" | "other")
}

/// 64 hex digits.
fn parse_sha256(setting: &str, hex: &str) -> Result<[u8; 32], ConfigError> {
    let bad_digest = || {
        bad(
            format!("{setting}.key_sha256"),
            "expected 64 hex digits: the SHA-256 of the key (`printf %s KEY | sha256sum`)",
        )
    };
    crate::secret::digest_from_hex(hex).ok_or_else(bad_digest)
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
pub fn check_client_name(setting: &str, name: &str) -> Result<(), ConfigError> {
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
