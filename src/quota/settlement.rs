//! Settling a reservation exactly once: with the tokens Google reported, or as a refund of the
//! estimate when it is dropped unsettled.

use std::sync::Arc;

use super::{QuotaStore, Reservation};

/// Settles one reservation exactly once: with the tokens Google reported, or, if it is dropped
/// unsettled (an upstream error, a retry, a timeout), as a refund of the estimate.
pub struct Settlement {
    store: Arc<dyn QuotaStore>,
    reservation: Option<Reservation>,
    /// Tokens to settle to when the answer reports no usage. `None` refunds; an answer that
    /// never carries usage (an embedding) keeps its estimate, or embed TPM would only bound
    /// the calls in flight.
    unreported: Option<u64>,
}

impl Settlement {
    pub fn new(store: Arc<dyn QuotaStore>, reservation: Reservation) -> Self {
        Settlement {
            store,
            reservation: Some(reservation),
            unreported: None,
        }
    }

    /// An answer reporting no usage settles to its estimate instead of refunding it: for
    /// calls whose answers never carry usage (embeddings), which Google still counted.
    pub fn keeping_estimate_unreported(mut self) -> Self {
        self.unreported = self.reservation.as_ref().map(|r| r.tokens);
        self
    }

    /// The reservation being settled (`None` only after settling).
    pub fn reservation(&self) -> Option<&Reservation> {
        self.reservation.as_ref()
    }

    /// Replace the estimate with `tokens`, off the response path. `None` (the answer reported
    /// no usage) refunds, unless [`Settlement::keeping_estimate_unreported`] said otherwise.
    pub fn settle(mut self, tokens: Option<u64>) {
        let tokens = tokens.or(self.unreported);
        self.finish(tokens);
    }

    fn finish(&mut self, tokens: Option<u64>) {
        let Some(reservation) = self.reservation.take() else {
            return;
        };
        let store = &self.store;
        let actual = tokens.unwrap_or(0);
        // Nothing changes when Google counted what we estimated.
        if actual == reservation.tokens
            || store.settle_now(&reservation, actual)
            || store.settle_later(&reservation, actual)
        {
            return;
        }
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let store = store.clone();
            handle.spawn(async move {
                if let Err(e) = store.settle(&reservation, actual).await {
                    tracing::warn!(error = %e, "settling a reservation failed: its estimate stays counted");
                }
            });
        }
    }
}

impl Drop for Settlement {
    fn drop(&mut self) {
        self.finish(None);
    }
}
