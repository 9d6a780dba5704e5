//! The alert state machine: which alerts fire now, the transitions between evaluations
//! (firing, a rise in severity, repeat, resolved), the open group of transitions waiting out
//! `group_wait`, and the last 100 transitions.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use super::{Active, AlertView, Severity, rfc3339};

/// Transitions kept for the API.
pub const RECENT: usize = 100;

/// What changed for one alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// New, or risen in severity.
    Firing,
    /// Still firing, `repeat_interval` after it was last sent.
    Repeat,
    /// Lowered in severity: recorded (so a later rise is news again), never sent.
    Lowered,
    Resolved,
}

/// One transition, ready to claim and send.
#[derive(Debug, Clone)]
pub struct Transition {
    pub kind: Kind,
    pub alert: AlertView,
    /// A firing for an alert never sent before (new in this group): resolved inside the group,
    /// nothing goes out for it.
    pub new: bool,
}

impl Transition {
    /// The state this transition leaves the alert in, as replicas agree on it
    /// (`firing:warning`, `firing:critical`, `resolved`).
    pub fn state(&self) -> String {
        match self.kind {
            Kind::Resolved => "resolved".to_string(),
            _ => format!("firing:{}", self.alert.severity.as_str()),
        }
    }
}

struct Tracked {
    view: AlertView,
    /// When it was last sent (by this replica or, as far as it knows, another).
    notified: Option<Instant>,
}

/// Firing alerts, the open group and the recent transitions.
#[derive(Default)]
pub struct Engine {
    firing: BTreeMap<String, Tracked>,
    recent: VecDeque<AlertView>,
    pending: BTreeMap<String, Transition>,
    group_opened: Option<Instant>,
    /// When the last group with something to send went out: the next waits `group_interval`.
    last_sent: Option<Instant>,
}

impl Engine {
    /// Compare what fires now with what fired, and queue the transitions.
    pub fn observe(&mut self, now: Instant, active: Vec<Active>, repeat: Duration) {
        let stamp = rfc3339(chrono::Utc::now());
        let mut seen = std::collections::BTreeSet::new();
        for a in active {
            let fp = a.fingerprint();
            seen.insert(fp.clone());
            match self.firing.get_mut(&fp) {
                None => {
                    let view = a.view(fp.clone(), stamp.clone());
                    self.firing.insert(
                        fp.clone(),
                        Tracked {
                            view: view.clone(),
                            notified: None,
                        },
                    );
                    self.queue(now, fp, Kind::Firing, view);
                }
                Some(t) => {
                    let was = t.view.severity;
                    t.view.summary = a.summary;
                    t.view.severity = a.severity;
                    let view = t.view.clone();
                    if a.severity > was {
                        self.queue(now, fp, Kind::Firing, view);
                    } else if a.severity < was {
                        self.queue(now, fp, Kind::Lowered, view);
                    } else if t
                        .notified
                        .is_some_and(|at| now.duration_since(at) >= repeat)
                        && !self.pending.contains_key(&fp)
                    {
                        t.notified = Some(now);
                        self.queue(now, fp, Kind::Repeat, view);
                    }
                }
            }
        }
        let gone: Vec<String> = self
            .firing
            .keys()
            .filter(|fp| !seen.contains(*fp))
            .cloned()
            .collect();
        for fp in gone {
            if let Some(t) = self.firing.remove(&fp) {
                let mut view = t.view;
                view.status = "resolved";
                view.resolved_at = Some(stamp.clone());
                self.queue(now, fp, Kind::Resolved, view);
            }
        }
    }

    fn queue(&mut self, now: Instant, fp: String, kind: Kind, view: AlertView) {
        if kind != Kind::Repeat && kind != Kind::Lowered {
            if self.recent.len() == RECENT {
                self.recent.pop_front();
            }
            self.recent.push_back(view.clone());
        }
        // Within one group the latest word on an alert wins, except that a firing not sent yet
        // stays a firing (with the latest severity) when the severity drops before the group
        // goes out: a Lowered is never sent, and the alert would never be announced. An alert
        // that fired new and resolved inside the group was never sent, so nothing goes out.
        let pending_firing = self.pending.get(&fp).filter(|p| p.kind == Kind::Firing);
        let new_in_group = pending_firing.is_some_and(|p| p.new);
        let pending_firing = pending_firing.is_some();
        match kind {
            Kind::Resolved if new_in_group => {
                self.pending.remove(&fp);
            }
            Kind::Lowered if pending_firing => {
                let new = new_in_group;
                self.pending.insert(
                    fp,
                    Transition {
                        kind: Kind::Firing,
                        alert: view,
                        new,
                    },
                );
            }
            _ => {
                let new = kind == Kind::Firing
                    && self.firing.get(&fp).is_some_and(|t| t.notified.is_none());
                self.pending.insert(
                    fp,
                    Transition {
                        kind,
                        alert: view,
                        new,
                    },
                );
            }
        }
        self.group_opened.get_or_insert(now);
    }

    /// The open group once `group_wait` has passed since its first transition and
    /// `group_interval` since the last group sent (as Alertmanager's `group_wait` and
    /// `group_interval`: a burst whose transitions outlast one group wait goes out in one more
    /// message, not one per evaluation); `sending`: whether it goes anywhere (with no channel,
    /// nothing is marked notified). The group's alerts count as notified for the repeat
    /// interval (by this replica or another that won the claim); `last_notified_at` waits for
    /// [`Engine::notified`].
    pub fn due(
        &mut self,
        now: Instant,
        (group_wait, group_interval): (Duration, Duration),
        sending: bool,
    ) -> Option<Vec<Transition>> {
        let opened = self.group_opened?;
        if now.duration_since(opened) < group_wait {
            return None;
        }
        if self
            .last_sent
            .is_some_and(|at| now.duration_since(at) < group_interval)
        {
            return None;
        }
        self.group_opened = None;
        let group: Vec<Transition> = std::mem::take(&mut self.pending).into_values().collect();
        if sending && group.iter().any(|t| t.kind != Kind::Lowered) {
            self.last_sent = Some(now);
        }
        for t in &group {
            if t.kind == Kind::Lowered || !sending {
                continue;
            }
            if let Some(f) = self.firing.get_mut(&t.alert.fingerprint) {
                f.notified = Some(now);
            }
        }
        (!group.is_empty()).then_some(group)
    }

    /// The transitions `sent` (claimed by this replica and accepted by a channel) went out at
    /// `at`: stamp `last_notified_at` on the firing alert and on the recent transition each
    /// one is (a repeat is none: it stamps the firing alert only).
    pub fn notified(&mut self, sent: &[Transition], at: &str) {
        for t in sent {
            let a = &t.alert;
            if let Some(f) = self.firing.get_mut(&a.fingerprint)
                && a.status == "firing"
            {
                f.view.last_notified_at = Some(at.to_string());
            }
            if t.kind == Kind::Repeat {
                continue;
            }
            if let Some(r) = self
                .recent
                .iter_mut()
                .rev()
                .find(|r| r.fingerprint == a.fingerprint && r.status == a.status)
            {
                r.last_notified_at = Some(at.to_string());
            }
        }
    }

    /// Alerts firing now, most severe first.
    pub fn firing(&self) -> Vec<AlertView> {
        let mut v: Vec<AlertView> = self.firing.values().map(|t| t.view.clone()).collect();
        v.sort_by(|a, b| b.severity.cmp(&a.severity).then(a.rule.cmp(b.rule)));
        v
    }

    /// The fingerprints of the firing alerts already sent (by this replica or, as far as it
    /// knows, another) whose rule passes `shared`: the states this replica vouches for.
    pub fn notified_firing(&self, shared: impl Fn(&str) -> bool) -> Vec<String> {
        self.firing
            .iter()
            .filter(|(_, t)| t.notified.is_some() && shared(t.view.rule))
            .map(|(fp, _)| fp.clone())
            .collect()
    }

    pub fn firing_count(&self) -> usize {
        self.firing.len()
    }

    /// The last [`RECENT`] transitions, newest first.
    pub fn recent(&self) -> Vec<AlertView> {
        self.recent.iter().rev().cloned().collect()
    }

    /// How many of the firing alerts are critical.
    pub fn critical_count(&self) -> usize {
        self.firing
            .values()
            .filter(|t| t.view.severity == Severity::Critical)
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn minute(sev: Severity) -> Active {
        Active {
            rule: "minute_usage_high",
            severity: sev,
            labels: BTreeMap::from([("model", "m".to_string()), ("project", "p".to_string())]),
            summary: "m: minute usage high".into(),
        }
    }

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn a_rise_in_severity_is_sent_and_a_fall_is_only_recorded() {
        let mut e = Engine::default();
        let t0 = Instant::now();
        e.observe(t0, vec![minute(Severity::Warning)], HOUR);
        let g = e.due(t0, (Duration::ZERO, Duration::ZERO), true).unwrap();
        assert_eq!((g.len(), g[0].kind), (1, Kind::Firing));
        assert_eq!(g[0].state(), "firing:warning");
        e.observe(t0, vec![minute(Severity::Warning)], HOUR);
        assert!(
            e.due(t0, (Duration::ZERO, Duration::ZERO), true).is_none(),
            "no change, nothing to send"
        );
        e.observe(t0, vec![minute(Severity::Critical)], HOUR);
        let g = e.due(t0, (Duration::ZERO, Duration::ZERO), true).unwrap();
        assert_eq!(g[0].state(), "firing:critical");
        e.observe(t0, vec![minute(Severity::Warning)], HOUR);
        let g = e.due(t0, (Duration::ZERO, Duration::ZERO), true).unwrap();
        assert_eq!(g[0].kind, Kind::Lowered);
        e.observe(t0, vec![], HOUR);
        let g = e.due(t0, (Duration::ZERO, Duration::ZERO), true).unwrap();
        assert_eq!(g[0].kind, Kind::Resolved);
        assert_eq!(e.firing_count(), 0);
        // firing, critical, resolved: the lowering is not a transition people see.
        assert_eq!(e.recent().len(), 3);
    }

    #[test]
    fn flapping_inside_the_group_wait_leaves_one_transition() {
        let mut e = Engine::default();
        let t0 = Instant::now();
        let wait = Duration::from_secs(10);
        for _ in 0..3 {
            e.observe(t0, vec![minute(Severity::Warning)], HOUR);
            e.observe(t0, vec![], HOUR);
        }
        e.observe(t0, vec![minute(Severity::Warning)], HOUR);
        assert!(
            e.due(t0 + Duration::from_secs(5), (wait, Duration::ZERO), true)
                .is_none()
        );
        let g = e.due(t0 + wait, (wait, Duration::ZERO), true).unwrap();
        assert_eq!(g.len(), 1);
        assert_eq!(g[0].kind, Kind::Firing);
    }

    #[test]
    fn transitions_after_a_sent_group_wait_out_the_group_interval_and_go_out_together() {
        let mut e = Engine::default();
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let grouping = (s(10), s(60));
        let other = |sev| Active {
            rule: "all_keys_exhausted",
            severity: sev,
            labels: BTreeMap::from([("model", "*".to_string())]),
            summary: "every key is disabled or cooling down".into(),
        };
        e.observe(t0, vec![minute(Severity::Warning)], HOUR);
        assert_eq!(e.due(t0 + s(10), grouping, true).unwrap().len(), 1);
        // Each later evaluation brings news: none goes out before 60 s after the first.
        e.observe(t0 + s(20), vec![minute(Severity::Critical)], HOUR);
        assert!(e.due(t0 + s(30), grouping, true).is_none());
        let both = vec![minute(Severity::Critical), other(Severity::Critical)];
        e.observe(t0 + s(40), both, HOUR);
        assert!(e.due(t0 + s(69), grouping, true).is_none());
        let g = e.due(t0 + s(70), grouping, true).unwrap();
        let mut rules: Vec<_> = g.iter().map(|t| (t.alert.rule, t.kind)).collect();
        rules.sort_by_key(|r| r.0);
        assert_eq!(
            rules,
            [
                ("all_keys_exhausted", Kind::Firing),
                ("minute_usage_high", Kind::Firing)
            ]
        );
        // Without a group interval the second group goes out at its group wait.
        let mut e = Engine::default();
        e.observe(t0, vec![minute(Severity::Warning)], HOUR);
        e.due(t0 + s(10), (s(10), Duration::ZERO), true).unwrap();
        e.observe(t0 + s(20), vec![minute(Severity::Critical)], HOUR);
        assert!(e.due(t0 + s(30), (s(10), Duration::ZERO), true).is_some());
    }

    #[test]
    fn a_firing_alert_repeats_after_the_interval_only() {
        let mut e = Engine::default();
        let t0 = Instant::now();
        e.observe(t0, vec![minute(Severity::Warning)], HOUR);
        e.due(t0, (Duration::ZERO, Duration::ZERO), true).unwrap();
        e.observe(t0 + HOUR / 2, vec![minute(Severity::Warning)], HOUR);
        assert!(
            e.due(t0 + HOUR / 2, (Duration::ZERO, Duration::ZERO), true)
                .is_none()
        );
        e.observe(t0 + HOUR, vec![minute(Severity::Warning)], HOUR);
        let g = e
            .due(t0 + HOUR, (Duration::ZERO, Duration::ZERO), true)
            .unwrap();
        assert_eq!(g[0].kind, Kind::Repeat);
    }

    #[test]
    fn a_new_alert_lowered_before_the_group_goes_out_is_still_announced() {
        let mut e = Engine::default();
        let t0 = Instant::now();
        let wait = Duration::from_secs(10);
        e.observe(t0, vec![minute(Severity::Critical)], HOUR);
        e.observe(t0 + wait / 2, vec![minute(Severity::Warning)], HOUR);
        let g = e.due(t0 + wait, (wait, Duration::ZERO), true).unwrap();
        assert_eq!(g.len(), 1);
        assert_eq!(g[0].kind, Kind::Firing);
        assert_eq!(g[0].state(), "firing:warning", "with the latest severity");
        // Resolved in a later group: sent, it was announced.
        e.observe(t0 + wait * 2, vec![], HOUR);
        let g = e.due(t0 + wait * 3, (wait, Duration::ZERO), true).unwrap();
        assert_eq!(g[0].kind, Kind::Resolved);
    }

    #[test]
    fn a_sent_alert_that_rises_and_resolves_inside_a_group_still_resolves() {
        let mut e = Engine::default();
        let t0 = Instant::now();
        e.observe(t0, vec![minute(Severity::Warning)], HOUR);
        e.due(t0, (Duration::ZERO, Duration::ZERO), true).unwrap();
        e.observe(t0, vec![minute(Severity::Critical)], HOUR);
        e.observe(t0, vec![], HOUR);
        let g = e.due(t0, (Duration::ZERO, Duration::ZERO), true).unwrap();
        assert_eq!(g[0].kind, Kind::Resolved);
    }

    #[test]
    fn last_notified_at_is_stamped_only_once_a_send_is_confirmed() {
        let mut e = Engine::default();
        let t0 = Instant::now();
        e.observe(t0, vec![minute(Severity::Warning)], HOUR);
        let g = e.due(t0, (Duration::ZERO, Duration::ZERO), true).unwrap();
        assert_eq!(
            e.firing()[0].last_notified_at,
            None,
            "claimed or sent elsewhere"
        );
        assert_eq!(e.recent()[0].last_notified_at, None);
        e.notified(&g, "2026-11-29T02:00:00Z");
        let at = Some("2026-11-29T02:00:00Z".to_string());
        assert_eq!(e.firing()[0].last_notified_at, at);
        assert_eq!(e.recent()[0].last_notified_at, at);
        e.observe(t0, vec![], HOUR);
        let g = e.due(t0, (Duration::ZERO, Duration::ZERO), true).unwrap();
        e.notified(&g, "2026-11-29T02:05:00Z");
        let recent = e.recent();
        assert_eq!(recent[0].status, "resolved");
        assert_eq!(
            recent[0].last_notified_at.as_deref(),
            Some("2026-11-29T02:05:00Z")
        );
        assert_eq!(recent[1].last_notified_at, at, "the firing keeps its own");
    }

    #[test]
    fn recent_transitions_are_capped() {
        let mut e = Engine::default();
        let t0 = Instant::now();
        for _ in 0..(RECENT + 20) {
            e.observe(t0, vec![minute(Severity::Warning)], HOUR);
            e.observe(t0, vec![], HOUR);
        }
        assert_eq!(e.recent().len(), RECENT);
    }
}
