//! A private Redis Cluster: `redis-server --cluster-enabled yes` on free loopback ports (each
//! with its cluster bus port, +10000, free too), joined by `redis-cli --cluster create`, every
//! node killed on drop and its directory removed.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::RedisServer;

/// One node of the cluster (a `RedisServer` started in cluster mode; `None` once killed).
pub struct Node {
    pub port: u16,
    /// Its TLS port, when the cluster was started with `{tls_port}` in its extra arguments.
    pub tls_port: Option<u16>,
    server: Option<RedisServer>,
}

/// The cluster: `masters` masters with `replicas` replicas each.
pub struct RedisCluster {
    pub nodes: Vec<Node>,
    dir: PathBuf,
}

/// A port below 55536 whose cluster bus port (+10000) is free too, never handed out before.
fn cluster_port() -> u16 {
    loop {
        let port = super::free_port();
        if port < 55_536 && std::net::TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

/// Wait until `f` holds, polling, up to `within`.
pub fn wait_until(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + within;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    f()
}

/// A `host:port` in `CLUSTER NODES`' address column (`127.0.0.1:7000@17000`) as its port.
fn port_of(addr: &str) -> Option<u16> {
    addr.split('@').next()?.rsplit(':').next()?.parse().ok()
}

impl RedisCluster {
    /// Start and join the nodes; returns once every node says `cluster_state:ok`, knows every
    /// node, and every replica is in sync with its master. `node_timeout_ms`: how long a silent
    /// master takes to be failed over.
    pub fn start(masters: usize, replicas: usize, node_timeout_ms: u64) -> RedisCluster {
        Self::start_with(masters, replicas, node_timeout_ms, &[])
    }

    /// [`RedisCluster::start`] with `extra` arguments for every node; `{tls_port}` in them
    /// becomes a free port of the node's own (for `--tls-port`).
    pub fn start_with(
        masters: usize,
        replicas: usize,
        node_timeout_ms: u64,
        extra: &[String],
    ) -> RedisCluster {
        let dir = std::env::temp_dir().join(format!(
            "gqp-cluster-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let total = masters * (1 + replicas);
        let mut nodes = Vec::with_capacity(total);
        while nodes.len() < total {
            let port = cluster_port();
            let conf = dir.join(format!("nodes-{port}.conf"));
            let timeout = node_timeout_ms.to_string();
            let tls_port = extra
                .iter()
                .any(|a| a.contains("{tls_port}"))
                .then(super::free_port);
            let extra: Vec<String> = extra
                .iter()
                .map(|a| a.replace("{tls_port}", &tls_port.unwrap_or(0).to_string()))
                .collect();
            let mut args = vec![
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                conf.to_str().unwrap(),
                "--cluster-node-timeout",
                &timeout,
                "--dir",
                dir.to_str().unwrap(),
            ];
            args.extend(extra.iter().map(String::as_str));
            if let Some(server) = RedisServer::start_at(port, &args) {
                nodes.push(Node {
                    port,
                    tls_port,
                    server: Some(server),
                });
            }
        }
        let mut create =
            Command::new(std::env::var("REDIS_CLI_BIN").unwrap_or_else(|_| "redis-cli".into()));
        create.arg("--cluster").arg("create");
        for n in &nodes {
            create.arg(format!("127.0.0.1:{}", n.port));
        }
        let out = create
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("these tests need redis-cli ({e})"));
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let cluster = RedisCluster { nodes, dir };
        let ready = wait_until(Duration::from_secs(60), || {
            cluster.nodes.iter().all(|n| {
                let info = cluster
                    .cli(n.port, &["CLUSTER", "INFO"])
                    .unwrap_or_default();
                info.contains("cluster_state:ok")
                    && info.contains(&format!("cluster_known_nodes:{total}"))
            }) && cluster.replicas_in_sync()
        });
        assert!(ready, "the cluster did not become ready within 60 s");
        cluster
    }

    /// A command to the node on `port` (plain RESP; see `RedisServer::cli`).
    pub fn cli(&self, port: u16, args: &[&str]) -> Option<String> {
        self.nodes
            .iter()
            .find(|n| n.port == port)?
            .server
            .as_ref()?
            .cli(args)
    }

    /// Every replica reports its link to its master up.
    fn replicas_in_sync(&self) -> bool {
        self.nodes.iter().filter(|n| n.server.is_some()).all(|n| {
            let info = self
                .cli(n.port, &["INFO", "replication"])
                .unwrap_or_default();
            info.contains("role:master") || info.contains("master_link_status:up")
        })
    }

    /// The TLS port of the node on `port`.
    pub fn tls_port(&self, port: u16) -> Option<u16> {
        self.nodes.iter().find(|n| n.port == port)?.tls_port
    }

    /// `redis://127.0.0.1:PORT` of a node.
    pub fn url(&self, port: u16) -> String {
        format!("redis://127.0.0.1:{port}")
    }

    /// Ports of the live nodes.
    pub fn live_ports(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|n| n.server.is_some())
            .map(|n| n.port)
            .collect()
    }

    /// The hash slot of `key`, as the cluster computes it.
    pub fn keyslot(&self, key: &str) -> u16 {
        let port = self.live_ports()[0];
        self.cli(port, &["CLUSTER", "KEYSLOT", key])
            .and_then(|s| s.trim().parse().ok())
            .expect("CLUSTER KEYSLOT answers")
    }

    /// The master serving `slot`, as the live node on `ask` sees it (from `CLUSTER NODES`:
    /// a master not flagged `fail` whose ranges hold the slot).
    pub fn master_of(&self, slot: u16, ask: u16) -> Option<u16> {
        let nodes = self.cli(ask, &["CLUSTER", "NODES"])?;
        for line in nodes.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 9 || !f[2].contains("master") || f[2].contains("fail") {
                continue;
            }
            let serves = f[8..].iter().any(|r| {
                let (a, b) = r.split_once('-').unwrap_or((r, r));
                match (a.parse::<u16>(), b.parse::<u16>()) {
                    (Ok(a), Ok(b)) => a <= slot && slot <= b,
                    _ => false,
                }
            });
            if serves {
                return port_of(f[1]);
            }
        }
        None
    }

    /// The replicas of the master on `port` (from `CLUSTER NODES` on that master).
    pub fn replicas_of(&self, port: u16) -> Vec<u16> {
        let nodes = self.cli(port, &["CLUSTER", "NODES"]).unwrap_or_default();
        let id = nodes
            .lines()
            .find(|l| l.contains("myself"))
            .and_then(|l| l.split_whitespace().next())
            .unwrap_or_default()
            .to_string();
        nodes
            .lines()
            .filter(|l| l.split_whitespace().nth(3) == Some(id.as_str()))
            .filter_map(|l| port_of(l.split_whitespace().nth(1)?))
            .collect()
    }

    /// A live master that does not serve `slot`.
    pub fn other_master(&self, slot: u16) -> u16 {
        let owner = self.master_of(slot, self.live_ports()[0]);
        self.live_ports()
            .into_iter()
            .find(|p| {
                Some(*p) != owner
                    && self
                        .cli(*p, &["INFO", "replication"])
                        .is_some_and(|i| i.contains("role:master"))
            })
            .expect("another master")
    }

    /// Every key on the node on `port`.
    pub fn keys_on(&self, port: u16) -> String {
        self.cli(port, &["KEYS", "*"]).unwrap_or_default()
    }

    /// SIGSTOP the node on `port`: it keeps its connections open and answers nothing (a hung
    /// host, a network partition). Killed on drop like the others.
    pub fn freeze(&self, port: u16) {
        let pid = self
            .nodes
            .iter()
            .find(|n| n.port == port)
            .and_then(|n| n.server.as_ref())
            .map(RedisServer::pid)
            .expect("a live node");
        let ok = Command::new("kill")
            .args(["-STOP", &pid.to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "could not stop node {port}");
    }

    /// SIGKILL the node on `port` (a crash: no goodbye to the cluster).
    pub fn kill(&mut self, port: u16) {
        if let Some(n) = self.nodes.iter_mut().find(|n| n.port == port) {
            n.server = None;
        }
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            n.server = None;
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
