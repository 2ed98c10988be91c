//! The filter's stats: names, definitions and per-worker aggregation.
//!
//! Names are `<stat_prefix>.<key>.<name>`, where the key is the endpoint's address with every
//! character outside `[A-Za-z0-9_-]` turned into `_` (`127_0_0_1_8080`), or `self` in admit
//! mode; instance-wide stats are `<stat_prefix>.<name>`.
//!
//! Per-request events are added up per worker and flushed on the tick. Transitions are counted
//! by the worker whose compare-and-swap made them. The three gauges (`effective_weight`,
//! `phase`, `paused`) move only by the differences that [`resilience_core::ramp::EndpointRamp`]
//! hands out under CAS, so across workers they add up to the true value.

use resilience_core::ramp::{Event, GaugeDeltas};
use resilience_host::counters;
use resilience_host::host::Host;
use resilience_host::metrics::Metrics;
use resilience_host::shared::SharedDataTrouble;

counters! {
    /// One endpoint's events since the last flush; all defined when the endpoint is set up.
    #[derive(Copy)]
    pub struct Pending {
        requests,
        admitted,
        shed,
        health_checks,
        rate_capped,
        dry_run_would_shed,
        dry_run_would_pick,
        successes,
        failures,
        /// Requests this endpoint answered as an alternate, after the endpoints named before it
        /// failed (balance mode with `alternates`).
        retries_served,
        priming_sent,
        priming_succeeded,
        priming_failed,
        health_checks_sent,
        health_checks_failed,
    }
}

/// Per-endpoint counters of transitions, counted at once by [`event`].
const EVENT_COUNTERS: &[&str] = &[
    "ramps_started",
    "priming_started",
    "warm",
    "became_unhealthy",
    "pauses",
    "resumes",
    "silences",
];

/// Per-endpoint gauges.
pub const ENDPOINT_GAUGES: &[&str] = &["effective_weight", "phase", "paused"];

counters! {
    /// Instance-wide events since the last flush.
    #[derive(Copy)]
    pub struct GlobalPending {
        destination_header_overridden,
        no_ready_endpoint,
        panic_routed,
        callout_errors,
        discovery_fetches,
        discovery_failures,
        discovery_rejected,
        discovery_updates,
        endpoints_overflow;
        /// Shared-data trouble, counted the same way by every filter.
        shared: SharedDataTrouble,
    }
}

pub fn define_global<H: Host>(m: &mut Metrics<H>, prefix: &str) {
    m.define_counters::<GlobalPending>(prefix);
}

pub fn define_endpoint<H: Host>(m: &mut Metrics<H>, base: &str) {
    m.define_counters::<Pending>(base);
    for c in EVENT_COUNTERS {
        m.define_counter(&format!("{base}.{c}"));
    }
    for g in ENDPOINT_GAUGES {
        m.define_gauge(&format!("{base}.{g}"));
    }
}

pub fn flush_endpoint<H: Host>(m: &mut Metrics<H>, base: &str, p: &mut Pending) {
    m.flush(base, p);
}

pub fn flush_global<H: Host>(m: &mut Metrics<H>, prefix: &str, g: &mut GlobalPending) {
    m.flush(prefix, g);
}

/// The counter a transition counts under (one of [`EVENT_COUNTERS`]).
fn event_counter(e: &Event) -> &'static str {
    match e {
        Event::PrimingStarted => "priming_started",
        Event::RampStarted { .. } => "ramps_started",
        Event::Warm => "warm",
        Event::BecameUnhealthy { .. } => "became_unhealthy",
        Event::Silence => "silences",
        Event::Paused(_) => "pauses",
        Event::Resumed => "resumes",
    }
}

/// Count a transition this worker made.
pub fn event<H: Host>(m: &mut Metrics<H>, base: &str, e: &Event) {
    m.count(&format!("{base}.{}", event_counter(e)), 1);
}

/// Move the gauges by what the shared state says is owed.
pub fn gauges<H: Host>(m: &mut Metrics<H>, base: &str, d: &GaugeDeltas) {
    m.gauge_add(&format!("{base}.effective_weight"), d.weight);
    m.gauge_add(&format!("{base}.phase"), d.phase);
    m.gauge_add(&format!("{base}.paused"), d.paused);
}

#[cfg(test)]
mod tests {
    use resilience_core::ramp::{Event, PauseReason, Phase};

    use super::{event_counter, EVENT_COUNTERS};

    #[test]
    fn every_transition_counts_under_a_counter_defined_for_each_endpoint() {
        let events = [
            Event::PrimingStarted,
            Event::RampStarted { from: Phase::New },
            Event::Warm,
            Event::BecameUnhealthy {
                from: Phase::Ramping,
            },
            Event::Silence,
            Event::Paused(PauseReason::Latency),
            Event::Resumed,
        ];
        let mut used: Vec<&str> = events.iter().map(event_counter).collect();
        used.sort_unstable();
        let mut defined = EVENT_COUNTERS.to_vec();
        defined.sort_unstable();
        assert_eq!(used, defined);
    }
}
