//! `cargo pack run`: the whole pack, live, on this machine.
//!
//! Builds the filters, installs the pinned Envoy into `.tools/` if needed, starts a simulated
//! fleet of four instances (`harness::fleet`: 127.0.0.1:18081–18084, control API on 18090) and an
//! Envoy with `envoy-configs/pack.yaml` — all five filters, as stages of the pack module — in
//! front of it, and prints where to send traffic and how to cause each outage. `--config FILE` runs one of the single-filter
//! configs instead, in front of one example upstream on 18080. Stops on Ctrl-C, or after
//! `--for SECONDS`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use harness::envoy::{Envoy, EnvoyOptions};
use harness::fleet::{Event, Fleet, FleetSpec};
use harness::paths::workspace_root;
use harness::upstream::{Behavior, Upstream};

const SINGLE_UPSTREAM_PORT: u16 = 18080;
const FLEET_BASE_PORT: u16 = 18081;
const CONTROL_PORT: u16 = 18090;
const LISTENER: &str = "http://127.0.0.1:10000";
const ADMIN: &str = "http://127.0.0.1:9901";
const PACK_CONFIG: &str = "envoy-configs/pack.yaml";

const USAGE: &str =
    "usage: cargo pack run [--config FILE] [--at AT:INSTANCE:ACTION]... [--for SECONDS]";

struct Args {
    config: PathBuf,
    run_for: Option<Duration>,
    events: Vec<Event>,
}

fn parse(args: &[String]) -> Result<Args, String> {
    let mut out = Args {
        config: workspace_root().join(PACK_CONFIG),
        run_for: None,
        events: Vec::new(),
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .ok_or_else(|| format!("{flag} needs a value; {USAGE}"))
        };
        match flag.as_str() {
            "--for" => {
                let secs = value()?;
                out.run_for =
                    Some(Duration::from_secs(secs.parse().map_err(|_| {
                        format!("--for takes whole seconds, got {secs:?}")
                    })?));
            }
            "--config" => {
                let path = PathBuf::from(value()?);
                out.config = if path.is_absolute() {
                    path
                } else {
                    workspace_root().join(path)
                };
            }
            "--at" => out.events.push(Event::parse(value()?)?),
            other => return Err(format!("unexpected argument {other:?}; {USAGE}")),
        }
    }
    Ok(out)
}

/// What runs behind Envoy: the fleet for the pack, or one example upstream for a single filter.
enum Backend {
    Fleet(Fleet),
    Single(Upstream),
}

fn start_fleet(events: Vec<Event>) -> Result<Backend, String> {
    let fleet = Fleet::start(&FleetSpec {
        instances: 4,
        base_port: Some(FLEET_BASE_PORT),
        latency: Duration::from_millis(20),
        // A restarted instance starts with an empty cache: slow start's priming is visible.
        cold: Some(Duration::from_millis(100)),
        ..FleetSpec::default()
    })
    .map_err(|e| format!("{e} (is another `cargo pack run` still running?)"))?;
    fleet.serve_control(CONTROL_PORT)?;
    fleet.run_script(events, true)?;
    Ok(Backend::Fleet(fleet))
}

fn start_single() -> Result<Backend, String> {
    let upstream = Upstream::start_at("example", SINGLE_UPSTREAM_PORT)?;
    upstream.set_behavior(
        "/flaky",
        Behavior::status(200)
            .failing_fraction(0.5, 7)
            .on_failure(Behavior::status(503)),
    );
    upstream.set_behavior(
        "/slow",
        Behavior::status(200).with_latency(Duration::from_millis(1_500)),
    );
    Ok(Backend::Single(upstream))
}

fn print_pack_tour(log: &str) {
    let c = format!("http://127.0.0.1:{CONTROL_PORT}");
    println!(
        "\nThe pack is running: Envoy {ver} (2 workers) with {PACK_CONFIG}: validator, circuit breaker,\n\
         retry budget and slow start at the edge, failure padding in each instance's sidecar,\n\
         in front of a simulated fleet of 4 instances (127.0.0.1:18081-18084, 20 ms each;\n\
         after a start, the first request per path takes 100 ms more: a cold cache).\n\n  \
         send traffic:   curl -i {LISTENER}/api/hello\n                  \
         for i in $(seq 20); do curl -s -o /dev/null -w '%{{http_code}} ' {LISTENER}/api/hello; done; echo\n  \
         garbage:        curl -i -X POST {LISTENER}/api/orders -H 'content-type: application/json' -d '{{\"items\":[]}}'\n  \
         outages:        curl -X POST {c}/instances/3/instant-fail     (black hole: padding holds its 503s)\n                  \
         for i in 0 1 2 3; do curl -s -o /dev/null -X POST {c}/instances/$i/errors=0.9; done   (breaker opens)\n                  \
         curl -X POST {c}/instances/1/restart=8s       (cold replica: slow start primes and ramps it)\n                  \
         curl -X POST {c}/instances/3/healthy          (and back)\n  \
         fleet status:   curl -s {c}/\n  \
         watch stats:    curl -s {ADMIN}/stats?filter=wasmcustom\n                  \
         curl -s {ADMIN}/stats/prometheus | grep -E '^(circuit_breaker|retry_budget|request_validator|slow_start|failure_padding)_'\n  \
         admin:          {ADMIN}/\n  \
         Envoy log:      {log}\n\n\
         Press Ctrl-C to stop.",
        ver = harness::ENVOY_VERSION,
    );
}

fn print_single_tour(config: &str, upstream: &Upstream, log: &str) {
    println!(
        "\nRunning Envoy {} (2 workers) with {config} in front of an example upstream on\n\
         127.0.0.1:{port} (`/flaky` fails half the time, `/slow` takes 1.5 s, the rest answers 200).\n\n  \
         send traffic:   curl -i {LISTENER}/api/hello\n                  \
         for i in $(seq 40); do curl -s -o /dev/null -w '%{{http_code}} ' {LISTENER}/flaky; done; echo\n  \
         watch stats:    curl -s {ADMIN}/stats?filter=wasmcustom\n  \
         admin:          {ADMIN}/\n  \
         Envoy log:      {log}\n\n\
         Press Ctrl-C to stop.",
        harness::ENVOY_VERSION,
        port = upstream.port(),
    );
}

pub fn run(args: &[String]) -> Result<(), String> {
    let args = parse(args)?;
    let is_pack = args.config == workspace_root().join(PACK_CONFIG);
    if !is_pack && !args.events.is_empty() {
        return Err("--at scripts the fleet, which runs only with the pack config".into());
    }
    println!("building the filters (wasm32-wasip1, release)...");
    let out = crate::test::build_wasm()?;
    println!(
        "installing Envoy {} into .tools/ if needed...",
        harness::ENVOY_VERSION
    );
    harness::envoy::ensure_installed()?;

    let backend = if is_pack {
        start_fleet(args.events)?
    } else {
        start_single()?
    };
    let yaml = std::fs::read_to_string(&args.config)
        .map_err(|e| format!("reading {}: {e}", args.config.display()))?
        .replace(
            "target/wasm32-wasip1/release/",
            &format!("{}/", out.display()),
        );
    println!("starting Envoy (the validator's module takes a few seconds to load)...");
    let envoy = Envoy::start(&yaml, &EnvoyOptions::default())?;
    let log = envoy.dir().join("envoy.log").display().to_string();
    match &backend {
        Backend::Fleet(_) => print_pack_tour(&log),
        Backend::Single(u) => print_single_tour(&args.config.display().to_string(), u, &log),
    }
    let started = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(200));
        if !envoy.is_running() {
            return Err(format!("Envoy stopped; log tail:\n{}", envoy.log_tail(30)));
        }
        if args.run_for.is_some_and(|d| started.elapsed() >= d) {
            println!("stopping after {:?}", args.run_for.unwrap_or_default());
            if let Backend::Fleet(fleet) = &backend {
                println!("fleet: {}", fleet.status());
            }
            return Ok(());
        }
    }
}
