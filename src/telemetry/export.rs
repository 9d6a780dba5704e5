//! Span export off the request path: a finished trace (a request's spans, together) is handed
//! without waiting to a queue bounded in spans, a list behind a lock (a full queue drops it
//! and counts its spans in `gqp_otel_spans_total{outcome="dropped"}`), and one Tokio task
//! sends the queue in batches to the OTLP/HTTP exporter, one export at a time, through a small
//! hyper client with rustls and ring ([`OtlpHttp`]).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use opentelemetry_http::{HttpClient, HttpError, Request, Response};
use parking_lot::Mutex;
use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;

use super::otlp::Exporter;
use super::record::Finished;

/// `gqp_otel_spans_total{outcome}`: spans exported, dropped (queue full) or failed (the
/// collector refused them or could not be reached).
pub const SPANS_METRIC: &str = "gqp_otel_spans_total";

/// Largest answer read from the collector (a partial-success message at most).
const RESPONSE_LIMIT: usize = 64 * 1024;

/// Hands finished traces to the export task; never waits.
pub struct Queue {
    shared: Arc<Shared>,
}

/// The queue's far end: what the export task takes its batches from.
pub struct Pending {
    shared: Arc<Shared>,
}

/// The traces waiting, behind a lock held for a push or a batch's taking: cheaper per trace
/// than a channel's send and receive (and the blocks it allocates and reclaims).
struct Shared {
    waiting: Mutex<Waiting>,
    /// Spans waiting at most.
    capacity: usize,
    batch: usize,
    wake: Notify,
}

#[derive(Default)]
struct Waiting {
    traces: Vec<Finished>,
    spans: usize,
    /// The export task is gone: nothing is kept.
    closed: bool,
}

/// A queue of `capacity` spans at most, whose task is woken when `batch` spans wait.
pub fn queue(capacity: usize, batch: usize) -> (Queue, Pending) {
    let capacity = capacity.max(1);
    let batch = batch.clamp(1, capacity);
    let shared = Arc::new(Shared {
        waiting: Mutex::new(Waiting::default()),
        capacity,
        batch,
        wake: Notify::new(),
    });
    (
        Queue {
            shared: shared.clone(),
        },
        Pending { shared },
    )
}

impl Queue {
    pub fn submit(&self, trace: Finished) {
        let n = trace.spans.len();
        let s = &*self.shared;
        let mut w = s.waiting.lock();
        let before = w.spans;
        if w.closed || before + n > s.capacity {
            drop(w);
            metrics::counter!(SPANS_METRIC, "outcome" => "dropped").increment(n as u64);
            return;
        }
        w.spans += n;
        w.traces.push(trace);
        drop(w);
        // A full batch waiting: sent now rather than at the next tick.
        if before < s.batch && before + n >= s.batch {
            s.wake.notify_one();
        }
    }
}

impl Pending {
    /// The traces waiting, up to about `max_spans` spans (at least one trace when any waits),
    /// and how many spans they hold.
    pub fn take(&self, max_spans: usize) -> (Vec<Finished>, usize) {
        let mut w = self.shared.waiting.lock();
        if w.spans <= max_spans {
            // All of them (the usual case): the list itself is taken.
            let n = std::mem::take(&mut w.spans);
            return (std::mem::take(&mut w.traces), n);
        }
        let (mut k, mut n) = (0, 0);
        while n < max_spans && k < w.traces.len() {
            n += w.traces[k].spans.len();
            k += 1;
        }
        w.spans -= n;
        (w.traces.drain(..k).collect(), n)
    }
}

impl Drop for Pending {
    /// The export task ended: what waits is dropped, and what comes is no longer kept.
    fn drop(&mut self) {
        let mut w = self.shared.waiting.lock();
        w.closed = true;
        w.traces.clear();
        w.spans = 0;
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

/// The task sending `pending` to `exporter`, a batch at a time, at least every `delay`.
pub fn spawn(exporter: Exporter, pending: Pending, delay: Duration) -> Worker {
    let (stop_tx, stop_rx) = oneshot::channel();
    let task = tokio::spawn(run(exporter, pending, delay, stop_rx));
    Worker {
        stop: Some(stop_tx),
        task,
    }
}

async fn run(
    exporter: Exporter,
    pending: Pending,
    delay: Duration,
    mut stop: oneshot::Receiver<()>,
) {
    let mut last_warned: Option<Instant> = None;
    let (shared, batch) = (pending.shared.clone(), pending.shared.batch);
    // The counters' handles looked up at the first export, not at each (not before it: the
    // metrics recorder is installed after this task starts).
    let mut counters: Option<[metrics::Counter; 2]> = None;
    loop {
        let stopping = tokio::select! {
            _ = tokio::time::sleep(delay) => false,
            _ = shared.wake.notified() => false,
            _ = &mut stop => true,
        };
        loop {
            let (traces, n) = pending.take(batch);
            if n == 0 {
                break;
            }
            let [exported, failed] = counters.get_or_insert_with(|| {
                [
                    metrics::counter!(SPANS_METRIC, "outcome" => "exported"),
                    metrics::counter!(SPANS_METRIC, "outcome" => "failed"),
                ]
            });
            match exporter.export(&traces).await {
                Ok(()) => exported.increment(n as u64),
                Err(e) => {
                    failed.increment(n as u64);
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
