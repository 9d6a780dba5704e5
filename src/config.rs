//! Typed settings: embedded `config/default.toml` < `--config FILE` < environment, validated
//! into a [`Config`] whose errors name the setting at fault.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use chrono_tz::Tz;
use serde::Deserialize;

use crate::secret::Secret;

/// The defaults compiled into the binary (the repository's `config/default.toml`).
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

/// A setting that stops start-up: which one, and what is wrong with it.
#[derive(Debug, thiserror::Error)]
#[error("invalid setting `{setting}`: {problem}")]
pub struct ConfigError {
    pub setting: String,
    pub problem: String,
}

fn bad(setting: impl Into<String>, problem: impl Into<String>) -> ConfigError {
    ConfigError {
        setting: setting.into(),
        problem: problem.into(),
    }
}

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

// ---------- raw shape of the TOML (every field present thanks to the embedded defaults) ----------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    server: RawServer,
    upstream: RawUpstream,
    auth: RawAuth,
    pool: RawPool,
    limits: RawLimits,
    store: RawStore,
    log: RawLog,
    #[serde(default)]
    keys: Vec<RawKey>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: String,
    public_url: String,
    path_prefix: String,
    max_body_bytes: u64,
    header_read_timeout_secs: f64,
    body_read_timeout_secs: f64,
    max_connections: u64,
    shutdown_grace_secs: f64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    url: String,
    connect_timeout_secs: f64,
    request_timeout_secs: f64,
    stream_idle_timeout_secs: f64,
    max_attempts: u64,
    retry_deadline_secs: f64,
    max_wait_secs: f64,
    ca_file: String,
    http2: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuth {
    client_keys: Vec<Secret>,
    allow_anonymous: bool,
    admin_token: Secret,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPool {
    strategy: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    minute: u64,
    daily: u64,
    token_minute: u64,
    max_request_tokens: u64,
    embed_minute: u64,
    embed_daily: u64,
    embed_token_minute: u64,
    timezone: String,
    #[serde(default)]
    models: BTreeMap<String, LimitOverride>,
    #[serde(default)]
    projects: BTreeMap<String, ProjectLimits>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    redis_url: Secret,
    namespace: String,
    timeout_ms: u64,
    on_error: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLog {
    format: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKey {
    key: Secret,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    project: Option<String>,
}

/// Limits that replace the defaults for one model or one project (any subset of fields).
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LimitOverride {
    pub minute: Option<u64>,
    pub daily: Option<u64>,
    pub token_minute: Option<u64>,
    pub max_request_tokens: Option<u64>,
}

/// A project's own limits, and per-model limits inside that project.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ProjectLimits {
    #[serde(flatten)]
    pub all_models: LimitOverride,
    #[serde(default)]
    pub models: BTreeMap<String, LimitOverride>,
}

// ---------- validated config ----------

/// How keys are picked among those with room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// The key whose project has the most headroom; ties in turn.
    Headroom,
    /// The first key in configuration order with room ("primary first, backup after").
    Ordered,
}

/// What admission does while the shared store is unreachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreFailurePolicy {
    /// Count in this replica's memory until the store is back.
    Local,
    /// Refuse with 503.
    FailClosed,
    /// Admit without counting.
    FailOpen,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// One pooled Gemini key as configured.
#[derive(Debug, Clone)]
pub struct KeyConfig {
    pub key: Secret,
    pub name: Option<String>,
    pub project: Option<String>,
}

/// The three limits of one quota family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaDefaults {
    pub minute: u64,
    pub daily: u64,
    pub token_minute: u64,
}

#[derive(Debug, Clone)]
pub struct LimitsConfig {
    pub generate: QuotaDefaults,
    pub embed: QuotaDefaults,
    pub max_request_tokens: u64,
    pub timezone: Tz,
    pub models: BTreeMap<String, LimitOverride>,
    pub projects: BTreeMap<String, ProjectLimits>,
}

/// Everything the proxy needs, validated.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub public_url: Option<String>,
    /// Also serve the Gemini surface under this prefix (`/gemini` for a base URL of
    /// `http://proxy/gemini`); `None`: only at the root.
    pub path_prefix: Option<String>,
    pub max_body_bytes: usize,
    pub header_read_timeout: Duration,
    pub body_read_timeout: Duration,
    pub max_connections: usize,
    pub shutdown_grace: Duration,

    pub upstream_url: String,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub stream_idle_timeout: Duration,
    pub max_attempts: u32,
    pub retry_deadline: Duration,
    pub max_wait: Duration,
    /// Extra trust roots for the upstream's TLS (`upstream.ca_file`), beside Mozilla's and the
    /// system's.
    pub upstream_ca: Vec<rustls::pki_types::CertificateDer<'static>>,
    /// Offer HTTP/2 to an https upstream (`upstream.http2`), over several connections.
    pub upstream_http2: bool,

    pub client_keys: Vec<Secret>,
    pub allow_anonymous: bool,
    pub admin_token: Option<Secret>,

    pub strategy: Strategy,
    pub keys: Vec<KeyConfig>,
    pub limits: LimitsConfig,

    pub redis_url: Option<Secret>,
    pub store_namespace: String,
    pub store_timeout: Duration,
    pub store_on_error: StoreFailurePolicy,

    pub log_format: LogFormat,
}

/// Environment variables that map onto one TOML setting each.
const ENV_SETTINGS: &[(&str, &str)] = &[
    ("GEMINI_UPSTREAM_URL", "upstream.url"),
    ("GEMINI_UPSTREAM_CA_FILE", "upstream.ca_file"),
    ("GEMINI_UPSTREAM_HTTP2", "upstream.http2"),
    ("PROXY_LISTEN", "server.listen"),
    ("PROXY_PUBLIC_URL", "server.public_url"),
    ("PROXY_PATH_PREFIX", "server.path_prefix"),
    ("PROXY_ADMIN_TOKEN", "auth.admin_token"),
    ("REDIS_URL", "store.redis_url"),
    ("PROXY_LOG_FORMAT", "log.format"),
];

/// Environment variables holding a whole number.
const ENV_NUMBERS: &[(&str, &str)] = &[
    ("GEMINI_MINUTE_LIMIT", "limits.minute"),
    ("GEMINI_DAILY_LIMIT", "limits.daily"),
    ("GEMINI_TOKEN_MINUTE_LIMIT", "limits.token_minute"),
    ("GEMINI_MAX_REQUEST_TOKENS", "limits.max_request_tokens"),
];

fn env_value<'a>(env: &'a HashMap<String, String>, name: &str) -> Option<&'a str> {
    env.get(name).map(|s| s.trim()).filter(|s| !s.is_empty())
}

fn comma_list(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').map(str::trim).filter(|s| !s.is_empty())
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
        if let Some(v) = env_value(env, "PROXY_CLIENT_KEYS") {
            let list: Vec<String> = comma_list(v).map(str::to_string).collect();
            builder = builder
                .set_override("auth.client_keys", list)
                .map_err(|e| bad("PROXY_CLIENT_KEYS", e.to_string()))?;
        }
        let raw: Raw = builder
            .build()
            .and_then(|c| c.try_deserialize())
            .map_err(describe_config_error)?;

        let mut keys: Vec<KeyConfig> = Vec::new();
        let mut seen: HashSet<String> = HashSet::new();
        for (i, k) in raw.keys.into_iter().enumerate() {
            if k.key.is_empty() {
                return Err(bad(format!("keys[{i}].key"), "is empty"));
            }
            if let Some(p) = &k.project {
                check_name(&format!("keys[{i}].project"), p)?;
            }
            if seen.insert(k.key.expose().to_string()) {
                keys.push(KeyConfig {
                    key: k.key,
                    name: k.name.filter(|n| !n.is_empty()),
                    project: k.project.filter(|p| !p.is_empty()),
                });
            }
        }
        for var in ["GEMINI_API_KEY", "GEMINI_API_KEY_BACKUP", "GEMINI_API_KEYS"] {
            if let Some(v) = env_value(env, var) {
                for key in comma_list(v) {
                    if seen.insert(key.to_string()) {
                        keys.push(KeyConfig {
                            key: Secret::new(key),
                            name: None,
                            project: None,
                        });
                    }
                }
            }
        }
        if let Some(k) = keys
            .iter()
            .find(|k| !k.key.expose().bytes().all(|b| b.is_ascii_graphic()))
        {
            return Err(bad(
                "GEMINI_API_KEY / keys[].key",
                format!(
                    "the key {} holds spaces or characters an HTTP header cannot carry",
                    k.key.masked()
                ),
            ));
        }
        if keys.is_empty() {
            return Err(bad(
                "GEMINI_API_KEY",
                "no Gemini API key configured: set GEMINI_API_KEY (and optionally \
                 GEMINI_API_KEY_BACKUP or GEMINI_API_KEYS, a comma list), or add [[keys]] to the config file",
            ));
        }

        let client_keys: Vec<Secret> = raw
            .auth
            .client_keys
            .into_iter()
            .filter(|k| !k.is_empty())
            .collect();
        if client_keys.is_empty() && !raw.auth.allow_anonymous {
            return Err(bad(
                "PROXY_CLIENT_KEYS",
                "no client key configured: set PROXY_CLIENT_KEYS (a comma list of credentials your \
                 clients will send), or set auth.allow_anonymous = true in the config file",
            ));
        }

        let listen: SocketAddr = raw.server.listen.parse().map_err(|_| {
            bad(
                "server.listen (PROXY_LISTEN)",
                format!(
                    "expected host:port such as 127.0.0.1:8080, got {:?}",
                    raw.server.listen
                ),
            )
        })?;
        let upstream_url = check_url("upstream.url (GEMINI_UPSTREAM_URL)", &raw.upstream.url)?;
        let upstream_ca = load_ca_file(
            "upstream.ca_file (GEMINI_UPSTREAM_CA_FILE)",
            &raw.upstream.ca_file,
        )?;
        let public_url = if raw.server.public_url.trim().is_empty() {
            None
        } else {
            Some(check_url(
                "server.public_url (PROXY_PUBLIC_URL)",
                &raw.server.public_url,
            )?)
        };

        let path_prefix = match raw.server.path_prefix.trim().trim_end_matches('/') {
            "" => None,
            p if p.starts_with('/')
                && p[1..].split('/').all(|seg| {
                    !seg.is_empty()
                        && seg != ".."
                        && seg
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
                })
                && ![
                    "/v1", "/v1beta", "/upload", "/api", "/healthz", "/readyz", "/metrics",
                ]
                .contains(&p) =>
            {
                Some(p.to_string())
            }
            p => {
                return Err(bad(
                    "server.path_prefix (PROXY_PATH_PREFIX)",
                    format!(
                        "expected a path such as /gemini (letters, digits, '-', '_', '.'), not clashing with the proxy's own paths; got {p:?}"
                    ),
                ));
            }
        };
        let strategy = match raw.pool.strategy.as_str() {
            "headroom" => Strategy::Headroom,
            "ordered" => Strategy::Ordered,
            other => {
                return Err(bad(
                    "pool.strategy",
                    format!("expected \"headroom\" or \"ordered\", got {other:?}"),
                ));
            }
        };
        let store_on_error = match raw.store.on_error.as_str() {
            "local" => StoreFailurePolicy::Local,
            "fail-closed" => StoreFailurePolicy::FailClosed,
            "fail-open" => StoreFailurePolicy::FailOpen,
            other => {
                return Err(bad(
                    "store.on_error",
                    format!("expected \"local\", \"fail-closed\" or \"fail-open\", got {other:?}"),
                ));
            }
        };
        let log_format = match raw.log.format.as_str() {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => {
                return Err(bad(
                    "log.format (PROXY_LOG_FORMAT)",
                    format!("expected \"text\" or \"json\", got {other:?}"),
                ));
            }
        };
        let timezone: Tz = raw.limits.timezone.parse().map_err(|_| {
            bad(
                "limits.timezone",
                format!(
                    "{:?} is not an IANA time zone such as America/Los_Angeles",
                    raw.limits.timezone
                ),
            )
        })?;
        let l = &raw.limits;
        for (name, v) in [
            ("limits.minute (GEMINI_MINUTE_LIMIT)", l.minute),
            ("limits.daily (GEMINI_DAILY_LIMIT)", l.daily),
            (
                "limits.token_minute (GEMINI_TOKEN_MINUTE_LIMIT)",
                l.token_minute,
            ),
            (
                "limits.max_request_tokens (GEMINI_MAX_REQUEST_TOKENS)",
                l.max_request_tokens,
            ),
            ("limits.embed_minute", l.embed_minute),
            ("limits.embed_daily", l.embed_daily),
            ("limits.embed_token_minute", l.embed_token_minute),
            ("server.max_body_bytes", raw.server.max_body_bytes),
            ("server.max_connections", raw.server.max_connections),
            ("upstream.max_attempts", raw.upstream.max_attempts),
            ("store.timeout_ms", raw.store.timeout_ms),
        ] {
            if v == 0 {
                return Err(bad(name, "must be at least 1"));
            }
        }
        for (model, o) in &l.models {
            check_name(&format!("limits.models.{model}"), model)?;
            check_override(&format!("limits.models.{model}"), o)?;
        }
        for (project, p) in &l.projects {
            check_name(&format!("limits.projects.{project}"), project)?;
            check_override(&format!("limits.projects.{project}"), &p.all_models)?;
            for (model, o) in &p.models {
                check_override(&format!("limits.projects.{project}.models.{model}"), o)?;
            }
        }
        check_name("store.namespace", &raw.store.namespace)?;

        let redis_url = Some(raw.store.redis_url).filter(|u| !u.is_empty());
        if let Some(u) = &redis_url {
            if u.expose().starts_with("rediss://") {
                return Err(bad(
                    "store.redis_url (REDIS_URL)",
                    "rediss:// (TLS) is not built into this proxy: reach Redis over redis:// on a \
                     private network, or through a TLS tunnel such as stunnel",
                ));
            }
            if !(u.expose().starts_with("redis://")
                || u.expose().starts_with("redis+unix://")
                || u.expose().starts_with("unix://"))
            {
                return Err(bad(
                    "store.redis_url (REDIS_URL)",
                    "expected a URL starting with redis:// or unix://",
                ));
            }
        }

        Ok(Config {
            listen,
            public_url,
            path_prefix,
            max_body_bytes: usize::try_from(raw.server.max_body_bytes).unwrap_or(usize::MAX),
            header_read_timeout: secs(
                "server.header_read_timeout_secs",
                raw.server.header_read_timeout_secs,
            )?,
            body_read_timeout: secs(
                "server.body_read_timeout_secs",
                raw.server.body_read_timeout_secs,
            )?,
            max_connections: usize::try_from(raw.server.max_connections).unwrap_or(usize::MAX),
            shutdown_grace: secs("server.shutdown_grace_secs", raw.server.shutdown_grace_secs)?,
            upstream_url,
            connect_timeout: secs(
                "upstream.connect_timeout_secs",
                raw.upstream.connect_timeout_secs,
            )?,
            request_timeout: secs(
                "upstream.request_timeout_secs",
                raw.upstream.request_timeout_secs,
            )?,
            stream_idle_timeout: secs(
                "upstream.stream_idle_timeout_secs",
                raw.upstream.stream_idle_timeout_secs,
            )?,
            max_attempts: u32::try_from(raw.upstream.max_attempts.min(20)).unwrap_or(20),
            retry_deadline: secs(
                "upstream.retry_deadline_secs",
                raw.upstream.retry_deadline_secs,
            )?,
            max_wait: secs_or_zero("upstream.max_wait_secs", raw.upstream.max_wait_secs)?,
            upstream_ca,
            upstream_http2: raw.upstream.http2,
            client_keys,
            allow_anonymous: raw.auth.allow_anonymous,
            admin_token: Some(raw.auth.admin_token).filter(|t| !t.is_empty()),
            strategy,
            keys,
            limits: LimitsConfig {
                generate: QuotaDefaults {
                    minute: l.minute,
                    daily: l.daily,
                    token_minute: l.token_minute,
                },
                embed: QuotaDefaults {
                    minute: l.embed_minute,
                    daily: l.embed_daily,
                    token_minute: l.embed_token_minute,
                },
                max_request_tokens: l.max_request_tokens,
                timezone,
                models: raw.limits.models,
                projects: raw.limits.projects,
            },
            redis_url,
            store_namespace: raw.store.namespace,
            store_timeout: Duration::from_millis(raw.store.timeout_ms),
            store_on_error,
            log_format,
        })
    }
}

fn secs(name: &str, v: f64) -> Result<Duration, ConfigError> {
    if v.is_finite() && v > 0.0 && v < 1.0e7 {
        Ok(Duration::from_secs_f64(v))
    } else {
        Err(bad(
            name,
            format!("expected a positive number of seconds, got {v}"),
        ))
    }
}

fn secs_or_zero(name: &str, v: f64) -> Result<Duration, ConfigError> {
    if v == 0.0 {
        Ok(Duration::ZERO)
    } else {
        secs(name, v)
    }
}

fn check_url(name: &str, url: &str) -> Result<String, ConfigError> {
    let url = url.trim().trim_end_matches('/');
    if url
        .split_once("://")
        .is_some_and(|(_, rest)| rest.split('/').next().unwrap_or("").contains('@'))
    {
        // Not echoed: the part before @ is a credential.
        return Err(bad(
            name,
            "credentials in the URL (user:password@host) are not supported; the upstream \
             client would not send them",
        ));
    }
    match url.parse::<http::Uri>() {
        Ok(u)
            if matches!(u.scheme_str(), Some("http") | Some("https"))
                && u.host().is_some()
                && u.query().is_none()
                && crate::upstream::Upstream::new(url).is_ok() =>
        {
            Ok(url.to_string())
        }
        _ => Err(bad(
            name,
            format!(
                "expected an http(s) URL such as https://generativelanguage.googleapis.com, got {url:?}"
            ),
        )),
    }
}

/// The PEM file of extra upstream trust roots: every certificate in it must be one rustls can
/// anchor trust on; an empty path means none.
fn load_ca_file(
    name: &str,
    path: &str,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, ConfigError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let path = path.trim();
    if path.is_empty() {
        return Ok(Vec::new());
    }
    let pem = std::fs::read(path).map_err(|e| bad(name, format!("cannot read {path:?}: {e}")))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(name, format!("{path:?} is not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(bad(
            name,
            format!("{path:?} holds no PEM certificate (-----BEGIN CERTIFICATE-----)"),
        ));
    }
    let mut roots = rustls::RootCertStore::empty();
    for (i, cert) in certs.iter().enumerate() {
        roots.add(cert.clone()).map_err(|e| {
            bad(
                name,
                format!(
                    "certificate {} in {path:?} cannot be a trust root: {e}",
                    i + 1
                ),
            )
        })?;
    }
    Ok(certs)
}

/// Project, model and namespace names end up in store keys: keep them to a safe alphabet.
fn check_name(setting: &str, name: &str) -> Result<(), ConfigError> {
    if name.is_empty()
        || name.len() > 128
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(bad(
            setting,
            format!("{name:?} must be 1-128 characters of letters, digits, '-', '_' or '.'"),
        ));
    }
    Ok(())
}

fn check_override(setting: &str, o: &LimitOverride) -> Result<(), ConfigError> {
    for (field, v) in [
        ("minute", o.minute),
        ("daily", o.daily),
        ("token_minute", o.token_minute),
        ("max_request_tokens", o.max_request_tokens),
    ] {
        if v == Some(0) {
            return Err(bad(format!("{setting}.{field}"), "must be at least 1"));
        }
    }
    Ok(())
}

/// The `config` crate's messages already name the key; keep them, under a stable prefix.
fn describe_config_error(e: config::ConfigError) -> ConfigError {
    let text = e.to_string();
    let setting = text
        .split("for key `")
        .nth(1)
        .and_then(|rest| rest.split('`').next())
        .unwrap_or("config file")
        .to_string();
    bad(setting, text)
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
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.upstream_url, "https://generativelanguage.googleapis.com");
        assert_eq!(c.limits.generate.minute, 15);
        assert_eq!(c.limits.generate.daily, 1500);
        assert_eq!(c.limits.generate.token_minute, 1_000_000);
        assert_eq!(c.limits.max_request_tokens, 32_000);
        assert_eq!(c.limits.timezone, chrono_tz::America::Los_Angeles);
        assert!(c.redis_url.is_none());
        assert!(c.admin_token.is_none());
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
        let keys: Vec<&str> = c.keys.iter().map(|k| k.key.expose()).collect();
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
            ("REDIS_URL", "rediss://cache.example:6380"),
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
        assert!(c.upstream_ca.is_empty());
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
        assert_eq!(c.keys.len(), 2);
        assert_eq!(c.keys[0].name.as_deref(), Some("first"));
        assert_eq!(c.keys[0].project.as_deref(), Some("proj-a"));
        assert_eq!(c.limits.generate.minute, 7);
        assert_eq!(c.limits.models["gemini-2.5-pro"].minute, Some(5));
        assert_eq!(c.limits.projects["proj-a"].all_models.daily, Some(99));
        assert_eq!(
            c.limits.projects["proj-a"].models["gemini-2.5-pro"].token_minute,
            Some(1234)
        );
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
}
