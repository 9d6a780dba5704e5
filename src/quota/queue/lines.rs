//! The lines' storage: shared lines by quota family and model, pinned requests' lines by
//! project too, what each client's waiters hold, and one line's waiters with what its head
//! learned (when it wakes, its last refusal, the line's pace).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::fair::Forecast;
use super::rules::{Pace, starts_in_time};
use super::{Lane, Refusal};
use crate::route::QuotaFamily;

/// A line's key, owned (as a ticket keeps it).
#[derive(Debug, Clone)]
pub(super) struct LineKey {
    pub(super) model: Arc<str>,
    pub(super) family: QuotaFamily,
    pub(super) project: Option<Arc<str>>,
}

impl LineKey {
    pub(super) fn lane(&self) -> Lane<'_> {
        Lane {
            model: &self.model,
            family: self.family,
            project: self.project.as_deref(),
        }
    }
}

/// Lines by family, then by model: looked up by the request's `&str` model, with no
/// allocation.
pub(super) type ByModel = HashMap<QuotaFamily, HashMap<Arc<str>, Line>>;

/// What one client's waiters hold.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Held {
    pub(super) waiters: usize,
    pub(super) bytes: u64,
}

/// Every line, and what their waiters hold, under one lock.
#[derive(Debug, Default)]
pub(super) struct Lines {
    /// Lines any project may serve, by model.
    pub(super) shared: ByModel,
    /// Lines of pinned requests, by project then model.
    pub(super) pinned: HashMap<Arc<str>, ByModel>,
    /// Lines in both maps.
    pub(super) count: usize,
    /// Body bytes held by all waiters.
    pub(super) bytes: u64,
    /// Per client, while it has waiters.
    pub(super) clients: HashMap<u32, Held>,
}

impl Lines {
    pub(super) fn by_model(&self, project: Option<&str>) -> Option<&ByModel> {
        match project {
            None => Some(&self.shared),
            Some(p) => self.pinned.get(p),
        }
    }

    pub(super) fn get(&self, lane: Lane<'_>) -> Option<&Line> {
        self.by_model(lane.project)?
            .get(&lane.family)?
            .get(lane.model)
    }

    pub(super) fn get_mut(&mut self, lane: Lane<'_>) -> Option<&mut Line> {
        let by = match lane.project {
            None => &mut self.shared,
            Some(p) => self.pinned.get_mut(p)?,
        };
        by.get_mut(&lane.family)?.get_mut(lane.model)
    }

    /// The line of `key`, made if missing.
    pub(super) fn entry(&mut self, key: &LineKey) -> &mut Line {
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
            recent: VecDeque::new(),
            recent_who: VecDeque::new(),
            joins: VecDeque::new(),
            born: Instant::now(),
        })
    }

    pub(super) fn remove(&mut self, lane: Lane<'_>) {
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

    pub(super) fn iter(
        &self,
    ) -> impl Iterator<Item = (Option<&Arc<str>>, &Arc<str>, QuotaFamily, &Line)> {
        let shared = std::iter::once((None, &self.shared));
        let pinned = self.pinned.iter().map(|(p, by)| (Some(p), by));
        shared.chain(pinned).flat_map(|(p, by)| {
            by.iter()
                .flat_map(move |(f, m)| m.iter().map(move |(model, line)| (p, model, *f, line)))
        })
    }
}

#[derive(Debug)]
pub(super) struct Line {
    /// In fair order (see [`super::fair`]): the front is the head.
    pub(super) waiters: VecDeque<Waiter>,
    pub(super) next_seq: u64,
    /// Rung when capacity may have freed before the head's predicted moment (admin reset).
    pub(super) bell: Arc<Notify>,
    /// When the head will ask the store again, while it sleeps.
    pub(super) head_wake: Option<Instant>,
    /// The last refusal the head was given: what a request refused without asking is told.
    pub(super) last_refusal: Option<Refusal>,
    /// How fast the line can move, as its last newcomer's candidates said.
    pub(super) pace: Option<Pace>,
    /// When this line's heads were admitted in the last window, oldest first (at most
    /// [`RECENT_MAX`]): the slots they took free a window later (see [`Pace::earliest_after`]).
    pub(super) recent: VecDeque<Instant>,
    /// Who they were (client, weight), in step with `recent`: who is expected to keep asking.
    pub(super) recent_who: VecDeque<(u32, u32)>,
    /// Who joined the line in the last window (when, client, weight; at most [`RECENT_MAX`]):
    /// while a line exists every request of its lane joins it, so this is what each client
    /// sends, known from the line's first moment, where `recent` starts empty (the slots taken
    /// before the line formed were taken without it).
    pub(super) joins: VecDeque<(Instant, u32, u32)>,
    /// When the line formed: the span its `joins` cover until it is a window old.
    pub(super) born: Instant,
}

/// Most admissions a line remembers (a window's worth of its pace, at most this).
pub(super) const RECENT_MAX: usize = 4096;

impl Line {
    /// The earliest a waiter with `position` admissions before it (0: the head) can be
    /// admitted, if the head's wake is known; `Some(None)`: never within any allowance.
    pub(super) fn earliest(&self, position: usize, pace: Option<Pace>) -> Option<Option<Instant>> {
        let wake = self.head_wake?;
        Some(match pace.or(self.pace) {
            Some(p) => p.earliest_after(wake, &self.recent, position),
            None => Some(wake),
        })
    }

    /// The head was admitted: remember when, and whose it was, for a window.
    pub(super) fn note_admitted(&mut self, client: u32, weight: u32, now: Instant) {
        let Some(pace) = self.pace else {
            return;
        };
        let keep = usize::try_from(pace.per_window)
            .unwrap_or(RECENT_MAX)
            .clamp(1, RECENT_MAX);
        self.recent.push_back(now);
        self.recent_who.push_back((client, weight));
        while self.recent.len() > keep
            || self
                .recent
                .front()
                .is_some_and(|t| now.saturating_duration_since(*t) >= pace.window)
        {
            self.recent.pop_front();
            self.recent_who.pop_front();
        }
    }

    /// A request of `client` joined: remember it for a window.
    pub(super) fn note_join(&mut self, client: u32, weight: u32, now: Instant) {
        let window = self.pace.map_or(Duration::ZERO, |p| p.window);
        self.joins.push_back((now, client, weight));
        while self.joins.len() > RECENT_MAX
            || self
                .joins
                .front()
                .is_some_and(|(t, _, _)| now.saturating_duration_since(*t) >= window)
        {
            self.joins.pop_front();
        }
    }

    /// Admissions before a waiter of `client` with `tag`, `before` of them waiting now: what
    /// other clients send before its turn comes, found by asking again with the later turn
    /// (it only grows; a few rounds settle it).
    pub(super) fn ahead(
        &self,
        forecast: &Forecast,
        (before, client, tag): (usize, u32, u64),
        pace: Option<Pace>,
        now: Instant,
    ) -> usize {
        let mut ahead = before;
        for _ in 0..4 {
            let Some(Some(at)) = self.earliest(ahead, pace) else {
                return ahead;
            };
            let next = forecast.ahead(before, client, tag, at.saturating_duration_since(now));
            if next <= ahead {
                break;
            }
            ahead = next;
        }
        ahead
    }

    /// Wake the waiters from `from` on that can no longer be admitted within their allowance
    /// (their turn then says so), by their place in the fair order.
    pub(super) fn tell_hopeless(&self, from: usize) {
        let now = Instant::now();
        let forecast = Forecast::of(self, now);
        for (pos, w) in self.waiters.iter().enumerate().skip(from) {
            let ahead = self.ahead(&forecast, (pos, w.client, w.tag), None, now);
            if self.hopeless(ahead, w.deadline, None) {
                w.turn.notify_one();
            }
        }
    }

    /// Whether a waiter at `position` with allowance to `deadline` cannot be admitted in time.
    pub(super) fn hopeless(&self, position: usize, deadline: Instant, pace: Option<Pace>) -> bool {
        match self.earliest(position, pace) {
            None => false,
            Some(None) => true,
            Some(Some(at)) => !starts_in_time(at, deadline),
        }
    }
}

#[derive(Debug)]
pub(super) struct Waiter {
    pub(super) seq: u64,
    /// Its client (the ledger's id) and its place in the fair order (see [`super::fair`]).
    pub(super) client: u32,
    pub(super) tag: u64,
    pub(super) since: Instant,
    pub(super) deadline: Instant,
    /// Notified when this waiter may have reached the front, or its hope has gone.
    pub(super) turn: Arc<Notify>,
}
