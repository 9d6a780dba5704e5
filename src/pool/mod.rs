//! The key pool: pooled keys with their ids, masks, names and projects, turn-taking, the
//! admission candidates for a (model, quota family) with their limits (configured, lowered by
//! what Google reported), key health ([`health`]), key affinity ([`affinity`]) and the
//! projects' monthly spend caps ([`spend`]).

pub mod affinity;
pub mod health;
pub mod spend;

use parking_lot::RwLock;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::config::{LimitOverride, LimitsConfig, Order, PoolConfig, UpstreamConfig};
use crate::error::LimitKind;
use crate::quota::{Candidate, Strategy, limits};
use crate::route::QuotaFamily;
use crate::secret::Secret;
use crate::upstream::vertex::VertexEntry;

/// One pooled Gemini key.
#[derive(Debug)]
pub struct PooledKey {
    pub key: Secret,
    /// The key as the header it travels in (built once).
    pub headers: crate::upstream::KeyHeaders,
    /// First 16 hex digits of SHA-256 of the key: safe to store, log and label.
    pub kid: Arc<str>,
    /// `AIza...0001`: for people.
    pub masked: String,
    pub name: String,
    /// The Google project; a key configured without one is its own project, `key-<kid>`. A
    /// Vertex entry's is `PROJECT.LOCATION` (its quota is per region).
    pub project: Arc<str>,
    /// A Vertex AI entry (`None`: an AI Studio key).
    pub vertex: Option<Arc<VertexEntry>>,
    /// `masked` and `project` as span attributes, encoded at the first traced request.
    trace: std::sync::OnceLock<Arc<crate::telemetry::span::Preset>>,
}

impl PooledKey {
    /// The key's span attributes (`gqp.key`, its masked form; `gqp.project`), encoded once.
    pub fn trace_attributes(&self) -> Arc<crate::telemetry::span::Preset> {
        use crate::telemetry::span::{Attr, Preset, Value, attr};
        self.trace
            .get_or_init(|| {
                Arc::new(Preset::new(&[
                    Attr::new(attr::KEY, Value::text(&self.masked)),
                    Attr::new(attr::PROJECT, self.project.clone()),
                ]))
            })
            .clone()
    }
}

/// All pooled keys, in configuration order.
#[derive(Debug)]
pub struct Pool {
    pub keys: Vec<PooledKey>,
    pub strategy: Strategy,
    /// How AI Studio keys and Vertex entries share work.
    pub order: Order,
    /// Whether any entry is a Vertex one (else nothing on the request's way looks further).
    pub has_vertex: bool,
    /// Whether any entry is an AI Studio key (a pool of Vertex entries alone refuses what only
    /// AI Studio serves: [`crate::upstream::vertex::only`]).
    pub has_ai_studio: bool,
    limits: LimitsConfig,
    turn: AtomicU64,
    /// Limits Google reported lower than configured, by (project, model).
    learned: RwLock<HashMap<(String, String), LimitOverride>>,
    /// What this replica saw of its keys' health (shared with the generations before and
    /// after a reload).
    pub health: Arc<health::KeyHealth>,
}

impl Pool {
    pub fn new(cfg: &PoolConfig, limits: &LimitsConfig, upstream: &UpstreamConfig) -> Pool {
        let mut keys: Vec<PooledKey> = cfg
            .keys
            .iter()
            .enumerate()
            .map(|(i, k)| {
                let kid: Arc<str> = hex::encode(&k.key.digest()[..8]).into();
                let project: Arc<str> = match &k.project {
                    Some(p) => p.as_str().into(),
                    None => format!("key-{kid}").into(),
                };
                PooledKey {
                    headers: crate::upstream::KeyHeaders::new(&k.key).unwrap_or_else(|| {
                        crate::upstream::KeyHeaders::new(&Secret::new("invalid")).expect("ascii")
                    }),
                    masked: k.key.masked(),
                    name: k.name.clone().unwrap_or_else(|| format!("key{}", i + 1)),
                    key: k.key.clone(),
                    kid,
                    project,
                    vertex: None,
                    trace: Default::default(),
                }
            })
            .collect();
        keys.extend(vertex_entries(cfg, upstream));
        // The throttle evidence is about AI Studio projects (a Vertex 429 is not counted).
        let projects: std::collections::HashSet<&str> = keys
            .iter()
            .filter(|k| k.vertex.is_none())
            .map(|k| &*k.project)
            .collect();
        let health = Arc::new(health::KeyHealth::new(projects.len()));
        Pool {
            has_vertex: keys.iter().any(|k| k.vertex.is_some()),
            has_ai_studio: keys.iter().any(|k| k.vertex.is_none()),
            keys,
            strategy: cfg.strategy,
            order: cfg.order,
            limits: limits.clone(),
            turn: AtomicU64::new(0),
            learned: RwLock::new(HashMap::new()),
            health,
        }
    }

    /// What a reloaded pool takes from the one it replaces: what this replica saw of the keys
    /// (one record by key id, shared, whatever a key's position, name or project now), the
    /// limits Google reported and where the turn stands. Counters are the store's and stay.
    pub fn carry_from(mut self, old: &Pool) -> Pool {
        let projects: std::collections::HashSet<&str> = self
            .keys
            .iter()
            .filter(|k| k.vertex.is_none())
            .map(|k| &*k.project)
            .collect();
        old.health.repool(&projects);
        self.health = old.health.clone();
        let learned = old.learned.read().clone();
        *self.learned.write() = learned;
        self.turn
            .store(old.turn.load(Ordering::Relaxed), Ordering::Relaxed);
        self
    }

    /// Mint every Vertex entry's first access token: `Err` names the credentials setting of the
    /// first entry whose token endpoint refuses (start-up stops on it).
    pub async fn check_vertex_tokens(&self) -> Result<(), String> {
        for k in &self.keys {
            if let Some(v) = &k.vertex {
                if let Err(e) = v.tokens.bearer().await {
                    return Err(format!(
                        "{}: the Vertex AI entry {}/{} cannot get an access token: {e}",
                        v.credentials_setting, v.project, v.location
                    ));
                }
                tracing::info!(entry = %k.masked, project = %k.project, "Vertex AI entry: access token minted");
            }
        }
        Ok(())
    }

    /// A number that grows by one per call: where ties start, so equal keys take turns.
    pub fn next_turn(&self) -> u64 {
        self.turn.fetch_add(1, Ordering::Relaxed)
    }

    pub fn by_kid(&self, kid: &str) -> Option<(usize, &PooledKey)> {
        self.keys.iter().enumerate().find(|(_, k)| &*k.kid == kid)
    }

    pub fn limits_config(&self) -> &LimitsConfig {
        &self.limits
    }

    /// Every key (or just `only`) as an admission candidate for `model`, with its project's limits.
    pub fn candidates(
        &self,
        model: &str,
        family: QuotaFamily,
        only: Option<usize>,
    ) -> Vec<Candidate> {
        self.keys
            .iter()
            .enumerate()
            .filter(|(i, _)| only.is_none_or(|o| o == *i))
            .map(|(i, k)| Candidate {
                index: i,
                kid: k.kid.clone(),
                project: k.project.clone(),
                limits: self.limits_for(&k.project, model, family),
            })
            .collect()
    }

    /// Split admission candidates by backend as `pool.order` says: `candidates` keeps the
    /// backend asked first, the one spilled over to is returned (empty for `headroom`, or when
    /// only one backend is among them).
    pub fn split_by_order(&self, candidates: &mut Vec<Candidate>) -> Vec<Candidate> {
        let spill_vertex = match self.order {
            Order::Headroom => return Vec::new(),
            Order::AiStudioFirst => true,
            Order::VertexFirst => false,
        };
        let (spill, first): (Vec<Candidate>, Vec<Candidate>) = candidates
            .drain(..)
            .partition(|c| self.keys[c.index].vertex.is_some() == spill_vertex);
        if first.is_empty() {
            *candidates = spill;
            Vec::new()
        } else {
            *candidates = first;
            spill
        }
    }

    /// Configured limits, lowered by what Google reported for this (project, model).
    pub fn limits_for(
        &self,
        project: &str,
        model: &str,
        family: QuotaFamily,
    ) -> crate::quota::Limits {
        let mut l = limits::resolve(&self.limits, project, model, family);
        let learned = self.learned.read();
        if !learned.is_empty()
            && let Some(o) = learned.get(&(project.to_string(), model.to_string()))
        {
            lower(&mut l, o);
        }
        l
    }

    /// Adopt a limit Google reported (a 429's `quotaValue`) when it is lower than what the
    /// (project, model) has now for `family`. Checked and written under one lock, so a racing
    /// higher report can never overwrite a lower one.
    pub fn learn(
        &self,
        project: &str,
        model: &str,
        family: QuotaFamily,
        kind: LimitKind,
        value: u64,
    ) {
        if value == 0 {
            return;
        }
        let pair = (project.to_string(), model.to_string());
        let mut learned = self.learned.write();
        let mut current = limits::resolve(&self.limits, project, model, family);
        if let Some(o) = learned.get(&pair) {
            lower(&mut current, o);
        }
        let now = match kind {
            LimitKind::RequestsPerMinute => current.minute,
            LimitKind::TokensPerMinute => current.token_minute,
            LimitKind::RequestsPerDay => current.daily,
        };
        if value < now {
            let entry = learned.entry(pair).or_default();
            let slot = match kind {
                LimitKind::RequestsPerMinute => &mut entry.minute,
                LimitKind::TokensPerMinute => &mut entry.token_minute,
                LimitKind::RequestsPerDay => &mut entry.daily,
            };
            tracing::warn!(
                project,
                model,
                limit = kind.as_str(),
                configured = now,
                reported = value,
                "Gemini API reports a lower limit than configured: adopting it"
            );
            *slot = Some(value);
        }
    }
}

/// The `[[pool.vertex]]` entries as pool entries: a Vertex entry's id is the digest of its
/// `vertex:PROJECT/LOCATION` (no secret in it), shown as that; its project `PROJECT.LOCATION`.
fn vertex_entries(cfg: &PoolConfig, upstream: &UpstreamConfig) -> Vec<PooledKey> {
    if cfg.vertex.is_empty() {
        return Vec::new();
    }
    let token_http = crate::upstream::vertex::token_client(upstream);
    cfg.vertex
        .iter()
        .map(|v| {
            let id = Secret::new(format!("vertex:{}/{}", v.project, v.location));
            let kid: Arc<str> = hex::encode(&id.digest()[..8]).into();
            PooledKey {
                headers: crate::upstream::KeyHeaders::new(&Secret::new("vertex")).expect("ascii"),
                masked: id.expose().to_string(),
                name: v
                    .name
                    .clone()
                    .unwrap_or_else(|| format!("vertex-{}-{}", v.project, v.location)),
                key: id,
                kid,
                project: format!("{}.{}", v.project, v.location).into(),
                vertex: Some(Arc::new(VertexEntry::new(v, upstream, token_http.clone()))),
                trace: Default::default(),
            }
        })
        .collect()
}

/// Lower `l` to what Google reported.
fn lower(l: &mut crate::quota::Limits, o: &LimitOverride) {
    l.minute = l.minute.min(o.minute.unwrap_or(u64::MAX));
    l.daily = l.daily.min(o.daily.unwrap_or(u64::MAX));
    l.token_minute = l.token_minute.min(o.token_minute.unwrap_or(u64::MAX));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(toml: &str) -> Pool {
        let cfg = crate::config::for_test(toml, &[]);
        Pool::new(&cfg.pool, &cfg.limits, &cfg.upstream)
    }

    #[test]
    fn an_embed_limit_is_learned_against_the_embed_family() {
        let p = pool("[limits]\nembed_minute = 100\n");
        p.learn(
            "p",
            "gemini-embedding-001",
            QuotaFamily::Embed,
            LimitKind::RequestsPerMinute,
            20,
        );
        assert_eq!(
            p.limits_for("p", "gemini-embedding-001", QuotaFamily::Embed)
                .minute,
            20
        );
        // A report above what is configured changes nothing and stores nothing.
        p.learn(
            "p",
            "gemini-2.5-flash",
            QuotaFamily::Generate,
            LimitKind::RequestsPerMinute,
            99,
        );
        assert_eq!(
            p.limits_for("p", "gemini-2.5-flash", QuotaFamily::Generate)
                .minute,
            15
        );
        assert_eq!(p.learned.read().len(), 1);
    }

    #[test]
    fn racing_reports_always_leave_the_lowest() {
        let p = std::sync::Arc::new(pool("[limits]\nminute = 100\n"));
        for round in 0..200 {
            let model = format!("m{round}");
            let barrier = std::sync::Arc::new(std::sync::Barrier::new(4));
            let threads: Vec<_> = [50, 5, 40, 30]
                .into_iter()
                .map(|v| {
                    let (p, b, m) = (p.clone(), barrier.clone(), model.clone());
                    std::thread::spawn(move || {
                        b.wait();
                        p.learn(
                            "p",
                            &m,
                            QuotaFamily::Generate,
                            LimitKind::RequestsPerMinute,
                            v,
                        );
                    })
                })
                .collect();
            for t in threads {
                t.join().unwrap();
            }
            assert_eq!(
                p.limits_for("p", &model, QuotaFamily::Generate).minute,
                5,
                "round {round}"
            );
        }
    }
}
