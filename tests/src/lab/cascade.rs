//! Scenario: a dependency hangs for a while, then recovers.
//!
//! Without protection every caller waits out its timeout on the dead dependency; callers' threads
//! pile up and the outage spreads. Envoy's `outlier_detection` ejects the host after consecutive
//! errors, but on its own clock, and brings it back blind after `base_ejection_time`, so it keeps
//! feeding requests into the hang. The circuit breaker opens on the error rate, answers in
//! microseconds while open, and probes with a bounded number of requests.

use std::time::Duration;

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

struct Timeline {
    outage_ms: u64,
    recovery_ms: u64,
    total_ms: u64,
}

fn timeline(scale: Scale) -> Timeline {
    match scale {
        Scale::Quick => Timeline {
            outage_ms: 2_000,
            recovery_ms: 6_000,
            total_ms: 9_000,
        },
        Scale::Full => Timeline {
            outage_ms: 5_000,
            recovery_ms: 20_000,
            total_ms: 30_000,
        },
    }
}

#[derive(Clone, Copy)]
enum Protection {
    None,
    OutlierDetection,
    Breaker,
}

impl Protection {
    fn name(self) -> &'static str {
        match self {
            Protection::None => "no protection",
            Protection::OutlierDetection => "Envoy outlier_detection",
            Protection::Breaker => "circuit breaker (pack)",
        }
    }
}

/// Callers blocked on a hang produce few failures per second next to many earlier successes, so
/// a rate over a long window reacts late: pair the rate with `consecutive_failures` (the signal
/// Envoy's `consecutive_5xx` uses too) and keep the window short.
const BREAKER_JSON: &str = r#"{"sync_interval": "100ms", "window": "2s", "minimum_requests": 10,
  "failure_rate_threshold": 50, "consecutive_failures": 5,
  "open_duration": "1s", "open_duration_multiplier": 2, "max_open_duration": "4s", "half_open_probes": 3}"#;

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
    samples: Vec<Sample>,
    upstream_times_ms: Vec<u64>,
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
    let spec = LoadSpec::new(
        listener,
        "/work",
        8,
        20.0,
        Duration::from_millis(t.total_ms),
    );
    let started = std::time::Instant::now();
    let mut phase = 0;
    let samples = load::run(&spec, |elapsed| {
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
    let upstream_times_ms = upstream
        .log()
        .iter()
        .map(|r| r.at.saturating_duration_since(started).as_millis() as u64)
        .collect();
    drop(envoy);
    Ok(Run {
        samples,
        upstream_times_ms,
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
        Protection::Breaker,
    ];
    let mut rows = Vec::new();
    let mut success_series = Vec::new();
    let mut latency_series = Vec::new();
    let mut upstream_series = Vec::new();
    let mut wasted_by = Vec::new();
    let mut outage_p50 = Vec::new();
    let mut recover_by = Vec::new();
    for p in variants {
        progress.start("cascading dependency outage", p.name());
        let run = run_variant(p, scale, progress)?;
        progress.finish();
        let s = &run.samples;
        let outage = Summary::of(between(s, t.outage_ms, t.recovery_ms));
        let wasted = run
            .upstream_times_ms
            .iter()
            .filter(|at| **at >= t.outage_ms && **at < t.recovery_ms)
            .count();
        let protect = first_after(s, t.outage_ms, |x| x.status >= 500 && x.latency_ms < 100.0);
        let recover = first_after(s, t.recovery_ms, |x| x.status == 200);
        let overall = Summary::of(s.iter());
        let goodput = overall.ok as f64 / (t.total_ms as f64 / 1000.0);
        wasted_by.push(wasted);
        outage_p50.push(outage.p50_ms);
        recover_by.push(recover);
        rows.push(Variant {
            name: p.name().to_owned(),
            figures: vec![
                Figure {
                    name: "time to protect".into(),
                    value: protect.map_or("never".into(), |ms| format!("{ms} ms")),
                },
                Figure {
                    name: "p50 in outage".into(),
                    value: format!("{:.1} ms", outage.p50_ms),
                },
                Figure {
                    name: "requests into the hang".into(),
                    value: wasted.to_string(),
                },
                Figure {
                    name: "time to recover".into(),
                    value: recover.map_or("never".into(), |ms| format!("{ms} ms")),
                },
                Figure {
                    name: "goodput".into(),
                    value: format!("{goodput:.0} req/s"),
                },
            ],
        });
        success_series.push(series::bucketed(
            p.name(),
            s,
            t.total_ms,
            500,
            series::success_percent,
        ));
        latency_series.push(series::bucketed(p.name(), s, t.total_ms, 500, |b| {
            series::latency_p(b, 50.0)
        }));
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
            title: "Client p50 latency (ms): callers waiting on the dead dependency",
            y_label: "ms",
            series: &latency_series,
            spans: &outage_span,
            y_max: None,
        }
        .render(),
        Chart {
            title: "Successful requests (%)",
            y_label: "% ok",
            series: &success_series,
            spans: &outage_span,
            y_max: Some(100.0),
        }
        .render(),
        Chart {
            title: "Requests reaching the dependency (req/s)",
            y_label: "req/s",
            series: &upstream_series,
            spans: &outage_span,
            y_max: None,
        }
        .render(),
    ];
    let none_wasted = wasted_by.first().copied().unwrap_or(0);
    let outlier_wasted = wasted_by.get(1).copied().unwrap_or(0);
    let breaker_wasted = wasted_by.get(2).copied().unwrap_or(usize::MAX);
    let breaker_p50 = outage_p50.get(2).copied().unwrap_or(f64::MAX);
    let breaker_recover = recover_by.get(2).copied().flatten();
    let criteria = vec![
        Criterion {
            // The callers already waiting when the hang starts cannot be saved by anyone; after
            // that only probes should reach the dependency.
            // Not compared with outlier_detection: how many requests it lets into the hang depends
            // on whether its growing ejection happens to outlast the outage (then it also never
            // lets traffic back in time); both figures are reported side by side instead.
            description: format!(
                "the breaker sends at most 60% as many requests into the hang as no protection ({breaker_wasted} vs {none_wasted}; outlier_detection: {outlier_wasted})"
            ),
            passed: (breaker_wasted as f64) <= 0.6 * none_wasted as f64,
        },
        Criterion {
            description: format!("callers wait under 50 ms at p50 during the outage with the breaker ({breaker_p50:.1} ms)"),
            passed: breaker_p50 < 50.0,
        },
        Criterion {
            description: format!(
                "the breaker lets traffic back within max_open_duration + 1 s of recovery ({})",
                breaker_recover.map_or("never".into(), |ms| format!("{ms} ms"))
            ),
            passed: breaker_recover.is_some_and(|ms| ms <= 5_000),
        },
    ];
    Ok(ScenarioReport {
        name: "Cascading dependency outage".into(),
        story: format!(
            "8 callers at 20 req/s each; the dependency answers in {HEALTHY_MS} ms, hangs from {:.0} s to {:.0} s (route timeout {ROUTE_TIMEOUT_MS} ms), then recovers. Compared: no protection, Envoy outlier_detection (consecutive_5xx 5, ejection 2 s, no panic routing), the circuit breaker (5 consecutive failures or 50% over ≥10 requests in 2 s, open 1 s growing to 4 s, 3 probes).",
            t.outage_ms as f64 / 1000.0,
            t.recovery_ms as f64 / 1000.0
        ),
        variants: rows,
        criteria,
        charts,
    })
}
