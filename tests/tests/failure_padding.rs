//! Failure-latency padding, proven against the real Envoy (several workers, one learned latency).
//!
//! Each test starts its own Envoy (`--concurrency` 2 to 4) with the filter in front of scripted
//! upstreams whose successes take ~50 ms and whose failures are instant, drives real HTTP traffic,
//! and asserts on what clients see (status, latency, the decision header), on what the upstream
//! received and on Envoy's stats. Figures worth reporting are printed as `figure:` lines
//! (`--nocapture`). The black-hole test runs the scenario the filter exists for (the failure
//! lab's `blackhole`): an edge Envoy balancing by least request over four per-host sidecars, one
//! of whose hosts fails instantly.

// Test code: a failed expectation should panic with its message.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Barrier, Mutex};
use std::time::{Duration, Instant};

use harness::config::wasm_filter_yaml;
use harness::lab::{report, Progress, Scale, ScenarioReport};
use harness::{
    filter_wasm, free_port, get, parallel, request, Behavior, ClusterSpec, Envoy, EnvoyOptions,
    ProxyConfig, Response, RouteSpec, Upstream,
};

const HEADER: &str = "x-resilience-failure-padding";
const SUCCESS_MS: u64 = 50;

struct Rig {
    envoy: Envoy,
    upstream: Upstream,
    port: u16,
}

impl Rig {
    fn get(&self, path: &str) -> Response {
        get(self.port, path).expect("request through Envoy")
    }

    fn get_with(&self, path: &str, headers: &[(&str, &str)]) -> Response {
        request(self.port, "GET", path, headers, None).expect("request through Envoy")
    }

    fn stat(&self, key: &str, name: &str) -> u64 {
        self.envoy
            .stat(&format!("wasmcustom.failure_padding.{key}.{name}"))
    }

    fn global(&self, name: &str) -> u64 {
        self.envoy
            .stat(&format!("wasmcustom.failure_padding.{name}"))
    }

    /// Waits until a per-key stat reaches `n` (stats are flushed on the filter's sync tick).
    fn wait_stat(&self, key: &str, name: &str, n: u64) -> u64 {
        self.envoy
            .wait_stat(
                &format!("wasmcustom.failure_padding.{key}.{name}"),
                n,
                Duration::from_secs(5),
            )
            .unwrap_or_else(|e| panic!("{e}\n{}", self.envoy.log_tail(40)))
    }

    fn assert_no_vm_failure(&self) {
        assert_no_vm_failure(&self.envoy);
    }
}

fn assert_no_vm_failure(envoy: &Envoy) {
    if let Some(failure) = envoy.vm_failure() {
        panic!("{failure}");
    }
}

fn padding_filter(name: &str, filter_json: &str) -> String {
    let wasm = filter_wasm("failure-padding").expect("failure_padding.wasm");
    wasm_filter_yaml(name, name, "failure_padding_test", &wasm, filter_json)
}

struct RigOptions<'a> {
    routes: &'a [(&'a str, &'a str)],
    concurrency: u32,
    log_level: &'a str,
    extra_args: Vec<String>,
    hcm_yaml: &'a str,
}

impl Default for RigOptions<'_> {
    fn default() -> Self {
        RigOptions {
            routes: &[("api", "/")],
            concurrency: 2,
            log_level: "info",
            extra_args: Vec::new(),
            hcm_yaml: "",
        }
    }
}

fn rig_with(filter_json: &str, opts: RigOptions<'_>) -> Rig {
    let upstream = Upstream::start().expect("upstream");
    let port = free_port();
    let mut config = ProxyConfig::new(port, free_port())
        .with_http_filters(&padding_filter("failure_padding", filter_json))
        .cluster(ClusterSpec::new("upstream", &[upstream.port()]));
    config.hcm_yaml = opts.hcm_yaml.to_string();
    for (name, prefix) in opts.routes {
        config = config
            .route(RouteSpec::new(name, prefix, "upstream").with_timeout(Duration::from_secs(5)));
    }
    let envoy = Envoy::start(
        &config.render(),
        &EnvoyOptions {
            concurrency: opts.concurrency,
            log_level: opts.log_level.to_string(),
            extra_args: opts.extra_args,
        },
    )
    .expect("envoy starts with the filter");
    envoy.wait_listener(port).expect("listener");
    Rig {
        envoy,
        upstream,
        port,
    }
}

fn rig(filter_json: &str) -> Rig {
    rig_with(filter_json, RigOptions::default())
}

/// Successes after `SUCCESS_MS`; `fail_every` requests fail instantly with `failure_status`.
fn mixed(fail_every: u64, failure_status: u16) -> Behavior {
    Behavior::status(200)
        .with_latency(Duration::from_millis(SUCCESS_MS))
        .failing_every_nth(fail_every)
        .on_failure(Behavior::status(failure_status))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1_000.0
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn percentile(mut v: Vec<f64>, p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    let i = ((v.len() as f64 - 1.0) * p / 100.0).round() as usize;
    v[i]
}

/// The `key=value` parameter of a decision header such as `padded; ms=48; target=51`.
fn param(header: &str, name: &str) -> Option<u64> {
    header.split(';').map(str::trim).find_map(|part| {
        part.strip_prefix(name)
            .and_then(|rest| rest.strip_prefix('='))
            .and_then(|v| v.parse().ok())
    })
}

/// Teaches the filter the success latency: `n` successes, sequentially, then one sync.
fn learn(rig: &Rig, path: &str, n: usize) -> Vec<f64> {
    let mut latencies = Vec::with_capacity(n);
    for _ in 0..n {
        let r = rig.get(path);
        assert_eq!(r.status, 200);
        latencies.push(ms(r.elapsed));
    }
    std::thread::sleep(Duration::from_millis(150));
    latencies
}

const FAST: &str = r#""sync_interval": "20ms""#;

/// HTTP connection manager fields that make loopback callers internal. Envoy strips
/// `x-envoy-expected-rq-timeout-ms` from requests it deems external, and Envoy 1.40 deems even a
/// loopback caller external unless `internal_address_config` lists it.
const INTERNAL_CALLERS: &str = "
use_remote_address: true
internal_address_config:
  cidr_ranges: [{ address_prefix: 127.0.0.0, prefix_len: 8 }]
";

#[test]
fn a_fast_failure_is_held_until_it_took_as_long_as_the_learned_median() {
    let _serial = timing();
    let rig = rig(&format!(r#"{{ {FAST}, "min_samples": 20 }}"#));
    rig.upstream
        .set_default(Behavior::status(200).with_latency(Duration::from_millis(SUCCESS_MS)));
    let successes = learn(&rig, "/x", 40);
    let learned_median = median(successes.clone());
    rig.wait_stat("api", "samples", 40);
    let target = rig.stat("api", "target_ms");
    println!(
        "figure: learned from 40 successes of ~{SUCCESS_MS} ms: client median {learned_median:.1} ms, filter target {target} ms"
    );
    assert!(
        (target as f64) >= 0.9 * SUCCESS_MS as f64 && (target as f64) <= 1.2 * learned_median,
        "target {target} ms vs median {learned_median:.1} ms"
    );

    rig.upstream.set_default(Behavior::status(503));
    let mut padded = Vec::new();
    let mut overshoot = Vec::new();
    for _ in 0..60 {
        let r = rig.get("/x");
        assert_eq!(
            r.status, 503,
            "a padded failure is still the upstream's failure"
        );
        let h = r.header(HEADER).expect("decision header").to_string();
        assert!(h.starts_with("padded; ms="), "{h}");
        let t = param(&h, "target").unwrap() as f64;
        let e = ms(r.elapsed);
        assert!(
            e >= 0.9 * learned_median,
            "padded failure took {e:.1} ms, learned median {learned_median:.1} ms"
        );
        padded.push(e);
        overshoot.push(e - t);
    }
    let worst = overshoot.iter().copied().fold(f64::MIN, f64::max);
    println!(
        "figure: 60 padded failures (upstream fails in <1 ms): client latency median {:.1} ms, min {:.1}, max {:.1}; past the target by median {:.1} ms, p90 {:.1}, max {worst:.1}",
        median(padded.clone()),
        padded.iter().copied().fold(f64::MAX, f64::min),
        padded.iter().copied().fold(f64::MIN, f64::max),
        median(overshoot.clone()),
        percentile(overshoot.clone(), 90.0),
    );
    // One tick (the timer is re-armed for the due time: ~1 ms) plus a margin for a loaded VM, at
    // p90; the worst single release on a shared 2-core machine gets a looser hard cap.
    let p90 = percentile(overshoot.clone(), 90.0);
    assert!(
        p90 <= 1.0 + 15.0,
        "p90 release {p90:.1} ms after the target"
    );
    assert!(worst <= 50.0, "released {worst:.1} ms after the target");
    rig.wait_stat("api", "padded", 60);
    assert!(rig.stat("api", "padding_ms") >= 60 * 40);
    assert_eq!(rig.global("in_flight"), 0);
    rig.assert_no_vm_failure();
}

/// Timing-sensitive tests run one at a time: on a small machine, parallel Envoys and clients
/// would measure each other's CPU contention rather than the filter.
static TIMING: Mutex<()> = Mutex::new(());

/// Every test in this file takes this lock: padding is about timing, and two tests sharing the
/// machine's two cores (one of them driving 5 Envoy listeners) measure each other's load.
fn timing() -> std::sync::MutexGuard<'static, ()> {
    TIMING.lock().unwrap_or_else(|p| p.into_inner())
}

#[test]
fn release_precision_does_not_depend_on_the_sync_interval() {
    let _serial = timing();
    // A 1 s sync interval: were held responses released on the regular tick, they would be up to
    // a second late. The timer is re-armed for each due time instead.
    let rig =
        rig(r#"{ "sync_interval": "1s", "fallback_target": "40ms", "min_samples": 1000000 }"#);
    rig.upstream.set_default(Behavior::status(503));
    let sequential: Vec<f64> = (0..40)
        .map(|_| {
            let r = rig.get("/x");
            let h = r.header(HEADER).unwrap().to_string();
            assert!(h.starts_with("padded"), "{h}");
            ms(r.elapsed) - param(&h, "target").unwrap() as f64
        })
        .collect();
    let concurrent: Vec<f64> = parallel(8, 160, |_| {
        let r = get(rig.port, "/x").unwrap();
        let h = r.header(HEADER).unwrap().to_string();
        assert!(h.starts_with("padded"), "{h}");
        ms(r.elapsed) - param(&h, "target").unwrap() as f64
    });
    for (what, v) in [("sequential", &sequential), ("8 threads", &concurrent)] {
        let min = v.iter().copied().fold(f64::MAX, f64::min);
        let max = v.iter().copied().fold(f64::MIN, f64::max);
        println!(
            "figure: release precision ({what}, sync_interval 1s, target 40 ms): client latency minus target: min {min:.1} ms, median {:.1}, p99 {:.1}, max {max:.1}",
            median(v.clone()),
            percentile(v.clone(), 99.0)
        );
        // The proxy's clock counts whole milliseconds: a hold may end up to 1 ms short.
        assert!(
            min >= -1.0,
            "a response was released before its target: {min:.1} ms"
        );
        // What this test is about: released on a timer armed for the due time, not on the 1 s
        // tick. A release on the tick would be up to 1000 ms late; the bound sits far below that
        // and far above what a loaded 2-core machine adds (the figure above is the precision;
        // `cargo pack bench`/the lab measure it, not an assertion that flakes under load).
        assert!(
            max <= 250.0,
            "released {max:.1} ms after the target: held until a tick, not a timer"
        );
    }
    rig.assert_no_vm_failure();
}

#[test]
fn max_padding_and_the_callers_remaining_deadline_cap_the_hold() {
    let _serial = timing();
    let rig = rig_with(
        &format!(
            r#"{{ {FAST}, "fallback_target": "300ms", "min_samples": 1000000, "deadline_header": "x-deadline-ms",
                 "routes": [{{ "name": "short", "match": {{ "prefix": "/short" }}, "max_padding": "30ms" }}] }}"#
        ),
        RigOptions {
            routes: &[("short", "/short"), ("api", "/")],
            hcm_yaml: INTERNAL_CALLERS,
            ..RigOptions::default()
        },
    );
    // Warm connections first: the cap bounds the hold, and a cold first request is slower.
    for path in ["/short/warm", "/warm"] {
        rig.upstream.set_behavior(path, Behavior::status(200));
        for _ in 0..10 {
            assert_eq!(rig.get(path).status, 200);
        }
    }
    rig.upstream.set_default(Behavior::status(503));
    // (path, request headers, expected total ms, the cap named in the header)
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], u64, &'a str);
    let cases: [Case; 5] = [
        ("/short", &[], 30, "max_padding"),
        (
            "/x",
            &[("x-envoy-expected-rq-timeout-ms", "60")],
            55,
            "deadline",
        ),
        ("/x", &[("grpc-timeout", "40m")], 35, "deadline"),
        ("/x", &[("x-deadline-ms", "25")], 20, "deadline"),
        (
            "/x",
            &[
                ("grpc-timeout", "1S"),
                ("x-envoy-expected-rq-timeout-ms", "80"),
            ],
            75,
            "deadline",
        ),
    ];
    for (path, headers, expected_total, cap) in cases {
        let r = rig.get_with(path, headers);
        let h = r.header(HEADER).unwrap().to_string();
        assert!(
            h.contains(&format!("capped={cap}")),
            "{path} {headers:?}: {h}"
        );
        let e = ms(r.elapsed);
        println!("figure: {path} {headers:?}: {h} -> client saw {e:.1} ms (expected ~{expected_total} ms)");
        assert!(
            e >= expected_total as f64 - 2.0 && e <= expected_total as f64 + 16.0,
            "{path} {headers:?}: {e:.1} ms, expected ~{expected_total}"
        );
    }
    // A deadline that leaves no room (3 ms − the 5 ms margin): no hold at all.
    let r = rig.get_with("/x", &[("x-envoy-expected-rq-timeout-ms", "3")]);
    assert_eq!(r.header(HEADER), Some("skipped; reason=deadline"));
    assert!(ms(r.elapsed) < 20.0);
    // Garbage deadlines are ignored, not trusted: the full 300 ms target applies.
    let r = rig.get_with(
        "/x",
        &[
            ("grpc-timeout", "-5S"),
            ("x-envoy-expected-rq-timeout-ms", "soon"),
        ],
    );
    let h = r.header(HEADER).unwrap();
    assert!(h.starts_with("padded") && !h.contains("capped"), "{h}");
    assert_eq!(param(h, "target"), Some(300));
    assert!(ms(r.elapsed) >= 295.0, "{:?}", r.elapsed);
    rig.wait_stat("short", "capped_max_padding", 1);
    rig.wait_stat("api", "capped_deadline", 4);
    rig.wait_stat("api", "skipped_deadline", 1);
    rig.assert_no_vm_failure();
}

#[test]
fn health_checks_and_client_errors_are_never_padded() {
    let _serial = timing();
    let rig = rig(&format!(
        r#"{{ {FAST}, "fallback_target": "200ms", "min_samples": 1000000,
             "health_checks": [{{ "exact": "/healthz" }}, {{ "headers": [{{ "name": "user-agent", "value": "Envoy/HC" }}] }}] }}"#
    ));
    rig.upstream.set_default(Behavior::status(503));
    let r = rig.get("/healthz");
    assert_eq!(r.status, 503);
    assert_eq!(r.header(HEADER), Some("skipped; reason=health_check"));
    assert!(ms(r.elapsed) < 100.0, "{:?}", r.elapsed);
    let r = rig.get_with("/x", &[("user-agent", "Envoy/HC")]);
    assert_eq!(r.header(HEADER), Some("skipped; reason=health_check"));
    assert!(ms(r.elapsed) < 100.0);
    for status in [400, 404, 409, 429, 501] {
        rig.upstream.set_default(Behavior::status(status));
        let r = rig.get("/x");
        assert_eq!(r.status, status);
        assert_eq!(r.header(HEADER), None, "{status} is not a failure");
        assert!(ms(r.elapsed) < 100.0, "{status} took {:?}", r.elapsed);
    }
    // The same route does pad a real failure.
    rig.upstream.set_default(Behavior::status(500));
    let r = rig.get("/x");
    assert!(r.header(HEADER).unwrap().starts_with("padded"));
    assert!(ms(r.elapsed) >= 195.0);
    rig.wait_stat("api", "skipped_health_check", 2);
    rig.wait_stat("api", "failures", 3);
    assert_eq!(rig.stat("api", "padded"), 1);
    rig.assert_no_vm_failure();
}

#[test]
fn before_min_samples_it_pads_to_the_fallback_or_not_at_all_then_to_what_it_learned() {
    let _serial = timing();
    let rig = rig_with(
        &format!(
            r#"{{ {FAST}, "min_samples": 20,
                 "routes": [{{ "name": "fb", "match": {{ "prefix": "/fb" }}, "fallback_target": "150ms" }}] }}"#
        ),
        RigOptions {
            routes: &[("fb", "/fb"), ("api", "/")],
            ..RigOptions::default()
        },
    );
    rig.upstream.set_behavior("/x", mixed(2, 503));
    rig.upstream.set_behavior("/fb", mixed(2, 503));
    // Every second request fails: 10 successes are too few to trust.
    let mut seen = Vec::new();
    for _ in 0..20 {
        let cold = rig.get("/x");
        let fb = rig.get("/fb");
        seen.push((cold, fb));
    }
    std::thread::sleep(Duration::from_millis(100));
    for (cold, fb) in seen.iter().filter(|(c, _)| c.status == 503) {
        assert_eq!(cold.header(HEADER), Some("skipped; reason=cold"));
        assert!(ms(cold.elapsed) < 40.0);
        let h = fb.header(HEADER).unwrap();
        assert!(h.starts_with("padded") && h.contains("target=150"), "{h}");
        assert!(ms(fb.elapsed) >= 148.0, "{:?}", fb.elapsed);
    }
    // 30 more successes each: now both routes pad to the learned ~50 ms.
    for path in ["/x", "/fb"] {
        rig.upstream.set_behavior(
            path,
            Behavior::status(200).with_latency(Duration::from_millis(SUCCESS_MS)),
        );
    }
    let learned = learn(&rig, "/x", 30);
    learn(&rig, "/fb", 30);
    for path in ["/x", "/fb"] {
        rig.upstream.set_behavior(path, Behavior::status(503));
    }
    for path in ["/x", "/fb"] {
        let r = rig.get(path);
        let h = r.header(HEADER).unwrap().to_string();
        let target = param(&h, "target").unwrap();
        println!(
            "figure: {path} after 40 successes: {h}, client {:.1} ms",
            ms(r.elapsed)
        );
        assert!(h.starts_with("padded"), "{h}");
        assert!((45..=60).contains(&target), "{path}: {h}");
        assert!(ms(r.elapsed) >= 0.9 * median(learned.clone()));
    }
    assert!(rig.wait_stat("api", "skipped_cold", 10) >= 10);
    rig.assert_no_vm_failure();
}

#[test]
fn a_host_that_keeps_failing_keeps_padding_because_the_target_decays_only_with_new_successes() {
    let _serial = timing();
    let rig = rig(&format!(
        r#"{{ {FAST}, "min_samples": 20, "half_life_samples": 50 }}"#
    ));
    rig.upstream
        .set_default(Behavior::status(200).with_latency(Duration::from_millis(SUCCESS_MS)));
    learn(&rig, "/x", 40);
    rig.wait_stat("api", "samples", 40);
    let target_before = rig.stat("api", "target_ms");
    rig.upstream.set_default(Behavior::status(503));
    let started = Instant::now();
    let mut last = Vec::new();
    let mut n = 0;
    // Three seconds of nothing but failures on 4 threads: ~150 sync ticks, hundreds of failures.
    while started.elapsed() < Duration::from_secs(3) {
        last = parallel(4, 8, |_| get(rig.port, "/x").unwrap());
        n += 8;
    }
    let target_after = rig.stat("api", "target_ms");
    println!(
        "figure: after {n} consecutive failures over 3 s (half_life_samples 50): target {target_before} ms -> {target_after} ms; last failures took {:?} ms",
        last.iter().map(|r| ms(r.elapsed).round() as u64).collect::<Vec<_>>()
    );
    assert_eq!(target_after, target_before, "no successes, no decay");
    for r in &last {
        assert!(r.header(HEADER).unwrap().starts_with("padded"));
        assert!(ms(r.elapsed) >= 0.9 * target_before as f64);
    }
    // Successes do move it: 200 samples of 120 ms (four half-lives) pull the median there.
    rig.upstream
        .set_default(Behavior::status(200).with_latency(Duration::from_millis(120)));
    parallel(8, 200, |_| get(rig.port, "/x").unwrap());
    std::thread::sleep(Duration::from_millis(200));
    let moved = rig.stat("api", "target_ms");
    println!("figure: after 200 successes of 120 ms the target is {moved} ms");
    assert!(moved >= 110, "{moved}");
    rig.assert_no_vm_failure();
}

/// Estimated hold windows `[end − hold, end]` of padded responses, shrunk by `slack_ms` on both
/// ends (client-side timing is not the filter's), and the most that overlap at once.
fn max_overlap(windows: &[(f64, f64)], slack_ms: f64) -> usize {
    let mut events: Vec<(f64, i32)> = Vec::new();
    for (start, end) in windows {
        let (s, e) = (start + slack_ms, end - slack_ms);
        if e > s {
            events.push((s, 1));
            events.push((e, -1));
        }
    }
    events.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let (mut now, mut best) = (0i32, 0i32);
    for (_, d) in events {
        now += d;
        best = best.max(now);
    }
    usize::try_from(best).unwrap_or(0)
}

/// One burst of 40 simultaneous failures against a fresh Envoy with 4 workers and a cap of 5.
/// Asserts the cap, and returns on how many distinct workers the holds were taken.
fn in_flight_burst() -> usize {
    let rig = rig_with(
        r#"{ "sync_interval": "20ms", "fallback_target": "800ms", "min_samples": 1000000, "max_padded_in_flight": 5 }"#,
        RigOptions {
            concurrency: 4,
            extra_args: vec!["--component-log-level".into(), "wasm:debug".into()],
            ..RigOptions::default()
        },
    );
    rig.upstream.set_default(Behavior::status(503));

    // A burst: 40 failing requests at once over 4 workers; each padded one is held for 800 ms.
    let barrier = Barrier::new(40);
    let in_flight_during = AtomicU64::new(0);
    let results: Vec<Response> = std::thread::scope(|s| {
        let sampler = s.spawn(|| {
            std::thread::sleep(Duration::from_millis(400));
            in_flight_during.store(rig.global("in_flight"), Ordering::SeqCst);
        });
        let handles: Vec<_> = (0..40)
            .map(|_| {
                s.spawn(|| {
                    barrier.wait();
                    get(rig.port, "/x").unwrap()
                })
            })
            .collect();
        let out = handles.into_iter().map(|h| h.join().unwrap()).collect();
        sampler.join().unwrap();
        out
    });
    let padded = results
        .iter()
        .filter(|r| r.header(HEADER).is_some_and(|h| h.starts_with("padded")))
        .count();
    let capped = results
        .iter()
        .filter(|r| r.header(HEADER) == Some("skipped; reason=in_flight_cap"))
        .count();
    let workers: std::collections::BTreeSet<String> = rig
        .envoy
        .log()
        .lines()
        .filter_map(|l| l.split("(worker ").nth(1).map(|w| w[..16].to_string()))
        .collect();
    println!(
        "figure: 40 simultaneous failures over 4 workers, max_padded_in_flight 5: {padded} padded, {capped} passed unpadded; in_flight gauge during the hold {}; holds taken on {} distinct workers",
        in_flight_during.load(Ordering::SeqCst),
        workers.len()
    );
    assert_eq!(padded, 5);
    assert_eq!(capped, 35);
    assert_eq!(in_flight_during.load(Ordering::SeqCst), 5);
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(rig.global("in_flight"), 0, "every slot came back");
    rig.assert_no_vm_failure();
    workers.len()
}

#[test]
fn the_in_flight_cap_holds_across_all_workers_under_concurrent_load() {
    let _serial = timing();
    // The kernel picks the worker for each connection; a burst whose holds all land on one
    // worker proves the cap but not that it is shared. Every burst must hold the cap exactly;
    // at least one must spread its holds over two or more workers.
    let mut spread = 0;
    for _ in 0..4 {
        spread = in_flight_burst();
        if spread >= 2 {
            break;
        }
    }
    assert!(
        spread >= 2,
        "in 4 bursts the holds never spread over two workers"
    );
}

#[test]
fn the_in_flight_cap_holds_under_sustained_concurrent_load() {
    let _serial = timing();
    let rig = rig_with(
        r#"{ "sync_interval": "20ms", "fallback_target": "200ms", "min_samples": 1000000, "max_padded_in_flight": 5 }"#,
        RigOptions {
            concurrency: 4,
            ..RigOptions::default()
        },
    );
    rig.upstream.set_default(Behavior::status(503));
    // 16 threads for 2 s, 200 ms holds. Sample the gauge and reconstruct every hold's window from
    // the client side: never more than 5 at once.
    let t0 = Instant::now();
    let stop = AtomicBool::new(false);
    let max_gauge = AtomicU64::new(0);
    let windows = Mutex::new(Vec::new());
    let (mut total, mut unpadded) = (0u64, 0u64);
    std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(Ordering::SeqCst) {
                max_gauge.fetch_max(rig.global("in_flight"), Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        let handles: Vec<_> = (0..16)
            .map(|_| {
                s.spawn(|| {
                    let (mut n, mut u) = (0u64, 0u64);
                    while t0.elapsed() < Duration::from_secs(2) {
                        let r = get(rig.port, "/x").unwrap();
                        let end = ms(t0.elapsed());
                        n += 1;
                        match r.header(HEADER).and_then(|h| param(h, "ms")) {
                            Some(hold) => windows.lock().unwrap().push((end - hold as f64, end)),
                            None => u += 1,
                        }
                    }
                    (n, u)
                })
            })
            .collect();
        let counts: Vec<(u64, u64)> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        stop.store(true, Ordering::SeqCst);
        for (n, u) in counts {
            total += n;
            unpadded += u;
        }
    });
    let windows = windows.into_inner().unwrap();
    // Client-side windows are shrunk by 15 ms at each end: a loaded client reads late.
    let overlap = max_overlap(&windows, 15.0);
    println!(
        "figure: 16 threads for 2 s, 200 ms holds, cap 5 on 4 workers: {} padded, {unpadded} of {total} passed unpadded; most holds at once: {overlap} (client-side), in_flight gauge max {}",
        windows.len(),
        max_gauge.load(Ordering::SeqCst)
    );
    assert!(overlap <= 5, "{overlap} holds overlapped");
    assert!(max_gauge.load(Ordering::SeqCst) <= 5);
    assert!(windows.len() >= 30, "the cap still lets padding happen");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(rig.global("in_flight"), 0, "every slot came back");
    rig.assert_no_vm_failure();
}

#[test]
fn a_client_that_goes_away_while_its_response_is_held_gives_the_slot_back() {
    let _serial = timing();
    let rig = rig(
        r#"{ "sync_interval": "20ms", "fallback_target": "1s", "min_samples": 1000000, "max_padded_in_flight": 1 }"#,
    );
    rig.upstream.set_default(Behavior::status(503));
    let mut s = TcpStream::connect(("127.0.0.1", rig.port)).unwrap();
    s.write_all(b"GET /gone HTTP/1.1\r\nhost: a\r\n\r\n")
        .unwrap();
    rig.envoy
        .wait_stat(
            "wasmcustom.failure_padding.in_flight",
            1,
            Duration::from_secs(2),
        )
        .unwrap();
    // The only slot is taken: another failure passes unpadded.
    let r = rig.get("/x");
    assert_eq!(r.header(HEADER), Some("skipped; reason=in_flight_cap"));
    let gone_at = Instant::now();
    drop(s);
    let deadline = Instant::now() + Duration::from_secs(2);
    while rig.global("in_flight") != 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let freed_after = gone_at.elapsed();
    assert_eq!(rig.global("in_flight"), 0);
    println!("figure: a held stream whose client went away gave its slot back {:.1} ms later (its hold had ~800 ms left)", ms(freed_after));
    assert!(freed_after < Duration::from_millis(500));
    // The slot is free again long before the abandoned hold would have ended.
    let r = rig.get("/x");
    assert!(r.header(HEADER).unwrap().starts_with("padded"));
    rig.wait_stat("api", "abandoned", 1);
    assert_eq!(rig.global("in_flight"), 0);
    rig.assert_no_vm_failure();
}

#[test]
fn dry_run_counts_and_explains_the_padding_it_would_add_but_never_holds() {
    let _serial = timing();
    let rig = rig(&format!(
        r#"{{ {FAST}, "mode": "dry_run", "fallback_target": "300ms", "min_samples": 1000000 }}"#
    ));
    rig.upstream.set_default(Behavior::status(503));
    for _ in 0..10 {
        let r = rig.get("/x");
        assert!(ms(r.elapsed) < 100.0, "{:?}", r.elapsed);
        let h = r.header(HEADER).unwrap();
        assert!(h.starts_with("dry_run; would_pad_ms="), "{h}");
        assert!(param(h, "would_pad_ms").unwrap() >= 290);
    }
    rig.wait_stat("api", "dry_run_would_pad", 10);
    assert!(rig.stat("api", "dry_run_would_pad_ms") >= 2_900);
    assert_eq!(rig.stat("api", "padded"), 0);
    assert_eq!(rig.global("in_flight"), 0);
    rig.assert_no_vm_failure();
}

#[test]
fn routes_learn_and_pad_separately_and_keys_are_bounded() {
    let _serial = timing();
    let rig = rig_with(
        &format!(
            r#"{{ {FAST}, "min_samples": 10, "max_keys": 2,
                 "routes": [
                   {{ "name": "double", "match": {{ "prefix": "/double" }}, "factor": 2.0 }},
                   {{ "name": "p90", "match": {{ "prefix": "/p90" }}, "percentile": 90 }},
                   {{ "name": "third", "match": {{ "prefix": "/third" }} }}
                 ] }}"#
        ),
        RigOptions {
            routes: &[("all", "/")],
            ..RigOptions::default()
        },
    );
    // /double: 30 ms successes; /p90: 9 in 10 take 20 ms, 1 in 10 takes 200 ms.
    rig.upstream.set_behavior(
        "/double",
        Behavior::status(200).with_latency(Duration::from_millis(30)),
    );
    rig.upstream.set_behavior(
        "/p90",
        Behavior::status(200)
            .with_latency(Duration::from_millis(20))
            .failing_every_nth(10)
            .on_failure(Behavior::status(200).with_latency(Duration::from_millis(200))),
    );
    learn(&rig, "/double", 20);
    learn(&rig, "/p90", 40);
    rig.upstream.set_behavior("/double", Behavior::status(503));
    rig.upstream.set_behavior("/p90", Behavior::status(503));
    rig.upstream.set_behavior("/third", Behavior::status(503));
    let d = rig.get("/double");
    let p = rig.get("/p90");
    let t = rig.get("/third");
    let (dh, ph) = (d.header(HEADER).unwrap(), p.header(HEADER).unwrap());
    println!(
        "figure: per-route targets: /double (30 ms × 2) {dh} in {:.0} ms; /p90 (p90 of 20/200 ms) {ph} in {:.0} ms",
        ms(d.elapsed),
        ms(p.elapsed)
    );
    assert!((55..=70).contains(&param(dh, "target").unwrap()), "{dh}");
    assert!(param(ph, "target").unwrap() >= 100, "{ph}");
    assert_eq!(
        t.header(HEADER),
        None,
        "the third key does not fit in max_keys"
    );
    assert!(ms(t.elapsed) < 40.0);
    rig.wait_stat("double", "padded", 1);
    rig.wait_stat("p90", "padded", 1);
    assert!(rig.stat("double", "target_ms") >= 55);
    assert!(rig.stat("p90", "target_ms") >= 100);
    rig.envoy
        .wait_stat(
            "wasmcustom.failure_padding.keys_overflow",
            1,
            Duration::from_secs(5),
        )
        .unwrap();
    rig.assert_no_vm_failure();
}

#[test]
fn grpc_failures_and_envoys_own_local_failures_are_padded_too() {
    let _serial = timing();
    let rig = rig(&format!(
        r#"{{ {FAST}, "fallback_target": "120ms", "min_samples": 1000000 }}"#
    ));
    // A trailers-only gRPC failure: HTTP 200 with grpc-status UNAVAILABLE in the headers.
    rig.upstream.set_default(
        Behavior::status(200)
            .with_header("content-type", "application/grpc")
            .with_header("grpc-status", "14"),
    );
    let r = rig.get("/svc/Method");
    assert!(
        r.header(HEADER).unwrap().starts_with("padded"),
        "{:?}",
        r.headers
    );
    assert!(ms(r.elapsed) >= 118.0);
    // NOT_FOUND is the caller's problem, not this host's.
    rig.upstream.set_default(
        Behavior::status(200)
            .with_header("content-type", "application/grpc")
            .with_header("grpc-status", "5"),
    );
    let r = rig.get("/svc/Method");
    assert_eq!(r.header(HEADER), None);
    // The application is down: Envoy's own 503 (connect failure) is padded like any failure.
    rig.upstream.stop();
    let r = rig.get("/x");
    assert_eq!(r.status, 503);
    let h = r.header(HEADER).unwrap();
    println!(
        "figure: connect failure (application down): {h}, client {:.1} ms",
        ms(r.elapsed)
    );
    assert!(h.starts_with("padded"), "{h}");
    assert!(ms(r.elapsed) >= 118.0);
    rig.assert_no_vm_failure();
}

/// Raw request bytes, for header values no well-behaved client sends.
fn raw_request(port: u16, head: &[u8]) -> Vec<u8> {
    harness::client::raw_request(port, head).unwrap()
}

#[test]
fn hostile_input_never_traps_the_vm() {
    let _serial = timing();
    let rig = rig(&format!(
        r#"{{ {FAST}, "fallback_target": "30ms", "min_samples": 1000000, "deadline_header": "x-deadline-ms" }}"#
    ));
    rig.upstream.set_default(Behavior::status(503));
    let huge = "9".repeat(50_000);
    for (name, value) in [
        ("grpc-timeout", "99999999999H"),
        ("grpc-timeout", "1x"),
        ("grpc-timeout", ""),
        ("x-envoy-expected-rq-timeout-ms", "18446744073709551616"),
        ("x-envoy-expected-rq-timeout-ms", "-1"),
        ("x-deadline-ms", huge.as_str()),
        ("user-agent", huge.as_str()),
    ] {
        let r = rig.get_with("/x", &[(name, value)]);
        assert_eq!(r.status, 503, "{name}");
    }
    for head in [
        &b"GET /x HTTP/1.1\r\nhost: a\r\nconnection: close\r\ngrpc-timeout: \xff\xfe1m\r\n\r\n"[..],
        &b"GET /x HTTP/1.1\r\nhost: a\r\nconnection: close\r\nx-deadline-ms: \x80\x81\r\nuser-agent: \xffHC\r\n\r\n"[..],
    ] {
        assert!(String::from_utf8_lossy(&raw_request(rig.port, head)).starts_with("HTTP/1.1 503"));
    }
    // Garbage statuses from the upstream.
    rig.upstream.set_default(
        Behavior::status(200)
            .with_header("grpc-status", "999999999999")
            .with_header("content-type", "application/grpc"),
    );
    for _ in 0..3 {
        rig.get("/x");
    }
    rig.upstream.set_default(Behavior::status(599));
    let r = rig.get("/x");
    assert!(r.header(HEADER).unwrap().starts_with("padded"));
    rig.upstream.set_default(Behavior::status(200));
    assert_eq!(rig.get("/y").status, 200);
    rig.assert_no_vm_failure();
}

#[test]
fn invalid_config_makes_envoy_refuse_the_filter_with_the_field_named() {
    let _serial = timing();
    let upstream = Upstream::start().unwrap();
    for (json, expected) in [
        (
            r#"{"routes": [{"match": {"prefix": "/a"}, "factor": 20}]}"#,
            "failure_padding: invalid configuration: routes[0].factor: must be between 0.1 and 10, got 20",
        ),
        (
            r#"{"max_padded_in_flight": 0}"#,
            "failure_padding: invalid configuration: max_padded_in_flight: must be between 1 and 100000, got 0",
        ),
        (
            r#"{"max_padding": "1 second"}"#,
            "failure_padding: invalid configuration: max_padding: ",
        ),
        (
            r#"{"health_checks": [{}]}"#,
            "failure_padding: invalid configuration: health_checks[0]: must name at least one of",
        ),
        (r#"{"padding": 1}"#, "failure_padding: invalid configuration: "),
    ] {
        let config = ProxyConfig::new(free_port(), free_port())
            .with_http_filters(&padding_filter("failure_padding", json))
            .route(RouteSpec::new("default", "/", "upstream"))
            .cluster(ClusterSpec::new("upstream", &[upstream.port()]))
            .render();
        let log = harness::envoy::start_expect_failure(&config, &EnvoyOptions::default())
            .expect("envoy refuses the config");
        let line = log
            .lines()
            .find(|l| l.contains("failure_padding: invalid configuration"))
            .unwrap_or_else(|| panic!("no config error line for {json}:\n{log}"));
        assert!(line.contains(expected), "{line}");
        println!("figure: Envoy refused {json} with: {}", line.split("wasm log").last().unwrap_or(line).trim());
    }
}

#[test]
fn the_shipped_envoy_config_validates_runs_and_reads_well_in_prometheus() {
    let _serial = timing();
    let upstream = Upstream::start().unwrap();
    let (envoy, listener) =
        harness::shipped::start("failure-padding.yaml", upstream.port()).unwrap();
    upstream.set_behavior("/flaky", Behavior::status(503));
    upstream.set_behavior("/healthz", Behavior::status(503));
    // The flaky route has no successes yet: its fallback (100 ms, ±10% jitter) applies.
    let r = get(listener, "/flaky").unwrap();
    let h = r.header(HEADER).unwrap().to_string();
    assert!(h.starts_with("padded"), "{h}");
    assert!(ms(r.elapsed) >= 89.0, "{:?}", r.elapsed);
    let r = get(listener, "/healthz").unwrap();
    assert_eq!(r.header(HEADER), Some("skipped; reason=health_check"));
    // The api route learns, then pads.
    upstream.set_behavior(
        "/api",
        Behavior::status(200).with_latency(Duration::from_millis(30)),
    );
    for _ in 0..25 {
        assert_eq!(get(listener, "/api/x").unwrap().status, 200);
    }
    std::thread::sleep(Duration::from_millis(300));
    upstream.set_behavior("/api", Behavior::status(503));
    let r = get(listener, "/api/x").unwrap();
    assert!(r.header(HEADER).unwrap().starts_with("padded"));
    envoy
        .wait_stat(
            "wasmcustom.failure_padding.api.padded",
            1,
            Duration::from_secs(5),
        )
        .unwrap();
    let prom = envoy.prometheus();
    let lines: Vec<&str> = prom
        .lines()
        .filter(|l| l.contains("failure_padding"))
        .collect();
    println!(
        "figure: prometheus sample:\n{}",
        lines
            .iter()
            .filter(|l| !l.starts_with('#') && !l.ends_with(" 0"))
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("failure_padding_padded{padding_key=\"api\"} 1")),
        "{lines:#?}"
    );
    assert!(lines
        .iter()
        .any(|l| l.starts_with("failure_padding_target_ms{padding_key=\"api\"}")));
    assert!(lines
        .iter()
        .any(|l| l.starts_with("failure_padding_in_flight{}")
            || l.starts_with("failure_padding_in_flight ")));
    assert_no_vm_failure(&envoy);
}

// ---------------------------------------------------------------------------------------------
// The black hole: least-request balancing over four per-host sidecars, one host failing fast.
// ---------------------------------------------------------------------------------------------
//
// The scenario lives in the failure lab (`harness::lab::blackhole`, `cargo pack lab --scenario
// blackhole`): one Envoy with an edge listener balancing by least request over four sidecar
// listeners, each carrying the filter (or not) in front of its own host. This runs its quick
// version and asserts the lab's criteria plus what outlier_detection does on four hosts.

/// The value of figure `name` of `variant` in the lab report.
fn lab_figure<'a>(r: &'a ScenarioReport, variant: &str, name: &str) -> &'a str {
    let v = r
        .variants
        .iter()
        .find(|v| v.name == variant)
        .unwrap_or_else(|| {
            let names: Vec<&str> = r.variants.iter().map(|v| v.name.as_str()).collect();
            panic!("no variant {variant:?} in {names:?}")
        });
    v.figures
        .iter()
        .find(|f| f.name == name)
        .map(|f| f.value.as_str())
        .unwrap_or_else(|| panic!("no figure {name:?} for {variant:?}"))
}

/// The numbers in a figure such as `"0 (412)"` or `"12.5%"`, in order.
fn numbers(figure: &str) -> Vec<f64> {
    figure
        .split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .filter_map(|s| s.parse().ok())
        .collect()
}

#[test]
fn least_request_balancing_stops_black_holing_into_a_fast_failing_host() {
    let _serial = timing();
    let mut progress = Progress::new(false);
    let r = harness::lab::run_scenario("blackhole", Scale::Quick, &mut progress)
        .expect("the black-hole scenario runs");
    for line in report::terminal_table(std::slice::from_ref(&r))
        .lines()
        .filter(|l| !l.trim().is_empty())
    {
        println!("figure: {line}");
    }
    for c in &r.criteria {
        assert!(c.passed, "missed: {}", c.description);
    }
    const DEFAULTS: &str = "outlier_detection defaults";
    const TUNED: &str = "outlier_detection max 50%";
    const BOTH: &str = "padding + outlier max 50%";
    let ejections = |variant: &str| numbers(lab_figure(&r, variant, "ejections (refused)"));
    let defaults = ejections(DEFAULTS);
    assert_eq!(defaults[0], 0.0, "10% of 4 hosts is no host at all");
    assert!(
        defaults[1] >= 1.0,
        "Envoy refuses the ejections it would make: {defaults:?}"
    );
    assert!(ejections(TUNED)[0] >= 1.0, "{:?}", ejections(TUNED));
    assert!(ejections(BOTH)[0] >= 1.0, "{:?}", ejections(BOTH));
    // Padding does not get in the way of outlier_detection.
    let errors = |variant: &str| numbers(lab_figure(&r, variant, "client errors"))[0];
    assert!(
        errors(BOTH) <= errors(TUNED) + 2.0,
        "{} vs {}",
        errors(BOTH),
        errors(TUNED)
    );
    // The failing host's sidecar did the padding.
    for variant in ["padding filter (pack)", BOTH] {
        let padded = numbers(lab_figure(&r, variant, "padded by bad host"));
        assert!(
            padded.first().is_some_and(|n| *n > 0.0),
            "{variant}: {padded:?}"
        );
    }
}
