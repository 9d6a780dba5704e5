//! `BENCH_ONLY=vertex`: what a configured Vertex AI entry costs the AI Studio path. Two proxies
//! on the same build and memory store: one with only the AI Studio keys, one with a
//! `[[pool.vertex]]` entry too (`pool.order = "ai-studio-first"`; the keys always have room, so
//! every request still goes to the AI Studio fake, and the entry's token comes from the fake's
//! `/token`), in alternating rounds of one run.

use std::path::Path;

use super::support::{proxy_bin, start_proxy_with};
use super::{CLIENT_KEY, wrk, wrk_cpu};

pub fn vertex_cost(upstream: u16, conns: u32, secs: u32, script: &Path, dir: &Path) {
    let bin = proxy_bin();
    let url = format!("http://127.0.0.1:{upstream}");
    let creds = dir.join("vertex-user.json");
    std::fs::write(
        &creds,
        format!(
            r#"{{"type":"authorized_user","client_id":"bench","client_secret":"bench","refresh_token":"bench","token_uri":"{url}/token"}}"#
        ),
    )
    .unwrap();
    let config = dir.join("vertex.toml");
    std::fs::write(
        &config,
        format!(
            "[pool]\norder = \"ai-studio-first\"\n[[pool.vertex]]\nproject = \"bench\"\nlocation = \"us-central1\"\ncredentials_file = \"{}\"\nbase_url = \"{url}\"\n",
            creds.display()
        ),
    )
    .unwrap();
    let log = std::env::var("BENCH_RUST_LOG").unwrap_or_else(|_| "warn".into());
    let (off_port, off_proc) =
        start_proxy_with(&bin, &url, CLIENT_KEY, &[("RUST_LOG", log.clone())]);
    let (on_port, on_proc) = start_proxy_with(
        &bin,
        &url,
        CLIENT_KEY,
        &[
            ("RUST_LOG", log),
            ("PROXY_CONFIG", config.display().to_string()),
        ],
    );
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    wrk(on_port, 8, 1, script);
    wrk(off_port, 8, 1, script);
    println!(
        "Vertex entry cost on the AI Studio path: memory store, wrk -t1 -c{conns} -d{secs}s x {rounds} rounds each, alternating"
    );
    println!(
        "| round | with entry req/s | keys only req/s | with/without | CPU us/req with | without |"
    );
    println!(
        "|-------|------------------|-----------------|--------------|-----------------|---------|"
    );
    let (mut on_sum, mut off_sum) = (0.0, 0.0);
    for r in 1..=rounds {
        let on = wrk_cpu(on_port, conns, secs, script, Some(on_proc.0.id()));
        let off = wrk_cpu(off_port, conns, secs, script, Some(off_proc.0.id()));
        on_sum += on.rps;
        off_sum += off.rps;
        println!(
            "| {r} | {:.0} | {:.0} | {:.3} | {:.1} | {:.1} |",
            on.rps,
            off.rps,
            on.rps / off.rps,
            on.cpu_us,
            off.cpu_us
        );
    }
    println!(
        "mean throughput ratio, with a Vertex entry / keys only: {:.3}",
        on_sum / off_sum
    );
}
