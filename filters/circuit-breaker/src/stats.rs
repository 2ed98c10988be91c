//! The breaker's stats: names, definitions and per-worker aggregation.
//!
//! Names are `<stat_prefix>.<key>.<name>` per breaker key and `<stat_prefix>.<name>` for the
//! instance. Envoy shows them as `wasmcustom.circuit_breaker.orders.rejected`; with the
//! `stats_tags` rule in `envoy-configs/circuit-breaker.yaml` Prometheus shows
//! `circuit_breaker_rejected{breaker_key="orders"}` (Envoy drops the
//! `wasmcustom` namespace there and adds no `envoy_` prefix).
//!
//! Per-request events (requests, failures, rejections) are added up per worker and flushed on
//! the tick: an increment is a host call, and the request path should make as few as it can.
//! Transitions are rare and counted at once, by the worker whose CAS made them, so the `state`
//! gauge (moved by ± increments) adds up to the true state across workers.

use resilience_core::breaker::{Transition, TripReason};
use resilience_host::host::Host;
use resilience_host::metrics::Metrics;
use resilience_host::shared::SharedDataTrouble;

use crate::worker::Entry;

/// Per-key counters; every one of them is defined when the key is first seen.
pub const ENTRY_COUNTERS: &[&str] = &[
    "requests",
    "failures",
    "slow_calls",
    "rejected",
    "dry_run_would_reject",
    "probes_admitted",
    "probes_succeeded",
    "probes_failed",
    "trips_failure_rate",
    "trips_slow_call_rate",
    "trips_consecutive_failures",
    "trips_probe_failed",
    "trips_held",
];

/// Instance-wide counters.
pub const GLOBAL_COUNTERS: &[&str] = &["keys_overflow"];

/// Per-key events since the last flush.
#[derive(Default, Debug)]
pub struct Pending {
    pub requests: u64,
    pub failures: u64,
    pub slow_calls: u64,
    pub rejected: u64,
    pub would_reject: u64,
    pub probes_admitted: u64,
    pub probes_succeeded: u64,
    pub probes_failed: u64,
    /// Trips the open-breaker governor (`max_open_percent`) kept back.
    pub trips_held: u64,
}

/// Instance-wide events since the last flush.
#[derive(Default, Debug)]
pub struct GlobalPending {
    pub keys_overflow: u64,
    /// Shared-data trouble, counted the same way by every filter.
    pub shared: SharedDataTrouble,
}

pub fn define_global<H: Host>(m: &mut Metrics<H>, prefix: &str) {
    for c in GLOBAL_COUNTERS.iter().chain(&SharedDataTrouble::NAMES) {
        m.define_counter(&format!("{prefix}.{c}"));
    }
}

pub fn define_entry<H: Host>(m: &mut Metrics<H>, base: &str) {
    for c in ENTRY_COUNTERS {
        m.define_counter(&format!("{base}.{c}"));
    }
    m.define_gauge(&format!("{base}.state"));
}

pub fn flush_entry<H: Host>(m: &mut Metrics<H>, e: &mut Entry) {
    let p = std::mem::take(&mut e.pending);
    m.count_all(
        &e.stat_base,
        &[
            ("requests", p.requests),
            ("failures", p.failures),
            ("slow_calls", p.slow_calls),
            ("rejected", p.rejected),
            ("dry_run_would_reject", p.would_reject),
            ("probes_admitted", p.probes_admitted),
            ("probes_succeeded", p.probes_succeeded),
            ("probes_failed", p.probes_failed),
            ("trips_held", p.trips_held),
        ],
    );
}

pub fn flush_global<H: Host>(m: &mut Metrics<H>, prefix: &str, g: &mut GlobalPending) {
    let p = std::mem::take(g);
    m.count_all(prefix, &[("keys_overflow", p.keys_overflow)]);
    m.count_all(prefix, &p.shared.pairs());
}

fn trip_counter(r: TripReason) -> &'static str {
    match r {
        TripReason::FailureRate => "trips_failure_rate",
        TripReason::SlowCallRate => "trips_slow_call_rate",
        TripReason::ConsecutiveFailures => "trips_consecutive_failures",
        TripReason::ProbeFailed => "trips_probe_failed",
    }
}

/// Count a transition this worker made: the state gauge moves by the difference, trips by reason.
pub fn transition<H: Host>(m: &mut Metrics<H>, base: &str, t: &Transition) {
    m.gauge_add(
        &format!("{base}.state"),
        t.to.gauge_value() - t.from.gauge_value(),
    );
    if t.to == resilience_core::breaker::State::Open {
        if let Some(r) = t.reason {
            m.count(&format!("{base}.{}", trip_counter(r)), 1);
        }
    }
}
