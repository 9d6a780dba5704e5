//! The real proxy binary in a child process: started with exactly the environment a test gives
//! (no inherited variables), on a free port it reports in its log, its output collected.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Run the binary to its end with exactly `env` and `args` (`--check`, `--help`): its exit
/// status, stdout and stderr.
pub fn run(env: &[(&str, &str)], args: &[&str]) -> (ExitStatus, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_gemini-quota-proxy"))
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .output()
        .expect("the proxy binary runs");
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A running proxy binary, killed on drop.
pub struct Binary {
    pub url: String,
    child: Child,
    /// Everything it printed so far (stderr and stdout), line by line.
    logs: Arc<Mutex<String>>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl Binary {
    /// Start it with `env` (and `args`). `PROXY_LISTEN` defaults to `127.0.0.1:0` and
    /// `RUST_LOG` to `info`; returns once it logged the address it listens on (text or JSON
    /// log lines).
    pub fn start(env: &[(&str, &str)], args: &[&str]) -> Binary {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_gemini-quota-proxy"));
        cmd.args(args)
            .env_clear()
            .env("PROXY_LISTEN", "127.0.0.1:0")
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("the proxy binary starts");
        let logs = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let mut readers = Vec::new();
        let stderr = child.stderr.take().expect("stderr piped");
        let stdout = child.stdout.take().expect("stdout piped");
        // Both pipes are read to their end, so the proxy never blocks on a full one.
        for (pipe, tx) in [
            (Box::new(stderr) as Box<dyn std::io::Read + Send>, Some(tx)),
            (Box::new(stdout), None),
        ] {
            let logs = logs.clone();
            readers.push(std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    // `addr=...` in text logs, `"addr":"..."` in JSON ones (log.format).
                    let at = line
                        .find("addr=")
                        .map(|i| i + 5)
                        .or_else(|| line.find("\"addr\":\"").map(|i| i + 8));
                    // The line is in the logs before the address is handed on: a test that
                    // reads the logs as soon as `start` returns finds its start line.
                    {
                        let mut l = logs.lock().unwrap();
                        l.push_str(&line);
                        l.push('\n');
                    }
                    if let (Some(tx), Some(i)) = (&tx, at) {
                        let addr: String = line[i..]
                            .chars()
                            .take_while(|c| !c.is_whitespace() && *c != '"')
                            .collect();
                        let _ = tx.send(addr);
                    }
                }
            }));
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        let addr = loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(a) => break a,
                Err(_) if Instant::now() < deadline => {
                    if let Ok(Some(status)) = child.try_wait() {
                        panic!(
                            "the proxy exited ({status}) before listening: {}",
                            logs.lock().unwrap()
                        );
                    }
                }
                Err(_) => panic!(
                    "the proxy logged no address within 20 s: {}",
                    logs.lock().unwrap()
                ),
            }
        };
        Binary {
            url: format!("http://{addr}"),
            child,
            logs,
            readers,
        }
    }

    /// Its process id (to send it signals).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What it printed so far.
    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().clone()
    }

    /// Stop it as an orchestrator would (SIGTERM), wait for it, and return everything it
    /// printed and how it exited.
    pub fn stop(mut self) -> (String, ExitStatus) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let status = self.child.wait().expect("the proxy exits");
        for r in std::mem::take(&mut self.readers) {
            let _ = r.join();
        }
        (self.logs(), status)
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
