//! gRPC through the pack, proven with a real gRPC client and server (grpcio over HTTP/2).
//!
//! Each test starts the grpcio server (`tests/grpc/server.py`), an Envoy (2 workers) with the
//! filters under test in front of it on an HTTP/2 cluster, and runs the grpcio client
//! (`tests/grpc/client.py`), which reports what its library made of each answer: the status code,
//! the message, the trailing metadata, the `google.rpc.Status` decoded by the real protos, and how
//! long the call took, its own retries included. Attempts are counted by Envoy
//! (`downstream_rq_total`): every attempt is a new HTTP/2 stream. Figures worth reporting are
//! printed as `figure:` lines (`--nocapture`).

// Test code: a failed expectation should panic with its message.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::time::Duration;

use harness::config::wasm_filter_yaml;
use harness::grpc::{self, Call, GrpcServer, Outcome, RetryPolicy};
use harness::{
    filter_wasm, free_port, request, ClusterSpec, Envoy, EnvoyOptions, ProxyConfig, RouteSpec,
};
use serde_json::Value;

const UNARY: &str = "/test.Echo/Unary";

/// Envoy's `grpc_web` filter, for the tests that put it in front of the pack.
const GRPC_WEB: &str = "- name: envoy.filters.http.grpc_web
  typed_config:
    \"@type\": type.googleapis.com/envoy.extensions.filters.http.grpc_web.v3.GrpcWeb
";

struct Rig {
    envoy: Envoy,
    server: GrpcServer,
    port: u16,
}

impl Rig {
    /// Requests Envoy has received on its listener so far (each gRPC attempt is one).
    fn downstream_requests(&self) -> u64 {
        self.envoy.stat("http.ingress.downstream_rq_total")
    }

    /// Runs `calls` through the client and returns the outcomes and the attempts Envoy saw.
    fn calls(&self, retry: Option<&RetryPolicy>, calls: &[Call]) -> (Vec<Outcome>, u64) {
        let before = self.downstream_requests();
        let out = grpc::call(self.port, retry, 1, calls).unwrap_or_else(|e| {
            panic!("{e}\nserver stderr:\n{}", self.server.stderr());
        });
        let attempts = self.downstream_requests() - before;
        self.assert_no_vm_failure();
        (out, attempts)
    }

    fn call(&self, retry: Option<&RetryPolicy>, call: Call) -> (Outcome, u64) {
        let (mut out, attempts) = self.calls(retry, &[call]);
        (out.pop().unwrap(), attempts)
    }

    fn wait_stat(&self, name: &str, n: u64) -> u64 {
        self.envoy
            .wait_stat(name, n, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("{e}\n{}", self.envoy.log_tail(40)))
    }

    fn assert_no_vm_failure(&self) {
        if let Some(failure) = self.envoy.vm_failure() {
            panic!("{failure}");
        }
    }
}

fn filter(crate_name: &str, json: &str) -> String {
    let wasm = filter_wasm(crate_name).expect("filter module");
    let root_id = crate_name.replace('-', "_");
    wasm_filter_yaml(&root_id, &root_id, &root_id, &wasm, json)
}

/// The grpcio server behind an Envoy with `filters_yaml`: one route, `grpc`, for every path.
fn rig(filters_yaml: &str) -> Rig {
    let server = GrpcServer::start().expect("gRPC server");
    let port = free_port();
    let config = ProxyConfig::new(port, free_port())
        .with_http_filters(filters_yaml)
        .route(RouteSpec::new("grpc", "/", "grpc").with_timeout(Duration::from_secs(10)))
        .cluster(ClusterSpec::new("grpc", &[server.port()]).with_http2());
    let envoy = Envoy::start(&config.render(), &EnvoyOptions::default()).expect("envoy");
    envoy.wait_listener(port).expect("listener");
    Rig {
        envoy,
        server,
        port,
    }
}

/// What every gRPC refusal has: a short human message (not a JSON document) that the binary
/// status repeats, the filter and reason named in its `ErrorInfo`, and the decision header.
fn assert_refusal(o: &Outcome, code: &str, reason: &str, filter: &str, decision: (&str, &str)) {
    assert_eq!(o.code, code, "{o:#?}");
    assert!(
        !o.details.is_empty() && o.details.len() <= 256 && !o.details.contains('{'),
        "a short human message: {:?}",
        o.details
    );
    assert_eq!(o.status["code"].as_u64(), Some(o.code_value), "{o:#?}");
    assert_eq!(o.status["message"].as_str(), Some(o.details.as_str()));
    let info = &o.status["error_info"];
    assert_eq!(info["reason"].as_str(), Some(reason), "{o:#?}");
    assert_eq!(info["domain"].as_str(), Some("resilience-pack"));
    assert_eq!(info["metadata"]["filter"].as_str(), Some(filter));
    assert_eq!(o.trailer(decision.0), Some(decision.1), "{o:#?}");
}

/// Four calls the server fails with `UNAVAILABLE` (enough to trip a breaker with
/// `minimum_requests` 4), then one plain call 300 ms later; none of them retried.
fn four_unavailable_then_one_plain_call() -> Vec<Call> {
    let failing = Call::unary(UNARY)
        .with_metadata("x-respond-code", "14")
        .without_retry();
    let mut calls = vec![failing; 4];
    calls.push(
        Call::unary(UNARY)
            .without_retry()
            .after(Duration::from_millis(300)),
    );
    calls
}

#[test]
fn a_deadline_the_validator_refuses_is_deadline_exceeded_and_the_client_does_not_retry_it() {
    let rig = rig(&filter(
        "request-validator",
        r#"{"min_remaining_deadline": "100ms"}"#,
    ));
    // Even a policy that retries DEADLINE_EXCEEDED stops: the pushback says a retry is useless.
    let policy = RetryPolicy {
        retryable: vec!["UNAVAILABLE".to_owned(), "DEADLINE_EXCEEDED".to_owned()],
        ..RetryPolicy::standard()
    };
    let (o, attempts) = rig.call(
        Some(&policy),
        Call::unary(UNARY).with_timeout(Duration::from_millis(50)),
    );
    println!(
        "figure: a 50 ms deadline refused as {} in {:?}: {:?}",
        o.code, o.elapsed, o.details
    );
    assert_refusal(
        &o,
        "DEADLINE_EXCEEDED",
        "DEADLINE_TOO_SHORT",
        "request_validator",
        (
            "x-resilience-request-validator",
            "rejected; reason=min_remaining_deadline",
        ),
    );
    assert!(
        o.details.starts_with("The request's remaining deadline (")
            && o.details
                .ends_with("is below this route's minimum (100 ms)."),
        "{:?}",
        o.details
    );
    assert!(
        o.elapsed < Duration::from_millis(45),
        "answered by the proxy, not by the client's own deadline: {:?}",
        o.elapsed
    );
    assert_eq!(o.trailer("grpc-retry-pushback-ms"), Some("-1"));
    assert_eq!(
        o.status["error_info"]["metadata"]["reason"],
        "min_remaining_deadline"
    );
    assert_eq!(attempts, 1, "the client made no retry");
    assert_eq!(rig.server.call_count(), 0, "the server saw nothing");

    let (ok, _) = rig.call(
        Some(&policy),
        Call::unary(UNARY)
            .with_timeout(Duration::from_secs(5))
            .with_payload(3),
    );
    assert_eq!(ok.code, "OK", "{ok:#?}");
    assert_eq!(rig.server.call_count(), 1);
}

#[test]
fn an_open_breaker_tells_grpc_clients_when_to_come_back_and_their_retry_policy_waits_that_long() {
    let rig = rig(&filter(
        "circuit-breaker",
        r#"{"sync_interval": "50ms", "open_jitter_percent": 0, "minimum_requests": 4,
            "failure_rate_threshold": 50, "open_duration": "2s", "half_open_probes": 1}"#,
    ));
    // One client run, so that the breaker's open time does not pass while a client starts: four
    // failures trip it; a call without retries shows the refusal; the last call has the standard
    // policy (4 attempts, 10 ms backoff), which would spend every attempt on the open breaker in
    // 30 ms. Honouring the pushback, it waits, and its next attempt is the probe.
    let mut calls = four_unavailable_then_one_plain_call();
    calls.push(Call::unary(UNARY).with_timeout(Duration::from_secs(8)));
    let before = rig.server.call_count();
    let (out, attempts) = rig.calls(Some(&RetryPolicy::standard()), &calls);
    assert!(
        out[..4].iter().all(|o| o.details == "server says 14"),
        "{out:#?}"
    );
    let out = &out[4..];
    let o = &out[0];
    assert_refusal(
        o,
        "UNAVAILABLE",
        "CIRCUIT_OPEN",
        "circuit_breaker",
        ("x-resilience-circuit-breaker", "open; reason=failure_rate"),
    );
    assert!(
        o.details
            .starts_with("Requests for grpc are rejected while its circuit breaker is open (failure_rate); retry after "),
        "{:?}",
        o.details
    );
    let pushback: u64 = o
        .trailer("grpc-retry-pushback-ms")
        .unwrap()
        .parse()
        .unwrap();
    let retry_after: u64 = o.trailer("retry-after").unwrap().parse().unwrap();
    assert_eq!(
        pushback,
        retry_after * 1000,
        "the same delay as retry-after"
    );
    assert_eq!(o.status["retry_delay_ms"].as_u64(), Some(pushback));
    assert_eq!(o.status["error_info"]["metadata"]["reason"], "failure_rate");

    let o = &out[1];
    println!(
        "figure: through an open breaker (pushback {pushback} ms) the call took {:?}, {} attempts in all: {}",
        o.elapsed, attempts, o.code
    );
    assert_eq!(o.code, "OK", "{o:#?}");
    assert_eq!(
        attempts, 7,
        "four failures, the refusal, then one refused attempt and the probe after the pushback"
    );
    assert!(
        o.elapsed >= Duration::from_millis(900),
        "the retry waited for the pushback (at least 1 s): {:?}",
        o.elapsed
    );
    assert_eq!(rig.server.call_count(), before + 5);

    let http = request(rig.port, "GET", "/x", &[], None).unwrap();
    assert_eq!(
        (http.status, http.body_str().as_str()),
        (200, ""),
        "closed again after the probe"
    );
}

#[test]
fn in_the_pack_behind_the_validator_grpc_failures_still_open_the_breaker() {
    // The validator reads every request header first, so the breaker knows which calls are gRPC
    // and skips `grpc-status` only for plain HTTP ones: a gRPC UNAVAILABLE still counts.
    let rig = rig(&filter(
        "resilience-pack",
        r#"{"request_validator": {"allowed_methods": ["GET", "POST"]},
            "circuit_breaker": {"sync_interval": "50ms", "open_jitter_percent": 0,
                "minimum_requests": 4, "failure_rate_threshold": 50, "open_duration": "10s"}}"#,
    ));
    let calls = four_unavailable_then_one_plain_call();
    let (out, _) = rig.calls(None, &calls);
    assert!(
        out[..4].iter().all(|o| o.details == "server says 14"),
        "{out:#?}"
    );
    assert_refusal(
        &out[4],
        "UNAVAILABLE",
        "CIRCUIT_OPEN",
        "circuit_breaker",
        ("x-resilience-circuit-breaker", "open; reason=failure_rate"),
    );
    assert_eq!(rig.server.call_count(), 4);
}

#[test]
fn an_open_breakers_custom_rejection_is_for_http_clients_and_grpc_clients_still_get_grpc() {
    let rig = rig(&filter(
        "circuit-breaker",
        r#"{"force_open": true,
            "rejection": {"status": 429, "body": "go away", "content_type": "text/plain"}}"#,
    ));
    let http = request(rig.port, "GET", "/x", &[], None).unwrap();
    assert_eq!((http.status, http.body_str().as_str()), (429, "go away"));
    let (o, _) = rig.call(None, Call::unary(UNARY));
    assert_refusal(
        &o,
        "UNAVAILABLE",
        "CIRCUIT_OPEN",
        "circuit_breaker",
        ("x-resilience-circuit-breaker", "open; reason=forced_open"),
    );
    assert!(o.trailer("grpc-retry-pushback-ms").is_some());
    assert_eq!(rig.server.call_count(), 0);
}

#[test]
fn a_retry_the_inbound_budget_sheds_stops_the_clients_retry_policy() {
    let rig = rig(&filter(
        "retry-budget",
        r#"{"mode": "inbound", "budget_percent": 0, "min_retries_per_second": 0}"#,
    ));
    // A policy that would retry the shed status too: only the pushback stops it.
    let policy = RetryPolicy {
        retryable: vec!["UNAVAILABLE".to_owned(), "RESOURCE_EXHAUSTED".to_owned()],
        ..RetryPolicy::standard()
    };
    let (o, attempts) = rig.call(
        Some(&policy),
        Call::unary(UNARY)
            .with_timeout(Duration::from_secs(5))
            .with_metadata("x-respond-code", "14"),
    );
    println!(
        "figure: a shed retry ends the call after {attempts} attempts of 4: {} {:?}",
        o.code, o.details
    );
    assert_refusal(
        &o,
        "RESOURCE_EXHAUSTED",
        "RETRY_BUDGET_EXHAUSTED",
        "retry_budget",
        ("x-resilience-retry-budget", "shed; reason=budget"),
    );
    assert!(
        o.details.starts_with("Retries for grpc are shed: ")
            && o.details.ends_with("; do not retry."),
        "{:?}",
        o.details
    );
    assert_eq!(o.trailer("grpc-retry-pushback-ms"), Some("-1"));
    assert_eq!(o.trailer("x-envoy-ratelimited"), Some("true"));
    assert_eq!(
        o.status["retry_delay_ms"],
        Value::Null,
        "no RetryInfo: do not retry"
    );
    assert_eq!(
        attempts, 2,
        "the first attempt, then one retry that was shed"
    );
    assert_eq!(
        rig.server.call_count(),
        1,
        "only the first attempt reached the server"
    );
}

#[test]
fn the_retry_budget_bounds_the_retries_envoy_makes_under_grpc_retry_conditions() {
    let rig = rig(&filter(
        "retry-budget",
        r#"{"sync_interval": "50ms", "max_retries": 3, "retry_on": "unavailable",
            "routes": [
              {"name": "generous", "match": {"prefix": "/test.Generous/"},
               "min_retries_per_second": 1000},
              {"name": "spent", "match": {"prefix": "/test.Spent/"},
               "budget_percent": 0, "min_retries_per_second": 0}]}"#,
    ));
    let unavailable = |m: &str| Call::unary(m).with_metadata("x-respond-code", "14");
    let (o, _) = rig.call(None, unavailable("/test.Generous/Call"));
    assert_eq!(o.code, "UNAVAILABLE");
    assert_eq!(
        rig.server.wait_calls(4, Duration::from_secs(2)),
        Ok(4),
        "Envoy retried UNAVAILABLE three times under x-envoy-retry-grpc-on"
    );
    rig.wait_stat("wasmcustom.retry_budget.generous.retries_allowed", 3);

    rig.server.clear_calls();
    let (o, _) = rig.call(None, unavailable("/test.Spent/Call"));
    assert_eq!(o.code, "UNAVAILABLE");
    assert_eq!(
        o.trailer("x-resilience-retry-budget"),
        Some("deny; reason=budget")
    );
    rig.wait_stat("wasmcustom.retry_budget.spent.retries_denied_budget", 1);
    assert_eq!(rig.server.call_count(), 1, "no retry without budget");
    println!("figure: UNAVAILABLE with budget: 4 attempts; with the budget spent: 1");
}

#[test]
fn the_validator_answers_unknown_methods_missing_deadlines_and_oversized_messages_in_grpc() {
    let rig = rig(&filter(
        "request-validator",
        r#"{"grpc_methods": ["/test.Echo/Unary", "/test.Echo/Collect", "/test.Health/*"],
            "require_grpc_timeout": true, "grpc_framing": true, "max_body_bytes": 1000}"#,
    ));
    let t = Duration::from_secs(5);
    let (out, _) = rig.calls(
        None,
        &[
            Call::unary("/test.Echo/Delete").with_timeout(t),
            Call::unary(UNARY),
            Call::unary(UNARY).with_timeout(t).with_payload(2000),
            Call::unary(UNARY).with_timeout(t).with_payload(900),
            Call::unary("/test.Health/Check").with_timeout(t),
            Call::unary("/test.Echo/Collect")
                .with_timeout(t)
                .with_payload(300)
                .streaming(3),
        ],
    );
    let decision = |rule: &str| format!("rejected; reason={rule}");
    assert_refusal(
        &out[0],
        "UNIMPLEMENTED",
        "UNKNOWN_GRPC_METHOD",
        "request_validator",
        ("x-resilience-request-validator", &decision("grpc_methods")),
    );
    assert_eq!(
        out[0].details,
        "This route does not serve the gRPC method /test.Echo/Delete."
    );
    assert_refusal(
        &out[1],
        "INVALID_ARGUMENT",
        "MISSING_DEADLINE",
        "request_validator",
        (
            "x-resilience-request-validator",
            &decision("require_grpc_timeout"),
        ),
    );
    assert_refusal(
        &out[2],
        "RESOURCE_EXHAUSTED",
        "BODY_TOO_LARGE",
        "request_validator",
        (
            "x-resilience-request-validator",
            &decision("max_body_bytes"),
        ),
    );
    assert_eq!(
        out[2].details,
        "gRPC message 0 announces 2000 bytes; this route accepts at most 1000."
    );
    for (i, o) in out.iter().enumerate().skip(3) {
        assert_eq!(o.code, "OK", "call {i}: {o:#?}");
    }
    let calls = rig.server.calls();
    assert_eq!(
        calls.len(),
        3,
        "only the good calls reached the server: {calls:?}"
    );
    assert_eq!(
        calls[2]["messages"], 3,
        "a stream of well-formed messages passes"
    );
    rig.wait_stat(
        "wasmcustom.request_validator.default.violations_grpc_methods",
        1,
    );
}

/// A POST with a gRPC body made by hand (the real client only sends well-formed ones).
fn raw_grpc(port: u16, content_type: &str, body: &[u8]) -> harness::Response {
    request(
        port,
        "POST",
        UNARY,
        &[("content-type", content_type), ("te", "trailers")],
        Some(body),
    )
    .expect("request through Envoy")
}

#[test]
fn a_body_whose_length_prefixes_lie_is_invalid_argument_before_the_server_sees_it() {
    let rig = rig(&filter("request-validator", r#"{"grpc_framing": true}"#));
    for (what, body) in [
        ("ends inside a message", &b"\x00\x00\x00\x00\x09short"[..]),
        ("flag 2", &b"\x02\x00\x00\x00\x01x"[..]),
        (
            "compressed, no grpc-encoding",
            &b"\x01\x00\x00\x00\x01x"[..],
        ),
    ] {
        let r = raw_grpc(rig.port, "application/grpc", body);
        assert_eq!(r.status, 200, "{what}: gRPC answers are HTTP 200");
        assert_eq!(
            r.header("grpc-status"),
            Some("3"),
            "{what}: {:?}",
            r.headers
        );
        assert_eq!(
            r.header("x-resilience-request-validator"),
            Some("rejected; reason=grpc_framing"),
            "{what}"
        );
        assert!(r.body.is_empty(), "{what}: trailers-only");
        assert!(
            r.header("grpc-message")
                .is_some_and(|m| m.contains("gRPC message 0")),
            "{what}: {:?}",
            r.header("grpc-message")
        );
    }
    assert_eq!(rig.server.call_count(), 0);
}

#[test]
fn grpc_web_calls_get_the_same_trailers_only_answer_through_envoys_grpc_web_filter() {
    let rig = rig(&format!(
        "{GRPC_WEB}{}",
        filter(
            "request-validator",
            r#"{"min_remaining_deadline": "100ms"}"#
        )
    ));
    for content_type in ["application/grpc-web+proto", "application/grpc-web-text"] {
        let r = request(
            rig.port,
            "POST",
            UNARY,
            &[
                ("content-type", content_type),
                ("x-grpc-web", "1"),
                ("grpc-timeout", "20m"),
            ],
            Some(b"\0\0\0\0\0"),
        )
        .unwrap();
        assert_eq!(r.status, 200, "{content_type}");
        assert_eq!(
            r.header("grpc-status"),
            Some("4"),
            "{content_type}: {:?}",
            r.headers
        );
        assert_eq!(r.header("content-type"), Some("application/grpc-web+proto"));
        assert_eq!(r.header("grpc-retry-pushback-ms"), Some("-1"));
        assert!(r
            .header("grpc-message")
            .is_some_and(|m| m.starts_with("The request's remaining deadline (20 ms)")));
        assert!(r.body.is_empty(), "{content_type}: trailers-only");
    }
    assert_eq!(rig.server.call_count(), 0);
}

#[test]
fn validator_shedding_sends_its_retry_after_as_pushback_and_the_retry_waits_for_it() {
    let rig = rig(&filter(
        "request-validator",
        r#"{"sync_interval": "50ms", "max_concurrent_requests": 1, "shed_retry_after": "1s"}"#,
    ));
    let slow = Call::unary(UNARY)
        .with_timeout(Duration::from_secs(8))
        .with_metadata("x-delay-ms", "600");
    let fast = Call::unary(UNARY).with_timeout(Duration::from_secs(8));
    // Two calls at once: the second finds the one permit taken.
    let out = grpc::call(rig.port, None, 2, &[slow.clone(), fast.clone()]).unwrap();
    let shed: Vec<&Outcome> = out.iter().filter(|o| o.code != "OK").collect();
    assert_eq!(shed.len(), 1, "{out:#?}");
    assert_refusal(
        shed[0],
        "UNAVAILABLE",
        "OVERLOADED",
        "request_validator",
        (
            "x-resilience-request-validator",
            "rejected; reason=max_concurrent_requests",
        ),
    );
    assert_eq!(shed[0].trailer("grpc-retry-pushback-ms"), Some("1000"));
    assert_eq!(shed[0].status["retry_delay_ms"].as_u64(), Some(1000));

    // With the standard policy, the shed call comes back after the pushback and gets through.
    let out = grpc::call(rig.port, Some(&RetryPolicy::standard()), 2, &[slow, fast]).unwrap();
    assert!(out.iter().all(|o| o.code == "OK"), "{out:#?}");
    let waited = out.iter().map(|o| o.elapsed).max().unwrap();
    println!("figure: shed, then admitted after the pushback: {waited:?}");
    assert!(waited >= Duration::from_millis(900), "{waited:?}");
    rig.assert_no_vm_failure();
}

#[test]
fn a_replica_warming_up_sheds_grpc_calls_as_unavailable_with_its_retry_after_as_pushback() {
    let rig = rig(&filter(
        "slow-start",
        r#"{"sync_interval": "50ms", "slow_start_window": "60s", "min_weight_percent": 1,
            "retry_after": "2s"}"#,
    ));
    // The first success starts the ramp; from then on about 1% of calls are admitted.
    let calls: Vec<Call> = (0..30)
        .map(|_| Call::unary(UNARY).with_timeout(Duration::from_secs(5)))
        .collect();
    let (out, _) = rig.calls(None, &calls);
    let shed: Vec<&Outcome> = out.iter().filter(|o| o.code != "OK").collect();
    assert!(shed.len() >= 20, "{} of 30 shed", shed.len());
    let o = shed[0];
    assert_eq!(o.code, "UNAVAILABLE", "{o:#?}");
    assert_eq!(o.status["error_info"]["reason"], "WARMING_UP");
    assert_eq!(o.status["error_info"]["metadata"]["filter"], "slow_start");
    assert_eq!(o.trailer("grpc-retry-pushback-ms"), Some("2000"));
    assert_eq!(o.status["retry_delay_ms"].as_u64(), Some(2000));
    assert!(o
        .trailer("x-resilience-slow-start")
        .is_some_and(|d| d.starts_with("shed; reason=warming")));
    assert!(!o.details.contains('{') && o.details.starts_with("This replica is warming up"));
}
