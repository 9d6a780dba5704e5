//! Every environment variable the proxy reads and the setting it stands for: the tables
//! [`super::Config::load`] applies, and the list `--help` prints.

/// Environment variables that map onto one TOML setting each.
pub(super) const ENV_SETTINGS: &[(&str, &str)] = &[
    ("GEMINI_UPSTREAM_URL", "upstream.url"),
    ("GEMINI_UPSTREAM_CA_FILE", "upstream.ca_file"),
    ("GEMINI_UPSTREAM_HTTP2", "upstream.http2"),
    ("PROXY_LISTEN", "server.listen"),
    ("PROXY_PUBLIC_URL", "server.public_url"),
    ("PROXY_PATH_PREFIX", "server.path_prefix"),
    ("PROXY_WATCH_CONFIG", "server.watch_config"),
    ("PROXY_ADMIN_TOKEN", "auth.admin_token"),
    ("PROXY_CLIENTS_FILE", "auth.clients_file"),
    ("REDIS_URL", "store.redis_url"),
    ("REDIS_TLS_CA_FILE", "store.tls_ca_file"),
    ("REDIS_TLS_CERT_FILE", "store.tls_cert_file"),
    ("REDIS_TLS_KEY_FILE", "store.tls_key_file"),
    ("PROXY_LOG_FORMAT", "log.format"),
    ("PROXY_METRICS_TOKEN", "metrics.token"),
];

/// Environment variables holding a whole number.
pub(super) const ENV_NUMBERS: &[(&str, &str)] = &[
    ("GEMINI_MINUTE_LIMIT", "limits.minute"),
    ("GEMINI_DAILY_LIMIT", "limits.daily"),
    ("GEMINI_TOKEN_MINUTE_LIMIT", "limits.token_minute"),
    ("GEMINI_MAX_REQUEST_TOKENS", "limits.max_request_tokens"),
    ("PROXY_QUEUE_MAX_WAIT_SECS", "queue.max_wait_secs"),
    ("PROXY_LIVE_MAX_SESSIONS", "live.max_sessions"),
    ("PROXY_QUEUE_MAX_WAITERS_TOTAL", "queue.max_waiters_total"),
    ("PROXY_QUEUE_MAX_WAITING_BYTES", "queue.max_waiting_bytes"),
    ("PROXY_MAX_BUFFERED_BYTES", "server.max_buffered_bytes"),
    ("PROXY_CACHE_TTL_SECS", "cache.ttl_secs"),
    (
        "PROXY_MAX_CONNECTIONS_PER_IP",
        "server.max_connections_per_ip",
    ),
    ("PROXY_IDLE_TIMEOUT_SECS", "server.idle_timeout_secs"),
];

/// The config file, the pooled keys and the clients: read by hand (lists), listed first.
const ENV_SOURCES: &[(&str, &str)] = &[
    ("PROXY_CONFIG", "--config FILE"),
    ("GEMINI_API_KEY", "[[keys]] (one pooled key)"),
    ("GEMINI_API_KEY_BACKUP", "[[keys]] (one more pooled key)"),
    ("GEMINI_API_KEYS", "[[keys]] (a comma list of pooled keys)"),
    (
        "PROXY_CLIENT_KEYS",
        "auth.client_keys (a comma list, `name:key` or `key`)",
    ),
];

/// The other variables read by hand (switches, the alert channels, logging).
const ENV_OTHERS: &[(&str, &str)] = &[
    ("PROXY_CACHE", "cache.enabled (on/off)"),
    (
        "PROXY_ALERT_WEBHOOK_URL",
        "alerts.webhooks (one more webhook)",
    ),
    (
        "PROXY_ALERT_WEBHOOK_FORMAT",
        "alerts.webhooks[].format of that webhook",
    ),
    ("PROXY_SMTP_URL", "alerts.email.smtp_url"),
    ("PROXY_ALERT_EMAIL_FROM", "alerts.email.from"),
    ("PROXY_ALERT_EMAIL_TO", "alerts.email.to (a comma list)"),
    (
        "GOOGLE_APPLICATION_CREDENTIALS",
        "[[pool.vertex]] credentials when an entry names no credentials_file",
    ),
    (
        "GCE_METADATA_HOST",
        "the metadata server of [[pool.vertex]] entries without a credentials file",
    ),
    ("RUST_LOG", "the log filter (default: info)"),
    (
        "TOKIO_WORKER_THREADS",
        "request-handling threads (read by Tokio; default: the CPUs)",
    ),
];

/// Every variable with its setting, in the order `--help` lists them.
pub fn all() -> impl Iterator<Item = (&'static str, &'static str)> {
    ENV_SOURCES
        .iter()
        .chain(ENV_SETTINGS)
        .chain(ENV_NUMBERS)
        .chain(ENV_OTHERS)
        .chain(super::otel::VARIABLES)
        .copied()
}

/// The table `--help` ends with: one variable a line, its setting beside it.
pub fn help_table() -> String {
    let width = all().map(|(v, _)| v.len()).max().unwrap_or(0);
    let mut out = String::from(
        "Environment variables (each overrides the setting beside it; the config file and the \
         embedded defaults give the rest):\n",
    );
    for (var, setting) in all() {
        out.push_str(&format!("  {var:<width$}  {setting}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_help_table_lists_every_variable_once_with_its_setting() {
        let table = help_table();
        let mut seen = std::collections::HashSet::new();
        for (var, setting) in all() {
            assert!(seen.insert(var), "{var} listed twice");
            let line = table
                .lines()
                .find(|l| l.split_whitespace().next() == Some(var))
                .unwrap_or_else(|| panic!("{var} missing from {table}"));
            assert!(line.contains(setting), "{line}");
        }
        assert_eq!(
            seen.len(),
            ENV_SOURCES.len()
                + ENV_SETTINGS.len()
                + ENV_NUMBERS.len()
                + ENV_OTHERS.len()
                + crate::config::otel::VARIABLES.len()
        );
    }
}
