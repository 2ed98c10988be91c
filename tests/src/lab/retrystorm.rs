//! Scenario: a short load spike turns into a retry storm that outlives it.
//!
//! The dependency has a fixed capacity: a few requests are served at once and the rest queue in
//! arrival order, like a saturated server. Callers go through an Envoy whose route retries 5xx
//! and resets 3 times with a 100 ms per-try timeout. A load spike above capacity makes the queue
//! long enough that attempts time out; each timeout is retried, and the abandoned attempt is still
//! served when its turn comes (the server cannot tell that nobody waits for it any more), so a
//! client request now costs the dependency up to four requests. That is far above capacity even
//! at the usual load, so without protection the storm outlives the spike: the queue never drains.
//! Envoy's native cluster `retry_budget` bounds *concurrent* retries (a share of the requests in
//! flight, at least `min_retry_concurrency`); the retry-budget filter bounds the *rate* of retries
//! to a share of recent requests, either at the caller (outbound) or in the dependency's own proxy
//! (inbound, shedding the callers' excess retries).

use std::time::{Duration, Instant};

use super::load::{self, LoadSpec, Sample};
use super::report::{Criterion, Figure, ScenarioReport, Variant};
use super::series::{self, between, Series, Summary};
use super::svg::Chart;
use super::{Progress, Scale};
use crate::envoy::{free_port, Envoy, EnvoyOptions};
use crate::upstream::{Behavior, Upstream};
use crate::{ClusterSpec, ProxyConfig, RouteSpec};

/// Requests the dependency serves at once.
const CAPACITY: usize = 4;
/// How long serving one request takes.
const SERVICE_MS: u64 = 40;
/// What the dependency can serve per second: `CAPACITY` × 1000 / `SERVICE_MS`.
const CAPACITY_RPS: f64 = CAPACITY as f64 * 1000.0 / SERVICE_MS as f64;
/// Load before and after the spike, in percent of capacity. After the spike, what capacity is
/// left over (less the budget's retries) drains the queue the spike built, so this sets how long
/// recovery takes even with a budget: at 60% a 20% budget leaves 28% of capacity to drain it.
const STEADY_PERCENT: f64 = 50.0;
/// Load during the spike, in percent of capacity.
const SPIKE_PERCENT: f64 = 150.0;
/// Each client sends one request per second, so a request that takes up to the route timeout
/// does not make its client fall behind: offered load stays what the timeline says.
const RPS_PER_CLIENT: f64 = 1.0;
const ROUTE_TIMEOUT_MS: u64 = 1_000;
const PER_TRY_TIMEOUT_MS: u64 = 100;
const NUM_RETRIES: u32 = 3;
const BUCKET_MS: u64 = 500;
/// A second of client requests at least this successful (%) counts as recovered.
const RECOVERED_PERCENT: f64 = 95.0;

struct Timeline {
    spike_ms: u64,
    calm_ms: u64,
    total_ms: u64,
}

fn timeline(scale: Scale) -> Timeline {
    match scale {
        Scale::Quick => Timeline {
            spike_ms: 1_500,
            calm_ms: 3_500,
            total_ms: 11_000,
        },
        Scale::Full => Timeline {
            spike_ms: 5_000,
            calm_ms: 10_000,
            total_ms: 30_000,
        },
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Protection {
    None,
    NativeBudget,
    /// The filter in the callers' Envoy.
    Outbound,
    /// The filter in the dependency's own Envoy; the callers' Envoy retries freely.
    Inbound,
}

impl Protection {
    fn name(self) -> &'static str {
        match self {
            Protection::None => "no protection",
            Protection::NativeBudget => "Envoy native retry_budget",
            Protection::Outbound => "filter outbound (caller)",
            Protection::Inbound => "filter inbound (dependency)",
        }
    }
}

const VARIANTS: [Protection; 4] = [
    Protection::None,
    Protection::NativeBudget,
    Protection::Outbound,
    Protection::Inbound,
];

/// The caller's filter: retries may be 20% of the requests of the last 10 s, plus 1 per second.
const OUTBOUND_JSON: &str = r#"{"sync_interval": "50ms", "mode": "outbound", "budget_percent": 20,
  "min_retries_per_second": 1, "max_retries": 3, "burst_cap_percent": 110}"#;
/// The dependency's own proxy: retries beyond 20% of first attempts (plus 1 per second) are shed.
const INBOUND_JSON: &str = r#"{"sync_interval": "50ms", "mode": "inbound", "budget_percent": 20,
  "min_retries_per_second": 1, "burst_cap_percent": 110}"#;

fn retry_policy_yaml() -> String {
    format!(
        "retry_policy:\n  retry_on: \"5xx,reset\"\n  num_retries: {NUM_RETRIES}\n  per_try_timeout: {}s\n",
        PER_TRY_TIMEOUT_MS as f64 / 1000.0
    )
}

/// Envoy's default cluster circuit breaker allows 3 concurrent retries, which would hide the
/// storm (and is a limit of its own); lift it so only the protection under test limits retries.
const UNLIMITED_RETRIES: &str = "circuit_breakers:
  thresholds:
  - priority: DEFAULT
    max_retries: 10000";

/// Envoy's native answer: concurrent retries at most 20% of the requests active or pending on
/// the cluster, and at least 3.
const NATIVE_BUDGET: &str = "circuit_breakers:
  thresholds:
  - priority: DEFAULT
    retry_budget:
      budget_percent: { value: 20.0 }
      min_retry_concurrency: 3";

fn filter(json: &str, vm_id: &str) -> Result<String, String> {
    super::pack_stage_yaml("retry_budget", vm_id, "retry_budget", json)
}

/// The callers' Envoy: one retrying route to `target` (the dependency, or its proxy).
fn caller_config(p: Protection, listener: u16, target: u16) -> Result<String, String> {
    let filters = match p {
        Protection::None | Protection::NativeBudget | Protection::Inbound => String::new(),
        Protection::Outbound => filter(OUTBOUND_JSON, "lab_rb")?,
    };
    let breakers = if p == Protection::NativeBudget {
        NATIVE_BUDGET
    } else {
        UNLIMITED_RETRIES
    };
    let mut config = ProxyConfig::new(listener, free_port())
        .with_http_filters(&filters)
        .route(
            RouteSpec::new("dependency", "/", "dependency")
                .with_timeout(Duration::from_millis(ROUTE_TIMEOUT_MS))
                .with_action_yaml(&retry_policy_yaml()),
        )
        .cluster(ClusterSpec::new("dependency", &[target]).with_extra_yaml(breakers));
    // So that the dependency (and, inbound, its proxy) can tell retries from first attempts.
    config.virtual_host_yaml = "include_request_attempt_count: true".to_owned();
    Ok(config.render())
}

/// The dependency's own proxy (only with `Inbound`): sheds retries beyond the budget, with
/// `x-envoy-ratelimited` so that the callers' Envoy does not retry the shed either.
fn server_config(listener: u16, upstream: u16) -> Result<String, String> {
    Ok(ProxyConfig::new(listener, free_port())
        .with_http_filters(&filter(INBOUND_JSON, "lab_rb_in")?)
        .route(
            RouteSpec::new("app", "/", "app").with_timeout(Duration::from_millis(ROUTE_TIMEOUT_MS)),
        )
        .cluster(ClusterSpec::new("app", &[upstream]).with_extra_yaml(UNLIMITED_RETRIES))
        .render())
}

struct Run {
    samples: Vec<Sample>,
    /// (ms since the load began, requests the dependency had received), about every 100 ms.
    upstream_counts: Vec<(u64, u64)>,
    /// When each retry reached the dependency (ms since the load began, by its
    /// `x-envoy-attempt-count`), if the dependency's log holds every request since `from_ms`.
    retries: Option<RetryLog>,
}

struct RetryLog {
    from_ms: u64,
    at_ms: Vec<u64>,
}

impl RetryLog {
    /// Exact counts, for variants that send few enough requests for the dependency's log.
    fn of(upstream: &Upstream, started: Instant, from_ms: u64) -> Option<RetryLog> {
        let log = upstream.log();
        let since = |at: Instant| at.saturating_duration_since(started).as_millis() as u64;
        let complete = upstream.requests() as usize == log.len()
            || log.first().is_some_and(|r| since(r.at) < from_ms);
        complete.then(|| RetryLog {
            from_ms,
            at_ms: log
                .iter()
                .filter(|r| {
                    r.header("x-envoy-attempt-count")
                        .and_then(|v| v.parse::<u64>().ok())
                        .is_some_and(|n| n > 1)
                })
                .map(|r| since(r.at))
                .collect(),
        })
    }

    fn between(&self, from_ms: u64, to_ms: u64) -> Option<usize> {
        (from_ms >= self.from_ms).then(|| {
            self.at_ms
                .iter()
                .filter(|&&at| at >= from_ms && at < to_ms)
                .count()
        })
    }
}

/// Paced clients from `from_ms` to `to_ms` (since the load began), `clients` of them, each at
/// `RPS_PER_CLIENT`, their starts spread evenly over one interval so that requests arrive
/// evenly rather than in bursts of `clients` at once.
fn clients(port: u16, clients: usize, from_ms: u64, to_ms: u64) -> Vec<(u64, LoadSpec)> {
    let interval_ms = 1000.0 / RPS_PER_CLIENT;
    (0..clients)
        .map(|i| {
            let offset = from_ms + (interval_ms * i as f64 / clients.max(1) as f64) as u64;
            // `load::run` checks its duration before waiting for the next request, so a duration
            // ending between two requests would still send the later one: end it 1 ms after the
            // last request that starts before `to_ms`.
            let requests = (to_ms.saturating_sub(offset) as f64 / interval_ms).ceil();
            let duration_ms = (requests - 1.0).max(0.0) * interval_ms + 1.0;
            let spec = LoadSpec::new(
                port,
                "/work",
                1,
                RPS_PER_CLIENT,
                Duration::from_secs_f64(duration_ms / 1000.0),
            );
            (offset, spec)
        })
        .collect()
}

fn clients_for(percent: f64) -> usize {
    (CAPACITY_RPS * percent / 100.0 / RPS_PER_CLIENT).round() as usize
}

fn run_variant(p: Protection, scale: Scale, progress: &mut Progress) -> Result<Run, String> {
    let t = timeline(scale);
    let upstream = Upstream::start_named("dependency")?;
    upstream.set_default(Behavior::status(200).with_latency(Duration::from_millis(SERVICE_MS)));
    upstream.set_capacity(Some(CAPACITY));
    let server = if p == Protection::Inbound {
        let port = free_port();
        let envoy = Envoy::start(
            &server_config(port, upstream.port())?,
            &EnvoyOptions::default(),
        )?;
        envoy.wait_listener(port)?;
        Some((envoy, port))
    } else {
        None
    };
    let target = server.as_ref().map_or(upstream.port(), |(_, port)| *port);
    let listener = free_port();
    let envoy = Envoy::start(
        &caller_config(p, listener, target)?,
        &EnvoyOptions::default(),
    )?;
    envoy.wait_listener(listener)?;

    let started = Instant::now();
    let steady = clients_for(STEADY_PERCENT);
    let extra = clients_for(SPIKE_PERCENT).saturating_sub(steady);
    let mut plan = clients(listener, steady, 0, t.total_ms);
    plan.extend(clients(listener, extra, t.spike_ms, t.calm_ms));
    let mut upstream_counts = vec![(0, upstream.requests())];
    let samples = std::thread::scope(|scope| {
        let handles: Vec<_> = plan
            .into_iter()
            .map(|(offset, spec)| {
                scope.spawn(move || {
                    let at = started + Duration::from_millis(offset);
                    let now = Instant::now();
                    if at > now {
                        std::thread::sleep(at - now);
                    }
                    let mut samples = load::run(&spec, |_| {});
                    for s in &mut samples {
                        s.at_ms += offset;
                    }
                    samples
                })
            })
            .collect();
        loop {
            std::thread::sleep(Duration::from_millis(100));
            let elapsed = started.elapsed();
            upstream_counts.push((elapsed.as_millis() as u64, upstream.requests()));
            progress.update(
                p.name(),
                elapsed.as_secs_f64().min(t.total_ms as f64 / 1000.0),
                t.total_ms as f64 / 1000.0,
            );
            if elapsed >= Duration::from_millis(t.total_ms) {
                break;
            }
        }
        let mut all = Vec::new();
        for h in handles {
            all.extend(h.join().unwrap_or_default());
        }
        all
    });
    let mut samples = samples;
    samples.sort_by_key(|s| s.at_ms);
    envoy.vm_failure().map_or(Ok(()), Err)?;
    if let Some((server, _)) = &server {
        server.vm_failure().map_or(Ok(()), Err)?;
    }
    let retries = RetryLog::of(&upstream, started, t.calm_ms);
    Ok(Run {
        samples,
        upstream_counts,
        retries,
    })
}

/// Requests the dependency had received by `ms`, interpolated between polls.
fn upstream_at(counts: &[(u64, u64)], ms: u64) -> f64 {
    let after = counts.iter().position(|(at, _)| *at >= ms);
    match after {
        None => counts.last().map_or(0.0, |(_, n)| *n as f64),
        Some(0) => counts.first().map_or(0.0, |(_, n)| *n as f64),
        Some(i) => {
            let (Some(&(t0, n0)), Some(&(t1, n1))) = (counts.get(i - 1), counts.get(i)) else {
                return 0.0;
            };
            if t1 <= t0 {
                return n1 as f64;
            }
            n0 as f64 + (n1 as f64 - n0 as f64) * (ms - t0) as f64 / (t1 - t0) as f64
        }
    }
}

fn upstream_between(counts: &[(u64, u64)], from_ms: u64, to_ms: u64) -> f64 {
    (upstream_at(counts, to_ms) - upstream_at(counts, from_ms)).max(0.0)
}

fn ok_count<'a>(samples: impl IntoIterator<Item = &'a Sample>) -> usize {
    samples
        .into_iter()
        .filter(|s| (200..400).contains(&s.status))
        .count()
}

/// How long after `from_ms` the first full second of client requests is at least
/// `RECOVERED_PERCENT` successful (checked every 100 ms); `None` within the run.
fn time_to_recover(samples: &[Sample], from_ms: u64, total_ms: u64) -> Option<u64> {
    let mut at = from_ms;
    while at + 1_000 <= total_ms {
        let second: Vec<&Sample> = between(samples, at, at + 1_000).collect();
        if !second.is_empty() && series::success_percent(&second) >= RECOVERED_PERCENT {
            return Some(at - from_ms);
        }
        at += 100;
    }
    None
}

/// The gRPC variant: callers with grpcio's standard retry policy (`maxAttempts` 4, retrying
/// `UNAVAILABLE`) make the retries themselves, so only the dependency's side can bound them:
/// the retry budget inbound sheds retries (`grpc-previous-rpc-attempts`) beyond the budget with
/// a gRPC status and "do not retry" pushback, which grpcio honours. The server serves
/// `CAPACITY` calls at once and refuses the rest with `UNAVAILABLE` (an overloaded gRPC server).
/// Returns the amplification during the spike: calls reaching the server per caller's call.
fn grpc_variant(budget: bool, t: &Timeline) -> Result<f64, String> {
    let server = crate::grpc::GrpcServer::start_with_capacity(CAPACITY, SERVICE_MS)?;
    let listener = free_port();
    let filters = if budget {
        super::pack_stage_yaml("retry_budget", "lab_rb_grpc", "retry_budget", INBOUND_JSON)?
    } else {
        String::new()
    };
    let yaml = ProxyConfig::new(listener, free_port())
        .with_http_filters(&filters)
        .route(
            RouteSpec::new("app", "/", "app").with_timeout(Duration::from_millis(ROUTE_TIMEOUT_MS)),
        )
        .cluster(
            ClusterSpec::new("app", &[server.port()])
                .with_http2()
                .with_extra_yaml(UNLIMITED_RETRIES),
        )
        .render();
    let envoy = Envoy::start(&yaml, &EnvoyOptions::default())?;
    envoy.wait_listener(listener)?;
    let (steady, spike) = (
        CAPACITY_RPS * STEADY_PERCENT / 100.0,
        CAPACITY_RPS * SPIKE_PERCENT / 100.0,
    );
    let s = |ms: u64| ms as f64 / 1000.0;
    let phases = [
        (0.0, s(t.spike_ms), steady),
        (s(t.spike_ms), s(t.calm_ms), spike),
        (s(t.calm_ms), s(t.calm_ms) + 2.0, steady),
    ];
    let (t0, calls) = crate::grpc::storm(
        listener,
        &crate::grpc::RetryPolicy::standard(),
        &phases,
        Duration::from_millis(ROUTE_TIMEOUT_MS),
    )?;
    let (from, to) = (s(t.spike_ms), s(t.calm_ms));
    let made = calls
        .iter()
        .filter(|c| c.at_s >= from && c.at_s < to)
        .count();
    let reached = server
        .calls()
        .iter()
        .filter_map(|c| c.get("t").and_then(serde_json::Value::as_f64))
        .filter(|at| (from..to).contains(&(at - t0)))
        .count();
    drop(envoy);
    Ok(reached as f64 / made.max(1) as f64)
}

/// The headline numbers of one variant.
struct Measured {
    spike_amplification: f64,
    /// Requests per second reaching the dependency after the spike.
    after_load: f64,
    /// Successful client requests per second from the spike's start to the end of the run.
    goodput_from_spike: f64,
    /// After the spike, the most retries that reached the dependency in one second (its requests
    /// less the clients' requests of that second) as a share of the budget's rate at that time
    /// (20% of the client requests of the last 10 s window, per second, plus the floor of 1).
    max_retries_over_rate_after: f64,
    /// The worst second after the spike: its start (ms), its retries and the rate they are held to.
    worst_second_after: (u64, f64, f64),
}

/// Runs the scenario with every variant.
pub fn run(scale: Scale, progress: &mut Progress) -> Result<ScenarioReport, String> {
    let t = timeline(scale);
    let mut rows = Vec::new();
    let mut measured = Vec::new();
    let mut upstream_series = Vec::new();
    let mut success_series = Vec::new();
    let mut p99_series = Vec::new();
    for p in VARIANTS {
        progress.start("retry storm", p.name());
        let run = run_variant(p, scale, progress)?;
        progress.finish();
        let s = &run.samples;
        let counts = &run.upstream_counts;
        let spike: Vec<&Sample> = between(s, t.spike_ms, t.calm_ms).collect();
        let spike_s = (t.calm_ms - t.spike_ms) as f64 / 1000.0;
        let after_s = (t.total_ms - t.calm_ms) as f64 / 1000.0;
        let spike_amplification =
            upstream_between(counts, t.spike_ms, t.calm_ms) / spike.len().max(1) as f64;
        let overall_amplification = upstream_between(counts, 0, t.total_ms) / s.len().max(1) as f64;
        let after_load = upstream_between(counts, t.calm_ms, t.total_ms) / after_s;
        let spike_ok = ok_count(spike.iter().copied());
        let after_ok = ok_count(between(s, t.calm_ms, t.total_ms));
        let overall = Summary::of(s.iter());
        let recover = time_to_recover(s, t.calm_ms, t.total_ms);
        let mut max_retries_over_rate_after: f64 = 0.0;
        let mut worst_second_after = (t.calm_ms, 0.0, 0.0);
        let mut at = t.calm_ms;
        while at + 1_000 <= t.total_ms {
            // Exact when the dependency's log holds the second; else arrivals less client requests.
            let retries = run
                .retries
                .as_ref()
                .and_then(|r| r.between(at, at + 1_000))
                .map_or_else(
                    || {
                        upstream_between(counts, at, at + 1_000)
                            - between(s, at, at + 1_000).count() as f64
                    },
                    |n| n as f64,
                );
            let window = between(s, (at + 1_000).saturating_sub(10_000), at + 1_000).count();
            let rate = 0.2 * window as f64 / 10.0 + 1.0;
            if retries / rate > max_retries_over_rate_after {
                max_retries_over_rate_after = retries / rate;
                worst_second_after = (at, retries, rate);
            }
            at += 1_000;
        }
        measured.push(Measured {
            spike_amplification,
            after_load,
            goodput_from_spike: (spike_ok + after_ok) as f64 / (spike_s + after_s),
            max_retries_over_rate_after,
            worst_second_after,
        });
        rows.push(Variant {
            name: p.name().to_owned(),
            figures: vec![
                Figure {
                    name: "amplif. spike / all".into(),
                    value: format!("{spike_amplification:.2}× / {overall_amplification:.2}×"),
                },
                Figure {
                    name: "load after spike".into(),
                    value: format!(
                        "{after_load:.0} req/s ({:.0}%)",
                        100.0 * after_load / CAPACITY_RPS
                    ),
                },
                Figure {
                    name: "goodput spike/after".into(),
                    value: format!(
                        "{:.0} / {:.0} req/s",
                        spike_ok as f64 / spike_s,
                        after_ok as f64 / after_s
                    ),
                },
                Figure {
                    name: "client errors".into(),
                    value: format!("{:.1}%", 100.0 * overall.error_rate()),
                },
                Figure {
                    name: "p50 / p99".into(),
                    value: format!("{:.0} / {:.0} ms", overall.p50_ms, overall.p99_ms),
                },
                Figure {
                    name: "time to recover".into(),
                    value: recover.map_or("never".into(), |ms| format!("{ms} ms")),
                },
            ],
        });
        let mut up = Vec::new();
        for i in 0..t.total_ms.div_ceil(BUCKET_MS) {
            let from = i * BUCKET_MS;
            let to = (from + BUCKET_MS).min(t.total_ms);
            let n = upstream_between(counts, from, to);
            up.push((from as f64 / 1000.0, n * 1000.0 / (to - from).max(1) as f64));
        }
        upstream_series.push(Series {
            name: p.name().to_owned(),
            points: up,
        });
        success_series.push(series::bucketed(p.name(), s, t.total_ms, BUCKET_MS, |b| {
            if b.is_empty() {
                f64::NAN
            } else {
                series::success_percent(b)
            }
        }));
        p99_series.push(series::bucketed(p.name(), s, t.total_ms, BUCKET_MS, |b| {
            if b.is_empty() {
                f64::NAN
            } else {
                series::latency_p(b, 99.0)
            }
        }));
    }
    // Points sit at the start of their bucket: the charts end at the last bucket's start.
    let end_s = (t.total_ms.div_ceil(BUCKET_MS).saturating_sub(1) * BUCKET_MS) as f64 / 1000.0;
    upstream_series.push(Series {
        name: format!("capacity ({CAPACITY_RPS:.0} req/s)"),
        points: vec![(0.0, CAPACITY_RPS), (end_s, CAPACITY_RPS)],
    });
    let spike_span = [(
        t.spike_ms as f64 / 1000.0,
        t.calm_ms as f64 / 1000.0,
        "load spike",
    )];
    let charts = vec![
        Chart {
            title: "Requests reaching the dependency (req/s)",
            y_label: "req/s",
            series: &upstream_series,
            spans: &spike_span,
            y_max: None,
        }
        .render(),
        Chart {
            title: "Successful client requests (%)",
            y_label: "% ok",
            series: &success_series,
            spans: &spike_span,
            y_max: Some(100.0),
        }
        .render(),
        Chart {
            title: "Client p99 latency (ms)",
            y_label: "ms",
            series: &p99_series,
            spans: &spike_span,
            y_max: None,
        }
        .render(),
    ];
    let of = |p: Protection, f: fn(&Measured) -> f64| {
        VARIANTS
            .iter()
            .position(|v| *v == p)
            .and_then(|i| measured.get(i))
            .map_or(f64::NAN, f)
    };
    let amplification = |p| of(p, |m| m.spike_amplification);
    let after_load = |p| of(p, |m| m.after_load);
    let goodput = |p| of(p, |m| m.goodput_from_spike);
    let none_amp = amplification(Protection::None);
    let (outbound_amp, inbound_amp) = (
        amplification(Protection::Outbound),
        amplification(Protection::Inbound),
    );
    let (none_after, outbound_after) = (
        after_load(Protection::None),
        after_load(Protection::Outbound),
    );
    let (none_goodput, outbound_goodput) =
        (goodput(Protection::None), goodput(Protection::Outbound));
    progress.start("retry storm", "gRPC callers, no protection");
    let grpc_none = grpc_variant(false, &t)?;
    progress.finish();
    progress.start("retry storm", "gRPC callers, filter inbound");
    let grpc_inbound = grpc_variant(true, &t)?;
    progress.finish();
    for (name, amp) in [
        (
            "gRPC callers (grpcio, maxAttempts 4), no protection",
            grpc_none,
        ),
        (
            "gRPC callers (grpcio, maxAttempts 4), filter inbound",
            grpc_inbound,
        ),
    ] {
        rows.push(Variant {
            name: name.to_owned(),
            figures: vec![Figure {
                name: "amplification in spike".into(),
                value: format!("{amp:.2}×"),
            }],
        });
    }
    let native_amp = amplification(Protection::NativeBudget);
    let burst_after = of(Protection::Outbound, |m| m.max_retries_over_rate_after);
    let (worst_at, worst_retries, worst_rate) = VARIANTS
        .iter()
        .position(|v| *v == Protection::Outbound)
        .and_then(|i| measured.get(i))
        .map_or((0, f64::NAN, f64::NAN), |m| m.worst_second_after);
    let criteria = vec![
        Criterion {
            description: format!(
                "the budget has no burst at the spike's start: amplification during the spike ≤ the native retry_budget's and ≤ 1.2×, outbound ({outbound_amp:.2}×) and inbound ({inbound_amp:.2}×; native {native_amp:.2}×)"
            ),
            passed: outbound_amp <= native_amp.min(1.2) && inbound_amp <= native_amp.min(1.2),
        },
        Criterion {
            description: format!(
                "nor after it: no second after the spike sends more retries than the budget's rate plus 20% (20% of the last 10 s of client requests, per second, plus 1; the worst second: {:.0}% of it, {worst_retries:.0} retries against {worst_rate:.1} from {:.1} s)",
                100.0 * burst_after,
                worst_at as f64 / 1000.0
            ),
            passed: burst_after <= 1.2,
        },
        Criterion {
            description: format!(
                "gRPC callers retrying UNAVAILABLE make a storm without protection ({grpc_none:.2}×); the inbound budget and its pushback hold them at or below the HTTP variant's amplification ({grpc_inbound:.2}× vs {inbound_amp:.2}×)"
            ),
            passed: grpc_none >= 1.5 && grpc_inbound <= inbound_amp.max(1.0) + 0.05,
        },
        Criterion {
            description: format!(
                "without protection the spike becomes a storm: the dependency gets ≥ 1.8× the client requests during the spike ({none_amp:.2}×)"
            ),
            passed: none_amp >= 1.8,
        },
        Criterion {
            description: format!(
                "with the retry-budget filter the dependency gets ≤ 1.35× the client requests during the spike, outbound ({outbound_amp:.2}×) and inbound ({inbound_amp:.2}×)"
            ),
            passed: outbound_amp <= 1.35 && inbound_amp <= 1.35,
        },
        Criterion {
            description: format!(
                "without protection the storm outlives the spike (the dependency still gets {:.0}% of its capacity after it); with the filter it gets less than its capacity ({:.0}%), so the queue drains",
                100.0 * none_after / CAPACITY_RPS,
                100.0 * outbound_after / CAPACITY_RPS
            ),
            passed: none_after > CAPACITY_RPS && outbound_after < CAPACITY_RPS,
        },
        Criterion {
            description: format!(
                "from the spike to the end of the run the filter's goodput is at least twice no protection's ({outbound_goodput:.1} vs {none_goodput:.1} req/s)"
            ),
            passed: outbound_goodput >= 2.0 * none_goodput,
        },
    ];
    Ok(ScenarioReport {
        name: "Retry storm".into(),
        story: format!(
            "The dependency serves {CAPACITY} requests at once, {SERVICE_MS} ms each ({CAPACITY_RPS:.0} req/s); further requests wait in arrival order, and a queued request is served even when its caller has gone, as many servers do. Paced clients (each 1 req/s, starts spread evenly) send {STEADY_PERCENT:.0}% of capacity, {SPIKE_PERCENT:.0}% from {:.1} s to {:.1} s, then {STEADY_PERCENT:.0}% again, through an Envoy (2 workers) whose route retries 5xx and resets {NUM_RETRIES} times with a {PER_TRY_TIMEOUT_MS} ms per-try timeout and a {ROUTE_TIMEOUT_MS} ms route timeout; the cluster's default limit of 3 concurrent retries is lifted, as it is a retry limit of its own. During the spike the queue grows until attempts time out; every timeout is retried while the abandoned attempt stays queued, so a client request costs the dependency up to {} requests. At the usual load that is still twice its capacity: without protection the storm sustains itself after the spike and the dependency never recovers. No protection can save the requests of the spike itself: arrivals above capacity queue, and once the queue is longer than the per-try timeout every attempt fails, so goodput collapses during the spike with or without a budget. A budget decides what happens next. Envoy's native retry_budget (budget_percent 20, min_retry_concurrency 3) bounds concurrent retries to 20% of the requests active or pending on the cluster, at least 3: the retries per second it allows depend on how long retries take (back-off and per-try timeout) and how many requests are in flight, not on how many were sent. With few requests in flight the floor of 3 concurrent retries decides, a fixed retry rate whatever the traffic: after the spike it lets more retries into the queue than 20% of the requests would be, and the dependency recovers later. The retry-budget filter bounds the rate itself: retries may be 20% of the requests of the last 10 s plus 1 per second, shared by Envoy's workers; outbound it sits in the callers' Envoy, inbound in a second Envoy in front of the dependency, where it sheds retries beyond 20% of first attempts (the callers' Envoy, retrying freely, sets include_request_attempt_count and does not retry a shed). With the budget the dependency gets less than its capacity after the spike, and the queue the spike left drains at what is left over; recovery then takes seconds in proportion to the spike's length.",
            t.spike_ms as f64 / 1000.0,
            t.calm_ms as f64 / 1000.0,
            NUM_RETRIES + 1
        ),
        variants: rows,
        criteria,
        charts,
    })
}
