//! Scenario: least-request balancing black-holes traffic into a host that fails fast.
//!
//! An edge Envoy balances by least request over four hosts; each host is an application instance
//! behind its own sidecar. One instance starts failing instantly (503 in under a millisecond)
//! while the others take 50 ms to succeed. The failing host always has the fewest requests in
//! flight, so least request keeps choosing it and it draws far more than its fair quarter of the
//! traffic, all of it failing. Envoy's `outlier_detection` could eject it, but with its defaults
//! (`max_ejection_percent` 10) it ejects nothing in a cluster of four. The failure-padding filter
//! runs in the failing host's own sidecar and holds each fast failure until it took as long as
//! the host's learned success latency, so the edge sees the host as busy as the others.

use std::time::Duration;

use super::load::{self, LoadSpec, Sample};
use super::report::{Criterion, Figure, ScenarioReport, Variant};
use super::series::{self, between, percentile, Summary};
use super::svg::Chart;
use super::topology::{self, Listener};
use super::{Progress, Scale};
use crate::config::indent_yaml;
use crate::envoy::{free_port, Envoy, EnvoyOptions};
use crate::upstream::{Behavior, Upstream};

/// How long a success takes on a healthy host.
const SUCCESS_MS: u64 = 50;
/// Hosts behind the edge; the last one fails.
const HOSTS: usize = 4;
/// Client threads, each sending its next request as soon as the previous one is answered.
const THREADS: usize = 16;
const BUCKET_MS: u64 = 500;
/// The fair share of one host, in percent.
const FAIR_PERCENT: f64 = 100.0 / HOSTS as f64;

struct Timeline {
    /// Every host healthy: each sidecar learns its host's ~50 ms.
    warmup_ms: u64,
    /// One host failing fast.
    measured_ms: u64,
}

impl Timeline {
    fn total_ms(&self) -> u64 {
        self.warmup_ms + self.measured_ms
    }
}

fn timeline(scale: Scale) -> Timeline {
    match scale {
        Scale::Quick => Timeline {
            warmup_ms: 1_500,
            measured_ms: 4_000,
        },
        Scale::Full => Timeline {
            warmup_ms: 1_500,
            measured_ms: 15_000,
        },
    }
}

/// Envoy's `outlier_detection` on the edge's cluster of hosts.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Outlier {
    Off,
    /// Envoy's defaults: consecutive_5xx 5, 30 s ejections, max_ejection_percent 10.
    Defaults,
    /// As an operator of a 4-host cluster would tune it: one host may be ejected.
    Tuned,
}

#[derive(Clone, Copy)]
struct Setup {
    name: &'static str,
    padding: bool,
    outlier: Outlier,
}

const SETUPS: [Setup; 5] = [
    Setup {
        name: "no filter",
        padding: false,
        outlier: Outlier::Off,
    },
    Setup {
        name: "padding filter (pack)",
        padding: true,
        outlier: Outlier::Off,
    },
    Setup {
        name: "outlier_detection defaults",
        padding: false,
        outlier: Outlier::Defaults,
    },
    Setup {
        name: "outlier_detection max 50%",
        padding: false,
        outlier: Outlier::Tuned,
    },
    Setup {
        name: "padding + outlier max 50%",
        padding: true,
        outlier: Outlier::Tuned,
    },
];

/// The ports of one run.
struct Ports<'a> {
    edge: u16,
    admin: u16,
    sidecars: &'a [u16],
    apps: &'a [u16],
}

/// A listener whose callers on loopback are internal (their deadline headers are kept).
fn listener<'a>(name: &'a str, port: u16, cluster: &'a str, filters: &'a str) -> Listener<'a> {
    Listener {
        name,
        port,
        cluster,
        route_extra: "",
        filters,
        loopback_is_internal: true,
    }
}

/// One Envoy process playing two roles: an edge listener that balances by least request over
/// four hosts, and the four hosts' sidecar listeners, each (optionally) carrying the filter in
/// front of its own application instance.
fn topology_yaml(ports: &Ports<'_>, setup: Setup) -> Result<String, String> {
    let mut y = topology::header(ports.admin);
    y.push_str(&listener("edge", ports.edge, "hosts", "").yaml());
    for (i, port) in ports.sidecars.iter().enumerate() {
        let filters = if setup.padding {
            // Distinct plugin names and stat prefixes: one VM, four independent filters.
            let name = format!("pad_{i}");
            let json = format!(
                r#"{{ "sync_interval": "50ms", "min_samples": 20, "stat_prefix": "fp_{i}" }}"#
            );
            indent_yaml(
                &super::pack_stage_yaml(&name, "lab_fp", "failure_padding", &json)?,
                10,
            )
        } else {
            String::new()
        };
        let (name, cluster) = (format!("sidecar_{i}"), format!("app_{i}"));
        y.push_str(&listener(&name, *port, &cluster, &filters).yaml());
    }
    y.push_str("  clusters:\n");
    let mut extra = "    lb_policy: LEAST_REQUEST\n".to_string();
    match setup.outlier {
        Outlier::Off => {}
        Outlier::Defaults => extra.push_str("    outlier_detection: {}\n"),
        Outlier::Tuned => extra.push_str(
            "    outlier_detection: { consecutive_5xx: 5, base_ejection_time: 30s, max_ejection_percent: 50 }\n",
        ),
    }
    y.push_str(&topology::static_cluster("hosts", ports.sidecars, &extra));
    for (i, port) in ports.apps.iter().enumerate() {
        y.push_str(&topology::static_cluster(&format!("app_{i}"), &[*port], ""));
    }
    Ok(y)
}

struct Run {
    samples: Vec<Sample>,
    /// When the bad host started failing, in ms since the load began.
    failing_from_ms: u64,
    bad_name: String,
    ejections: u64,
    /// Ejections Envoy refused because of `max_ejection_percent`.
    refused: u64,
    /// Failures the failing host's sidecar padded, and the target it padded them to (ms).
    padded: Option<(u64, u64)>,
}

fn assert_no_vm_failure(envoy: &Envoy) -> Result<(), String> {
    envoy.vm_failure().map_or(Ok(()), Err)
}

fn run_variant(setup: Setup, scale: Scale, progress: &mut Progress) -> Result<Run, String> {
    let t = timeline(scale);
    let apps = (0..HOSTS)
        .map(|i| Upstream::start_named(&format!("host-{i}")))
        .collect::<Result<Vec<_>, _>>()?;
    let healthy = Behavior::status(200).with_latency(Duration::from_millis(SUCCESS_MS));
    for app in &apps {
        app.set_default(healthy.clone());
    }
    let bad_index = HOSTS - 1;
    let bad = apps.last().ok_or("no hosts")?;
    let sidecars: Vec<u16> = (0..HOSTS).map(|_| free_port()).collect();
    let app_ports: Vec<u16> = apps.iter().map(Upstream::port).collect();
    let ports = Ports {
        edge: free_port(),
        admin: free_port(),
        sidecars: &sidecars,
        apps: &app_ports,
    };
    let envoy = Envoy::start(&topology_yaml(&ports, setup)?, &EnvoyOptions::default())?;
    envoy.wait_listener(ports.edge)?;
    for p in &sidecars {
        envoy.wait_listener(*p)?;
    }
    let spec = LoadSpec::new(
        ports.edge,
        "/work",
        THREADS,
        0.0,
        Duration::from_millis(t.total_ms()),
    );
    let mut failing_from = None;
    let samples = load::run(&spec, |elapsed| {
        let ms = elapsed.as_millis() as u64;
        if failing_from.is_none() && ms >= t.warmup_ms {
            // One host starts failing instantly.
            bad.set_default(Behavior::status(503));
            failing_from = Some(ms);
        }
        progress.update(
            setup.name,
            elapsed.as_secs_f64(),
            t.total_ms() as f64 / 1000.0,
        );
    });
    let padded = setup.padding.then(|| {
        (
            envoy.stat(&format!("wasmcustom.fp_{bad_index}.app.padded")),
            envoy.stat(&format!("wasmcustom.fp_{bad_index}.app.target_ms")),
        )
    });
    let run = Run {
        samples,
        failing_from_ms: failing_from.unwrap_or(t.warmup_ms),
        bad_name: bad.name().to_owned(),
        ejections: envoy.stat("cluster.hosts.outlier_detection.ejections_enforced_total"),
        refused: envoy.stat("cluster.hosts.outlier_detection.ejections_overflow"),
        padded,
    };
    assert_no_vm_failure(&envoy)?;
    Ok(run)
}

/// Share (0–100) of a bucket's upstream answers that came from `bad`.
fn share_percent(bucket: &[&Sample], bad: &str) -> f64 {
    let answered = bucket.iter().filter(|s| s.upstream.is_some()).count();
    if answered == 0 {
        return f64::NAN;
    }
    let from_bad = bucket
        .iter()
        .filter(|s| s.upstream.as_deref() == Some(bad))
        .count();
    100.0 * from_bad as f64 / answered as f64
}

/// p50 latency of the answers from the bad host (`true`) or from the healthy ones.
fn p50_of(samples: &[&Sample], bad: &str, from_bad: bool) -> f64 {
    let v: Vec<f64> = samples
        .iter()
        .filter(|s| {
            s.upstream
                .as_deref()
                .is_some_and(|u| (u == bad) == from_bad)
        })
        .map(|s| s.latency_ms)
        .collect();
    percentile(&v, 50.0)
}

/// The headline numbers of one variant, over the measured phase.
struct Measured {
    share: f64,
    error_rate: f64,
}

/// Runs the scenario with every variant.
pub fn run(scale: Scale, progress: &mut Progress) -> Result<ScenarioReport, String> {
    let t = timeline(scale);
    let mut rows = Vec::new();
    let mut measured = Vec::new();
    let mut share_series = Vec::new();
    let mut error_series = Vec::new();
    for setup in SETUPS {
        progress.start("black hole", setup.name);
        let run = run_variant(setup, scale, progress)?;
        progress.finish();
        let phase: Vec<&Sample> =
            between(&run.samples, run.failing_from_ms, t.total_ms()).collect();
        let seconds = (t.total_ms().saturating_sub(run.failing_from_ms)) as f64 / 1000.0;
        let summary = Summary::of(phase.iter().copied());
        let share = share_percent(&phase, &run.bad_name);
        let share = if share.is_finite() { share } else { 0.0 };
        let error_rate = 100.0 * summary.error_rate();
        measured.push(Measured { share, error_rate });
        rows.push(Variant {
            name: setup.name.to_owned(),
            figures: vec![
                Figure {
                    name: "bad host share".into(),
                    value: format!("{share:.1}%"),
                },
                Figure {
                    name: "client errors".into(),
                    value: format!("{error_rate:.1}%"),
                },
                Figure {
                    name: "throughput".into(),
                    value: format!("{:.0} req/s", summary.requests as f64 / seconds.max(0.001)),
                },
                Figure {
                    name: "p50 bad / good".into(),
                    value: format!(
                        "{:.1} / {:.1} ms",
                        p50_of(&phase, &run.bad_name, true),
                        p50_of(&phase, &run.bad_name, false)
                    ),
                },
                Figure {
                    name: "ejections (refused)".into(),
                    value: format!("{} ({})", run.ejections, run.refused),
                },
                Figure {
                    name: "padded by bad host".into(),
                    value: run
                        .padded
                        .map_or("-".into(), |(n, target)| format!("{n} to {target} ms")),
                },
            ],
        });
        let bad = run.bad_name.clone();
        share_series.push(series::bucketed(
            setup.name,
            &run.samples,
            t.total_ms(),
            BUCKET_MS,
            |b| share_percent(b, &bad),
        ));
        error_series.push(series::bucketed(
            setup.name,
            &run.samples,
            t.total_ms(),
            BUCKET_MS,
            |b| {
                if b.is_empty() {
                    f64::NAN
                } else {
                    100.0 - series::success_percent(b)
                }
            },
        ));
    }
    // Points sit at the start of their bucket: the charts end at the last bucket's start.
    let end_s = (t.total_ms().div_ceil(BUCKET_MS).saturating_sub(1) * BUCKET_MS) as f64 / 1000.0;
    share_series.push(series::Series {
        name: format!("fair share ({FAIR_PERCENT:.0}%)"),
        points: vec![(0.0, FAIR_PERCENT), (end_s, FAIR_PERCENT)],
    });
    let failing_span = [(
        t.warmup_ms as f64 / 1000.0,
        end_s,
        "one host fails in <1 ms",
    )];
    let charts = vec![
        Chart {
            title: "The failing host's share of requests (%): least request black-holes into it",
            y_label: "% of requests",
            series: &share_series,
            spans: &failing_span,
            y_max: Some(100.0),
        }
        .render(),
        Chart {
            title: "Client error rate (%)",
            y_label: "% errors",
            series: &error_series,
            spans: &failing_span,
            y_max: None,
        }
        .render(),
    ];
    let share = |i: usize| measured.get(i).map_or(f64::NAN, |m| m.share);
    let errors = |i: usize| measured.get(i).map_or(f64::NAN, |m| m.error_rate);
    let (none_share, padded_share) = (share(0), share(1));
    let (none_errors, padded_errors) = (errors(0), errors(1));
    let max_share = 1.2 * FAIR_PERCENT;
    let criteria = vec![
        Criterion {
            description: format!(
                "with the padding filter the failing host draws at most 1.2× its fair share (≤ {max_share:.0}%): {padded_share:.1}%"
            ),
            passed: padded_share <= max_share,
        },
        Criterion {
            description: format!(
                "without the filter the black hole is real: the failing host draws more than 1.25× its fair share (> 31%): {none_share:.1}%"
            ),
            // Measured 41.8–46.1% in most runs, once 35.1%: the bound shows the black hole with margin.
            passed: none_share > 31.25,
        },
        Criterion {
            description: format!(
                "padding lowers the client error rate ({padded_errors:.1}% vs {none_errors:.1}% without the filter)"
            ),
            passed: padded_errors < none_errors,
        },
    ];
    Ok(ScenarioReport {
        name: "Black hole".into(),
        story: format!(
            "One Envoy plays two roles: an edge listener balancing by LEAST_REQUEST over 4 hosts, and each host's sidecar listener in front of its own application instance. The applications answer in {SUCCESS_MS} ms; after a {:.1} s warm-up one of them fails instantly (503 in under 1 ms) for {:.0} s. {THREADS} client threads each send the next request as soon as the previous one is answered. A fast-failing host always has the fewest requests in flight, so least request keeps choosing it: its share of requests (fair: {FAIR_PERCENT:.0}%) climbs and every extra request it wins is an error. The padding filter runs in the failing host's own sidecar (no change at the edge): it learns the host's success latency and holds each failure that long. Envoy's outlier_detection with its defaults (consecutive_5xx 5, base_ejection_time 30 s, max_ejection_percent 10, always_eject_one_host off) ejects nothing here: one host of 4 is 25%, over the 10% cap, so every ejection is refused (counted in ejections_overflow). Tuned to max_ejection_percent 50 it ejects the host after 5 consecutive 5xx for 30 s.",
            t.warmup_ms as f64 / 1000.0,
            t.measured_ms as f64 / 1000.0
        ),
        variants: rows,
        criteria,
        charts,
    })
}
