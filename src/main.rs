//! Command line: load the config, start logging, build the state, serve until SIGTERM/SIGINT.

use std::process::ExitCode;

/// mimalloc: the proxy allocates small, short-lived buffers on every request from several
/// threads, where glibc's allocator spends a fifth of the CPU time (measured with perf).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;
use gemini_quota_proxy::{Config, Gateway, Sources, serve, server::shutdown_signal, telemetry};

/// A Gemini API reverse proxy that pools keys and keeps every request inside its quota.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// TOML config file layered over the embedded defaults (also PROXY_CONFIG).
    #[arg(long, value_name = "FILE")]
    config: Option<String>,
    /// Print the embedded default config and exit.
    #[arg(long)]
    print_default_config: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    // Before the proxy allocates much: 4 KiB pages, not mimalloc's huge ones.
    gemini_quota_proxy::allocator::no_transparent_huge_pages();
    let cli = Cli::parse();
    if cli.print_default_config {
        print!("{}", gemini_quota_proxy::config::DEFAULT_TOML);
        return ExitCode::SUCCESS;
    }
    let sources = Sources::from_process(cli.config);
    let config = match Config::load(&sources) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("gemini-quota-proxy: {e}");
            return ExitCode::from(2);
        }
    };
    // Held to the end of main: dropping it flushes the log queue.
    let _log_guard = telemetry::init(
        config.log.format,
        sources.env.get("RUST_LOG").map(String::as_str),
    );
    let listen = config.server.listen;
    let mut builder = Gateway::builder(config);
    if let Some(handle) = gemini_quota_proxy::metrics::install_prometheus() {
        builder = builder.prometheus(handle);
    }
    let gateway = match builder.build() {
        Ok(g) => g,
        Err(e) => {
            eprintln!("gemini-quota-proxy: {e}");
            return ExitCode::from(2);
        }
    };
    let state = gateway.state().clone();
    if let Err(e) = state.check_store_at_start().await {
        eprintln!("gemini-quota-proxy: {e}");
        return ExitCode::from(2);
    }
    let listener = match tokio::net::TcpListener::bind(listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("gemini-quota-proxy: cannot listen on {listen}: {e}");
            return ExitCode::from(2);
        }
    };
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    tracing::info!(
        addr = %addr,
        keys = state.pool.keys.len(),
        store = state.store.backend(),
        upstream = %state.config.upstream.url.text,
        "listening"
    );
    match serve(listener, gateway, shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gemini-quota-proxy: {e}");
            ExitCode::FAILURE
        }
    }
}
