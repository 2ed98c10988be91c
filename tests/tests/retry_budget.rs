//! The retry budget, proven against the real Envoy (several workers, one shared budget).
//!
//! Each test starts its own Envoy (`--concurrency` 2 or 4; two of them for the two-hop chain)
//! with the filter in front of Envoy's router, drives real HTTP traffic against a scripted
//! upstream that fails a seeded fraction of requests, and asserts on what clients see, what the
//! upstream received and Envoy's stats. Figures worth reporting are printed
//! (`cargo test -p harness --test retry_budget -- --nocapture | grep figure:`).
//!
//! The failing fraction of the amplification run can be changed with
//! `RETRY_BUDGET_FAIL_FRACTION` (default 0.8).

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
    filter_wasm, free_port, parallel, request, Behavior, ClusterSpec, Envoy, EnvoyOptions,
    ProxyConfig, Response, RouteSpec, Upstream,
};

const HEADER: &str = "x-resilience-retry-budget";
const STATS: &str = "wasmcustom.retry_budget";

/// Three retries on 5xx, with short back-offs so tests stay fast.
const RETRY_3: &str = "retry_policy:
  retry_on: 5xx
  num_retries: 3
  retry_back_off: { base_interval: 0.002s, max_interval: 0.01s }";

/// Ticks often so stats and leases move quickly in tests.
const FAST: &str = r#""sync_interval": "50ms""#;

fn filter_yaml(json: &str) -> String {
    let wasm = filter_wasm("retry-budget").expect("retry_budget.wasm");
    wasm_filter_yaml("retry_budget", "retry_budget", "rb", &wasm, json)
}

fn opts(concurrency: u32) -> EnvoyOptions {
    EnvoyOptions {
        concurrency,
        ..EnvoyOptions::default()
    }
}

fn start(config: &ProxyConfig, concurrency: u32) -> Envoy {
    let envoy = Envoy::start(&config.render(), &opts(concurrency)).expect("envoy starts");
    envoy.wait_listener(config.listener_port).expect("listener");
    envoy
}

/// A route `name` for `/name` to cluster `name`, with three retries on 5xx.
fn retrying_route(name: &str) -> RouteSpec {
    RouteSpec::new(name, &format!("/{name}"), name)
        .with_timeout(Duration::from_secs(5))
        .with_action_yaml(RETRY_3)
}

fn stat(envoy: &Envoy, key: &str, name: &str) -> u64 {
    envoy.stat(&format!("{STATS}.{key}.{name}"))
}

fn wait_stat(envoy: &Envoy, key: &str, name: &str, n: u64) -> u64 {
    envoy
        .wait_stat(&format!("{STATS}.{key}.{name}"), n, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("{e}\n{}", envoy.log_tail(40)))
}

fn assert_no_vm_failure(envoy: &Envoy) {
    if let Some(failure) = envoy.vm_failure() {
        panic!("{failure}");
    }
}

fn get_with(port: u16, path: &str, headers: &[(&str, &str)]) -> Response {
    request(port, "GET", path, headers, None).expect("request through Envoy")
}

fn fail_fraction() -> f64 {
    std::env::var("RETRY_BUDGET_FAIL_FRACTION")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|f| (0.0..=1.0).contains(f))
        .unwrap_or(0.8)
}

/// Per-worker listener stats: how many connections each worker accepted.
fn connections_per_worker(envoy: &Envoy, port: u16) -> Vec<u64> {
    let stats = envoy.stats().unwrap();
    let prefix = format!("listener.127.0.0.1_{port}.worker_");
    stats
        .iter()
        .filter(|(k, _)| k.starts_with(&prefix) && k.ends_with(".downstream_cx_total"))
        .map(|(_, v)| *v)
        .collect()
}

/// One amplification run on a fresh Envoy: `n` requests from `clients` parallel clients to each
/// of the three routes in turn, against an upstream that answers after `latency` and fails a
/// fraction `f`. Asserts the filter's bound and prints the three figures side by side.
fn amplification_run(n: u64, clients: usize, latency: Duration, f: f64) {
    let upstream = Upstream::start().unwrap();
    for (i, prefix) in ["/none", "/filter", "/native"].into_iter().enumerate() {
        upstream.set_behavior(
            prefix,
            Behavior::status(200)
                .with_latency(latency)
                .failing_fraction(f, 42 + i as u64)
                .on_failure(Behavior::status(503).with_latency(latency)),
        );
    }
    // The filter guards /filter only; /none and /native pass it unguarded.
    let filter = filter_yaml(&format!(
        r#"{{ {FAST}, "mode": "disabled",
             "routes": [{{ "name": "filter", "match": {{ "route_name": "filter" }},
                          "mode": "outbound", "budget_percent": 20, "min_retries_per_second": 5,
                          "window": "10s", "max_retries": 3 }}] }}"#
    ));
    let native = "circuit_breakers:
  thresholds:
  - priority: DEFAULT
    retry_budget:
      budget_percent: { value: 20.0 }
      min_retry_concurrency: 3";
    // Envoy's default circuit breaker allows only 3 concurrent retries per cluster; lift it so
    // that only the budget under test limits retries.
    let unlimited = "circuit_breakers:
  thresholds:
  - priority: DEFAULT
    max_retries: 1000000";
    let port = free_port();
    let config = ProxyConfig::new(port, free_port())
        .with_http_filters(&filter)
        .route(retrying_route("none"))
        .route(retrying_route("filter"))
        .route(retrying_route("native"))
        .cluster(ClusterSpec::new("none", &[upstream.port()]).with_extra_yaml(unlimited))
        .cluster(ClusterSpec::new("filter", &[upstream.port()]).with_extra_yaml(unlimited))
        .cluster(ClusterSpec::new("native", &[upstream.port()]).with_extra_yaml(native));
    let envoy = start(&config, 2);

    let mut figures = Vec::new();
    for name in ["none", "filter", "native"] {
        let path = format!("/{name}");
        let started = Instant::now();
        let statuses = parallel(clients, n as usize, |_| get_with(port, &path, &[]).status);
        let elapsed = started.elapsed();
        let upstream_requests = upstream.requests_for(&path);
        let failed = statuses.iter().filter(|s| **s != 200).count();
        figures.push((name, upstream_requests, failed, elapsed));
    }
    let amp = |u: u64| u as f64 / n as f64;
    let expected_none = 1.0 + f + f * f + f * f * f;
    println!(
        "figure: upstream amplification = upstream requests / {n} client requests ({clients} parallel clients, upstream latency {latency:?}, {:.0}% of upstream requests fail, route retries 3x on 5xx, Envoy --concurrency 2):",
        f * 100.0
    );
    println!(
        "figure:   {:<34} {:>8} {:>14} {:>16}",
        "", "amplif.", "upstream reqs", "client failures"
    );
    for (name, u, failed, elapsed) in &figures {
        let label = match *name {
            "none" => "no budget",
            "filter" => "retry_budget filter, 20%",
            _ => "Envoy native retry_budget, 20%",
        };
        println!(
            "figure:   {label:<34} {:>7.3}x {u:>14} {failed:>16}   ({elapsed:.1?})",
            amp(*u)
        );
    }
    println!("figure:   (without a budget the expected amplification is 1+f+f²+f³ = {expected_none:.3}x)");

    let (_, none, _, _) = figures[0];
    let (_, with_filter, _, filter_elapsed) = figures[1];
    // The window is 10 s in 10 buckets: everything seen in the last 9 s still counts, so a run
    // shorter than that gets one floor; a longer one could get one more per 9 s.
    let windows = filter_elapsed.as_millis().div_ceil(9_000).max(1) as u64;
    let floor = 5 * 10 * windows;
    let bound = n + n / 5 + floor;
    println!(
        "figure:   the filter's bound: {n} + 20% of {n} + floor (5/s x 10 s window x {windows}) = {bound} upstream requests = {:.3}x; measured {with_filter} = {:.3}x",
        amp(bound),
        amp(with_filter)
    );
    assert!(
        amp(none) > 1.5,
        "without a budget the retries amplify ({none})"
    );
    assert!(
        with_filter <= bound,
        "the filter stays within 1.2x plus the floor: {with_filter} > {bound}"
    );
    assert!(with_filter > n, "retries within the budget still happen");
    // The filter's own account matches what the upstream saw.
    let retries = wait_stat(&envoy, "filter", "retries_allowed", with_filter - n);
    assert_eq!(retries, with_filter - n);
    wait_stat(&envoy, "filter", "requests", n);
    assert!(
        stat(&envoy, "filter", "retries_denied_budget") + stat(&envoy, "filter", "retries_capped")
            > 0
    );
    assert_no_vm_failure(&envoy);
}

#[test]
fn amplification_without_a_budget_with_this_filter_and_with_envoys_native_budget() {
    let f = fail_fraction();
    // Envoy's native budget follows concurrency (with a floor of 3 concurrent retries), the
    // filter's bound only the request count: compare them with few and with many clients.
    amplification_run(500, 8, Duration::ZERO, f);
    amplification_run(500, 32, Duration::from_millis(10), f);
    amplification_run(500, 2, Duration::from_millis(2), f);
}

#[test]
fn one_budget_is_shared_by_every_worker() {
    let upstream = Upstream::start().unwrap();
    upstream.set_default(Behavior::status(503).with_latency(Duration::from_millis(2)));
    // No share of requests, only the floor: 2 retries per second over 10 s = 20 retries in all.
    let filter = filter_yaml(&format!(
        r#"{{ {FAST}, "budget_percent": 0, "min_retries_per_second": 2, "max_retries": 3 }}"#
    ));
    let port = free_port();
    let config = ProxyConfig::new(port, free_port())
        .with_http_filters(&filter)
        .route(retrying_route("all"))
        .cluster(ClusterSpec::new("all", &[upstream.port()]));
    let envoy = start(&config, 4);
    let n = 200;
    let statuses = parallel(16, n, |i| {
        std::thread::sleep(Duration::from_millis((i % 7) as u64));
        get_with(port, "/all", &[]).status
    });
    assert!(statuses.iter().all(|s| *s == 503));
    let retries = upstream.requests() - n as u64;
    let per_worker = connections_per_worker(&envoy, port);
    let busy_workers = per_worker.iter().filter(|c| **c > 0).count();
    println!(
        "figure: {n} always-failing requests over 4 workers (connections per worker {per_worker:?}): {retries} retries made; one shared floor allows 20, per-worker budgets would have allowed {}",
        20 * busy_workers
    );
    assert!(
        busy_workers >= 2,
        "traffic reached several workers: {per_worker:?}"
    );
    assert!(
        retries <= 20,
        "one budget for all workers: {retries} retries"
    );
    assert!(retries >= 10, "the budget is used: {retries} retries");
    // The workers' accounts add up to the upstream's, and the gauge shows an empty budget.
    assert_eq!(
        wait_stat(&envoy, "all", "retries_allowed", retries),
        retries
    );
    wait_stat(&envoy, "all", "retries_denied_budget", 1);
    let remaining = stat(&envoy, "all", "budget_remaining");
    println!("figure: budget_remaining gauge after the storm: {remaining}");
    assert!(remaining <= 20);
    assert_no_vm_failure(&envoy);
}

#[test]
fn inbound_sheds_retries_beyond_the_budget_and_never_a_first_attempt() {
    let upstream = Upstream::start().unwrap();
    let filter = filter_yaml(&format!(
        r#"{{ {FAST}, "mode": "inbound", "budget_percent": 20, "min_retries_per_second": 0,
             "retry_after_min": "2s", "retry_after_max": "4s" }}"#
    ));
    let port = free_port();
    let config = ProxyConfig::new(port, free_port())
        .with_http_filters(&filter)
        .route(RouteSpec::new("app", "/", "app").with_timeout(Duration::from_secs(5)))
        .cluster(ClusterSpec::new("app", &[upstream.port()]));
    let envoy = start(&config, 2);

    // 100 first attempts: all pass, and they make room for 20 retries.
    let first = parallel(4, 100, |_| get_with(port, "/x", &[]).status);
    assert!(first.iter().all(|s| *s == 200));
    std::thread::sleep(Duration::from_millis(200));

    // 60 retries, as Envoy (x-envoy-attempt-count) and gRPC clients mark them.
    let retries: Vec<Response> = (0..60)
        .map(|i| {
            let header = if i % 2 == 0 {
                ("x-envoy-attempt-count", "2")
            } else {
                ("grpc-previous-rpc-attempts", "1")
            };
            get_with(port, "/x", &[header])
        })
        .collect();
    let admitted = retries.iter().filter(|r| r.status == 200).count();
    let shed: Vec<&Response> = retries.iter().filter(|r| r.status == 503).collect();
    println!(
        "figure: inbound, 20% of 100 first attempts: {admitted} of 60 retries admitted, {} shed",
        shed.len()
    );
    assert_eq!(admitted + shed.len(), 60);
    assert!(
        admitted <= 20,
        "at most 20% of the first attempts: {admitted}"
    );
    assert!(admitted >= 16, "the budget is used: {admitted}");
    for r in &shed {
        assert_eq!(r.header(HEADER), Some("shed; reason=budget"));
        assert_eq!(r.header("x-envoy-ratelimited"), Some("true"));
        assert_eq!(r.header("content-type"), Some("application/problem+json"));
        let retry_after: u64 = r.header("retry-after").unwrap().parse().unwrap();
        assert!(
            (2..=4).contains(&retry_after),
            "jittered within bounds: {retry_after}"
        );
        let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(
            body["type"],
            "urn:resilience-pack:problem:retry-budget-exhausted"
        );
        assert_eq!(body["status"], 503);
        assert_eq!(body["budget"], "app");
        assert_eq!(body["retry_after"], retry_after);
    }
    let after = Instant::now();
    let distinct: std::collections::BTreeSet<&str> = shed
        .iter()
        .filter_map(|r| r.header("retry-after"))
        .collect();
    println!("figure: retry-after values of the sheds: {distinct:?}");
    assert!(distinct.len() >= 2, "retry-after is jittered: {distinct:?}");

    // Retries keep being shed while first attempts, sent at the same time, all pass.
    let mixed = parallel(8, 120, |i| {
        let retry = i % 2 == 1;
        let headers: &[(&str, &str)] = if retry {
            &[("x-envoy-attempt-count", "3")]
        } else {
            &[]
        };
        (retry, get_with(port, "/x", headers))
    });
    let first_attempts: Vec<&Response> = mixed.iter().filter(|(r, _)| !r).map(|(_, x)| x).collect();
    assert_eq!(first_attempts.len(), 60);
    assert!(
        first_attempts
            .iter()
            .all(|r| r.status == 200 && r.header(HEADER).is_none()),
        "a first attempt is never shed"
    );
    let shed_now = mixed.iter().filter(|(r, x)| *r && x.status == 503).count();
    println!(
        "figure: then 60 first attempts and 60 retries at once ({:?} after the sheds): 60 first attempts passed, {shed_now} retries shed",
        after.elapsed()
    );
    assert!(
        shed_now >= 40,
        "retries beyond 20% of the new first attempts are shed: {shed_now}"
    );
    let total_admitted = admitted as u64 + 60 - shed_now as u64;
    assert_eq!(upstream.requests(), 100 + 60 + total_admitted);
    wait_stat(
        &envoy,
        "app",
        "retries_shed",
        shed.len() as u64 + shed_now as u64,
    );
    // Each worker flushes its own counts on its own tick: wait for the allowed ones as well.
    assert_eq!(
        wait_stat(&envoy, "app", "retries_allowed", total_admitted),
        total_admitted
    );
    assert_no_vm_failure(&envoy);
}

/// Starts a chain edge → mid → upstream with the given filter configurations; each Envoy has the
/// routes `/none`, `/guard` and `/budget` with three retries on 5xx and sends the attempt count
/// upstream (`include_request_attempt_count`).
fn chain(upstream: &Upstream, filter_json: &str) -> (Envoy, Envoy, u16) {
    let mid_port = free_port();
    let edge_port = free_port();
    let mut envoys = Vec::new();
    for (port, target) in [(mid_port, upstream.port()), (edge_port, mid_port)] {
        let mut config =
            ProxyConfig::new(port, free_port()).with_http_filters(&filter_yaml(filter_json));
        config.virtual_host_yaml = "include_request_attempt_count: true".to_owned();
        for name in ["none", "guard", "budget"] {
            config = config
                .route(retrying_route(name))
                .cluster(ClusterSpec::new(name, &[target]));
        }
        envoys.push(start(&config, 2));
    }
    let edge = envoys.pop().unwrap();
    let mid = envoys.pop().unwrap();
    (edge, mid, edge_port)
}

#[test]
fn a_two_hop_chain_with_the_guard_adds_retries_up_instead_of_multiplying_them() {
    let upstream = Upstream::start().unwrap();
    upstream.set_default(Behavior::status(503));
    let unlimited = r#""budget_percent": 100, "min_retries_per_second": 100000"#;
    let filter = format!(
        r#"{{ {FAST}, "max_retries": 3, "mode": "disabled",
             "routes": [
               {{ "name": "guard", "match": {{ "route_name": "guard" }}, "mode": "outbound", {unlimited} }},
               {{ "name": "budget", "match": {{ "route_name": "budget" }}, "mode": "outbound",
                  "budget_percent": 20, "min_retries_per_second": 1 }}
             ] }}"#
    );
    let (edge, mid, port) = chain(&upstream, &filter);
    let n: u64 = 30;
    let mut per_request = Vec::new();
    for name in ["none", "guard", "budget"] {
        let path = format!("/{name}");
        for _ in 0..n {
            assert_eq!(get_with(port, &path, &[]).status, 503);
        }
        per_request.push(upstream.requests_for(&path) as f64 / n as f64);
    }
    println!("figure: two hops (edge -> mid -> upstream), 3 retries on 5xx at each hop, upstream always failing, {n} client requests:");
    println!("figure:   no filter:                          {:.2} upstream requests per client request (4 x 4)", per_request[0]);
    println!("figure:   hop guard, unlimited budget:        {:.2} (mid retries the first attempt only: 4 + 3)", per_request[1]);
    println!(
        "figure:   hop guard and a 20% budget per hop: {:.2}",
        per_request[2]
    );
    assert_eq!(per_request[0], 16.0, "without the filter the hops multiply");
    assert_eq!(
        per_request[1], 7.0,
        "with the guard, retries add up across hops (4 + 4 - 1) instead of multiplying"
    );
    assert!(per_request[2] <= per_request[1]);
    // The mid hop refused retries to the edge's retries, and said so in its stats.
    wait_stat(&mid, "guard", "retries_denied_hop_guard", 3 * n);
    assert_eq!(stat(&edge, "guard", "retries_denied_hop_guard"), 0);
    // The marker the mid hop adds reaches the upstream with the edge's retries.
    let marked = upstream
        .log()
        .iter()
        .filter(|r| r.path == "/guard" && r.header("x-resilience-retried") == Some("1"))
        .count();
    assert_eq!(marked as u64, 3 * n);
    assert_no_vm_failure(&edge);
    assert_no_vm_failure(&mid);
}

#[test]
fn an_inbound_shed_tells_the_callers_envoy_not_to_retry_it() {
    // caller Envoy (3 retries on 5xx) -> server Envoy (inbound, no retries allowed) -> app.
    let app = Upstream::start().unwrap();
    app.set_default(Behavior::status(503));
    let server_port = free_port();
    let mut runs = Vec::new();
    for mark in [true, false] {
        let server_filter = filter_yaml(&format!(
            r#"{{ {FAST}, "mode": "inbound", "budget_percent": 0, "min_retries_per_second": 0, "mark_ratelimited": {mark} }}"#
        ));
        let port = if mark { server_port } else { free_port() };
        let server = start(
            &ProxyConfig::new(port, free_port())
                .with_http_filters(&server_filter)
                .route(RouteSpec::new("app", "/", "app"))
                .cluster(ClusterSpec::new("app", &[app.port()])),
            2,
        );
        let caller_port = free_port();
        let mut caller_config = ProxyConfig::new(caller_port, free_port())
            .route(retrying_route("svc"))
            .cluster(ClusterSpec::new("svc", &[port]));
        caller_config.virtual_host_yaml = "include_request_attempt_count: true".to_owned();
        let caller = start(&caller_config, 2);
        app.reset_counts();
        let n = 20;
        for _ in 0..n {
            assert_eq!(get_with(caller_port, "/svc", &[]).status, 503);
        }
        let shed = wait_stat(&server, "app", "retries_shed", 1);
        std::thread::sleep(Duration::from_millis(150));
        let shed = shed.max(stat(&server, "app", "retries_shed"));
        runs.push((mark, app.requests(), shed));
        assert_no_vm_failure(&server);
        drop(caller);
    }
    for (mark, app_requests, shed) in &runs {
        println!(
            "figure: caller retries 3x -> server in inbound mode with no retry budget (mark_ratelimited {mark}): 20 client requests, {app_requests} reached the app, {shed} retries shed at the server"
        );
    }
    let (_, app_marked, shed_marked) = runs[0];
    let (_, app_unmarked, shed_unmarked) = runs[1];
    assert_eq!(app_marked, 20, "only first attempts reach the app");
    assert_eq!(app_unmarked, 20, "only first attempts reach the app");
    assert_eq!(
        shed_marked, 20,
        "x-envoy-ratelimited: the caller's router stops after one shed"
    );
    assert_eq!(
        shed_unmarked, 60,
        "without it the caller retries into every shed"
    );
}

#[test]
fn no_retry_is_attempted_when_the_deadline_is_below_the_median_latency() {
    let upstream = Upstream::start().unwrap();
    upstream.set_default(Behavior::status(200).with_latency(Duration::from_millis(80)));
    let filter = filter_yaml(&format!(
        r#"{{ {FAST}, "max_retries": 3, "min_latency_samples": 10, "deadline_header": "x-deadline-ms" }}"#
    ));
    let port = free_port();
    let config = ProxyConfig::new(port, free_port())
        .with_http_filters(&filter)
        .route(retrying_route("d"))
        .cluster(ClusterSpec::new("d", &[upstream.port()]));
    let envoy = start(&config, 2);
    // Learn the route's latency: single successful attempts of ~80 ms.
    parallel(4, 16, |_| assert_eq!(get_with(port, "/d", &[]).status, 200));
    std::thread::sleep(Duration::from_millis(300));

    upstream.set_default(Behavior::status(503));
    // (what, request headers, upstream attempts expected)
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], u64);
    let cases: [Case; 5] = [
        ("grpc-timeout 40 ms", &[("grpc-timeout", "40m")], 1),
        ("x-deadline-ms 30", &[("x-deadline-ms", "30")], 1),
        ("grpc-timeout 5 s", &[("grpc-timeout", "5S")], 4),
        ("x-deadline-ms 1000", &[("x-deadline-ms", "1000")], 4),
        ("no deadline", &[], 4),
    ];
    for (what, headers, attempts) in cases {
        upstream.reset_counts();
        let r = get_with(port, "/d", headers);
        assert_eq!(r.status, 503);
        println!(
            "figure: deadline-aware (median ~80 ms): {what}: {} upstream attempts, decision header {:?}",
            upstream.requests(),
            r.header(HEADER)
        );
        assert_eq!(upstream.requests(), attempts, "{what}");
        if attempts == 1 {
            assert_eq!(r.header(HEADER), Some("deny; reason=deadline"));
        } else {
            assert_eq!(r.header(HEADER), None);
        }
    }
    wait_stat(&envoy, "d", "retries_denied_deadline", 2);
    assert_no_vm_failure(&envoy);
}

#[test]
fn dry_run_never_changes_behaviour_but_counts_and_explains_what_it_would_deny() {
    let upstream = Upstream::start().unwrap();
    for prefix in ["/plain", "/dry"] {
        upstream.set_behavior(prefix, Behavior::status(200).failing_fraction(0.7, 7));
    }
    // A budget of 2 retries: enforcing it would deny almost every retry.
    let filter = filter_yaml(&format!(
        r#"{{ {FAST}, "mode": "disabled", "max_retries": 3,
             "routes": [
               {{ "name": "dry", "match": {{ "route_name": "dry" }}, "mode": "outbound_dry_run",
                  "budget_percent": 0, "min_retries_per_second": 0.2 }},
               {{ "name": "indry", "match": {{ "route_name": "indry" }}, "mode": "inbound_dry_run",
                  "budget_percent": 0, "min_retries_per_second": 0 }}
             ] }}"#
    ));
    let port = free_port();
    let config = ProxyConfig::new(port, free_port())
        .with_http_filters(&filter)
        .route(retrying_route("plain"))
        .route(retrying_route("dry"))
        .route(RouteSpec::new("indry", "/indry", "plain"))
        .cluster(ClusterSpec::new("plain", &[upstream.port()]))
        .cluster(ClusterSpec::new("dry", &[upstream.port()]));
    let envoy = start(&config, 2);
    // Sequential requests: the upstream's failing sequence is then the same for both routes.
    let plain: Vec<u16> = (0..60)
        .map(|_| get_with(port, "/plain", &[]).status)
        .collect();
    let dry: Vec<Response> = (0..60).map(|_| get_with(port, "/dry", &[])).collect();
    let dry_statuses: Vec<u16> = dry.iter().map(|r| r.status).collect();
    assert_eq!(
        plain, dry_statuses,
        "dry run answers exactly like no filter"
    );
    assert_eq!(
        upstream.requests_for("/plain"),
        upstream.requests_for("/dry")
    );
    let explained = dry
        .iter()
        .filter(|r| {
            r.header(HEADER)
                .is_some_and(|h| h.starts_with("dry_run; would_"))
        })
        .count();
    wait_stat(&envoy, "dry", "requests", 60);
    std::thread::sleep(Duration::from_millis(150));
    let would_deny = stat(&envoy, "dry", "dry_run_would_deny");
    println!(
        "figure: dry run: 60 requests, {} upstream requests with and without the filter; {would_deny} would have been denied or capped ({explained} marked)",
        upstream.requests_for("/dry")
    );
    assert!(would_deny > 0);
    assert_eq!(
        explained as u64, would_deny,
        "each would-be denial is marked"
    );
    assert_eq!(stat(&envoy, "dry", "retries_denied_budget"), 0);

    // Inbound dry run: no retry is shed, each is counted.
    let inbound: Vec<Response> = (0..10)
        .map(|_| get_with(port, "/indry", &[("x-envoy-attempt-count", "2")]))
        .collect();
    assert!(inbound.iter().all(|r| r.status == 200));
    assert!(inbound
        .iter()
        .all(|r| r.header(HEADER) == Some("dry_run; would_shed=budget")));
    wait_stat(&envoy, "indry", "dry_run_would_deny", 10);
    assert_eq!(stat(&envoy, "indry", "retries_shed"), 0);
    assert_no_vm_failure(&envoy);
}

fn raw_request(port: u16, head: &[u8]) -> Vec<u8> {
    harness::client::raw_request(port, head).unwrap()
}

#[test]
fn hostile_attempt_count_and_deadline_headers_never_trap_the_vm() {
    let upstream = Upstream::start().unwrap();
    upstream.set_default(Behavior::status(503).with_header("x-envoy-attempt-count", "-7"));
    let filter = filter_yaml(&format!(
        r#"{{ {FAST}, "max_retries": 3, "min_latency_samples": 1, "deadline_header": "x-deadline-ms",
             "attempt_count_headers": ["x-envoy-attempt-count", "x-attempt"],
             "routes": [{{ "name": "in", "match": {{ "prefix": "/in" }}, "mode": "inbound",
                           "budget_percent": 0, "min_retries_per_second": 0 }}] }}"#
    ));
    let port = free_port();
    let config = ProxyConfig::new(port, free_port())
        .with_http_filters(&filter)
        .route(RouteSpec::new("in", "/in", "app").with_timeout(Duration::from_secs(5)))
        .route(retrying_route("out"))
        .cluster(ClusterSpec::new("app", &[upstream.port()]))
        .cluster(ClusterSpec::new("out", &[upstream.port()]));
    let envoy = start(&config, 2);
    let huge = "9".repeat(10_000);
    let hostile: Vec<Vec<u8>> = vec![
        b"-1".to_vec(),
        b"-99999999999999999999".to_vec(),
        b"99999999999999999999999999999".to_vec(),
        huge.clone().into_bytes(),
        b"abc".to_vec(),
        b"2, 3".to_vec(),
        b"0x10".to_vec(),
        b"1e9".to_vec(),
        b"\xff\xfe\x80".to_vec(),
        b"\xc3\x28".to_vec(),
    ];
    let mut answered = 0;
    for path in ["/in", "/out"] {
        for value in &hostile {
            for name in [
                &b"x-envoy-attempt-count"[..],
                b"grpc-previous-rpc-attempts",
                b"x-resilience-retried",
                b"x-attempt",
                b"grpc-timeout",
                b"x-deadline-ms",
                b"x-envoy-upstream-rq-timeout-ms",
            ] {
                let mut head =
                    format!("GET {path} HTTP/1.1\r\nhost: a\r\nconnection: close\r\n").into_bytes();
                head.extend_from_slice(name);
                head.extend_from_slice(b": ");
                head.extend_from_slice(value);
                head.extend_from_slice(b"\r\n\r\n");
                let out = raw_request(port, &head);
                let text = String::from_utf8_lossy(&out);
                assert!(
                    text.starts_with("HTTP/1.1 "),
                    "no answer for {:?}",
                    String::from_utf8_lossy(value)
                );
                assert!(!text.contains("wasm_fail"), "{text}");
                answered += 1;
            }
        }
    }
    println!("figure: {answered} requests with hostile attempt-count and deadline headers all answered, no VM failure");
    envoy
        .wait_stat(
            &format!("{STATS}.attempt_headers_invalid"),
            1,
            Duration::from_secs(5),
        )
        .unwrap();
    // Still deciding: a genuine retry on the inbound route (no budget) is shed.
    let r = get_with(port, "/in", &[("x-envoy-attempt-count", "2")]);
    assert_eq!(r.status, 503);
    assert_eq!(r.header(HEADER), Some("shed; reason=budget"));
    assert_no_vm_failure(&envoy);
}

#[test]
fn upstream_503s_without_retry_after_get_a_jittered_one() {
    let upstream = Upstream::start().unwrap();
    upstream.set_behavior("/bare", Behavior::status(503));
    upstream.set_behavior(
        "/hinted",
        Behavior::status(429).with_header("retry-after", "30"),
    );
    let filter = filter_yaml(&format!(
        r#"{{ {FAST}, "max_retries": 0, "add_retry_after": true, "retry_after_min": "1s", "retry_after_max": "9s" }}"#
    ));
    let port = free_port();
    let config = ProxyConfig::new(port, free_port())
        .with_http_filters(&filter)
        .route(RouteSpec::new("app", "/", "app"))
        .cluster(ClusterSpec::new("app", &[upstream.port()]));
    let envoy = start(&config, 2);
    let hints: Vec<u64> = (0..30)
        .map(|_| {
            let r = get_with(port, "/bare", &[]);
            assert_eq!(r.status, 503);
            r.header("retry-after").unwrap().parse().unwrap()
        })
        .collect();
    assert!(hints.iter().all(|h| (1..=9).contains(h)));
    let distinct: std::collections::BTreeSet<_> = hints.iter().collect();
    println!(
        "figure: 30 upstream 503s got retry-after values {distinct:?} (full jitter in 1..=9 s)"
    );
    assert!(distinct.len() >= 3, "spread out: {distinct:?}");
    let r = get_with(port, "/hinted", &[]);
    assert_eq!(
        r.header("retry-after"),
        Some("30"),
        "an upstream's own hint is kept"
    );
    assert!(get_with(port, "/ok", &[]).header("retry-after").is_none());
    wait_stat(&envoy, "app", "retry_after_added", 30);
}

#[test]
fn invalid_config_makes_envoy_refuse_the_filter_with_the_field_named() {
    let upstream = Upstream::start().unwrap();
    for (json, expected) in [
        (
            r#"{"routes": [{"match": {"prefix": "/a"}}, {"match": {"prefix": "/b"}, "budget_percent": 150}]}"#,
            "routes[1].budget_percent: must be between 0 and 100, got 150",
        ),
        (
            r#"{"window": "ten seconds"}"#,
            "window: must be a duration string",
        ),
        (
            r#"{"retry_after_min": "10s", "retry_after_max": "2s"}"#,
            "retry_after_max: must be at least retry_after_min (10s), got 2s",
        ),
        (
            r#"{"retry_on": "5xx,on-tuesdays"}"#,
            "retry_on: \"on-tuesdays\" is not a retry condition",
        ),
        (r#"{"mode": "both"}"#, "mode: unknown variant \"both\""),
        (r#"{"budget": 20}"#, "budget: unknown field \"budget\""),
    ] {
        let config = ProxyConfig::new(free_port(), free_port())
            .with_http_filters(&filter_yaml(json))
            .route(RouteSpec::new("default", "/", "upstream"))
            .cluster(ClusterSpec::new("upstream", &[upstream.port()]))
            .render();
        let log = harness::envoy::start_expect_failure(&config, &EnvoyOptions::default())
            .expect("envoy refuses the config");
        let line = log
            .lines()
            .find(|l| l.contains("retry_budget: invalid configuration"))
            .unwrap_or_else(|| panic!("no config error line for {json}:\n{log}"));
        assert!(line.contains(expected), "{line}");
        println!("figure: Envoy refused {json} with: {}", line.trim());
    }
}

#[test]
fn the_shipped_envoy_config_validates_runs_and_reads_well_in_prometheus() {
    let upstream = Upstream::start().unwrap();
    let (envoy, listener) = harness::shipped::start("retry-budget.yaml", upstream.port()).unwrap();
    upstream.set_behavior("/flaky", Behavior::status(503));
    for _ in 0..20 {
        get_with(listener, "/flaky", &[]);
        assert_eq!(get_with(listener, "/api/x", &[]).status, 200);
    }
    // The flaky route's tuned budget (floor 1 retry per second) denies most retries.
    let denied = wait_stat(&envoy, "flaky", "retries_denied_budget", 1);
    let prom = envoy.prometheus();
    let lines: Vec<&str> = prom
        .lines()
        .filter(|l| l.starts_with("retry_budget"))
        .collect();
    println!(
        "figure: shipped config, 20 requests to an always-failing route: {} upstream requests, {denied} denied; prometheus sample:\n{}",
        upstream.requests_for("/flaky"),
        lines.iter().take(12).cloned().collect::<Vec<_>>().join("\n")
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("retry_budget_retries_denied_budget{budget_key=\"flaky\"}")),
        "{lines:#?}"
    );
    assert_no_vm_failure(&envoy);
}
