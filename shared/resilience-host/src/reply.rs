//! Local replies: answer a request from the filter without reaching the upstream.
//!
//! Every rejection in the pack is an RFC 9457 `application/problem+json` body with a stable `type`
//! per reason, plus headers that name the filter and the reason, so both programs and people can
//! tell a deliberate rejection from an upstream failure.
//!
//! Why a [`Host`] ([`crate::abi`] on the real one): the SDK's `send_http_response` panics on any
//! status but Ok, and a host may refuse a local reply (for example once the response has started). Here a refusal is `false`,
//! which the caller counts; the stream then continues as the host decides.

use resilience_core::problem::{Problem, CONTENT_TYPE};

use crate::host::Host;
use crate::wasm::WasmHost;

/// Send a local reply on `host` with `status`, `headers` and `body`. Returns false if the host
/// refused.
pub fn send_on<H: Host>(host: &H, status: u16, headers: &[(&str, &str)], body: &[u8]) -> bool {
    host.send_local_response(status, headers, body).is_ok()
}

/// Send `problem` as the response on `host`, with extra `headers`. Returns false if the host
/// refused.
pub fn send_problem_on<H: Host>(host: &H, problem: &Problem, headers: &[(&str, &str)]) -> bool {
    let body = problem.body();
    let mut all: Vec<(&str, &str)> = Vec::with_capacity(headers.len().saturating_add(1));
    all.push(("content-type", CONTENT_TYPE));
    all.extend_from_slice(headers);
    send_on(host, problem.status, &all, body.as_bytes())
}

/// [`send_on`] the real host.
pub fn send(status: u16, headers: &[(&str, &str)], body: &[u8]) -> bool {
    send_on(&WasmHost, status, headers, body)
}

/// [`send_problem_on`] the real host.
pub fn send_problem(problem: &Problem, headers: &[(&str, &str)]) -> bool {
    send_problem_on(&WasmHost, problem, headers)
}
