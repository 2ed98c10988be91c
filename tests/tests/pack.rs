//! The whole pack (`envoy-configs/pack.yaml`, what `cargo pack run` starts) in front of the
//! simulated fleet: every filter loads in one Envoy and does its job on the same traffic.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::time::{Duration, Instant};

use harness::fleet::{Action, Fleet, FleetSpec};
use harness::{free_port, get, request, Envoy, EnvoyOptions};

struct Pack {
    fleet: Fleet,
    envoy: Envoy,
    listener: u16,
    /// Each sidecar's stat prefix in slow start (`slow_start.<address with _>`).
    endpoints: Vec<String>,
}

fn start_pack(spec: FleetSpec) -> Pack {
    let fleet = Fleet::start(&spec).unwrap();
    let mut ports = Vec::new();
    let mut endpoints = Vec::new();
    for i in 0..4u16 {
        let sidecar = free_port();
        ports.push((10001 + i, sidecar));
        ports.push((18081 + i, fleet.port(usize::from(i)).unwrap()));
        endpoints.push(format!("slow_start.127_0_0_1_{sidecar}"));
    }
    let shipped = harness::shipped::prepare("pack.yaml", &ports).unwrap();
    let listener = shipped.listener;
    let envoy = Envoy::start(&shipped.yaml, &EnvoyOptions::default()).unwrap();
    envoy.wait_listener(listener).unwrap();
    assert_eq!(envoy.vm_failure(), None, "every filter's VM is healthy");
    Pack {
        fleet,
        envoy,
        listener,
        endpoints,
    }
}

fn fleet_spec() -> FleetSpec {
    FleetSpec {
        instances: 4,
        latency: Duration::from_millis(10),
        ..FleetSpec::default()
    }
}

#[test]
fn the_whole_pack_spreads_traffic_rejects_garbage_pads_a_black_hole_and_opens_a_breaker() {
    let p = start_pack(fleet_spec());
    let l = p.listener;

    // Healthy traffic reaches every instance through slow start and the sidecars.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut sent = 0;
    while (0..4).any(|i| p.fleet.upstream(i).unwrap().requests_for("/api/hello") < 30) {
        assert!(
            Instant::now() < deadline,
            "traffic never spread: {}",
            p.fleet.status()
        );
        assert_eq!(get(l, "/api/hello").unwrap().status, 200);
        sent += 1;
    }
    println!("figure: {sent} healthy requests until every instance served 30");

    // Garbage stops at the edge with a problem+json answer and costs the fleet nothing.
    let r = request(
        l,
        "POST",
        "/api/orders",
        &[("content-type", "application/json")],
        Some(br#"{"items":[]}"#),
    )
    .unwrap();
    assert_eq!(r.status, 422);
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    assert!(r
        .header("x-resilience-request-validator")
        .unwrap()
        .starts_with("rejected"));
    let ok = request(
        l,
        "POST",
        "/api/orders",
        &[("content-type", "application/json")],
        Some(br#"{"customer":{"id":"c1"},"items":[{"sku":"a","qty":1}]}"#),
    )
    .unwrap();
    assert_eq!(ok.status, 200);
    let orders: u64 = (0..4)
        .map(|i| p.fleet.upstream(i).unwrap().requests_for("/api/orders"))
        .sum();
    assert_eq!(orders, 1, "only the valid order reached the fleet");

    // A black hole: instance 3 fails instantly; its sidecar holds each failure to the
    // instance's learned success latency, and the edge retries on the next instance slow start
    // named, so no client sees the failure.
    p.fleet.apply(3, &Action::InstantFail).unwrap();
    let retried = |p: &Pack| -> u64 {
        (0..3)
            .map(|i| {
                p.envoy
                    .stat(&format!("wasmcustom.{}.retries_served", p.endpoints[i]))
            })
            .sum()
    };
    let retried_before = retried(&p);
    let mut failed = 0;
    for _ in 0..100 {
        if get(l, "/api/hello").unwrap().status != 200 {
            failed += 1;
        }
    }
    p.envoy
        .wait_stat(
            "wasmcustom.failure_padding.instance_3.padded",
            1,
            Duration::from_secs(5),
        )
        .expect("a failure from instance 3 was padded");
    std::thread::sleep(Duration::from_millis(300));
    let served = retried(&p) - retried_before;
    println!(
        "figure: black hole: {failed} of 100 requests failed; {served} served by a retry elsewhere"
    );
    assert_eq!(
        failed, 0,
        "every failed attempt was retried on another instance"
    );
    assert!(served >= 1, "another instance served the retries");
    p.fleet.apply(3, &Action::Healthy).unwrap();

    // Every instance fails: the orders route's tuned breaker (10 requests, 30%) opens.
    for i in 0..4 {
        p.fleet.apply(i, &Action::Errors(1.0)).unwrap();
    }
    let mut open = None;
    for _ in 0..60 {
        let r = get(l, "/api/orders").unwrap();
        if r.header("x-resilience-circuit-breaker")
            .is_some_and(|h| h.starts_with("open"))
        {
            open = Some(r);
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let open = open.expect("the orders breaker opened");
    assert_eq!(open.status, 503);
    assert_eq!(
        open.header("content-type"),
        Some("application/problem+json")
    );

    // The retry budget governed the retries made meanwhile, and every filter reads well in
    // Prometheus.
    std::thread::sleep(Duration::from_millis(300));
    let prom = p.envoy.prometheus();
    for family in [
        "request_validator_",
        "circuit_breaker_",
        "retry_budget_",
        "slow_start_",
        "failure_padding_",
    ] {
        assert!(
            prom.lines().any(|l| l.starts_with(family)),
            "Prometheus output has {family}* series"
        );
    }
    assert!(p.envoy.stat("wasmcustom.failure_padding.instance_3.padded") >= 1);
    assert!(p.envoy.stat("wasmcustom.circuit_breaker.orders.rejected") >= 1);
    assert_eq!(p.envoy.vm_failure(), None);
}

#[test]
fn the_whole_pack_primes_and_ramps_a_restarted_instance() {
    let p = start_pack(FleetSpec {
        cold: Some(Duration::from_millis(100)),
        ..fleet_spec()
    });
    let l = p.listener;
    let ep = &p.endpoints[1];
    // Warm the fleet, then restart instance 1 (down 5 s, back with an empty cache).
    for _ in 0..40 {
        get(l, "/api/hello").unwrap();
    }
    // Envoy's start was every instance's first ramp: count from here.
    let primed = format!("wasmcustom.{ep}.priming_succeeded");
    let ramps = format!("wasmcustom.{ep}.ramps_started");
    let (primed_before, ramps_before) = (p.envoy.stat(&primed), p.envoy.stat(&ramps));
    p.fleet
        .apply(1, &Action::Restart(Duration::from_secs(5)))
        .unwrap();
    let became_unhealthy = format!("wasmcustom.{ep}.became_unhealthy");
    let deadline = Instant::now() + Duration::from_secs(12);
    let (mut sent, mut failed) = (0, 0);
    while p.envoy.stat(&became_unhealthy) == 0 {
        assert!(
            Instant::now() < deadline,
            "slow start never saw instance 1 down"
        );
        // A request picked for instance 1 fails there and is retried on the next instance
        // named; slow start counts the failed attempt against instance 1.
        sent += 1;
        if get(l, "/api/hello").unwrap().status != 200 {
            failed += 1;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    println!("figure: {failed} of {sent} requests failed until slow start took instance 1 out");
    assert_eq!(failed, 0, "retries went to another instance");
    // The other worker learns on its next sync; meanwhile its retries cover for it too.
    for _ in 0..20 {
        assert_eq!(get(l, "/api/hello").unwrap().status, 200);
    }
    p.envoy
        .wait_stat(&primed, primed_before + 1, Duration::from_secs(20))
        .expect("instance 1 was primed once it was back");
    let requests_before = p.fleet.upstream(1).unwrap().requests_for("/api/hello");
    p.envoy
        .wait_stat(&ramps, ramps_before + 1, Duration::from_secs(10))
        .expect("instance 1 started its ramp");
    for _ in 0..100 {
        assert_eq!(get(l, "/api/hello").unwrap().status, 200);
    }
    let share = p.fleet.upstream(1).unwrap().requests_for("/api/hello") - requests_before;
    println!("figure: restarted instance took {share} of the next 100 requests (fair: 25)");
    assert!(
        share < 25,
        "the ramp keeps the restarted instance below its fair share"
    );
    assert_eq!(p.envoy.vm_failure(), None);
}
