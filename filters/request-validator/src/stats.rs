//! The validator's stats: names, definitions and per-worker aggregation.
//!
//! Names are `<stat_prefix>.<key>.<name>` per route key and `<stat_prefix>.<name>` for the filter
//! instance; Envoy shows them as `wasmcustom.request_validator.orders.violations_json_schema`,
//! and with the `stats_tags` rule in `envoy-configs/request-validator.yaml` Prometheus shows
//! `request_validator_violations_json_schema{route_key="orders"}`.
//!
//! Per-request events are added up per worker and flushed on the tick (an increment is a host
//! call; the request path should make few). The `in_flight` gauge moves by ± increments only, so
//! the workers' moves add up to the route's true count.

use resilience_host::metrics::Metrics;
use resilience_host::shared::SharedDataTrouble;

use crate::rules::Rule;

/// Per-key counters besides the per-rule ones.
pub const ENTRY_COUNTERS: &[&str] = &[
    "requests",
    "rejected",
    "dry_run_would_reject",
    "bodies_checked",
];

/// Instance-wide counters.
pub const GLOBAL_COUNTERS: &[&str] = &["health_checks", "slots_full", "hold_fallbacks"];

/// The per-rule counter's name: requests that broke `rule` (rejected in `enforce`, marked in
/// `dry_run`).
pub fn violation_counter(rule: Rule) -> String {
    format!("violations_{}", rule.name())
}

/// Per-key events since the last flush.
#[derive(Default, Debug)]
pub struct Pending {
    pub requests: u64,
    pub rejected: u64,
    pub would_reject: u64,
    pub bodies_checked: u64,
    pub violations: [u64; Rule::ALL.len()],
    pub in_flight_delta: i64,
}

impl Pending {
    pub fn violation(&mut self, rule: Rule) {
        if let Some(i) = Rule::ALL.iter().position(|r| *r == rule) {
            if let Some(n) = self.violations.get_mut(i) {
                *n = n.saturating_add(1);
            }
        }
    }
}

/// Instance-wide events since the last flush.
#[derive(Default, Debug)]
pub struct GlobalPending {
    pub health_checks: u64,
    /// Shared-data trouble, counted the same way by every filter.
    pub shared: SharedDataTrouble,
    pub slots_full: u64,
    pub hold_fallbacks: u64,
}

pub fn define_global(m: &mut Metrics, prefix: &str) {
    for c in GLOBAL_COUNTERS.iter().chain(&SharedDataTrouble::NAMES) {
        m.define_counter(&format!("{prefix}.{c}"));
    }
}

pub fn define_entry(m: &mut Metrics, base: &str) {
    for c in ENTRY_COUNTERS {
        m.define_counter(&format!("{base}.{c}"));
    }
    for r in Rule::ALL {
        m.define_counter(&format!("{base}.{}", violation_counter(r)));
    }
    m.define_gauge(&format!("{base}.in_flight"));
}

pub fn flush_entry(m: &mut Metrics, base: &str, pending: &mut Pending) {
    let p = std::mem::take(pending);
    m.count_all(
        base,
        &[
            ("requests", p.requests),
            ("rejected", p.rejected),
            ("dry_run_would_reject", p.would_reject),
            ("bodies_checked", p.bodies_checked),
        ],
    );
    for (rule, n) in Rule::ALL.iter().zip(p.violations) {
        if n > 0 {
            m.count(&format!("{base}.{}", violation_counter(*rule)), n);
        }
    }
    if p.in_flight_delta != 0 {
        m.gauge_add(&format!("{base}.in_flight"), p.in_flight_delta);
    }
}

pub fn flush_global(m: &mut Metrics, prefix: &str, g: &mut GlobalPending) {
    let p = std::mem::take(g);
    m.count_all(
        prefix,
        &[
            ("health_checks", p.health_checks),
            ("slots_full", p.slots_full),
            ("hold_fallbacks", p.hold_fallbacks),
        ],
    );
    m.count_all(prefix, &p.shared.pairs());
}
