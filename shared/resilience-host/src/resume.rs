//! Resuming a paused request or response later, from the root context's timer.
//!
//! Why: a filter that holds a response (failure padding) returns `Pause` from its response-headers
//! callback; nothing calls that stream again until the filter resumes it. The only callback that
//! runs by itself later is the root context's `on_tick`, so the tick resumes it: it makes the
//! held stream the *effective context* and continues it. Verified on Envoy 1.40: Envoy defers the
//! continuation until `on_tick` returns, and a stream that is gone (the client reset it) is
//! reported, not a trap.
//!
//! Why a [`Host`] ([`crate::abi`] on the real one): the SDK's `set_effective_context`,
//! `resume_http_response` and `set_tick_period` panic on any status they do not expect (trapping
//! the worker's VM); here every status is a value.
//!
//! The timer: Envoy 1.40 re-arms the root context's timer whenever the period is set (it replaces
//! the timer), from any context of that root (the failure-padding e2e timing tests rely on it). [`set_tick_period_ms`] is therefore both
//! "tick every N ms from now on" and "fire in N ms", which is what lets a held response be
//! released at its due time instead of at the next regular tick.

use proxy_wasm::types::StreamType;

use crate::abi::HostStatus;
use crate::host::Host;
use crate::wasm::WasmHost;

/// What became of a resume.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resumed {
    /// The response continues toward the client.
    Continued,
    /// The stream no longer exists (the client went away, or it was reset).
    Gone,
    /// The host refused with this status; the stream may stay paused until a timeout ends it.
    Refused(u32),
}

/// Continue the HTTP response of stream `context_id` (one of this worker's streams), paused
/// earlier by returning `Pause` from its response headers. Call from the root context.
pub fn resume_http_response(context_id: u32) -> Resumed {
    resume_on(&WasmHost, context_id, StreamType::HttpResponse)
}

/// Continue the HTTP request of stream `context_id`, paused earlier in its request phase (e.g.
/// held for body checks). Call from the root context.
pub fn resume_http_request(context_id: u32) -> Resumed {
    resume_on(&WasmHost, context_id, StreamType::HttpRequest)
}

/// Continue `stream` (request or response) of stream `context_id` on `host`, paused earlier.
/// Call from the root context.
pub fn resume_on<H: Host>(host: &H, context_id: u32, stream: StreamType) -> Resumed {
    let resumed = host
        .set_effective_context(context_id)
        .and_then(|()| host.continue_stream(stream));
    match resumed {
        Ok(()) => Resumed::Continued,
        Err(HostStatus::BAD_ARGUMENT) => Resumed::Gone,
        Err(HostStatus(code)) => Resumed::Refused(code),
    }
}

/// Set the root context's tick period to `ms` (clamped to 1..=u32::MAX) and re-arm its timer to
/// fire `ms` from now. Returns false if the host refused.
pub fn set_tick_period_ms(ms: u64) -> bool {
    set_tick_period_ms_on(&WasmHost, ms)
}

/// [`set_tick_period_ms`] on `host`.
pub fn set_tick_period_ms_on<H: Host>(host: &H, ms: u64) -> bool {
    let ms = u32::try_from(ms.max(1)).unwrap_or(u32::MAX);
    host.set_tick_period_ms(ms).is_ok()
}
