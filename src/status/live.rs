//! The status document's `live_sessions`: each project's open Live API sessions (as the store
//! counts them, every replica's) against its `limits.live_sessions`.

use std::sync::Arc;

use serde::Serialize;

use crate::quota::limits;
use crate::state::AppState;

/// One project's Live sessions.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct LiveSessionsView {
    pub project: String,
    /// Open now, on every replica sharing the store.
    pub open: u64,
    /// `limits.live_sessions` of the project.
    pub limit: u64,
}

/// Every project of the pool in configuration order (a store failure reads as none open).
pub async fn views(state: &AppState) -> Vec<LiveSessionsView> {
    let mut projects: Vec<Arc<str>> = Vec::new();
    for k in &state.pool.keys {
        if !projects.contains(&k.project) {
            projects.push(k.project.clone());
        }
    }
    let counts = state
        .store
        .live_counts(&projects)
        .await
        .unwrap_or_else(|_| vec![0; projects.len()]);
    projects
        .iter()
        .enumerate()
        .map(|(i, p)| LiveSessionsView {
            project: p.to_string(),
            open: counts.get(i).copied().unwrap_or(0),
            limit: limits::live_sessions(state.pool.limits_config(), p),
        })
        .collect()
}
