//! `BENCH_ONLY=clients`: what a client's own limits cost on the memory-store path. Two proxies
//! on the same build, each with `BENCH_CLIENTS` (default 100) configured clients, the load's
//! requests spread over their keys: one whose clients have no limits (today's path: nothing to
//! count), one whose clients each have every limit (rpm, tpm, rpd, max_concurrent, both budgets,
//! all far above the load), in alternating rounds of one run.

use std::path::Path;

use super::support::{proxy_bin, start_proxy_with};
use super::{CLIENT_KEY, REQUEST_BODY, wrk, wrk_cpu};

/// The config file of `n` clients, with `limits` lines each.
fn clients_toml(dir: &Path, name: &str, n: usize, limits: &str) -> String {
    let mut toml = String::new();
    for i in 0..n {
        toml.push_str(&format!(
            "[[auth.clients]]\nname = \"c{i}\"\nkey = \"bench-client-key-{i:04}\"\n{limits}\n"
        ));
    }
    let path = dir.join(name);
    std::fs::write(&path, toml).unwrap();
    path.to_string_lossy().into_owned()
}

/// A wrk script whose every request presents the next of `n` client keys.
fn rotating_script(dir: &Path, n: usize) -> std::path::PathBuf {
    let keys: Vec<String> = (0..n)
        .map(|i| format!("\"bench-client-key-{i:04}\""))
        .collect();
    let path = dir.join("clients.lua");
    let script = format!(
        r#"wrk.method = "POST"
wrk.body = '{REQUEST_BODY}'
wrk.headers["Content-Type"] = "application/json"
local keys = {{{}}}
local i = 0
request = function()
  i = i % #keys + 1
  wrk.headers["x-goog-api-key"] = keys[i]
  return wrk.format()
end
done = function(summary, latency, requests)
  local errors = summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.status + summary.errors.timeout
  io.write(string.format("RESULT %d %.1f %.1f %.1f %.1f %d\n", summary.requests, summary.requests / (summary.duration / 1e6),
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9), errors))
end
"#,
        keys.join(", ")
    );
    std::fs::write(&path, script).unwrap();
    path
}

pub fn clients_cost(upstream: u16, conns: u32, secs: u32, dir: &Path) {
    let n: usize = std::env::var("BENCH_CLIENTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100);
    let bin = proxy_bin();
    let url = format!("http://127.0.0.1:{upstream}");
    let log = std::env::var("BENCH_RUST_LOG").unwrap_or_else(|_| "warn".into());
    let plain = clients_toml(dir, "plain.toml", n, "");
    let limits = "rpm = 100000000\ntpm = 100000000000\nrpd = 1000000000\nmax_concurrent = 100000\ndaily_budget_usd = 1000000\nmonthly_budget_usd = 10000000";
    let limited = clients_toml(dir, "limited.toml", n, limits);
    let start = |config: String| {
        start_proxy_with(
            &bin,
            &url,
            CLIENT_KEY,
            &[("RUST_LOG", log.clone()), ("PROXY_CONFIG", config)],
        )
    };
    let (plain_port, plain_proc) = start(plain);
    let (lim_port, lim_proc) = start(limited);
    let script = rotating_script(dir, n);
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    wrk(plain_port, 8, 1, &script);
    wrk(lim_port, 8, 1, &script);
    println!(
        "client limits cost: memory store, {n} clients, requests spread over their keys, wrk -t1 -c{conns} -d{secs}s x {rounds} rounds each, alternating"
    );
    println!(
        "| round | no limits (before) req/s | every limit (after) req/s | after/before | CPU us/req before | after | errors |"
    );
    println!("|---|---|---|---|---|---|---|");
    let (mut before_sum, mut after_sum) = (0.0, 0.0);
    for r in 1..=rounds {
        let before = wrk_cpu(plain_port, conns, secs, &script, Some(plain_proc.0.id()));
        let after = wrk_cpu(lim_port, conns, secs, &script, Some(lim_proc.0.id()));
        before_sum += before.rps;
        after_sum += after.rps;
        println!(
            "| {r} | {:.0} | {:.0} | {:.3} | {:.1} | {:.1} | {} |",
            before.rps,
            after.rps,
            after.rps / before.rps,
            before.cpu_us,
            after.cpu_us,
            before.errors + after.errors
        );
    }
    println!(
        "mean throughput: before {:.0} req/s, after {:.0} req/s, after / before {:.3}",
        before_sum / rounds as f64,
        after_sum / rounds as f64,
        after_sum / before_sum
    );
}
