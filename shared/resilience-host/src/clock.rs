//! The host's wall-clock time in milliseconds since the Unix epoch.
//!
//! Policies in the core take `now_ms` as a parameter; this is where it comes from. If the host
//! cannot tell the time (never seen on Envoy), 0 is returned: every policy treats time as
//! monotonic-ish and saturates, so a zero simply makes windows look fresh.

use crate::host::Host;
use crate::wasm::WasmHost;

/// [`now_ms_on`] the real host.
pub fn now_ms() -> u64 {
    now_ms_on(&WasmHost)
}

/// Milliseconds since the Unix epoch on `host`, or 0 if the host cannot say.
pub fn now_ms_on<H: Host>(host: &H) -> u64 {
    host.current_time_ns().map_or(0, |ns| ns / 1_000_000)
}
