//! Typed settings, one section a file: embedded `config/default.toml` < `--config FILE` <
//! environment, each section validated into its own type whose errors name the setting at
//! fault. Components take only their section (`build_client(&cfg.upstream)`).

mod alerts;
mod auth;
mod batch;
pub mod cache;
mod channels;
pub(crate) mod check;
pub mod client_limits;
pub(crate) mod fallbacks;
mod limits;
mod live;
mod log;
mod metrics;
mod otel;
mod pool;
mod prices;
mod prints;
mod queue;
mod server;
mod store;
mod upstream;
pub mod variables;
mod vertex;
mod warnings;

use std::collections::HashMap;
use std::sync::Arc;

use serde::Deserialize;

pub use self::alerts::AlertsConfig;
pub use self::auth::{AuthConfig, check_client_name, is_reserved_name};
pub use self::batch::BatchConfig;
pub use self::cache::{CacheBackend, CacheConfig, CacheScope};
pub use self::channels::{EmailConfig, SecretUri, WebhookConfig, WebhookFormat};
pub use self::check::{BaseUrl, ConfigError};
use self::check::{bad, comma_list, env_value};
pub use self::client_limits::ClientLimits;
pub use self::fallbacks::FallbacksConfig;
pub use self::live::LiveConfig;
pub use self::log::{LogConfig, LogFormat};
pub use self::metrics::MetricsConfig;
pub use self::otel::{OtelConfig, SamplerKind};
pub use self::pool::{KeyConfig, Order, PoolConfig, Strategy, VertexConfig, VertexCredentials};
pub use self::prints::ConfigPrints;
pub use self::queue::QueueConfig;
pub use self::server::ServerConfig;
pub use self::upstream::UpstreamConfig;
use self::variables::{ENV_NUMBERS, ENV_SETTINGS};
pub use self::warnings::{ConfigWarning, SHORT_SECRET};
pub use crate::ledger::prices::{Billing, PriceEntry, Prices};
pub use crate::quota::StoreConfig;
pub use crate::quota::limits::{LimitOverride, LimitsConfig, ProjectLimits, QuotaDefaults};
pub use crate::quota::resilient::StoreFailurePolicy;

/// The defaults compiled into the binary (the repository's `config/default.toml`).
pub const DEFAULT_TOML: &str = include_str!("../../config/default.toml");

/// Where settings come from besides the embedded defaults. Tests pass their own `env` map so
/// they never touch the process environment.
#[derive(Debug, Default, Clone)]
pub struct Sources {
    pub file: Option<String>,
    pub env: HashMap<String, String>,
}

impl Sources {
    /// The process environment and the `--config` file (or `PROXY_CONFIG`).
    pub fn from_process(file: Option<String>) -> Self {
        let env: HashMap<String, String> = std::env::vars().collect();
        let file = file.or_else(|| env.get("PROXY_CONFIG").cloned().filter(|s| !s.is_empty()));
        Sources { file, env }
    }
}

/// The TOML's shape (every field present thanks to the embedded defaults).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    server: server::Raw,
    upstream: upstream::Raw,
    auth: auth::Raw,
    pool: pool::Raw,
    limits: limits::Raw,
    queue: queue::Raw,
    live: live::Raw,
    store: store::Raw,
    log: log::Raw,
    metrics: metrics::Raw,
    alerts: alerts::Raw,
    cache: cache::Raw,
    #[serde(default)]
    otel: otel::Raw,
    #[serde(default)]
    keys: Vec<pool::RawKey>,
    #[serde(default)]
    prices: prices::Raw,
    #[serde(default)]
    fallbacks: fallbacks::Raw,
    #[serde(default)]
    batch: batch::Raw,
}

/// Everything the proxy needs, validated, by section.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub upstream: UpstreamConfig,
    pub auth: AuthConfig,
    pub pool: PoolConfig,
    pub limits: LimitsConfig,
    pub queue: QueueConfig,
    /// Live API WebSocket sessions.
    pub live: LiveConfig,
    pub store: StoreConfig,
    pub log: LogConfig,
    pub metrics: MetricsConfig,
    pub alerts: AlertsConfig,
    /// The response cache.
    pub cache: CacheConfig,
    /// OpenTelemetry trace export (read at start; a reload does not change it).
    pub otel: OtelConfig,
    /// The price table: embedded, with the user's `[prices."MODEL"]` laid over it.
    pub prices: Arc<Prices>,
    /// Fallback chains between models.
    pub fallbacks: FallbacksConfig,
    /// The Batch API's background check.
    pub batch: BatchConfig,
    /// Digests of every setting it was loaded from (a reload names what changed with them).
    pub prints: ConfigPrints,
}

impl Config {
    /// Load and validate. Every failure names the setting (TOML path or variable) at fault.
    pub fn load(sources: &Sources) -> Result<Config, ConfigError> {
        use config::{File, FileFormat};
        let mut builder =
            config::Config::builder().add_source(File::from_str(DEFAULT_TOML, FileFormat::Toml));
        if let Some(path) = &sources.file {
            if !std::path::Path::new(path).is_file() {
                return Err(bad("--config", format!("no readable file at {path:?}")));
            }
            builder = builder.add_source(File::new(path, FileFormat::Toml));
        }
        let env = &sources.env;
        for (var, key) in ENV_SETTINGS {
            if let Some(v) = env.get(*var) {
                builder = builder
                    .set_override(*key, v.trim().to_string())
                    .map_err(|e| bad(*var, e.to_string()))?;
            }
        }
        for (var, key) in ENV_NUMBERS {
            if let Some(v) = env_value(env, var) {
                let n: u64 = v
                    .parse()
                    .map_err(|_| bad(*var, format!("expected a whole number, got {v:?}")))?;
                builder = builder
                    .set_override(*key, n)
                    .map_err(|e| bad(*var, e.to_string()))?;
            }
        }
        if let Some(v) = env_value(env, "PROXY_CACHE") {
            builder = builder
                .set_override("cache.enabled", cache::switch(v)?)
                .map_err(|e| bad("PROXY_CACHE", e.to_string()))?;
        }
        // `name:key` entries are split by the auth section, which names them.
        let env_clients: Option<Vec<String>> = env_value(env, "PROXY_CLIENT_KEYS")
            .map(|v| comma_list(v).map(str::to_string).collect());
        let merged = builder.build().map_err(describe_config_error)?;
        let mut prints = merged
            .clone()
            .try_deserialize::<serde_json::Value>()
            .map(|tree| ConfigPrints::of(&tree))
            .map_err(describe_config_error)?;
        // Lists the environment replaces: the file's is not used, so its changes are none.
        for (var, setting) in [
            ("PROXY_CLIENT_KEYS", "auth.client_keys"),
            ("PROXY_ALERT_EMAIL_TO", "alerts.email.to"),
        ] {
            if env_value(env, var).is_some() {
                prints.forget(setting);
            }
        }
        let raw: Raw = merged.try_deserialize().map_err(describe_config_error)?;
        let store = store::from_raw(raw.store)?;
        Ok(Config {
            cache: cache::from_raw(raw.cache, store.redis_url.is_some())?,
            pool: PoolConfig::from_raw(raw.pool, raw.keys, env)?,
            auth: AuthConfig::from_raw(raw.auth, env_clients)?,
            server: ServerConfig::from_raw(raw.server)?,
            upstream: UpstreamConfig::from_raw(raw.upstream)?,
            limits: limits::from_raw(raw.limits)?,
            queue: QueueConfig::from_raw(raw.queue)?,
            live: LiveConfig::from_raw(raw.live)?,
            store,
            log: LogConfig::from_raw(raw.log)?,
            metrics: MetricsConfig::from_raw(raw.metrics),
            alerts: alerts::from_raw(raw.alerts, env)?,
            prices: prices::from_raw(raw.prices)?,
            fallbacks: FallbacksConfig::from_raw(raw.fallbacks)?,
            batch: BatchConfig::from_raw(raw.batch)?,
            otel: otel::from_raw(raw.otel, env)?,
            prints,
        })
    }
}

/// A config for unit tests: `toml` as the `--config` file (when not empty) and `env`, with one
/// pooled key and one client key unless `env` names its own.
#[cfg(test)]
pub(crate) fn for_test(toml: &str, env: &[(&str, &str)]) -> Config {
    try_for_test(toml, env).expect("test config loads")
}

/// [`for_test`] that hands back the error, for tests of refused settings.
#[cfg(test)]
pub(crate) fn try_for_test(toml: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let file = (!toml.is_empty()).then(|| {
        let path = std::env::temp_dir().join(format!(
            "gqp-unit-{}-{}.toml",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::write(&path, toml).unwrap();
        path.to_string_lossy().into_owned()
    });
    let mut vars: HashMap<String, String> = HashMap::new();
    if !env.iter().any(|(k, _)| k.starts_with("GEMINI_API_KEY")) {
        vars.insert("GEMINI_API_KEY".to_string(), "k".to_string());
    }
    vars.insert("PROXY_CLIENT_KEYS".to_string(), "c".to_string());
    for (k, v) in env {
        vars.insert(k.to_string(), v.to_string());
    }
    Config::load(&Sources { file, env: vars })
}

/// The `config` crate's messages already name the key; keep them, under a stable prefix, but
/// never what the file says there: a TOML syntax error quotes the line (which may hold a key),
/// a wrong type quotes the value.
fn describe_config_error(e: config::ConfigError) -> ConfigError {
    let text = e.to_string();
    let setting = text
        .split("for key `")
        .nth(1)
        .and_then(|rest| rest.split('`').next())
        .or_else(|| {
            text.split("missing configuration field \"")
                .nth(1)
                .and_then(|rest| rest.split('"').next())
        })
        .unwrap_or("config file")
        // The crate writes a field of a table in a list as `auth.clients[0]key`.
        .replace("]", "].")
        .replace("].[", "][")
        .replace("]..", "].")
        .trim_end_matches('.')
        .to_string();
    bad(setting, without_values(&text))
}

/// `text` without the file's contents: a TOML syntax error keeps its position and reason
/// (not the quoted line and its marker), and a quoted string value becomes `"…"`.
fn without_values(text: &str) -> String {
    let mut lines = text.lines();
    let first = lines.next().unwrap_or_default();
    let mut out = first.to_string();
    if first.starts_with("TOML parse error") {
        // The quoted source: `  |`, `2 | key = "…`, `  |      ^`.
        let reason: Vec<&str> = lines
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.contains('|'))
            .collect();
        if !reason.is_empty() {
            out = format!("{first}: {}", reason.join(" "));
        }
    }
    let mut clean = String::with_capacity(out.len());
    let mut rest = out.as_str();
    while let Some(i) = rest.find("string \"") {
        let (head, tail) = rest.split_at(i + "string \"".len());
        clean.push_str(head);
        // The value ends at the first unescaped quote before `, expected` (a value may hold
        // quotes itself, escaped).
        let end = tail
            .match_indices("\", expected")
            .map(|(j, _)| j)
            .find(|&j| !tail[..j].ends_with('\\'))
            .or_else(|| tail.rfind('"'))
            .unwrap_or(tail.len());
        clean.push('…');
        rest = &tail[end..];
    }
    clean.push_str(rest);
    clean
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Sources {
        Sources {
            file: None,
            env: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn embedded_defaults_with_one_key_and_client_key_load() {
        let c = Config::load(&env(&[
            ("GEMINI_API_KEY", "k1"),
            ("PROXY_CLIENT_KEYS", "c1"),
        ]))
        .expect("loads");
        assert_eq!(c.server.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(
            c.upstream.url.text,
            "https://generativelanguage.googleapis.com"
        );
        assert_eq!(c.limits.generate.minute, 15);
        assert_eq!(c.limits.generate.daily, 1500);
        assert_eq!(c.limits.generate.token_minute, 1_000_000);
        assert_eq!(c.limits.max_request_tokens, 32_000);
        assert_eq!(c.limits.timezone, chrono_tz::America::Los_Angeles);
        assert!(c.store.redis_url.is_none());
        assert!(c.auth.admin_token.is_none());
    }

    #[test]
    fn key_pool_is_union_of_three_variables_in_order_without_duplicates() {
        let c = Config::load(&env(&[
            ("GEMINI_API_KEY", "a"),
            ("GEMINI_API_KEY_BACKUP", "b"),
            ("GEMINI_API_KEYS", "c, a ,d,,b"),
            ("PROXY_CLIENT_KEYS", "x"),
        ]))
        .unwrap();
        let keys: Vec<&str> = c.pool.keys.iter().map(|k| k.key.expose()).collect();
        assert_eq!(keys, ["a", "b", "c", "d"]);
    }

    #[test]
    fn refuses_to_start_without_keys_and_says_what_to_set() {
        let e = Config::load(&env(&[("PROXY_CLIENT_KEYS", "x")])).unwrap_err();
        assert!(e.to_string().contains("GEMINI_API_KEY"), "{e}");
    }

    #[test]
    fn refuses_to_start_without_client_keys_unless_anonymous_allowed() {
        let e = Config::load(&env(&[("GEMINI_API_KEY", "k")])).unwrap_err();
        assert!(e.to_string().contains("PROXY_CLIENT_KEYS"), "{e}");
    }

    #[test]
    fn bad_numbers_name_their_variable() {
        let e = Config::load(&env(&[
            ("GEMINI_API_KEY", "k"),
            ("PROXY_CLIENT_KEYS", "c"),
            ("GEMINI_MINUTE_LIMIT", "ten"),
        ]))
        .unwrap_err();
        assert!(e.to_string().contains("GEMINI_MINUTE_LIMIT"), "{e}");
        let e = Config::load(&env(&[
            ("GEMINI_API_KEY", "k"),
            ("PROXY_CLIENT_KEYS", "c"),
            ("GEMINI_DAILY_LIMIT", "0"),
        ]))
        .unwrap_err();
        assert!(e.to_string().contains("GEMINI_DAILY_LIMIT"), "{e}");
    }

    #[test]
    fn keys_that_cannot_travel_in_a_header_are_refused_without_showing_them() {
        let e = Config::load(&env(&[
            ("GEMINI_API_KEY", "AIzaBad Key\u{7f}000001"),
            ("PROXY_CLIENT_KEYS", "c"),
        ]))
        .unwrap_err();
        assert!(e.to_string().contains("GEMINI_API_KEY"), "{e}");
        assert!(!e.to_string().contains("Bad Key"), "{e}");
    }

    #[test]
    fn bad_listen_url_and_format_name_their_setting() {
        for (var, val) in [
            ("PROXY_LISTEN", "nope"),
            ("GEMINI_UPSTREAM_URL", "ftp://x"),
            ("PROXY_LOG_FORMAT", "xml"),
            ("REDIS_URL", "localhost:6379"),
            ("REDIS_TLS_CA_FILE", "/nonexistent/ca.pem"),
            ("PROXY_PATH_PREFIX", "gemini"),
            ("PROXY_PATH_PREFIX", "/v1beta"),
        ] {
            let e = Config::load(&env(&[
                ("GEMINI_API_KEY", "k"),
                ("PROXY_CLIENT_KEYS", "c"),
                (var, val),
            ]))
            .unwrap_err();
            assert!(e.to_string().contains(var), "{var}: {e}");
        }
    }

    #[test]
    fn upstream_url_with_credentials_is_refused_without_echoing_them() {
        let e = Config::load(&env(&[
            ("GEMINI_API_KEY", "k"),
            ("PROXY_CLIENT_KEYS", "c"),
            (
                "GEMINI_UPSTREAM_URL",
                "https://gw:Sup3rSecret@gw.example/gemini",
            ),
        ]))
        .unwrap_err();
        let text = e.to_string();
        assert!(text.contains("GEMINI_UPSTREAM_URL"), "{text}");
        assert!(text.contains("credentials"), "{text}");
        assert!(!text.contains("Sup3rSecret"), "{text}");
    }

    #[test]
    fn upstream_ca_file_that_is_missing_empty_or_not_pem_names_its_setting() {
        let dir = std::env::temp_dir().join(format!("gqp-config-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let garbage = dir.join("garbage.pem");
        std::fs::write(
            &garbage,
            "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let missing = dir.join("missing.pem");
        for path in [&empty, &garbage, &missing, &dir] {
            let e = Config::load(&env(&[
                ("GEMINI_API_KEY", "k"),
                ("PROXY_CLIENT_KEYS", "c"),
                ("GEMINI_UPSTREAM_CA_FILE", path.to_str().unwrap()),
            ]))
            .unwrap_err();
            let text = e.to_string();
            assert!(text.contains("upstream.ca_file"), "{text}");
            assert!(text.contains("GEMINI_UPSTREAM_CA_FILE"), "{text}");
        }
        let c = Config::load(&env(&[("GEMINI_API_KEY", "k"), ("PROXY_CLIENT_KEYS", "c")])).unwrap();
        assert!(c.upstream.ca.is_empty());
    }

    #[test]
    fn toml_file_declares_named_keys_with_projects_and_overrides() {
        let dir = std::env::temp_dir().join(format!("gqp-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        std::fs::write(
            &path,
            r#"
[auth]
client_keys = ["c1"]
[limits]
minute = 7
[limits.models."gemini-2.5-pro"]
minute = 5
[limits.projects.proj-a]
daily = 99
[limits.projects.proj-a.models."gemini-2.5-pro"]
token_minute = 1234
[[keys]]
key = "AIzaFirstKey000001"
name = "first"
project = "proj-a"
"#,
        )
        .unwrap();
        let c = Config::load(&Sources {
            file: Some(path.to_string_lossy().into_owned()),
            env: [("GEMINI_API_KEY".to_string(), "AIzaSecond0002".to_string())].into(),
        })
        .unwrap();
        assert_eq!(c.pool.keys.len(), 2);
        assert_eq!(c.pool.keys[0].name.as_deref(), Some("first"));
        assert_eq!(c.pool.keys[0].project.as_deref(), Some("proj-a"));
        assert_eq!(c.limits.generate.minute, 7);
        assert_eq!(c.limits.models["gemini-2.5-pro"].minute, Some(5));
        assert_eq!(c.limits.projects["proj-a"].all_models.daily, Some(99));
        assert_eq!(
            c.limits.projects["proj-a"].models["gemini-2.5-pro"].token_minute,
            Some(1234)
        );
    }

    #[test]
    fn errors_name_the_setting_but_never_quote_what_the_file_says() {
        for (toml, setting, reason) in [
            (
                "[auth]\nclient_keys = \"AIzaSECRETSECRET123\"\n",
                "auth.client_keys",
                "expected a sequence",
            ),
            (
                "[[keys]]\nkey = \"AIzaSECRETSECRET456\n",
                "config file",
                "line 2",
            ),
            (
                "[limits]\nminute = \"AIza\\\", expected SECRET 789\"\n",
                "limits.minute",
                "expected an integer",
            ),
        ] {
            let e = try_for_test(toml, &[]).unwrap_err();
            let text = e.to_string();
            assert_eq!(e.setting, setting, "{text}");
            assert!(text.contains(reason), "{text}");
            assert!(!text.contains("SECRET"), "a value in an error: {text}");
        }
    }

    #[test]
    fn unknown_toml_keys_are_refused_by_name() {
        let dir = std::env::temp_dir().join(format!("gqp-config-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        std::fs::write(&path, "[server]\nlisten_addr = \"x\"\n").unwrap();
        let e = Config::load(&Sources {
            file: Some(path.to_string_lossy().into_owned()),
            env: [
                ("GEMINI_API_KEY".to_string(), "k".to_string()),
                ("PROXY_CLIENT_KEYS".to_string(), "c".to_string()),
            ]
            .into(),
        })
        .unwrap_err();
        assert!(e.to_string().contains("listen_addr"), "{e}");
    }

    #[test]
    fn clients_are_named_from_tables_and_name_key_entries_and_plain_keys_by_position() {
        let toml = "[[auth.clients]]\nname = \"team-a\"\nkey = \"key-of-team-a\"\n";
        let c = try_for_test(
            toml,
            &[("PROXY_CLIENT_KEYS", "plain-key, team-b:key-of-team-b")],
        )
        .unwrap();
        let names: Vec<&str> = c.auth.clients.iter().map(|c| &*c.name).collect();
        assert_eq!(names, ["client1", "team-b", "team-a"]);
        let keys: Vec<&str> = c
            .auth
            .clients
            .iter()
            .map(|c| c.credential.key().unwrap().expose())
            .collect();
        assert_eq!(keys, ["plain-key", "key-of-team-b", "key-of-team-a"]);
        // `auth.client_keys` in TOML stays a list of plain keys, named by position.
        let c = try_for_test("[auth]\nclient_keys = [\"a\", \"b\"]\n", &[]);
        assert!(c.is_ok());
    }

    #[test]
    fn a_client_table_takes_limits_and_may_give_its_key_as_a_sha256() {
        let digest = "2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b";
        let toml = format!(
            "[[auth.clients]]\nname = \"team-a\"\nkey_sha256 = \"{digest}\"\nrpm = 30\n\
             tpm = 100000\nmax_concurrent = 4\ndaily_budget_usd = 5\nmonthly_budget_usd = 99.5\n\
             models = [\"gemini-2.5-*\"]\nweight = 3\nmax_wait_secs = 10\n\
             timezone = \"Europe/Berlin\"\n"
        );
        let c = try_for_test(&toml, &[]).unwrap();
        let a = &c.auth.clients[1];
        // SHA-256 of "secret".
        assert_eq!(
            a.credential.digest(),
            crate::secret::presented_digest("secret")
        );
        assert!(a.credential.key().is_none());
        assert_eq!(a.limits.rpm, Some(30));
        assert_eq!(a.limits.tpm, Some(100_000));
        assert_eq!(a.limits.max_concurrent, Some(4));
        assert_eq!(a.limits.daily_budget_usd, Some(5.0));
        assert_eq!(a.limits.monthly_budget_usd, Some(99.5));
        assert_eq!(a.limits.weight(), 3);
        assert_eq!(a.limits.max_wait_secs, Some(10.0));
        assert!(a.limits.allows_model("gemini-2.5-pro"));
        assert!(!a.limits.allows_model("gemini-3-pro-preview"));
        for (toml, setting) in [
            (
                "[[auth.clients]]\nname = \"t\"\nkey = \"SECRETK9\"\nrpn = 3\n",
                "auth.clients",
            ),
            (
                "[[auth.clients]]\nname = \"t\"\nkey_sha256 = \"abc\"\n",
                "auth.clients[0].key_sha256",
            ),
            // 64 bytes, not 64 hex digits (it once panicked slicing a character in two).
            (
                "[[auth.clients]]\nname = \"t\"\nkey_sha256 = \"éééééééééééééééééééééééééééééééé\"\n",
                "auth.clients[0].key_sha256",
            ),
            ("[[auth.clients]]\nname = \"t\"\n", "auth.clients[0]"),
            (
                "[[auth.clients]]\nname = \"t\"\nkey = \"SECRETK9\"\nrpm = 0\n",
                "auth.clients[0].rpm",
            ),
        ] {
            let e = try_for_test(toml, &[]).unwrap_err();
            assert!(e.setting.starts_with(setting), "{toml}: {e}");
            assert!(!e.to_string().contains("SECRETK"), "a key in an error: {e}");
        }
    }

    #[test]
    fn duplicate_reserved_and_bad_client_names_are_refused_naming_the_setting() {
        let long = format!("{}:SECRETK1", "n".repeat(65));
        for (toml, env, setting, what) in [
            (
                "",
                "team:SECRETK1,team:SECRETK2",
                "PROXY_CLIENT_KEYS",
                "used twice",
            ),
            (
                "",
                "SECRETK1,client1:SECRETK2",
                "PROXY_CLIENT_KEYS",
                "used twice",
            ),
            (
                "",
                "bad name:SECRETK1",
                "PROXY_CLIENT_KEYS",
                "1-64 characters",
            ),
            ("", ":SECRETK1", "PROXY_CLIENT_KEYS", "1-64 characters"),
            ("", &long, "PROXY_CLIENT_KEYS", "1-64 characters"),
            ("", "admin:SECRETK1", "PROXY_CLIENT_KEYS", "reserved"),
            ("", "a:SECRETK1,b:SECRETK1", "PROXY_CLIENT_KEYS", "same key"),
            (
                "[[auth.clients]]\nname = \"x/y\"\nkey = \"SECRETK9\"\n",
                "SECRETK1",
                "auth.clients[0]",
                "1-64 characters",
            ),
            (
                "[[auth.clients]]\nname = \"team\"\nkey = \"SECRETK9\"\n",
                "team:SECRETK1",
                "auth.clients[0]",
                "used twice",
            ),
        ] {
            let e = try_for_test(toml, &[("PROXY_CLIENT_KEYS", env)]).unwrap_err();
            assert_eq!(e.setting, setting, "{env}: {e}");
            assert!(e.to_string().contains(what), "{env}: {e}");
            assert!(!e.to_string().contains("SECRETK"), "a key in an error: {e}");
        }
    }
}
