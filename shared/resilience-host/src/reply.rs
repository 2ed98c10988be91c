//! Local replies: answer a request from the filter without reaching the upstream.
//!
//! Every rejection in the pack is an RFC 9457 `application/problem+json` body with a stable `type`
//! per reason, plus headers that name the filter and the reason, so both programs and people can
//! tell a deliberate rejection from an upstream failure.
//!
//! Why our own import: the SDK's `send_http_response` panics on any status but Ok, and a host may
//! refuse a local reply (for example once the response has started). Here a refusal is `false`,
//! which the caller counts; the stream then continues as the host decides.

use resilience_core::problem::{Problem, CONTENT_TYPE};

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_send_local_response(
        status_code: u32,
        status_code_details_data: *const u8,
        status_code_details_size: usize,
        body_data: *const u8,
        body_size: usize,
        headers_data: *const u8,
        headers_size: usize,
        grpc_status: i32,
    ) -> u32;
}

const STATUS_OK: u32 = 0;

/// The proxy-wasm header-map wire format: count, then each (name length, value length) as
/// little-endian u32, then each name and value NUL-terminated.
fn serialize(headers: &[(&str, &str)]) -> Vec<u8> {
    let len32 = |n: usize| u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes();
    let size = headers.iter().fold(4usize, |acc, (k, v)| {
        acc.saturating_add(k.len() + v.len() + 10)
    });
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(&len32(headers.len()));
    for (k, v) in headers {
        out.extend_from_slice(&len32(k.len()));
        out.extend_from_slice(&len32(v.len()));
    }
    for (k, v) in headers {
        out.extend_from_slice(k.as_bytes());
        out.push(0);
        out.extend_from_slice(v.as_bytes());
        out.push(0);
    }
    out
}

/// Send a local reply with `status`, `headers` and `body`. Returns false if the host refused.
pub fn send(status: u16, headers: &[(&str, &str)], body: &[u8]) -> bool {
    let map = serialize(headers);
    // SAFETY: every pointer and length comes from a live slice; the host copies the bytes.
    let result = unsafe {
        proxy_send_local_response(
            u32::from(status),
            core::ptr::null(),
            0,
            body.as_ptr(),
            body.len(),
            map.as_ptr(),
            map.len(),
            -1,
        )
    };
    result == STATUS_OK
}

/// Send `problem` as the response, with extra `headers`. Returns false if the host refused.
pub fn send_problem(problem: &Problem, headers: &[(&str, &str)]) -> bool {
    let body = problem.body();
    let mut all: Vec<(&str, &str)> = Vec::with_capacity(headers.len().saturating_add(1));
    all.push(("content-type", CONTENT_TYPE));
    all.extend_from_slice(headers);
    send(problem.status, &all, body.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_serialize_in_the_proxy_wasm_map_format() {
        let bytes = serialize(&[("a", "bc"), ("retry-after", "1")]);
        let mut expected = vec![2, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 11, 0, 0, 0, 1, 0, 0, 0];
        expected.extend_from_slice(b"a\0bc\0retry-after\x001\0");
        assert_eq!(bytes, expected);
    }
}
