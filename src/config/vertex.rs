//! `[[pool.vertex]]` and `pool.order`: Vertex AI projects in the pool (project, location,
//! credentials read and checked at load) and how work is shared between the backends.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use serde::Deserialize;

use super::check::{BaseUrl, ConfigError, bad, check_name, env_value};
use crate::secret::Secret;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawVertex {
    project: String,
    location: String,
    #[serde(default)]
    credentials_file: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    base_url: Option<String>,
}

/// How the backends share work (`pool.order`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// AI Studio keys first; Vertex entries when every AI Studio project is out.
    AiStudioFirst,
    /// Vertex entries first; AI Studio keys when every Vertex entry is out.
    VertexFirst,
    /// All together, by `pool.strategy`.
    Headroom,
}

impl Order {
    pub(super) fn parse(v: &str) -> Result<Order, ConfigError> {
        match v {
            "ai-studio-first" => Ok(Order::AiStudioFirst),
            "vertex-first" => Ok(Order::VertexFirst),
            "headroom" => Ok(Order::Headroom),
            other => Err(bad(
                "pool.order",
                format!(
                    "expected \"ai-studio-first\", \"vertex-first\" or \"headroom\", got {other:?}"
                ),
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Order::AiStudioFirst => "ai-studio-first",
            Order::VertexFirst => "vertex-first",
            Order::Headroom => "headroom",
        }
    }
}

/// A service account's signing key, parsed once at load (never printed).
#[derive(Clone)]
pub struct SigningKey(pub Arc<jsonwebtoken::EncodingKey>);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(***)")
    }
}

/// Where a Vertex entry's access tokens come from.
#[derive(Debug, Clone)]
pub enum VertexCredentials {
    /// A service-account JSON key: a signed JWT exchanged at its `token_uri`.
    ServiceAccount {
        client_email: String,
        key_id: Option<String>,
        key: SigningKey,
        token_uri: http::Uri,
    },
    /// An `authorized_user` file (`gcloud auth application-default login`): its refresh token
    /// exchanged at its `token_uri`.
    AuthorizedUser {
        client_id: String,
        client_secret: Secret,
        refresh_token: Secret,
        token_uri: http::Uri,
    },
    /// The metadata server of GCE/GKE (Workload Identity), at `GCE_METADATA_HOST` or
    /// `metadata.google.internal`.
    Metadata { token_url: http::Uri },
}

/// One Vertex AI entry of the pool.
#[derive(Debug, Clone)]
pub struct VertexConfig {
    pub project: String,
    pub location: String,
    pub name: Option<String>,
    /// `https://{location}-aiplatform.googleapis.com` (`aiplatform.googleapis.com` for
    /// `global`), or `base_url`.
    pub base_url: BaseUrl,
    pub credentials: VertexCredentials,
    /// The setting its credentials came from, for errors about them.
    pub credentials_setting: String,
}

/// Google's token endpoint, when a credentials file names none.
const DEFAULT_TOKEN_URI: &str = "https://oauth2.googleapis.com/token";

/// Validate the entries, reading each one's credentials (a file that cannot be read or holds
/// no usable key stops the load, naming the setting).
pub(super) fn entries(
    raw: Vec<RawVertex>,
    env: &HashMap<String, String>,
) -> Result<Vec<VertexConfig>, ConfigError> {
    let mut out = Vec::with_capacity(raw.len());
    let mut seen = HashSet::new();
    for (i, v) in raw.into_iter().enumerate() {
        let at = |field: &str| format!("pool.vertex[{i}].{field}");
        check_name(&at("project"), &v.project)?;
        check_name(&at("location"), &v.location)?;
        if !seen.insert((v.project.clone(), v.location.clone())) {
            return Err(bad(
                at("project"),
                format!(
                    "{}/{} is listed twice in [[pool.vertex]]",
                    v.project, v.location
                ),
            ));
        }
        let base = match v.base_url.as_deref().filter(|u| !u.is_empty()) {
            Some(u) => u.to_string(),
            None if v.location == "global" => "https://aiplatform.googleapis.com".to_string(),
            None => format!("https://{}-aiplatform.googleapis.com", v.location),
        };
        let base_url = BaseUrl::parse(&at("base_url"), &base)?;
        let (credentials, credentials_setting) = match v.credentials_file.filter(|f| !f.is_empty())
        {
            Some(path) => {
                let setting = at("credentials_file");
                (read_file(&setting, &path)?, setting)
            }
            None => match env_value(env, "GOOGLE_APPLICATION_CREDENTIALS") {
                Some(path) => {
                    let setting = "GOOGLE_APPLICATION_CREDENTIALS".to_string();
                    (read_file(&setting, path)?, setting)
                }
                None => {
                    let host =
                        env_value(env, "GCE_METADATA_HOST").unwrap_or("metadata.google.internal");
                    let url = format!(
                        "http://{host}/computeMetadata/v1/instance/service-accounts/default/token"
                    );
                    let token_url = url
                        .parse()
                        .map_err(|_| bad("GCE_METADATA_HOST", "is not a host[:port]"))?;
                    (
                        VertexCredentials::Metadata { token_url },
                        format!("{} (metadata server {host})", at("credentials_file")),
                    )
                }
            },
        };
        out.push(VertexConfig {
            project: v.project,
            location: v.location,
            name: v.name.filter(|n| !n.is_empty()),
            base_url,
            credentials,
            credentials_setting,
        });
    }
    Ok(out)
}

#[derive(Deserialize)]
struct CredentialsFile {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    client_email: Option<String>,
    #[serde(default)]
    private_key: Option<Secret>,
    #[serde(default)]
    private_key_id: Option<String>,
    #[serde(default)]
    token_uri: Option<String>,
    #[serde(default)]
    client_id: Option<String>,
    #[serde(default)]
    client_secret: Option<Secret>,
    #[serde(default)]
    refresh_token: Option<Secret>,
}

/// Read a Google credentials file. Errors say what is wrong, never what the file holds.
fn read_file(setting: &str, path: &str) -> Result<VertexCredentials, ConfigError> {
    let text = std::fs::read(path).map_err(|e| {
        bad(
            setting,
            format!("cannot read the credentials file {path:?}: {e}"),
        )
    })?;
    let file: CredentialsFile = serde_json::from_slice(&text).map_err(|e| {
        bad(
            setting,
            format!(
                "{path:?} is not a Google credentials JSON file (line {}, column {})",
                e.line(),
                e.column()
            ),
        )
    })?;
    let token_uri = |u: Option<String>| -> Result<http::Uri, ConfigError> {
        let u = u.unwrap_or_else(|| DEFAULT_TOKEN_URI.to_string());
        u.parse::<http::Uri>()
            .ok()
            .filter(|p| matches!(p.scheme_str(), Some("http" | "https")) && p.host().is_some())
            .ok_or_else(|| {
                bad(
                    setting,
                    format!("the token_uri of {path:?} is not an http(s) URL"),
                )
            })
    };
    match file.kind.as_str() {
        "service_account" => {
            let (Some(client_email), Some(private_key)) = (file.client_email, file.private_key)
            else {
                return Err(bad(
                    setting,
                    format!("the service account file {path:?} has no client_email or private_key"),
                ));
            };
            let key = jsonwebtoken::EncodingKey::from_rsa_pem(private_key.expose().as_bytes())
                .map_err(|_| {
                    bad(
                        setting,
                        format!("the private_key of {path:?} is not an RSA key in PEM form"),
                    )
                })?;
            Ok(VertexCredentials::ServiceAccount {
                client_email,
                key_id: file.private_key_id,
                key: SigningKey(Arc::new(key)),
                token_uri: token_uri(file.token_uri)?,
            })
        }
        "authorized_user" => {
            let (Some(client_id), Some(client_secret), Some(refresh_token)) =
                (file.client_id, file.client_secret, file.refresh_token)
            else {
                return Err(bad(
                    setting,
                    format!(
                        "the authorized_user file {path:?} lacks client_id, client_secret or refresh_token"
                    ),
                ));
            };
            Ok(VertexCredentials::AuthorizedUser {
                client_id,
                client_secret,
                refresh_token,
                token_uri: token_uri(file.token_uri)?,
            })
        }
        other => Err(bad(
            setting,
            format!(
                "{path:?} is a credentials file of type {other:?}; expected \"service_account\" or \"authorized_user\""
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{for_test, try_for_test};

    fn entry(extra: &str) -> String {
        format!("[[pool.vertex]]\nproject = \"p1\"\nlocation = \"europe-west4\"\n{extra}")
    }

    #[test]
    fn regional_and_global_endpoints_and_the_metadata_server_by_default() {
        let c = for_test(
            &format!(
                "{}[[pool.vertex]]\nproject = \"p1\"\nlocation = \"global\"\n",
                entry("")
            ),
            &[],
        );
        let v = &c.pool.vertex;
        assert_eq!(
            v[0].base_url.text,
            "https://europe-west4-aiplatform.googleapis.com"
        );
        assert_eq!(v[1].base_url.text, "https://aiplatform.googleapis.com");
        assert_eq!(c.pool.order, Order::AiStudioFirst);
        match &v[0].credentials {
            VertexCredentials::Metadata { token_url } => assert_eq!(
                token_url.to_string(),
                "http://metadata.google.internal/computeMetadata/v1/instance/service-accounts/default/token"
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_settings_are_named() {
        let e = try_for_test("[pool]\norder = \"studio\"\n", &[]).unwrap_err();
        assert_eq!(e.setting, "pool.order");
        let e = try_for_test(&format!("{}{}", entry(""), entry("")), &[]).unwrap_err();
        assert_eq!(e.setting, "pool.vertex[1].project");
        let e = try_for_test(
            "[[pool.vertex]]\nproject = \"p1\"\nlocation = \"us central\"\n",
            &[],
        )
        .unwrap_err();
        assert_eq!(e.setting, "pool.vertex[0].location");
    }

    #[test]
    fn an_unusable_credentials_file_is_named_and_its_contents_never_shown() {
        let e =
            try_for_test(&entry("credentials_file = \"/nonexistent/sa.json\"\n"), &[]).unwrap_err();
        assert_eq!(e.setting, "pool.vertex[0].credentials_file");
        let path = std::env::temp_dir().join(format!("gqp-bad-sa-{}.json", fastrand::u64(..)));
        std::fs::write(
            &path,
            r#"{"type":"service_account","client_email":"a@b","private_key":"-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWtleS1ieXRlcw==\n-----END PRIVATE KEY-----\n"}"#,
        )
        .unwrap();
        let e = try_for_test(
            &entry(&format!(
                "credentials_file = {:?}\n",
                path.to_string_lossy()
            )),
            &[],
        )
        .unwrap_err();
        assert_eq!(e.setting, "pool.vertex[0].credentials_file");
        assert!(!e.to_string().contains("c2VjcmV0"), "{e}");
        // The same file through the environment names the variable.
        let p = path.to_string_lossy().into_owned();
        let e = try_for_test(&entry(""), &[("GOOGLE_APPLICATION_CREDENTIALS", &p)]).unwrap_err();
        assert_eq!(e.setting, "GOOGLE_APPLICATION_CREDENTIALS");
    }
}
