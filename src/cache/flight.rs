//! Single flight: of identical cacheable misses in flight at once, one (the leader) goes
//! upstream; the others wait for it, within their own deadline, and share its stored answer.
//! A leader that got no answer (its client gone, Google unreachable or silent) lets the next
//! one lead; one whose answer may not be stored (any error Google gave, a refused or oversized
//! answer) sends the others upstream on their own, at once.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::watch;
use tokio::time::Instant;

use super::store::Entry;

/// How a leader's flight ended.
#[derive(Debug, Clone)]
pub enum Landed {
    /// Its answer is stored: here it is.
    Stored(Arc<Entry>),
    /// Its answer may not be stored (an error from Google, a `SAFETY` stop, too large, ...):
    /// the others would get the same, so each goes on its own.
    Unstorable,
    /// No answer at all (cancelled, a transport failure, a cut stream): the next one leads.
    Failed,
}

type Tower = watch::Sender<Option<Landed>>;

/// The flights in progress, by cache key. Holds one entry per key being fetched, so it grows
/// with requests in flight, never with what was asked before.
#[derive(Debug, Default)]
pub struct Flights {
    map: Mutex<HashMap<[u8; 32], Arc<Tower>>>,
}

/// What joining a flight made of the caller.
pub enum Join {
    Lead(Lead),
    Follow(watch::Receiver<Option<Landed>>),
}

impl Flights {
    /// Lead the flight for `key`, or follow the one in progress.
    pub fn join(self: &Arc<Self>, key: [u8; 32]) -> Join {
        let mut map = self.map.lock();
        if let Some(tower) = map.get(&key) {
            return Join::Follow(tower.subscribe());
        }
        let tower = Arc::new(watch::channel(None).0);
        map.insert(key, tower.clone());
        Join::Lead(Lead {
            flights: self.clone(),
            key,
            tower,
            landed: false,
        })
    }

    /// Flights in progress.
    pub fn len(&self) -> usize {
        self.map.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The leader's side: lands once, with what it got; dropped unlanded it lands as failed.
pub struct Lead {
    flights: Arc<Flights>,
    key: [u8; 32],
    tower: Arc<Tower>,
    landed: bool,
}

impl Lead {
    pub fn land(mut self, how: Landed) {
        self.finish(how);
    }

    fn finish(&mut self, how: Landed) {
        if std::mem::replace(&mut self.landed, true) {
            return;
        }
        {
            let mut map = self.flights.map.lock();
            if map
                .get(&self.key)
                .is_some_and(|t| Arc::ptr_eq(t, &self.tower))
            {
                map.remove(&self.key);
            }
        }
        self.tower.send_replace(Some(how));
    }
}

impl Drop for Lead {
    fn drop(&mut self) {
        self.finish(Landed::Failed);
    }
}

/// Wait for the leader to land, until `deadline` (`None`: it did not land in time).
pub async fn wait(mut rx: watch::Receiver<Option<Landed>>, deadline: Instant) -> Option<Landed> {
    match tokio::time::timeout_at(deadline, rx.wait_for(Option::is_some)).await {
        Ok(Ok(v)) => v.clone(),
        // The leader's tower went without a word: as failed.
        Ok(Err(_)) => Some(Landed::Failed),
        Err(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn followers_get_the_leaders_landing_and_a_failed_leader_lets_the_next_lead() {
        let f = Arc::new(Flights::default());
        let Join::Lead(lead) = f.join([1; 32]) else {
            panic!("the first leads")
        };
        let Join::Follow(rx) = f.join([1; 32]) else {
            panic!("the second follows")
        };
        assert!(
            matches!(f.join([2; 32]), Join::Lead(_)),
            "another key leads"
        );
        drop(lead);
        let deadline = Instant::now() + std::time::Duration::from_secs(5);
        assert!(matches!(wait(rx, deadline).await, Some(Landed::Failed)));
        assert!(f.is_empty(), "a landed flight is gone");
        let Join::Lead(lead) = f.join([1; 32]) else {
            panic!("the next one leads")
        };
        let Join::Follow(rx) = f.join([1; 32]) else {
            panic!("follows")
        };
        lead.land(Landed::Unstorable);
        assert!(matches!(wait(rx, deadline).await, Some(Landed::Unstorable)));
    }
}
