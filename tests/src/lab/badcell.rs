//! Scenario: a bad cell. One of three cells (availability zones) starts failing a third of its
//! requests; the operator drains it, and once it is healthy again undrains it to 1% to test it.
//!
//! Why it matters: before anyone knows the cause, moving traffic away from the bad cell is the
//! mitigation that works. Envoy can do it natively only by changing locality weights through
//! xDS (here a watched EDS file, the control plane's job); the pack drains at the callers' edge,
//! from a discovery document, gradually (`drain_rate`), and can undrain to a share as small as 1%.
//! Compared: no action, the native locality-weight change, and the pack's drain.

use std::path::PathBuf;
use std::time::Duration;

use super::load::{self, LoadSpec, Sample};
use super::report::{Criterion, Figure, ScenarioReport, Variant};
use super::series::{self, between, Summary};
use super::svg::Chart;
use super::{Progress, Scale};
use crate::envoy::{free_port, Envoy, EnvoyOptions};
use crate::upstream::{Behavior, Upstream};
use crate::{ClusterSpec, ProxyConfig, RouteSpec};

const CELLS: [&str; 3] = ["az1", "az2", "az3"];
const BAD: &str = "az1";
const HEALTHY_MS: u64 = 10;
/// The pack's drain ramp: 50 percentage points a second, so a full drain takes 2 s.
const DRAIN_RATE: u32 = 50;
/// Undrained "to 1%": 97% drained leaves a cell of three 1% of all traffic.
const UNDRAIN_TO: u32 = 97;

struct Timeline {
    bad_ms: u64,
    drain_ms: u64,
    heal_ms: u64,
    undrain_ms: u64,
    total_ms: u64,
}

fn timeline(scale: Scale) -> Timeline {
    match scale {
        Scale::Quick => Timeline {
            bad_ms: 1_000,
            drain_ms: 3_000,
            heal_ms: 7_000,
            undrain_ms: 8_000,
            total_ms: 13_000,
        },
        Scale::Full => Timeline {
            bad_ms: 3_000,
            drain_ms: 8_000,
            heal_ms: 18_000,
            undrain_ms: 20_000,
            total_ms: 32_000,
        },
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Protection {
    None,
    Native,
    Pack,
}

impl Protection {
    fn name(self) -> &'static str {
        match self {
            Protection::None => "no action",
            Protection::Native => "Envoy locality weights (EDS file)",
            Protection::Pack => "pack: slow start cell drain",
        }
    }
}

fn cell_of(upstream: &str) -> &str {
    upstream.split('-').next().unwrap_or(upstream)
}

/// The EDS resource: each cell a locality with `weights[i]`; a cell with weight 0 is left out.
fn eds(ups: &[Upstream], weights: [u32; 3]) -> String {
    let mut y = String::from(
        "resources:\n- \"@type\": type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment\n  cluster_name: fleet\n  endpoints:\n",
    );
    for (cell, weight) in CELLS.iter().zip(weights) {
        if weight == 0 {
            continue;
        }
        y.push_str(&format!(
            "  - locality: {{ zone: {cell} }}\n    load_balancing_weight: {weight}\n    lb_endpoints:\n"
        ));
        for u in ups.iter().filter(|u| cell_of(u.name()) == *cell) {
            y.push_str(&format!(
                "    - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {} }} }} }}\n",
                u.port()
            ));
        }
    }
    y
}

/// The pack's discovery document, `BAD` drained `drain` percent.
fn document(ups: &[Upstream], drain: u32) -> String {
    let list: Vec<String> = ups
        .iter()
        .map(|u| {
            format!(
                r#"{{"address": "127.0.0.1:{}", "cell": "{}"}}"#,
                u.port(),
                cell_of(u.name())
            )
        })
        .collect();
    format!(
        r#"{{"endpoints": [{}], "cells": {{"{BAD}": {{"drain_percent": {drain}}}}}}}"#,
        list.join(", ")
    )
}

/// Replaces a watched file in one move, as Envoy's file watcher expects.
fn write_atomically(path: &PathBuf, text: &str) -> Result<(), String> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).map_err(|e| e.to_string())?;
    std::fs::rename(&tmp, path).map_err(|e| e.to_string())
}

const NATIVE_CLUSTER: &str = "  - name: fleet
    type: EDS
    connect_timeout: 1s
    eds_cluster_config:
      eds_config:
        resource_api_version: V3
        path_config_source: { path: EDS_PATH }
    load_balancing_policy:
      policies:
      - typed_extension_config:
          name: envoy.load_balancing_policies.round_robin
          typed_config:
            \"@type\": type.googleapis.com/envoy.extensions.load_balancing_policies.round_robin.v3.RoundRobin
            locality_lb_config:
              locality_weighted_lb_config: {}
";

const BALANCED_CLUSTER: &str = "  - name: backends
    type: ORIGINAL_DST
    lb_policy: CLUSTER_PROVIDED
    connect_timeout: 1s
    original_dst_lb_config: { use_http_header: true }
";

fn run_variant(
    p: Protection,
    scale: Scale,
    progress: &mut Progress,
) -> Result<Vec<Sample>, String> {
    let t = timeline(scale);
    let mut ups = Vec::new();
    for cell in CELLS {
        for n in ["a", "b"] {
            let u = Upstream::start_named(&format!("{cell}-{n}"))?;
            u.set_default(Behavior::status(200).with_latency(Duration::from_millis(HEALTHY_MS)));
            ups.push(u);
        }
    }
    let registry = Upstream::start_named("registry")?;
    let dir = std::env::temp_dir().join(format!(
        "resilience-badcell-{}-{}",
        std::process::id(),
        free_port()
    ));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let eds_path = dir.join("eds.yaml");
    let listener = free_port();
    let base = ProxyConfig::new(listener, free_port())
        .cluster(ClusterSpec::new("registry", &[registry.port()]));
    let yaml = match p {
        Protection::None => base
            .route(RouteSpec::new("api", "/", "static_fleet").with_timeout(Duration::from_secs(5)))
            .cluster(ClusterSpec::new(
                "static_fleet",
                &ups.iter().map(Upstream::port).collect::<Vec<_>>(),
            ))
            .render(),
        Protection::Native => {
            write_atomically(&eds_path, &eds(&ups, [100, 100, 100]))?;
            format!(
                "node: {{ id: badcell, cluster: badcell }}\n{}{}",
                base.route(
                    RouteSpec::new("api", "/", "fleet").with_timeout(Duration::from_secs(5))
                )
                .render(),
                NATIVE_CLUSTER.replace("EDS_PATH", &eds_path.display().to_string())
            )
        }
        Protection::Pack => {
            registry.set_behavior(
                "/endpoints",
                Behavior::status(200).with_body(document(&ups, 0)),
            );
            let json = format!(
                r#"{{ "discovery": {{"cluster": "registry", "path": "/endpoints", "interval": "300ms"}},
                     "sync_interval": "50ms", "slow_start_window": "500ms", "max_endpoints": 8,
                     "drain_rate": {DRAIN_RATE} }}"#
            );
            let filter = super::pack_stage_yaml("slow_start", "lab_cells", "slow_start", &json)?;
            format!(
                "{}{BALANCED_CLUSTER}",
                base.with_http_filters(&filter)
                    .route(
                        RouteSpec::new("api", "/", "backends").with_timeout(Duration::from_secs(5)),
                    )
                    .render()
            )
        }
    };
    let envoy = Envoy::start(&yaml, &EnvoyOptions::default())?;
    envoy.wait_listener(listener)?;
    // Warm: every endpoint in rotation (the pack's ramp is 500 ms).
    for _ in 0..100 {
        let _ = crate::client::get(listener, "/warm");
    }
    std::thread::sleep(Duration::from_millis(800));
    let spec = LoadSpec::new(
        listener,
        "/work",
        8,
        25.0,
        Duration::from_millis(t.total_ms),
    );
    let mut phase = 0;
    let bad = || {
        Behavior::status(200)
            .with_latency(Duration::from_millis(HEALTHY_MS))
            .failing_fraction(1.0 / 3.0, 11)
            .on_failure(Behavior::status(503))
    };
    let mut failed = None;
    let samples = load::run(&spec, |elapsed| {
        let ms = elapsed.as_millis() as u64;
        let result: Result<(), String> = (|| {
            if phase < 1 && ms >= t.bad_ms {
                phase = 1;
                for u in ups.iter().filter(|u| cell_of(u.name()) == BAD) {
                    u.set_default(bad());
                }
            } else if phase < 2 && ms >= t.drain_ms {
                phase = 2;
                match p {
                    Protection::None => {}
                    Protection::Native => write_atomically(&eds_path, &eds(&ups, [0, 100, 100]))?,
                    Protection::Pack => registry.set_behavior(
                        "/endpoints",
                        Behavior::status(200).with_body(document(&ups, 100)),
                    ),
                }
            } else if phase < 3 && ms >= t.heal_ms {
                phase = 3;
                for u in ups.iter().filter(|u| cell_of(u.name()) == BAD) {
                    u.set_default(
                        Behavior::status(200).with_latency(Duration::from_millis(HEALTHY_MS)),
                    );
                }
            } else if phase < 4 && ms >= t.undrain_ms {
                phase = 4;
                match p {
                    Protection::None => {}
                    // 2 of 202: 1% of all traffic.
                    Protection::Native => write_atomically(&eds_path, &eds(&ups, [2, 100, 100]))?,
                    Protection::Pack => registry.set_behavior(
                        "/endpoints",
                        Behavior::status(200).with_body(document(&ups, UNDRAIN_TO)),
                    ),
                }
            }
            Ok(())
        })();
        if let Err(e) = result {
            failed.get_or_insert(e);
        }
        progress.update(p.name(), elapsed.as_secs_f64(), t.total_ms as f64 / 1000.0);
    });
    drop(envoy);
    let _ = std::fs::remove_dir_all(&dir);
    match failed {
        Some(e) => Err(e),
        None => Ok(samples),
    }
}

/// The share of `samples` the bad cell served.
fn bad_share<'a>(samples: impl IntoIterator<Item = &'a Sample>) -> f64 {
    let (mut all, mut bad) = (0usize, 0usize);
    for s in samples {
        if let Some(u) = &s.upstream {
            all += 1;
            if cell_of(u) == BAD {
                bad += 1;
            }
        }
    }
    if all == 0 {
        0.0
    } else {
        bad as f64 / all as f64
    }
}

/// Runs the scenario with every variant.
pub fn run(scale: Scale, progress: &mut Progress) -> Result<ScenarioReport, String> {
    let t = timeline(scale);
    // The drain has settled one discovery interval plus the ramp (and a margin) after it began.
    let settled_ms = t.drain_ms + 300 + 1000 * 100 / u64::from(DRAIN_RATE) + 500;
    let mut rows = Vec::new();
    let mut share_series = Vec::new();
    let mut error_series = Vec::new();
    // Per variant: errors before, while draining, drained; bad share drained, after undrain.
    let mut figures = Vec::new();
    for p in [Protection::None, Protection::Native, Protection::Pack] {
        progress.start("bad cell", p.name());
        let s = run_variant(p, scale, progress)?;
        progress.finish();
        let before = Summary::of(between(&s, t.bad_ms, t.drain_ms)).error_rate() * 100.0;
        let draining = Summary::of(between(&s, t.drain_ms, settled_ms)).error_rate() * 100.0;
        let drained = Summary::of(between(&s, settled_ms, t.heal_ms)).error_rate() * 100.0;
        let share_drained = bad_share(between(&s, settled_ms, t.heal_ms)) * 100.0;
        let share_undrained = bad_share(between(&s, t.undrain_ms + 1_500, t.total_ms)) * 100.0;
        figures.push((before, draining, drained, share_drained, share_undrained));
        rows.push(Variant {
            name: p.name().to_owned(),
            figures: vec![
                Figure {
                    name: "errors: bad / draining / drained".into(),
                    value: format!("{before:.1}% / {draining:.1}% / {drained:.1}%"),
                },
                Figure {
                    name: "bad cell's share drained".into(),
                    value: format!("{share_drained:.1}%"),
                },
                Figure {
                    name: "share undrained to 1%".into(),
                    value: format!("{share_undrained:.1}%"),
                },
            ],
        });
        share_series.push(series::bucketed(p.name(), &s, t.total_ms, 500, |b| {
            bad_share(b.iter().copied()) * 100.0
        }));
        error_series.push(series::bucketed(p.name(), &s, t.total_ms, 500, |b| {
            100.0 - series::success_percent(b)
        }));
    }
    let spans = [
        (
            t.bad_ms as f64 / 1000.0,
            t.heal_ms as f64 / 1000.0,
            "az1 fails 1/3",
        ),
        (
            t.drain_ms as f64 / 1000.0,
            t.undrain_ms as f64 / 1000.0,
            "drained",
        ),
    ];
    let charts = vec![
        Chart {
            title: "Share of requests served by the bad cell (%)",
            y_label: "%",
            series: &share_series,
            spans: &spans,
            y_max: None,
        }
        .render(),
        Chart {
            title: "Client errors (%)",
            y_label: "%",
            series: &error_series,
            spans: &spans,
            y_max: None,
        }
        .render(),
    ];
    let get = |i: usize| {
        figures
            .get(i)
            .copied()
            .unwrap_or((f64::MAX, f64::MAX, f64::MAX, f64::MAX, f64::MAX))
    };
    let (none, native, pack) = (get(0), get(1), get(2));
    let criteria = vec![
        Criterion {
            description: format!(
                "drained, the pack's clients see at most a fifth of no action's errors ({:.1}% vs {:.1}%; native {:.1}%)",
                pack.2, none.2, native.2
            ),
            passed: pack.2 <= none.2 / 5.0,
        },
        Criterion {
            description: format!(
                "the drain itself costs no errors: while it ramps, the pack's clients see no more errors than with no action ({:.1}% vs {:.1}%)",
                pack.1, none.1
            ),
            passed: pack.1 <= none.1,
        },
        Criterion {
            description: format!(
                "drained, the bad cell serves under 1% with the pack ({:.1}%; native {:.1}%)",
                pack.3, native.3
            ),
            passed: pack.3 < 1.0,
        },
        Criterion {
            description: format!(
                "undrained to 1%, the healed cell gets about 1% of the traffic with the pack ({:.1}%; native, weight 2 of 202: {:.1}%)",
                pack.4, native.4
            ),
            passed: (0.2..=3.0).contains(&pack.4),
        },
    ];
    Ok(ScenarioReport {
        name: "Bad cell".into(),
        story: format!(
            "Six replicas in three cells (az1, az2, az3; {HEALTHY_MS} ms each) behind one Envoy (2 workers); 8 clients at 25 req/s. At {:.0} s az1's replicas start failing a third of their requests with 503; at {:.0} s the operator drains az1; at {:.0} s az1 is healthy again, and at {:.0} s it is undrained to 1% of the traffic to test it. No action: round robin over all six. Envoy's native answer: a round-robin cluster with locality weights from a watched EDS file, rewritten to drop az1 (weights are at least 1) and then to give it 2 of 202. The pack: slow start in balance mode over the same six, discovered from a document with each endpoint's cell; the drain is `drain_percent` 100 in the document, ramped at {DRAIN_RATE} points a second, and the undrain {UNDRAIN_TO} (a cell of three at 3% drained left is 1% of all traffic).",
            t.bad_ms as f64 / 1000.0,
            t.drain_ms as f64 / 1000.0,
            t.heal_ms as f64 / 1000.0,
            t.undrain_ms as f64 / 1000.0,
        ),
        variants: rows,
        criteria,
        charts,
    })
}
