//! Command line: load the config, start logging, build the state, reload on SIGHUP and file
//! changes, serve until SIGTERM/SIGINT.

use std::process::ExitCode;

/// mimalloc: the proxy allocates small, short-lived buffers on every request from several
/// threads, where glibc's allocator spends a fifth of the CPU time (measured with perf).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;
use gemini_quota_proxy::reload::watch;
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
    config.log_warnings();
    // SIGHUP is taken from here on (its default would end the process): one that comes
    // before the gateway serves reloads once it does.
    let hangups = watch::sighup();
    let listen = config.server.listen;
    let mut builder = Gateway::builder(config).sources(sources.clone());
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
    let state = gateway.state();
    if let Err(e) = state.check_store_at_start().await {
        eprintln!("gemini-quota-proxy: {e}");
        return ExitCode::from(2);
    }
    let watch_config = state.config.server.watch_config;
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
    // Not held while serving: a generation a reload replaces is freed when its requests end.
    drop(state);
    // Reload without restart: SIGHUP, and a change to the config file's directory.
    let live = gateway.live().downgrade();
    match hangups {
        Ok(hangups) => watch::spawn_sighup(live.clone(), hangups),
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP: reload with POST /api/ai/config/reload")
        }
    }
    if let Some(file) = sources.file.as_ref().filter(|_| watch_config)
        && let Err(e) = watch::spawn_file_watch(live, std::path::Path::new(file))
    {
        tracing::warn!(error = %e, "cannot watch the config file: reload with SIGHUP or POST /api/ai/config/reload");
    }
    match serve(listener, gateway, shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gemini-quota-proxy: {e}");
            ExitCode::FAILURE
        }
    }
}
