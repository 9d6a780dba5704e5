//! (being written) The forecast of when a daily quota runs out.
