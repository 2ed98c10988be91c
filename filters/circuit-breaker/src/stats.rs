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
use resilience_host::counters;
use resilience_host::host::Host;
use resilience_host::metrics::Metrics;
use resilience_host::shared::SharedDataTrouble;

use crate::worker::Entry;

counters! {
    /// Per-key events since the last flush; every one is defined when the key is first seen.
    pub struct Pending {
        requests,
        failures,
        slow_calls,
        rejected,
        would_reject = "dry_run_would_reject",
        probes_admitted,
        probes_succeeded,
        probes_failed,
        /// Trips the open-breaker governor (`max_open_percent`) kept back.
        trips_held,
        /// Requests the breaker sent on its own while open (`active_probe`), and what came of
        /// them: a success moves the breaker to half-open at once.
        active_probes_sent,
        active_probes_succeeded,
        active_probes_failed,
    }
}

counters! {
    /// Instance-wide events since the last flush.
    pub struct GlobalPending {
        keys_overflow;
        /// Shared-data trouble, counted the same way by every filter.
        shared: SharedDataTrouble,
    }
}

/// The per-key gauge: the breaker's state, moved by the worker whose CAS made a transition.
const STATE_GAUGE: &str = "state";

pub fn define_global<H: Host>(m: &mut Metrics<H>, prefix: &str) {
    m.define_counters::<GlobalPending>(prefix);
}

pub fn define_entry<H: Host>(m: &mut Metrics<H>, base: &str) {
    m.define_counters::<Pending>(base);
    // Trips are counted as they happen, by reason (see `transition`).
    for r in TripReason::ALL {
        m.define_counter(&format!("{base}.{}", trip_counter(r)));
    }
    m.define_gauge(&format!("{base}.{STATE_GAUGE}"));
}

pub fn flush_entry<H: Host>(m: &mut Metrics<H>, e: &mut Entry) {
    m.flush(&e.stat_base, &mut e.pending);
}

pub fn flush_global<H: Host>(m: &mut Metrics<H>, prefix: &str, g: &mut GlobalPending) {
    m.flush(prefix, g);
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
        &format!("{base}.{STATE_GAUGE}"),
        t.to.gauge_value() - t.from.gauge_value(),
    );
    if t.to == resilience_core::breaker::State::Open {
        if let Some(r) = t.reason {
            m.count(&format!("{base}.{}", trip_counter(r)), 1);
        }
    }
}
