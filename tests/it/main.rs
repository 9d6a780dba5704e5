//! The integration tests, in one test binary (`cargo test --test it`): one module per area,
//! each `tests/it/AREA.rs`, sharing `tests/common` once. One binary links the crate and its
//! dependencies once instead of once per file, and `scripts/run-tests` runs groups of its tests
//! side by side by module filter (`cargo test --test it queue::` runs one area).
//!
//! A new area: put the file at `tests/it/AREA.rs`, add `mod AREA;` below (alphabetical), and
//! write `use crate::common;` where a standalone test file would say `mod common;`. The metrics
//! recorder is shared by every area: assert on series of the test's own model, client or
//! project (or on growth), and keep under the model label cap (200 answered model names in the
//! whole binary).
//!
//! Two areas stay binaries of their own (`tests/lockout.rs`, `tests/model_flood.rs`): they assert
//! on process-wide metrics state (an absolute count of failed credentials; the model label cap
//! filled on purpose and `/metrics` growth) that other areas' proxies in the same process would
//! change.

#[path = "../common/mod.rs"]
mod common;

mod alerts;
mod batch;
mod billing;
mod binary_cli;
mod bounds;
mod cache;
mod client_limits;
mod client_limits_replicas;
mod client_protocols;
mod clients;
mod clients_api;
mod dashboard;
mod deploy;
mod deploy_compose;
mod deploy_manifests;
mod docker_context;
mod docs;
mod e2e;
mod embed;
mod fallback;
mod faults;
mod fuzz;
mod h2_stream_cap;
mod hardening;
mod hostile_inputs;
mod isolation;
mod ledger;
mod live;
mod live_clients;
mod live_tokens;
mod module_graph;
mod otel;
mod pool;
mod queue;
mod quota;
mod redis_cluster;
mod redis_tls;
mod reload;
mod replicas;
mod request_log;
mod sdk_python;
mod sdk_vercel;
mod secrets;
mod spend_caps;
mod status;
mod store_suite;
mod store_truth;
mod upstream_http1;
mod vertex;
