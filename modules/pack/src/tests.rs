//! The pack's chain on a fake proxy: what only the pack has (stages that see each other's
//! decisions, one timer, facts read once), with the filters' own code as the stages.

use proxy_wasm::traits::HttpContext;
use proxy_wasm::types::{Action, MapType};
use resilience_host::fake::{FakeHost, FakeStore};

use crate::pack::Pack;

/// A route-less validator that only allows GET and POST, a breaker that trips on two failures in
/// a row, a budget of two retries, and padding that holds a failure for 50 ms before it learned
/// anything. Each with its own sync interval, so the timer has something to share.
const ALL: &str = r#"{
    "request_validator": { "allowed_methods": ["GET", "POST"], "sync_interval": "100ms" },
    "circuit_breaker": {
        "consecutive_failures": 2, "open_duration": "1s", "open_jitter_percent": 0,
        "sync_interval": "200ms"
    },
    "retry_budget": {
        "max_retries": 2, "budget_percent": 0, "min_retries_per_second": 1, "window": "10s",
        "sync_interval": "300ms", "deadline_aware": false
    },
    "failure_padding": {
        "sync_interval": "400ms", "min_samples": 1000, "fallback_target": "50ms",
        "max_padded_in_flight": 2
    }
}"#;

struct Worker {
    store: FakeStore,
    host: FakeHost,
    pack: Pack<FakeHost>,
}

impl Worker {
    fn new(json: &str) -> Self {
        let store = FakeStore::new();
        let host = store.worker();
        let pack = Pack::configure(host.clone(), json.as_bytes(), "test", store.now_ms()).unwrap();
        assert!(pack.start(store.now_ms()));
        Worker { store, host, pack }
    }

    /// Request headers for route `orders`; the stream and what the chain answered.
    fn start(&self, method: &str, extra: &[(&str, &str)]) -> (Stream, Action) {
        let mut headers = vec![(":method", method), (":path", "/"), (":authority", "svc")];
        headers.extend_from_slice(extra);
        self.host.set_map(MapType::HttpRequestHeaders, &headers);
        self.host.remove_map(MapType::HttpResponseHeaders);
        self.host.set_property(&["xds", "route_name"], b"orders");
        // As Envoy's router reports a request it sent once.
        self.host
            .set_property(&["upstream", "request_attempt_count"], &1u64.to_le_bytes());
        self.host.open_stream(1);
        let mut http = self.pack.stream(1);
        let action = http.on_http_request_headers(headers.len(), true);
        (Stream { http }, action)
    }

    /// The upstream answers `status`; returns what the chain did with the response headers.
    fn respond(&self, s: &mut Stream, status: u16) -> Action {
        let status = status.to_string();
        self.host
            .set_map(MapType::HttpResponseHeaders, &[(":status", &status)]);
        s.http.on_http_response_headers(1, true)
    }

    /// A whole GET answered with `status`, unless a stage answered first.
    fn request(&self, status: u16) -> Action {
        let (mut s, action) = self.start("GET", &[]);
        if action == Action::Continue {
            self.respond(&mut s, status);
        }
        s.http.on_log();
        action
    }

    /// Ticks until every stage flushed its stats.
    fn flush(&self) {
        for _ in 0..5 {
            self.store.advance_ms(100);
            self.pack.tick(self.store.now_ms());
        }
    }

    fn counter(&self, name: &str) -> u64 {
        self.store.counter(name)
    }
}

struct Stream {
    http: resilience_host::stage::Chain<crate::pack::PackStages<FakeHost>>,
}

#[test]
fn an_unknown_member_is_refused_by_name_and_a_stage_error_carries_its_member_in_the_path() {
    let host = FakeStore::new().worker();
    let err = |json: &str| match Pack::configure(host.clone(), json.as_bytes(), "test", 0) {
        Ok(_) => panic!("{json} was accepted"),
        Err(e) => e.to_string(),
    };
    assert!(err(r#"{"circuit_braker": {}}"#).starts_with("circuit_braker: unknown member"));
    assert!(
        err(r#"{"circuit_breaker": {"failure_rate_threshold": 200}}"#)
            .starts_with("circuit_breaker.failure_rate_threshold: ")
    );
    assert!(err(r#"{"retry_budget": []}"#).starts_with("retry_budget: must be an object"));
    assert!(err("[1]").starts_with("must be a JSON object"));
}

#[test]
fn an_empty_pack_passes_every_request_and_answers_nothing() {
    let w = Worker::new("");
    assert_eq!(w.request(503), Action::Continue);
    assert!(w.host.replies().is_empty());
}

#[test]
fn a_request_the_validator_rejects_is_never_counted_by_the_breaker_or_the_budget() {
    let w = Worker::new(ALL);
    for _ in 0..3 {
        let (mut s, action) = w.start("DELETE", &[]);
        assert_eq!(action, Action::Pause);
        s.http.on_log();
    }
    assert_eq!(w.host.replies().len(), 3);
    assert_eq!(w.host.replies()[0].status, 405);
    w.flush();
    assert_eq!(w.counter("request_validator.default.rejected"), 3);
    assert_eq!(w.counter("circuit_breaker.orders.requests"), 0);
    assert_eq!(w.counter("retry_budget.orders.requests"), 0);
    // A breaker that counted those as failures would be open now.
    assert_eq!(w.request(200), Action::Continue);
}

#[test]
fn an_open_breaker_answers_before_the_budget_reserves_a_retry() {
    let w = Worker::new(ALL);
    assert_eq!(w.request(503), Action::Continue);
    assert_eq!(w.request(503), Action::Continue);
    w.flush();
    let allowed = w.counter("retry_budget.orders.retries_allowed");
    let requests = w.counter("retry_budget.orders.requests");
    assert_eq!(w.request(200), Action::Pause);
    let reply = w.host.replies().pop().unwrap();
    assert_eq!(reply.status, 503);
    assert!(reply
        .header("x-resilience-circuit-breaker")
        .unwrap()
        .starts_with("open"));
    w.flush();
    assert_eq!(w.counter("retry_budget.orders.requests"), requests);
    assert_eq!(w.counter("retry_budget.orders.retries_allowed"), allowed);
}

#[test]
fn a_failure_padding_holds_still_reaches_the_breaker_as_a_failure() {
    let w = Worker::new(ALL);
    for i in 1..=2 {
        let (mut s, action) = w.start("GET", &[]);
        assert_eq!(action, Action::Continue);
        // Padding holds the fast failure; the other stages saw it already.
        assert_eq!(w.respond(&mut s, 503), Action::Pause);
        w.store.advance_ms(60);
        w.pack.tick(w.store.now_ms());
        assert_eq!(
            w.host.resumed().len(),
            i,
            "padding released it on its due tick"
        );
        s.http.on_log();
    }
    w.flush();
    assert_eq!(w.counter("failure_padding.orders.padded"), 2);
    assert_eq!(w.counter("circuit_breaker.orders.failures"), 2);
    assert_eq!(w.request(200), Action::Pause, "the breaker opened");
}

#[test]
fn each_stage_ticks_at_its_own_interval_on_the_one_timer() {
    let w = Worker::new(ALL);
    // The first stage due is the validator, 100 ms from the start.
    assert_eq!(w.host.tick_period_ms(), Some(100));
    let mut armed = Vec::new();
    for _ in 0..12 {
        w.store.advance_ms(100);
        w.pack.tick(w.store.now_ms());
        armed.push(w.host.tick_period_ms());
    }
    // Every stage's interval is a multiple of 100 ms: the timer stays at 100 ms.
    assert!(armed.iter().all(|p| *p == Some(100)), "{armed:?}");
}

#[test]
fn a_healthy_request_through_four_stages_reads_the_route_name_and_status_once() {
    let w = Worker::new(ALL);
    w.request(200);
    let before = w.host.calls();
    w.request(200);
    let pack_calls = w.host.calls() - before;
    // The same four filters alone, each reading its own facts.
    let alone: u64 = [
        r#"{"request_validator": { "allowed_methods": ["GET", "POST"] }}"#,
        r#"{"circuit_breaker": { "consecutive_failures": 2 }}"#,
        r#"{"retry_budget": { "max_retries": 2, "deadline_aware": false }}"#,
        r#"{"failure_padding": { "min_samples": 1000, "fallback_target": "50ms" }}"#,
    ]
    .iter()
    .map(|json| {
        let one = Worker::new(json);
        one.request(200);
        let before = one.host.calls();
        one.request(200);
        one.host.calls() - before
    })
    .sum();
    println!(
        "host calls per healthy request: the pack {pack_calls}, the four filters alone {alone}"
    );
    assert!(
        pack_calls + 4 <= alone,
        "the pack made {pack_calls} host calls, the four filters alone {alone}"
    );
}

#[test]
fn a_retry_the_inbound_budget_sheds_is_not_a_failure_to_the_breaker_before_it() {
    // Alone, the breaker would see the budget's 503 on the way back and count it: two in a row
    // would open it. In the chain it learns that a later stage answered.
    let w = Worker::new(
        r#"{
        "circuit_breaker": { "consecutive_failures": 2, "open_duration": "1s" },
        "retry_budget": {
            "mode": "inbound", "budget_percent": 0, "min_retries_per_second": 0.1,
            "window": "10s", "retry_after_min": "1s", "retry_after_max": "1s"
        }
    }"#,
    );
    let mut shed = 0;
    for _ in 0..5 {
        let (mut s, action) = w.start("GET", &[("x-envoy-attempt-count", "2")]);
        match action {
            Action::Continue => {
                w.respond(&mut s, 200);
            }
            _ => {
                // As Envoy does: the local reply goes back through the encoder path, and the
                // log sees its status.
                shed += 1;
                w.respond(&mut s, 503);
                w.host
                    .set_property(&["response", "code"], &503u64.to_le_bytes());
            }
        }
        s.http.on_log();
        w.host
            .set_property(&["response", "code"], &200u64.to_le_bytes());
    }
    assert!(shed >= 3, "the budget shed {shed} of 5 retries");
    assert!(w
        .host
        .replies()
        .iter()
        .all(|r| r.status == 503 && r.header("x-resilience-circuit-breaker").is_none()));
    w.flush();
    assert_eq!(w.counter("circuit_breaker.orders.failures"), 0);
    assert_eq!(
        w.request(200),
        Action::Continue,
        "the breaker stayed closed"
    );
}

/// The bench's five stages on their healthy paths (`cargo pack bench`, "the pack module").
const BENCH: &str = r#"{
    "request_validator": { "allowed_methods": ["GET", "POST"], "max_path_bytes": 2048, "max_header_count": 64 },
    "circuit_breaker": {}, "retry_budget": { "max_retries": 1 },
    "slow_start": { "min_weight_percent": 100 }, "failure_padding": {}
}"#;

#[test]
fn a_grpc_status_counts_for_a_grpc_request_and_is_not_read_for_a_known_plain_http_one() {
    let json = r#"{
        "request_validator": { "allowed_methods": ["GET", "POST"] },
        "circuit_breaker": { "consecutive_failures": 2, "open_duration": "10s" }
    }"#;
    // gRPC `UNAVAILABLE` on HTTP 200, twice: the breaker opens for gRPC calls.
    for (content_type, opens) in [("application/grpc", true), ("application/json", false)] {
        let w = Worker::new(json);
        for _ in 0..2 {
            let (mut s, action) = w.start("POST", &[("content-type", content_type)]);
            assert_eq!(action, Action::Continue, "{content_type}");
            w.host.set_map(
                MapType::HttpResponseHeaders,
                &[(":status", "200"), ("grpc-status", "14")],
            );
            let before = w.host.calls();
            s.http.on_http_response_headers(2, true);
            // `:status` (read once for every stage) and the clock (the outcome's time); for the
            // gRPC request also `grpc-status` and, as it is a failure, the back-off hints
            // `retry-after` and `grpc-retry-pushback-ms`.
            let reads = w.host.calls() - before;
            assert_eq!(reads, if opens { 5 } else { 2 }, "{content_type}");
            s.http.on_log();
        }
        let (_, action) = w.start("POST", &[("content-type", content_type)]);
        assert_eq!(action != Action::Continue, opens, "{content_type}");
    }
}

#[test]
fn a_healthy_request_through_five_stages_costs_at_most_eight_host_calls() {
    // Each host call is Envoy glue (and often a call back into the VM for memory): the pack's
    // cost per request is mostly these. Each fact is read once per callback and shared.
    let w = Worker::new(BENCH);
    for _ in 0..100 {
        w.request(200);
        w.store.advance_ms(1);
    }
    w.host.take_call_log();
    let requests = 1000;
    for i in 0..requests {
        w.request(200);
        w.store.advance_ms(1);
        if i % 100 == 99 {
            w.pack.tick(w.store.now_ms());
        }
    }
    let log = w.host.take_call_log();
    let mut by_kind: std::collections::BTreeMap<&str, usize> = Default::default();
    for c in &log {
        *by_kind.entry(c).or_default() += 1;
    }
    println!("host calls per {requests} healthy requests, ticks included: {by_kind:?}");
    assert!(
        log.len() <= 8 * requests,
        "{} host calls per request: {by_kind:?}",
        log.len() as f64 / requests as f64
    );
    assert_eq!(
        by_kind.get("get_header_map_pairs"),
        Some(&requests),
        "the request's headers are read once"
    );
    assert_eq!(
        by_kind.get("current_time_ns"),
        Some(&(2 * requests)),
        "the clock is read at the request and at the response headers, once for every stage"
    );
}
