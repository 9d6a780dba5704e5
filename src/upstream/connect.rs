//! Connecting to the upstream: a connector bounded as a whole (TCP and TLS together), and
//! reading the errors of the HTTP client (timeouts, a description without URL or header).

use std::time::Duration;

use axum::http::Uri;

/// A connector bounded as a whole, TCP and TLS handshake together (the TCP connector's own
/// timeout stops at the socket, and a handshake that stalls would otherwise hold a request
/// until its overall timeout).
#[derive(Clone)]
pub struct Timed<C> {
    pub(super) inner: C,
    pub(super) timeout: Duration,
}

/// Any error of the client or its connector.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl<C> tower_service::Service<Uri> for Timed<C>
where
    C: tower_service::Service<Uri>,
    C::Future: Send + 'static,
    C::Error: Into<BoxError>,
{
    type Response = C::Response;
    type Error = BoxError;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<C::Response, BoxError>> + Send>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connecting = self.inner.call(uri);
        let timeout = self.timeout;
        Box::pin(async move {
            match tokio::time::timeout(timeout, connecting).await {
                Ok(done) => done.map_err(Into::into),
                Err(_) => Err(Box::new(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "no connection (TCP and TLS) within {}s",
                        timeout.as_secs_f64()
                    ),
                )) as BoxError),
            }
        })
    }
}

/// An error and its causes, outermost first.
fn causes<'a>(
    e: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(e), |c| c.source())
}

/// Whether an upstream client error comes from a timeout (connecting included).
pub fn is_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    causes(e).any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
    })
}

/// An upstream client error with its causes ("client error (Connect): tcp connect error:
/// Connection refused"): the chain holds no URL and no header.
pub fn describe_error(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    for cause in causes(e).skip(1) {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
    }
    out
}
