//! What the benchmark programs share: free ports, waiting for a listener, child processes that
//! die with their handle, a private redis-server, and running wrk.

use std::net::TcpListener as StdListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn wait_port(port: u16) {
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("nothing listens on {port}");
}

/// A child process, killed when this is dropped.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A redis-server of our own on a free port, without persistence.
pub fn start_redis() -> (u16, Proc) {
    let port = free_port();
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server (apt-get install redis-server)");
    wait_port(port);
    (port, Proc(child))
}

/// Run wrk (one thread) against `127.0.0.1:{port}{path}` with the Lua `script`, whose `done`
/// prints one line `RESULT n n n ...`: those numbers.
pub fn wrk_result(
    port: u16,
    conns: u32,
    secs: u32,
    script: &std::path::Path,
    path: &str,
) -> Vec<f64> {
    let out = Command::new("wrk")
        .args([
            "-t1",
            &format!("-c{conns}"),
            &format!("-d{secs}s"),
            "--timeout",
            "5s",
            "-s",
            script.to_str().unwrap(),
            &format!("http://127.0.0.1:{port}{path}"),
        ])
        .output()
        .expect("wrk (apt-get install wrk)");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with("RESULT "))
        .unwrap_or_else(|| panic!("wrk printed no RESULT:\n{text}"));
    line[7..]
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0.0))
        .collect()
}
