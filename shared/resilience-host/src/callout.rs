//! HTTP callouts: requests a filter sends on its own (`dispatch_http_call`), and their answers.
//!
//! Why a module: slow start primes caches and probes health by sending requests that no client
//! asked for. Envoy's rules for them are strict and the SDK's wrappers trap on surprises:
//!
//! - A callout is owned by the context that sent it (the root context here, from its tick); its
//!   answer arrives in that context's `on_http_call_response`. It cannot be cancelled.
//! - It needs a cluster that exists and the `:method`, `:path` and `:authority` headers;
//!   otherwise the host refuses it at once ([`CalloutError`]).
//! - A failure (connect error, timeout, reset) calls back with **zero headers**, so "no
//!   `:status`" is how a failed callout looks ([`response_status`] is `None`).
//! - Answer headers are read as bytes: the SDK's `String` getters unwrap UTF-8 and would trap.
//!
//! Callouts do not pass through the listener's HTTP filters, so a filter never sees its own.

use std::time::Duration;

use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, MapType, Status};

/// Why the host refused to send a callout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CalloutError {
    /// Unknown cluster or a missing `:method`/`:path`/`:authority`.
    BadArgument,
    /// The host could not start the request.
    InternalFailure,
}

impl CalloutError {
    pub fn as_str(self) -> &'static str {
        match self {
            CalloutError::BadArgument => "bad_argument",
            CalloutError::InternalFailure => "internal_failure",
        }
    }
}

/// Sends a request through `cluster`; returns the token its answer will carry.
///
/// `headers` must include `:method`, `:path` and `:authority`. Uses the SDK's call so the
/// answer is routed back to the calling context (the SDK registers the token).
pub fn send(
    cluster: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
    timeout_ms: u64,
) -> Result<u32, CalloutError> {
    match hostcalls::dispatch_http_call(
        cluster,
        headers.to_vec(),
        body,
        Vec::new(),
        Duration::from_millis(timeout_ms.max(1)),
    ) {
        Ok(token) => Ok(token),
        Err(Status::BadArgument) => Err(CalloutError::BadArgument),
        Err(_) => Err(CalloutError::InternalFailure),
    }
}

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_get_header_map_value(
        map_type: u32,
        key_data: *const u8,
        key_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
    ) -> u32;
}

/// One header of the callout answer; `None` when absent or the host says anything but Ok (our
/// own import: the SDK's getter panics on unexpected statuses).
fn answer_header(name: &str) -> Option<Vec<u8>> {
    let mut data: *mut u8 = core::ptr::null_mut();
    let mut size: usize = 0;
    // SAFETY: the out-pointers are valid for writes; the host fills them with memory allocated
    // through the SDK's exported `proxy_on_memory_allocate` (a forgotten `Vec<u8>` of `size`
    // bytes), which `Vec::from_raw_parts` takes back, as the SDK itself does.
    let status = unsafe {
        proxy_get_header_map_value(
            MapType::HttpCallResponseHeaders as u32,
            name.as_ptr(),
            name.len(),
            &mut data,
            &mut size,
        )
    };
    let value = if data.is_null() {
        Vec::new()
    } else {
        // SAFETY: see above.
        unsafe { Vec::from_raw_parts(data, size, size) }
    };
    (status == 0).then_some(value)
}

/// The `:status` of the callout answer being delivered, if it is a 3-digit number. `None` when
/// the callout failed (Envoy calls back with no headers).
pub fn response_status() -> Option<u16> {
    let v = answer_header(":status")?;
    if v.len() != 3 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(v.iter().fold(0u16, |n, b| n * 10 + u16::from(b - b'0')))
}

/// Up to `max_bytes` of the callout answer's body (`body_size` as the callback reported it).
/// `None` when there is none or the host refuses the read.
pub fn response_body(body_size: usize, max_bytes: usize) -> Option<Vec<u8>> {
    if body_size == 0 {
        return None;
    }
    hostcalls::get_buffer(
        BufferType::HttpCallResponseBody,
        0,
        body_size.min(max_bytes),
    )
    .ok()
    .flatten()
}
