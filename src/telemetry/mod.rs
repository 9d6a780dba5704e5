//! Logging and tracing. Here: log lines (`RUST_LOG` filter, default `info`), text or JSON on
//! stderr, written by a background thread so a slow stderr (a pipe, a journal) never blocks
//! request handling. OpenTelemetry traces: [`otel`] (the set-up, off by default), [`span`] (a
//! request's spans), `context` (the W3C trace context sent on), [`attr`] (the attributes'
//! names), [`record`] (what a finished trace holds), [`scan`] (what an answer says of itself as
//! it passes), [`export`] (the bounded queue to the exporter), [`otlp`] (the exporter: OTLP/HTTP
//! protobuf written straight from the records), `pb` (the protobuf wire format it writes).

pub mod attr;
mod context;
pub mod export;
pub mod otel;
pub mod otlp;
mod pb;
pub mod record;
pub mod scan;
pub mod span;

pub use context::HEADERS as TRACE_CONTEXT_HEADERS;

use std::io::IsTerminal;

use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;

/// How log lines are written (`log.format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Install the global subscriber. Keep the returned guard alive until exit: dropping it flushes
/// what is still queued. Safe to call twice (the second call installs nothing).
pub fn init(format: LogFormat, rust_log: Option<&str>) -> WorkerGuard {
    let filter = match rust_log.map(EnvFilter::try_new) {
        None => EnvFilter::new("info"),
        Some(Ok(f)) => f,
        Some(Err(e)) => {
            eprintln!("gemini-quota-proxy: RUST_LOG is not a valid filter ({e}); using \"info\"");
            EnvFilter::new("info")
        }
    };
    // Lossy: when 128k lines are queued, further lines are dropped rather than stalling requests.
    let (writer, guard) = NonBlockingBuilder::default()
        .buffered_lines_limit(128_000)
        .lossy(true)
        .finish(std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
    guard
}
