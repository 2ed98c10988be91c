//! The retry budget's stats: names, definitions and per-worker aggregation.
//!
//! Names are `<stat_prefix>.<key>.<name>` per budget key and `<stat_prefix>.<name>` for the
//! instance. Envoy shows them as `wasmcustom.retry_budget.orders.retries_shed`; with the
//! `stats_tags` rule in `envoy-configs/retry-budget.yaml` Prometheus shows
//! `retry_budget_retries_shed{budget_key="orders"}`.
//!
//! Per-request events are added up per worker and flushed on the tick: an increment is a host
//! call, and the request path should make as few as it can. The `budget_remaining` gauge moves by
//! the exact change each worker's CAS made to the shared budget, so the increments of all
//! workers add up to the level of the last write.

use resilience_host::counters;
use resilience_host::host::Host;
use resilience_host::metrics::Metrics;
use resilience_host::shared::SharedDataTrouble;

/// The per-key gauge: budget tokens neither charged nor leased, as of the last write.
pub const BUDGET_GAUGE: &str = "budget_remaining";

counters! {
    /// Per-key events since the last flush; every one is defined when the key is first seen.
    pub struct Pending {
        requests,
        retries_allowed,
        retries_capped,
        denied_budget = "retries_denied_budget",
        denied_deadline = "retries_denied_deadline",
        denied_hop_guard = "retries_denied_hop_guard",
        retries_shed,
        would_deny = "dry_run_would_deny",
        retry_after_added,
    }
}

counters! {
    /// Instance-wide events since the last flush.
    pub struct GlobalPending {
        keys_overflow,
        attempt_headers_invalid;
        /// Shared-data trouble, counted the same way by every filter.
        shared: SharedDataTrouble,
    }
}

pub fn define_global<H: Host>(m: &mut Metrics<H>, prefix: &str) {
    m.define_counters::<GlobalPending>(prefix);
}

pub fn define_entry<H: Host>(m: &mut Metrics<H>, base: &str) {
    m.define_counters::<Pending>(base);
    m.define_gauge(&format!("{base}.{BUDGET_GAUGE}"));
}

pub fn flush_entry<H: Host>(m: &mut Metrics<H>, base: &str, pending: &mut Pending) {
    m.flush(base, pending);
}

pub fn flush_global<H: Host>(m: &mut Metrics<H>, prefix: &str, g: &mut GlobalPending) {
    m.flush(prefix, g);
}
