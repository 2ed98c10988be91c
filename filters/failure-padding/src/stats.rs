//! The filter's stats: names, definitions and per-worker aggregation.
//!
//! Names are `<stat_prefix>.<key>.<name>` per key and `<stat_prefix>.<name>` for the instance.
//! Envoy shows them as `wasmcustom.failure_padding.orders.padded`; with the `stats_tags` rule in
//! `envoy-configs/failure-padding.yaml` Prometheus shows
//! `failure_padding_padded{padding_key="orders"}`.
//!
//! Per-request events are added up per worker and flushed on the sync tick: an increment is a host
//! call, and the request path should make as few as it can. The two gauges move by ± increments
//! made exactly once per real change, so they add up across workers: `target_ms` by the worker
//! whose compare-and-swap changed the shared histogram (old target → new target), `in_flight` by
//! the worker that takes or gives back a slot.

use resilience_core::padding::Skip;
use resilience_host::metrics::Metrics;
use resilience_host::shared::SharedDataTrouble;

/// Per-key counters; every one of them is defined when the key is first seen.
pub const ENTRY_COUNTERS: &[&str] = &[
    "failures",
    "padded",
    "padding_ms",
    "capped_max_padding",
    "capped_deadline",
    "abandoned",
    "dry_run_would_pad",
    "dry_run_would_pad_ms",
    "skipped_cold",
    "skipped_already_slow",
    "skipped_deadline",
    "skipped_in_flight_cap",
    "skipped_health_check",
    "skipped_error",
    "samples",
];

/// Instance-wide counters.
pub const GLOBAL_COUNTERS: &[&str] = &["keys_overflow", "resume_errors"];

/// Per-key events since the last flush.
#[derive(Default, Debug)]
pub struct Pending {
    pub failures: u64,
    pub padded: u64,
    pub padding_ms: u64,
    pub capped_max_padding: u64,
    pub capped_deadline: u64,
    pub abandoned: u64,
    pub would_pad: u64,
    pub would_pad_ms: u64,
    /// Indexed like [`Skip::ALL`].
    pub skipped: [u64; 6],
    pub samples: u64,
}

impl Pending {
    pub fn skip(&mut self, s: Skip) {
        if let Some(i) = Skip::ALL.iter().position(|x| *x == s) {
            if let Some(n) = self.skipped.get_mut(i) {
                *n += 1;
            }
        }
    }
}

/// Instance-wide events since the last flush.
#[derive(Default, Debug)]
pub struct GlobalPending {
    pub keys_overflow: u64,
    /// Shared-data trouble, counted the same way by every filter.
    pub shared: SharedDataTrouble,
    pub resume_errors: u64,
}

pub fn define_global(m: &mut Metrics, prefix: &str) {
    for c in GLOBAL_COUNTERS.iter().chain(&SharedDataTrouble::NAMES) {
        m.define_counter(&format!("{prefix}.{c}"));
    }
    m.define_gauge(&format!("{prefix}.in_flight"));
}

pub fn define_entry(m: &mut Metrics, base: &str) {
    for c in ENTRY_COUNTERS {
        m.define_counter(&format!("{base}.{c}"));
    }
    m.define_gauge(&format!("{base}.target_ms"));
}

pub fn flush_entry(m: &mut Metrics, base: &str, p: Pending) {
    m.count_all(
        base,
        &[
            ("failures", p.failures),
            ("padded", p.padded),
            ("padding_ms", p.padding_ms),
            ("capped_max_padding", p.capped_max_padding),
            ("capped_deadline", p.capped_deadline),
            ("abandoned", p.abandoned),
            ("dry_run_would_pad", p.would_pad),
            ("dry_run_would_pad_ms", p.would_pad_ms),
            ("samples", p.samples),
        ],
    );
    for (s, n) in Skip::ALL.iter().zip(p.skipped) {
        if n > 0 {
            m.count(&format!("{base}.skipped_{}", s.as_str()), n);
        }
    }
}

pub fn flush_global(m: &mut Metrics, prefix: &str, g: &mut GlobalPending) {
    let p = std::mem::take(g);
    m.count_all(
        prefix,
        &[
            ("keys_overflow", p.keys_overflow),
            ("resume_errors", p.resume_errors),
        ],
    );
    m.count_all(prefix, &p.shared.pairs());
}
