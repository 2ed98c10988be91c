//! `cargo pack run`: the pack, live, on this machine.
//!
//! Builds the filters, installs the pinned Envoy into `.tools/` if needed, starts an example
//! upstream on 127.0.0.1:18080 (`/` healthy, `/flaky` fails half the time, `/slow` takes 1.5 s)
//! and an Envoy with `envoy-configs/circuit-breaker.yaml`, and prints where to send traffic.
//! Stops on Ctrl-C, or after `--for SECONDS`.

use std::time::{Duration, Instant};

use harness::envoy::{Envoy, EnvoyOptions};
use harness::paths::workspace_root;
use harness::upstream::{Behavior, Upstream};

const UPSTREAM_PORT: u16 = 18080;
const LISTENER: &str = "http://127.0.0.1:10000";
const ADMIN: &str = "http://127.0.0.1:9901";

pub fn run(args: &[String]) -> Result<(), String> {
    let run_for = match args {
        [] => None,
        [flag, secs] if flag == "--for" => {
            Some(Duration::from_secs(secs.parse().map_err(|_| {
                format!("--for takes whole seconds, got {secs:?}")
            })?))
        }
        other => {
            return Err(format!(
                "unexpected arguments {other:?}; usage: cargo pack run [--for SECONDS]"
            ))
        }
    };
    println!("building the filters (wasm32-wasip1, release)...");
    let out = crate::test::build_wasm()?;
    println!(
        "installing Envoy {} into .tools/ if needed...",
        harness::ENVOY_VERSION
    );
    harness::envoy::ensure_installed()?;

    let upstream = Upstream::start_at("example", UPSTREAM_PORT)?;
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

    let config_path = workspace_root().join("envoy-configs/circuit-breaker.yaml");
    let yaml = std::fs::read_to_string(&config_path)
        .map_err(|e| format!("reading {}: {e}", config_path.display()))?
        .replace(
            "target/wasm32-wasip1/release/",
            &format!("{}/", out.display()),
        );
    let envoy = Envoy::start(&yaml, &EnvoyOptions::default())?;

    println!(
        "\nThe pack is running (Envoy {}, {} workers, config {}).\n\n  \
         send traffic:   curl -i {LISTENER}/api/hello\n                  \
         for i in $(seq 40); do curl -s -o /dev/null -w '%{{http_code}} ' {LISTENER}/flaky; done; echo\n  \
         watch stats:    curl -s {ADMIN}/stats?filter=wasmcustom.circuit_breaker\n                  \
         curl -s {ADMIN}/stats/prometheus | grep circuit_breaker\n  \
         admin:          {ADMIN}/\n  \
         Envoy log:      {}\n\n\
         Press Ctrl-C to stop.",
        harness::ENVOY_VERSION,
        EnvoyOptions::default().concurrency,
        config_path.display(),
        envoy.dir().join("envoy.log").display(),
    );
    let started = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(200));
        if !envoy.is_running() {
            return Err(format!("Envoy stopped; log tail:\n{}", envoy.log_tail(30)));
        }
        if run_for.is_some_and(|d| started.elapsed() >= d) {
            println!("stopping after {:?}", run_for.unwrap_or_default());
            return Ok(());
        }
    }
}
