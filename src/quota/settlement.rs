//! Settling a reservation exactly once: with the tokens Google reported, or as a refund of the
//! estimate when it is dropped unsettled.

use std::sync::Arc;

use super::{QuotaStore, Reservation};

/// Settles one reservation exactly once: with the tokens Google reported, or, if it is dropped
/// unsettled (an upstream error, a retry, a timeout), as a refund of the estimate.
pub struct Settlement {
    store: Arc<dyn QuotaStore>,
    reservation: Option<Reservation>,
}

impl Settlement {
    pub fn new(store: Arc<dyn QuotaStore>, reservation: Reservation) -> Self {
        Settlement {
            store,
            reservation: Some(reservation),
        }
    }

    /// The reservation being settled (`None` only after settling).
    pub fn reservation(&self) -> Option<&Reservation> {
        self.reservation.as_ref()
    }

    /// Replace the estimate with `tokens` (`None` refunds), off the response path.
    pub fn settle(mut self, tokens: Option<u64>) {
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
