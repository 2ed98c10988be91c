//! The circuit breaker, proven against the real Envoy (several workers, one shared state).
//!
//! Each test starts its own Envoy (`--concurrency` 2 or 4) with the filter in front of a scripted
//! upstream, drives real HTTP traffic, and asserts on what a client sees, on what the upstream
//! received and on Envoy's stats. Figures worth reporting are printed (`--nocapture`).

// Test code: a failed expectation should panic with its message.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::time::{Duration, Instant};

use harness::config::wasm_filter_yaml;
use harness::{
    filter_wasm, free_port, get, parallel, Behavior, ClusterSpec, Envoy, EnvoyOptions, ProxyConfig,
    Response, RouteSpec, Upstream,
};

const HEADER: &str = "x-resilience-circuit-breaker";

struct Rig {
    envoy: Envoy,
    upstream: Upstream,
    port: u16,
}

impl Rig {
    fn get(&self, path: &str) -> Response {
        get(self.port, path).expect("request through Envoy")
    }

    fn stat(&self, key: &str, name: &str) -> u64 {
        self.envoy
            .stat(&format!("wasmcustom.circuit_breaker.{key}.{name}"))
    }

    /// Waits until a per-key stat reaches `n` (stats are flushed on the filter's tick).
    fn wait_stat(&self, key: &str, name: &str, n: u64) -> u64 {
        self.envoy
            .wait_stat(
                &format!("wasmcustom.circuit_breaker.{key}.{name}"),
                n,
                Duration::from_secs(5),
            )
            .unwrap_or_else(|e| panic!("{e}\n{}", self.envoy.log_tail(40)))
    }

    fn assert_no_vm_failure(&self) {
        if let Some(failure) = self.envoy.vm_failure() {
            panic!("{failure}");
        }
    }
}

fn rig_with(filter_json: &str, routes: &[(&str, &str)], concurrency: u32) -> Rig {
    let upstream = Upstream::start().expect("upstream");
    rig_for(upstream, filter_json, routes, concurrency)
}

/// Envoy on a free port with the breaker configured by `filter_json`, plus whatever clusters
/// and routes `add` puts in; the listener port with it.
fn start_envoy(
    filter_json: &str,
    concurrency: u32,
    add: impl FnOnce(ProxyConfig) -> ProxyConfig,
) -> (Envoy, u16) {
    let wasm = filter_wasm("circuit-breaker").expect("circuit_breaker.wasm");
    let port = free_port();
    let filter = wasm_filter_yaml(
        "circuit_breaker",
        "circuit_breaker",
        "cb",
        &wasm,
        filter_json,
    );
    let config = add(ProxyConfig::new(port, free_port()).with_http_filters(&filter));
    let envoy = Envoy::start(
        &config.render(),
        &EnvoyOptions {
            concurrency,
            ..EnvoyOptions::default()
        },
    )
    .expect("envoy starts with the filter");
    envoy.wait_listener(port).expect("listener");
    (envoy, port)
}

fn rig_for(
    upstream: Upstream,
    filter_json: &str,
    routes: &[(&str, &str)],
    concurrency: u32,
) -> Rig {
    let (envoy, port) = start_envoy(filter_json, concurrency, |mut config| {
        config = config.cluster(ClusterSpec::new("upstream", &[upstream.port()]));
        for (name, prefix) in routes {
            config = config.route(
                RouteSpec::new(name, prefix, "upstream").with_timeout(Duration::from_secs(5)),
            );
        }
        config
    });
    Rig {
        envoy,
        upstream,
        port,
    }
}

fn rig(filter_json: &str) -> Rig {
    rig_with(filter_json, &[("api", "/")], 2)
}

fn is_rejection(r: &Response) -> bool {
    r.status == 503 && r.header(HEADER).is_some()
}

/// Sends requests one by one until the breaker rejects one (or `limit` requests were sent).
fn until_rejected(rig: &Rig, path: &str, limit: usize) -> Option<(usize, Response)> {
    for i in 0..limit {
        let r = rig.get(path);
        if is_rejection(&r) {
            return Some((i, r));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    None
}

const FAST: &str = r#""sync_interval": "50ms", "open_jitter_percent": 0"#;

#[test]
fn stays_closed_under_healthy_traffic() {
    let rig = rig(&format!(r#"{{ {FAST}, "minimum_requests": 5 }}"#));
    let results = parallel(8, 300, |_| rig.get("/ok").status);
    assert!(results.iter().all(|s| *s == 200));
    assert_eq!(rig.upstream.requests(), 300);
    rig.wait_stat("api", "requests", 300);
    assert_eq!(rig.stat("api", "rejected"), 0);
    assert_eq!(rig.stat("api", "failures"), 0);
    assert_eq!(rig.envoy.stat("wasmcustom.circuit_breaker.api.state"), 0);
    rig.assert_no_vm_failure();
}

#[test]
fn does_not_trip_below_minimum_requests_even_if_every_request_fails() {
    let rig = rig(&format!(r#"{{ {FAST}, "minimum_requests": 20 }}"#));
    rig.upstream.set_default(Behavior::status(500));
    for _ in 0..19 {
        assert_eq!(rig.get("/x").status, 500);
    }
    std::thread::sleep(Duration::from_millis(300));
    let r = rig.get("/x");
    assert_eq!(r.status, 500, "the 20th request still reaches the upstream");
    assert_eq!(rig.upstream.requests(), 20);
}

#[test]
fn trips_at_the_configured_failure_rate_and_then_rejects_fast_with_retry_after() {
    let rig = rig(&format!(
        r#"{{ {FAST}, "minimum_requests": 20, "failure_rate_threshold": 50, "open_duration": "10s" }}"#
    ));
    // 40% failures: below the threshold, the breaker stays closed.
    rig.upstream.set_default(
        Behavior::status(200)
            .failing_every_nth(5)
            .on_failure(Behavior::status(500)),
    );
    for _ in 0..50 {
        rig.get("/x");
    }
    std::thread::sleep(Duration::from_millis(200));
    assert_ne!(rig.get("/x").status, 503);

    // Every request fails now. The window holds 10 failures in 50 (+1 probe of the state), so
    // the 40th failure from here makes it 50/101 < 50% and the 41st crosses the threshold.
    rig.upstream.set_default(Behavior::status(500));
    let mut crossed_at = None;
    let mut first = None;
    for i in 0..500 {
        let r = rig.get("/x");
        if is_rejection(&r) {
            first = Some((i, r));
            break;
        }
        let failures_so_far = 10 + i + 1;
        let total_so_far = 51 + i + 1;
        if crossed_at.is_none() && failures_so_far * 2 >= total_so_far {
            crossed_at = Some(Instant::now());
        }
    }
    let (after, first) = first.expect("the breaker opens");
    let time_to_open = crossed_at.expect("crossed").elapsed();
    println!(
        "figure: breaker opened {time_to_open:?} after the request that crossed 50% \
         (sync_interval 50ms, {after} failing requests sent in all)"
    );
    assert!(time_to_open < Duration::from_millis(500));
    assert!(first
        .header(HEADER)
        .unwrap()
        .contains("open; reason=failure_rate"));

    // Every worker learns of the trip on its next tick (sync_interval).
    std::thread::sleep(Duration::from_millis(150));
    // While open: nothing reaches the upstream, rejections are fast and say when to come back.
    let before = rig.upstream.requests();
    let mut worst = Duration::ZERO;
    let results = parallel(8, 200, |_| rig.get("/x"));
    for r in &results {
        assert!(is_rejection(r), "status {} {:?}", r.status, r.body_str());
        let retry_after: u64 = r.header("retry-after").unwrap().parse().unwrap();
        assert!((1..=10).contains(&retry_after), "retry-after {retry_after}");
        assert_eq!(r.header("content-type"), Some("application/problem+json"));
        let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(body["type"], "urn:resilience-pack:problem:circuit-open");
        assert_eq!(body["status"], 503);
        assert_eq!(body["reason"], "failure_rate");
        worst = worst.max(r.elapsed);
    }
    assert_eq!(
        rig.upstream.requests(),
        before,
        "no request reached the upstream while open"
    );
    println!("figure: slowest of 200 rejections while open: {worst:?}");
    assert!(worst < Duration::from_millis(100));
    rig.wait_stat("api", "rejected", 201);
    assert_eq!(rig.stat("api", "trips_failure_rate"), 1);
    assert_eq!(rig.envoy.stat("wasmcustom.circuit_breaker.api.state"), 1);
    rig.assert_no_vm_failure();
}

/// Trips a breaker whose upstream now fails everything; returns when the first rejection is seen.
fn trip(rig: &Rig, path: &str) {
    rig.upstream.set_default(Behavior::status(500));
    until_rejected(rig, path, 500).expect("the breaker opens");
}

#[test]
fn half_open_admits_exactly_the_configured_probes_across_all_workers() {
    let rig = rig_with(
        &format!(
            r#"{{ {FAST}, "minimum_requests": 10, "open_duration": "1s", "half_open_probes": 3 }}"#
        ),
        &[("api", "/")],
        4,
    );
    trip(&rig, "/x");
    // Probes are slow so that they are all still in flight while the rest arrive.
    rig.upstream
        .set_default(Behavior::status(200).with_latency(Duration::from_millis(800)));
    std::thread::sleep(Duration::from_millis(1_200));
    let before = rig.upstream.requests();
    let results = parallel(40, 80, |_| rig.get("/x"));
    let admitted = results.iter().filter(|r| r.status == 200).count();
    let rejected = results.iter().filter(|r| is_rejection(r)).count();
    let half_open = results
        .iter()
        .filter(|r| r.header(HEADER).is_some_and(|h| h.starts_with("half_open")))
        .count();
    println!("figure: 80 concurrent requests on 4 workers in half-open: {admitted} admitted, {rejected} rejected ({half_open} as half_open)");
    assert_eq!(admitted, 3, "exactly half_open_probes requests pass");
    assert_eq!(rig.upstream.requests() - before, 3);
    assert_eq!(rejected, 77);

    // The three probes succeeded: the breaker is closed again for every worker.
    std::thread::sleep(Duration::from_millis(200));
    let after = parallel(8, 40, |_| rig.get("/x").status);
    assert!(after.iter().all(|s| *s == 200), "{after:?}");
    rig.wait_stat("api", "probes_succeeded", 3);
    assert_eq!(rig.stat("api", "probes_admitted"), 3);
    assert_eq!(rig.envoy.stat("wasmcustom.circuit_breaker.api.state"), 0);
}

#[test]
fn a_failed_probe_reopens_the_breaker_for_longer() {
    let rig = rig(&format!(
        r#"{{ {FAST}, "minimum_requests": 10, "open_duration": "1s", "open_duration_multiplier": 3, "half_open_probes": 1 }}"#
    ));
    trip(&rig, "/x");
    std::thread::sleep(Duration::from_millis(1_100));
    // The upstream still fails: the probe fails and the breaker re-opens for 3 s.
    let probe = rig.get("/x");
    assert_eq!(probe.status, 500, "the probe reaches the upstream");
    let reopened = Instant::now();
    let r = rig.get("/x");
    assert!(is_rejection(&r));
    assert_eq!(r.header("retry-after"), Some("3"));
    assert!(r.header(HEADER).unwrap().contains("reason=probe_failed"));
    // Still open after the first open time (1 s) would have ended.
    std::thread::sleep(Duration::from_millis(1_500));
    assert!(is_rejection(&rig.get("/x")));
    // And half-open again after 3 s.
    rig.upstream.set_default(Behavior::status(200));
    while reopened.elapsed() < Duration::from_millis(3_050) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(rig.get("/x").status, 200);
    assert_eq!(rig.get("/x").status, 200);
    rig.wait_stat("api", "trips_probe_failed", 1);
}

#[test]
fn two_routes_with_different_thresholds_trip_independently() {
    let rig = rig_with(
        &format!(
            r#"{{ {FAST}, "minimum_requests": 10,
                 "routes": [
                   {{ "name": "strict", "match": {{ "route_name": "strict" }}, "failure_rate_threshold": 20 }},
                   {{ "name": "lenient", "match": {{ "prefix": "/lenient" }}, "failure_rate_threshold": 90 }}
                 ] }}"#
        ),
        &[("strict", "/strict"), ("api", "/")],
        2,
    );
    // Both routes see one failure in three (33%).
    rig.upstream.set_default(
        Behavior::status(200)
            .failing_every_nth(3)
            .on_failure(Behavior::status(502)),
    );
    for _ in 0..60 {
        rig.get("/strict/a");
        rig.get("/lenient/a");
    }
    std::thread::sleep(Duration::from_millis(200));
    let strict = (0..10)
        .filter(|_| is_rejection(&rig.get("/strict/a")))
        .count();
    let lenient = (0..10)
        .filter(|_| is_rejection(&rig.get("/lenient/a")))
        .count();
    assert_eq!(strict, 10, "the strict route (20%) is open");
    assert_eq!(lenient, 0, "the lenient route (90%) stays closed");
    assert_eq!(rig.stat("strict", "trips_failure_rate"), 1);
    assert_eq!(rig.stat("lenient", "trips_failure_rate"), 0);
}

#[test]
fn routes_with_istios_generic_name_get_one_breaker_per_cluster_so_one_failing_service_spares_the_others(
) {
    // Istio names the route to every destination without a VirtualService `default`: keyed by
    // that name, `inventory` failing would open the breaker for `catalog` too.
    let (inventory, catalog) = (Upstream::start().unwrap(), Upstream::start().unwrap());
    let (envoy, port) = start_envoy(
        &format!(r#"{{ {FAST}, "minimum_requests": 10, "failure_rate_threshold": 50 }}"#),
        2,
        |config| {
            config
                .cluster(ClusterSpec::new("inventory", &[inventory.port()]))
                .cluster(ClusterSpec::new("catalog", &[catalog.port()]))
                .route(RouteSpec::new("default", "/inventory", "inventory"))
                .route(RouteSpec::new("default", "/catalog", "catalog"))
        },
    );
    inventory.set_default(Behavior::status(503));
    let opened = (0..60).find(|_| {
        let r = get(port, "/inventory/x").unwrap();
        std::thread::sleep(Duration::from_millis(5));
        is_rejection(&r)
    });
    assert!(opened.is_some(), "the inventory breaker opened");
    let catalog_ok = (0..20)
        .filter(|_| get(port, "/catalog/x").unwrap().status == 200)
        .count();
    println!("figure: inventory's breaker opened; catalog answered {catalog_ok} of 20");
    assert_eq!(catalog_ok, 20, "catalog keeps its own, closed breaker");
    envoy
        .wait_stat(
            "wasmcustom.circuit_breaker.inventory.trips_failure_rate",
            1,
            Duration::from_secs(5),
        )
        .unwrap();
    assert_eq!(envoy.stat("wasmcustom.circuit_breaker.catalog.rejected"), 0);
    assert_eq!(envoy.stat("wasmcustom.circuit_breaker.default.requests"), 0);
}

#[test]
fn max_open_percent_holds_a_trip_while_half_the_breakers_are_open_and_lets_it_through_when_one_closes(
) {
    // Four breakers (routes /a../d), at most 50% open: when a, b and c all fail, c's trip is held
    // until a recovers and closes.
    let routes: Vec<String> = ["a", "b", "c", "d"]
        .iter()
        .map(|k| format!(r#"{{"name": "{k}", "match": {{"prefix": "/{k}"}}}}"#))
        .collect();
    let rig = rig(&format!(
        r#"{{ {FAST}, "max_open_percent": 50, "minimum_requests": 5, "failure_rate_threshold": 50,
             "open_duration": "1s", "half_open_probes": 1, "routes": [{}] }}"#,
        routes.join(", ")
    ));
    for k in ["a", "b", "c", "d"] {
        assert_eq!(rig.get(&format!("/{k}/warm")).status, 200);
    }
    for k in ["/a", "/b", "/c"] {
        rig.upstream.set_behavior(k, Behavior::status(503));
    }
    for k in ["/a/x", "/b/x"] {
        assert!(until_rejected(&rig, k, 60).is_some(), "{k} opened");
        std::thread::sleep(Duration::from_millis(200));
    }
    // c fails as much, but two of four breakers are open already.
    let rejected = (0..40).filter(|_| is_rejection(&rig.get("/c/x"))).count();
    assert_eq!(rejected, 0, "c's trip is held: its failures pass through");
    let held = rig.wait_stat("c", "trips_held", 1);
    assert_eq!(rig.stat("c", "trips_failure_rate"), 0);
    let open: u64 = ["a", "b", "c", "d"]
        .iter()
        .map(|k| rig.stat(k, "state"))
        .sum();
    assert_eq!(open, 2, "exactly two breakers are open");
    // a recovers: after its open time, one probe succeeds and a closes, freeing its place.
    rig.upstream.remove_behavior("/a");
    std::thread::sleep(Duration::from_millis(1_100));
    let deadline = Instant::now() + Duration::from_secs(5);
    while rig.stat("a", "state") != 0 {
        assert!(Instant::now() < deadline, "a closed after its probe");
        rig.get("/a/x");
        std::thread::sleep(Duration::from_millis(50));
    }
    let took = until_rejected(&rig, "/c/x", 60).map(|(n, _)| n);
    println!("figure: c's trip was held {held}+ times; after a closed, c opened within {took:?} requests");
    assert!(took.is_some(), "c opened once a place was free");
    rig.wait_stat("c", "trips_failure_rate", 1);
    rig.assert_no_vm_failure();
}

#[test]
fn max_open_percent_is_exact_across_workers_when_every_breaker_fails_at_once() {
    // Ten tenants, each its own breaker, at most 30% open; all fail together under parallel
    // load on two workers: exactly three open, the other trips are held.
    let rig = rig(&format!(
        r#"{{ {FAST}, "key_header": "x-tenant", "max_open_percent": 30, "minimum_requests": 5,
             "failure_rate_threshold": 50, "open_duration": "30s" }}"#
    ));
    let tenants: Vec<String> = (0..10).map(|i| format!("t{i}")).collect();
    for t in &tenants {
        let r = harness::request(rig.port, "GET", "/x", &[("x-tenant", t)], None).unwrap();
        assert_eq!(r.status, 200);
    }
    rig.upstream.set_default(Behavior::status(503));
    parallel(8, 800, |i| {
        let t = &tenants[i % tenants.len()];
        harness::request(rig.port, "GET", "/x", &[("x-tenant", t)], None).unwrap()
    });
    std::thread::sleep(Duration::from_millis(300));
    let open: u64 = tenants
        .iter()
        .map(|t| rig.stat(&format!("api__{t}"), "state"))
        .sum();
    let held: u64 = tenants
        .iter()
        .map(|t| rig.stat(&format!("api__{t}"), "trips_held"))
        .sum();
    println!(
        "figure: 10 failing tenants under parallel load: {open} breakers open, {held} trips held"
    );
    assert_eq!(open, 3, "exactly 30% of ten breakers are open");
    assert!(held >= 7, "the other seven were held: {held}");
    rig.assert_no_vm_failure();
}

#[test]
fn dry_run_never_rejects_but_counts_and_explains_what_it_would_reject() {
    let rig = rig(&format!(
        r#"{{ {FAST}, "mode": "dry_run", "minimum_requests": 10 }}"#
    ));
    rig.upstream.set_default(Behavior::status(500));
    for _ in 0..30 {
        assert_eq!(rig.get("/x").status, 500);
    }
    std::thread::sleep(Duration::from_millis(200));
    let statuses: Vec<u16> = (0..50).map(|_| rig.get("/x").status).collect();
    assert!(statuses.iter().all(|s| *s == 500), "dry run never rejects");
    assert_eq!(rig.upstream.requests(), 80);
    let r = rig.get("/x");
    assert_eq!(
        r.header(HEADER),
        Some("dry_run; would_reject=open; reason=failure_rate")
    );
    let would = rig.wait_stat("api", "dry_run_would_reject", 50);
    println!("figure: dry run counted {would} would-be rejections, rejected none");
    assert_eq!(rig.stat("api", "rejected"), 0);
}

#[test]
fn slow_calls_trip_the_breaker_even_when_they_succeed() {
    let rig = rig(&format!(
        r#"{{ {FAST}, "minimum_requests": 10, "failure_rate_threshold": null,
             "slow_call_duration": "100ms", "slow_call_rate_threshold": 50 }}"#
    ));
    rig.upstream
        .set_default(Behavior::status(200).with_latency(Duration::from_millis(150)));
    let results = parallel(10, 10, |_| rig.get("/x").status);
    assert!(
        results.iter().all(|s| *s == 200),
        "slow calls succeed: {results:?}"
    );
    std::thread::sleep(Duration::from_millis(200));
    let r = rig.get("/x");
    assert!(is_rejection(&r), "status {}", r.status);
    assert!(r.header(HEADER).unwrap().contains("reason=slow_call_rate"));
    rig.wait_stat("api", "slow_calls", 10);
    assert_eq!(rig.stat("api", "trips_slow_call_rate"), 1);
}

#[test]
fn grpc_status_in_the_response_counts_as_failure_though_http_says_200() {
    let rig = rig(&format!(r#"{{ {FAST}, "minimum_requests": 10 }}"#));
    rig.upstream.set_default(
        Behavior::status(200)
            .with_header("content-type", "application/grpc")
            .with_header("grpc-status", "14"),
    );
    // Failures are published at once: the 10th (minimum_requests) trips the breaker.
    for _ in 0..10 {
        assert_eq!(rig.get("/svc/Method").status, 200);
    }
    std::thread::sleep(Duration::from_millis(200));
    assert!(is_rejection(&rig.get("/svc/Method")));
    // gRPC OK and non-failure codes (NOT_FOUND = 5) are successes.
    let ok = rig_with(
        &format!(r#"{{ {FAST}, "minimum_requests": 10 }}"#),
        &[("api", "/")],
        2,
    );
    ok.upstream.set_default(
        Behavior::status(200)
            .with_header("content-type", "application/grpc")
            .with_header("grpc-status", "5"),
    );
    for _ in 0..30 {
        ok.get("/svc/Method");
    }
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(ok.get("/svc/Method").status, 200);
}

#[test]
fn an_unreachable_upstream_counts_as_a_connect_failure_from_envoys_response_flags() {
    // No status counts as failure: only Envoy's own connect-failure flag can trip this breaker.
    let upstream = Upstream::start().expect("upstream");
    upstream.stop();
    let rig = rig_for(
        upstream,
        &format!(r#"{{ {FAST}, "minimum_requests": 5, "failure_statuses": [] }}"#),
        &[("api", "/")],
        2,
    );
    for _ in 0..5 {
        let r = rig.get("/x");
        assert_eq!(r.status, 503);
        assert!(
            r.header(HEADER).is_none(),
            "Envoy's own 503 (connect failure)"
        );
    }
    std::thread::sleep(Duration::from_millis(200));
    let r = rig.get("/x");
    assert!(is_rejection(&r), "{:?}", r.headers);
    rig.wait_stat("api", "failures", 5);
}

#[test]
fn consecutive_failures_trip_even_when_the_rate_is_low() {
    let rig = rig(&format!(
        r#"{{ {FAST}, "minimum_requests": 1000, "consecutive_failures": 5 }}"#
    ));
    for _ in 0..50 {
        rig.get("/x");
    }
    rig.upstream.set_default(Behavior::status(503));
    let (after, r) = until_rejected(&rig, "/x", 100).expect("opens");
    assert!(after >= 5);
    assert!(r
        .header(HEADER)
        .unwrap()
        .contains("reason=consecutive_failures"));
}

#[test]
fn operators_can_force_a_breaker_open_or_closed() {
    let open = rig(&format!(r#"{{ {FAST}, "force_open": true }}"#));
    let r = open.get("/x");
    assert!(is_rejection(&r));
    assert_eq!(r.header(HEADER), Some("open; reason=forced_open"));
    assert_eq!(open.upstream.requests(), 0);

    let rehearsal = rig(&format!(
        r#"{{ {FAST}, "force_open": true, "mode": "dry_run" }}"#
    ));
    let r = rehearsal.get("/x");
    assert_eq!(
        r.status, 200,
        "a dry run of force_open lets the request through"
    );
    assert_eq!(
        r.header(HEADER),
        Some("dry_run; would_reject=open; reason=forced_open")
    );

    let closed = rig(&format!(
        r#"{{ {FAST}, "force_closed": true, "minimum_requests": 5 }}"#
    ));
    closed.upstream.set_default(Behavior::status(500));
    let statuses: Vec<u16> = (0..40).map(|_| closed.get("/x").status).collect();
    assert!(
        statuses.iter().all(|s| *s == 500),
        "never rejects when forced closed"
    );
}

#[test]
fn rejection_status_headers_and_body_are_configurable() {
    let rig = rig(&format!(
        r#"{{ {FAST}, "force_open": true,
             "rejection": {{ "status": 429, "headers": {{ "x-fallback": "cached" }},
                             "body": "{{\"items\":[]}}", "content_type": "application/json" }} }}"#
    ));
    let r = rig.get("/x");
    assert_eq!(r.status, 429);
    assert_eq!(r.header("x-fallback"), Some("cached"));
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.body_str(), r#"{"items":[]}"#);
    assert!(r.header("retry-after").is_some());
}

#[test]
fn an_upstream_retry_after_keeps_the_breaker_open_longer_when_honoured() {
    let rig = rig(&format!(
        r#"{{ {FAST}, "minimum_requests": 5, "open_duration": "1s", "honor_retry_after": true }}"#
    ));
    rig.upstream
        .set_default(Behavior::status(503).with_header("retry-after", "7"));
    let (_, r) = until_rejected(&rig, "/x", 100).expect("opens");
    let retry_after: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((6..=7).contains(&retry_after), "retry-after {retry_after}");
}

#[test]
fn header_keyed_breakers_are_bounded_by_max_keys_and_overflow_is_counted() {
    let rig = rig(&format!(
        r#"{{ {FAST}, "key_header": "x-tenant", "max_keys": 3, "minimum_requests": 5 }}"#
    ));
    rig.upstream.set_default(Behavior::status(500));
    for t in ["a", "b", "c", "d", "e"] {
        for _ in 0..6 {
            harness::request(rig.port, "GET", "/x", &[("x-tenant", t)], None).unwrap();
        }
    }
    std::thread::sleep(Duration::from_millis(200));
    let rejected = |t: &str| {
        let r = harness::request(rig.port, "GET", "/x", &[("x-tenant", t)], None).unwrap();
        is_rejection(&r)
    };
    assert!(rejected("a"), "tenant a has its own breaker, now open");
    assert!(
        !rejected("e"),
        "tenant e did not fit in max_keys and passes unguarded"
    );
    rig.envoy
        .wait_stat(
            "wasmcustom.circuit_breaker.keys_overflow",
            6,
            Duration::from_secs(5),
        )
        .unwrap();
    assert_eq!(rig.stat("api__a", "trips_failure_rate"), 1);
}

/// Raw request bytes, for header values no well-behaved client sends.
fn raw_request(port: u16, head: &[u8]) -> Vec<u8> {
    harness::client::raw_request(port, head).unwrap()
}

#[test]
fn hostile_input_never_traps_the_vm() {
    let rig = rig(&format!(
        r#"{{ {FAST}, "key_header": "x-tenant", "max_keys": 50, "minimum_requests": 3, "honor_retry_after": true }}"#
    ));
    // Non-UTF-8 and huge key header values.
    let mut head =
        b"GET /x HTTP/1.1\r\nhost: a\r\nconnection: close\r\nx-tenant: \xff\xfe\x80bad\r\n\r\n"
            .to_vec();
    assert!(String::from_utf8_lossy(&raw_request(rig.port, &head)).starts_with("HTTP/1.1 200"));
    let huge = "t".repeat(50_000);
    let r = harness::request(rig.port, "GET", "/x", &[("x-tenant", huge.as_str())], None).unwrap();
    assert_eq!(r.status, 200);
    // Absurd back-off hints from the upstream.
    for (name, value) in [
        ("retry-after", "99999999999999999999999999"),
        ("retry-after", "-5"),
        ("retry-after", "Wed, 21 Oct 2015 07:28:00 GMT"),
        ("grpc-retry-pushback-ms", "18446744073709551616"),
    ] {
        rig.upstream
            .set_default(Behavior::status(503).with_header(name, value));
        for _ in 0..5 {
            harness::request(rig.port, "GET", "/x", &[("x-tenant", "hostile")], None).unwrap();
        }
    }
    // Garbage status and gRPC status from the upstream.
    rig.upstream.set_default(
        Behavior::status(200)
            .with_header("grpc-status", "999999999999")
            .with_header("content-type", "application/grpc"),
    );
    for _ in 0..5 {
        rig.get("/x");
    }
    head = b"GET /x HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n".to_vec();
    assert!(!raw_request(rig.port, &head).is_empty());
    // Let every worker learn of the hostile tenant's trip (sync_interval).
    std::thread::sleep(Duration::from_millis(200));
    // The VM is alive and still deciding: the hostile tenant's breaker opened, others pass.
    let r = harness::request(rig.port, "GET", "/x", &[("x-tenant", "hostile")], None).unwrap();
    assert!(is_rejection(&r), "{} {:?}", r.status, r.headers);
    let retry_after: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!(
        retry_after <= 60,
        "an absurd hint is capped by max_open_duration: {retry_after}"
    );
    rig.upstream.set_default(Behavior::status(200));
    assert_eq!(rig.get("/y").status, 200);
    rig.assert_no_vm_failure();
}

#[test]
fn invalid_config_makes_envoy_refuse_the_filter_with_the_field_named() {
    let wasm = filter_wasm("circuit-breaker").unwrap();
    let upstream = Upstream::start().unwrap();
    for (json, expected) in [
        (
            r#"{"routes": [{"match": {"prefix": "/a"}}, {"match": {"prefix": "/b"}, "failure_rate_threshold": 150}]}"#,
            "routes[1].failure_rate_threshold: must be between 0 and 100, got 150",
        ),
        (r#"{"window": "ten seconds"}"#, "window: "),
        (
            r#"{"open_duration": "10s", "max_open_duration": "1s"}"#,
            "max_open_duration: must be at least open_duration (10s), got 1s",
        ),
        (r#"{"bogus": 1}"#, "bogus"),
    ] {
        let filter = wasm_filter_yaml("circuit_breaker", "circuit_breaker", "cb", &wasm, json);
        let config = ProxyConfig::new(free_port(), free_port())
            .with_http_filters(&filter)
            .route(RouteSpec::new("default", "/", "upstream"))
            .cluster(ClusterSpec::new("upstream", &[upstream.port()]))
            .render();
        let log = harness::envoy::start_expect_failure(&config, &EnvoyOptions::default())
            .expect("envoy refuses the config");
        let line = log
            .lines()
            .find(|l| l.contains("circuit_breaker: invalid configuration"))
            .unwrap_or_else(|| panic!("no config error line for {json}:\n{log}"));
        assert!(line.contains(expected), "{line}");
        println!("figure: Envoy refused {json} with: {}", line.trim());
    }
}

#[test]
fn the_shipped_envoy_config_validates_runs_and_reads_well_in_prometheus() {
    let upstream = Upstream::start().unwrap();
    let (envoy, listener) =
        harness::shipped::start("circuit-breaker.yaml", upstream.port()).unwrap();
    upstream.set_behavior("/flaky", Behavior::status(503));
    for _ in 0..12 {
        get(listener, "/flaky").unwrap();
        get(listener, "/api/x").unwrap();
    }
    let r = get(listener, "/flaky").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let r = if is_rejection(&r) {
        r
    } else {
        get(listener, "/flaky").unwrap()
    };
    assert!(
        is_rejection(&r),
        "the flaky route's tuned breaker (10 requests, 30%) opened"
    );
    assert_eq!(
        get(listener, "/api/x").unwrap().status,
        200,
        "the api route is unaffected"
    );
    envoy
        .wait_stat(
            "wasmcustom.circuit_breaker.flaky.rejected",
            1,
            Duration::from_secs(5),
        )
        .unwrap();
    let prom = envoy.prometheus();
    let lines: Vec<&str> = prom
        .lines()
        .filter(|l| l.contains("circuit_breaker"))
        .collect();
    println!(
        "figure: prometheus sample:\n{}",
        lines
            .iter()
            .take(12)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("circuit_breaker_rejected{breaker_key=\"flaky\"}")),
        "{lines:#?}"
    );
    assert!(lines
        .iter()
        .any(|l| l.contains("circuit_breaker_state{breaker_key=\"flaky\"} 1")));
}

#[test]
fn a_count_based_window_trips_on_the_share_of_failures_in_the_last_n_outcomes() {
    let rig = rig(&format!(
        r#"{{ {FAST}, "window_type": "count", "window_size": 20, "minimum_requests": 10, "failure_rate_threshold": 50 }}"#
    ));
    for _ in 0..20 {
        assert_eq!(rig.get("/x").status, 200);
    }
    // Outcomes from different workers enter the shared ring at each worker's tick: let the
    // successes land before the failures so the ring's order is the requests' order.
    std::thread::sleep(Duration::from_millis(200));
    rig.upstream.set_default(Behavior::status(500));
    for _ in 0..9 {
        assert_eq!(rig.get("/x").status, 500);
    }
    std::thread::sleep(Duration::from_millis(200));
    // 9 failures among the last 20 outcomes: 45%, still closed.
    assert_eq!(
        rig.get("/x").status,
        500,
        "the 10th failure still reaches the upstream"
    );
    std::thread::sleep(Duration::from_millis(200));
    // 10 of the last 20: 50%, open.
    assert!(is_rejection(&rig.get("/x")));
}

#[test]
fn a_probe_that_never_completes_gives_its_permit_back_after_probe_timeout() {
    let rig = rig(&format!(
        r#"{{ {FAST}, "minimum_requests": 5, "open_duration": "1s", "half_open_probes": 1, "probe_timeout": "1s" }}"#
    ));
    trip(&rig, "/x");
    rig.upstream.set_default(Behavior::hang());
    std::thread::sleep(Duration::from_millis(1_100));
    let port = rig.port;
    let hung = std::thread::spawn(move || get(port, "/x").map(|r| r.status));
    std::thread::sleep(Duration::from_millis(300));
    let r = rig.get("/x");
    assert!(
        r.header(HEADER).is_some_and(|h| h.starts_with("half_open")),
        "the only permit is held by the hung probe"
    );
    std::thread::sleep(Duration::from_millis(1_000));
    rig.upstream.set_default(Behavior::status(200));
    assert_eq!(
        rig.get("/x").status,
        200,
        "the permit came back after probe_timeout"
    );
    assert_eq!(
        rig.get("/x").status,
        200,
        "and that probe's success closed the breaker"
    );
    // The hung probe ends with the route timeout (5 s); its late failure is ignored.
    let late = hung.join().unwrap();
    println!("figure: the hung probe ended with {late:?}");
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        rig.get("/x").status,
        200,
        "a late report from an old half-open phase is ignored"
    );
}

#[test]
fn an_active_probe_lets_traffic_back_within_a_second_of_recovery_without_risking_a_user_request() {
    let upstream = Upstream::start().expect("upstream");
    let port = upstream.port();
    let (envoy, listener) = start_envoy(
        &format!(
            r#"{{ {FAST}, "consecutive_failures": 3, "open_duration": "10s", "half_open_probes": 1,
                "active_probe": {{ "cluster": "health", "path": "/healthz", "interval": "250ms" }} }}"#
        ),
        2,
        |config| {
            config
                .cluster(ClusterSpec::new("upstream", &[port]))
                .cluster(ClusterSpec::new("health", &[port]))
                .route(RouteSpec::new("api", "/", "upstream"))
        },
    );
    upstream.set_behavior("/x", Behavior::status(503));
    upstream.set_behavior("/healthz", Behavior::status(503));
    for _ in 0..3 {
        assert_eq!(get(listener, "/x").unwrap().status, 503);
    }
    std::thread::sleep(Duration::from_millis(200));
    let r = get(listener, "/x").unwrap();
    assert!(is_rejection(&r), "{r:?}");
    // Open, and probing: a failing probe keeps it open.
    std::thread::sleep(Duration::from_millis(600));
    assert!(is_rejection(&get(listener, "/x").unwrap()));
    let users_before = upstream.requests_for("/x");

    upstream.set_behavior("/x", Behavior::status(200));
    upstream.set_behavior("/healthz", Behavior::status(200));
    let recovered = Instant::now();
    let back = loop {
        let r = get(listener, "/x").unwrap();
        if r.status == 200 {
            break recovered.elapsed();
        }
        assert!(
            recovered.elapsed() < Duration::from_secs(5),
            "never came back"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let probes = upstream.requests_for("/healthz");
    println!("figure: traffic back {back:?} after recovery (open_duration 10 s); {probes} active probes in all");
    assert!(back < Duration::from_millis(1_000), "{back:?}");
    // No user request went into the failing dependency while it was open.
    assert_eq!(upstream.requests_for("/x") - users_before, 1);
    // One probe per interval from the whole proxy (two workers): about 1.5 s of probing.
    assert!(probes <= 10, "{probes}");
    envoy
        .wait_stat(
            "wasmcustom.circuit_breaker.api.active_probes_succeeded",
            1,
            Duration::from_secs(5),
        )
        .unwrap();
    assert_eq!(envoy.vm_failure(), None);
}
