//! Who the ledger counts a quota-spending request under (its model and client), and the
//! record of its outcome when the quota step ends: sent, refused here, or a 5xx.

use std::sync::Arc;

use bytes::Bytes;

use super::Served;
use crate::auth::CallerTag;
use crate::layers::estimate::Estimated;
use crate::ledger::{Series, field};
use crate::state::Core;

/// Who the ledger counts a quota-spending request under.
pub(super) struct Account {
    pub model: Arc<str>,
    /// The model asked for (`model` is the one serving, a fallback's after a switch).
    pub asked: Arc<str>,
    pub client: u32,
}

impl Account {
    pub fn of(state: &Core, req: &http::Request<Bytes>) -> Option<Account> {
        let model: Arc<str> = req.extensions().get::<Estimated>()?.quota_model()?.into();
        let client = state.ledger_client(req.extensions().get::<CallerTag>().map(|c| &c.0));
        let asked = model.clone();
        Some(Account {
            model,
            asked,
            client,
        })
    }

    /// The ledger series of this request on key `index` (`None`: no key served it).
    pub fn series(&self, state: &Core, index: Option<usize>, known: bool) -> Series {
        let key = index.map(|i| &state.pool.keys[i]);
        let series = state.ledger.series_of(
            key.map(|k| &*k.project),
            &self.model,
            key.map(|k| &*k.kid),
            self.client,
            known,
        );
        if self.asked == self.model {
            return series;
        }
        state.ledger.asked_for(series, &self.asked)
    }

    /// Count the request's outcome: sent upstream, refused here, or a 5xx answer (`status`
    /// `None`: the client went away before the answer). A success's request is counted by its
    /// tally, with its tokens, as the answer ends.
    fn record(&self, state: &Core, served: &Served, status: Option<http::StatusCode>) {
        let server_error = status.is_some_and(|s| s.is_server_error());
        if served.tallied.is_some() && !served.refused && !server_error {
            return;
        }
        let series = self.series(
            state,
            served.key.filter(|_| served.sent),
            status.is_some_and(|s| s.is_success()),
        );
        if served.sent && served.tallied.is_none() {
            state.ledger.count(series, field::REQUESTS);
        }
        if served.refused {
            state.ledger.count(series, field::REFUSED);
        }
        if server_error {
            state.ledger.count(series, field::ERRORS);
        }
    }
}

/// Records a quota-spending request in the ledger when its step ends: with its answer's status,
/// or without one when the client went away first (a request already sent still counts).
pub(super) struct Recording {
    pub state: Arc<Core>,
    pub account: Option<Account>,
    pub served: Served,
    pub status: Option<http::StatusCode>,
}

impl Drop for Recording {
    fn drop(&mut self) {
        if let Some(a) = &self.account {
            a.record(&self.state, &self.served, self.status);
        }
    }
}
