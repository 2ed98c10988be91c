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

use resilience_host::counters;
use resilience_host::counters::Counters;
use resilience_host::host::Host;
use resilience_host::metrics::Metrics;
use resilience_host::shared::SharedDataTrouble;

use crate::rules::Rule;

counters! {
    /// Per-key events since the last flush; every one is defined when the key is first seen.
    pub struct Pending {
        requests,
        rejected,
        would_reject = "dry_run_would_reject",
        bodies_checked;
        violations: Violations,
    }
}

impl Pending {
    pub fn violation(&mut self, rule: Rule) {
        if let Some(i) = Rule::ALL.iter().position(|r| *r == rule) {
            if let Some(n) = self.violations.0.get_mut(i) {
                *n = n.saturating_add(1);
            }
        }
    }
}

/// Requests that broke each rule (rejected in `enforce`, marked in `dry_run`), indexed like
/// [`Rule::ALL`] and counted as `violations_<rule>`.
#[derive(Default, Debug, Clone)]
pub struct Violations([u64; Rule::ALL.len()]);

/// What the name of every per-rule counter starts with; the rule's name follows.
const VIOLATIONS: &str = "violations_";

impl Counters for Violations {
    fn each_name(f: &mut dyn FnMut(&[&str])) {
        for r in Rule::ALL {
            f(&[VIOLATIONS, r.name()]);
        }
    }

    fn drain(&mut self, f: &mut dyn FnMut(&[&str], u64)) {
        for (r, n) in Rule::ALL.iter().zip(self.0.iter_mut()) {
            f(&[VIOLATIONS, r.name()], std::mem::take(n));
        }
    }
}

/// The per-key gauge: requests in flight, moved by ± increments only, so the workers' moves add
/// up to the route's true count.
const IN_FLIGHT_GAUGE: &str = "in_flight";

counters! {
    /// Instance-wide events since the last flush.
    pub struct GlobalPending {
        health_checks,
        slots_full,
        hold_fallbacks;
        /// Shared-data trouble, counted the same way by every filter.
        shared: SharedDataTrouble,
    }
}

pub fn define_global<H: Host>(m: &mut Metrics<H>, prefix: &str) {
    m.define_counters::<GlobalPending>(prefix);
}

pub fn define_entry<H: Host>(m: &mut Metrics<H>, base: &str) {
    m.define_counters::<Pending>(base);
    m.define_gauge(&format!("{base}.{IN_FLIGHT_GAUGE}"));
}

/// Flush the counts, and move the in-flight gauge by this worker's change since the last flush.
pub fn flush_entry<H: Host>(
    m: &mut Metrics<H>,
    base: &str,
    pending: &mut Pending,
    in_flight_delta: &mut i64,
) {
    m.flush(base, pending);
    let delta = std::mem::take(in_flight_delta);
    if delta != 0 {
        m.gauge_add(&format!("{base}.{IN_FLIGHT_GAUGE}"), delta);
    }
}

pub fn flush_global<H: Host>(m: &mut Metrics<H>, prefix: &str, g: &mut GlobalPending) {
    m.flush(prefix, g);
}
