//! Settings that load but deserve a loud word at start-up and at every reload: secrets too
//! short to resist guessing, and `/metrics` open on a listener others can reach. Each warning
//! names the setting, never a secret's value.

use super::Config;

/// Shortest secret (client key, admin token, metrics token) taken without a warning: 16
/// random characters are out of reach of online guessing, which the proxy also throttles.
pub const SHORT_SECRET: usize = 16;

/// One thing to warn about: the setting and what is wrong, without any secret in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigWarning {
    pub setting: &'static str,
    pub message: String,
}

impl Config {
    /// What an operator should hear about this configuration (see the module docs).
    pub fn warnings(&self) -> Vec<ConfigWarning> {
        let mut out = Vec::new();
        let short = |s: &crate::secret::Secret| s.expose().chars().count() < SHORT_SECRET;
        for (key, name) in self
            .auth
            .clients
            .iter()
            .filter_map(|c| Some((c.credential.key()?, &c.name)))
        {
            if short(key) {
                out.push(ConfigWarning {
                    setting: "auth.client_keys (PROXY_CLIENT_KEYS, auth.clients)",
                    message: format!(
                        "the key of client {name:?} is shorter than {SHORT_SECRET} characters: use a long random value"
                    ),
                });
            }
        }
        if self.auth.admin_token.as_ref().is_some_and(short) {
            out.push(ConfigWarning {
                setting: "auth.admin_token (PROXY_ADMIN_TOKEN)",
                message: format!(
                    "the admin token is shorter than {SHORT_SECRET} characters: use a long random value"
                ),
            });
        }
        if self.metrics.token.as_ref().is_some_and(short) {
            out.push(ConfigWarning {
                setting: "metrics.token (PROXY_METRICS_TOKEN)",
                message: format!(
                    "the metrics token is shorter than {SHORT_SECRET} characters: use a long random value"
                ),
            });
        }
        if !self.server.listen.ip().is_loopback() && self.metrics.token.is_none() {
            out.push(ConfigWarning {
                setting: "metrics.token (PROXY_METRICS_TOKEN)",
                message: format!(
                    "/metrics is open to anyone who can reach {} (server.listen is not loopback) and \
                     shows project, key and client names: set PROXY_METRICS_TOKEN",
                    self.server.listen
                ),
            });
        }
        out
    }

    /// [`Config::warnings`] as WARN log lines.
    pub fn log_warnings(&self) {
        for w in self.warnings() {
            tracing::warn!(setting = w.setting, "{}", w.message);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{for_test, try_for_test};

    fn settings(toml: &str, env: &[(&str, &str)]) -> Vec<&'static str> {
        for_test(toml, env)
            .warnings()
            .into_iter()
            .map(|w| w.setting)
            .collect()
    }

    #[test]
    fn short_secrets_are_warned_about_by_setting_never_by_value() {
        let cfg = for_test(
            "",
            &[
                ("PROXY_CLIENT_KEYS", "team:shortkey1"),
                ("PROXY_ADMIN_TOKEN", "adm1n"),
                ("PROXY_METRICS_TOKEN", "m3trics"),
            ],
        );
        let text: String = cfg
            .warnings()
            .iter()
            .map(|w| format!("{}: {}\n", w.setting, w.message))
            .collect();
        assert!(text.contains("auth.client_keys"), "{text}");
        assert!(text.contains("\"team\""), "{text}");
        assert!(text.contains("auth.admin_token"), "{text}");
        assert!(text.contains("metrics.token"), "{text}");
        for secret in ["shortkey1", "adm1n", "m3trics"] {
            assert!(!text.contains(secret), "a secret in a warning: {text}");
        }
        let long = "0123456789abcdef";
        assert!(
            settings(
                "",
                &[
                    ("PROXY_CLIENT_KEYS", long),
                    ("PROXY_ADMIN_TOKEN", "fedcba9876543210")
                ]
            )
            .is_empty()
        );
    }

    #[test]
    fn metrics_open_on_a_public_listener_is_warned_about() {
        let long = [("PROXY_CLIENT_KEYS", "0123456789abcdef")];
        assert!(settings("", &long).is_empty(), "loopback: no warning");
        let public = [
            ("PROXY_CLIENT_KEYS", "0123456789abcdef"),
            ("PROXY_LISTEN", "0.0.0.0:8080"),
        ];
        assert_eq!(
            settings("", &public),
            ["metrics.token (PROXY_METRICS_TOKEN)"]
        );
        let guarded = [
            ("PROXY_CLIENT_KEYS", "0123456789abcdef"),
            ("PROXY_LISTEN", "0.0.0.0:8080"),
            ("PROXY_METRICS_TOKEN", "a-metrics-token-long"),
        ];
        assert!(settings("", &guarded).is_empty());
    }

    #[test]
    fn secrets_of_the_wrong_type_are_refused_naming_the_setting_not_the_value() {
        for (toml, setting) in [
            ("[auth]\nadmin_token = 42424242\n", "auth.admin_token"),
            ("[auth]\nadmin_token = true\n", "auth.admin_token"),
            (
                "[auth]\nclient_keys = [7, 3.5, true]\n",
                "auth.client_keys[0]",
            ),
            (
                "[auth]\nclient_keys = [\"ok-key\", 3.5]\n",
                "auth.client_keys[1]",
            ),
            (
                "[[auth.clients]]\nname = \"t\"\nkey = 987654321\n",
                "auth.clients[0].key",
            ),
            ("[metrics]\ntoken = 13131313\n", "metrics.token"),
            ("[[keys]]\nkey = 55555555\n", "keys[0].key"),
        ] {
            let e = try_for_test(toml, &[("PROXY_CLIENT_KEYS", "")]).unwrap_err();
            let text = e.to_string();
            assert_eq!(e.setting, setting, "{toml}: {text}");
            assert!(text.contains("must be a string"), "{text}");
            for value in ["42424242", "987654321", "13131313", "55555555", "3.5"] {
                assert!(!text.contains(value), "a value in an error: {text}");
            }
        }
    }

    #[test]
    fn a_client_key_equal_to_the_admin_token_is_refused() {
        let e = try_for_test(
            "",
            &[
                ("PROXY_CLIENT_KEYS", "team:the-same-secret-value"),
                ("PROXY_ADMIN_TOKEN", "the-same-secret-value"),
            ],
        )
        .unwrap_err();
        assert!(e.setting.starts_with("auth.admin_token"), "{e}");
        assert!(e.to_string().contains("\"team\""), "{e}");
        assert!(!e.to_string().contains("the-same-secret-value"), "{e}");
    }
}
