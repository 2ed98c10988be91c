//! Scenario: a replica restarts with a cold cache and gets its full share of traffic at once.
//!
//! An edge Envoy balances round robin over three replicas; each replica is an application
//! instance behind its own sidecar. The applications cache hot items: a hit is fast, but the
//! first request for an item after a start goes to a slow backing store that serves one miss at
//! a time. One replica restarts. It comes back with an empty cache, and round robin gives it a
//! third of the traffic at once: every request for an item it has not seen yet queues behind the
//! other misses, so callers wait hundreds of milliseconds on a replica that was meant to add
//! capacity, and their threads stay stuck there instead of serving anyone else.
//!
//! Envoy's native `slow_start_config` ramps a host's weight from the host's creation, or from an
//! active health check it passes after the cluster's latest membership change (Envoy's
//! `recalculateHostsInSlowStart`). Whether a replica that restarts on the same address (a
//! container restart keeps its pod IP) is ramped again therefore depends on that bookkeeping:
//! here, in a fleet that has served for over a minute, it is; with the outage half a second after
//! the fleet's first window (an earlier layout of this scenario, and the filter's e2e test) it
//! was not. Either way it cannot prime a cache. The slow-start filter starts the ramp at the
//! replica's first success after it was unhealthy, and first primes its cache with the hot items:
//! in `balance` mode from the edge (it picks the endpoint of an `ORIGINAL_DST` cluster), in
//! `admit` mode from the restarted replica's own sidecar (it sheds the excess with a fast 503 that
//! the edge retries on a warm replica).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::load::{self, LoadSpec, MixRequest, Sample};
use super::report::{Criterion, Figure, ScenarioReport, Variant};
use super::series::{self, between, Series, Summary};
use super::svg::Chart;
use super::topology::{self, Listener};
use super::{Progress, Scale};
use crate::client::request_with_timeout;
use crate::config::indent_yaml;
use crate::envoy::{free_port, Envoy, EnvoyOptions};
use crate::upstream::{Behavior, Upstream};

/// Replicas behind the edge; the first one restarts.
const REPLICAS: usize = 3;
/// The fair share of one replica (0–1).
const FAIR: f64 = 1.0 / REPLICAS as f64;
/// How long a cache hit takes.
const HIT_MS: u64 = 2;
/// What a cache miss adds; misses are served one at a time.
const MISS_MS: u64 = 30;
/// Client threads, each at `RPS_PER_THREAD` (falling behind while its request is slow).
const THREADS: usize = 24;
const RPS_PER_THREAD: f64 = 12.5;
const BUCKET_MS: u64 = 500;
/// The restarted replica counts as back at its fair share when it draws at least this much of
/// it over a sliding second (about 290 answers).
const FAIR_ENOUGH: f64 = 0.8;
/// "By the end": the last this many ms of the run. The filter's balance mode picks by weighted
/// random, so its share is binomial: about 430 answers make one σ about 2.3 points, and 80% of
/// the fair share is 3σ below it.
const LAST_MS: u64 = 1_500;
/// Once warm, balance mode's steady p99 may be at most this many times no protection's (what
/// the edge's own pick, the destination header and the alternates may cost).
const STEADY_P99_BOUND: f64 = 1.2;

struct Timeline {
    /// Distinct hot items the load asks for (one path each): each is one miss after the restart,
    /// so they must be well over 1% of the requests in the warm-up window for its p99 to see them.
    keys: u64,
    /// The replica stops (every replica warm until then).
    stop_ms: u64,
    /// It comes back, cache empty.
    restart_ms: u64,
    total_ms: u64,
    /// The ramp (`slow_start_window`, Envoy's and the filter's).
    window_ms: u64,
    /// "Early in the warm-up": the first this many ms after the restart.
    early_ms: u64,
    /// The steady state is measured in this many rounds per variant, each this long, the
    /// variants taking turns (see [`steady_rounds`]).
    steady_rounds: usize,
    round_ms: u64,
}

fn timeline(scale: Scale) -> Timeline {
    match scale {
        Scale::Quick => Timeline {
            keys: 40,
            stop_ms: 800,
            restart_ms: 1_400,
            total_ms: 6_800,
            window_ms: 2_000,
            early_ms: 1_000,
            steady_rounds: 5,
            round_ms: 1_000,
        },
        Scale::Full => Timeline {
            keys: 100,
            stop_ms: 3_000,
            restart_ms: 5_000,
            total_ms: 17_000,
            window_ms: 6_000,
            early_ms: 3_000,
            steady_rounds: 5,
            round_ms: 3_000,
        },
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Protection {
    None,
    /// Envoy's `slow_start_config` on the edge's round-robin cluster, with active health checks.
    Native,
    /// The filter at the edge, picking the endpoint, priming first.
    Balance,
    /// The filter in each replica's sidecar, priming first; the edge retries its sheds.
    Admit,
}

impl Protection {
    fn name(self) -> &'static str {
        match self {
            Protection::None => "no protection",
            Protection::Native => "Envoy slow_start_config",
            Protection::Balance => "filter balance + priming",
            Protection::Admit => "filter admit + priming",
        }
    }
}

const VARIANTS: [Protection; 4] = [
    Protection::None,
    Protection::Native,
    Protection::Balance,
    Protection::Admit,
];

/// How many requests the load's fixed sequence holds before it repeats.
const MIX_LEN: u64 = 4_096;

/// The load's requests: `GET /item/<k>` over `keys` hot items, spread by a fixed hash, so every
/// variant sends the same sequence.
fn item_mix(keys: u64) -> Arc<[MixRequest]> {
    (0..MIX_LEN)
        .map(|n| {
            let x = (n + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            MixRequest {
                method: "GET".into(),
                path: format!("/item/{}", (x ^ (x >> 29)) % keys.max(1)),
                headers: Vec::new(),
                body: None,
            }
        })
        .collect()
}

/// The filter's priming list: every hot item.
fn warmup_requests_json(keys: u64) -> String {
    let items: Vec<String> = (0..keys)
        .map(|i| format!(r#"{{"path": "/item/{i}"}}"#))
        .collect();
    format!("[{}]", items.join(", "))
}

/// The settings both filter modes share: the same curve as Envoy's (`min_weight_percent` 10,
/// aggression 1), unhealthy after 3 failures in a row, re-checked every 200 ms with the first
/// priming request, and all hot items primed at up to 200 per second.
fn common_json(t: &Timeline) -> String {
    format!(
        r#""sync_interval": "50ms", "slow_start_window": "{window_ms}ms", "min_weight_percent": 10,
  "unhealthy_after": 3, "recheck_interval": "200ms",
  "warmup_requests": {}, "warmup_rate": 200, "warmup_deadline": "10s""#,
        warmup_requests_json(t.keys),
        window_ms = t.window_ms
    )
}

/// The edge retries 5xx, resets and connect failures twice on another replica, after a short
/// back-off (in balance mode the filter has picked the replica, and a retry goes to it again).
const EDGE_RETRY: &str = "retry_policy:
  retry_on: \"5xx,reset,connect-failure\"
  num_retries: 2
  retry_host_predicate:
  - name: envoy.retry_host_predicates.previous_hosts
    typed_config:
      \"@type\": type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate
  host_selection_retry_max_attempts: 3
  retry_back_off: { base_interval: 0.005s, max_interval: 0.02s }
";

/// Envoy's default cluster limit of 3 concurrent retries is lifted: under load it would turn the
/// admit mode's retriable sheds into errors, a limit of its own.
const UNLIMITED_RETRIES: &str = "circuit_breakers:
  thresholds:
  - priority: DEFAULT
    max_retries: 10000
";

/// The ports of one run.
struct Ports<'a> {
    edge: u16,
    admin: u16,
    sidecars: &'a [u16],
    apps: &'a [u16],
}

/// The stat of replica `i`'s ramp phase (3 = warm), when the variant has a filter.
fn phase_stat(p: Protection, ports: &Ports<'_>, i: usize) -> Option<String> {
    match p {
        Protection::Balance => ports
            .sidecars
            .get(i)
            .map(|port| format!("wasmcustom.slow_start.127_0_0_1_{port}.phase")),
        Protection::Admit => Some(format!("wasmcustom.ss_{i}.self.phase")),
        Protection::None | Protection::Native => None,
    }
}

/// The stat counting replica `i`'s successful priming requests, when the variant primes.
fn primed_stat(p: Protection, ports: &Ports<'_>, i: usize) -> Option<String> {
    phase_stat(p, ports, i).map(|s| s.replace(".phase", ".priming_succeeded"))
}

/// One Envoy process playing two roles: the edge listener, which balances over the replicas,
/// and each replica's sidecar listener in front of its own application instance.
fn topology_yaml(p: Protection, ports: &Ports<'_>, t: &Timeline) -> Result<String, String> {
    let mut y = topology::header(ports.admin);
    let edge_filters = match p {
        Protection::Balance => {
            let endpoints: Vec<String> = ports
                .sidecars
                .iter()
                .map(|port| format!(r#"{{"address": "127.0.0.1:{port}"}}"#))
                .collect();
            let json = format!(
                r#"{{ "endpoints": [{}], "dispatch_cluster": "backends",
  {} }}"#,
                endpoints.join(", "),
                common_json(t)
            );
            indent_yaml(
                &super::pack_stage_yaml("slow_start", "lab_ss", "slow_start", &json)?,
                10,
            )
        }
        _ => String::new(),
    };
    let edge_cluster = if p == Protection::Balance {
        "backends"
    } else {
        "replicas"
    };
    let retry = indent_yaml(EDGE_RETRY, 18);
    y.push_str(
        &Listener {
            name: "edge",
            port: ports.edge,
            cluster: edge_cluster,
            route_extra: &retry,
            filters: &edge_filters,
            loopback_is_internal: false,
        }
        .yaml(),
    );
    for (i, port) in ports.sidecars.iter().enumerate() {
        let filters = match p {
            // Distinct plugin names and stat prefixes: one VM, an independent filter per sidecar.
            Protection::Admit => {
                let name = format!("ss_{i}");
                let json = format!(
                    r#"{{ "stat_prefix": "ss_{i}", "dispatch_cluster": "app_{i}",
  "health_checks": {{"paths": ["/healthz"]}},
  {} }}"#,
                    common_json(t)
                );
                indent_yaml(
                    &super::pack_stage_yaml(&name, "lab_ss", "slow_start", &json)?,
                    10,
                )
            }
            _ => String::new(),
        };
        let (name, cluster) = (format!("sidecar_{i}"), format!("app_{i}"));
        y.push_str(
            &Listener {
                name: &name,
                port: *port,
                cluster: &cluster,
                route_extra: "",
                filters: &filters,
                loopback_is_internal: false,
            }
            .yaml(),
        );
    }
    y.push_str("  clusters:\n");
    if p == Protection::Balance {
        y.push_str(&format!(
            "  - name: backends
    type: ORIGINAL_DST
    lb_policy: CLUSTER_PROVIDED
    connect_timeout: 1s
    original_dst_lb_config: {{ use_http_header: true }}
{}",
            indent_yaml(UNLIMITED_RETRIES, 4)
        ));
    } else {
        let mut extra = format!(
            "    lb_policy: ROUND_ROBIN\n{}",
            indent_yaml(UNLIMITED_RETRIES, 4)
        );
        if p == Protection::Native {
            // Envoy's answer with the same curve, and active health checks so that the outage is
            // noticed: a host that passes a check after the cluster's latest membership change
            // re-enters slow start.
            extra.push_str(&indent_yaml(
                &format!(
                    "round_robin_lb_config:
  slow_start_config:
    slow_start_window: {}s
    aggression: {{ default_value: 1.0, runtime_key: lab.slow_start.aggression }}
    min_weight_percent: {{ value: 10 }}
health_checks:
- timeout: 0.2s
  interval: 0.25s
  unhealthy_threshold: 1
  healthy_threshold: 1
  http_health_check: {{ path: /healthz }}
",
                    t.window_ms as f64 / 1000.0
                ),
                4,
            ));
        }
        y.push_str(&topology::static_cluster(
            "replicas",
            ports.sidecars,
            &extra,
        ));
    }
    for (i, port) in ports.apps.iter().enumerate() {
        y.push_str(&topology::static_cluster(&format!("app_{i}"), &[*port], ""));
    }
    Ok(y)
}

struct Run {
    samples: Vec<Sample>,
    /// When the replica restarted, in ms since the load began.
    restart_ms: u64,
    cold_name: String,
    /// Hot items the filter primed the restarted replica with during the run.
    primed: Option<u64>,
    /// What the protection made of the replica just before it came back.
    noticed: String,
}

/// What the protection makes of the stopped replica: still in rotation (round robin; the edge's
/// retries hide its connect failures), ejected by Envoy's active health check, or unhealthy in
/// the filter (which then sends it no traffic until a priming request succeeds).
fn seen_down(envoy: &Envoy, p: Protection, ports: &Ports<'_>) -> String {
    match p {
        Protection::None => "in rotation".to_owned(),
        Protection::Native => {
            let healthy = envoy.stat("cluster.replicas.membership_healthy");
            if healthy < REPLICAS as u64 {
                "ejected by HC".to_owned()
            } else {
                "not ejected".to_owned()
            }
        }
        Protection::Balance | Protection::Admit => {
            let phase = phase_stat(p, ports, 0).map_or(0, |s| envoy.stat(&s));
            if phase == 4 {
                "unhealthy".to_owned()
            } else {
                format!("phase {phase}")
            }
        }
    }
}

/// Requests through the edge, 4 threads at about 50 req/s each, until `serving` turns false.
fn background_traffic(port: u16, mix: &[MixRequest], serving: &AtomicBool) {
    std::thread::scope(|scope| {
        for thread in 0..4 {
            scope.spawn(move || {
                let mut n = thread;
                while serving.load(Ordering::Relaxed) {
                    if let Some(m) = mix.get(n % mix.len().max(1)) {
                        let _ = request_with_timeout(
                            port,
                            &m.method,
                            &m.path,
                            &[],
                            None,
                            Duration::from_secs(2),
                        );
                    }
                    n += 4;
                    std::thread::sleep(Duration::from_millis(20));
                }
            });
        }
    });
}

/// Waits until `stat` reads `value` (a gauge), or fails after `timeout` with the log tail.
fn wait_gauge(envoy: &Envoy, stat: &str, value: u64, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        if envoy.stat(stat) == value {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "{stat} is {} after {timeout:?}, wanted {value}\n{}",
                envoy.stat(stat),
                envoy.log_tail(30)
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One variant's replicas and Envoy, started and warm.
struct Fleet {
    p: Protection,
    apps: Vec<Upstream>,
    sidecars: Vec<u16>,
    app_ports: Vec<u16>,
    edge: u16,
    admin: u16,
    envoy: Envoy,
}

impl Fleet {
    fn ports(&self) -> Ports<'_> {
        Ports {
            edge: self.edge,
            admin: self.admin,
            sidecars: &self.sidecars,
            apps: &self.app_ports,
        }
    }
}

/// Starts variant `p`'s replicas and Envoy and warms them with traffic until every replica has
/// been serving for longer than the ramp (see below).
fn start_fleet(p: Protection, t: &Timeline, mix: &[MixRequest]) -> Result<Fleet, String> {
    let apps = (0..REPLICAS)
        .map(|i| Upstream::start_named(&format!("replica-{i}")))
        .collect::<Result<Vec<_>, _>>()?;
    for app in &apps {
        // Warm replicas: every item cached (no cold cache), each hit takes `HIT_MS`.
        app.set_default(Behavior::status(200).with_latency(Duration::from_millis(HIT_MS)));
    }
    let sidecars: Vec<u16> = (0..REPLICAS).map(|_| free_port()).collect();
    let app_ports: Vec<u16> = apps.iter().map(Upstream::port).collect();
    let ports = Ports {
        edge: free_port(),
        admin: free_port(),
        sidecars: &sidecars,
        apps: &app_ports,
    };
    let envoy = Envoy::start(&topology_yaml(p, &ports, t)?, &EnvoyOptions::default())?;
    envoy.wait_listener(ports.edge)?;
    for port in &sidecars {
        envoy.wait_listener(*port)?;
    }
    let ready = Instant::now();
    // Every replica has been in the fleet, serving, for longer than the ramp before the outage:
    // the filter's start-up ramps (priming included) are over, and Envoy's hosts are older than
    // its window. Meanwhile traffic flows, so that the measured load meets hot VMs.
    let serving = AtomicBool::new(true);
    std::thread::scope(|scope| -> Result<(), String> {
        let traffic = scope.spawn(|| background_traffic(ports.edge, mix, &serving));
        let mut waited = Ok(());
        for i in 0..REPLICAS {
            if let Some(stat) = phase_stat(p, &ports, i) {
                if waited.is_ok() {
                    let timeout = Duration::from_millis(t.window_ms + 10_000);
                    waited = wait_gauge(&envoy, &stat, 3, timeout);
                }
            }
        }
        if p == Protection::Native {
            // Envoy's hosts joined when it started: at the restart they must be older than the
            // window.
            let age = Duration::from_millis((t.window_ms + 500).saturating_sub(t.restart_ms));
            if let Some(left) = age.checked_sub(ready.elapsed()) {
                std::thread::sleep(left);
            }
        }
        serving.store(false, Ordering::Relaxed);
        let _ = traffic.join();
        waited
    })?;
    let (edge, admin) = (ports.edge, ports.admin);
    Ok(Fleet {
        p,
        apps,
        sidecars,
        app_ports,
        edge,
        admin,
        envoy,
    })
}

/// The steady state of every fleet, in interleaved rounds: each fleet takes the scenario's load
/// for `round_ms`, then the next one, `steady_rounds` times over. Returns each fleet's p50 and
/// p99 of every round.
///
/// Why rounds: on a shared machine a second of noise (another process, a compaction) moves a
/// p99 of a few thousand requests by tens of milliseconds, and variants run one after another
/// each meet their own noise (one full run put balance mode at 29.4 ms against 14.4 without
/// protection; with the samples dumped, that was one burst of 24 requests delayed 25 ms at
/// once, in every replica). Taking turns gives every variant the same share of the noise, and
/// the median round is the figure, so one noisy round moves nothing.
fn steady_rounds(
    fleets: &[Fleet],
    t: &Timeline,
    mix: &Arc<[MixRequest]>,
    progress: &mut Progress,
) -> Vec<Vec<(f64, f64)>> {
    let mut out = vec![Vec::new(); fleets.len()];
    for round in 0..t.steady_rounds {
        for (f, rounds) in fleets.iter().zip(out.iter_mut()) {
            let label = format!("{} (steady round {})", f.p.name(), round + 1);
            progress.start("cold replica", &label);
            let spec = load_spec(f.edge, mix, t.round_ms);
            let samples = load::run(&spec, |elapsed| {
                progress.update(&label, elapsed.as_secs_f64(), t.round_ms as f64 / 1000.0);
            });
            progress.finish();
            let s = Summary::of(&samples);
            rounds.push((s.p50_ms, s.p99_ms));
        }
    }
    out
}

/// The scenario's load on `edge` for `ms`: [`THREADS`] callers over the hot items' `mix`.
fn load_spec(edge: u16, mix: &Arc<[MixRequest]>, ms: u64) -> LoadSpec {
    LoadSpec::new(
        edge,
        "/item",
        THREADS,
        RPS_PER_THREAD,
        Duration::from_millis(ms),
    )
    .with_mix(Arc::clone(mix), 0)
    .staggered()
}

/// The outage on a warm fleet: the load, one replica stopped and restarted cold.
fn run_outage(
    f: &Fleet,
    t: &Timeline,
    mix: &Arc<[MixRequest]>,
    progress: &mut Progress,
) -> Result<Run, String> {
    let (p, envoy, ports) = (f.p, &f.envoy, f.ports());
    let cold = f.apps.first().ok_or("no replicas")?;
    let primed_before = primed_stat(p, &ports, 0).map(|s| envoy.stat(&s));
    let spec = load_spec(ports.edge, mix, t.total_ms);
    let (mut stopped, mut restart_ms) = (false, None);
    let mut restart_error = None;
    let mut noticed = None;
    let load_started = Instant::now();
    let samples = load::run(&spec, |elapsed| {
        let ms = elapsed.as_millis() as u64;
        if !stopped && ms >= t.stop_ms {
            cold.stop();
            stopped = true;
        }
        if restart_ms.is_none() && ms >= t.restart_ms {
            noticed = Some(seen_down(envoy, p, &ports));
            // A restarted process: its cache is empty.
            cold.set_cold_cache(Some(Duration::from_millis(MISS_MS)));
            if let Err(e) = cold.restart() {
                restart_error = Some(e);
            }
            restart_ms = Some(load_started.elapsed().as_millis() as u64);
        }
        progress.update(p.name(), elapsed.as_secs_f64(), t.total_ms as f64 / 1000.0);
    });
    if let Some(e) = restart_error {
        return Err(e);
    }
    let primed = match (primed_stat(p, &ports, 0), primed_before) {
        (Some(stat), Some(before)) => Some(envoy.stat(&stat).saturating_sub(before)),
        _ => None,
    };
    envoy.vm_failure().map_or(Ok(()), Err)?;
    Ok(Run {
        samples,
        restart_ms: restart_ms.unwrap_or(t.restart_ms),
        cold_name: cold.name().to_owned(),
        primed,
        noticed: noticed.unwrap_or_default(),
    })
}

/// Share (0–1) of a bucket's upstream answers that came from `replica`; NaN when none answered.
fn share(bucket: &[&Sample], replica: &str) -> f64 {
    let answered = bucket.iter().filter(|s| s.upstream.is_some()).count();
    if answered == 0 {
        return f64::NAN;
    }
    let from = bucket
        .iter()
        .filter(|s| s.upstream.as_deref() == Some(replica))
        .count();
    from as f64 / answered as f64
}

fn share_between(samples: &[Sample], replica: &str, from_ms: u64, to_ms: u64) -> f64 {
    let b: Vec<&Sample> = between(samples, from_ms, to_ms).collect();
    share(&b, replica)
}

/// How long after `from_ms` a second begins in which the replica draws `FAIR_ENOUGH` of its fair
/// share (checked every 100 ms); `None` within the run.
fn time_to_fair(samples: &[Sample], replica: &str, from_ms: u64, total_ms: u64) -> Option<u64> {
    let mut at = from_ms;
    while at + 1_000 <= total_ms {
        if share_between(samples, replica, at, at + 1_000) >= FAIR_ENOUGH * FAIR {
            return Some(at - from_ms);
        }
        at += 100;
    }
    None
}

/// The headline numbers of one variant.
struct Measured {
    early_share: f64,
    last_share: f64,
    warmup_p99: f64,
    /// The median round's p99 of the steady state.
    steady_p99: f64,
}

/// Runs the scenario with every variant.
pub fn run(scale: Scale, progress: &mut Progress) -> Result<ScenarioReport, String> {
    let t = timeline(scale);
    let mut rows = Vec::new();
    let mut measured = Vec::new();
    let mut share_series = Vec::new();
    let mut p99_series = Vec::new();
    let mix = item_mix(t.keys);
    let mut fleets = Vec::new();
    for p in VARIANTS {
        progress.start("cold replica", &format!("{} (starting, warming)", p.name()));
        fleets.push(start_fleet(p, &t, &mix)?);
        progress.finish();
    }
    let steady = steady_rounds(&fleets, &t, &mix, progress);
    for (f, rounds) in fleets.into_iter().zip(steady) {
        let p = f.p;
        progress.start("cold replica", p.name());
        let run = run_outage(&f, &t, &mix, progress)?;
        progress.finish();
        drop(f);
        let s = &run.samples;
        let cold = run.cold_name.as_str();
        let p50s: Vec<f64> = rounds.iter().map(|r| r.0).collect();
        let p99s: Vec<f64> = rounds.iter().map(|r| r.1).collect();
        let (steady_p50, steady_p99) = (
            series::percentile(&p50s, 50.0),
            series::percentile(&p99s, 50.0),
        );
        let warmup = Summary::of(between(s, run.restart_ms, run.restart_ms + t.window_ms));
        let early_share = share_between(s, cold, run.restart_ms, run.restart_ms + t.early_ms);
        let last_share = share_between(s, cold, t.total_ms.saturating_sub(LAST_MS), t.total_ms);
        let to_fair = time_to_fair(s, cold, run.restart_ms, t.total_ms);
        let nan0 = |v: f64| if v.is_finite() { v } else { 0.0 };
        measured.push(Measured {
            early_share: nan0(early_share),
            last_share: nan0(last_share),
            warmup_p99: warmup.p99_ms,
            steady_p99,
        });
        rows.push(Variant {
            name: p.name().to_owned(),
            figures: vec![
                Figure {
                    name: format!("share first {:.0} s", t.early_ms as f64 / 1000.0),
                    value: format!(
                        "{:.1}% (fair {:.1}%)",
                        100.0 * nan0(early_share),
                        100.0 * FAIR
                    ),
                },
                Figure {
                    name: "p99 warm-up".into(),
                    value: format!("{:.1} ms", warmup.p99_ms),
                },
                Figure {
                    name: "p50 / p99 steady".into(),
                    value: format!("{steady_p50:.1} / {steady_p99:.1} ms"),
                },
                Figure {
                    name: "errors warm-up".into(),
                    value: format!("{:.2}%", 100.0 * warmup.error_rate()),
                },
                Figure {
                    name: "time to fair share".into(),
                    value: to_fair.map_or("never".into(), |ms| format!("{ms} ms")),
                },
                Figure {
                    name: "down replica".into(),
                    value: run.noticed.clone(),
                },
                Figure {
                    name: "primed items".into(),
                    value: run.primed.map_or("-".into(), |n| n.to_string()),
                },
            ],
        });
        share_series.push(series::bucketed(p.name(), s, t.total_ms, BUCKET_MS, |b| {
            100.0 * share(b, cold)
        }));
        p99_series.push(series::bucketed(p.name(), s, t.total_ms, BUCKET_MS, |b| {
            series::latency_p(b, 99.0)
        }));
    }
    // Points sit at the start of their bucket: the charts end at the last bucket's start.
    let end_s = (t.total_ms.div_ceil(BUCKET_MS).saturating_sub(1) * BUCKET_MS) as f64 / 1000.0;
    share_series.push(Series {
        name: format!("fair share ({:.0}%)", 100.0 * FAIR),
        points: vec![(0.0, 100.0 * FAIR), (end_s, 100.0 * FAIR)],
    });
    let spans = [
        (
            t.stop_ms as f64 / 1000.0,
            t.restart_ms as f64 / 1000.0,
            "down",
        ),
        (
            t.restart_ms as f64 / 1000.0,
            (t.restart_ms + t.window_ms) as f64 / 1000.0,
            "warm-up window",
        ),
    ];
    let charts = vec![
        Chart {
            title: "The restarted replica's share of requests (%)",
            y_label: "% of requests",
            series: &share_series,
            spans: &spans,
            y_max: Some(50.0),
        }
        .render(),
        Chart {
            title: "Client p99 latency (ms)",
            y_label: "ms",
            series: &p99_series,
            spans: &spans,
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
    let warmup_p99 = |p| of(p, |m| m.warmup_p99);
    let early = |p| of(p, |m| m.early_share);
    let last = |p| of(p, |m| m.last_share);
    let none_p99 = warmup_p99(Protection::None);
    let queued_ms = 3.0 * MISS_MS as f64;
    let (balance_p99, admit_p99, native_p99) = (
        warmup_p99(Protection::Balance),
        warmup_p99(Protection::Admit),
        warmup_p99(Protection::Native),
    );
    let early_s = t.early_ms as f64 / 1000.0;
    let steady_p99 = |p| of(p, |m| m.steady_p99);
    let (none_steady, balance_steady, admit_steady) = (
        steady_p99(Protection::None),
        steady_p99(Protection::Balance),
        steady_p99(Protection::Admit),
    );
    let criteria = vec![
        Criterion {
            description: format!(
                "without protection the cold start is real: callers queue behind other misses, p99 after the restart ≥ 3 misses ({queued_ms:.0} ms): {none_p99:.1} ms"
            ),
            // A bound CPU noise cannot reach: noise only adds latency.
            passed: none_p99 >= queued_ms,
        },
        Criterion {
            description: format!(
                "with the filter the warm-up p99 is at most half of no protection's ({none_p99:.1} ms): balance {balance_p99:.1} ms, admit {admit_p99:.1} ms (Envoy slow_start_config: {native_p99:.1} ms)"
            ),
            passed: balance_p99 <= 0.5 * none_p99 && admit_p99 <= 0.5 * none_p99,
        },
        Criterion {
            description: format!(
                "once warm, the balance mode's pick costs little: its steady p99 is within {STEADY_P99_BOUND}× of no protection's ({none_steady:.1} ms): {balance_steady:.1} ms (admit {admit_steady:.1} ms; median of {} interleaved rounds){}",
                t.steady_rounds,
                if scale == Scale::Quick { "; judged in the full run only" } else { "" }
            ),
            // A p99 of one-second rounds moves by more than the bound with the machine's noise:
            // the quick run reports the figures, the full run judges them.
            passed: scale == Scale::Quick || balance_steady <= STEADY_P99_BOUND * none_steady,
        },
        Criterion {
            description: format!(
                "with the filter the restarted replica ramps: under half its fair share ({:.1}%) in the first {early_s:.0} s after the restart (balance {:.1}%, admit {:.1}%) and at least {:.0}% of it in the last {:.1} s (balance {:.1}%, admit {:.1}%)",
                100.0 * FAIR,
                100.0 * early(Protection::Balance),
                100.0 * early(Protection::Admit),
                100.0 * FAIR_ENOUGH,
                LAST_MS as f64 / 1000.0,
                100.0 * last(Protection::Balance),
                100.0 * last(Protection::Admit),
            ),
            passed: [Protection::Balance, Protection::Admit]
                .iter()
                .all(|p| early(*p) < 0.5 * FAIR && last(*p) >= FAIR_ENOUGH * FAIR),
        },
    ];
    Ok(ScenarioReport {
        name: "Cold replica".into(),
        story: format!(
            "One Envoy (2 workers) plays two roles: an edge listener balancing round robin over {REPLICAS} replicas, and each replica's sidecar listener in front of its own application instance. The edge retries 5xx, resets and connect failures twice on another replica (in balance mode on the replica the filter picked), after a jittered back-off of at most 20 ms. A cache hit takes {HIT_MS} ms; the load ({THREADS} client threads at {RPS_PER_THREAD} req/s each, their starts spread evenly over one interval, a thread waits for its answer) spreads over {} hot items, one URL each. At {:.1} s one replica stops; at {:.1} s it comes back with an empty cache: the first request for each item takes {MISS_MS} ms more, and misses are served one at a time, so a flood of misses queues and holds the callers' threads. Without protection round robin gives it a third of the traffic at once. Envoy's slow_start_config (round robin, same curve: window {:.0} s, aggression 1, min_weight_percent 10, active health checks every 0.25 s) ramps a host that passes an active health check after the cluster's latest membership change, as the restarted replica does here (every replica has served for longer than the window when it restarts), but it cannot prime the replica's cache. The slow-start filter (same curve) marks the replica unhealthy after 3 failures in a row, probes it every 200 ms with its first priming request, primes its cache with every hot item (at most 200/s) before it takes traffic, and ramps it from its first success: in balance mode at the edge, which picks each request's replica (an ORIGINAL_DST cluster), in admit mode in each replica's sidecar, which answers the requests over the ramp with a fast 503 that the edge retries on a warm replica (Envoy's default limit of 3 concurrent retries per cluster is lifted for every variant). The warm-up p99 and error rate cover the slow-start window after the restart (the same span for every variant). The steady p50 and p99 are measured before any outage, once every fleet is warm, in {} rounds of {:.1} s per variant with the variants taking turns (so that each meets the same share of the machine's noise); the figure is the median round.",
            t.keys,
            t.stop_ms as f64 / 1000.0,
            t.restart_ms as f64 / 1000.0,
            t.window_ms as f64 / 1000.0,
            t.steady_rounds,
            t.round_ms as f64 / 1000.0
        ),
        variants: rows,
        criteria,
        charts,
    })
}
