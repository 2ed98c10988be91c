//! Local replies: answer a request from the filter without reaching the upstream.
//!
//! Every rejection in the pack is an RFC 9457 `application/problem+json` body with a stable `type`
//! per reason, plus headers that name the filter and the reason, so both programs and people can
//! tell a deliberate rejection from an upstream failure.

use proxy_wasm::hostcalls;
use resilience_core::problem::{Problem, CONTENT_TYPE};

/// Send `problem` as the response, with extra `headers`. Returns false if the host refused.
pub fn send_problem(problem: &Problem, headers: &[(&str, &str)]) -> bool {
    let body = problem.body();
    let mut all: Vec<(&str, &str)> = Vec::with_capacity(headers.len().saturating_add(1));
    all.push(("content-type", CONTENT_TYPE));
    all.extend_from_slice(headers);
    hostcalls::send_http_response(u32::from(problem.status), all, Some(body.as_bytes())).is_ok()
}
