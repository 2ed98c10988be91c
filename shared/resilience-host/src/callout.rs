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
//! - Answer headers and body are read as bytes through [`crate::abi`]: the SDK's `String` getters
//!   unwrap UTF-8, and its readers panic on statuses they do not expect.
//!
//! Callouts do not pass through the listener's HTTP filters, so a filter never sees its own.

use proxy_wasm::types::{BufferType, MapType};

use crate::host::Host;
use crate::wasm::WasmHost;

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
/// `headers` must include `:method`, `:path` and `:authority`.
///
/// Why this is the one host call left to the SDK (`hostcalls::dispatch_http_call`, not
/// [`crate::abi`]): the SDK delivers `on_http_call_response` only for a token it registered,
/// mapped to the context that sent it, and panics on any other token (`invalid token_id`). In
/// proxy-wasm 0.2.5 that registration (`dispatcher::register_callout`) is crate-private and only
/// `dispatch_http_call` reaches it, so our own `proxy_http_call` would trap the VM when the answer
/// arrives. The SDK's call panics on any status but Ok, BadArgument and InternalFailure, and those
/// are the ones Envoy's `Context::httpCall` (`source/extensions/common/wasm/context.cc`) returns:
/// BadArgument for an unknown cluster, a missing `:path`/`:method`/`:authority` or a negative
/// timeout, InternalFailure when its async client cannot start the request. (The proxy-wasm host
/// code around it adds InvalidMemoryAccess, only for pointers outside the VM's memory, which the
/// SDK's live buffers never are.)
pub fn send(
    cluster: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
    timeout_ms: u64,
) -> Result<u32, CalloutError> {
    send_on(&WasmHost, cluster, headers, body, timeout_ms)
}

/// [`send`] on `host`.
pub fn send_on<H: Host>(
    host: &H,
    cluster: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
    timeout_ms: u64,
) -> Result<u32, CalloutError> {
    host.dispatch_http_call(cluster, headers, body, timeout_ms)
}

/// One header of the callout answer; `None` when absent or the host says anything but Ok.
fn answer_header<H: Host>(host: &H, name: &str) -> Option<Vec<u8>> {
    host.get_header_map_value(MapType::HttpCallResponseHeaders, name)
        .ok()
        .flatten()
}

/// The `:status` of the callout answer being delivered, if it is a 3-digit number. `None` when
/// the callout failed (Envoy calls back with no headers).
pub fn response_status() -> Option<u16> {
    response_status_on(&WasmHost)
}

/// [`response_status`] on `host`.
pub fn response_status_on<H: Host>(host: &H) -> Option<u16> {
    let v = answer_header(host, ":status")?;
    if v.len() != 3 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(v.iter().fold(0u16, |n, b| n * 10 + u16::from(b - b'0')))
}

/// Up to `max_bytes` of the callout answer's body (`body_size` as the callback reported it).
/// `None` when there is none or the host refuses the read.
pub fn response_body(body_size: usize, max_bytes: usize) -> Option<Vec<u8>> {
    response_body_on(&WasmHost, body_size, max_bytes)
}

/// [`response_body`] on `host`.
pub fn response_body_on<H: Host>(host: &H, body_size: usize, max_bytes: usize) -> Option<Vec<u8>> {
    if body_size == 0 {
        return None;
    }
    host.get_buffer(
        BufferType::HttpCallResponseBody,
        0,
        body_size.min(max_bytes),
    )
    .ok()
    .flatten()
    // Envoy hands an empty read back as no bytes at all: no body.
    .filter(|b| !b.is_empty())
}
