//! `--check`: the configuration validated, the store connected to, and a summary of what
//! would run (listen address, store, pool and client counts), without serving. Never prints a
//! secret: keys are counted, the Redis URL is redacted.

use std::time::Duration;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::state::AppState;

/// Bound on the store check: the store's own timeout applies to each call, this to connecting.
const STORE_CHECK: Duration = Duration::from_secs(10);

/// Check `config`'s store and describe the proxy it would start. `Err` names the setting at
/// fault (the binary exits 2 with it).
pub async fn check(config: Config) -> Result<String, String> {
    let listen = config.server.listen;
    let dashboard = config.server.dashboard_url(listen);
    let upstream = config.upstream.url.text.clone();
    let keys = config.pool.keys.len();
    let clients = config.auth.clients.len();
    let anonymous = config.auth.allow_anonymous;
    let admin = config.auth.admin_token.is_some();
    let webhooks = config.alerts.webhooks.len();
    let email = config.alerts.email.is_some();
    let redis = config
        .store
        .redis_url
        .as_ref()
        .map(|u| crate::quota::redis::redact_url(u.expose()));
    let on_error = config.store.on_error.as_str();
    let state = AppState::new(config, Metrics::new(None))
        .map_err(|e| format!("store.redis_url (REDIS_URL): {e}"))?;
    let store = match &redis {
        None => "memory (this replica's counters)".to_string(),
        Some(url) => {
            match tokio::time::timeout(STORE_CHECK, state.store.ping()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    return Err(format!(
                        "store.redis_url (REDIS_URL): the store at {url} does not answer: {e}"
                    ));
                }
                Err(_) => {
                    return Err(format!(
                        "store.redis_url (REDIS_URL): the store at {url} did not answer within {} s",
                        STORE_CHECK.as_secs()
                    ));
                }
            }
            format!("redis {url} (reachable; on error: {on_error})")
        }
    };
    // Each Vertex entry's first token: a refusing token endpoint fails the check, naming it.
    state.pool.check_vertex_tokens().await?;
    let vertex = state
        .pool
        .keys
        .iter()
        .filter(|k| k.vertex.is_some())
        .count();
    let vertex_line = if vertex > 0 {
        format!(
            "vertex:    {vertex} Vertex AI entr{} (tokens minted), order {}\n",
            if vertex == 1 { "y" } else { "ies" },
            state.pool.order.as_str()
        )
    } else {
        String::new()
    };
    let projects = {
        let set: std::collections::HashSet<&str> =
            state.pool.keys.iter().map(|k| &*k.project).collect();
        set.len()
    };
    Ok(format!(
        "configuration OK\n\
         listen:    {listen}\n\
         dashboard: {dashboard}\n\
         upstream:  {upstream}\n\
         store:     {store}\n\
         pool:      {keys} key(s) in {projects} project(s)\n\
         {vertex_line}\
         clients:   {clients} client key(s){}; admin token {}\n\
         alerts:    {webhooks} webhook(s), e-mail {}\n",
        if anonymous { ", anonymous allowed" } else { "" },
        if admin { "set" } else { "not set" },
        if email { "on" } else { "off" },
    ))
}
