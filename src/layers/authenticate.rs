//! The authenticate step: a request carries a client key (or the admin token), or is allowed
//! anonymously by configuration, or is a keyless chunk of an upload session this proxy handed
//! out. Anything else is answered 401/403 here, before its body is read.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use tower::{Layer, Service};

use crate::auth::{Caller, CallerTag, KnownKeys, authenticate_known};
use crate::clients::Registry;
use crate::config::AuthConfig;
use crate::error::ApiError;
use crate::pool::affinity;
use crate::quota::QuotaStore;
use crate::route::Route;

/// What the authenticate step reads: `[auth]`, the clients, and the store (for the upload
/// sessions it handed out).
pub struct Parts {
    pub auth: AuthConfig,
    pub clients: Arc<Registry>,
    pub store: Arc<dyn QuotaStore>,
}

/// What the step keeps: its parts, and the credentials that matched (with this generation's
/// `[auth]`: a reload builds the step again, and forgets them).
struct Shared {
    parts: Parts,
    known: KnownKeys,
}

impl std::ops::Deref for Shared {
    type Target = Parts;

    fn deref(&self) -> &Parts {
        &self.parts
    }
}

/// Adds the authenticate step.
#[derive(Clone)]
pub struct AuthenticateLayer {
    state: Arc<Shared>,
}

impl AuthenticateLayer {
    pub fn new(parts: Parts) -> AuthenticateLayer {
        AuthenticateLayer {
            state: Arc::new(Shared {
                parts,
                known: KnownKeys::default(),
            }),
        }
    }
}

impl<S> Layer<S> for AuthenticateLayer {
    type Service = Authenticate<S>;

    fn layer(&self, inner: S) -> Authenticate<S> {
        Authenticate {
            inner,
            state: self.state.clone(),
        }
    }
}

/// The authenticate step (see the module docs).
#[derive(Clone)]
pub struct Authenticate<S> {
    inner: S,
    state: Arc<Shared>,
}

impl<S> Service<http::Request<Body>> for Authenticate<S>
where
    S: Service<http::Request<Body>, Response = Response, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + Unpin,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Either<
        Tagged<S::Future>,
        Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<Body>) -> Self::Future {
        let refusal = match authenticate_known(
            &self.state.auth,
            &self.state.clients,
            &self.state.known,
            req.headers(),
            req.uri().query(),
        ) {
            // The common case stays synchronous: straight on to the next step, which
            // `poll_ready` made ready.
            Ok(caller) => {
                req.extensions_mut().insert(CallerTag(caller.clone()));
                return Either::Left(Tagged {
                    inner: self.inner.call(req),
                    caller,
                });
            }
            Err(e) => e,
        };
        let state = self.state.clone();
        // The ready service goes with the future; a clone stays for the next request.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Either::Right(Box::pin(async move {
            let (parts, body) = req.into_parts();
            if let Err(e) = keyless_upload(&state, &parts, refusal).await {
                return Ok(e.into_response());
            }
            let mut req = http::Request::from_parts(parts, body);
            req.extensions_mut().insert(CallerTag(Caller::Anonymous));
            let mut resp = inner.call(req).await?;
            super::Outcome::on(&mut resp).caller = Some(Caller::Anonymous);
            Ok(resp)
        }))
    }
}

/// SDKs send upload chunks to the session URL without a key, as Google allows: the upload_id
/// is the capability. Accept one only for a session this proxy started; else the refusal.
async fn keyless_upload(
    state: &Parts,
    req: &http::request::Parts,
    refusal: ApiError,
) -> Result<(), ApiError> {
    if !matches!(refusal, ApiError::Unauthenticated(_)) {
        return Err(refusal);
    }
    let Ok(route) = Route::parse(&req.method, req.uri.path(), req.uri.query()) else {
        return Err(refusal);
    };
    let allowed = affinity::keyless_upload_chunk(
        &*state.store,
        &req.method,
        &req.headers,
        req.uri.path(),
        &route,
    )
    .await;
    if allowed { Ok(()) } else { Err(refusal) }
}

/// The next step's answer, tagged with the caller (its [`super::Outcome`]) for the log line and
/// the request counter, which see only the response.
pub struct Tagged<F> {
    inner: F,
    caller: Caller,
}

impl<F> Future for Tagged<F>
where
    F: Future<Output = Result<Response, Infallible>> + Unpin,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let Poll::Ready(Ok(mut resp)) = Pin::new(&mut this.inner).poll(cx) else {
            return Poll::Pending;
        };
        super::Outcome::on(&mut resp).caller = Some(this.caller.clone());
        Poll::Ready(Ok(resp))
    }
}

/// One of two futures of the same output: the next step's own (the common case, with no
/// allocation here), or this step's for a request that needs a look in the store first.
pub enum Either<A, B> {
    Left(A),
    Right(B),
}

impl<A, B, T> Future for Either<A, B>
where
    A: Future<Output = T> + Unpin,
    B: Future<Output = T> + Unpin,
{
    type Output = T;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        match self.get_mut() {
            Either::Left(a) => Pin::new(a).poll(cx),
            Either::Right(b) => Pin::new(b).poll(cx),
        }
    }
}
