//! The one global bound on request bodies held in memory (`server.max_buffered_bytes`): a
//! body's bytes are reserved against it before they are read (all at once when the request
//! announces its length, frame by frame as a chunked body grows) and released when the request
//! is done with its body. A request the budget cannot take gets 503 with `Retry-After` at once,
//! so many connections with large bodies (HTTP/2's streams included) cannot exhaust memory; and
//! one client holds at most its share of it (`server.max_buffered_client_share`), so a client
//! that fills its share cannot keep the others out.

use parking_lot::Mutex;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::ApiError;

/// What a refused client is told to wait: bodies in flight finish within seconds.
const RETRY_AFTER_MS: u64 = 1000;

/// Bytes held per client (ledger client id, bounded by configuration), while it holds any.
type PerClient = Arc<Mutex<crate::hashing::Map<u32, usize>>>;

/// The budget of request-body bytes for the whole process.
#[derive(Debug)]
pub struct BodyBudget {
    bytes: Arc<Semaphore>,
    total: usize,
    /// Most bytes one client may hold.
    per_client: usize,
    clients: PerClient,
}

/// Bytes reserved for one request's body; dropping it gives them back.
#[derive(Debug)]
pub struct Reserved {
    permit: OwnedSemaphorePermit,
    client: u32,
    clients: PerClient,
}

impl Drop for Reserved {
    fn drop(&mut self) {
        let n = self.permit.num_permits();
        let mut clients = self.clients.lock();
        if let Some(held) = clients.get_mut(&self.client) {
            *held = held.saturating_sub(n);
            if *held == 0 {
                clients.remove(&self.client);
            }
        }
    }
}

impl Reserved {
    /// Bytes this reservation holds.
    pub fn bytes(&self) -> usize {
        self.permit.num_permits()
    }
}

impl BodyBudget {
    /// A budget of `total` bytes (at most the semaphore's limit, far above any memory), of
    /// which one client may hold `client_share`.
    pub fn new(total: usize, client_share: f64) -> BodyBudget {
        let total = total.min(Semaphore::MAX_PERMITS);
        BodyBudget {
            bytes: Arc::new(Semaphore::new(total)),
            total,
            per_client: (total as f64 * client_share.clamp(0.0, 1.0)) as usize,
            clients: PerClient::default(),
        }
    }

    /// The configured bound.
    pub fn total(&self) -> usize {
        self.total
    }

    /// Bytes reserved now.
    pub fn held(&self) -> usize {
        self.total.saturating_sub(self.bytes.available_permits())
    }

    /// Reserve `bytes` for `client` now, or `None` when the budget (or the client's share of
    /// it) cannot take them.
    pub fn reserve(&self, client: u32, bytes: usize) -> Option<Reserved> {
        let permit = self.take(client, bytes)?;
        Some(Reserved {
            permit,
            client,
            clients: self.clients.clone(),
        })
    }

    /// The permits for `bytes` more of `client`'s, counted to it.
    fn take(&self, client: u32, bytes: usize) -> Option<OwnedSemaphorePermit> {
        let n = u32::try_from(bytes).ok()?;
        let mut clients = self.clients.lock();
        let held = clients.get(&client).copied().unwrap_or(0);
        if held.saturating_add(bytes) > self.per_client {
            return None;
        }
        let permit = self.bytes.clone().try_acquire_many_owned(n).ok()?;
        if bytes > 0 {
            *clients.entry(client).or_default() += bytes;
        }
        Some(permit)
    }

    /// Add `bytes` to `held`; false when the budget cannot take them.
    fn grow(&self, held: &mut Reserved, bytes: usize) -> bool {
        match self.take(held.client, bytes) {
            Some(more) => {
                held.permit.merge(more);
                true
            }
            None => false,
        }
    }

    /// Bytes `client` holds now.
    pub fn held_by(&self, client: u32) -> usize {
        self.clients.lock().get(&client).copied().unwrap_or(0)
    }

    /// Read `client`'s request body whole: at most `limit` bytes, within `timeout`, reserving
    /// its bytes against this budget first (`announced`: its `Content-Length`).
    pub async fn read(
        &self,
        client: u32,
        body: Body,
        announced: Option<u64>,
        limit: usize,
        timeout: Duration,
    ) -> Result<(Bytes, Reserved), ApiError> {
        let up_front = announced.map_or(0, |n| usize::try_from(n).unwrap_or(usize::MAX));
        let mut held = self.reserve(client, up_front.min(limit)).ok_or_else(busy)?;
        let read = async {
            let mut body = body;
            let mut buf = BytesMut::with_capacity(up_front.min(limit));
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|_| {
                    ApiError::InvalidArgument("the request body could not be read".into())
                })?;
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                let len = buf.len() + data.len();
                if len > limit {
                    return Err(ApiError::PayloadTooLarge(format!(
                        "Request payload size exceeds the limit: {limit} bytes."
                    )));
                }
                // A chunked body (or one longer than announced) reserves as it grows.
                let have = held.bytes();
                if len > have && !self.grow(&mut held, len - have) {
                    return Err(busy());
                }
                buf.extend_from_slice(&data);
            }
            Ok(buf.freeze())
        };
        match tokio::time::timeout(timeout, read).await {
            Ok(Ok(bytes)) => Ok((bytes, held)),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(ApiError::RequestTimeout(format!(
                "the request body was not received within {}s",
                timeout.as_secs()
            ))),
        }
    }
}

/// The answer when the budget is spent.
fn busy() -> ApiError {
    ApiError::Busy {
        message: "This proxy holds as many request bodies in memory as it is configured to (server.max_buffered_bytes); retry shortly.".into(),
        retry_after_ms: RETRY_AFTER_MS,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_announced_body_is_reserved_up_front_and_released_when_dropped() {
        let budget = BodyBudget::new(1000, 1.0);
        let (bytes, held) = budget
            .read(
                7,
                Body::from(vec![b'x'; 600]),
                Some(600),
                10_000,
                Duration::from_secs(5),
            )
            .await
            .unwrap();
        assert_eq!(bytes.len(), 600);
        assert_eq!(budget.held(), 600);
        // Another 600 announced: over the budget, refused before a byte is read.
        let e = budget
            .read(
                7,
                Body::from(vec![b'y'; 600]),
                Some(600),
                10_000,
                Duration::from_secs(5),
            )
            .await
            .unwrap_err();
        assert_eq!(e.status_code(), http::StatusCode::SERVICE_UNAVAILABLE);
        assert!(e.retry_after_ms().is_some());
        drop(held);
        assert_eq!(budget.held(), 0);
    }

    #[tokio::test]
    async fn a_chunked_body_reserves_as_it_grows_and_is_refused_past_the_budget() {
        let budget = BodyBudget::new(1000, 1.0);
        let _first = budget.reserve(1, 500).unwrap();
        let chunks: Vec<Result<Bytes, std::io::Error>> =
            (0..10).map(|_| Ok(Bytes::from(vec![b'z'; 100]))).collect();
        let body = Body::from_stream(futures_util::stream::iter(chunks));
        let e = budget
            .read(7, body, None, 10_000, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert_eq!(e.status_code(), http::StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            budget.held(),
            500,
            "the refused body's bytes were given back"
        );
        let small: Vec<Result<Bytes, std::io::Error>> =
            (0..4).map(|_| Ok(Bytes::from(vec![b'z'; 100]))).collect();
        let (bytes, held) = budget
            .read(
                7,
                Body::from_stream(futures_util::stream::iter(small)),
                None,
                10_000,
                Duration::from_secs(5),
            )
            .await
            .unwrap();
        assert_eq!((bytes.len(), held.bytes()), (400, 400));
    }

    #[tokio::test]
    async fn the_size_limit_still_applies() {
        let budget = BodyBudget::new(1 << 20, 1.0);
        let e = budget
            .read(
                7,
                Body::from(vec![b'x'; 2000]),
                None,
                1000,
                Duration::from_secs(5),
            )
            .await
            .unwrap_err();
        assert_eq!(e.status_code(), http::StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(budget.held(), 0);
    }

    #[test]
    fn one_client_holds_at_most_its_share_and_gets_it_back() {
        let budget = BodyBudget::new(1000, 0.5);
        let a = budget.reserve(1, 400).unwrap();
        assert!(budget.reserve(1, 200).is_none(), "past client 1's half");
        let b = budget.reserve(2, 500).unwrap();
        assert_eq!((budget.held_by(1), budget.held_by(2)), (400, 500));
        drop(a);
        drop(b);
        assert_eq!(
            (budget.held_by(1), budget.held_by(2), budget.held()),
            (0, 0, 0)
        );
        assert!(budget.reserve(1, 500).is_some());
    }
}
