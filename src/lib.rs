//! gemini-quota-proxy: a reverse proxy for Google's Gemini API that pools keys and admits each
//! request only when a key's project has quota left.
//!
//! A request's way, module by module:
//!
//! 1. [`server`]: the accept loop (header timeout, connection caps in all and per source,
//!    idle and handshake timeouts: [`conn`]; failed credentials throttled per source:
//!    [`throttle`]; graceful drain) dispatches
//!    Gemini paths to the [`gateway`]'s service and the rest to the proxy's own endpoints
//!    ([`status`]: health, readiness, metrics, quota status and admin reset, usage history).
//! 2. [`layers`], a tower stack, outermost first:
//!    - [`layers::authenticate`]: the client credential ([`auth`], [`secret`]);
//!    - [`layers::estimate`]: the path ([`route`]), the body read once within the process's
//!      budget of buffered bytes ([`budget`]), its input tokens
//!      ([`estimate`]), the key a named resource belongs to ([`pool::affinity`]);
//!    - [`layers::cache`]: a repeated request answered from the response cache (no quota, no
//!      key, no upstream), a miss's answer copied as it streams and stored when it may be
//!      ([`cache`]: key, memory or Redis entries, single flight);
//!    - [`layers::quota`]: admission on a key with room ([`quota`] store, [`pool`] candidates
//!      and limits), Google's answer read ([`upstream::verdict`]), holds, learned limits, dead
//!      keys ([`pool::health`]), retries by one table ([`layers::retry`]) and, when the
//!      asked model has no room or is overloaded, a [`fallback`] model with room;
//!    - [`layers::forward`]: the pooled HTTP client ([`upstream::client`]) with the request
//!      built for Google ([`upstream::request`]).
//! 3. [`body`]: the answer streams back untouched while its usage is read; at its end the
//!    reservation settles ([`quota::Settlement`]) and the [`ledger`] records its tokens and cost
//!    (requests, refusals, Google's 429s and 5xx are counted by [`layers::quota`]); then
//!    [`access_log`] writes the request's line, with its time to the head, to the first byte and
//!    in total.
//! 4. [`live`]: the Live API's WebSocket, dispatched by the [`server`] beside the stack: the
//!    client's upgrade and `setup`, a key chosen by session headroom with its slot held in the
//!    [`quota`] store, then every frame relayed both ways, usage into the [`ledger`].
//!
//! Around it: [`config`] (one file per section), [`error`] (Google's error envelope),
//! [`metrics`], [`telemetry`] (logging; OpenTelemetry traces: a span per request and Live
//! session, W3C trace context in and out, OTLP export off the request path), [`preflight`]
//! (the binary's `--check`), [`allocator`]
//! (mimalloc's settings, applied by the binary first thing), [`state`] (what every step shares)
//! and, in the background, [`alerts`]
//! (rules over the status and the ledger, notifications to webhooks and e-mail, one per
//! transition across replicas) and [`reload`] (a new configuration swapped in without restart
//! on `SIGHUP`, a file change or the admin endpoint).
//!
//! Embedding: build a [`Gateway`] from a [`Config`] and mount [`Gateway::service`] in your own
//! router (`examples/embed.rs`).

pub mod access_log;
pub mod alerts;
pub mod allocator;
pub mod auth;
pub mod batch;
pub mod body;
pub mod boxed;
pub mod budget;
pub mod cache;
pub mod client_store;
pub mod clients;
pub mod config;
pub mod conn;
pub mod error;
pub mod estimate;
pub mod fallback;
pub mod gateway;
pub mod hashing;
pub mod layers;
pub mod ledger;
pub mod live;
pub mod metrics;
pub mod pool;
pub mod preflight;
pub mod quota;
pub mod reload;
pub mod route;
pub mod secret;
pub mod server;
pub mod state;
pub mod status;
pub mod telemetry;
pub mod throttle;
pub mod upstream;

pub use config::{Config, Sources};
pub use gateway::{Gateway, GatewayBuilder, GeminiService};
pub use server::serve;
pub use state::AppState;
pub use status::router;
