//! A service readied ahead of its call and held until it: the gateway's `poll_ready`
//! readies the serving generation's stack, and the next `call` sends through that one.

use std::task::{Context, Poll};

use tower::Service;

/// A service readied for one call (tower's contract: `call` only after `poll_ready` said
/// ready), with what goes along with it. Held from the first `poll_ready` to the `call`, so
/// whatever readiness reserved in it (a permit, a buffer slot) serves the call it was
/// reserved for, even when a reload swapped the generation in between.
pub(super) struct Readied<S, T>(pub(super) Option<(S, T)>);

impl<S, T> Readied<S, T> {
    /// The held service's readiness; `make` gives one when none is held.
    pub(super) fn poll_ready<R>(
        &mut self,
        make: impl FnOnce() -> (S, T),
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), S::Error>>
    where
        S: Service<R>,
    {
        self.0.get_or_insert_with(make).0.poll_ready(cx)
    }

    /// The readied service for the call, or, for a caller that skipped `poll_ready`, one from
    /// `make` (the answer's future asks it for readiness before calling it).
    pub(super) fn take(&mut self, make: impl FnOnce() -> (S, T)) -> (S, T) {
        self.0.take().unwrap_or_else(make)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::task::Waker;

    /// A service that is not ready until its gate opens; `id` tells instances apart.
    struct Gated {
        open: Arc<AtomicBool>,
        id: usize,
    }

    impl Service<()> for Gated {
        type Response = usize;
        type Error = Infallible;
        type Future = std::future::Ready<Result<usize, Infallible>>;

        fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            if self.open.load(Ordering::SeqCst) {
                Poll::Ready(Ok(()))
            } else {
                Poll::Pending
            }
        }

        fn call(&mut self, _req: ()) -> Self::Future {
            std::future::ready(Ok(self.id))
        }
    }

    #[test]
    fn readiness_is_the_inner_services_and_the_readied_one_serves_the_call() {
        let open = Arc::new(AtomicBool::new(false));
        let made = AtomicUsize::new(0);
        let make = || {
            let id = made.fetch_add(1, Ordering::SeqCst);
            (
                Gated {
                    open: open.clone(),
                    id,
                },
                "state",
            )
        };
        let mut cx = Context::from_waker(Waker::noop());
        let mut ready = Readied(None);
        // Not ready while the inner service is not: the caller is held.
        assert!(ready.poll_ready::<()>(make, &mut cx).is_pending());
        assert_eq!(
            made.load(Ordering::SeqCst),
            1,
            "the waiting service is kept, not remade"
        );
        open.store(true, Ordering::SeqCst);
        assert!(matches!(
            ready.poll_ready::<()>(make, &mut cx),
            Poll::Ready(Ok(()))
        ));
        let (mut svc, state) = ready.take(make);
        assert_eq!(
            (svc.id, state),
            (0, "state"),
            "the call gets the service readied"
        );
        assert_eq!(made.load(Ordering::SeqCst), 1);
        assert!(matches!(Service::call(&mut svc, ()).into_inner(), Ok(0)));
        // The next call readies a service of its own; a call without `poll_ready` gets one too.
        assert!(ready.poll_ready::<()>(make, &mut cx).is_ready());
        assert_eq!(ready.take(make).0.id, 1);
        assert_eq!(ready.take(make).0.id, 2);
    }
}
