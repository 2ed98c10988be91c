//! `resilience_pack.wasm` in a real Envoy (`--concurrency 2`): the filters as stages of one
//! module do what each does alone, and what only the pack can do (stages that see each other's
//! decisions) holds across workers.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::time::{Duration, Instant};

use harness::config::wasm_filter_yaml;
use harness::{
    filter_wasm, free_port, get, parallel, request, Behavior, ClusterSpec, Envoy, EnvoyOptions,
    ProxyConfig, RouteSpec, Upstream,
};

const BREAKER: &str = "x-resilience-circuit-breaker";

struct Rig {
    envoy: Envoy,
    upstream: Upstream,
    port: u16,
}

impl Rig {
    fn start(pack_json: &str) -> Rig {
        Rig::start_with(pack_json, false)
    }

    /// `allow_stop`: Envoy's `allow_on_headers_stop_iteration`, which the validator's
    /// `hold_headers_for_body_checks` needs; with it, a held stream still gets its body and
    /// trailer callbacks.
    fn start_with(pack_json: &str, allow_stop: bool) -> Rig {
        let upstream = Upstream::start().expect("upstream");
        let wasm = filter_wasm("resilience-pack").expect("resilience_pack.wasm");
        let port = free_port();
        let mut filter = wasm_filter_yaml("pack", "resilience_pack", "pack", &wasm, pack_json);
        if allow_stop {
            let policy = "      failure_policy:";
            assert!(filter.contains(policy), "{filter}");
            filter = filter.replacen(
                policy,
                &format!("      allow_on_headers_stop_iteration: true\n{policy}"),
                1,
            );
        }
        let config = ProxyConfig::new(port, free_port())
            .with_http_filters(&filter)
            .cluster(ClusterSpec::new("upstream", &[upstream.port()]))
            .route(RouteSpec::new("api", "/", "upstream").with_timeout(Duration::from_secs(5)))
            .render();
        let envoy = Envoy::start(
            &config,
            &EnvoyOptions {
                concurrency: 2,
                ..EnvoyOptions::default()
            },
        )
        .expect("envoy starts with the pack");
        envoy.wait_listener(port).expect("listener");
        Rig {
            envoy,
            upstream,
            port,
        }
    }

    fn wait_stat(&self, name: &str, n: u64) -> u64 {
        self.envoy
            .wait_stat(&format!("wasmcustom.{name}"), n, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("{e}\n{}", self.envoy.log_tail(40)))
    }

    fn stat(&self, name: &str) -> u64 {
        self.envoy.stat(&format!("wasmcustom.{name}"))
    }

    fn assert_no_vm_failure(&self) {
        if let Some(failure) = self.envoy.vm_failure() {
            panic!("{failure}");
        }
    }
}

/// Every stage on, each with settings a test can reach quickly.
const ALL: &str = r#"{
    "request_validator": { "allowed_methods": ["GET", "POST"], "sync_interval": "50ms" },
    "circuit_breaker": {
        "consecutive_failures": 3, "open_duration": "1s", "open_jitter_percent": 0,
        "half_open_probes": 1, "sync_interval": "50ms"
    },
    "retry_budget": { "max_retries": 2, "sync_interval": "50ms", "deadline_aware": false },
    "failure_padding": {
        "sync_interval": "50ms", "min_samples": 1000, "fallback_target": "150ms",
        "max_padded_in_flight": 8
    }
}"#;

#[test]
fn healthy_traffic_passes_every_stage_on_two_workers_and_each_stage_counts_it() {
    let rig = Rig::start(ALL);
    let statuses = parallel(4, 200, |_| get(rig.port, "/ok").unwrap().status);
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(rig.upstream.requests(), 200);
    rig.wait_stat("request_validator.default.requests", 200);
    rig.wait_stat("circuit_breaker.api.requests", 200);
    rig.wait_stat("retry_budget.api.requests", 200);
    assert_eq!(rig.stat("circuit_breaker.api.failures"), 0);
    rig.assert_no_vm_failure();
}

#[test]
fn a_request_the_validator_rejects_never_reaches_the_upstream_nor_the_breakers_counts() {
    let rig = Rig::start(ALL);
    for _ in 0..5 {
        let r = request(rig.port, "DELETE", "/x", &[], None).unwrap();
        assert_eq!(r.status, 405);
        assert_eq!(r.header("content-type"), Some("application/problem+json"));
    }
    assert_eq!(rig.upstream.requests(), 0);
    rig.wait_stat("request_validator.default.rejected", 5);
    // Five rejections are more than the breaker's three consecutive failures: had it counted
    // them, it would be open now.
    assert_eq!(get(rig.port, "/ok").unwrap().status, 200);
    rig.wait_stat("circuit_breaker.api.requests", 1);
    assert_eq!(rig.stat("circuit_breaker.api.requests"), 1);
    rig.assert_no_vm_failure();
}

#[test]
fn padded_fast_failures_open_the_breaker_which_then_admits_exactly_one_probe_across_workers() {
    let rig = Rig::start(ALL);
    rig.upstream.set_default(Behavior::status(503));
    // Fast failures are held to the padding target, and still count for the breaker.
    let started = Instant::now();
    for _ in 0..3 {
        assert_eq!(get(rig.port, "/x").unwrap().status, 503);
    }
    let per_failure = started.elapsed() / 3;
    assert!(
        per_failure >= Duration::from_millis(140),
        "padded to the 150 ms target: {per_failure:?}"
    );
    rig.wait_stat("failure_padding.api.padded", 3);
    rig.wait_stat("circuit_breaker.api.failures", 3);
    std::thread::sleep(Duration::from_millis(150));
    let r = get(rig.port, "/x").unwrap();
    assert_eq!(r.status, 503);
    assert!(r.header(BREAKER).unwrap().starts_with("open"), "{r:?}");
    let before = rig.upstream.requests();

    // After the open duration, a burst from both workers lets exactly one probe through.
    rig.upstream
        .set_default(Behavior::status(200).with_latency(Duration::from_millis(300)));
    std::thread::sleep(Duration::from_millis(1_100));
    let statuses = parallel(8, 16, |_| get(rig.port, "/x").unwrap().status);
    assert_eq!(rig.upstream.requests() - before, 1, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 1);
    rig.assert_no_vm_failure();
}

#[test]
fn a_held_failure_with_a_body_stays_held_when_envoy_lets_the_filter_see_the_body() {
    // With allow_on_headers_stop_iteration, Envoy calls the body and trailer callbacks of a
    // response whose headers are held; a stage that answered "continue" there would let the
    // padded failure go at its first body chunk.
    let rig = Rig::start_with(
        r#"{"failure_padding": { "min_samples": 1000, "fallback_target": "150ms" }}"#,
        true,
    );
    rig.upstream
        .set_default(Behavior::status(503).with_body(vec![b'x'; 20_000]));
    for _ in 0..3 {
        let started = Instant::now();
        let r = get(rig.port, "/x").unwrap();
        let took = started.elapsed();
        assert_eq!(r.status, 503);
        assert_eq!(r.body.len(), 20_000, "the held body arrives whole");
        assert!(
            took >= Duration::from_millis(140),
            "padded to the 150 ms target, body and all: {took:?}, {:?}",
            r.header("x-resilience-failure-padding")
        );
    }
    rig.wait_stat("failure_padding.api.padded", 3);
    rig.assert_no_vm_failure();
}

#[test]
fn a_bad_member_refuses_the_pack_naming_the_member_and_the_field() {
    let upstream = Upstream::start().expect("upstream");
    let wasm = filter_wasm("resilience-pack").expect("resilience_pack.wasm");
    for (json, expected) in [
        (
            r#"{"circuit_breaker": {"failure_rate_threshold": 200}}"#,
            "circuit_breaker.failure_rate_threshold",
        ),
        (
            r#"{"circuit_braker": {}}"#,
            "circuit_braker: unknown member",
        ),
    ] {
        let filter = wasm_filter_yaml("pack", "resilience_pack", "pack", &wasm, json);
        let config = ProxyConfig::new(free_port(), free_port())
            .with_http_filters(&filter)
            .route(RouteSpec::new("default", "/", "upstream"))
            .cluster(ClusterSpec::new("upstream", &[upstream.port()]))
            .render();
        let log = harness::envoy::start_expect_failure(&config, &EnvoyOptions::default())
            .expect("envoy refuses the config");
        let line = log
            .lines()
            .find(|l| l.contains("resilience_pack: invalid configuration"))
            .unwrap_or_else(|| panic!("no refusal in the log:\n{log}"));
        assert!(line.contains(expected), "{line}");
    }
}

#[test]
fn slow_start_as_a_stage_sheds_most_requests_of_a_cold_replica_and_admits_all_once_warm() {
    let rig = Rig::start(
        r#"{
        "slow_start": {
            "sync_interval": "50ms", "slow_start_window": "2s", "min_weight_percent": 10,
            "retry_after": "1s", "health_checks": {"paths": ["/healthz"]}
        }
    }"#,
    );
    let early = (0..100)
        .map(|_| get(rig.port, "/work").unwrap())
        .collect::<Vec<_>>();
    let shed = early.iter().filter(|r| r.status == 503).count();
    assert!(
        shed >= 50,
        "a cold replica sheds most requests: {shed} of 100"
    );
    assert!(early
        .iter()
        .filter(|r| r.status == 503)
        .all(|r| r.header("retry-after") == Some("1")));
    // Health checks are never shed.
    for _ in 0..20 {
        assert_eq!(get(rig.port, "/healthz").unwrap().status, 200);
    }
    std::thread::sleep(Duration::from_millis(2_500));
    let late = (0..100)
        .filter(|_| get(rig.port, "/work").unwrap().status == 200)
        .count();
    assert_eq!(late, 100, "warm: everything admitted");
    rig.assert_no_vm_failure();
}

#[test]
fn slow_starts_sheds_are_not_counted_by_the_breaker_before_it_in_the_same_pack() {
    // As two separate filters the breaker sees slow start's local 503s on the way back and
    // counts them as the dependency's failures: three in a row would open it here. In the pack
    // the chain tells the breaker that a later stage answered, so only upstream outcomes count.
    let rig = Rig::start(
        r#"{
        "circuit_breaker": {
            "consecutive_failures": 3, "open_duration": "5s", "sync_interval": "50ms"
        },
        "slow_start": {
            "sync_interval": "50ms", "slow_start_window": "2s", "min_weight_percent": 10,
            "retry_after": "1s"
        }
    }"#,
    );
    let statuses: Vec<(u16, bool)> = (0..100)
        .map(|_| {
            let r = get(rig.port, "/work").unwrap();
            (r.status, r.header("x-resilience-slow-start").is_some())
        })
        .collect();
    let shed = statuses.iter().filter(|(s, _)| *s == 503).count();
    assert!(
        shed >= 50,
        "a cold replica sheds most requests: {shed} of 100"
    );
    assert!(
        statuses
            .iter()
            .all(|(s, by_slow_start)| *s == 200 || *by_slow_start),
        "every 503 is slow start's, none the breaker's: {statuses:?}"
    );
    rig.wait_stat("circuit_breaker.api.requests", 100 - shed as u64);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(rig.stat("circuit_breaker.api.failures"), 0);
    assert_eq!(rig.stat("circuit_breaker.api.rejected"), 0);
    assert_eq!(rig.upstream.requests(), 100 - shed as u64);
    rig.assert_no_vm_failure();
}
