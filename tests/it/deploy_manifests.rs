//! `deploy/kubernetes/`: every manifest passes the Kubernetes JSON schemas offline
//! (`kubernetes-validate --strict`, whose package bundles the schemas, from the project's `.venv`
//! that `scripts/test` installs), and what no schema can see holds: the pod starts with the
//! ConfigMap's TOML and the Secret's variables and answers its probe paths, the env names are
//! ones the proxy documents, the uid is the Dockerfile's, the ConfigMap is mounted as a
//! directory (so a reload sees its updates), the grace period outlasts the proxy's drain, and
//! the Service, PodDisruptionBudget, Secret and Redis names line up.

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::binary::Binary;
use common::deploy_files::*;
use common::{RedisServer, http};
use gemini_quota_proxy::{Config, Sources};
use serde_json::Value;

/// The Kubernetes version the manifests are checked against (one the package bundles; the
/// manifests use nothing newer).
const K8S_VERSION: &str = "1.31.0";
const DIR: &str = "deploy/kubernetes";
const KUSTOMIZATION: &str = "kustomization.yaml";
/// Variables that hold secrets: they must come from the Secret, never a literal `value`.
const SECRET_VARS: [&str; 4] = [
    "GEMINI_API_KEYS",
    "PROXY_CLIENT_KEYS",
    "PROXY_ADMIN_TOKEN",
    "REDIS_URL",
];

/// Every manifest file (not the kustomization, which is kustomize's, not a Kubernetes object).
fn manifest_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo_path(DIR))
        .expect("deploy/kubernetes exists")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .filter(|p| p.file_name().is_some_and(|n| n != KUSTOMIZATION))
        .collect();
    files.sort();
    assert!(files.len() >= 5, "too few manifests: {files:?}");
    files
}

/// Every object of every manifest, with its file name.
fn objects() -> Vec<(String, Value)> {
    manifest_files()
        .iter()
        .flat_map(|f| {
            let name = f.file_name().unwrap().to_string_lossy().into_owned();
            yaml_documents(f)
                .into_iter()
                .map(move |d| (name.clone(), d))
        })
        .collect()
}

fn object(kind: &str, name: &str) -> Value {
    let all = objects();
    let found: Vec<&Value> = all
        .iter()
        .map(|(_, o)| o)
        .filter(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "expected one {kind} {name}, found {found:?}"
    );
    found[0].clone()
}

fn proxy_deployment() -> Value {
    object("Deployment", "gemini-quota-proxy")
}

fn proxy_container(deployment: &Value) -> Value {
    let containers = deployment["spec"]["template"]["spec"]["containers"]
        .as_array()
        .expect("containers");
    assert_eq!(containers.len(), 1, "one container per proxy pod");
    containers[0].clone()
}

fn secret_data() -> BTreeMap<String, String> {
    let secret = object("Secret", "gemini-quota-proxy");
    secret["stringData"]
        .as_object()
        .expect("the Secret has stringData placeholders")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().expect("string value").to_string()))
        .collect()
}

/// The pod's environment as the kubelet would set it: literal values and the Secret's entries.
fn pod_env(container: &Value) -> BTreeMap<String, String> {
    let secret = secret_data();
    container["env"]
        .as_array()
        .expect("env list")
        .iter()
        .map(|e| {
            let name = e["name"].as_str().unwrap().to_string();
            let value = match (&e["value"], &e["valueFrom"]["secretKeyRef"]) {
                (Value::String(v), _) => v.clone(),
                (_, r @ Value::Object(_)) => {
                    assert_eq!(r["name"], "gemini-quota-proxy", "{name}: another Secret");
                    let key = r["key"].as_str().unwrap();
                    secret
                        .get(key)
                        .unwrap_or_else(|| panic!("{name}: the Secret has no key {key}"))
                        .clone()
                }
                _ => panic!("{name}: neither a value nor a secretKeyRef: {e}"),
            };
            (name, value)
        })
        .collect()
}

/// The `--config FILE` argument of the container.
fn config_arg(container: &Value) -> String {
    let args: Vec<&str> = container["args"]
        .as_array()
        .expect("args")
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let i = args
        .iter()
        .position(|a| *a == "--config")
        .expect("the proxy is started with --config");
    args[i + 1].to_string()
}

/// The ConfigMap's file the proxy reads, as (file name, TOML text).
fn config_toml(config_path: &str) -> (String, String) {
    let file = Path::new(config_path)
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let cm = object("ConfigMap", "gemini-quota-proxy-config");
    let text = cm["data"][&file]
        .as_str()
        .unwrap_or_else(|| panic!("the ConfigMap has no key {file}"))
        .to_string();
    (file, text)
}

fn validate(path: &Path) -> Output {
    let bin = repo_path(".venv/bin/kubernetes-validate");
    assert!(
        bin.is_file(),
        "{} is missing: scripts/test installs it into .venv (pip install kubernetes-validate)",
        bin.display()
    );
    // Offline: the schemas ship inside the package. Any attempt to fetch one would go through
    // these proxies, a closed loopback port, and fail.
    Command::new(bin)
        .args(["--strict", "--kubernetes-version", K8S_VERSION])
        .arg(path)
        .env("HTTP_PROXY", "http://127.0.0.1:9")
        .env("HTTPS_PROXY", "http://127.0.0.1:9")
        .env("NO_PROXY", "")
        .output()
        .expect("kubernetes-validate runs")
}

#[test]
fn every_manifest_passes_the_kubernetes_schemas_offline() {
    for file in manifest_files() {
        let out = validate(&file);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success(),
            "{} fails the Kubernetes {K8S_VERSION} schemas:\n{text}",
            file.display()
        );
        // Every document was checked, none skipped as unknown.
        let docs = yaml_documents(&file).len();
        assert_eq!(
            text.matches(" passed for resource ").count(),
            docs,
            "{}: {docs} documents, but:\n{text}",
            file.display()
        );
    }
    let kinds: BTreeSet<String> = objects()
        .iter()
        .map(|(_, o)| o["kind"].as_str().unwrap().to_string())
        .collect();
    for kind in [
        "Deployment",
        "Service",
        "Secret",
        "ConfigMap",
        "PodDisruptionBudget",
    ] {
        assert!(kinds.contains(kind), "no {kind} in {DIR}: {kinds:?}");
    }
}

#[test]
fn the_validator_rejects_a_broken_manifest() {
    // The check above means something only if a wrong manifest fails it.
    let good = std::fs::read_to_string(repo_path(DIR).join("deployment.yaml")).unwrap();
    let dir = std::env::temp_dir().join(format!("gqp-k8s-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (name, bad) in [
        ("type", good.replacen("replicas: 2", "replicas: \"two\"", 1)),
        (
            "unknown-field",
            good.replacen(
                "readOnlyRootFilesystem: true",
                "readOnlyRootFileSystem: true",
                1,
            ),
        ),
    ] {
        assert_ne!(bad, good, "{name}: the mutation did not apply");
        let path = dir.join(format!("{name}.yaml"));
        std::fs::write(&path, bad).unwrap();
        let out = validate(&path);
        assert!(
            !out.status.success(),
            "{name}: a broken Deployment passed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_kustomization_lists_every_manifest() {
    let k = &yaml_documents(&repo_path(DIR).join(KUSTOMIZATION))[0];
    let listed: BTreeSet<String> = k["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .map(|r| r.as_str().unwrap().to_string())
        .collect();
    let files: BTreeSet<String> = manifest_files()
        .iter()
        .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(listed, files);
    // A generated ConfigMap gets a hashed name and rolls the pods instead of reloading.
    assert!(k.get("configMapGenerator").is_none());
}

#[test]
fn the_deployment_runs_two_hardened_non_root_replicas() {
    let d = proxy_deployment();
    assert_eq!(d["spec"]["replicas"], 2);
    assert_eq!(d["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"], 0);
    let pod = &d["spec"]["template"]["spec"];
    let c = proxy_container(&d);
    let (uid, gid) = dockerfile_user();
    for (at, sc) in [
        ("pod", &pod["securityContext"]),
        ("container", &c["securityContext"]),
    ] {
        assert_eq!(sc["runAsNonRoot"], true, "{at}: {sc}");
        assert_eq!(sc["runAsUser"], uid, "{at}: the Dockerfile's uid");
        assert_eq!(sc["runAsGroup"], gid, "{at}: the Dockerfile's gid");
        assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault", "{at}");
    }
    let sc = &c["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    assert!(sc["capabilities"].get("add").is_none());
    assert_eq!(pod["automountServiceAccountToken"], false);
    for side in ["requests", "limits"] {
        for what in ["cpu", "memory"] {
            assert!(
                c["resources"][side][what].is_string(),
                "resources.{side}.{what} missing: {}",
                c["resources"]
            );
        }
    }
}

#[test]
fn probes_ports_service_and_disruption_budget_line_up() {
    let d = proxy_deployment();
    let c = proxy_container(&d);
    let env = pod_env(&c);
    let listen_port: u64 = env["PROXY_LISTEN"]
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        env["PROXY_LISTEN"].starts_with("0.0.0.0:"),
        "the probes and the Service reach the pod's IP, not its loopback"
    );
    let ports = c["ports"].as_array().unwrap();
    let http_port = ports
        .iter()
        .find(|p| p["name"] == "http")
        .expect("port http");
    assert_eq!(http_port["containerPort"], listen_port);
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        if let Some(p) = c.get(probe) {
            let port = &p["httpGet"]["port"];
            assert!(
                *port == "http" || *port == listen_port,
                "{probe} probes port {port}"
            );
        }
    }

    let pod_labels = d["spec"]["template"]["metadata"]["labels"].clone();
    let selects_pod = |selector: &Value| {
        let sel = selector.as_object().expect("a selector");
        !sel.is_empty() && sel.iter().all(|(k, v)| pod_labels[k] == *v)
    };
    assert!(selects_pod(&d["spec"]["selector"]["matchLabels"]));
    let svc = object("Service", "gemini-quota-proxy");
    assert!(selects_pod(&svc["spec"]["selector"]));
    let svc_port = &svc["spec"]["ports"][0];
    assert!(svc_port["targetPort"] == "http" || svc_port["targetPort"] == listen_port);
    let pdb = object("PodDisruptionBudget", "gemini-quota-proxy");
    assert_eq!(pdb["spec"]["minAvailable"], 1);
    assert!(selects_pod(&pdb["spec"]["selector"]["matchLabels"]));

    // The Redis the Secret's REDIS_URL names is redis.yaml's Service, and that Service
    // selects the Redis pods, not the proxies.
    let redis_svc = object("Service", "gemini-quota-proxy-redis");
    let redis_url = &secret_data()["REDIS_URL"];
    let host_port = redis_url
        .strip_prefix("redis://")
        .expect("redis:// URL")
        .trim_end_matches('/');
    assert_eq!(
        host_port,
        format!(
            "{}:{}",
            redis_svc["metadata"]["name"].as_str().unwrap(),
            redis_svc["spec"]["ports"][0]["port"]
        )
    );
    assert!(!selects_pod(&redis_svc["spec"]["selector"]));
    let redis = object("Deployment", "gemini-quota-proxy-redis");
    let redis_labels = &redis["spec"]["template"]["metadata"]["labels"];
    let redis_sel = redis_svc["spec"]["selector"].as_object().unwrap();
    assert!(redis_sel.iter().all(|(k, v)| redis_labels[k] == *v));
    assert!(
        !pdb["spec"]["selector"]["matchLabels"]
            .as_object()
            .unwrap()
            .iter()
            .all(|(k, v)| redis_labels[k] == *v)
    );
}

#[test]
fn the_config_map_is_mounted_as_a_directory_so_updates_reach_the_pod() {
    let d = proxy_deployment();
    let c = proxy_container(&d);
    let config = config_arg(&c);
    let dir = Path::new(&config)
        .parent()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let volumes = d["spec"]["template"]["spec"]["volumes"].as_array().unwrap();
    let volume = volumes
        .iter()
        .find(|v| v["configMap"]["name"] == "gemini-quota-proxy-config")
        .expect("a volume of the ConfigMap");
    let mounts = c["volumeMounts"].as_array().unwrap();
    let mount = mounts
        .iter()
        .find(|m| m["name"] == volume["name"])
        .expect("the ConfigMap volume is mounted");
    assert!(
        mount.get("subPath").is_none() && mount.get("subPathExpr").is_none(),
        "a subPath mount never sees ConfigMap updates: {mount}"
    );
    assert_eq!(
        mount["mountPath"],
        dir.as_str(),
        "--config {config} is not in the mount"
    );
    assert_eq!(mount["readOnly"], true);
    // The volume projects the file --config names (all keys, or that one under its name).
    let (file, _) = config_toml(&config);
    if let Some(items) = volume["configMap"]["items"].as_array() {
        assert!(
            items
                .iter()
                .any(|i| i["key"] == file.as_str() && i["path"] == file.as_str())
        );
    }
}

#[test]
fn every_variable_is_one_the_proxy_knows_and_secrets_come_from_the_secret() {
    let known = documented_env_vars();
    let d = proxy_deployment();
    let c = proxy_container(&d);
    let env = c["env"].as_array().unwrap();
    let mut from_secret = BTreeSet::new();
    for e in env {
        let name = e["name"].as_str().unwrap();
        assert!(
            known.contains(name),
            "{name} is not a variable docs/configuration.md documents: {known:?}"
        );
        if let Some(key) = e["valueFrom"]["secretKeyRef"]["key"].as_str() {
            from_secret.insert(key.to_string());
        }
        if SECRET_VARS.contains(&name) {
            assert!(
                e.get("value").is_none(),
                "{name} holds a secret: take it from the Secret"
            );
        }
    }
    for var in SECRET_VARS {
        assert!(
            env.iter().any(|e| e["name"] == var),
            "{var} is not set in the Deployment"
        );
    }
    // Every entry of the Secret is a documented variable the pod reads.
    let secret_keys: BTreeSet<String> = secret_data().into_keys().collect();
    assert_eq!(secret_keys, from_secret);
    assert!(secret_keys.iter().all(|k| known.contains(k)));
}

#[test]
fn the_grace_period_outlasts_the_proxy_drain() {
    let d = proxy_deployment();
    let c = proxy_container(&d);
    let dir = std::env::temp_dir().join(format!("gqp-k8s-grace-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (file, toml) = config_toml(&config_arg(&c));
    let path = dir.join(file);
    std::fs::write(&path, toml).unwrap();
    // The proxy's own loader, with the pod's file and environment.
    let config = Config::load(&Sources {
        file: Some(path.to_string_lossy().into_owned()),
        env: pod_env(&c).into_iter().collect(),
    })
    .unwrap_or_else(|e| panic!("the ConfigMap's TOML with the pod's env is refused: {e}"));
    let _ = std::fs::remove_dir_all(&dir);
    let pre_stop: f64 = match c["lifecycle"]["preStop"]["exec"]["command"].as_array() {
        Some(cmd) if cmd[0] == "sleep" => cmd[1].as_str().unwrap().parse().unwrap(),
        Some(cmd) => panic!("unexpected preStop {cmd:?}"),
        None => 0.0,
    };
    let grace = d["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        .as_f64()
        .expect("terminationGracePeriodSeconds");
    let drain = config.server.shutdown_grace.as_secs_f64();
    assert!(
        grace > pre_stop + drain,
        "terminationGracePeriodSeconds {grace} must exceed preStop {pre_stop} s + \
         server.shutdown_grace_secs {drain} s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pod_as_specified_starts_and_answers_its_probes() {
    let d = proxy_deployment();
    let c = proxy_container(&d);
    let redis = RedisServer::start();
    // The pod's file, at the same name under a directory of the test's.
    let config = config_arg(&c);
    let mount = Path::new(&config).parent().unwrap();
    let dir = std::env::temp_dir().join(format!("gqp-k8s-pod-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (file, toml) = config_toml(&config);
    std::fs::write(dir.join(&file), toml).unwrap();
    let args: Vec<String> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            a.as_str()
                .unwrap()
                .replace(&*mount.to_string_lossy(), &dir.to_string_lossy())
        })
        .collect();
    // The pod's environment, but this test's Redis and a loopback port.
    let mut env = pod_env(&c);
    env.insert("REDIS_URL".into(), redis.url.clone());
    env.insert("PROXY_LISTEN".into(), "127.0.0.1:0".into());
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let proxy = Binary::start(&env, &arg_refs);

    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        let Some(path) = c[probe]["httpGet"]["path"].as_str() else {
            continue;
        };
        let resp = http()
            .get(format!("{}{path}", proxy.url))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{probe} {path}");
    }
    let ready: Value = http()
        .get(format!("{}/readyz", proxy.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["status"], "ready", "{ready}");
    assert_eq!(
        ready["store"], "redis",
        "the Secret's REDIS_URL is used: {ready}"
    );
    let dashboard = http()
        .get(format!("{}/dashboard/", proxy.url))
        .send()
        .await
        .unwrap();
    assert_eq!(dashboard.status(), 200);

    let (logs, status) = proxy.stop();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        status.success(),
        "SIGTERM drains and exits 0: {status}\n{logs}"
    );
    // The ConfigMap's log.format = "json" took effect: the file was read.
    let listening = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["message"] == "listening");
    assert!(listening.is_some(), "no JSON \"listening\" line:\n{logs}");
    // The Secret's values are secrets: none of them in the log.
    for var in SECRET_VARS.iter().filter(|v| **v != "REDIS_URL") {
        for value in secret_data()[*var].split([',', ':']) {
            assert!(
                value.len() < 12 || !logs.contains(value),
                "{var}'s value appears in the log"
            );
        }
    }
}
