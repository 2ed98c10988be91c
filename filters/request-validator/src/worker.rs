//! One worker's side of the validator: per-route entries, the shared-data calls that keep one
//! in-flight count and one latency histogram per route across workers, and the tick.
//!
//! # State in shared data
//!
//! Per route key (the matched `routes` entry's name, or `default`), under the namespace
//! `rpack/rv/<plugin name>`:
//!
//! - `<key>/in_flight` ([`InFlight`]): requests in flight per worker VM. Exact admission is the
//!   point of a concurrency limit, so admitting pays one compare-and-swap, and so does releasing
//!   (in `on_log`, which Envoy calls for every stream, resets included). A shed request reads the
//!   value and writes nothing. Each worker knows its own count exactly and rewrites its slot with
//!   it, so a lost update heals at the next write; the tick rewrites slots that are due for a
//!   lease refresh.
//! - `<key>/latency` ([`LatencyHistogram`]): response latencies for
//!   `deadline_from_observed_latency`. Each worker records into a local batch; the tick absorbs it
//!   (one CAS) and caches the percentile. Exactness is not the point there, so the request path
//!   pays nothing.
//!
//! Keys come only from the configuration (at most 257), so the key space is bounded by it and no
//! registry is needed. A shared-data error fails open (the request is admitted) and is counted.
//!
//! Every host call goes through the worker's [`Host`] (`H`, the real proxy by default), so
//! admission, release, the lease refresh and the held-request fallback also run natively, on
//! several fake workers sharing one in-memory store (see `tests.rs`).

use std::rc::Rc;

use proxy_wasm::types::StreamType;
use resilience_core::backoff::random_u64;
use resilience_core::estimator::{LatencyHistogram, LatencySamples};
use resilience_core::shedding::{Admission, InFlight};
use resilience_host::host::Host;
use resilience_host::metrics::{sanitize_segment, Metrics};
use resilience_host::resume::{resume_on, Resumed};
use resilience_host::shared::{self, cas_update_on, Update, DEFAULT_CAS_ATTEMPTS};
use resilience_host::wasm::WasmHost;

use crate::config::FilterConfig;
use crate::stats;

/// Longest plugin-name segment in shared-data keys.
const MAX_NAMESPACE_SEGMENT: usize = 64;

/// One route key as this worker sees it.
pub struct Entry {
    pub stat_base: String,
    in_flight_key: String,
    latency_key: String,
    /// Requests this worker admitted on the route and that have not ended (the local truth).
    pub in_flight: u32,
    /// The shared slot may not reflect `in_flight` (a write failed): rewrite it on the tick.
    in_flight_dirty: bool,
    last_write_ms: u64,
    pub samples: LatencySamples,
    /// The route's latency at the configured percentile, once enough samples were seen.
    pub observed_ms: Option<u64>,
    pub pending: stats::Pending,
    /// This worker's change of the route's `in_flight` gauge since the last flush.
    in_flight_delta: i64,
}

/// What admission decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admit {
    /// Admitted (the caller holds a permit and must release it).
    Admitted,
    /// Over the limit: shed (no permit).
    Shed { in_flight: u32, limit: u32 },
    /// Dry run over the limit: admitted, holds a permit, would have been shed.
    WouldShed { in_flight: u32, limit: u32 },
}

/// A request paused at its headers (hold mode), waiting for its first body callback.
struct Held {
    context_id: u32,
    since_ms: u64,
}

/// How long a request may stay held at its headers without any body callback before the tick
/// resumes it: Envoy calls the body callbacks of a request paused at its headers only with
/// `allow_on_headers_stop_iteration`; without it, this bounds the stall and the body is checked
/// the ordinary way.
pub const HOLD_GRACE_MS: u64 = 1_000;

/// All of one worker's entries for one filter instance, on host `H` (the real proxy unless a
/// test says otherwise).
pub struct Worker<H: Host = WasmHost> {
    host: H,
    pub config: Rc<FilterConfig>,
    /// This worker VM's id in the shared in-flight slots.
    pub owner: u64,
    pub entries: Vec<Entry>,
    pub metrics: Metrics<H>,
    pub global_pending: stats::GlobalPending,
    held: Vec<Held>,
    warned_hold: bool,
}

impl Worker {
    /// The worker's state on the real proxy.
    pub fn new(config: Rc<FilterConfig>, plugin: &str) -> Self {
        Worker::on(WasmHost, config, plugin)
    }
}

impl<H: Host + Clone> Worker<H> {
    /// The worker's state on `host`.
    pub fn on(host: H, config: Rc<FilterConfig>, plugin: &str) -> Self {
        let namespace = format!(
            "rpack/rv/{}",
            sanitize_segment(plugin, MAX_NAMESPACE_SEGMENT)
        );
        let mut metrics = Metrics::on(host.clone());
        let prefix = config.global.stat_prefix.clone();
        stats::define_global(&mut metrics, &prefix);
        let entries = config
            .keys
            .iter()
            .map(|key| {
                let stat_base = format!("{prefix}.{key}");
                stats::define_entry(&mut metrics, &stat_base);
                Entry {
                    stat_base,
                    in_flight_key: format!("{namespace}/{key}/in_flight"),
                    latency_key: format!("{namespace}/{key}/latency"),
                    in_flight: 0,
                    in_flight_dirty: false,
                    last_write_ms: 0,
                    samples: LatencySamples::new(),
                    observed_ms: None,
                    pending: stats::Pending::default(),
                    in_flight_delta: 0,
                }
            })
            .collect();
        Worker {
            host,
            config,
            owner: random_u64(),
            entries,
            metrics,
            global_pending: stats::GlobalPending::default(),
            held: Vec::new(),
            warned_hold: false,
        }
    }

    pub fn entry_mut(&mut self, index: usize) -> Option<&mut Entry> {
        self.entries.get_mut(index)
    }

    /// Takes a permit on entry `index` under CAS if fewer than `limit` requests are in flight
    /// across all workers (`dry_run`: takes it anyway and says whether it would have shed).
    /// Shared-data trouble fails open: admitted, counted, and the slot is rewritten on the tick.
    pub fn admit(&mut self, index: usize, limit: u32, dry_run: bool, now_ms: u64) -> Admit {
        let owner = self.owner;
        let lease = self.config.global.in_flight_lease_ms;
        let Some(entry) = self.entries.get_mut(index) else {
            return Admit::Admitted;
        };
        let own = entry.in_flight;
        let result = cas_update_on(
            &self.host,
            &entry.in_flight_key,
            DEFAULT_CAS_ATTEMPTS,
            |cur| {
                let (mut state, reset) = decode(cur);
                let answer = if dry_run {
                    state.admit_anyway(owner, own, limit, now_ms, lease)
                } else {
                    state.try_admit(owner, own, limit, now_ms, lease)
                };
                match answer {
                    Ok(a @ Admission::Admitted { .. }) => {
                        Update::Write(state.encode(), (Ok(a), reset))
                    }
                    Ok(a @ Admission::Shed { .. }) if dry_run => {
                        Update::Write(state.encode(), (Ok(a), reset))
                    }
                    Ok(a) => Update::Keep((Ok(a), reset)),
                    Err(full) => Update::Keep((Err(full), reset)),
                }
            },
        );
        let g = &mut self.global_pending;
        let admitted = |entry: &mut Entry, wrote: bool| {
            entry.in_flight = entry.in_flight.saturating_add(1);
            entry.in_flight_delta = entry.in_flight_delta.saturating_add(1);
            if wrote {
                entry.last_write_ms = now_ms;
            } else {
                entry.in_flight_dirty = true;
            }
        };
        match result {
            Ok((answer, reset)) => {
                if reset {
                    g.shared.state_resets += 1;
                }
                match answer {
                    Ok(Admission::Admitted { .. }) => {
                        admitted(entry, true);
                        Admit::Admitted
                    }
                    Ok(Admission::Shed { in_flight, limit }) if dry_run => {
                        admitted(entry, true);
                        Admit::WouldShed { in_flight, limit }
                    }
                    Ok(Admission::Shed { in_flight, limit }) => Admit::Shed { in_flight, limit },
                    Err(_) => {
                        g.slots_full += 1;
                        admitted(entry, false);
                        Admit::Admitted
                    }
                }
            }
            Err(e) => {
                g.shared.count(e);
                admitted(entry, false);
                Admit::Admitted
            }
        }
    }

    /// Gives back a permit of entry `index` (the stream ended, however it ended).
    pub fn release(&mut self, index: usize, now_ms: u64) {
        let Some(entry) = self.entries.get_mut(index) else {
            return;
        };
        entry.in_flight = entry.in_flight.saturating_sub(1);
        entry.in_flight_delta = entry.in_flight_delta.saturating_sub(1);
        let owner = self.owner;
        write_own(&self.host, entry, owner, now_ms, &mut self.global_pending);
    }

    /// Records one response latency for `deadline_from_observed_latency`.
    pub fn record_latency(&mut self, index: usize, latency_ms: u64) {
        if let Some(entry) = self.entries.get_mut(index) {
            entry.samples.record(latency_ms);
        }
    }

    /// Remembers a request paused at its headers (hold mode).
    pub fn hold(&mut self, context_id: u32, now_ms: u64) {
        self.held.push(Held {
            context_id,
            since_ms: now_ms,
        });
    }

    /// Forgets a held request (its body arrived, or it ended).
    pub fn unhold(&mut self, context_id: u32) {
        self.held.retain(|h| h.context_id != context_id);
    }

    /// The tick: resume requests held too long, refresh due in-flight slots, publish latencies,
    /// flush stats.
    pub fn tick(&mut self, now_ms: u64) {
        self.resume_overdue(now_ms);
        let config = Rc::clone(&self.config);
        let lease = config.global.in_flight_lease_ms;
        let owner = self.owner;
        let half_life = config.global.latency_half_life;
        for (index, entry) in self.entries.iter_mut().enumerate() {
            let refresh_due =
                entry.in_flight > 0 && now_ms.saturating_sub(entry.last_write_ms) >= lease / 4;
            if entry.in_flight_dirty || refresh_due {
                write_own(&self.host, entry, owner, now_ms, &mut self.global_pending);
            }
            if let Some(observed) = config.settings(index).deadline.observed {
                publish_latency(
                    &self.host,
                    entry,
                    half_life,
                    observed,
                    &mut self.global_pending,
                );
            } else {
                entry.samples.clear();
            }
            stats::flush_entry(
                &mut self.metrics,
                &entry.stat_base,
                &mut entry.pending,
                &mut entry.in_flight_delta,
            );
        }
        stats::flush_global(
            &mut self.metrics,
            &config.global.stat_prefix,
            &mut self.global_pending,
        );
    }

    fn resume_overdue(&mut self, now_ms: u64) {
        if self.held.is_empty() {
            return;
        }
        let (due, keep): (Vec<Held>, Vec<Held>) = std::mem::take(&mut self.held)
            .into_iter()
            .partition(|h| now_ms.saturating_sub(h.since_ms) >= HOLD_GRACE_MS);
        self.held = keep;
        for h in due {
            if resume_on(&self.host, h.context_id, StreamType::HttpRequest) == Resumed::Continued {
                self.global_pending.hold_fallbacks += 1;
                if !self.warned_hold {
                    self.warned_hold = true;
                    log::warn!(
                        "request_validator: a request held at its headers got no body callback for {HOLD_GRACE_MS} ms and was resumed; \
                         with hold_headers_for_body_checks, set allow_on_headers_stop_iteration: true in the Wasm filter's config"
                    );
                }
            }
        }
    }
}

/// Decodes the shared in-flight value; absent is empty, garbage is empty and flagged.
fn decode(cur: Option<&[u8]>) -> (InFlight, bool) {
    match cur {
        None | Some([]) => (InFlight::new(), false),
        Some(bytes) => match InFlight::decode(bytes) {
            Ok(s) => (s, false),
            Err(_) => (InFlight::new(), true),
        },
    }
}

/// Writes this worker's exact count into its slot (one CAS); on failure, retried on the tick.
fn write_own<H: Host>(
    host: &H,
    entry: &mut Entry,
    owner: u64,
    now_ms: u64,
    g: &mut stats::GlobalPending,
) {
    let own = entry.in_flight;
    let result = cas_update_on(host, &entry.in_flight_key, DEFAULT_CAS_ATTEMPTS, |cur| {
        let (mut state, reset) = decode(cur);
        match state.set_own(owner, own, now_ms) {
            Ok(()) => Update::Write(state.encode(), Ok(reset)),
            Err(full) => Update::Keep(Err(full)),
        }
    });
    match result {
        Ok(Ok(reset)) => {
            if reset {
                g.shared.state_resets += 1;
            }
            entry.in_flight_dirty = false;
            entry.last_write_ms = now_ms;
        }
        Ok(Err(_)) => {
            g.slots_full += 1;
            entry.in_flight_dirty = true;
        }
        Err(e) => {
            g.shared.count(e);
            entry.in_flight_dirty = true;
        }
    }
}

/// Absorbs this worker's batch into the shared histogram (or just reads it when the batch is
/// empty) and caches the percentile once enough samples were seen.
fn publish_latency<H: Host>(
    host: &H,
    entry: &mut Entry,
    half_life: u32,
    observed: crate::config::Observed,
    g: &mut stats::GlobalPending,
) {
    let decode_hist = |cur: Option<&[u8]>| -> (LatencyHistogram, bool) {
        match cur {
            None | Some([]) => (LatencyHistogram::new(half_life), false),
            Some(b) => match LatencyHistogram::decode(b, half_life) {
                Ok(h) => (h, false),
                Err(_) => (LatencyHistogram::new(half_life), true),
            },
        }
    };
    let result = if entry.samples.is_empty() {
        shared::get_on(host, &entry.latency_key).map(|v| {
            let (h, reset) = decode_hist(v.value.as_deref());
            (h, reset)
        })
    } else {
        let batch = &entry.samples;
        cas_update_on(host, &entry.latency_key, DEFAULT_CAS_ATTEMPTS, |cur| {
            let (mut h, reset) = decode_hist(cur);
            h.absorb(batch);
            Update::Write(h.encode(), (h, reset))
        })
    };
    match result {
        Ok((h, reset)) => {
            if reset {
                g.shared.state_resets += 1;
            }
            entry.samples.clear();
            entry.observed_ms = if h.total_seen() >= u64::from(observed.min_samples) {
                h.percentile(observed.percentile)
            } else {
                None
            };
        }
        Err(e) => g.shared.count(e),
    }
}
