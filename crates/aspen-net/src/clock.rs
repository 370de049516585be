//! The wall clock, in the unit every Aspen timestamp uses. Only I/O edges read it: the Raft
//! leader stamps each log entry with it, and token checks compare expiries to it. The apply
//! step never does (it uses the entry's stamp).

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}
