//! One worker's side of the budgets: leases, pending news, learned latencies, and the
//! shared-data calls that keep every worker on one budget per key.
//!
//! The healthy path never touches shared data: a request reserves its retries from the worker's
//! lease ([`LocalBudget`]) and gives back what it did not use when it ends. On each tick the
//! worker publishes its news and takes a new lease (one CAS per key with news), and absorbs its
//! latency samples into the key's shared histogram (one more CAS, only for outbound keys that
//! learn latency). A worker whose lease runs dry pays a CAS on the request path, at most once per
//! tick once the shared budget is found empty.
//!
//! Key space: budgets are keyed by the matched `routes` entry (or the Envoy route name, falling
//! back to the cluster name). Shared data cannot delete keys, so the number of keys is capped by
//! `max_keys` through a registry kept in shared data; a request whose key does not fit passes
//! unguarded and is counted as `keys_overflow`.
//!
//! Every host call goes through the worker's [`Host`] (`H`, the real proxy by default), so the
//! leases, refunds and CAS retries also run natively, on several fake workers sharing one
//! in-memory store (see `tests.rs`).

use std::rc::Rc;

use resilience_core::budget::{
    Applied, BudgetPolicy, LocalBudget, Reservation, Reserve, SharedBudget,
};
use resilience_core::estimator::{LatencyHistogram, LatencySamples};
use resilience_core::keyed::{Handle, Keyed};
use resilience_host::host::Host;
use resilience_host::metrics::{push_sanitized, sanitize_segment, Metrics};
use resilience_host::registry::KeyRegistry;
use resilience_host::shared::{cas_update_on, Update, DEFAULT_CAS_ATTEMPTS};
use resilience_host::wasm::WasmHost;

use crate::config::{FilterConfig, Settings, Side};
use crate::stats;

/// Longest key segment kept from a route or cluster name (stats and shared-data keys).
const MAX_KEY_SEGMENT: usize = 64;

/// A latency sample's weight halves after this many newer samples.
const LATENCY_HALF_LIFE: u32 = 200;

/// One budget as this worker sees it.
pub struct Entry {
    /// Which `routes` entry's settings apply (`None` = the defaults).
    pub route_index: Option<usize>,
    pub local: LocalBudget,
    pub shared_key: String,
    pub latency_key: String,
    pub stat_base: String,
    pub pending: stats::Pending,
    /// Latencies of single successful attempts since the last tick.
    pub samples: LatencySamples,
    /// The key's median single-attempt latency across workers, as of the last tick.
    pub median_ms: Option<u64>,
    /// Samples the shared histogram rests on.
    pub latency_seen: u64,
}

impl Entry {
    /// The learned median, once it rests on at least `min_samples` samples.
    pub fn trusted_median(&self, min_samples: u32) -> Option<u64> {
        if self.latency_seen >= u64::from(min_samples) {
            self.median_ms
        } else {
            None
        }
    }
}

/// All of one worker's budgets for one filter instance, on host `H` (the real proxy unless a
/// test says otherwise).
pub struct Worker<H: Host = WasmHost> {
    host: H,
    pub config: Rc<FilterConfig>,
    pub entries: Keyed<Entry>,
    pub metrics: Metrics<H>,
    namespace: String,
    registry: KeyRegistry<H>,
    pub global_pending: stats::GlobalPending,
}

/// The settings a route index selects.
pub fn route_settings(config: &FilterConfig, route_index: Option<usize>) -> &Settings {
    route_index
        .and_then(|i| config.routes.routes.get(i))
        .map_or(&config.routes.defaults, |r| &r.settings)
}

/// Fewer lease tokens than this cannot serve one request of this key.
fn min_useful(settings: &Settings) -> u32 {
    match settings.mode.side() {
        Some(Side::Outbound) => settings.max_retries.max(1),
        _ => 1,
    }
}

impl Worker {
    /// The worker's budgets on the real proxy.
    pub fn new(config: Rc<FilterConfig>, plugin: &str) -> Self {
        Worker::on(WasmHost, config, plugin)
    }
}

impl<H: Host + Clone> Worker<H> {
    /// The worker's budgets on `host`.
    pub fn on(host: H, config: Rc<FilterConfig>, plugin: &str) -> Self {
        let namespace = format!("rpack/rb/{}", sanitize_segment(plugin, MAX_KEY_SEGMENT));
        let registry = KeyRegistry::on(
            host.clone(),
            format!("{namespace}/#keys"),
            config.global.max_keys as usize,
        );
        let mut metrics = Metrics::on(host.clone());
        stats::define_global(&mut metrics, &config.global.stat_prefix);
        Worker {
            host,
            config,
            entries: Keyed::new(),
            metrics,
            namespace,
            registry,
            global_pending: stats::GlobalPending::default(),
        }
    }

    /// Find or admit the budget for the route or cluster name `base` (bounded and made safe for
    /// stats and shared data); `None` when `max_keys` is reached (the request passes unguarded)
    /// or shared data failed.
    pub fn entry(&mut self, base: &str, route_index: Option<usize>) -> Option<Handle> {
        let config = &self.config;
        let (namespace, metrics) = (&self.namespace, &mut self.metrics);
        let found = self.registry.find_or_admit(
            &mut self.entries,
            |key| push_sanitized(key, base, MAX_KEY_SEGMENT),
            &mut self.global_pending.shared,
            |key| {
                let settings = route_settings(config, route_index);
                let shared_key = format!("{namespace}/{key}");
                let latency_key = format!("{shared_key}/latency");
                let stat_base = format!("{}.{key}", config.global.stat_prefix);
                stats::define_entry(metrics, &stat_base);
                Entry {
                    route_index,
                    local: LocalBudget::new(&settings.policy, config.global.sync_interval_ms),
                    shared_key,
                    latency_key,
                    stat_base,
                    pending: stats::Pending::default(),
                    samples: LatencySamples::new(),
                    median_ms: None,
                    latency_seen: 0,
                }
            },
        );
        if found.is_none() {
            self.global_pending.keys_overflow += 1;
        }
        found.map(|(handle, _)| handle)
    }

    /// Reserve up to `max` retries for one request on `entry`, refilling the lease under CAS when
    /// it cannot cover them. If the shared budget cannot be reached the request keeps its
    /// retries (fail open, counted) and every retry it makes is charged when it ends.
    pub fn reserve(&mut self, entry: Handle, max: u32, now_ms: u64) -> Reservation {
        let config = Rc::clone(&self.config);
        let Some(entry) = self.entries.get_mut(entry) else {
            return Reservation::unbacked(max);
        };
        match entry.local.reserve(max, now_ms) {
            Reserve::Reserved(r) => r,
            Reserve::NeedRefill => {
                let settings = route_settings(&config, entry.route_index);
                if publish_budget(
                    &self.host,
                    entry,
                    settings,
                    now_ms,
                    &mut self.metrics,
                    &mut self.global_pending,
                ) {
                    entry.local.reserve_after_refill(max, now_ms)
                } else {
                    Reservation::unbacked(max)
                }
            }
        }
    }

    /// A request on `entry` ended having made `used` retries.
    pub fn settle(&mut self, entry: Handle, r: Reservation, used: u32, now_ms: u64) {
        if let Some(entry) = self.entries.get_mut(entry) {
            entry.local.settle(r, used, now_ms);
        }
    }

    /// The tick: publish every budget with news, share latency samples, flush stats.
    pub fn tick(&mut self, now_ms: u64) {
        let config = Rc::clone(&self.config);
        for entry in self.entries.values_mut() {
            let settings = route_settings(&config, entry.route_index);
            if entry.local.needs_publish(now_ms) {
                publish_budget(
                    &self.host,
                    entry,
                    settings,
                    now_ms,
                    &mut self.metrics,
                    &mut self.global_pending,
                );
            }
            if settings.deadline_aware && settings.mode.side() == Some(Side::Outbound) {
                sync_latency(&self.host, entry, &mut self.global_pending);
            }
            stats::flush_entry(&mut self.metrics, &entry.stat_base, &mut entry.pending);
        }
        stats::flush_global(
            &mut self.metrics,
            &config.global.stat_prefix,
            &mut self.global_pending,
        );
    }
}

/// Decode shared bytes, starting afresh on absence or garbage; the flag says garbage was seen.
fn decode_budget(cur: Option<&[u8]>, policy: &BudgetPolicy) -> (SharedBudget, bool) {
    match cur {
        None | Some([]) => (SharedBudget::new(policy), false),
        Some(bytes) => match SharedBudget::decode(bytes, policy) {
            Ok(b) => (b, false),
            Err(_) => (SharedBudget::new(policy), true),
        },
    }
}

/// Publish the entry's news and take a new lease (one CAS). False on a shared-data error, which
/// is counted; the news stays pending for the next try.
fn publish_budget<H: Host>(
    host: &H,
    entry: &mut Entry,
    settings: &Settings,
    now_ms: u64,
    metrics: &mut Metrics<H>,
    g: &mut stats::GlobalPending,
) -> bool {
    let policy = &settings.policy;
    let min = min_useful(settings);
    let publication = entry.local.publication(min);
    let result = cas_update_on(host, &entry.shared_key, DEFAULT_CAS_ATTEMPTS, |cur| {
        let (mut b, reset) = decode_budget(cur, policy);
        let applied: Applied = b.apply(&publication, now_ms, policy);
        Update::Write(b.encode(), (applied, reset))
    });
    match result {
        Ok((applied, reset)) => {
            if reset {
                g.shared.state_resets += 1;
            }
            entry.local.published(&applied, min, now_ms);
            metrics.gauge_add(
                &format!("{}.{}", entry.stat_base, stats::BUDGET_GAUGE),
                applied.gauge_delta,
            );
            true
        }
        Err(e) => {
            g.shared.count(e);
            false
        }
    }
}

/// Absorb this worker's latency samples into the key's shared histogram (or just read it when
/// there are none; garbage is replaced by an empty histogram) and cache the median.
fn sync_latency<H: Host>(host: &H, entry: &mut Entry, g: &mut stats::GlobalPending) {
    let decode = |cur: Option<&[u8]>| -> (LatencyHistogram, bool) {
        match cur {
            None | Some([]) => (LatencyHistogram::new(LATENCY_HALF_LIFE), false),
            Some(bytes) => match LatencyHistogram::decode(bytes, LATENCY_HALF_LIFE) {
                Ok(h) => (h, false),
                Err(_) => (LatencyHistogram::new(LATENCY_HALF_LIFE), true),
            },
        }
    };
    let samples = &entry.samples;
    let result = cas_update_on(host, &entry.latency_key, DEFAULT_CAS_ATTEMPTS, |cur| {
        let (mut h, reset) = decode(cur);
        let answer_after = |h: &LatencyHistogram| (h.percentile(50.0), h.total_seen(), reset);
        if samples.is_empty() && !reset {
            // Nothing to add: one read, no write.
            Update::Keep(answer_after(&h))
        } else {
            h.absorb(samples);
            let answer = answer_after(&h);
            Update::Write(h.encode(), answer)
        }
    });
    match result {
        Ok((median, seen, reset)) => {
            if reset {
                g.shared.state_resets += 1;
            }
            entry.samples.clear();
            entry.median_ms = median;
            entry.latency_seen = seen;
        }
        Err(e) => g.shared.count(e),
    }
}
