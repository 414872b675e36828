//! The wall clock, read at the edges (a session stamping what it
//! received, the cluster stamping what it publishes); decisions take the
//! time as an argument.

use std::time::{SystemTime, UNIX_EPOCH};

/// Now on the wall clock, Unix milliseconds.
pub fn wall_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
