//! The Live API session slots' scripts: a project's open sessions are a sorted set of session
//! ids scored by lease end, so a slot whose replica died (and stopped renewing) drops out of
//! the count once its lease has passed, without anyone cleaning up after it.

use std::sync::LazyLock;

use redis::Script;

/// Take a slot if fewer than the limit are held: KEYS[1] the project's set; ARGV session,
/// limit, lease ms, now override.
pub(super) static OPEN: LazyLock<Script> = LazyLock::new(|| Script::new(lua!("live_open.lua")));
/// Renew slots still held: KEYS the projects' sets; ARGV lease ms, now override, then one
/// session id per key.
pub(super) static RENEW: LazyLock<Script> = LazyLock::new(|| Script::new(lua!("live_renew.lua")));
/// Unexpired slots per set: KEYS the projects' sets; ARGV now override.
pub(super) static COUNT: LazyLock<Script> = LazyLock::new(|| Script::new(lua!("live_count.lua")));
