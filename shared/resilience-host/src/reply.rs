//! Local replies: answer a request from the filter without reaching the upstream.
//!
//! Every rejection in the pack is an RFC 9457 `application/problem+json` body with a stable `type`
//! per reason, plus headers that name the filter and the reason, so both programs and people can
//! tell a deliberate rejection from an upstream failure.
//!
//! Why [`crate::abi`]: the SDK's `send_http_response` panics on any status but Ok, and a host may
//! refuse a local reply (for example once the response has started). Here a refusal is `false`,
//! which the caller counts; the stream then continues as the host decides.

use resilience_core::problem::{Problem, CONTENT_TYPE};

use crate::abi;

/// Send a local reply with `status`, `headers` and `body`. Returns false if the host refused.
pub fn send(status: u16, headers: &[(&str, &str)], body: &[u8]) -> bool {
    abi::send_local_response(status, headers, body).is_ok()
}

/// Send `problem` as the response, with extra `headers`. Returns false if the host refused.
pub fn send_problem(problem: &Problem, headers: &[(&str, &str)]) -> bool {
    let body = problem.body();
    let mut all: Vec<(&str, &str)> = Vec::with_capacity(headers.len().saturating_add(1));
    all.push(("content-type", CONTENT_TYPE));
    all.extend_from_slice(headers);
    send(problem.status, &all, body.as_bytes())
}
