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
use resilience_host::counters;
use resilience_host::counters::Counters;
use resilience_host::host::Host;
use resilience_host::metrics::Metrics;
use resilience_host::shared::SharedDataTrouble;

counters! {
    /// Per-key events since the last flush; every one is defined when the key is first seen.
    pub struct Pending {
        failures,
        padded,
        padding_ms,
        capped_max_padding,
        capped_deadline,
        abandoned,
        would_pad = "dry_run_would_pad",
        would_pad_ms = "dry_run_would_pad_ms",
        samples;
        skipped: Skipped,
    }
}

impl Pending {
    pub fn skip(&mut self, s: Skip) {
        if let Some(i) = Skip::ALL.iter().position(|x| *x == s) {
            if let Some(n) = self.skipped.0.get_mut(i) {
                *n = n.saturating_add(1);
            }
        }
    }
}

/// Failures not padded, by reason (indexed like [`Skip::ALL`]), counted as `skipped_<reason>`.
#[derive(Default, Debug, Clone)]
pub struct Skipped([u64; Skip::ALL.len()]);

/// What the name of every skip counter starts with; the reason follows.
const SKIPPED: &str = "skipped_";

impl Counters for Skipped {
    fn each_name(f: &mut dyn FnMut(&[&str])) {
        for s in Skip::ALL {
            f(&[SKIPPED, s.as_str()]);
        }
    }

    fn drain(&mut self, f: &mut dyn FnMut(&[&str], u64)) {
        for (s, n) in Skip::ALL.iter().zip(self.0.iter_mut()) {
            f(&[SKIPPED, s.as_str()], std::mem::take(n));
        }
    }
}

counters! {
    /// Instance-wide events since the last flush.
    pub struct GlobalPending {
        keys_overflow,
        resume_errors;
        /// Shared-data trouble, counted the same way by every filter.
        shared: SharedDataTrouble,
    }
}

pub fn define_global<H: Host>(m: &mut Metrics<H>, prefix: &str) {
    m.define_counters::<GlobalPending>(prefix);
    m.define_gauge(&format!("{prefix}.in_flight"));
}

pub fn define_entry<H: Host>(m: &mut Metrics<H>, base: &str) {
    m.define_counters::<Pending>(base);
    m.define_gauge(&format!("{base}.target_ms"));
}

pub fn flush_entry<H: Host>(m: &mut Metrics<H>, base: &str, p: &mut Pending) {
    m.flush(base, p);
}

pub fn flush_global<H: Host>(m: &mut Metrics<H>, prefix: &str, g: &mut GlobalPending) {
    m.flush(prefix, g);
}
