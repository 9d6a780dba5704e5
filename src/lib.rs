//! gemini-quota-proxy: a reverse proxy for Google's Gemini API that pools keys and admits each
//! request only when a key's project has quota left.

pub mod auth;
pub mod body;
pub mod config;
pub mod error;
pub mod estimate;
pub mod metrics;
pub mod pool;
pub mod proxy;
pub mod quota;
pub mod route;
pub mod secret;
pub mod server;
pub mod state;
pub mod status;
pub mod telemetry;
pub mod upstream;

pub use config::{Config, Sources};
pub use server::{app, serve};
pub use state::AppState;
