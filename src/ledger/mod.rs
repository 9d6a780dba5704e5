//! The usage ledger: per-minute history of requests, tokens and cost per (project, model, key,
//! client), its prices, and the forecast of when each daily quota runs out.

pub mod forecast;
pub mod prices;
pub mod tokens;

pub use tokens::TokenUsage;
