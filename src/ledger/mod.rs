//! The usage ledger: per-minute history of requests, tokens and cost per (project, model, key,
//! client), its prices, and the forecast of when each daily quota runs out.
//!
//! Requests are recorded as they end ([`Ledger::count`], [`Tally`]); the numbers live in
//! fixed rings ([`book`]) in this replica's memory, or, with Redis, in per-minute and
//! per-hour hashes every replica adds to (`shared`), written with the settlement batches and
//! read back into the same rings. [`query`] answers `/api/ai/usage/`; [`outlook`] gives the
//! status page its cost and forecast.

pub mod book;
pub mod by_client;
pub mod forecast;
pub mod images;
pub mod names;
pub mod nesting;
pub mod outlook;
pub mod prices;
mod pricing;
pub mod query;
mod records;
pub mod scan;
mod shared;
pub mod spent;
mod tally;
pub mod tokens;

use parking_lot::{Mutex, RwLock};
use std::collections::HashMap;
use std::sync::{Arc, Weak};

use arc_swap::ArcSwap;

pub use book::{Counters, FIELDS, Series, field};
pub use images::ImageCounter;
pub use prices::{Billing, Prices};
pub use scan::UsageScanner;
pub use spent::CostWatch;
pub use tally::{Tally, UsageSeen};
use tally::{TokenCounters, metrics_for};
pub use tokens::TokenUsage;

use self::book::Book;
use self::names::Names;
use self::pricing::{Pricing, vertex_projects};
use self::shared::Shared;
use crate::quota::redis::SharedIo;
use crate::quota::{Clock, SystemClock};

/// Distinct model names the ledger keeps apart; later ones are counted as `other`.
pub const MODEL_CAP: usize = 200;
/// Distinct projects, keys and clients kept apart (these come from configuration; the cap only
/// guards against a shared Redis written by many differently configured replicas).
pub const NAME_CAP: usize = 4096;

/// A pooled key as the ledger shows it.
#[derive(Debug, Clone)]
pub struct KeyInfo {
    pub kid: Arc<str>,
    pub masked: String,
    pub project: Arc<str>,
    /// A Vertex AI entry's: priced at Vertex's prices, never free tier.
    pub vertex: bool,
}

/// What the ledger is built from.
pub struct LedgerSetup {
    pub prices: Arc<Prices>,
    /// Billing of each project not billed at list price.
    pub billing: HashMap<String, Billing>,
    pub keys: Vec<KeyInfo>,
    /// The configured clients' names, named first (in client order).
    pub clients: Vec<Arc<str>>,
    pub timezone: chrono_tz::Tz,
    /// Redis, when the quota store is shared.
    pub shared: Option<SharedIo>,
    pub clock: Arc<dyn Clock>,
}

/// The usage ledger (see the module docs).
pub struct Ledger {
    pub(crate) projects: Names,
    pub(crate) models: Names,
    pub(crate) keys: Names,
    pub(crate) clients: Names,
    /// The prices and billings in force (a config reload swaps them).
    pricing: ArcSwap<Pricing>,
    /// Key id -> masked key, for display: every key pooled since start (a reload adds the
    /// keys it brings; a removed key's history still shows masked).
    masked: RwLock<HashMap<Arc<str>, String>>,
    anonymous: u32,
    pub(crate) timezone: chrono_tz::Tz,
    pub(crate) clock: Arc<dyn Clock>,
    /// The rings: the ledger itself (memory), or a copy of Redis's buckets (shared).
    pub(crate) book: Mutex<Book>,
    pub(crate) shared: Option<Shared>,
    /// When this ledger started recording (memory); Redis keeps its own.
    started_ms: i64,
    /// Cost per (model, client) since this process started, for `/metrics` (nano-USD).
    /// Models are capped at [`MODEL_CAP`]; clients are this replica's configured ones.
    cost_totals: Mutex<crate::hashing::Map<(u32, u32), u64>>,
    /// `gqp_tokens_total` handles per (model, client), by kind: looked up once, not per
    /// request.
    token_counters: parking_lot::RwLock<crate::hashing::Map<(u32, u32), TokenCounters>>,
    /// Told of each answer's billed cost on the projects it watches (the spend caps).
    watch: arc_swap::ArcSwapOption<spent::Watcher>,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger")
            .field("shared", &self.shared.is_some())
            .finish()
    }
}

impl Ledger {
    pub fn new(setup: LedgerSetup) -> Arc<Ledger> {
        let started_ms = setup.clock.now_ms();
        let clients = Names::new(NAME_CAP);
        for name in setup.clients.iter().take(NAME_CAP) {
            clients.id(name, true);
        }
        let anonymous = clients.id("anonymous", true);
        let ledger = Arc::new(Ledger {
            projects: Names::new(NAME_CAP),
            models: Names::new(MODEL_CAP),
            keys: Names::new(NAME_CAP),
            clients,
            anonymous,
            pricing: ArcSwap::from_pointee(Pricing {
                prices: setup.prices,
                billing: setup.billing,
                vertex: vertex_projects(&setup.keys),
            }),
            masked: RwLock::new(
                setup
                    .keys
                    .iter()
                    .map(|k| (k.kid.clone(), k.masked.clone()))
                    .collect(),
            ),
            timezone: setup.timezone,
            clock: setup.clock,
            book: Mutex::new(Book::default()),
            shared: setup.shared.map(Shared::new),
            started_ms,
            cost_totals: Mutex::default(),
            token_counters: Default::default(),
            watch: arc_swap::ArcSwapOption::empty(),
        });
        if let Some(s) = &ledger.shared {
            s.attach(Arc::downgrade(&ledger));
        }
        ledger
    }

    /// A ledger in memory with the embedded prices (tests, embedders without a config).
    pub fn in_memory() -> Arc<Ledger> {
        Ledger::in_memory_at(Arc::new(SystemClock))
    }

    /// [`Ledger::in_memory`] on `clock` (tests and benchmarks travel in time with it).
    pub fn in_memory_at(clock: Arc<dyn Clock>) -> Arc<Ledger> {
        Ledger::new(LedgerSetup {
            prices: Arc::new(Prices::embedded()),
            billing: HashMap::new(),
            keys: Vec::new(),
            clients: Vec::new(),
            timezone: chrono_tz::America::Los_Angeles,
            shared: None,
            clock,
        })
    }

    /// `memory` or `redis`.
    pub fn backend(&self) -> &'static str {
        if self.shared.is_some() {
            "redis"
        } else {
            "memory"
        }
    }

    /// The series of a request. `project` and `kid` are `None` for a request no key served
    /// (refused by the proxy). A model gets a name of its own only when `known` (Google
    /// answered for it), so made-up names share `other`.
    pub fn series(
        &self,
        project: Option<&str>,
        model: &str,
        kid: Option<&str>,
        client: &str,
        known: bool,
    ) -> Series {
        self.series_of(project, model, kid, self.clients.id(client, true), known)
    }

    /// [`Ledger::series`] with the client's id already known ([`Ledger::client_id`]).
    pub fn series_of(
        &self,
        project: Option<&str>,
        model: &str,
        kid: Option<&str>,
        client: u32,
        known: bool,
    ) -> Series {
        Series {
            project: project.map_or(names::NONE_ID, |p| self.projects.id(p, true)),
            model: self
                .models
                .id(model.strip_prefix("models/").unwrap_or(model), known),
            key: kid.map_or(names::NONE_ID, |k| self.keys.id(k, true)),
            client,
            asked: names::NONE_ID,
        }
    }

    /// `series`, its requests having asked for model `asked` (a fallback served them with the
    /// series' model): recorded apart, under both names.
    pub fn asked_for(&self, series: Series, asked: &str) -> Series {
        let asked = asked.strip_prefix("models/").unwrap_or(asked);
        let id = self.models.id(asked, true);
        Series {
            asked: if id == series.model {
                names::NONE_ID
            } else {
                id
            },
            ..series
        }
    }

    /// The id of `anonymous` (a caller without a credential).
    pub fn anonymous_id(&self) -> u32 {
        self.anonymous
    }

    /// The id of a client by name (`admin`).
    pub fn client_id_named(&self, name: &str) -> u32 {
        self.clients.id(name, true)
    }

    /// Count one event (`field::REQUESTS`, `UPSTREAM_429`, `REFUSED`, `ERRORS`).
    pub fn count(&self, series: Series, field: usize) {
        self.add(series, &Counters::one(field));
    }

    /// What a request's answer used, for [`Tally::close`].
    /// The tally counts the request (`requests` 1) with its tokens.
    pub fn tally(
        self: &Arc<Self>,
        series: Series,
        model: Arc<str>,
        project: &str,
        fallback: Option<TokenUsage>,
    ) -> Tally {
        Tally {
            ledger: self.clone(),
            series,
            model,
            billing: self.billing_of(project),
            vertex: self.pricing.load().vertex.contains(project),
            fallback,
            closed: false,
            watch: self.watcher_of(project),
            seen: None,
        }
    }

    /// Add `c` to a series, now (the ledger's clock).
    pub fn add(&self, series: Series, c: &Counters) {
        let now = self.clock.now_ms();
        match &self.shared {
            Some(s) => s.add(now, series, c),
            None => self.book.lock().add(now, series, c),
        }
    }

    /// Write what this replica has not yet written to Redis (at shutdown; nothing to do in
    /// memory).
    pub async fn flush(&self) {
        if let Some(s) = &self.shared {
            s.flush(self).await;
        }
    }

    /// Since when this ledger's history runs (Unix ms).
    pub async fn recording_since(&self) -> i64 {
        match &self.shared {
            Some(s) => s.since().await.unwrap_or(self.started_ms),
            None => self.started_ms,
        }
    }

    /// A key id as people see it: the masked key when this replica pools it.
    pub fn key_label(&self, id: u32) -> String {
        let kid = self.keys.name(id);
        let masked = self.masked.read();
        match masked.get(&kid) {
            Some(m) => m.clone(),
            None if &*kid == names::NONE || &*kid == names::OVERFLOW => kid.to_string(),
            None => format!("key-{kid}"),
        }
    }

    /// Visit buckets `first..=last` of the hour ring (`hourly`) or the minute ring, with their
    /// position from `first`. The rings are locked one bucket at a time, so requests ending
    /// meanwhile wait for one bucket's worth of work at most, never for a whole query.
    pub(crate) fn each_bucket(
        &self,
        hourly: bool,
        first: i64,
        last: i64,
        mut f: impl FnMut(usize, i64, &crate::hashing::Map<Series, Counters>),
    ) {
        for (i, index) in (first..=last).enumerate() {
            let book = self.book.lock();
            let ring = if hourly { &book.hours } else { &book.minutes };
            if let Some(slot) = ring.get(index) {
                f(i, index, &slot.series);
            }
        }
    }

    /// How much the ledger holds: distinct names per dimension and series-bucket entries (the
    /// bounded-state tests read it).
    pub fn tracked(&self) -> Tracked {
        let book = self.book.lock();
        Tracked {
            models: self.models.len(),
            projects: self.projects.len(),
            keys: self.keys.len(),
            clients: self.clients.len(),
            entries: book.minutes.entries() + book.hours.entries(),
        }
    }

    /// Cost per (model, client) since this process started (nano-USD), for `/metrics`.
    pub fn cost_totals(&self) -> Vec<(Arc<str>, Arc<str>, u64)> {
        let totals = self.cost_totals.lock();
        totals
            .iter()
            .map(|((m, client), c)| (self.models.name(*m), self.clients.name(*client), *c))
            .collect()
    }

    /// Bring the rings up to date with Redis: minute buckets from `minutes_from`, hour buckets
    /// from `hours_from` (Unix ms; `None`: that ring is not needed). Nothing to do in memory.
    pub async fn refresh(
        &self,
        minutes_from: Option<i64>,
        hours_from: Option<i64>,
    ) -> Result<(), crate::quota::StoreError> {
        match &self.shared {
            Some(s) => s.refresh(self, minutes_from, hours_from).await,
            None => Ok(()),
        }
    }
}

/// What [`Ledger::tracked`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tracked {
    pub models: usize,
    pub projects: usize,
    pub keys: usize,
    pub clients: usize,
    pub entries: usize,
}

/// A weak handle for the Redis rider (the ledger owns the rider's slot, not the reverse).
pub(crate) type LedgerRef = Weak<Ledger>;
