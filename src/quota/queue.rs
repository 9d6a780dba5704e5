//! The admission queue: requests that found no room wait in one FIFO line per (model, quota
//! family) in this replica; a request pinned to one key (a file it names) waits in its
//! project's own line for the model, so it never holds up requests other projects can serve.
//! Only the line's head asks the store again, at the moment the store said capacity frees (or
//! when an admin reset rings it); the others sleep until they reach the front, or leave as soon
//! as their allowance cannot be met: from the head's wake-up and the line's pace (at most the
//! projects' per-minute limits fit in a window) the queue predicts the earliest a waiter can be
//! admitted, and a request that cannot make it is refused on arrival, not at its deadline. A
//! waiter whose future is dropped (its client left) leaves the line at once and holds nothing.
//!
//! Bounded whatever clients send: waiters per line (`queue.max_length`), in all lines
//! (`queue.max_waiters_total`), the body bytes they hold (`queue.max_waiting_bytes`), one
//! client's share of both (`queue.max_client_share`), and the number of lines ([`MAX_LINES`]).
//! Lines exist only while someone waits in them; an empty queue costs one atomic load.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::config::QueueConfig;
use crate::error::LimitKind;
use crate::route::QuotaFamily;

/// Most lines at once in one replica: model names are the client's choice, so made-up models
/// cannot make lines without bound (the waiter caps bound them too; this keeps the status page
/// and `/metrics` short).
pub const MAX_LINES: usize = 1024;

/// The allowance boundary, decided one way: a request starts to wait only for room that frees
/// at least this long before its allowance ends; room freeing exactly at the end (or later) is
/// a 429 at once. A head already waiting keeps waiting for room that frees up to this long
/// after its end: the store counts in milliseconds on another clock, and a head that woke at
/// the promised moment must not be refused for the rounding ("Retry in 0.001s").
pub const BOUNDARY: Duration = Duration::from_millis(5);

/// Whether a request may start waiting for room that frees at `free_at`, given its allowance
/// ends at `deadline` (see [`BOUNDARY`]).
pub fn starts_in_time(free_at: Instant, deadline: Instant) -> bool {
    free_at + BOUNDARY <= deadline
}

/// Whether a head already waiting keeps waiting for room that frees at `free_at`.
pub fn still_in_time(free_at: Instant, deadline: Instant) -> bool {
    free_at <= deadline + BOUNDARY
}

/// Which line a request waits in.
#[derive(Debug, Clone, Copy)]
pub struct Lane<'a> {
    pub model: &'a str,
    pub family: QuotaFamily,
    /// The project of the one key a pinned request can use (`None`: any project's).
    pub project: Option<&'a str>,
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
}

/// Who a waiter is and what it holds while it waits, for the queue's global bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim {
    /// The ledger's client id (bounded by configuration).
    pub client: u32,
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

impl From<&QueueConfig> for QueueLimits {
    fn from(c: &QueueConfig) -> QueueLimits {
        QueueLimits {
            max_length: c.max_length.max(1),
            max_waiters_total: c.max_waiters_total.max(1),
            max_waiting_bytes: c.max_waiting_bytes,
            max_client_share: c.max_client_share,
        }
    }
}

impl QueueLimits {
    /// Waiters one client may hold (at least one).
    fn client_waiters(&self) -> usize {
        ((self.max_waiters_total as f64 * self.max_client_share) as usize).max(1)
    }

    /// Body bytes one client's waiters may hold.
    fn client_bytes(&self) -> u64 {
        (self.max_waiting_bytes as f64 * self.max_client_share) as u64
    }
}

/// A line's key, owned (as a ticket keeps it).
#[derive(Debug, Clone)]
struct LineKey {
    model: Arc<str>,
    family: QuotaFamily,
    project: Option<Arc<str>>,
}

impl LineKey {
    fn lane(&self) -> Lane<'_> {
        Lane {
            model: &self.model,
            family: self.family,
            project: self.project.as_deref(),
        }
    }
}

/// Lines by family, then by model: looked up by the request's `&str` model, with no
/// allocation.
type ByModel = HashMap<QuotaFamily, HashMap<Arc<str>, Line>>;

/// What one client's waiters hold.
#[derive(Debug, Default, Clone, Copy)]
struct Held {
    waiters: usize,
    bytes: u64,
}

/// Every line, and what their waiters hold, under one lock.
#[derive(Debug, Default)]
struct Lines {
    /// Lines any project may serve, by model.
    shared: ByModel,
    /// Lines of pinned requests, by project then model.
    pinned: HashMap<Arc<str>, ByModel>,
    /// Lines in both maps.
    count: usize,
    /// Body bytes held by all waiters.
    bytes: u64,
    /// Per client, while it has waiters.
    clients: HashMap<u32, Held>,
}

impl Lines {
    fn by_model(&self, project: Option<&str>) -> Option<&ByModel> {
        match project {
            None => Some(&self.shared),
            Some(p) => self.pinned.get(p),
        }
    }

    fn get(&self, lane: Lane<'_>) -> Option<&Line> {
        self.by_model(lane.project)?
            .get(&lane.family)?
            .get(lane.model)
    }

    fn get_mut(&mut self, lane: Lane<'_>) -> Option<&mut Line> {
        let by = match lane.project {
            None => &mut self.shared,
            Some(p) => self.pinned.get_mut(p)?,
        };
        by.get_mut(&lane.family)?.get_mut(lane.model)
    }

    /// The line of `key`, made if missing.
    fn entry(&mut self, key: &LineKey) -> &mut Line {
        let by = match &key.project {
            None => &mut self.shared,
            Some(p) => self.pinned.entry(p.clone()).or_default(),
        };
        let lines = by.entry(key.family).or_default();
        if !lines.contains_key(&*key.model) {
            self.count += 1;
        }
        lines.entry(key.model.clone()).or_insert_with(|| Line {
            waiters: VecDeque::new(),
            next_seq: 0,
            bell: Arc::new(Notify::new()),
            head_wake: None,
            last_refusal: None,
            pace: None,
        })
    }

    fn remove(&mut self, lane: Lane<'_>) {
        let by = match lane.project {
            None => &mut self.shared,
            Some(p) => match self.pinned.get_mut(p) {
                Some(by) => by,
                None => return,
            },
        };
        if let Some(m) = by.get_mut(&lane.family) {
            if m.remove(lane.model).is_some() {
                self.count -= 1;
            }
            if m.is_empty() {
                by.remove(&lane.family);
            }
        }
        if let Some(p) = lane.project
            && self.pinned.get(p).is_some_and(HashMap::is_empty)
        {
            self.pinned.remove(p);
        }
    }

    fn iter(&self) -> impl Iterator<Item = (Option<&Arc<str>>, &Arc<str>, QuotaFamily, &Line)> {
        let shared = std::iter::once((None, &self.shared));
        let pinned = self.pinned.iter().map(|(p, by)| (Some(p), by));
        shared.chain(pinned).flat_map(|(p, by)| {
            by.iter()
                .flat_map(move |(f, m)| m.iter().map(move |(model, line)| (p, model, *f, line)))
        })
    }
}

/// Every line of this replica.
#[derive(Debug)]
pub struct Queues {
    lines: Mutex<Lines>,
    /// Requests waiting in all lines: the empty path reads only this.
    waiting: AtomicUsize,
    limits: Mutex<QueueLimits>,
}

#[derive(Debug)]
struct Line {
    waiters: VecDeque<Waiter>,
    next_seq: u64,
    /// Rung when capacity may have freed before the head's predicted moment (admin reset).
    bell: Arc<Notify>,
    /// When the head will ask the store again, while it sleeps.
    head_wake: Option<Instant>,
    /// The last refusal the head was given: what a request refused without asking is told.
    last_refusal: Option<Refusal>,
    /// How fast the line can move, as its last newcomer's candidates said.
    pace: Option<Pace>,
}

impl Line {
    /// The earliest a waiter at `position` (0: the head) can be admitted, if the head's wake
    /// is known; `Some(None)`: never within any allowance.
    fn earliest(&self, position: usize, pace: Option<Pace>) -> Option<Option<Instant>> {
        let wake = self.head_wake?;
        Some(match pace.or(self.pace) {
            Some(p) => p.earliest(wake, position),
            None => Some(wake),
        })
    }

    /// Whether a waiter at `position` with allowance to `deadline` cannot be admitted in time.
    fn hopeless(&self, position: usize, deadline: Instant, pace: Option<Pace>) -> bool {
        match self.earliest(position, pace) {
            None => false,
            Some(None) => true,
            Some(Some(at)) => !starts_in_time(at, deadline),
        }
    }
}

#[derive(Debug)]
struct Waiter {
    seq: u64,
    since: Instant,
    deadline: Instant,
    /// Notified when this waiter may have reached the front, or its hope has gone.
    turn: Arc<Notify>,
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

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
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
        *lock(&self.limits) = limits;
    }

    /// Whether anyone waits in `lane`'s line: a newcomer then queues behind them instead of
    /// asking the store (no overtaking).
    pub fn busy(&self, lane: Lane<'_>) -> bool {
        if self.waiting.load(Ordering::Acquire) == 0 {
            return false;
        }
        lock(&self.lines).get(lane).is_some()
    }

    /// Take the last place in `lane`'s line, to wait until `deadline` at most, holding what
    /// `claim` says; `pace` is how fast the line can move (for the prediction).
    pub fn join(
        &self,
        lane: Lane<'_>,
        deadline: Instant,
        claim: Claim,
        pace: Option<Pace>,
    ) -> Result<Ticket<'_>, Full> {
        let limits = *lock(&self.limits);
        let mut lines = lock(&self.lines);
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
        match existing {
            None if lines.count >= MAX_LINES => return Err(full(Bound::Lines)),
            None => {}
            Some(line) => {
                let ahead = line.waiters.len();
                if ahead >= limits.max_length {
                    return Err(full(Bound::Line));
                }
                if ahead > 0 && line.hopeless(ahead, deadline, pace) {
                    let earliest = line.earliest(ahead, pace).flatten();
                    return Err(full(Bound::Predicted { ahead, earliest }));
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
        line.waiters.push_back(Waiter {
            seq,
            since,
            deadline,
            turn: turn.clone(),
        });
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
        lock(&self.lines).get(lane).and_then(|l| l.last_refusal)
    }

    /// Capacity may have freed for everyone (an admin reset): every head asks again now.
    pub fn ring_all(&self) {
        for (_, _, _, line) in lock(&self.lines).iter() {
            line.bell.notify_one();
        }
    }

    /// Every line with its length and its oldest waiter's wait so far.
    pub fn lines(&self) -> Vec<LineView> {
        if self.waiting.load(Ordering::Acquire) == 0 {
            return Vec::new();
        }
        let now = Instant::now();
        let mut out: Vec<LineView> = lock(&self.lines)
            .iter()
            .map(|(project, model, family, line)| LineView {
                model: model.clone(),
                family,
                project: project.cloned(),
                length: line.waiters.len(),
                oldest_wait: line
                    .waiters
                    .front()
                    .map_or(Duration::ZERO, |w| now.saturating_duration_since(w.since)),
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
        lock(&self.lines).bytes
    }
}

/// A place in a line; dropping it leaves the line (and hands the front to the next waiter).
#[derive(Debug)]
pub struct Ticket<'a> {
    queues: &'a Queues,
    key: LineKey,
    seq: u64,
    turn: Arc<Notify>,
    bell: Arc<Notify>,
    deadline: Instant,
    claim: Claim,
    /// When it joined.
    pub since: Instant,
}

impl Ticket<'_> {
    /// Wait until this ticket is at the front of its line, its hope is gone, or its deadline.
    pub async fn turn(&self) -> Turn {
        loop {
            {
                let lines = lock(&self.queues.lines);
                let Some(line) = lines.get(self.key.lane()) else {
                    // Unreachable while the ticket lives; be the head rather than hang.
                    return Turn::Head;
                };
                match line.waiters.iter().position(|w| w.seq == self.seq) {
                    Some(0) | None => return Turn::Head,
                    Some(pos) if line.hopeless(pos, self.deadline, None) => {
                        return Turn::Hopeless(line.last_refusal);
                    }
                    Some(_) => {}
                }
            }
            let refusal = || {
                lock(&self.queues.lines)
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
        let mut lines = lock(&self.queues.lines);
        if let Some(line) = lines.get_mut(self.key.lane()) {
            line.head_wake = Some(refusal.free_at);
            line.last_refusal = Some(refusal);
            for (pos, w) in line.waiters.iter().enumerate().skip(1) {
                if line.hopeless(pos, w.deadline, None) {
                    w.turn.notify_one();
                }
            }
        }
        still_in_time(refusal.free_at, self.deadline)
    }

    /// At the front: sleep until `until` (when the store said room frees) or until the line's
    /// bell rings.
    pub async fn sleep_until(&self, until: Instant) {
        tokio::select! {
            _ = tokio::time::sleep_until(until) => {}
            _ = self.bell.notified() => {}
        }
    }

    /// Whether this ticket is at the front of its line now.
    pub fn is_head(&self) -> bool {
        lock(&self.queues.lines)
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
        let mut lines = lock(&self.queues.lines);
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

#[cfg(test)]
mod tests {
    use super::*;

    const M: QuotaFamily = QuotaFamily::Generate;

    const CLAIM: Claim = Claim {
        client: 1,
        bytes: 100,
    };

    fn limits(max_length: usize) -> QueueLimits {
        QueueLimits {
            max_length,
            max_waiters_total: 10_000,
            max_waiting_bytes: 1 << 30,
            max_client_share: 1.0,
        }
    }

    fn lane(model: &str) -> Lane<'_> {
        Lane {
            model,
            family: M,
            project: None,
        }
    }

    /// A queue that outlives the test's spawned tasks.
    fn leaked(max: usize) -> &'static Queues {
        Box::leak(Box::new(Queues::new(limits(max))))
    }

    fn far() -> Instant {
        Instant::now() + Duration::from_secs(60)
    }

    #[tokio::test]
    async fn the_first_to_join_is_the_head_and_the_next_moves_up_when_it_leaves() {
        let q = leaked(10);
        assert!(!q.busy(lane("m")));
        let a = q.join(lane("m"), far(), CLAIM, None).unwrap();
        let b = q.join(lane("m"), far(), CLAIM, None).unwrap();
        assert!(a.is_head() && !b.is_head());
        assert!(q.busy(lane("m")));
        assert!(!q.busy(lane("other")));
        assert!(!q.busy(Lane {
            model: "m",
            family: QuotaFamily::Embed,
            project: None,
        }));
        assert!(matches!(a.turn().await, Turn::Head));
        let waiting = tokio::spawn(async move { matches!(b.turn().await, Turn::Head) });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        drop(a);
        assert!(waiting.await.unwrap(), "b reached the front once a left");
        assert!(!q.busy(lane("m")), "an empty line is removed");
        assert_eq!(q.waiting(), 0);
        assert!(q.lines().is_empty());
    }

    #[tokio::test]
    async fn a_waiter_that_leaves_from_the_middle_keeps_the_order_of_the_rest() {
        let q = Queues::new(limits(10));
        let a = q.join(lane("m"), far(), CLAIM, None).unwrap();
        let b = q.join(lane("m"), far(), CLAIM, None).unwrap();
        let c = q.join(lane("m"), far(), CLAIM, None).unwrap();
        drop(b);
        assert_eq!(q.lines()[0].length, 2);
        drop(a);
        assert!(matches!(c.turn().await, Turn::Head));
    }

    #[tokio::test]
    async fn a_full_line_refuses_with_the_last_refusal_it_saw() {
        let q = Queues::new(limits(2));
        let a = q.join(lane("m"), far(), CLAIM, None).unwrap();
        let _b = q.join(lane("m"), far(), CLAIM, None).unwrap();
        let r = Refusal {
            limit: Some(LimitKind::RequestsPerMinute),
            limit_value: 5,
            free_at: Instant::now() + Duration::from_secs(3),
        };
        assert!(a.expect(r));
        let full = q.join(lane("m"), far(), CLAIM, None).unwrap_err();
        assert_eq!(full.last_refusal, Some(r));
        // Another model's line is its own.
        assert!(q.join(lane("n"), far(), CLAIM, None).is_ok());
    }

    #[tokio::test]
    async fn a_waiter_whose_deadline_comes_before_the_heads_wake_leaves_at_once() {
        let q = leaked(10);
        let a = q.join(lane("m"), far(), CLAIM, None).unwrap();
        let short = Instant::now() + Duration::from_secs(5);
        let b = q.join(lane("m"), short, CLAIM, None).unwrap();
        let c = q.join(lane("m"), far(), CLAIM, None).unwrap();
        let r = Refusal {
            limit: Some(LimitKind::RequestsPerMinute),
            limit_value: 5,
            free_at: Instant::now() + Duration::from_secs(30),
        };
        let b_turn = tokio::spawn(async move { b.turn().await });
        tokio::task::yield_now().await;
        assert!(a.expect(r), "the head's own deadline is later");
        match b_turn.await.unwrap() {
            Turn::Hopeless(Some(seen)) => assert_eq!(seen, r),
            other => panic!("expected Hopeless, got {other:?}"),
        }
        // c can wait that long: it stays in line.
        let c_turn = tokio::spawn(async move { c.turn().await });
        tokio::task::yield_now().await;
        assert!(!c_turn.is_finished());
        drop(a);
        assert!(matches!(c_turn.await.unwrap(), Turn::Head));
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_times_out_at_its_deadline() {
        let q = Queues::new(limits(10));
        let _a = q.join(lane("m"), far(), CLAIM, None).unwrap();
        let b = q
            .join(
                lane("m"),
                Instant::now() + Duration::from_secs(2),
                CLAIM,
                None,
            )
            .unwrap();
        assert!(matches!(b.turn().await, Turn::TimedOut(None)));
        drop(b);
        assert_eq!(q.waiting(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn the_bell_wakes_a_sleeping_head_early() {
        let q = Arc::new(Queues::new(limits(10)));
        let q2 = q.clone();
        let slept = tokio::spawn(async move {
            let a = q2.join(lane("m"), far(), CLAIM, None).unwrap();
            let t0 = Instant::now();
            a.sleep_until(Instant::now() + Duration::from_secs(50))
                .await;
            t0.elapsed()
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        q.ring_all();
        let took = slept.await.unwrap();
        assert!(
            took < Duration::from_secs(50),
            "woken by the bell: {took:?}"
        );
    }

    fn refusal_in(secs: u64) -> Refusal {
        Refusal {
            limit: Some(LimitKind::RequestsPerMinute),
            limit_value: 2,
            free_at: Instant::now() + Duration::from_secs(secs),
        }
    }

    #[tokio::test]
    async fn a_pinned_request_waits_in_its_projects_line_not_the_models() {
        let q = Queues::new(limits(10));
        let pinned = Lane {
            model: "m",
            family: M,
            project: Some("p1"),
        };
        let _a = q.join(pinned, far(), CLAIM, None).unwrap();
        assert!(q.busy(pinned));
        assert!(!q.busy(lane("m")), "the model's shared line is free");
        assert!(!q.busy(Lane {
            project: Some("p2"),
            ..pinned
        }));
        let b = q.join(lane("m"), far(), CLAIM, None).unwrap();
        assert!(b.is_head(), "nobody waits before it in the shared line");
        let views = q.lines();
        assert_eq!(views.len(), 2);
        assert_eq!(
            views
                .iter()
                .filter(|v| v.project.as_deref() == Some("p1"))
                .count(),
            1
        );
    }

    #[tokio::test]
    async fn a_newcomer_that_cannot_be_admitted_in_time_is_refused_on_arrival() {
        // Two a minute; the head's room frees in 41 s (the five curls).
        let q = Queues::new(limits(10));
        let pace = Some(Pace {
            per_window: 2,
            window: Duration::from_secs(60),
        });
        let in_60 = || Instant::now() + Duration::from_secs(60);
        let head = q.join(lane("m"), in_60(), CLAIM, pace).unwrap();
        assert!(head.expect(refusal_in(41)));
        // One ahead: the window's other slot can free at 41 s too.
        let _second = q.join(lane("m"), in_60(), CLAIM, pace).unwrap();
        // Two ahead: a window more, 101 s, past its 60 s.
        let third = q.join(lane("m"), in_60(), CLAIM, pace).unwrap_err();
        match third.bound {
            Bound::Predicted { ahead, earliest } => {
                assert_eq!(ahead, 2);
                let at = earliest.unwrap() - Instant::now();
                assert!(at > Duration::from_secs(100), "{at:?}");
            }
            other => panic!("expected Predicted, got {other:?}"),
        }
        assert_eq!(third.last_refusal.map(|r| r.limit_value), Some(2));
        // With a longer allowance it may wait.
        let long = Instant::now() + Duration::from_secs(200);
        assert!(q.join(lane("m"), long, CLAIM, pace).is_ok());
    }

    #[tokio::test]
    async fn waiters_the_heads_refusal_puts_out_of_reach_leave_at_once() {
        let q = leaked(10);
        let pace = Some(Pace {
            per_window: 1,
            window: Duration::from_secs(60),
        });
        let head = q.join(lane("m"), far(), CLAIM, pace).unwrap();
        let in_70 = Instant::now() + Duration::from_secs(70);
        let b = q.join(lane("m"), in_70, CLAIM, pace).unwrap();
        let b_turn = tokio::spawn(async move { b.turn().await });
        tokio::task::yield_now().await;
        assert!(!b_turn.is_finished());
        // Room frees for the head in 20 s: b, one behind at one a minute, needs 80 s.
        assert!(head.expect(refusal_in(20)));
        let r = tokio::time::timeout(Duration::from_secs(5), b_turn)
            .await
            .expect("told at once")
            .unwrap();
        assert!(matches!(r, Turn::Hopeless(Some(_))), "{r:?}");
    }

    #[test]
    fn the_allowance_boundary_refuses_room_that_frees_exactly_at_its_end() {
        let end = Instant::now() + Duration::from_secs(60);
        assert!(!starts_in_time(end, end), "exactly at the end: refused");
        assert!(!starts_in_time(end - BOUNDARY / 2, end));
        assert!(starts_in_time(end - BOUNDARY, end));
        // A head already waiting is not refused for the store's millisecond rounding.
        assert!(still_in_time(end, end));
        assert!(still_in_time(end + BOUNDARY, end));
        assert!(!still_in_time(end + BOUNDARY * 2, end));
    }

    #[tokio::test]
    async fn the_whole_queue_is_bounded_in_waiters_bytes_and_lines_whatever_the_models() {
        let q = Queues::new(QueueLimits {
            max_length: 1000,
            max_waiters_total: 50,
            max_waiting_bytes: 1 << 30,
            max_client_share: 1.0,
        });
        let names: Vec<String> = (0..100).map(|i| format!("made-up-{i}")).collect();
        let mut tickets = Vec::new();
        let mut refused = Vec::new();
        for n in &names {
            match q.join(lane(n), far(), CLAIM, None) {
                Ok(t) => tickets.push(t),
                Err(f) => refused.push(f.bound),
            }
        }
        assert_eq!(tickets.len(), 50);
        assert!(refused.iter().all(|b| *b == Bound::Waiters), "{refused:?}");
        drop(tickets);
        assert_eq!(q.waiting(), 0);

        let q = Queues::new(QueueLimits {
            max_length: 1000,
            max_waiters_total: 10_000,
            max_waiting_bytes: 1000,
            max_client_share: 1.0,
        });
        let big = Claim {
            client: 1,
            bytes: 400,
        };
        let a = q.join(lane("m"), far(), big, None).unwrap();
        let _b = q.join(lane("m"), far(), big, None).unwrap();
        assert_eq!(q.waiting_bytes(), 800);
        let c = q.join(lane("m"), far(), big, None).unwrap_err();
        assert_eq!(c.bound, Bound::Bytes);
        drop(a);
        assert_eq!(q.waiting_bytes(), 400);
        assert!(q.join(lane("m"), far(), big, None).is_ok());

        let q = Queues::new(limits(10));
        let names: Vec<String> = (0..=MAX_LINES).map(|i| format!("m{i}")).collect();
        let mut tickets = Vec::new();
        for n in &names[..MAX_LINES] {
            tickets.push(q.join(lane(n), far(), CLAIM, None).unwrap());
        }
        let over = q.join(lane(&names[MAX_LINES]), far(), CLAIM, None);
        assert_eq!(over.unwrap_err().bound, Bound::Lines);
        // An existing line still takes newcomers.
        assert!(q.join(lane("m0"), far(), CLAIM, None).is_ok());
    }

    #[tokio::test]
    async fn one_client_holds_at_most_its_share_and_others_still_wait() {
        let q = Queues::new(QueueLimits {
            max_length: 1000,
            max_waiters_total: 10,
            max_waiting_bytes: 1 << 30,
            max_client_share: 0.5,
        });
        let one = Claim {
            client: 7,
            bytes: 10,
        };
        let other = Claim {
            client: 8,
            bytes: 10,
        };
        let mine: Vec<_> = (0..5)
            .map(|_| q.join(lane("m"), far(), one, None).unwrap())
            .collect();
        let sixth = q.join(lane("m"), far(), one, None).unwrap_err();
        assert_eq!(sixth.bound, Bound::ClientShare);
        assert!(q.join(lane("m"), far(), other, None).is_ok());
        drop(mine);
        assert!(
            q.join(lane("m"), far(), one, None).is_ok(),
            "its share is free again"
        );
    }
}
