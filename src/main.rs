//! Command line: load the config, start logging, build the state, reload on SIGHUP and file
//! changes, serve until SIGTERM/SIGINT.

use std::process::ExitCode;

/// mimalloc (`allocator::Mimalloc` says why).
#[global_allocator]
static GLOBAL: gemini_quota_proxy::allocator::Mimalloc = gemini_quota_proxy::allocator::Mimalloc;

use clap::{CommandFactory, FromArgMatches, Parser};
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
    /// Validate the config and connect to the store, print what would run, and exit: 0 when
    /// it would start, 2 with the setting at fault when it would not.
    #[arg(long)]
    check: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    // Before the proxy allocates much: 4 KiB pages, not mimalloc's huge ones.
    gemini_quota_proxy::allocator::no_transparent_huge_pages();
    // The environment variables are listed under --help from the table the config reads.
    let matches = Cli::command()
        .after_help(gemini_quota_proxy::config::variables::help_table())
        .get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
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
    if cli.check {
        return match gemini_quota_proxy::preflight::check(config).await {
            Ok(summary) => {
                print!("{summary}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("gemini-quota-proxy: {e}");
                ExitCode::from(2)
            }
        };
    }
    // Held to the end of main: dropping it flushes the log queue.
    let _log_guard = telemetry::init(
        config.log.format,
        sources.env.get("RUST_LOG").map(String::as_str),
    );
    config.log_warnings();
    // OpenTelemetry traces, when an endpoint is set (read at start; a reload keeps these).
    let otel = match telemetry::otel::install(&config.otel) {
        Ok(guard) => guard,
        Err(e) => {
            eprintln!("gemini-quota-proxy: {e}");
            return ExitCode::from(2);
        }
    };
    if otel.is_some() {
        tracing::info!(service = %config.otel.service_name, sampler = ?config.otel.sampler, ratio = config.otel.sampler_arg, "exporting traces over OTLP/HTTP");
    }
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
    if let Err(e) = state.pool.check_vertex_tokens().await {
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
    let bound = listener.local_addr().unwrap_or(listen);
    tracing::info!(
        addr = %bound,
        dashboard = %state.config.server.dashboard_url(bound),
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
    let served = serve(listener, gateway, shutdown_signal()).await;
    // The spans of the last requests are sent before exit.
    if let Some(otel) = otel {
        otel.shutdown().await;
    }
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gemini-quota-proxy: {e}");
            ExitCode::FAILURE
        }
    }
}
