//! `[auth]`: the credentials clients present and the admin token.

use serde::Deserialize;

use super::check::{ConfigError, bad};
use crate::secret::Secret;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Raw {
    pub(super) client_keys: Vec<Secret>,
    allow_anonymous: bool,
    admin_token: Secret,
}

/// Who may call.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    pub client_keys: Vec<Secret>,
    pub allow_anonymous: bool,
    pub admin_token: Option<Secret>,
}

impl AuthConfig {
    pub(super) fn from_raw(raw: Raw) -> Result<AuthConfig, ConfigError> {
        let client_keys: Vec<Secret> = raw
            .client_keys
            .into_iter()
            .filter(|k| !k.is_empty())
            .collect();
        if client_keys.is_empty() && !raw.allow_anonymous {
            return Err(bad(
                "PROXY_CLIENT_KEYS",
                "no client key configured: set PROXY_CLIENT_KEYS (a comma list of credentials your \
                 clients will send), or set auth.allow_anonymous = true in the config file",
            ));
        }
        Ok(AuthConfig {
            client_keys,
            allow_anonymous: raw.allow_anonymous,
            admin_token: Some(raw.admin_token).filter(|t| !t.is_empty()),
        })
    }
}
