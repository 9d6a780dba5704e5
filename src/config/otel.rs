//! `[otel]`: OpenTelemetry trace export, off unless an endpoint is set; the standard
//! `OTEL_*` variables take precedence over the file, as other OpenTelemetry SDKs do.

use std::collections::HashMap;
use std::time::Duration;

use serde::Deserialize;

use super::check::{ConfigError, bad, comma_list, env_value};
pub use crate::telemetry::otel::{SamplerKind, Settings as OtelConfig};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct Raw {
    endpoint: Option<String>,
    headers: HashMap<String, String>,
    service_name: Option<String>,
    sampler: Option<String>,
    sampler_arg: Option<f64>,
    record_content: bool,
    queue_size: Option<u64>,
    batch_size: Option<u64>,
    schedule_delay_ms: Option<u64>,
    timeout_ms: Option<u64>,
}

/// The variables read here (the `--help` table lists them).
pub(super) const VARIABLES: &[(&str, &str)] = &[
    (
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "otel.endpoint (the collector's base URL; /v1/traces is added)",
    ),
    (
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "the traces URL, used as it is",
    ),
    (
        "OTEL_EXPORTER_OTLP_HEADERS",
        "otel.headers (`k=v,k2=v2`; also _TRACES_HEADERS)",
    ),
    ("OTEL_SERVICE_NAME", "otel.service_name"),
    ("OTEL_TRACES_SAMPLER", "otel.sampler"),
    ("OTEL_TRACES_SAMPLER_ARG", "otel.sampler_arg"),
    ("OTEL_SDK_DISABLED", "`true`: no trace export"),
];

fn number(
    env: &HashMap<String, String>,
    var: &str,
    file: Option<u64>,
) -> Result<Option<u64>, ConfigError> {
    match env_value(env, var) {
        Some(v) => v
            .parse()
            .map(Some)
            .map_err(|_| bad(var, format!("expected a whole number, got {v:?}"))),
        None => Ok(file),
    }
}

/// `k=v,k2=v2`, values percent-decoded (the specification's form).
fn parse_headers(
    var: &str,
    text: &str,
    into: &mut HashMap<String, String>,
) -> Result<(), ConfigError> {
    for pair in comma_list(text) {
        let Some((k, v)) = pair.split_once('=') else {
            // The value may be a secret: only its position is named.
            return Err(bad(
                var,
                "expected `name=value` entries separated by commas",
            ));
        };
        let v = percent_encoding::percent_decode_str(v.trim())
            .decode_utf8()
            .map_err(|_| bad(var, "a value is not UTF-8 once percent-decoded"))?;
        into.insert(k.trim().to_ascii_lowercase(), v.into_owned());
    }
    Ok(())
}

pub(super) fn from_raw(raw: Raw, env: &HashMap<String, String>) -> Result<OtelConfig, ConfigError> {
    let d = OtelConfig::default();
    let disabled = env_value(env, "OTEL_SDK_DISABLED")
        .is_some_and(|v| v.eq_ignore_ascii_case("true"))
        || env_value(env, "OTEL_TRACES_EXPORTER").is_some_and(|v| v == "none");
    if let Some(e) = env_value(env, "OTEL_TRACES_EXPORTER").filter(|e| *e != "none" && *e != "otlp")
    {
        return Err(bad(
            "OTEL_TRACES_EXPORTER",
            format!("expected \"otlp\" or \"none\", got {e:?}"),
        ));
    }
    for var in [
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ] {
        if let Some(p) = env_value(env, var).filter(|p| *p != "http/protobuf") {
            return Err(bad(
                var,
                format!("only \"http/protobuf\" is supported, got {p:?}"),
            ));
        }
    }
    let base = |url: &str| format!("{}/v1/traces", url.trim_end_matches('/'));
    let endpoint = if let Some(u) = env_value(env, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
        Some(("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", u.to_string()))
    } else if let Some(u) = env_value(env, "OTEL_EXPORTER_OTLP_ENDPOINT") {
        Some(("OTEL_EXPORTER_OTLP_ENDPOINT", base(u)))
    } else {
        raw.endpoint
            .as_deref()
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(|u| ("otel.endpoint", base(u)))
    };
    if let Some((setting, url)) = &endpoint {
        let ok = url
            .parse::<http::Uri>()
            .is_ok_and(|u| matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some());
        if !ok {
            return Err(bad(*setting, "expected an http:// or https:// URL"));
        }
    }
    let mut headers: HashMap<String, String> = raw
        .headers
        .into_iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v))
        .collect();
    for var in [
        "OTEL_EXPORTER_OTLP_HEADERS",
        "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
    ] {
        if let Some(v) = env_value(env, var) {
            parse_headers(var, v, &mut headers)?;
        }
    }
    for name in headers.keys() {
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            return Err(bad(
                "otel.headers (OTEL_EXPORTER_OTLP_HEADERS)",
                format!("{name:?} is not a header name"),
            ));
        }
    }
    let sampler_name = env_value(env, "OTEL_TRACES_SAMPLER")
        .map(str::to_string)
        .or(raw.sampler);
    let sampler = match sampler_name.as_deref() {
        None => d.sampler,
        Some(name) => SamplerKind::parse(name).ok_or_else(|| {
            bad(
                "otel.sampler (OTEL_TRACES_SAMPLER)",
                format!("expected always_on, always_off, traceidratio, parentbased_always_on, parentbased_always_off or parentbased_traceidratio, got {name:?}"),
            )
        })?,
    };
    let sampler_arg = match env_value(env, "OTEL_TRACES_SAMPLER_ARG") {
        Some(v) => Some(v.parse::<f64>().map_err(|_| {
            bad(
                "OTEL_TRACES_SAMPLER_ARG",
                format!("expected a number from 0 to 1, got {v:?}"),
            )
        })?),
        None => raw.sampler_arg,
    }
    .unwrap_or(d.sampler_arg);
    if !(0.0..=1.0).contains(&sampler_arg) {
        return Err(bad(
            "otel.sampler_arg (OTEL_TRACES_SAMPLER_ARG)",
            format!("expected a number from 0 to 1, got {sampler_arg}"),
        ));
    }
    let bounded = |setting: &str, v: Option<u64>, default: usize| -> Result<usize, ConfigError> {
        match v {
            None => Ok(default),
            Some(n) if (1..=1_000_000).contains(&n) => Ok(n as usize),
            Some(n) => Err(bad(setting, format!("expected 1 to 1000000, got {n}"))),
        }
    };
    let queue_size = bounded(
        "otel.queue_size (OTEL_BSP_MAX_QUEUE_SIZE)",
        number(env, "OTEL_BSP_MAX_QUEUE_SIZE", raw.queue_size)?,
        d.queue_size,
    )?;
    let batch_size = bounded(
        "otel.batch_size (OTEL_BSP_MAX_EXPORT_BATCH_SIZE)",
        number(env, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", raw.batch_size)?,
        d.batch_size,
    )?
    .min(queue_size);
    let schedule_delay = number(env, "OTEL_BSP_SCHEDULE_DELAY", raw.schedule_delay_ms)?
        .map_or(d.schedule_delay, |ms| Duration::from_millis(ms.max(1)));
    let timeout = number(env, "OTEL_EXPORTER_OTLP_TIMEOUT", raw.timeout_ms)?
        .map_or(d.timeout, |ms| Duration::from_millis(ms.max(1)));
    let service_name = env_value(env, "OTEL_SERVICE_NAME")
        .map(str::to_string)
        .or(raw.service_name)
        .filter(|s| !s.trim().is_empty())
        .unwrap_or(d.service_name);
    Ok(OtelConfig {
        endpoint: endpoint.map(|(_, u)| u).filter(|_| !disabled),
        headers,
        service_name,
        sampler,
        sampler_arg,
        record_content: raw.record_content,
        queue_size,
        batch_size,
        schedule_delay,
        timeout,
    })
}

#[cfg(test)]
mod tests {
    use crate::config::{for_test, try_for_test};

    #[test]
    fn export_is_off_by_default() {
        let c = for_test("", &[]);
        assert!(c.otel.endpoint.is_none());
        assert!(!c.otel.record_content);
    }

    #[test]
    fn standard_variables_configure_export_over_the_file() {
        let c = for_test(
            "[otel]\nendpoint = \"http://file:4318\"\nservice_name = \"from-file\"\n",
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/"),
                (
                    "OTEL_EXPORTER_OTLP_HEADERS",
                    "api-key=s%3Dcret, x-team = blue",
                ),
                ("OTEL_SERVICE_NAME", "edge-proxy"),
                ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
                ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
            ],
        );
        let o = &c.otel;
        assert_eq!(
            o.endpoint.as_deref(),
            Some("http://collector:4318/v1/traces")
        );
        assert_eq!(o.headers["api-key"], "s=cret");
        assert_eq!(o.headers["x-team"], "blue");
        assert_eq!(o.service_name, "edge-proxy");
        assert_eq!(o.sampler, super::SamplerKind::ParentBasedTraceIdRatio);
        assert_eq!(o.sampler_arg, 0.25);
        let traces = for_test("", &[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "https://c/x")]);
        assert_eq!(traces.otel.endpoint.as_deref(), Some("https://c/x"));
        let file = for_test("[otel]\nendpoint = \"http://file:4318\"\n", &[]);
        assert_eq!(
            file.otel.endpoint.as_deref(),
            Some("http://file:4318/v1/traces")
        );
        let off = for_test(
            "[otel]\nendpoint = \"http://file:4318\"\n",
            &[("OTEL_SDK_DISABLED", "true")],
        );
        assert!(off.otel.endpoint.is_none());
    }

    #[test]
    fn bad_settings_are_refused_by_name_without_header_values() {
        for (env, setting) in [
            (
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318"),
                "OTEL_EXPORTER_OTLP_ENDPOINT",
            ),
            (("OTEL_TRACES_SAMPLER", "sometimes"), "otel.sampler"),
            (("OTEL_TRACES_SAMPLER_ARG", "2"), "otel.sampler_arg"),
            (
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
                "OTEL_EXPORTER_OTLP_PROTOCOL",
            ),
            (
                ("OTEL_EXPORTER_OTLP_HEADERS", "topsecretvalue"),
                "OTEL_EXPORTER_OTLP_HEADERS",
            ),
        ] {
            let e = try_for_test("", &[env]).unwrap_err().to_string();
            assert!(e.contains(setting), "{e}");
            assert!(!e.contains("topsecretvalue"), "{e}");
        }
    }
}
