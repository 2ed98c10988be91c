//! The failure lab: real outages, each run with and without the pack and against Envoy's native
//! answer, same machine, same seeds, results side by side.
//!
//! Why: "does it save me in an outage, and what does it cost?" is answered by measurement, not by
//! claims. Each scenario starts real Envoys and scripted upstreams on loopback, drives paced load,
//! scripts the outage on a timeline, and reports figures, pass criteria and charts. `cargo pack
//! lab` runs the full version and writes a self-contained HTML report; the test suite runs the
//! quick version of every scenario and fails if a criterion is missed.

pub mod blackhole;
pub mod cascade;
pub mod coldreplica;
pub mod garbage;
pub mod load;
pub mod report;
pub mod retrystorm;
pub mod series;
pub mod svg;
pub mod topology;

use std::io::Write as _;
use std::time::Instant;

pub use report::ScenarioReport;

/// How long scenarios run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scale {
    /// A few seconds per variant: the version the test suite runs.
    Quick,
    /// Tens of seconds per variant: the version `cargo pack lab` runs.
    Full,
}

/// A progress bar per scenario variant on stderr (quiet when `enabled` is false).
pub struct Progress {
    enabled: bool,
    label: String,
    started: Option<Instant>,
}

impl Progress {
    pub fn new(enabled: bool) -> Self {
        Progress {
            enabled,
            label: String::new(),
            started: None,
        }
    }

    pub fn start(&mut self, scenario: &str, variant: &str) {
        self.label = format!("{scenario}: {variant}");
        self.started = Some(Instant::now());
    }

    pub fn update(&mut self, _variant: &str, done_s: f64, total_s: f64) {
        if !self.enabled {
            return;
        }
        let width = 30usize;
        let frac = if total_s > 0.0 {
            (done_s / total_s).clamp(0.0, 1.0)
        } else {
            1.0
        };
        let filled = (frac * width as f64).round() as usize;
        let bar: String = "#".repeat(filled) + &".".repeat(width - filled);
        let mut err = std::io::stderr();
        let _ = write!(
            err,
            "\r  [{bar}] {done_s:5.1}/{total_s:.0} s  {}",
            self.label
        );
        let _ = err.flush();
    }

    pub fn finish(&mut self) {
        if self.enabled {
            let secs = self.started.map_or(0.0, |s| s.elapsed().as_secs_f64());
            eprintln!("  done in {secs:.1} s");
        }
    }
}

/// The scenarios, by name, in the order they run.
pub const SCENARIOS: &[&str] = &[
    "cascade",
    "retrystorm",
    "garbage",
    "blackhole",
    "coldreplica",
];

/// Run one scenario by name.
pub fn run_scenario(
    name: &str,
    scale: Scale,
    progress: &mut Progress,
) -> Result<ScenarioReport, String> {
    match name {
        "cascade" => cascade::run(scale, progress),
        "blackhole" => blackhole::run(scale, progress),
        "retrystorm" => retrystorm::run(scale, progress),
        "garbage" => garbage::run(scale, progress),
        "coldreplica" => coldreplica::run(scale, progress),
        other => Err(format!("unknown scenario {other:?}; known: {SCENARIOS:?}")),
    }
}

/// The HTTP filter entry for one filter as the lab runs it: a stage of the pack module
/// (`resilience_pack.wasm`, the shipped form) with only `member` on, configured with that
/// filter's own `json`. Stat names, shared-data keys and decision headers are the single filter's.
pub(crate) fn pack_stage_yaml(
    name: &str,
    vm_id: &str,
    member: &str,
    json: &str,
) -> Result<String, String> {
    let wasm = crate::wasm::filter_wasm("resilience-pack")?;
    Ok(crate::config::wasm_filter_yaml(
        name,
        name,
        vm_id,
        &wasm,
        &format!("{{\"{member}\": {json}}}"),
    ))
}
