//! One worker's side of the filter: learned targets, held responses, the in-flight slots, and the
//! tick that releases and syncs them.
//!
//! # Learning, shared by all workers
//!
//! Each key (a route) has one decaying latency histogram in shared data
//! ([`resilience_core::estimator::LatencyHistogram`]). A worker records the latency of each
//! success into its own [`LatencySamples`] batch (no host call); every `sync_interval` it absorbs
//! the batch into the shared histogram with one compare-and-swap per key, or, with nothing new,
//! re-reads it, and caches the key's padding target. Every worker therefore pads to the same
//! target, learned from all workers' traffic, at most one `sync_interval` old. The histogram
//! forgets only as new successes arrive, so a host that has failed for an hour still pads to the
//! latency it had when it last succeeded.
//!
//! # Holding, released on time
//!
//! A held response waits in this worker's [`HoldQueue`]. The root context's timer is set to fire
//! at the earliest due time (re-armed from the request path when a new hold is due before the
//! timer would fire), so a response is released within about a millisecond of its due time, not
//! at the next regular tick. Between holds the timer ticks every `sync_interval`.
//!
//! # The in-flight cap, exact across workers
//!
//! Taking a slot is one compare-and-swap on the shared [`InFlight`] table, where each worker's
//! slot says how many responses it holds; giving slots back rewrites this worker's slot. A slot
//! not refreshed for `stale_after` (4 × `sync_interval` + 1 s) stops counting, so the slots of a
//! worker whose VM failed are not lost for good. Whoever takes a held response out of the queue
//! (the tick that resumes it, or the stream's end when the client went away first) gives its slot
//! back, so every hold is released exactly once.
//!
//! # On a host
//!
//! Every host call goes through the worker's [`Host`] (`H`, the real proxy by default): the same
//! calls in the same order as before, so the in-flight cap, the release on the tick and the
//! shared target also run natively, on several fake workers sharing one in-memory store (see
//! `tests.rs`).
//!
//! # Keys
//!
//! Keys are the matched `routes` entry's name, else the Envoy route name, else the cluster name,
//! bounded by `max_keys` through a registry in shared data (shared data cannot delete); a request
//! whose key does not fit is neither padded nor learned from and counts as `keys_overflow`.

use std::rc::Rc;

use proxy_wasm::types::StreamType;
use resilience_core::backoff::random_u64;
use resilience_core::estimator::{LatencyHistogram, LatencySamples};
use resilience_core::keyed::{Handle, Keyed};
use resilience_core::padding::{next_tick_ms, Hold, HoldQueue, InFlight, Skip};
use resilience_host::host::Host;
use resilience_host::metrics::{push_sanitized, sanitize_segment, Metrics};
use resilience_host::registry::KeyRegistry;
use resilience_host::resume::{self, Resumed};
use resilience_host::shared::{self, cas_update_on, SharedError, Update, DEFAULT_CAS_ATTEMPTS};
use resilience_host::wasm::WasmHost;

use crate::config::{FilterConfig, Settings};
use crate::stats;

/// Longest key segment kept from a route or cluster name (stats and shared-data keys).
const MAX_KEY_SEGMENT: usize = 64;

/// One key as this worker sees it.
pub struct Entry {
    /// Which `routes` entry's settings apply (`None` = the defaults).
    pub route_index: Option<usize>,
    /// The padding target from the last view of the shared histogram (before jitter).
    pub target_ms: Option<u64>,
    samples: LatencySamples,
    shared_key: String,
    stat_base: String,
    pub pending: stats::Pending,
}

/// What the queue remembers about a held response.
struct HeldInfo {
    entry: Handle,
    since_ms: u64,
}

/// All of one worker's state for one filter instance, on host `H` (the real proxy unless a test
/// says otherwise).
pub struct Worker<H: Host = WasmHost> {
    host: H,
    pub config: Rc<FilterConfig>,
    pub entries: Keyed<Entry>,
    metrics: Metrics<H>,
    namespace: String,
    registry: KeyRegistry<H>,
    in_flight_key: String,
    worker_id: u64,
    held: HoldQueue<HeldInfo>,
    /// What this worker's slot in the shared table last said.
    published_held: u32,
    stale_after_ms: u64,
    next_sync_ms: u64,
    /// When the timer is expected to fire next, and its current period.
    armed_at_ms: u64,
    period_ms: u64,
    global_pending: stats::GlobalPending,
}

impl Worker {
    /// The worker's state on the real proxy.
    pub fn new(config: Rc<FilterConfig>, plugin: &str, now_ms: u64) -> Self {
        Worker::on(WasmHost, config, plugin, now_ms)
    }
}

impl<H: Host + Clone> Worker<H> {
    /// The worker's state on `host`.
    pub fn on(host: H, config: Rc<FilterConfig>, plugin: &str, now_ms: u64) -> Self {
        let namespace = format!("rpack/fp/{}", sanitize_segment(plugin, MAX_KEY_SEGMENT));
        let registry = KeyRegistry::on(
            host.clone(),
            format!("{namespace}/#keys"),
            config.global.max_keys as usize,
        );
        let mut metrics = Metrics::on(host.clone());
        stats::define_global(&mut metrics, &config.global.stat_prefix);
        let sync = config.global.sync_interval_ms;
        Worker {
            host,
            in_flight_key: format!("{namespace}/#in_flight"),
            stale_after_ms: sync.saturating_mul(4).saturating_add(1_000),
            config,
            entries: Keyed::new(),
            metrics,
            namespace,
            registry,
            worker_id: random_u64(),
            held: HoldQueue::new(),
            published_held: 0,
            next_sync_ms: now_ms.saturating_add(sync),
            armed_at_ms: now_ms.saturating_add(sync),
            period_ms: sync,
            global_pending: stats::GlobalPending::default(),
        }
    }
}

impl<H: Host> Worker<H> {
    /// The tick period last set (the sync interval for a new worker, which the root starts the
    /// timer with; shorter while a held response is due sooner).
    pub fn period_ms(&self) -> u64 {
        self.period_ms
    }

    /// Find or admit the entry for the route or cluster name `base` (bounded and made safe for
    /// stats and shared-data keys); `None` when `max_keys` is reached or shared data failed (the
    /// request is then neither padded nor learned from).
    pub fn entry(&mut self, base: &str, route_index: Option<usize>) -> Option<Handle> {
        let (namespace, prefix) = (&self.namespace, &self.config.global.stat_prefix);
        let metrics = &mut self.metrics;
        let found = self.registry.find_or_admit(
            &mut self.entries,
            |key| push_sanitized(key, base, MAX_KEY_SEGMENT),
            &mut self.global_pending.shared,
            |key| {
                let stat_base = format!("{prefix}.{key}");
                stats::define_entry(metrics, &stat_base);
                Entry {
                    route_index,
                    target_ms: None,
                    samples: LatencySamples::new(),
                    shared_key: format!("{namespace}/{key}"),
                    stat_base,
                    pending: stats::Pending::default(),
                }
            },
        );
        let Some((handle, new)) = found else {
            self.global_pending.keys_overflow += 1;
            return None;
        };
        if let (true, Some(entry)) = (new, self.entries.get_mut(handle)) {
            let settings = self.config.settings(route_index);
            refresh(&self.host, entry, settings, &mut self.global_pending);
        }
        Some(handle)
    }

    /// A success's latency, to be published on the next sync.
    pub fn record_success(&mut self, entry: Handle, latency_ms: u64) {
        if let Some(e) = self.entries.get_mut(entry) {
            e.samples.record(latency_ms);
            e.pending.samples += 1;
        }
    }

    /// Hold the response of stream `id` (key `key`) as `hold` says: take an in-flight slot across
    /// all workers, queue the response and make sure the timer fires when it is due. On `Err`
    /// nothing is held and the reason is the skip to report.
    /// Whether stream `id`'s response is still held (not yet released by a tick).
    pub fn is_holding(&self, id: u32) -> bool {
        self.held.holds(id)
    }

    pub fn try_hold(
        &mut self,
        entry: Handle,
        id: u32,
        hold: &Hold,
        now_ms: u64,
    ) -> Result<(), Skip> {
        let cap = u64::from(self.config.global.max_padded_in_flight);
        let local = u32::try_from(self.held.len()).unwrap_or(u32::MAX);
        if u64::from(local) >= cap {
            return Err(Skip::InFlightCap);
        }
        let (worker, stale) = (self.worker_id, self.stale_after_ms);
        match self.update_table(|t| t.try_acquire(worker, local, cap, now_ms, stale)) {
            Ok(true) => {}
            Ok(false) => return Err(Skip::InFlightCap),
            Err(e) => {
                self.global_pending.shared.count(e);
                return Err(Skip::Error);
            }
        }
        let release_at = now_ms.saturating_add(hold.hold_ms);
        self.held.push(
            id,
            release_at,
            HeldInfo {
                entry,
                since_ms: now_ms,
            },
        );
        self.published_held = local.saturating_add(1);
        let prefix = &self.config.global.stat_prefix;
        self.metrics.gauge_add(&format!("{prefix}.in_flight"), 1);
        log::debug!(
            "failure_padding {}: holding a failed response for {} ms (worker {:016x}, {} held here, cap {cap})",
            self.entries.key(entry).unwrap_or_default(),
            hold.hold_ms,
            self.worker_id,
            self.held.len()
        );
        if release_at < self.armed_at_ms {
            let period = release_at.saturating_sub(now_ms).max(1);
            if resume::set_tick_period_ms_on(&self.host, period) {
                self.period_ms = period;
                self.armed_at_ms = now_ms.saturating_add(period);
            }
        }
        Ok(())
    }

    /// The stream `id` ended: if its response is still held (the client went away first), give
    /// its slot back and count it as abandoned.
    pub fn abandon(&mut self, id: u32, now_ms: u64) {
        let Some(h) = self.held.remove(id) else {
            return;
        };
        if let Some(e) = self.entries.get_mut(h.data.entry) {
            e.pending.abandoned += 1;
            e.pending.padding_ms += now_ms.saturating_sub(h.data.since_ms);
        }
        self.gave_back(1, now_ms);
    }

    /// The tick: release due responses; every `sync_interval` publish and refresh every key and
    /// flush stats; then set the timer for the next due response or sync.
    pub fn tick(&mut self, now_ms: u64) {
        self.release_due(now_ms);
        if now_ms >= self.next_sync_ms {
            self.sync(now_ms);
            self.next_sync_ms = now_ms.saturating_add(self.config.global.sync_interval_ms);
        }
        let period = next_tick_ms(now_ms, self.held.earliest(), self.next_sync_ms);
        self.armed_at_ms = now_ms.saturating_add(period);
        if period != self.period_ms && resume::set_tick_period_ms_on(&self.host, period) {
            self.period_ms = period;
        }
    }

    fn release_due(&mut self, now_ms: u64) {
        let due = self.held.take_due(now_ms);
        if due.is_empty() {
            return;
        }
        let n = due.len();
        for h in due {
            let outcome = resume::resume_on(&self.host, h.id, StreamType::HttpResponse);
            let entry = self.entries.get_mut(h.data.entry);
            let held_ms = now_ms.saturating_sub(h.data.since_ms);
            match (outcome, entry) {
                (Resumed::Continued, Some(e)) => e.pending.padding_ms += held_ms,
                (Resumed::Gone, Some(e)) => {
                    e.pending.abandoned += 1;
                    e.pending.padding_ms += held_ms;
                }
                (Resumed::Refused(code), _) => {
                    log::warn!(
                        "failure_padding {}: the proxy refused to resume a held response (status {code})",
                        self.entries.key(h.data.entry).unwrap_or_default()
                    );
                    self.global_pending.resume_errors += 1;
                }
                (_, None) => {}
            }
        }
        self.gave_back(n, now_ms);
    }

    /// `n` held responses left the queue: move the gauge and rewrite this worker's slot.
    fn gave_back(&mut self, n: usize, now_ms: u64) {
        let prefix = &self.config.global.stat_prefix;
        self.metrics.gauge_add(
            &format!("{prefix}.in_flight"),
            -i64::try_from(n).unwrap_or(i64::MAX),
        );
        self.report_slot(now_ms);
    }

    /// Write this worker's true held count into its slot (also the heartbeat that keeps it live).
    fn report_slot(&mut self, now_ms: u64) {
        let local = u32::try_from(self.held.len()).unwrap_or(u32::MAX);
        let (worker, stale) = (self.worker_id, self.stale_after_ms);
        match self.update_table(|t| t.report(worker, local, now_ms, stale)) {
            Ok(_) => self.published_held = local,
            // The slot keeps saying more than we hold: conservative, fixed by the next heartbeat.
            Err(e) => self.global_pending.shared.count(e),
        }
    }

    /// Read-modify-write the shared in-flight table; `f` says whether to write.
    fn update_table(
        &mut self,
        mut f: impl FnMut(&mut InFlight) -> bool,
    ) -> Result<bool, SharedError> {
        let (ok, reset) = cas_update_on(
            &self.host,
            &self.in_flight_key,
            DEFAULT_CAS_ATTEMPTS,
            |cur| {
                let (mut table, reset) = match cur {
                    None | Some([]) => (InFlight::new(), false),
                    Some(bytes) => match InFlight::decode(bytes) {
                        Ok(t) => (t, false),
                        Err(_) => (InFlight::new(), true),
                    },
                };
                if f(&mut table) {
                    Update::Write(table.encode(), (true, reset))
                } else {
                    Update::Keep((false, reset))
                }
            },
        )?;
        if reset {
            self.global_pending.shared.state_resets += 1;
        }
        Ok(ok)
    }

    fn sync(&mut self, now_ms: u64) {
        let config = Rc::clone(&self.config);
        for entry in self.entries.values_mut() {
            let settings = config.settings(entry.route_index);
            if entry.samples.is_empty() {
                refresh(&self.host, entry, settings, &mut self.global_pending);
            } else {
                publish(
                    &self.host,
                    entry,
                    settings,
                    &mut self.metrics,
                    &mut self.global_pending,
                );
            }
            stats::flush_entry(&mut self.metrics, &entry.stat_base, &mut entry.pending);
        }
        if self.published_held > 0 || !self.held.is_empty() {
            self.report_slot(now_ms);
        }
        stats::flush_global(
            &mut self.metrics,
            &config.global.stat_prefix,
            &mut self.global_pending,
        );
    }
}

/// The padding target a histogram gives under `settings` (before jitter).
fn target_of(h: &LatencyHistogram, settings: &Settings) -> Option<u64> {
    settings
        .policy
        .target_ms(h.percentile(settings.percentile), h.total_seen())
}

/// The learned part of the target, for the `target_ms` gauge: 0 until `min_samples` successes
/// were seen (the fallback is not learned, and an empty histogram must read 0 for the gauge's
/// increments to add up to the current value).
fn learned_of(h: &LatencyHistogram, settings: &Settings) -> Option<u64> {
    let learned_only = resilience_core::padding::Policy {
        fallback_target_ms: None,
        ..settings.policy
    };
    learned_only.target_ms(h.percentile(settings.percentile), h.total_seen())
}

/// Decode shared bytes, starting afresh on absence or garbage; the flag says garbage was seen.
fn decode(cur: Option<&[u8]>, half_life: u32) -> (LatencyHistogram, bool) {
    match cur {
        None | Some([]) => (LatencyHistogram::new(half_life), false),
        Some(bytes) => match LatencyHistogram::decode(bytes, half_life) {
            Ok(h) => (h, false),
            Err(_) => (LatencyHistogram::new(half_life), true),
        },
    }
}

/// Re-read the shared histogram into the cached target (one read, no write).
fn refresh<H: Host>(
    host: &H,
    entry: &mut Entry,
    settings: &Settings,
    g: &mut stats::GlobalPending,
) {
    match shared::get_on(host, &entry.shared_key) {
        Ok(v) => {
            let (h, reset) = decode(v.value.as_deref(), settings.half_life_samples);
            if reset {
                g.shared.state_resets += 1;
            }
            entry.target_ms = target_of(&h, settings);
        }
        Err(e) => g.shared.count(e),
    }
}

/// Absorb this worker's batch into the shared histogram (one CAS) and adopt the new target. The
/// `target_ms` gauge moves by the change this write made, so it adds up across workers.
fn publish<H: Host>(
    host: &H,
    entry: &mut Entry,
    settings: &Settings,
    metrics: &mut Metrics<H>,
    g: &mut stats::GlobalPending,
) {
    let batch = &entry.samples;
    let result = cas_update_on(host, &entry.shared_key, DEFAULT_CAS_ATTEMPTS, |cur| {
        let (mut h, reset) = decode(cur, settings.half_life_samples);
        let before = learned_of(&h, settings);
        h.absorb(batch);
        let after = learned_of(&h, settings);
        Update::Write(h.encode(), (before, after, target_of(&h, settings), reset))
    });
    match result {
        Ok((before, after, target, reset)) => {
            if reset {
                g.shared.state_resets += 1;
            }
            entry.samples.clear();
            entry.target_ms = target;
            let delta = as_i64(after).saturating_sub(as_i64(before));
            metrics.gauge_add(&format!("{}.target_ms", entry.stat_base), delta);
        }
        // Keep the batch for the next tick (its counts saturate, so it stays bounded).
        Err(e) => g.shared.count(e),
    }
}

fn as_i64(v: Option<u64>) -> i64 {
    v.map_or(0, |v| i64::try_from(v).unwrap_or(i64::MAX))
}
