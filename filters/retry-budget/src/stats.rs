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

use resilience_host::metrics::Metrics;
use resilience_host::shared::SharedDataTrouble;

/// Per-key counters; every one of them is defined when the key is first seen.
pub const ENTRY_COUNTERS: &[&str] = &[
    "requests",
    "retries_allowed",
    "retries_capped",
    "retries_denied_budget",
    "retries_denied_deadline",
    "retries_denied_hop_guard",
    "retries_shed",
    "dry_run_would_deny",
    "retry_after_added",
];

/// The per-key gauge: budget tokens neither charged nor leased, as of the last write.
pub const BUDGET_GAUGE: &str = "budget_remaining";

/// Instance-wide counters.
pub const GLOBAL_COUNTERS: &[&str] = &["keys_overflow", "attempt_headers_invalid"];

/// Per-key events since the last flush.
#[derive(Default, Debug)]
pub struct Pending {
    pub requests: u64,
    pub retries_allowed: u64,
    pub retries_capped: u64,
    pub denied_budget: u64,
    pub denied_deadline: u64,
    pub denied_hop_guard: u64,
    pub retries_shed: u64,
    pub would_deny: u64,
    pub retry_after_added: u64,
}

/// Instance-wide events since the last flush.
#[derive(Default, Debug)]
pub struct GlobalPending {
    pub keys_overflow: u64,
    /// Shared-data trouble, counted the same way by every filter.
    pub shared: SharedDataTrouble,
    pub attempt_headers_invalid: u64,
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
    m.define_gauge(&format!("{base}.{BUDGET_GAUGE}"));
}

pub fn flush_entry(m: &mut Metrics, base: &str, pending: &mut Pending) {
    let p = std::mem::take(pending);
    m.count_all(
        base,
        &[
            ("requests", p.requests),
            ("retries_allowed", p.retries_allowed),
            ("retries_capped", p.retries_capped),
            ("retries_denied_budget", p.denied_budget),
            ("retries_denied_deadline", p.denied_deadline),
            ("retries_denied_hop_guard", p.denied_hop_guard),
            ("retries_shed", p.retries_shed),
            ("dry_run_would_deny", p.would_deny),
            ("retry_after_added", p.retry_after_added),
        ],
    );
}

pub fn flush_global(m: &mut Metrics, prefix: &str, g: &mut GlobalPending) {
    let p = std::mem::take(g);
    m.count_all(
        prefix,
        &[
            ("keys_overflow", p.keys_overflow),
            ("attempt_headers_invalid", p.attempt_headers_invalid),
        ],
    );
    m.count_all(prefix, &p.shared.pairs());
}
