//! The fair order inside one line: weighted fair queueing by virtual finish time.
//!
//! Each waiter gets a tag when it joins: `max(the head's tag, its client's last tag in this
//! line) + UNIT / weight`. The line is kept sorted by (tag, arrival): that is the merge of one
//! FIFO per client (a client's tags only grow, so its own waiters keep their arrival order),
//! taken in order of each client's next finish time. A client that asks for less than its
//! share finds its tags near the head's and goes before a heavy client's backlog, whose tags
//! run ahead by one `UNIT / weight` per waiter; two backlogged clients of weights 2 and 1 are
//! served two to one.
//!
//! Why virtual finish times rather than deficit round robin: the tag fixes a waiter's place in
//! the fair order the moment it joins, so "how many are ahead of it" is a count (what the
//! queue's prediction needs to refuse at once), where round robin's order depends on rounds not
//! yet played. Self-clocked (the virtual time is the head's tag): a newcomer's tag is always
//! above the head's, so a head already asking the store is never displaced, and the state is
//! the waiters themselves: nothing per client outlives its last waiter in the line.
//!
//! For the prediction, [`Forecast`] counts the admissions before a waiter: those waiting before
//! it, and the requests other clients (seen admitted or joining in the line's last window) are
//! expected to send before its turn, at the pace they were admitted or sent, which their tags
//! will place before it.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use super::lines::{Line, Waiter};

/// One unit of service: a weight-1 client's tag grows by this per waiter (a weight-`w`
/// client's by `UNIT / w`; weights are at most `clients::limits::MAX_WEIGHT`, so the rounding
/// is below one part in a million).
pub(super) const UNIT: u64 = 1_000_000_000;

/// Where a newcomer of `client` with `weight` goes in `waiters` (sorted by tag): its tag, and
/// how many waiters go before it.
pub(super) fn place(waiters: &VecDeque<Waiter>, client: u32, weight: u32) -> (u64, usize) {
    let now = waiters.front().map_or(0, |w| w.tag);
    // Its client's last waiter is the last of its FIFO: searched from the back.
    let last = waiters
        .iter()
        .rev()
        .find(|w| w.client == client)
        .map_or(0, |w| w.tag);
    let tag = now
        .max(last)
        .saturating_add(UNIT / u64::from(weight.max(1)));
    // Equal tags keep arrival order: the newcomer goes after them.
    let position = waiters.partition_point(|w| w.tag <= tag);
    (tag, position)
}

/// Who will go before a waiter: those waiting now with a lower tag, and the requests that
/// clients admitted through this line in the last window are expected to send before its turn
/// (at the pace they were admitted then, each taking the tags its weight gives it). The
/// clients a line saw admitted are bounded by its record ([`super::lines::RECENT_MAX`]).
#[derive(Debug)]
pub(super) struct Forecast {
    /// The head's tag: the virtual time now.
    now: u64,
    /// The window `Active::admitted` counts over.
    window: Duration,
    others: Vec<Active>,
}

#[derive(Debug)]
struct Active {
    client: u32,
    weight: u32,
    /// Its admissions in the line's last window, or what it sent through the line in a
    /// window's worth (see [`Forecast::of`]), whichever is more.
    admitted: usize,
    /// Its last waiting request's tag (the head's when none waits).
    last: u64,
}

impl Forecast {
    pub(super) fn of(line: &Line, now: Instant) -> Forecast {
        let head = line.waiters.front().map_or(0, |w| w.tag);
        let window = line.pace.map_or(Duration::ZERO, |p| p.window);
        let mut others: Vec<Active> = Vec::new();
        for (at, &(client, weight)) in line.recent.iter().zip(&line.recent_who) {
            if now.saturating_duration_since(*at) >= window {
                continue;
            }
            match others.iter_mut().find(|a| a.client == client) {
                Some(a) => a.admitted += 1,
                None => others.push(Active {
                    client,
                    weight,
                    admitted: 1,
                    last: head,
                }),
            }
        }
        // What each client sent through the line in the last window (the line's age while it
        // is younger, at least a quarter of a window), as a window's worth: a young line knows
        // who keeps asking before it has seen anyone admitted.
        let span = now
            .saturating_duration_since(line.born)
            .max(window / 4)
            .min(window);
        let scale = if span.is_zero() {
            0.0
        } else {
            window.as_secs_f64() / span.as_secs_f64()
        };
        let mut joined: Vec<(u32, u32, usize)> = Vec::new();
        for &(at, client, weight) in &line.joins {
            if now.saturating_duration_since(at) >= window {
                continue;
            }
            match joined.iter_mut().find(|j| j.0 == client) {
                Some(j) => j.2 += 1,
                None => joined.push((client, weight, 1)),
            }
        }
        for (client, weight, n) in joined {
            let per_window = (n as f64 * scale) as usize;
            match others.iter_mut().find(|a| a.client == client) {
                Some(a) => a.admitted = a.admitted.max(per_window),
                None if per_window > 0 => others.push(Active {
                    client,
                    weight,
                    admitted: per_window,
                    last: head,
                }),
                None => {}
            }
        }
        for w in &line.waiters {
            if let Some(a) = others.iter_mut().find(|a| a.client == w.client) {
                a.last = a.last.max(w.tag);
            }
        }
        Forecast {
            now: head,
            window,
            others,
        }
    }

    /// Admissions before a waiter of `client` whose tag is `tag`, `before` of them waiting now,
    /// if it is admitted `within` from now: another client sends at the pace it was admitted in
    /// the last window, and of what it sends, what its tags place before this waiter goes first.
    pub(super) fn ahead(&self, before: usize, client: u32, tag: u64, within: Duration) -> usize {
        let window = self.window.as_secs_f64();
        let coming: usize = self
            .others
            .iter()
            .filter(|a| a.client != client)
            .map(|a| {
                // Its next requests take tags `base + k * cost`; those below `tag` go first.
                let base = a.last.max(self.now);
                let cost = UNIT / u64::from(a.weight.max(1));
                let fit = tag.saturating_sub(base).saturating_sub(1) / cost.max(1);
                let sends = if window > 0.0 {
                    (a.admitted as f64 * within.as_secs_f64() / window) as usize
                } else {
                    0
                };
                usize::try_from(fit)
                    .unwrap_or(usize::MAX)
                    .min(a.admitted)
                    .min(sends)
            })
            .sum();
        before.saturating_add(coming)
    }
}
