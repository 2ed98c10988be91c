//! Scenario: a dependency hangs for a while, then recovers — and the service that calls it has
//! other, healthy work to do.
//!
//! The caller is an application with a bounded worker pool ([`super::app::CallerApp`]): eight
//! threads, each serving one request at a time. One route calls the dependency through the
//! caller's sidecar (the Envoy under test); the other does local work. Without protection every
//! call into the hang holds a worker for the route timeout, the workers run out, and the healthy
//! route queues behind them: the outage spreads to everything the caller does. Envoy's
//! `outlier_detection` ejects the host after consecutive errors, on its own clock, and brings it
//! back blind. Envoy's `circuit_breakers` cap the requests in flight to the cluster, so only that
//! many workers hang. The pack's breaker opens on consecutive failures or the error rate, answers
//! in microseconds while open, and with `active_probe` learns that the dependency is back from a
//! request of its own, without sending a user's request into a hang.

use std::time::Duration;

use super::app::CallerApp;
use super::load::{self, LoadSpec, Sample};
use super::report::{Criterion, Figure, ScenarioReport, Variant};
use super::series::{self, between, Summary};
use super::svg::Chart;
use super::{Progress, Scale};
use crate::envoy::{free_port, Envoy, EnvoyOptions};
use crate::upstream::{Behavior, Upstream};
use crate::{ClusterSpec, ProxyConfig, RouteSpec};

const HEALTHY_MS: u64 = 20;
const ROUTE_TIMEOUT_MS: u64 = 1_000;
/// The caller's worker threads.
const APP_WORKERS: usize = 8;
/// The caller's local work per request on its healthy route.
const LOCAL_MS: u64 = 5;
/// How long a client waits for the caller before it gives up (a failure).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);
/// The active probe's path on the dependency (not a user's request).
const PROBE_PATH: &str = "/healthz";
/// The healthy route is judged once every protection had time to act: the first seconds of an
/// outage are lost by every variant alike (the first calls into the hang wait out their timeout).
const SETTLE_MS: u64 = 2_000;

struct Timeline {
    outage_ms: u64,
    recovery_ms: u64,
    total_ms: u64,
}

fn timeline(scale: Scale) -> Timeline {
    match scale {
        Scale::Quick => Timeline {
            outage_ms: 2_000,
            recovery_ms: 7_000,
            total_ms: 10_000,
        },
        Scale::Full => Timeline {
            outage_ms: 5_000,
            recovery_ms: 20_000,
            total_ms: 30_000,
        },
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Protection {
    None,
    OutlierDetection,
    MaxRequests,
    Breaker,
}

impl Protection {
    fn name(self) -> &'static str {
        match self {
            Protection::None => "no protection",
            Protection::OutlierDetection => "Envoy outlier_detection",
            Protection::MaxRequests => "Envoy circuit_breakers (max 4 requests)",
            Protection::Breaker => "circuit breaker + active_probe (pack)",
        }
    }
}

/// Callers blocked on a hang produce few failures per second next to many earlier successes, so
/// a rate over a long window reacts late: pair the rate with `consecutive_failures` (the signal
/// Envoy's `consecutive_5xx` uses too) and keep the window short. While open, the active probe
/// asks the dependency's health path every 200 ms, giving up on an answer after 200 ms (a probe stuck in the hang must not delay the next).
const BREAKER_JSON: &str = r#"{"sync_interval": "100ms", "window": "2s", "minimum_requests": 10,
  "failure_rate_threshold": 50, "consecutive_failures": 5,
  "open_duration": "1s", "open_duration_multiplier": 2, "max_open_duration": "4s", "half_open_probes": 3,
  "active_probe": {"cluster": "dependency", "path": "/healthz", "interval": "200ms", "timeout": "200ms"}}"#;

fn config(p: Protection, listener: u16, upstream: u16) -> Result<String, String> {
    let mut cluster = ClusterSpec::new("dependency", &[upstream]);
    let mut filters = String::new();
    match p {
        Protection::None => {}
        Protection::OutlierDetection => {
            // Envoy's answer, tuned in its favour: eject the only host after 5 consecutive
            // errors, allow ejecting 100%, and no panic routing (so ejection means fast 503s).
            cluster = cluster.with_extra_yaml(
                "outlier_detection:\n  consecutive_5xx: 5\n  interval: 1s\n  base_ejection_time: 2s\n  max_ejection_percent: 100\ncommon_lb_config:\n  healthy_panic_threshold: { value: 0 }\n",
            );
        }
        Protection::MaxRequests => {
            // Envoy's other answer: at most 4 requests (and connections) in flight to the
            // cluster, the rest refused at once with 503 (overflow), so at most 4 workers hang.
            cluster = cluster.with_extra_yaml(
                "circuit_breakers:\n  thresholds:\n  - max_connections: 4\n    max_pending_requests: 1\n    max_requests: 4\n",
            );
        }
        Protection::Breaker => {
            filters = super::pack_stage_yaml(
                "circuit_breaker",
                "lab_cb",
                "circuit_breaker",
                BREAKER_JSON,
            )?;
        }
    }
    Ok(ProxyConfig::new(listener, free_port())
        .with_http_filters(&filters)
        .route(
            RouteSpec::new("dependency", "/", "dependency")
                .with_timeout(Duration::from_millis(ROUTE_TIMEOUT_MS)),
        )
        .cluster(cluster)
        .render())
}

struct Run {
    /// The caller's route into the dependency.
    samples: Vec<Sample>,
    /// The caller's healthy route.
    local: Vec<Sample>,
    /// When each user request reached the dependency (ms since the load began).
    upstream_times_ms: Vec<u64>,
    /// Active probes that reached the dependency during the outage.
    probes_in_outage: usize,
}

fn run_variant(p: Protection, scale: Scale, progress: &mut Progress) -> Result<Run, String> {
    let t = timeline(scale);
    let upstream = Upstream::start_named("dependency")?;
    let healthy = Behavior::status(200).with_latency(Duration::from_millis(HEALTHY_MS));
    upstream.set_default(healthy.clone());
    let listener = free_port();
    let envoy = Envoy::start(
        &config(p, listener, upstream.port())?,
        &EnvoyOptions::default(),
    )?;
    envoy.wait_listener(listener)?;
    let app = CallerApp::start(APP_WORKERS, listener, LOCAL_MS)?;
    let duration = Duration::from_millis(t.total_ms);
    // More callers of the dependency route than the application has workers, as in a fan-in.
    let mut dep = LoadSpec::new(app.port(), "/dep/work", 12, 10.0, duration);
    dep.timeout = CLIENT_TIMEOUT;
    let mut local = LoadSpec::new(app.port(), "/local", 4, 20.0, duration);
    local.timeout = CLIENT_TIMEOUT;
    let started = std::time::Instant::now();
    let dep_thread = std::thread::spawn(move || load::run(&dep, |_| {}));
    let mut phase = 0;
    let local_samples = load::run(&local, |elapsed| {
        let ms = elapsed.as_millis() as u64;
        if phase == 0 && ms >= t.outage_ms {
            upstream.set_default(Behavior::hang());
            phase = 1;
        } else if phase == 1 && ms >= t.recovery_ms {
            upstream.set_default(healthy.clone());
            phase = 2;
        }
        progress.update(p.name(), elapsed.as_secs_f64(), t.total_ms as f64 / 1000.0);
    });
    let samples = dep_thread
        .join()
        .map_err(|_| "the dependency route's load thread panicked".to_owned())?;
    let log = upstream.log();
    let at = |r: &crate::upstream::RequestRecord| {
        r.at.saturating_duration_since(started).as_millis() as u64
    };
    let upstream_times_ms = log
        .iter()
        .filter(|r| !r.path.starts_with(PROBE_PATH))
        .map(at)
        .collect();
    let probes_in_outage = log
        .iter()
        .filter(|r| r.path.starts_with(PROBE_PATH))
        .filter(|r| (t.outage_ms..t.recovery_ms).contains(&at(r)))
        .count();
    drop(app);
    drop(envoy);
    Ok(Run {
        samples,
        local: local_samples,
        upstream_times_ms,
        probes_in_outage,
    })
}

fn first_after(samples: &[Sample], from_ms: u64, pred: impl Fn(&Sample) -> bool) -> Option<u64> {
    samples
        .iter()
        .filter(|s| s.at_ms >= from_ms)
        .find(|s| pred(s))
        .map(|s| s.at_ms - from_ms)
}

/// Runs the scenario with every variant.
pub fn run(scale: Scale, progress: &mut Progress) -> Result<ScenarioReport, String> {
    let t = timeline(scale);
    let variants = [
        Protection::None,
        Protection::OutlierDetection,
        Protection::MaxRequests,
        Protection::Breaker,
    ];
    let mut rows = Vec::new();
    let mut success_series = Vec::new();
    let mut local_latency_series = Vec::new();
    let mut upstream_series = Vec::new();
    // Per variant: requests into the hang, time to recover, goodput, healthy route's success
    // in the outage and its p99 before and once settled.
    let mut figures: Vec<(usize, Option<u64>, f64, f64, f64, f64)> = Vec::new();
    for p in variants {
        progress.start("cascading dependency outage", p.name());
        let run = run_variant(p, scale, progress)?;
        progress.finish();
        let s = &run.samples;
        let wasted = run
            .upstream_times_ms
            .iter()
            .filter(|at| **at >= t.outage_ms && **at < t.recovery_ms)
            .count();
        let protect = first_after(s, t.outage_ms, |x| x.status >= 500 && x.latency_ms < 100.0);
        let recover = first_after(s, t.recovery_ms, |x| x.status == 200);
        // The caller's goodput: what it got done on both routes (a caller stuck on its
        // dependency also falls behind on its healthy work).
        let seconds = t.total_ms as f64 / 1000.0;
        let dep_goodput = Summary::of(s.iter()).ok as f64 / seconds;
        let goodput = dep_goodput + Summary::of(run.local.iter()).ok as f64 / seconds;
        let local_before = Summary::of(between(&run.local, 500, t.outage_ms));
        let local_outage = Summary::of(between(&run.local, t.outage_ms, t.recovery_ms));
        let local_settled =
            Summary::of(between(&run.local, t.outage_ms + SETTLE_MS, t.recovery_ms));
        let local_success = 100.0 * (1.0 - local_outage.error_rate());
        figures.push((
            wasted,
            recover,
            goodput,
            local_success,
            local_before.p99_ms,
            local_settled.p99_ms,
        ));
        rows.push(Variant {
            name: p.name().to_owned(),
            figures: vec![
                Figure {
                    name: "healthy route: ok in outage".into(),
                    value: format!("{local_success:.1}%"),
                },
                Figure {
                    name: "healthy route: p99 before / in outage".into(),
                    value: format!(
                        "{:.0} / {:.0} ms",
                        local_before.p99_ms, local_settled.p99_ms
                    ),
                },
                Figure {
                    name: "time to protect".into(),
                    value: protect.map_or("never".into(), |ms| format!("{ms} ms")),
                },
                Figure {
                    name: "requests into the hang".into(),
                    value: if p == Protection::Breaker {
                        format!("{wasted} (+{} active probes)", run.probes_in_outage)
                    } else {
                        wasted.to_string()
                    },
                },
                Figure {
                    name: "time to recover".into(),
                    value: recover.map_or("never".into(), |ms| format!("{ms} ms")),
                },
                Figure {
                    name: "goodput: all / dependency route".into(),
                    value: format!("{goodput:.0} / {dep_goodput:.0} req/s"),
                },
            ],
        });
        success_series.push(series::bucketed(
            p.name(),
            &run.local,
            t.total_ms,
            500,
            series::success_percent,
        ));
        local_latency_series.push(series::bucketed(
            p.name(),
            &run.local,
            t.total_ms,
            500,
            |b| series::latency_p(b, 99.0),
        ));
        let mut up = Vec::new();
        let bucket = 500u64;
        for i in 0..t.total_ms.div_ceil(bucket) {
            let n = run
                .upstream_times_ms
                .iter()
                .filter(|at| **at / bucket == i)
                .count();
            up.push((
                (i * bucket) as f64 / 1000.0,
                n as f64 * 1000.0 / bucket as f64,
            ));
        }
        upstream_series.push(series::Series {
            name: p.name().to_owned(),
            points: up,
        });
    }
    let outage_span = [(
        t.outage_ms as f64 / 1000.0,
        t.recovery_ms as f64 / 1000.0,
        "dependency hangs",
    )];
    let charts = vec![
        Chart {
            title: "The caller's healthy route: p99 latency (ms)",
            y_label: "ms",
            series: &local_latency_series,
            spans: &outage_span,
            y_max: None,
        }
        .render(),
        Chart {
            title: "The caller's healthy route: successful requests (%)",
            y_label: "% ok",
            series: &success_series,
            spans: &outage_span,
            y_max: Some(100.0),
        }
        .render(),
        Chart {
            title: "User requests reaching the dependency (req/s)",
            y_label: "req/s",
            series: &upstream_series,
            spans: &outage_span,
            y_max: None,
        }
        .render(),
    ];
    let get = |i: usize| {
        figures
            .get(i)
            .copied()
            .unwrap_or((usize::MAX, None, 0.0, 0.0, 0.0, f64::MAX))
    };
    let none = get(0);
    let pack = get(3);
    let within_2x = |f: (usize, Option<u64>, f64, f64, f64, f64)| f.5 <= 2.0 * f.4.max(1.0);
    let criteria = vec![
        Criterion {
            description: format!(
                "with the pack the healthy route keeps ≥ 99% success ({:.1}%) and its p99 within 2× of before the outage ({:.0} vs {:.0} ms)",
                pack.3, pack.5, pack.4
            ),
            passed: pack.3 >= 99.0 && within_2x(pack),
        },
        Criterion {
            description: format!(
                "without protection the healthy route collapses ({:.1}% ok, p99 {:.0} ms against {:.0} before)",
                none.3, none.5, none.4
            ),
            passed: none.3 < 99.0 || !within_2x(none),
        },
        Criterion {
            description: format!(
                "the pack lets traffic back within 1 s of recovery ({})",
                pack.1.map_or("never".into(), |ms| format!("{ms} ms"))
            ),
            passed: pack.1.is_some_and(|ms| ms <= 1_000),
        },
        Criterion {
            // The callers already waiting when the hang starts cannot be saved by anyone; after
            // that only the breaker's probes should reach the dependency.
            description: format!(
                "the pack sends at most 28 user requests into the hang ({}; no protection: {})",
                pack.0, none.0
            ),
            passed: pack.0 <= 28,
        },
        Criterion {
            description: format!(
                "the caller's goodput with the pack (both routes) is at least no protection's ({:.0} vs {:.0} req/s)",
                pack.2, none.2
            ),
            passed: pack.2 >= none.2,
        },
    ];
    Ok(ScenarioReport {
        name: "Cascading dependency outage".into(),
        story: format!(
            "A caller with {APP_WORKERS} worker threads serves two routes: one calls a dependency through its sidecar (12 clients at 10 req/s), one does {LOCAL_MS} ms of local work (4 clients at 20 req/s); clients give up after {} s. The dependency answers in {HEALTHY_MS} ms, hangs from {:.0} s to {:.0} s (route timeout {ROUTE_TIMEOUT_MS} ms), then recovers. The healthy route's p99 in the outage is taken from {} s after it starts, when every protection had time to act. Compared: no protection, Envoy outlier_detection (consecutive_5xx 5, ejection 2 s, no panic routing), Envoy circuit_breakers (4 requests in flight), the pack's breaker (5 consecutive failures or 50% over ≥10 requests in 2 s, open 1 s growing to 4 s, 3 probes, an active probe of /healthz every 200 ms while open, 200 ms timeout).",
            CLIENT_TIMEOUT.as_secs(),
            t.outage_ms as f64 / 1000.0,
            t.recovery_ms as f64 / 1000.0,
            SETTLE_MS / 1000,
        ),
        variants: rows,
        criteria,
        charts,
    })
}
