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

    /// Take this reservation's client part out into a settlement of its own; the rest is
    /// settled as before. A retry of the same request carries it to its next attempt
    /// ([`Settlement::carry_client`]) instead of counting the client's request again; dropped
    /// unused, it is released (slot freed, budget reservation refunded) like any other.
    pub fn take_client(&mut self) -> Option<Settlement> {
        let r = self.reservation.as_mut()?;
        let hold = r.client.take()?;
        // The pool part rides along settled to 0 tokens: this settlement refunds it already,
        // and a second refund of the same admission changes nothing.
        let mut lone = r.clone();
        lone.client = Some(hold);
        lone.tokens = 0;
        Some(Settlement {
            store: self.store.clone(),
            reservation: Some(lone),
            unreported: None,
        })
    }

    /// Put a client part carried from an earlier attempt ([`Settlement::take_client`]) into
    /// this reservation, which was admitted without one.
    pub fn carry_client(&mut self, mut from: Settlement) {
        if let (Some(r), Some(mut earlier)) = (self.reservation.as_mut(), from.reservation.take()) {
            r.client = earlier.client.take();
        }
    }

    /// The reservation being settled (`None` only after settling).
    pub fn reservation(&self) -> Option<&Reservation> {
        self.reservation.as_ref()
    }

    /// Replace the estimate with `tokens`, off the response path. `None` (the answer reported
    /// no usage) refunds, unless [`Settlement::keeping_estimate_unreported`] said otherwise.
    pub fn settle(self, tokens: Option<u64>) {
        self.settle_costed(tokens, None);
    }

    /// [`Settlement::settle`], with the answer's cost in micro-dollars when it is known (its
    /// usage priced): the client's budget reservation becomes it. Without a cost, an answer
    /// that keeps its token estimate keeps its cost estimate too, and a refund refunds both.
    pub fn settle_costed(mut self, tokens: Option<u64>, cost_micros: Option<u64>) {
        let tokens = tokens.or(self.unreported);
        self.finish(tokens, cost_micros);
    }

    fn finish(&mut self, tokens: Option<u64>, cost: Option<u64>) {
        let Some(mut reservation) = self.reservation.take() else {
            return;
        };
        if let Some(h) = reservation.client.as_mut() {
            h.actual_cost_micros = Some(match (cost, tokens) {
                (Some(c), _) => c,
                (None, Some(_)) => h.cost_micros,
                (None, None) => 0,
            });
        }
        let store = &self.store;
        let actual = tokens.unwrap_or(0);
        // Nothing changes when Google counted what we estimated (and no client part waits
        // for its slot to be freed).
        if (actual == reservation.tokens && reservation.client.is_none())
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
        self.finish(None, None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quota::client::{ClientBudgets, ClientCaps};
    use crate::quota::memory::MemoryStore;
    use crate::quota::{
        AdmitOutcome, AdmitRequest, Candidate, ClientAdmit, ClientPeriod, Limits, ManualClock,
        Strategy,
    };

    const T0: i64 = 1_770_000_000_000;

    async fn admitted(store: &Arc<MemoryStore>) -> Reservation {
        let limits = Limits {
            minute: 100,
            token_minute: 1_000_000,
            daily: 1_000,
            max_request_tokens: u64::MAX,
        };
        let req = AdmitRequest {
            model: "m".into(),
            tokens: 10,
            candidates: vec![Candidate {
                index: 0,
                kid: "k".into(),
                project: "p".into(),
                limits,
            }],
            strategy: Strategy::Headroom,
            rotation: 0,
            client: Some(ClientAdmit {
                name: "team".into(),
                caps: ClientCaps {
                    daily_micros: Some(1_000_000),
                    max_concurrent: Some(5),
                    ..Default::default()
                },
                period: ClientPeriod::at(chrono_tz::UTC, T0),
                cost_micros: 50_000,
                lease_ms: 60_000,
            }),
        };
        match store.admit(&req).await.unwrap() {
            AdmitOutcome::Admitted(r) => r,
            other => panic!("{other:?}"),
        }
    }

    async fn spent(store: &Arc<MemoryStore>) -> u64 {
        let p = ClientPeriod::at(chrono_tz::UTC, T0);
        store
            .client_spend(&[("team".into(), p.day, p.month)])
            .await
            .unwrap()[0]
            .0
    }

    #[tokio::test]
    async fn a_budget_reservation_becomes_the_priced_usage_or_is_refunded_or_kept() {
        let store = Arc::new(MemoryStore::new(
            Arc::new(ManualClock::new(T0)),
            chrono_tz::UTC,
        ));
        let dyn_store: Arc<dyn QuotaStore> = store.clone();
        let s = Settlement::new(dyn_store.clone(), admitted(&store).await);
        assert_eq!(spent(&store).await, 50_000);
        // The same tokens as estimated: the slot and the budget still settle, to the cost.
        s.settle_costed(Some(10), Some(7_000));
        assert_eq!(spent(&store).await, 7_000);
        // Dropped unsettled (an error before any answer): refunded.
        drop(Settlement::new(dyn_store.clone(), admitted(&store).await));
        assert_eq!(spent(&store).await, 7_000);
        // An answer without usage that keeps its tokens keeps its cost estimate.
        Settlement::new(dyn_store, admitted(&store).await).settle(Some(10));
        assert_eq!(spent(&store).await, 57_000);
    }
}
