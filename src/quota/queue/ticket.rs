//! A waiter's place in its line: waiting for the front (or for its hope or its allowance to
//! end), the head's sleep until the store said room frees, and leaving the line when dropped.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::fair::Forecast;
use super::lines::LineKey;
use super::{Claim, HEAD_LAG, Queues, Refusal, Turn, still_in_time};

/// A place in a line; dropping it leaves the line (and hands the front to the next waiter).
#[derive(Debug)]
pub struct Ticket<'a> {
    pub(super) queues: &'a Queues,
    pub(super) key: LineKey,
    pub(super) seq: u64,
    pub(super) turn: Arc<Notify>,
    pub(super) bell: Arc<Notify>,
    pub(super) deadline: Instant,
    pub(super) claim: Claim,
    /// When it joined.
    pub since: Instant,
}

impl Ticket<'_> {
    /// Wait until this ticket is at the front of its line, its hope is gone, or its deadline.
    pub async fn turn(&self) -> Turn {
        loop {
            {
                let lines = self.queues.lines.lock();
                let Some(line) = lines.get(self.key.lane()) else {
                    // Unreachable while the ticket lives; be the head rather than hang.
                    return Turn::Head;
                };
                match line.waiters.iter().position(|w| w.seq == self.seq) {
                    Some(0) | None => return Turn::Head,
                    Some(pos) => {
                        let w = &line.waiters[pos];
                        let now = Instant::now();
                        let forecast = Forecast::of(line, now);
                        let ahead = line.ahead(&forecast, (pos, w.client, w.tag), None, now);
                        if line.hopeless(ahead, self.deadline, None) {
                            return Turn::Hopeless(line.last_refusal);
                        }
                    }
                }
            }
            let refusal = || {
                self.queues
                    .lines
                    .lock()
                    .get(self.key.lane())
                    .and_then(|l| l.last_refusal)
            };
            if tokio::time::timeout_at(self.deadline, self.turn.notified())
                .await
                .is_err()
            {
                return Turn::TimedOut(refusal());
            }
        }
    }

    /// At the front, refused: record when room frees (telling the waiters who cannot be
    /// admitted in time to leave now). Returns false when this ticket's own deadline comes
    /// first (see [`BOUNDARY`]).
    pub fn expect(&self, refusal: Refusal) -> bool {
        let mut lines = self.queues.lines.lock();
        if let Some(line) = lines.get_mut(self.key.lane()) {
            line.head_wake = Some(refusal.free_at);
            line.last_refusal = Some(refusal);
            line.tell_hopeless(1);
        }
        still_in_time(refusal.free_at, self.deadline)
    }

    /// At the front: sleep until `until` (when the store said room frees), [`HEAD_LAG`] later
    /// if its allowance has room for it, or until the line's bell rings.
    pub async fn sleep_until(&self, until: Instant) {
        let at = (until + HEAD_LAG).min(self.deadline).max(until);
        tokio::select! {
            _ = tokio::time::sleep_until(at) => {}
            _ = self.bell.notified() => {}
        }
    }

    /// At the front, admitted: the line remembers it for its predictions (call before the
    /// ticket is dropped).
    pub fn admitted(&self) {
        let mut lines = self.queues.lines.lock();
        if let Some(line) = lines.get_mut(self.key.lane()) {
            line.note_admitted(self.claim.client, self.claim.weight, Instant::now());
        }
    }

    /// Whether this ticket is at the front of its line now.
    pub fn is_head(&self) -> bool {
        self.queues
            .lines
            .lock()
            .get(self.key.lane())
            .and_then(|l| l.waiters.front())
            .is_some_and(|w| w.seq == self.seq)
    }

    /// Until when this ticket may wait.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// How long this ticket has waited.
    pub fn waited(&self) -> Duration {
        self.since.elapsed()
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        let mut lines = self.queues.lines.lock();
        let lane = self.key.lane();
        let Some(line) = lines.get_mut(lane) else {
            return;
        };
        let Some(pos) = line.waiters.iter().position(|w| w.seq == self.seq) else {
            return;
        };
        line.waiters.remove(pos);
        if pos == 0 {
            // The head left (admitted, refused or gone): the next one asks the store at once.
            line.head_wake = None;
            if let Some(next) = line.waiters.front() {
                next.turn.notify_one();
            }
        }
        if line.waiters.is_empty() {
            lines.remove(lane);
        }
        lines.bytes = lines.bytes.saturating_sub(self.claim.bytes);
        if let Some(held) = lines.clients.get_mut(&self.claim.client) {
            held.waiters = held.waiters.saturating_sub(1);
            held.bytes = held.bytes.saturating_sub(self.claim.bytes);
            if held.waiters == 0 {
                lines.clients.remove(&self.claim.client);
            }
        }
        self.queues.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}
