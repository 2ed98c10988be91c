//! The host's wall-clock time in milliseconds since the Unix epoch.
//!
//! Policies in the core take `now_ms` as a parameter; this is where it comes from. If the host
//! cannot tell the time (never seen on Envoy), 0 is returned: every policy treats time as
//! monotonic-ish and saturates, so a zero simply makes windows look fresh.

use std::time::UNIX_EPOCH;

/// Milliseconds since the Unix epoch, or 0 if the host cannot say.
pub fn now_ms() -> u64 {
    match proxy_wasm::hostcalls::get_current_time() {
        Ok(t) => t
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0),
        Err(_) => 0,
    }
}
