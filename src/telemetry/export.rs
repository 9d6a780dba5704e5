//! Span export off the request path: a finished span is handed to a bounded queue without
//! waiting (a full queue drops it and counts it in `gqp_otel_spans_total{outcome="dropped"}`),
//! and one Tokio task sends the queue in batches to the OTLP/HTTP exporter, one export at a
//! time, through a small hyper client with rustls and ring ([`OtlpHttp`]).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use opentelemetry::Context;
use opentelemetry_http::{HttpClient, HttpError, Request, Response};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{Span, SpanData, SpanExporter, SpanProcessor};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::Instant;

/// `gqp_otel_spans_total{outcome}`: spans exported, dropped (queue full) or failed (the
/// collector refused them or could not be reached).
pub const SPANS_METRIC: &str = "gqp_otel_spans_total";

/// Largest answer read from the collector (a partial-success message at most).
const RESPONSE_LIMIT: usize = 64 * 1024;

/// Hands finished spans to the export task; never waits.
#[derive(Debug)]
pub struct Queued {
    tx: mpsc::Sender<SpanData>,
    wake: Arc<Notify>,
    capacity: usize,
    batch: usize,
}

impl SpanProcessor for Queued {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        match self.tx.try_send(span) {
            Ok(()) => {
                // A full batch waiting: sent now rather than at the next tick.
                if self.capacity - self.tx.capacity() >= self.batch {
                    self.wake.notify_one();
                }
            }
            Err(_) => metrics::counter!(SPANS_METRIC, "outcome" => "dropped").increment(1),
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.wake.notify_one();
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        // The task is stopped by [`Worker::stop`], which waits for the last batch.
        Ok(())
    }
}

/// The export task: stop it to send what is queued and end.
pub struct Worker {
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Worker {
    /// Send what is queued (within `grace`) and end the task.
    pub async fn stop(mut self, grace: Duration) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = tokio::time::timeout(grace, &mut self.task).await;
    }
}

/// The queue and its task: `queue` spans at most, sent `batch` at a time, at least every
/// `delay`.
pub fn spawn<E>(exporter: E, queue: usize, batch: usize, delay: Duration) -> (Queued, Worker)
where
    E: SpanExporter + 'static,
{
    let (tx, rx) = mpsc::channel(queue.max(1));
    let wake = Arc::new(Notify::new());
    let (stop_tx, stop_rx) = oneshot::channel();
    let task = tokio::spawn(run(
        exporter,
        rx,
        wake.clone(),
        batch.max(1),
        delay,
        stop_rx,
    ));
    (
        Queued {
            tx,
            wake,
            capacity: queue.max(1),
            batch: batch.max(1),
        },
        Worker {
            stop: Some(stop_tx),
            task,
        },
    )
}

async fn run<E: SpanExporter>(
    exporter: E,
    mut rx: mpsc::Receiver<SpanData>,
    wake: Arc<Notify>,
    batch: usize,
    delay: Duration,
    mut stop: oneshot::Receiver<()>,
) {
    let mut last_warned: Option<Instant> = None;
    loop {
        let stopping = tokio::select! {
            _ = tokio::time::sleep(delay) => false,
            _ = wake.notified() => false,
            _ = &mut stop => true,
        };
        loop {
            let mut spans = Vec::with_capacity(batch);
            while spans.len() < batch {
                match rx.try_recv() {
                    Ok(s) => spans.push(s),
                    Err(_) => break,
                }
            }
            let n = spans.len();
            if n == 0 {
                break;
            }
            match exporter.export(spans).await {
                Ok(()) => {
                    metrics::counter!(SPANS_METRIC, "outcome" => "exported").increment(n as u64)
                }
                Err(e) => {
                    metrics::counter!(SPANS_METRIC, "outcome" => "failed").increment(n as u64);
                    // One line a minute at most: a collector that is down is said once.
                    if last_warned.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
                        last_warned = Some(Instant::now());
                        tracing::warn!(spans = n, error = %e, "OTLP trace export failed: spans dropped");
                    }
                }
            }
            if n < batch {
                break;
            }
        }
        if stopping {
            return;
        }
    }
}

/// The exporter's HTTP client: hyper with rustls (ring; Mozilla's and the system's roots),
/// each export bounded by `timeout` (the collector's answer included).
pub struct OtlpHttp {
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
    timeout: Duration,
}

impl std::fmt::Debug for OtlpHttp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OtlpHttp")
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl OtlpHttp {
    pub fn new(timeout: Duration) -> Result<OtlpHttp, String> {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        for cert in rustls_native_certs::load_native_certs().certs {
            let _ = roots.add(cert);
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(timeout));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        Ok(OtlpHttp {
            client: Client::builder(TokioExecutor::new()).build(https),
            timeout,
        })
    }
}

#[async_trait::async_trait]
impl HttpClient for OtlpHttp {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let (parts, body) = request.into_parts();
        let request = Request::from_parts(parts, Full::new(body));
        let exchange = async {
            let resp = self.client.request(request).await?;
            let (parts, body) = resp.into_parts();
            let body = Limited::new(body, RESPONSE_LIMIT)
                .collect()
                .await?
                .to_bytes();
            Ok::<_, HttpError>(Response::from_parts(parts, body))
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(done) => done,
            Err(_) => Err(format!("no answer within {:?}", self.timeout).into()),
        }
    }
}
