//! Trace export's set-up: built once at start from [`Settings`] (the `[otel]` section and the
//! standard `OTEL_*` variables, read by the config): the SDK's sampler and id generator, and
//! OTLP over HTTP/protobuf through the queue of [`super::export`]. Off (no endpoint), nothing
//! is built and [`installed`] is `None`: the request path then makes no span at all.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{RandomIdGenerator, Sampler};

use super::export::{self, OtlpHttp, Pending, Queue, Worker};
use super::otlp::Exporter;
use super::record::Finished;

/// Trace export settings (validated by the config's `[otel]` section).
#[derive(Clone, PartialEq)]
pub struct Settings {
    /// The traces URL (`…/v1/traces`); `None`: export off.
    pub endpoint: Option<String>,
    /// Sent with every export (an API key of the collector's vendor). Never logged.
    pub headers: HashMap<String, String>,
    pub service_name: String,
    pub sampler: SamplerKind,
    /// The ratio of the `traceidratio` samplers, 0 to 1.
    pub sampler_arg: f64,
    /// Record prompts and answers in spans (`gen_ai.input.messages`, `gen_ai.output.messages`).
    pub record_content: bool,
    /// Spans waiting for export at most; more are dropped (and counted).
    pub queue_size: usize,
    pub batch_size: usize,
    /// Longest time a span waits for its batch to be sent.
    pub schedule_delay: Duration,
    /// Longest time one export may take.
    pub timeout: Duration,
}

impl std::fmt::Debug for Settings {
    /// Header values may be credentials: only their names are shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("endpoint", &self.endpoint)
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .field("service_name", &self.service_name)
            .field("sampler", &self.sampler)
            .field("sampler_arg", &self.sampler_arg)
            .field("record_content", &self.record_content)
            .field("queue_size", &self.queue_size)
            .field("batch_size", &self.batch_size)
            .field("schedule_delay", &self.schedule_delay)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            endpoint: None,
            headers: HashMap::new(),
            service_name: "gemini-quota-proxy".into(),
            sampler: SamplerKind::ParentBasedAlwaysOn,
            sampler_arg: 1.0,
            record_content: false,
            queue_size: 2048,
            batch_size: 512,
            schedule_delay: Duration::from_millis(5000),
            timeout: Duration::from_secs(10),
        }
    }
}

/// `OTEL_TRACES_SAMPLER`'s values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SamplerKind {
    AlwaysOn,
    AlwaysOff,
    TraceIdRatio,
    ParentBasedAlwaysOn,
    ParentBasedAlwaysOff,
    ParentBasedTraceIdRatio,
}

impl SamplerKind {
    /// The names the OpenTelemetry specification gives them.
    pub fn parse(name: &str) -> Option<SamplerKind> {
        Some(match name {
            "always_on" => SamplerKind::AlwaysOn,
            "always_off" => SamplerKind::AlwaysOff,
            "traceidratio" => SamplerKind::TraceIdRatio,
            "parentbased_always_on" => SamplerKind::ParentBasedAlwaysOn,
            "parentbased_always_off" => SamplerKind::ParentBasedAlwaysOff,
            "parentbased_traceidratio" => SamplerKind::ParentBasedTraceIdRatio,
            _ => return None,
        })
    }

    fn sampler(self, ratio: f64) -> Sampler {
        match self {
            SamplerKind::AlwaysOn => Sampler::AlwaysOn,
            SamplerKind::AlwaysOff => Sampler::AlwaysOff,
            SamplerKind::TraceIdRatio => Sampler::TraceIdRatioBased(ratio),
            SamplerKind::ParentBasedAlwaysOn => Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
            SamplerKind::ParentBasedAlwaysOff => Sampler::ParentBased(Box::new(Sampler::AlwaysOff)),
            SamplerKind::ParentBasedTraceIdRatio => {
                Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio)))
            }
        }
    }
}

/// The process's trace export, once installed.
static TRACING: OnceLock<Tracing> = OnceLock::new();

/// What a request's trace needs: the sampler, the ids, and where it goes when done.
pub struct Tracing {
    pub(super) sampler: Sampler,
    pub(super) ids: RandomIdGenerator,
    record_content: bool,
    queue: Queue,
}

impl Tracing {
    /// A tracing whose finished traces wait in the returned queue (`capacity` spans at most,
    /// the export task woken at `batch`).
    pub fn new(
        sampler: Sampler,
        record_content: bool,
        capacity: usize,
        batch: usize,
    ) -> (Tracing, Pending) {
        let (queue, pending) = export::queue(capacity, batch);
        let tracing = Tracing {
            sampler,
            ids: RandomIdGenerator::default(),
            record_content,
            queue,
        };
        (tracing, pending)
    }

    /// Hand a finished trace to the export queue; never waits (a full queue drops it).
    pub(super) fn submit(&self, trace: Finished) {
        self.queue.submit(trace);
    }
}

/// The trace export, when it is on (`None`: make no span).
#[inline]
pub fn installed() -> Option<&'static Tracing> {
    TRACING.get()
}

/// Whether prompts and answers go into spans (`otel.record_content`).
pub fn record_content() -> bool {
    TRACING.get().is_some_and(|t| t.record_content)
}

/// Keep until exit: [`Guard::shutdown`] sends the spans still queued.
pub struct Guard {
    worker: Worker,
}

impl Guard {
    /// Send what is queued (5 s at most) and stop exporting.
    pub async fn shutdown(self) {
        self.worker.stop(Duration::from_secs(5)).await;
    }
}

/// Build the exporter and install the trace export (inside a Tokio runtime). `Ok(None)`:
/// export is off. A second call installs nothing and says so.
pub fn install(settings: &Settings) -> Result<Option<Guard>, String> {
    let Some(endpoint) = settings.endpoint.as_deref() else {
        return Ok(None);
    };
    if TRACING.get().is_some() {
        return Err("an OpenTelemetry tracer is already installed in this process".into());
    }
    let http = OtlpHttp::new(settings.timeout)?;
    let resource = Resource::builder()
        .with_service_name(settings.service_name.clone())
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build();
    let exporter = Exporter::new(http, endpoint, &settings.headers, &resource)?;
    let (tracing, pending) = Tracing::new(
        settings.sampler.sampler(settings.sampler_arg),
        settings.record_content,
        settings.queue_size,
        settings.batch_size,
    );
    TRACING
        .set(tracing)
        .map_err(|_| "an OpenTelemetry tracer is already installed in this process")?;
    let worker = export::spawn(exporter, pending, settings.schedule_delay);
    Ok(Some(Guard { worker }))
}
