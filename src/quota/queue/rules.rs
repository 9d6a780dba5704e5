//! What a request may wait for: the allowance's boundary, a line's pace (for predicting when a
//! waiter can be admitted), what a waiter holds, and the queue's configured bounds.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

/// The allowance boundary, decided one way: a request starts to wait only for room that frees
/// at least this long before its allowance ends; room freeing exactly at the end (or later) is
/// a 429 at once. A head already waiting keeps waiting for room that frees up to this long
/// after its end: the store counts in milliseconds on another clock, and a head that woke at
/// the promised moment must not be refused for the rounding ("Retry in 0.001s").
pub const BOUNDARY: Duration = Duration::from_millis(5);

/// How long after the moment the store said room frees a sleeping head asks again. The store
/// counts a request from its admission, Google from its arrival: when the request that took
/// the slot reached Google later after its admission than the head's will, Google would still
/// count it and answer 429 (seen on a loaded machine: 1-3 upstream 429s in a 2-minute
/// saturated run). A quarter second is above that jitter and costs a saturated line 0.4 % of
/// a 60 s window; a head never sleeps past its allowance for it.
pub const HEAD_LAG: Duration = Duration::from_millis(250);

/// Whether a request may start waiting for room that frees at `free_at`, given its allowance
/// ends at `deadline` (see [`BOUNDARY`]).
pub fn starts_in_time(free_at: Instant, deadline: Instant) -> bool {
    free_at + BOUNDARY <= deadline
}

/// Whether a head already waiting keeps waiting for room that frees at `free_at`.
pub fn still_in_time(free_at: Instant, deadline: Instant) -> bool {
    free_at <= deadline + BOUNDARY
}

/// How fast a line can move at best: at most `per_window` admissions (the sum of its
/// projects' per-minute limits) in any `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pace {
    pub per_window: u64,
    pub window: Duration,
}

impl Pace {
    /// The earliest moment a waiter with `ahead` requests before it in line can be admitted,
    /// when the head's room frees at `head_at`: each `per_window` admissions before it take a
    /// window more. A lower bound (an admin reset or a refunded reservation can only make it
    /// later by other replicas' traffic, or earlier by freeing room); `None`: beyond any
    /// allowance.
    pub fn earliest(self, head_at: Instant, ahead: usize) -> Option<Instant> {
        let windows = (ahead as u64) / self.per_window.max(1);
        let wait = self.window.checked_mul(u32::try_from(windows).ok()?)?;
        head_at.checked_add(wait)
    }

    /// As [`Pace::earliest`], knowing when the line's own admissions of the last window
    /// happened (`recent`, oldest first): each took a slot that frees a window after it, so
    /// the `n`-th admission to come gets the `n`-th slot to free (the head's wake for slots the
    /// line did not see taken), and one window more for each `per_window` before it. Still a
    /// lower bound on one replica (other lines and replicas only take slots too); with no
    /// record it is [`Pace::earliest`].
    pub(super) fn earliest_after(
        self,
        head_at: Instant,
        recent: &VecDeque<Instant>,
        ahead: usize,
    ) -> Option<Instant> {
        let per = usize::try_from(self.per_window.max(1)).unwrap_or(usize::MAX);
        // The last `per` admissions hold the window's slots.
        let skip = recent.len().saturating_sub(per);
        let unseen = per - (recent.len() - skip);
        let slot = ahead % per;
        let at = match slot.checked_sub(unseen).and_then(|i| recent.get(skip + i)) {
            Some(taken) => (*taken + self.window).max(head_at),
            None => head_at,
        };
        let windows = u32::try_from(ahead / per).ok()?;
        at.checked_add(self.window.checked_mul(windows)?)
    }
}

/// Who a waiter is and what it holds while it waits, for the queue's global bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim {
    /// The ledger's client id (bounded by configuration).
    pub client: u32,
    /// Its client's weight in the line's fair order (`ClientLimits::weight`, at least 1).
    pub weight: u32,
    /// Its request body's size.
    pub bytes: u64,
}

/// The queue's bounds (a config reload changes them; nobody waiting is sent away).
#[derive(Debug, Clone, Copy)]
pub struct QueueLimits {
    pub max_length: usize,
    pub max_waiters_total: usize,
    pub max_waiting_bytes: u64,
    pub max_client_share: f64,
}

impl QueueLimits {
    /// Waiters one client may hold (at least one).
    pub(super) fn client_waiters(&self) -> usize {
        ((self.max_waiters_total as f64 * self.max_client_share) as usize).max(1)
    }

    /// Body bytes one client's waiters may hold.
    pub(super) fn client_bytes(&self) -> u64 {
        (self.max_waiting_bytes as f64 * self.max_client_share) as u64
    }
}
