//! A reload's Vertex AI tokens, minted before the new configuration is swapped in: an entry
//! whose token endpoint refuses (or cannot be reached) refuses the reload, naming its
//! credentials setting, and the running configuration stays. The tokens minted are handed to
//! the new pool's entries, so the check costs no extra mint.

use std::sync::Arc;
use std::time::Duration;

use super::VertexEntry;
use super::token::{self, Token, TokenSource};
use crate::config::{Config, ConfigError};

/// How long a reload waits for one entry's token.
const MINT_TIMEOUT: Duration = Duration::from_secs(15);

/// Tokens minted for a reload's entries, by (project, location).
#[derive(Default)]
pub struct Minted(Vec<((String, String), Arc<Token>)>);

impl Minted {
    /// Give each of the new pool's Vertex `entries` the token minted for it.
    pub fn hand_to<'a>(self, entries: impl Iterator<Item = &'a VertexEntry>) {
        for v in entries {
            if let Some((_, t)) = self
                .0
                .iter()
                .find(|((p, l), _)| *p == v.project && *l == v.location)
            {
                v.tokens.adopt(t.clone());
            }
        }
    }
}

/// Mint one token for each `[[pool.vertex]]` entry of `config`, on a runtime of its own (a
/// reload runs on a blocking thread): `Err` names the credentials setting of the first entry
/// that gets none.
pub fn before_reload(config: &Config) -> Result<Minted, ConfigError> {
    if config.pool.vertex.is_empty() {
        return Ok(Minted::default());
    }
    let run = || -> Result<Minted, ConfigError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| ConfigError {
                setting: "pool.vertex".into(),
                problem: format!("cannot start the token check: {e}"),
            })?;
        rt.block_on(mint_all(config))
    };
    std::thread::scope(|s| s.spawn(run).join()).unwrap_or_else(|_| {
        Err(ConfigError {
            setting: "pool.vertex".into(),
            problem: "the token check failed".into(),
        })
    })
}

async fn mint_all(config: &Config) -> Result<Minted, ConfigError> {
    let http = super::token_client(&config.upstream);
    let mut minted = Vec::with_capacity(config.pool.vertex.len());
    for v in &config.pool.vertex {
        let source = TokenSource::new(token::minter(&v.credentials, http.clone()));
        let why = match tokio::time::timeout(MINT_TIMEOUT, source.bearer()).await {
            Ok(Ok(t)) => {
                minted.push(((v.project.clone(), v.location.clone()), t));
                continue;
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {}s", MINT_TIMEOUT.as_secs()),
        };
        return Err(ConfigError {
            setting: v.credentials_setting.clone(),
            problem: format!(
                "the Vertex AI entry {}/{} cannot get an access token: {why}",
                v.project, v.location
            ),
        });
    }
    Ok(Minted(minted))
}
