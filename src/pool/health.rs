//! Key health as this replica sees it: keys it saw die (until the store, the truth, is asked
//! again), the growing cooldown of 429s without details, IP-level throttle detection, the
//! growing hold of projects at Google's spend-based limits, and the run of upstream failures. By key id and project, so one record serves every configuration
//! generation (a reload shares it, and requests still on the old one keep feeding it).

use parking_lot::Mutex;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// How long a key this replica saw die is skipped for free calls without asking the store.
const DEAD_MEMORY: Duration = Duration::from_secs(60);
/// Bare 429s further apart than this start the backoff again.
const BARE_429_RESET: Duration = Duration::from_secs(60);
/// Bare 429s from most projects within this window mean an IP-level throttle.
const THROTTLE_WINDOW: Duration = Duration::from_secs(10);
/// Recent bare 429s remembered by model: enough to tell one model from several, and bounded
/// whatever model names clients send.
const BARE_MODELS_KEPT: usize = 16;
/// Models remembered per project from its recent bare 429s: two tell a project-wide limit.
const BARE_MODELS_PER_PROJECT: usize = 4;
/// A project at a spend-based limit is held this long first, doubling while it repeats...
const SPEND_HOLD_FIRST_MS: u64 = 60_000;
/// ...up to an hour (a request on the project that succeeds starts again from the first).
const SPEND_HOLD_MAX_MS: u64 = 3_600_000;

/// A model that got a bare 429, and when.
type Recent = (Box<str>, Instant);

/// How far an IP-level throttle's backoff reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Throttle {
    /// The bare 429s all named one model (a preview model out of capacity looks like this):
    /// hold that model on every project, and let the others be served.
    Model,
    /// Bare 429s on two or more models within the window: the address itself is throttled,
    /// hold every model on every project.
    AllModels,
}
/// What this replica knows of its keys' health (by key id and project).
#[derive(Debug)]
pub struct KeyHealth {
    /// Keys seen dead, by key id, with the reason and when.
    dead: Mutex<HashMap<Arc<str>, (String, Instant)>>,
    /// Consecutive bare 429s per project and when the last one came.
    bare_429: Mutex<HashMap<String, (u32, Instant)>>,
    /// The models of the last bare 429s (any project), newest last, at most
    /// `BARE_MODELS_KEPT`.
    bare_models: Mutex<VecDeque<(Box<str>, Instant)>>,
    /// Models of each project's recent bare 429s (at most `BARE_MODELS_PER_PROJECT`).
    bare_by_project: Mutex<HashMap<String, Vec<Recent>>>,
    /// Holds in a row per project at a spend-based limit; a success on the project clears it.
    spend_holds: Mutex<HashMap<String, u32>>,
    /// Whether `spend_holds` has any entry: a success looks at the map only then.
    any_spend_hold: AtomicBool,
    /// Distinct projects in the pool.
    projects: AtomicUsize,
    /// Upstream 5xx and network failures in a row (any key); a success resets it.
    failures: AtomicU32,
    /// Consecutive bare 429s per (Vertex entry, model), apart from the pool-wide evidence.
    vertex_429: Mutex<HashMap<String, (u32, Instant)>>,
}

impl KeyHealth {
    pub fn new(projects: usize) -> KeyHealth {
        KeyHealth {
            dead: Mutex::new(HashMap::new()),
            bare_429: Mutex::new(HashMap::new()),
            bare_models: Mutex::new(VecDeque::new()),
            bare_by_project: Mutex::new(HashMap::new()),
            spend_holds: Mutex::new(HashMap::new()),
            any_spend_hold: AtomicBool::new(false),
            projects: AtomicUsize::new(projects),
            failures: AtomicU32::new(0),
            vertex_429: Mutex::new(HashMap::new()),
        }
    }

    /// A reloaded pool's projects: the throttle detection counts these, and forgets the bare
    /// 429s of projects no longer pooled.
    pub fn repool(&self, projects: &std::collections::HashSet<&str>) {
        self.projects.store(projects.len(), Ordering::Relaxed);
        self.bare_429
            .lock()
            .retain(|p, _| projects.contains(p.as_str()));
        self.bare_by_project
            .lock()
            .retain(|p, _| projects.contains(p.as_str()));
        self.spend_holds
            .lock()
            .retain(|p, _| projects.contains(p.as_str()));
    }

    /// How long to hold `project` at a spend-based limit now: 1 min, doubling with each hold
    /// in a row, at most 1 h.
    pub fn spend_hold_ms(&self, project: &str) -> u64 {
        let mut holds = self.spend_holds.lock();
        let n = holds.entry(project.to_string()).or_insert(0);
        let ms = (SPEND_HOLD_FIRST_MS << (*n).min(16)).min(SPEND_HOLD_MAX_MS);
        *n = n.saturating_add(1);
        self.any_spend_hold.store(true, Ordering::Relaxed);
        ms
    }

    /// A request on `project` succeeded: its spend-based hold, if any, starts again from the
    /// first step next time. (Cheap when no project was held.)
    pub fn project_ok(&self, project: &str) {
        if !self.any_spend_hold.load(Ordering::Relaxed) {
            return;
        }
        let mut holds = self.spend_holds.lock();
        holds.remove(project);
        if holds.is_empty() {
            self.any_spend_hold.store(false, Ordering::Relaxed);
        }
    }

    /// A bare 429 on (`project`, `model`): how many distinct models got one on that project
    /// within the last minute. Two or more: the limit is the project's, not one model's.
    pub fn bare_429_models_on(&self, project: &str, model: &str) -> usize {
        let mut by = self.bare_by_project.lock();
        let now = Instant::now();
        let recent = by.entry(project.to_string()).or_default();
        recent.retain(|(m, at)| now.duration_since(*at) <= BARE_429_RESET && &**m != model);
        if recent.len() >= BARE_MODELS_PER_PROJECT {
            recent.remove(0);
        }
        recent.push((model.into(), now));
        recent.len()
    }

    /// Remember that key `kid` was disabled.
    pub fn saw_dead(&self, kid: &Arc<str>, reason: &str) {
        self.dead
            .lock()
            .insert(kid.clone(), (reason.to_string(), Instant::now()));
    }

    /// Whether key `kid` was seen dead within the last minute (the store stays the truth: an
    /// admin may re-enable a key through another replica).
    pub fn recently_dead(&self, kid: &str) -> bool {
        self.dead
            .lock()
            .get(kid)
            .is_some_and(|(_, at)| at.elapsed() < DEAD_MEMORY)
    }

    /// Forget what was seen of these keys (an admin re-enabled them).
    pub fn forget_dead(&self, kids: &[&str]) {
        let mut dead = self.dead.lock();
        for k in kids {
            dead.remove(*k);
        }
    }

    /// Cooldown for a 429 without details: 1 s, doubling while they repeat (within a minute),
    /// at most 60 s.
    pub fn bare_429_backoff(&self, project: &str) -> u64 {
        let now = Instant::now();
        step_backoff(&mut self.bare_429.lock(), project.to_string(), now)
    }

    /// Cooldown for a bare 429 from a Vertex entry (Dynamic Shared Quota) on `model`: as
    /// [`Self::bare_429_backoff`], per (entry, model), and no evidence of a pool-wide
    /// throttle (shared capacity running out is Vertex's normal answer).
    pub fn vertex_429_backoff(&self, project: &str, model: &str) -> u64 {
        let mut m = self.vertex_429.lock();
        let now = Instant::now();
        // Models are the client's choice: bounded, the stale ones dropped first.
        if m.len() >= 4096 {
            m.retain(|_, (_, at)| now.duration_since(*at) <= BARE_429_RESET);
            if m.len() >= 4096 {
                m.clear();
            }
        }
        step_backoff(&mut m, format!("{project}/{model}"), now)
    }

    /// True when most of the pool's projects got a 429 without details in the last 10 s: Google
    /// is throttling this proxy's address, not one project, so rotating keys only burns them.
    pub fn throttled_globally(&self) -> bool {
        let recent = self
            .bare_429
            .lock()
            .values()
            .filter(|(_, at)| at.elapsed() < THROTTLE_WINDOW)
            .count();
        recent >= 2 && recent * 2 > self.projects.load(Ordering::Relaxed)
    }

    /// A 429 without details named `model` (with or without a retry delay).
    pub fn saw_bare_429_on(&self, model: &str) {
        let mut recent = self.bare_models.lock();
        let now = Instant::now();
        while recent
            .front()
            .is_some_and(|(_, at)| now.duration_since(*at) >= THROTTLE_WINDOW)
        {
            recent.pop_front();
        }
        // One entry per model is enough evidence: refresh it rather than fill the deque.
        recent.retain(|(m, _)| &**m != model);
        if recent.len() >= BARE_MODELS_KEPT {
            recent.pop_front();
        }
        recent.push_back((model.into(), now));
    }

    /// Whether the pool is throttled as a whole (see [`throttled_globally`]) and how far the
    /// backoff reaches: the model first, every model only when bare 429s named two or more
    /// models within the window.
    ///
    /// [`throttled_globally`]: KeyHealth::throttled_globally
    pub fn throttle(&self) -> Option<Throttle> {
        if !self.throttled_globally() {
            return None;
        }
        let models = self
            .bare_models
            .lock()
            .iter()
            .filter(|(_, at)| at.elapsed() < THROTTLE_WINDOW)
            .count();
        Some(if models >= 2 {
            Throttle::AllModels
        } else {
            Throttle::Model
        })
    }

    /// One more upstream failure (5xx, network) in a row.
    pub fn failure(&self) {
        self.failures.fetch_add(1, Ordering::Relaxed);
    }

    /// An upstream success ends the run of failures.
    pub fn success(&self) {
        self.failures.store(0, Ordering::Relaxed);
    }

    /// Upstream failures in a row.
    pub fn failures(&self) -> u32 {
        self.failures.load(Ordering::Relaxed)
    }
}

/// One more bare 429 at `key`: 1 s, doubling while they repeat within [`BARE_429_RESET`], at
/// most 60 s.
fn step_backoff(m: &mut HashMap<String, (u32, Instant)>, key: String, now: Instant) -> u64 {
    let e = m.entry(key).or_insert((0, now));
    if now.duration_since(e.1) > BARE_429_RESET {
        e.0 = 0;
    }
    e.0 = (e.0 + 1).min(7);
    e.1 = now;
    (1000u64 << (e.0 - 1)).min(60_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_429s_double_the_hold_up_to_a_minute() {
        let h = KeyHealth::new(3);
        let holds: Vec<u64> = (0..8).map(|_| h.bare_429_backoff("p")).collect();
        assert_eq!(holds, [1000, 2000, 4000, 8000, 16000, 32000, 60000, 60000]);
    }

    #[test]
    fn most_projects_throttled_at_once_is_an_address_throttle() {
        let h = KeyHealth::new(3);
        h.bare_429_backoff("a");
        assert!(!h.throttled_globally(), "one project is not the address");
        h.bare_429_backoff("b");
        assert!(h.throttled_globally());
    }

    #[test]
    fn an_address_throttle_holds_one_model_until_bare_429s_name_a_second() {
        let h = KeyHealth::new(3);
        assert_eq!(h.throttle(), None);
        h.saw_bare_429_on("gemini-preview");
        h.bare_429_backoff("a");
        h.saw_bare_429_on("gemini-preview");
        h.bare_429_backoff("b");
        assert_eq!(h.throttle(), Some(Throttle::Model), "one model's 429s");
        h.saw_bare_429_on("gemini-2.5-flash");
        assert_eq!(h.throttle(), Some(Throttle::AllModels), "two models' 429s");
    }

    #[test]
    fn the_models_of_bare_429s_are_bounded_whatever_names_clients_send() {
        let h = KeyHealth::new(1);
        for i in 0..1000 {
            h.saw_bare_429_on(&format!("made-up-{i}"));
        }
        assert_eq!(h.bare_models.lock().len(), BARE_MODELS_KEPT);
    }

    #[test]
    fn a_reloaded_pool_forgets_the_bare_429s_of_projects_it_no_longer_holds() {
        let h = KeyHealth::new(3);
        h.bare_429_backoff("a");
        h.bare_429_backoff("b");
        assert!(h.throttled_globally());
        // Now "a" alone, and "b" gone: one project of one is not the address either.
        h.repool(&["a"].into_iter().collect());
        assert!(!h.throttled_globally());
        assert_eq!(h.bare_429_backoff("a"), 2000, "a's run goes on");
        assert_eq!(h.bare_429_backoff("b"), 1000, "b's run starts again");
    }

    #[test]
    fn spend_holds_double_up_to_an_hour_and_a_success_starts_them_again() {
        let h = KeyHealth::new(2);
        let holds: Vec<u64> = (0..8).map(|_| h.spend_hold_ms("p")).collect();
        assert_eq!(
            holds,
            [
                60_000, 120_000, 240_000, 480_000, 960_000, 1_920_000, 3_600_000, 3_600_000
            ]
        );
        assert_eq!(h.spend_hold_ms("q"), 60_000, "per project");
        h.project_ok("q");
        h.project_ok("p");
        assert_eq!(h.spend_hold_ms("p"), 60_000);
    }

    #[test]
    fn bare_429s_on_two_models_of_a_project_tell_a_project_wide_limit() {
        let h = KeyHealth::new(2);
        assert_eq!(h.bare_429_models_on("p", "a"), 1);
        assert_eq!(h.bare_429_models_on("p", "a"), 1, "one model again");
        assert_eq!(h.bare_429_models_on("q", "b"), 1, "another project");
        assert_eq!(h.bare_429_models_on("p", "b"), 2);
        for i in 0..100 {
            h.bare_429_models_on("p", &format!("made-up-{i}"));
        }
        assert_eq!(
            h.bare_by_project.lock()["p"].len(),
            BARE_MODELS_PER_PROJECT,
            "bounded whatever models clients name"
        );
    }

    #[test]
    fn keys_seen_dead_are_remembered_until_forgotten() {
        let h = KeyHealth::new(1);
        let kid: Arc<str> = "k2".into();
        h.saw_dead(&kid, "API_KEY_INVALID");
        assert!(h.recently_dead("k2"));
        assert!(!h.recently_dead("k1"));
        h.forget_dead(&["k2"]);
        assert!(!h.recently_dead("k2"));
    }
}
