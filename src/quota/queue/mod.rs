//! The admission queue: requests that found no room wait in one line per (model, quota
//! family) in this replica; a request pinned to one key (a file it names) waits in its
//! project's own line for the model, so it never holds up requests other projects can serve.
//! Inside a line, clients share by weighted fair queueing ([`fair`]): each client's requests
//! keep their order, and across clients the line goes by weight, so a client asking for less
//! than its share gets all it asks however much another one sends.
//! Only the line's head (the next in fair order) asks the store again, at the moment the store
//! said capacity frees (or when an admin reset rings it); the others sleep until they reach the
//! front, or leave as soon as their allowance cannot be met: from the head's wake-up and the
//! line's pace (at most the projects' per-minute limits fit in a window) the queue predicts the
//! earliest a waiter can be admitted from its place in the fair order, and a request that
//! cannot make it is refused on arrival, not at its deadline (a waiter a newcomer goes before
//! is told at once if that puts it out of reach). A waiter whose future is dropped (its client
//! left) leaves the line at once and holds nothing.
//!
//! Bounded whatever clients send: waiters per line (`queue.max_length`), in all lines
//! (`queue.max_waiters_total`), the body bytes they hold (`queue.max_waiting_bytes`), one
//! client's share of both (`queue.max_client_share`), and the number of lines ([`MAX_LINES`]).
//! Lines exist only while someone waits in them, and the fair order keeps nothing per client
//! beyond its waiters; an empty queue costs one atomic load.
//!
//! Per replica: each replica shares fairly among its own waiters; admission itself is exact
//! across replicas (the store counts every replica's requests).

use parking_lot::Mutex;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::error::LimitKind;
use crate::route::QuotaFamily;

mod fair;
mod lines;
mod rules;
mod ticket;

use self::fair::Forecast;
use self::lines::{LineKey, Lines, Waiter};
pub use self::rules::{
    BOUNDARY, Claim, HEAD_LAG, Pace, QueueLimits, starts_in_time, still_in_time,
};
pub use self::ticket::Ticket;

/// Most lines at once in one replica: model names are the client's choice, so made-up models
/// cannot make lines without bound (the waiter caps bound them too; this keeps the status page
/// and `/metrics` short).
pub const MAX_LINES: usize = 1024;

/// Which line a request waits in.
#[derive(Debug, Clone, Copy)]
pub struct Lane<'a> {
    pub model: &'a str,
    pub family: QuotaFamily,
    /// The project of the one key a pinned request can use (`None`: any project's).
    pub project: Option<&'a str>,
}

/// Every line of this replica.
#[derive(Debug)]
pub struct Queues {
    lines: Mutex<Lines>,
    /// Requests waiting in all lines: the empty path reads only this.
    waiting: AtomicUsize,
    limits: Mutex<QueueLimits>,
}

/// Why the store said no, and when it said room frees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    /// The limit at fault (`None`: every key cooling down after Google's 429s).
    pub limit: Option<LimitKind>,
    pub limit_value: u64,
    pub free_at: Instant,
}

/// Which bound kept a request out of the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    /// Its line is at `queue.max_length`.
    Line,
    /// There are [`MAX_LINES`] lines already.
    Lines,
    /// `queue.max_waiters_total` wait already.
    Waiters,
    /// Its body would take the waiters past `queue.max_waiting_bytes`.
    Bytes,
    /// Its client holds its share (`queue.max_client_share`) already.
    ClientShare,
    /// It cannot reach the front within its allowance: `ahead` wait before it and the line
    /// cannot admit it before `earliest` (`None`: not within any allowance).
    Predicted {
        ahead: usize,
        earliest: Option<Instant>,
    },
}

/// Why a request could not join a line.
#[derive(Debug, Clone, Copy)]
pub struct Full {
    pub last_refusal: Option<Refusal>,
    pub bound: Bound,
}

/// What waiting for one's turn ended in.
#[derive(Debug, Clone, Copy)]
pub enum Turn {
    /// At the front: ask the store.
    Head,
    /// The allowance ends before this waiter's earliest chance: nobody can admit it in time,
    /// so leave now rather than at the deadline.
    Hopeless(Option<Refusal>),
    /// The allowance ended.
    TimedOut(Option<Refusal>),
}

/// Per line, for the status page and `/metrics`.
#[derive(Debug, Clone)]
pub struct LineView {
    pub model: Arc<str>,
    pub family: QuotaFamily,
    /// The project of a pinned requests' line.
    pub project: Option<Arc<str>>,
    pub length: usize,
    pub oldest_wait: Duration,
}

impl Queues {
    pub fn new(limits: QueueLimits) -> Queues {
        Queues {
            lines: Mutex::new(Lines::default()),
            waiting: AtomicUsize::new(0),
            limits: Mutex::new(limits),
        }
    }

    /// Reloaded bounds: newcomers are held to them; nobody waiting is sent away.
    pub fn set_limits(&self, limits: QueueLimits) {
        *self.limits.lock() = limits;
    }

    /// Whether anyone waits in `lane`'s line: a newcomer then takes its place in the fair order
    /// instead of asking the store (only the head asks).
    pub fn busy(&self, lane: Lane<'_>) -> bool {
        if self.waiting.load(Ordering::Acquire) == 0 {
            return false;
        }
        self.lines.lock().get(lane).is_some()
    }

    /// Take a place in `lane`'s line (by the fair order), to wait until `deadline` at most, holding what
    /// `claim` says; `pace` is how fast the line can move (for the prediction).
    pub fn join(
        &self,
        lane: Lane<'_>,
        deadline: Instant,
        claim: Claim,
        pace: Option<Pace>,
    ) -> Result<Ticket<'_>, Full> {
        let limits = *self.limits.lock();
        let mut lines = self.lines.lock();
        let existing = lines.get(lane);
        let last_refusal = existing.and_then(|l| l.last_refusal);
        let full = |bound| Full {
            last_refusal,
            bound,
        };
        if self.waiting.load(Ordering::Acquire) >= limits.max_waiters_total {
            return Err(full(Bound::Waiters));
        }
        if lines.bytes.saturating_add(claim.bytes) > limits.max_waiting_bytes {
            return Err(full(Bound::Bytes));
        }
        let held = lines
            .clients
            .get(&claim.client)
            .copied()
            .unwrap_or_default();
        if held.waiters >= limits.client_waiters()
            || held.bytes.saturating_add(claim.bytes) > limits.client_bytes()
        {
            return Err(full(Bound::ClientShare));
        }
        // Its place in the fair order (the lock is held until it takes it).
        let none = std::collections::VecDeque::new();
        let waiters = existing.map_or(&none, |l| &l.waiters);
        let (tag, position) = fair::place(waiters, claim.client, claim.weight);
        match existing {
            None if lines.count >= MAX_LINES => return Err(full(Bound::Lines)),
            None => {}
            Some(line) => {
                if line.waiters.len() >= limits.max_length {
                    return Err(full(Bound::Line));
                }
                // Ahead of it: those before it in the fair order (and those other clients
                // will send meanwhile), not all who came first.
                let before = position;
                let now = Instant::now();
                let forecast = Forecast::of(line, now);
                let ahead = line.ahead(&forecast, (before, claim.client, tag), pace, now);
                if ahead > 0 && line.hopeless(ahead, deadline, pace) {
                    let earliest = line.earliest(ahead, pace).flatten();
                    return Err(full(Bound::Predicted {
                        ahead: before,
                        earliest,
                    }));
                }
            }
        }
        let key = LineKey {
            model: match lines.get(lane) {
                // Share the line's name rather than allocate one.
                Some(_) => lines
                    .by_model(lane.project)
                    .and_then(|by| by.get(&lane.family))
                    .and_then(|m| m.get_key_value(lane.model))
                    .map(|(k, _)| k.clone())
                    .unwrap_or_else(|| Arc::from(lane.model)),
                None => Arc::from(lane.model),
            },
            family: lane.family,
            project: lane.project.map(Arc::from),
        };
        let line = lines.entry(&key);
        if pace.is_some() {
            line.pace = pace;
        }
        let seq = line.next_seq;
        line.next_seq += 1;
        let turn = Arc::new(Notify::new());
        let since = Instant::now();
        line.waiters.insert(
            position,
            Waiter {
                seq,
                client: claim.client,
                tag,
                since,
                deadline,
                turn: turn.clone(),
            },
        );
        // Those it went before are one place further back: any it puts out of reach of their
        // allowance leave now.
        if position + 1 < line.waiters.len() {
            line.tell_hopeless(position + 1);
        }
        line.note_join(claim.client, claim.weight, since);
        let bell = line.bell.clone();
        lines.bytes += claim.bytes;
        let held = lines.clients.entry(claim.client).or_default();
        held.waiters += 1;
        held.bytes += claim.bytes;
        self.waiting.fetch_add(1, Ordering::AcqRel);
        Ok(Ticket {
            queues: self,
            bell,
            key,
            seq,
            turn,
            deadline,
            since,
            claim,
        })
    }

    /// The last refusal `lane`'s line head was given, if anyone waits in it.
    pub fn last_refusal(&self, lane: Lane<'_>) -> Option<Refusal> {
        self.lines.lock().get(lane).and_then(|l| l.last_refusal)
    }

    /// Capacity may have freed for everyone (an admin reset): every head asks again now.
    pub fn ring_all(&self) {
        for (_, _, _, line) in self.lines.lock().iter() {
            line.bell.notify_one();
        }
    }

    /// Every line with its length and its oldest waiter's wait so far.
    pub fn lines(&self) -> Vec<LineView> {
        if self.waiting.load(Ordering::Acquire) == 0 {
            return Vec::new();
        }
        let now = Instant::now();
        let mut out: Vec<LineView> = self
            .lines
            .lock()
            .iter()
            .map(|(project, model, family, line)| LineView {
                model: model.clone(),
                family,
                project: project.cloned(),
                length: line.waiters.len(),
                // The fair order's head need not be the longest waiter.
                oldest_wait: line
                    .waiters
                    .iter()
                    .map(|w| w.since)
                    .min()
                    .map_or(Duration::ZERO, |since| now.saturating_duration_since(since)),
            })
            .collect();
        out.sort_by(|a, b| (&a.model, &a.project).cmp(&(&b.model, &b.project)));
        out
    }

    /// Requests waiting in all lines.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
    }

    /// Request-body bytes held by all waiters.
    pub fn waiting_bytes(&self) -> u64 {
        if self.waiting() == 0 {
            return 0;
        }
        self.lines.lock().bytes
    }
}

#[cfg(test)]
mod tests;
