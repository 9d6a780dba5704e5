//! The admission queue: requests that found no room wait in one FIFO line per (model, quota
//! family) in this replica. Only the line's head asks the store again, at the moment the store
//! said capacity frees (or when an admin reset rings it); the others sleep until they reach the
//! front, or leave as soon as their allowance cannot be met. A waiter whose future is dropped
//! (its client left) leaves the line at once and holds nothing.
//!
//! Lines exist only while someone waits in them, so the state is bounded by the requests in
//! flight, whatever model names clients send; an empty queue costs one atomic load.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::error::LimitKind;
use crate::route::QuotaFamily;

type LineKey = (Arc<str>, QuotaFamily);

/// The lines by family, then by model: a line is looked up by the request's `&str` model,
/// with no allocation.
#[derive(Debug, Default)]
struct Lines(HashMap<QuotaFamily, HashMap<Arc<str>, Line>>);

impl Lines {
    fn get(&self, (model, family): (&str, QuotaFamily)) -> Option<&Line> {
        self.0.get(&family)?.get(model)
    }

    fn get_mut(&mut self, (model, family): (&str, QuotaFamily)) -> Option<&mut Line> {
        self.0.get_mut(&family)?.get_mut(model)
    }

    fn remove(&mut self, (model, family): (&str, QuotaFamily)) {
        if let Some(m) = self.0.get_mut(&family) {
            m.remove(model);
            if m.is_empty() {
                self.0.remove(&family);
            }
        }
    }

    fn iter(&self) -> impl Iterator<Item = (&Arc<str>, QuotaFamily, &Line)> {
        self.0
            .iter()
            .flat_map(|(f, m)| m.iter().map(move |(model, line)| (model, *f, line)))
    }
}

/// Every line of this replica.
#[derive(Debug)]
pub struct Queues {
    lines: Mutex<Lines>,
    /// Requests waiting in all lines: the empty path reads only this.
    waiting: AtomicUsize,
    /// `queue.max_length` (a config reload changes it).
    max_length: AtomicUsize,
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

/// Why a request could not join a line.
#[derive(Debug, Clone, Copy)]
pub struct Full {
    pub last_refusal: Option<Refusal>,
}

/// What waiting for one's turn ended in.
#[derive(Debug, Clone, Copy)]
pub enum Turn {
    /// At the front: ask the store.
    Head,
    /// The allowance ends before the head's next chance: nobody behind it can be admitted in
    /// time, so leave now rather than at the deadline.
    Hopeless(Option<Refusal>),
    /// The allowance ended.
    TimedOut(Option<Refusal>),
}

/// Per line, for the status page and `/metrics`.
#[derive(Debug, Clone)]
pub struct LineView {
    pub model: Arc<str>,
    pub family: QuotaFamily,
    pub length: usize,
    pub oldest_wait: Duration,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Queues {
    /// A reloaded `queue.max_length`: newcomers are held to it; nobody waiting is sent away.
    pub fn set_max_length(&self, max_length: usize) {
        self.max_length.store(max_length.max(1), Ordering::Relaxed);
    }

    pub fn new(max_length: usize) -> Queues {
        Queues {
            lines: Mutex::new(Lines::default()),
            waiting: AtomicUsize::new(0),
            max_length: AtomicUsize::new(max_length.max(1)),
        }
    }

    /// Whether anyone waits for `model`: a newcomer then queues behind them instead of asking
    /// the store (no overtaking).
    pub fn busy(&self, model: &str, family: QuotaFamily) -> bool {
        if self.waiting.load(Ordering::Acquire) == 0 {
            return false;
        }
        lock(&self.lines).get((model, family)).is_some()
    }

    /// Take the last place in `model`'s line, to wait until `deadline` at most.
    pub fn join(
        &self,
        model: &str,
        family: QuotaFamily,
        deadline: Instant,
    ) -> Result<Ticket<'_>, Full> {
        let mut lines = lock(&self.lines);
        let by_model = lines.0.entry(family).or_default();
        let key: LineKey = match by_model.get_key_value(model) {
            Some((m, _)) => (m.clone(), family),
            None => (Arc::from(model), family),
        };
        let line = by_model.entry(key.0.clone()).or_insert_with(|| Line {
            waiters: VecDeque::new(),
            next_seq: 0,
            bell: Arc::new(Notify::new()),
            head_wake: None,
            last_refusal: None,
        });
        if line.waiters.len() >= self.max_length.load(Ordering::Relaxed) {
            return Err(Full {
                last_refusal: line.last_refusal,
            });
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
        self.waiting.fetch_add(1, Ordering::AcqRel);
        Ok(Ticket {
            queues: self,
            bell: line.bell.clone(),
            key,
            seq,
            turn,
            deadline,
            since,
        })
    }

    /// The last refusal `model`'s line head was given, if anyone waits for it.
    pub fn last_refusal(&self, model: &str, family: QuotaFamily) -> Option<Refusal> {
        lock(&self.lines)
            .get((model, family))
            .and_then(|l| l.last_refusal)
    }

    /// Capacity may have freed for everyone (an admin reset): every head asks again now.
    pub fn ring_all(&self) {
        for (_, _, line) in lock(&self.lines).iter() {
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
            .map(|(model, family, line)| LineView {
                model: model.clone(),
                family,
                length: line.waiters.len(),
                oldest_wait: line
                    .waiters
                    .front()
                    .map_or(Duration::ZERO, |w| now.saturating_duration_since(w.since)),
            })
            .collect();
        out.sort_by(|a, b| a.model.cmp(&b.model));
        out
    }

    /// Requests waiting in all lines.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
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
    /// When it joined.
    pub since: Instant,
}

impl Ticket<'_> {
    /// Its line's key, as the lines look it up.
    fn key(&self) -> (&str, QuotaFamily) {
        (&self.key.0, self.key.1)
    }

    /// Wait until this ticket is at the front of its line, its hope is gone, or its deadline.
    pub async fn turn(&self) -> Turn {
        loop {
            {
                let lines = lock(&self.queues.lines);
                let Some(line) = lines.get(self.key()) else {
                    // Unreachable while the ticket lives; be the head rather than hang.
                    return Turn::Head;
                };
                if line.waiters.front().is_some_and(|w| w.seq == self.seq) {
                    return Turn::Head;
                }
                if line.head_wake.is_some_and(|w| w > self.deadline) {
                    return Turn::Hopeless(line.last_refusal);
                }
            }
            let refusal = || {
                lock(&self.queues.lines)
                    .get(self.key())
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

    /// At the front, refused: record when room frees (telling the waiters who cannot wait that
    /// long to leave now). Returns false when this ticket's own deadline comes first.
    pub fn expect(&self, refusal: Refusal) -> bool {
        let mut lines = lock(&self.queues.lines);
        if let Some(line) = lines.get_mut(self.key()) {
            line.head_wake = Some(refusal.free_at);
            line.last_refusal = Some(refusal);
            for w in line.waiters.iter().skip(1) {
                if w.deadline < refusal.free_at {
                    w.turn.notify_one();
                }
            }
        }
        refusal.free_at <= self.deadline
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
            .get(self.key())
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
        let Some(line) = lines.get_mut(self.key()) else {
            return;
        };
        let Some(pos) = line.waiters.iter().position(|w| w.seq == self.seq) else {
            return;
        };
        line.waiters.remove(pos);
        self.queues.waiting.fetch_sub(1, Ordering::AcqRel);
        if pos == 0 {
            // The head left (admitted, refused or gone): the next one asks the store at once.
            line.head_wake = None;
            if let Some(next) = line.waiters.front() {
                next.turn.notify_one();
            }
        }
        if line.waiters.is_empty() {
            lines.remove(self.key());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: QuotaFamily = QuotaFamily::Generate;

    /// A queue that outlives the test's spawned tasks.
    fn leaked(max: usize) -> &'static Queues {
        Box::leak(Box::new(Queues::new(max)))
    }

    fn far() -> Instant {
        Instant::now() + Duration::from_secs(60)
    }

    #[tokio::test]
    async fn the_first_to_join_is_the_head_and_the_next_moves_up_when_it_leaves() {
        let q = leaked(10);
        assert!(!q.busy("m", M));
        let a = q.join("m", M, far()).unwrap();
        let b = q.join("m", M, far()).unwrap();
        assert!(a.is_head() && !b.is_head());
        assert!(q.busy("m", M));
        assert!(!q.busy("other", M));
        assert!(!q.busy("m", QuotaFamily::Embed));
        assert!(matches!(a.turn().await, Turn::Head));
        let waiting = tokio::spawn(async move { matches!(b.turn().await, Turn::Head) });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        drop(a);
        assert!(waiting.await.unwrap(), "b reached the front once a left");
        assert!(!q.busy("m", M), "an empty line is removed");
        assert_eq!(q.waiting(), 0);
        assert!(q.lines().is_empty());
    }

    #[tokio::test]
    async fn a_waiter_that_leaves_from_the_middle_keeps_the_order_of_the_rest() {
        let q = Queues::new(10);
        let a = q.join("m", M, far()).unwrap();
        let b = q.join("m", M, far()).unwrap();
        let c = q.join("m", M, far()).unwrap();
        drop(b);
        assert_eq!(q.lines()[0].length, 2);
        drop(a);
        assert!(matches!(c.turn().await, Turn::Head));
    }

    #[tokio::test]
    async fn a_full_line_refuses_with_the_last_refusal_it_saw() {
        let q = Queues::new(2);
        let a = q.join("m", M, far()).unwrap();
        let _b = q.join("m", M, far()).unwrap();
        let r = Refusal {
            limit: Some(LimitKind::RequestsPerMinute),
            limit_value: 5,
            free_at: Instant::now() + Duration::from_secs(3),
        };
        assert!(a.expect(r));
        let full = q.join("m", M, far()).unwrap_err();
        assert_eq!(full.last_refusal, Some(r));
        // Another model's line is its own.
        assert!(q.join("n", M, far()).is_ok());
    }

    #[tokio::test]
    async fn a_waiter_whose_deadline_comes_before_the_heads_wake_leaves_at_once() {
        let q = leaked(10);
        let a = q.join("m", M, far()).unwrap();
        let short = Instant::now() + Duration::from_secs(5);
        let b = q.join("m", M, short).unwrap();
        let c = q.join("m", M, far()).unwrap();
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
        let q = Queues::new(10);
        let _a = q.join("m", M, far()).unwrap();
        let b = q
            .join("m", M, Instant::now() + Duration::from_secs(2))
            .unwrap();
        assert!(matches!(b.turn().await, Turn::TimedOut(None)));
        drop(b);
        assert_eq!(q.waiting(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn the_bell_wakes_a_sleeping_head_early() {
        let q = Arc::new(Queues::new(10));
        let q2 = q.clone();
        let slept = tokio::spawn(async move {
            let a = q2.join("m", M, far()).unwrap();
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
}
