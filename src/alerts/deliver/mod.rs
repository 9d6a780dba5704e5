//! Sending a message to each channel: webhooks over hyper (rustls, HTTP/1.1) and e-mail over
//! SMTP (lettre), each try bounded by [`TRY_TIMEOUT`], [`TRIES`] tries with a doubling backoff,
//! every outcome counted (`gqp_alert_deliveries_total{channel,outcome}`) and the last kept for
//! the status page. Errors are described without the URL or the SMTP password.

use parking_lot::Mutex;
use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::MaybeDone;
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use lettre::AsyncTransport;
use lettre::message::header::ContentType;
use serde::Serialize;
use tokio::sync::OwnedMutexGuard;

mod channel;

pub use self::channel::{Channel, ChannelStatus};
use self::channel::{Target, scrub};
use super::{AlertView, format, rfc3339};
use crate::config::Config;
use crate::metrics::Metrics;

/// One try's deadline (connect, send, answer head).
pub const TRY_TIMEOUT: Duration = Duration::from_secs(5);
/// Tries per message and channel.
pub const TRIES: u32 = 3;
/// Wait before the second try; doubled before each later one.
pub const BACKOFF: Duration = Duration::from_millis(500);

/// A place in one channel's queue, taken in order by [`Delivery::take_turns`].
pub struct Turn(MaybeDone<Pin<Box<dyn Future<Output = OwnedMutexGuard<()>> + Send>>>);

impl Turn {
    /// Wait for this turn: the channel is this message's until the guard drops.
    pub async fn wait(mut self) -> OwnedMutexGuard<()> {
        (&mut self.0).await;
        Pin::new(&mut self.0)
            .take_output()
            .expect("a finished turn holds its guard")
    }
}

/// What one send did on one channel.
#[derive(Debug, Clone, Serialize)]
pub struct ChannelReport {
    pub index: usize,
    pub channel: &'static str,
    /// `delivered` or `failed`.
    pub outcome: &'static str,
    pub attempts: u32,
    pub error: Option<String>,
}

/// The channels and the HTTP client they share.
pub struct Delivery {
    channels: Vec<Channel>,
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    public_url: Option<String>,
}

impl Delivery {
    pub fn new(config: &Config) -> Delivery {
        let channels = channel::channels(config);
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(TRY_TIMEOUT));
        http.enforce_http(false);
        let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("the ring provider supports the default TLS versions")
        .with_root_certificates(crate::upstream::client::trust_roots(&[]))
        .with_no_client_auth();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        Delivery {
            channels,
            client: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(60))
                .pool_timer(TokioTimer::new())
                .build(connector),
            public_url: config.server.public_url.clone(),
        }
    }

    pub fn channels(&self) -> &[Channel] {
        &self.channels
    }

    pub fn statuses(&self) -> Vec<ChannelStatus> {
        self.channels
            .iter()
            .map(|c| c.status.lock().clone())
            .collect()
    }

    /// A turn in every channel's queue, in channel order, taken now: each lock is asked for
    /// (polled once) before this returns, so turns taken one after another are served in
    /// that order, whenever the tasks that wait for them first run.
    pub async fn take_turns(&self) -> Vec<Turn> {
        let mut turns: Vec<Turn> = self
            .channels
            .iter()
            .map(|c| {
                let fut: Pin<Box<dyn Future<Output = OwnedMutexGuard<()>> + Send>> =
                    Box::pin(c.order.clone().lock_owned());
                Turn(MaybeDone::Future(fut))
            })
            .collect();
        std::future::poll_fn(|cx| {
            for t in &mut turns {
                let _ = Pin::new(&mut t.0).poll(cx);
            }
            Poll::Ready(())
        })
        .await;
        turns
    }

    /// Send `alerts` as one message to every channel, each channel in its `turns` (from
    /// [`Delivery::take_turns`]); `delivered` is called once, as soon as the first channel
    /// accepted it. Each channel's outcome.
    pub async fn send_in_turn(
        &self,
        turns: Vec<Turn>,
        alerts: &[AlertView],
        metrics: &Metrics,
        delivered: impl FnOnce() + Send,
    ) -> Vec<ChannelReport> {
        let delivered = Mutex::new(Some(delivered));
        let delivered = &delivered;
        let sends = self
            .channels
            .iter()
            .zip(turns)
            .enumerate()
            .map(|(i, (c, turn))| async move {
                let held = turn.wait().await;
                let report = self.send(i + 1, c, alerts, metrics).await;
                drop(held);
                if report.outcome == "delivered" {
                    let first = delivered.lock().take();
                    if let Some(f) = first {
                        f();
                    }
                }
                report
            });
        futures_util::future::join_all(sends).await
    }

    /// Send `alerts` as one message to every channel at once, outside the channels' queues
    /// (the admin's test message: it answers now, even while a notification is retrying);
    /// each channel's outcome.
    pub async fn send_all(&self, alerts: &[AlertView], metrics: &Metrics) -> Vec<ChannelReport> {
        let sends = self
            .channels
            .iter()
            .enumerate()
            .map(|(i, c)| self.send(i + 1, c, alerts, metrics));
        futures_util::future::join_all(sends).await
    }

    async fn send(
        &self,
        index: usize,
        channel: &Channel,
        alerts: &[AlertView],
        metrics: &Metrics,
    ) -> ChannelReport {
        let mut wait = BACKOFF;
        let mut error = None;
        let mut attempts = 0;
        let mut delivered = false;
        while attempts < TRIES {
            if attempts > 0 {
                tokio::time::sleep(wait).await;
                wait *= 2;
            }
            attempts += 1;
            let tried = tokio::time::timeout(TRY_TIMEOUT, self.try_once(channel, alerts)).await;
            let outcome = match tried {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(e),
                Err(_) => Err(format!("no answer within {}s", TRY_TIMEOUT.as_secs())),
            };
            match outcome {
                Ok(()) => {
                    metrics.alert_delivery(channel.kind, "delivered");
                    delivered = true;
                    error = None;
                    break;
                }
                Err(e) => {
                    let e = scrub(&e, &channel.secrets);
                    let last = attempts == TRIES;
                    metrics.alert_delivery(channel.kind, if last { "failed" } else { "retried" });
                    tracing::warn!(channel = channel.kind, index, attempt = attempts, error = %e,
                        "alert delivery failed{}", if last { "; giving up" } else { "; trying again" });
                    error = Some(e);
                }
            }
        }
        let outcome = if delivered { "delivered" } else { "failed" };
        {
            let mut s = channel.status.lock();
            s.failing = !delivered;
            s.last_outcome = Some(outcome);
            s.last_error = error.clone();
            s.last_attempt_at = Some(rfc3339(chrono::Utc::now()));
        }
        ChannelReport {
            index,
            channel: channel.kind,
            outcome,
            attempts,
            error,
        }
    }

    async fn try_once(&self, channel: &Channel, alerts: &[AlertView]) -> Result<(), String> {
        let public_url = self.public_url.as_deref();
        match &channel.target {
            Target::Webhook { uri, format } => {
                let body = format::body(*format, alerts, public_url).to_string();
                let req = http::Request::post(uri.clone())
                    .header(http::header::CONTENT_TYPE, "application/json")
                    .header(http::header::USER_AGENT, "gemini-quota-proxy")
                    .body(Full::new(Bytes::from(body)))
                    .map_err(|_| "the request could not be built".to_string())?;
                let resp = self
                    .client
                    .request(req)
                    .await
                    .map_err(|e| crate::upstream::connect::describe_error(&e))?;
                let status = resp.status();
                if status.is_success() {
                    Ok(())
                } else {
                    Err(format!("the receiver answered HTTP {}", status.as_u16()))
                }
            }
            Target::Email {
                transport,
                from,
                to,
            } => {
                let mut m = lettre::Message::builder()
                    .from(from.clone())
                    .subject(format::subject(alerts))
                    .header(ContentType::TEXT_PLAIN);
                for t in to {
                    m = m.to(t.clone());
                }
                let mail = m
                    .body(format::text(alerts, public_url))
                    .map_err(|e| format!("the message could not be built: {e}"))?;
                transport
                    .send(mail)
                    .await
                    .map(|_| ())
                    .map_err(|e| format!("SMTP: {e}"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::channel::smtp_secrets;
    use super::*;
    use crate::secret::Secret;

    #[tokio::test]
    async fn turns_on_a_channel_are_served_in_the_order_they_were_taken() {
        let config = crate::config::for_test(
            "[[alerts.webhooks]]\nurl = \"http://127.0.0.1:9/hook\"\nformat = \"json\"\n",
            &[],
        );
        let d = Delivery::new(&config);
        let first = d.take_turns().await;
        let second = d.take_turns().await;
        let third = d.take_turns().await;
        let order = Arc::new(Mutex::new(Vec::new()));
        // Waited for in the reverse order, each on a task of its own.
        let mut tasks = Vec::new();
        for (n, turns) in [(3, third), (2, second)] {
            let order = order.clone();
            tasks.push(tokio::spawn(async move {
                for t in turns {
                    let _held = t.wait().await;
                    order.lock().push(n);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(order.lock().is_empty(), "the first turn is held");
        for t in first {
            drop(t.wait().await);
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(*order.lock(), [2, 3]);
    }

    #[test]
    fn smtp_errors_never_show_the_password() {
        let url = Secret::new("smtp://ops:hunter22@mail.example:587?tls=required");
        let secrets = smtp_secrets(&url);
        let e = scrub("auth failed for ops:hunter22 (hunter22)", &secrets);
        assert!(!e.contains("hunter22"), "{e}");
    }

    #[test]
    fn smtp_errors_never_show_the_password_decoded_or_short() {
        let url = Secret::new("smtp://ops:p%40ss%3Aw0rd@mail.example:587");
        let secrets = smtp_secrets(&url);
        let e = scrub(
            "535 auth failed for ops with p@ss:w0rd (p%40ss%3Aw0rd)",
            &secrets,
        );
        assert!(!e.contains("p@ss:w0rd") && !e.contains("p%40ss"), "{e}");
        let url = Secret::new("smtp://ops:xy@mail.example:587");
        let e = scrub("auth failed: bad password xy", &smtp_secrets(&url));
        assert!(!e.contains("xy"), "{e}");
    }
}
