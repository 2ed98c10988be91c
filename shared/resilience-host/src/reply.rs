//! Local replies: answer a request from the filter without reaching the upstream.
//!
//! Every rejection in the pack is an RFC 9457 `application/problem+json` body with a stable `type`
//! per reason, plus headers that name the filter and the reason, so both programs and people can
//! tell a deliberate rejection from an upstream failure.
//!
//! A gRPC client reads none of that: it reads `grpc-status`, `grpc-message` and pushback. So a
//! request that is gRPC (or gRPC-Web) by its `content-type` gets the same rejection as a gRPC
//! answer instead: HTTP 200, trailers-only, the [`Refusal`]'s status, the problem's detail as the
//! message, pushback and a binary `google.rpc.Status`, and the same decision headers. Why the pack
//! builds that answer itself rather than leaving it to Envoy: [`resilience_core::grpc`].
//!
//! Why a [`Host`] ([`crate::abi`] on the real one): the SDK's `send_http_response` panics on any
//! status but Ok, and a host may refuse a local reply (for example once the response has
//! started). Here a refusal is `false`, which the caller counts; the stream then continues as the
//! host decides.

use proxy_wasm::types::MapType;
use resilience_core::grpc::{self, Refusal, Wire};
use resilience_core::problem::{Problem, CONTENT_TYPE};

use crate::host::Host;
use crate::request;
use crate::wasm::WasmHost;

/// Send a local reply on `host` with `status`, `headers` and `body`. Returns false if the host
/// refused.
pub fn send_on<H: Host>(host: &H, status: u16, headers: &[(&str, &str)], body: &[u8]) -> bool {
    host.send_local_response(status, headers, body).is_ok()
}

/// How the current request on `host` speaks gRPC, from its `content-type`; `None` for any other
/// request (and when the request headers cannot be read). Request headers are readable at the
/// request headers callback: a filter that may reject later (at the body) reads this there and
/// keeps it.
pub fn request_wire_on<H: Host>(host: &H) -> Option<Wire> {
    request::map_value_on(host, MapType::HttpRequestHeaders, "content-type")
        .and_then(|v| grpc::wire(&v))
}

/// Send `problem` as the response on `host`, with extra `headers`: as a gRPC answer refused as
/// `refusal` when the current request is gRPC, else as problem+json. Returns false if the host
/// refused.
pub fn send_problem_on<H: Host>(
    host: &H,
    problem: &Problem,
    refusal: &Refusal,
    headers: &[(&str, &str)],
) -> bool {
    send_problem_to_on(host, request_wire_on(host), problem, refusal, headers)
}

/// [`send_problem_on`] for a request whose gRPC flavour was read earlier ([`request_wire_on`]).
pub fn send_problem_to_on<H: Host>(
    host: &H,
    wire: Option<Wire>,
    problem: &Problem,
    refusal: &Refusal,
    headers: &[(&str, &str)],
) -> bool {
    if wire.is_some() {
        return send_grpc_on(host, problem, refusal, headers);
    }
    let body = problem.body();
    let mut all: Vec<(&str, &str)> = Vec::with_capacity(headers.len().saturating_add(1));
    all.push(("content-type", CONTENT_TYPE));
    all.extend_from_slice(headers);
    send_on(host, problem.status, &all, body.as_bytes())
}

/// Send `problem` on `host` as a trailers-only gRPC answer refused as `refusal`, with extra
/// `headers` (a `content-type` among them is dropped). Returns false if the host refused.
pub fn send_grpc_on<H: Host>(
    host: &H,
    problem: &Problem,
    refusal: &Refusal,
    headers: &[(&str, &str)],
) -> bool {
    let answer = refusal.headers(problem);
    let mut all: Vec<(&str, &str)> = Vec::with_capacity(answer.len().saturating_add(headers.len()));
    all.extend(answer.iter().map(|(k, v)| (*k, v.as_str())));
    all.extend(
        headers
            .iter()
            .filter(|(k, _)| !k.eq_ignore_ascii_case("content-type")),
    );
    host.send_grpc_local_response(&all, refusal.code.value())
        .is_ok()
}

/// [`send_on`] the real host.
pub fn send(status: u16, headers: &[(&str, &str)], body: &[u8]) -> bool {
    send_on(&WasmHost, status, headers, body)
}

/// [`request_wire_on`] the real host.
pub fn request_wire() -> Option<Wire> {
    request_wire_on(&WasmHost)
}

/// [`send_problem_on`] the real host.
pub fn send_problem(problem: &Problem, refusal: &Refusal, headers: &[(&str, &str)]) -> bool {
    send_problem_on(&WasmHost, problem, refusal, headers)
}

/// [`send_problem_to_on`] the real host.
pub fn send_problem_to(
    wire: Option<Wire>,
    problem: &Problem,
    refusal: &Refusal,
    headers: &[(&str, &str)],
) -> bool {
    send_problem_to_on(&WasmHost, wire, problem, refusal, headers)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::FakeHost;
    use resilience_core::grpc::{Code, Pushback};

    fn problem() -> Problem {
        Problem::new(503, "circuit-open", "Circuit breaker open").with_detail("Retry after 1 s.")
    }

    fn refusal() -> Refusal {
        Refusal::new(Code::Unavailable, "circuit_breaker", "failure_rate")
            .with_pushback(Pushback::After { ms: 1000 })
    }

    #[test]
    fn a_grpc_request_gets_a_trailers_only_grpc_answer_with_the_same_extra_headers() {
        let host = FakeHost::new();
        host.set_map(
            MapType::HttpRequestHeaders,
            &[("content-type", "application/grpc+proto")],
        );
        assert!(send_problem_on(
            &host,
            &problem(),
            &refusal(),
            &[("x-decision", "open"), ("content-type", "text/plain")]
        ));
        let r = host.take_replies().pop().unwrap();
        assert_eq!((r.status, r.grpc_status, r.body.len()), (200, Some(14), 0));
        assert_eq!(r.header("content-type"), Some("application/grpc"));
        assert_eq!(r.header("grpc-status"), Some("14"));
        assert_eq!(r.header("grpc-message"), Some("Retry after 1 s."));
        assert_eq!(r.header("grpc-retry-pushback-ms"), Some("1000"));
        assert!(r.header("grpc-status-details-bin").is_some());
        assert_eq!(r.header("x-decision"), Some("open"));
        assert_eq!(
            r.headers
                .iter()
                .filter(|(k, _)| k == "content-type")
                .count(),
            1
        );
    }

    #[test]
    fn any_other_request_gets_the_problem_document() {
        let host = FakeHost::new();
        host.set_map(
            MapType::HttpRequestHeaders,
            &[("content-type", "application/json")],
        );
        assert!(send_problem_on(
            &host,
            &problem(),
            &refusal(),
            &[("x-decision", "open")]
        ));
        let r = host.take_replies().pop().unwrap();
        assert_eq!((r.status, r.grpc_status), (503, None));
        assert_eq!(r.header("content-type"), Some(CONTENT_TYPE));
        assert!(r
            .body_text()
            .starts_with(r#"{"type":"urn:resilience-pack:problem:circuit-open""#));
        assert_eq!(r.header("grpc-status"), None);
    }
}
