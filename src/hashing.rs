//! The hash tables looked up on every request: foldhash, seeded per process, instead of the
//! standard library's SipHash (several times cheaper for their short keys). Only for tables
//! whose keys the configuration bounds (configured clients and projects, names capped per
//! dimension), where resistance to chosen collisions buys nothing.

/// A map hashed with foldhash.
pub type Map<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
