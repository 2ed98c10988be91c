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
use resilience_host::metrics::Metrics;
use resilience_host::shared::SharedDataTrouble;

/// Per-endpoint counters; all defined when the endpoint is set up.
pub const ENDPOINT_COUNTERS: &[&str] = &[
    "requests",
    "admitted",
    "shed",
    "health_checks",
    "rate_capped",
    "dry_run_would_shed",
    "dry_run_would_pick",
    "successes",
    "failures",
    "retries_served",
    "ramps_started",
    "priming_started",
    "warm",
    "became_unhealthy",
    "pauses",
    "resumes",
    "silences",
    "priming_sent",
    "priming_succeeded",
    "priming_failed",
    "health_checks_sent",
    "health_checks_failed",
];

/// Per-endpoint gauges.
pub const ENDPOINT_GAUGES: &[&str] = &["effective_weight", "phase", "paused"];

/// Instance-wide counters.
pub const GLOBAL_COUNTERS: &[&str] = &[
    "destination_header_overridden",
    "no_ready_endpoint",
    "panic_routed",
    "callout_errors",
    "discovery_fetches",
    "discovery_failures",
    "discovery_rejected",
    "discovery_updates",
    "endpoints_overflow",
];

/// One endpoint's events since the last flush.
#[derive(Default, Debug, Clone, Copy)]
pub struct Pending {
    pub requests: u64,
    pub admitted: u64,
    pub shed: u64,
    pub health_checks: u64,
    pub rate_capped: u64,
    pub dry_run_would_shed: u64,
    pub dry_run_would_pick: u64,
    pub successes: u64,
    pub failures: u64,
    /// Requests this endpoint answered as an alternate, after the endpoints named before it
    /// failed (balance mode with `alternates`).
    pub retries_served: u64,
    pub priming_sent: u64,
    pub priming_succeeded: u64,
    pub priming_failed: u64,
    pub health_checks_sent: u64,
    pub health_checks_failed: u64,
}

/// Instance-wide events since the last flush.
#[derive(Default, Debug, Clone, Copy)]
pub struct GlobalPending {
    pub destination_header_overridden: u64,
    pub no_ready_endpoint: u64,
    pub panic_routed: u64,
    pub callout_errors: u64,
    pub discovery_fetches: u64,
    pub discovery_failures: u64,
    pub discovery_rejected: u64,
    pub discovery_updates: u64,
    pub endpoints_overflow: u64,
    /// Shared-data trouble, counted the same way by every filter.
    pub shared: SharedDataTrouble,
}

pub fn define_global(m: &mut Metrics, prefix: &str) {
    for c in GLOBAL_COUNTERS.iter().chain(&SharedDataTrouble::NAMES) {
        m.define_counter(&format!("{prefix}.{c}"));
    }
}

pub fn define_endpoint(m: &mut Metrics, base: &str) {
    for c in ENDPOINT_COUNTERS {
        m.define_counter(&format!("{base}.{c}"));
    }
    for g in ENDPOINT_GAUGES {
        m.define_gauge(&format!("{base}.{g}"));
    }
}

pub fn flush_endpoint(m: &mut Metrics, base: &str, p: &mut Pending) {
    let p = std::mem::take(p);
    m.count_all(
        base,
        &[
            ("requests", p.requests),
            ("admitted", p.admitted),
            ("shed", p.shed),
            ("health_checks", p.health_checks),
            ("rate_capped", p.rate_capped),
            ("dry_run_would_shed", p.dry_run_would_shed),
            ("dry_run_would_pick", p.dry_run_would_pick),
            ("successes", p.successes),
            ("failures", p.failures),
            ("retries_served", p.retries_served),
            ("priming_sent", p.priming_sent),
            ("priming_succeeded", p.priming_succeeded),
            ("priming_failed", p.priming_failed),
            ("health_checks_sent", p.health_checks_sent),
            ("health_checks_failed", p.health_checks_failed),
        ],
    );
}

pub fn flush_global(m: &mut Metrics, prefix: &str, g: &mut GlobalPending) {
    let p = std::mem::take(g);
    m.count_all(
        prefix,
        &[
            (
                "destination_header_overridden",
                p.destination_header_overridden,
            ),
            ("no_ready_endpoint", p.no_ready_endpoint),
            ("panic_routed", p.panic_routed),
            ("callout_errors", p.callout_errors),
            ("discovery_fetches", p.discovery_fetches),
            ("discovery_failures", p.discovery_failures),
            ("discovery_rejected", p.discovery_rejected),
            ("discovery_updates", p.discovery_updates),
            ("endpoints_overflow", p.endpoints_overflow),
        ],
    );
    m.count_all(prefix, &p.shared.pairs());
}

/// Count a transition this worker made.
pub fn event(m: &mut Metrics, base: &str, e: &Event) {
    let name = match e {
        Event::PrimingStarted => "priming_started",
        Event::RampStarted { .. } => "ramps_started",
        Event::Warm => "warm",
        Event::BecameUnhealthy { .. } => "became_unhealthy",
        Event::Silence => "silences",
        Event::Paused(_) => "pauses",
        Event::Resumed => "resumes",
    };
    m.count(&format!("{base}.{name}"), 1);
}

/// Move the gauges by what the shared state says is owed.
pub fn gauges(m: &mut Metrics, base: &str, d: &GaugeDeltas) {
    m.gauge_add(&format!("{base}.effective_weight"), d.weight);
    m.gauge_add(&format!("{base}.phase"), d.phase);
    m.gauge_add(&format!("{base}.paused"), d.paused);
}
