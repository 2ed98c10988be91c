//! One worker's side of the breakers: cached views, pending outcomes, and the shared-data calls
//! that keep every worker on one state per breaker key.
//!
//! The healthy path never touches shared data: a request checks the cached [`View`], and its
//! outcome goes into a per-worker [`Delta`]. On each tick the worker publishes its deltas (one CAS
//! per key with news) and refreshes its views (one read per key). Only decisions that must be exact
//! across workers, taking and returning half-open probe permits, pay for a CAS on the request path.
//!
//! Key space: breakers are keyed by the matched `routes` entry (or the Envoy route name, falling
//! back to the cluster name), optionally joined with a request header's value. Shared data cannot
//! delete keys, so the number of keys is capped by `max_keys` through a registry kept in shared
//! data; a request whose key does not fit passes unguarded and is counted as `keys_overflow`.
//!
//! With `max_open_percent`, a trip first takes a place in the shared set of open breakers
//! ([`resilience_core::governor`]); when the set is full the trip is held and counted in
//! `trips_held`, and the breaker keeps counting until a place frees up. Places are given back
//! when a breaker closes. These are CAS calls at transitions only, never per request.
//!
//! Every host call goes through the worker's [`Host`] (`H`, the real proxy by default), so the
//! glue also runs natively, on several fake workers sharing one in-memory store.

use std::cell::Cell;
use std::rc::Rc;

use resilience_core::backoff::random_u64;
use resilience_core::breaker::{
    Delta, ProbeGrant, ProbeOutcome, Published, SharedBreaker, State, Transition, TripReason, View,
};
use resilience_core::governor::{self, OpenSet, Reserve};
use resilience_core::keyed::{Handle, Keyed};
use resilience_host::host::Host;
use resilience_host::metrics::{push_sanitized, sanitize_segment, Metrics};
use resilience_host::registry::KeyRegistry;
use resilience_host::shared::{self, cas_update_on, SharedError, Update, DEFAULT_CAS_ATTEMPTS};
use resilience_host::wasm::WasmHost;

use crate::config::{FilterConfig, Settings};
use crate::stats;

/// How long (at least) a worker stays hot after a failure: re-reading shared state per request.
const HOT_MS: u64 = 1_000;

/// Longest key segment kept from a route name or header value (stats and shared-data keys).
const MAX_KEY_SEGMENT: usize = 64;

/// One breaker as this worker sees it.
pub struct Entry {
    /// Which `routes` entry's settings apply (`None` = the defaults).
    pub route_index: Option<usize>,
    pub view: View,
    pub delta: Delta,
    pub shared_key: String,
    pub stat_base: String,
    /// The key's place in the open-breaker governor's set.
    pub key_hash: u64,
    pub pending: stats::Pending,
    /// Until when this worker re-reads the shared state on every request: set by a failure, so a
    /// trip made by another worker is seen at once while failures are in the air.
    pub hot_until_ms: u64,
    /// The last active probe could not even be sent (an unknown cluster, say): the open timer
    /// decides alone, as without a probe.
    pub active_probe_unsendable: bool,
}

/// All of one worker's breakers for one filter instance, on host `H` (the real proxy unless a
/// test says otherwise).
pub struct Worker<H: Host = WasmHost> {
    pub(crate) host: H,
    pub config: Rc<FilterConfig>,
    pub entries: Keyed<Entry>,
    pub metrics: Metrics<H>,
    namespace: String,
    registry: KeyRegistry<H>,
    /// The open-breaker governor, when `max_open_percent` is below 100.
    governor: Option<Governor>,
    pub global_pending: stats::GlobalPending,
    /// Active probes out, one per key at most (see [`crate::active`]).
    pub(crate) active: Vec<crate::active::InFlight>,
}

/// Where the open-breaker set lives and how full it may get.
pub struct Governor {
    open_key: String,
    percent: f64,
    /// The set was found full since the last tick: held trips do not ask again until then (a
    /// failure storm on held keys would otherwise cost two shared-data calls per failure).
    full: Cell<bool>,
}

impl Worker {
    /// The worker's breakers on the real proxy.
    pub fn new(config: Rc<FilterConfig>, plugin: &str) -> Self {
        Worker::on(WasmHost, config, plugin)
    }
}

impl<H: Host + Clone> Worker<H> {
    /// The worker's breakers on `host`.
    pub fn on(host: H, config: Rc<FilterConfig>, plugin: &str) -> Self {
        let namespace = format!("rpack/cb/{}", sanitize_segment(plugin, MAX_KEY_SEGMENT));
        let registry = KeyRegistry::on(
            host.clone(),
            format!("{namespace}/#keys"),
            config.global.max_keys as usize,
        );
        let mut metrics = Metrics::on(host.clone());
        stats::define_global(&mut metrics, &config.global.stat_prefix);
        let governor = config.global.max_open_percent.map(|percent| Governor {
            open_key: format!("{namespace}/#open"),
            percent,
            full: Cell::new(false),
        });
        Worker {
            host,
            config,
            entries: Keyed::new(),
            metrics,
            namespace,
            registry,
            governor,
            global_pending: stats::GlobalPending::default(),
            active: Vec::new(),
        }
    }

    /// The settings an entry uses.
    pub fn settings(&self, route_index: Option<usize>) -> &Settings {
        route_index
            .and_then(|i| self.config.routes.routes.get(i))
            .map_or(&self.config.routes.defaults, |r| &r.settings)
    }

    /// Find or admit the breaker for the route or cluster name `base` and, with `key_header`, its
    /// value (each part bounded and made safe for stats and shared-data keys, joined by `__`);
    /// `None` when `max_keys` is reached (the request passes unguarded) or shared data failed.
    pub fn entry(
        &mut self,
        base: &str,
        header_value: Option<&str>,
        route_index: Option<usize>,
    ) -> Option<Handle> {
        let config = &self.config;
        let (namespace, metrics) = (&self.namespace, &mut self.metrics);
        let found = self.registry.find_or_admit(
            &mut self.entries,
            |key| {
                push_sanitized(key, base, MAX_KEY_SEGMENT);
                if let Some(v) = header_value {
                    key.push_str("__");
                    push_sanitized(key, v, MAX_KEY_SEGMENT);
                }
            },
            &mut self.global_pending.shared,
            |key| {
                let policy = &route_settings(config, route_index).policy;
                let stat_base = format!("{}.{key}", config.global.stat_prefix);
                stats::define_entry(metrics, &stat_base);
                Entry {
                    route_index,
                    view: View::INITIAL,
                    delta: Delta::new(0, policy.window),
                    shared_key: format!("{namespace}/{key}"),
                    stat_base,
                    key_hash: governor::key_hash(key),
                    pending: stats::Pending::default(),
                    hot_until_ms: 0,
                    active_probe_unsendable: false,
                }
            },
        );
        let Some((handle, new)) = found else {
            self.global_pending.keys_overflow += 1;
            return None;
        };
        if let (true, Some(entry)) = (new, self.entries.get_mut(handle)) {
            let policy = &route_settings(&self.config, route_index).policy;
            refresh(&self.host, entry, policy, &mut self.global_pending);
        }
        Some(handle)
    }

    /// Record a failure and publish at once: failures are what trip a breaker, and callers blocked
    /// on a failing dependency resend the moment they get their error, before the next tick.
    /// Successes stay aggregated until the tick. Marks the entry hot (see [`Entry::hot_until_ms`]).
    pub fn publish_failure(&mut self, entry: Handle, now_ms: u64) {
        let config = Rc::clone(&self.config);
        let Some(entry) = self.entries.get_mut(entry) else {
            return;
        };
        entry.hot_until_ms =
            now_ms.saturating_add(HOT_MS.max(config.global.sync_interval_ms.saturating_mul(4)));
        let settings = route_settings(&config, entry.route_index);
        let gov = self.governor.as_ref().map(|g| (g, &self.registry));
        publish(
            &self.host,
            entry,
            settings,
            now_ms,
            gov,
            &mut self.metrics,
            &mut self.global_pending,
        );
    }

    /// While an entry is hot, re-read its shared state (one read) before deciding.
    pub fn refresh_if_hot(&mut self, entry: Handle, now_ms: u64) {
        let config = Rc::clone(&self.config);
        let Some(entry) = self.entries.get_mut(entry) else {
            return;
        };
        if now_ms < entry.hot_until_ms && entry.delta.is_empty() {
            let policy = &route_settings(&config, entry.route_index).policy;
            refresh(&self.host, entry, policy, &mut self.global_pending);
        }
    }

    /// The tick: publish every entry's outcomes and refresh every view; flush stats.
    pub fn tick(&mut self, now_ms: u64) {
        let config = Rc::clone(&self.config);
        if let Some(g) = &self.governor {
            g.full.set(false);
        }
        let gov = self.governor.as_ref().map(|g| (g, &self.registry));
        for entry in self.entries.values_mut() {
            let settings = route_settings(&config, entry.route_index);
            if entry.delta.is_empty() {
                refresh(
                    &self.host,
                    entry,
                    &settings.policy,
                    &mut self.global_pending,
                );
            } else {
                publish(
                    &self.host,
                    entry,
                    settings,
                    now_ms,
                    gov,
                    &mut self.metrics,
                    &mut self.global_pending,
                );
            }
            stats::flush_entry(&mut self.metrics, entry);
        }
        if let Some(g) = &self.governor {
            release_stale(&self.host, g, &self.entries, &mut self.global_pending);
        }
        self.send_active_probes(now_ms);
        stats::flush_global(
            &mut self.metrics,
            &config.global.stat_prefix,
            &mut self.global_pending,
        );
    }

    /// Take a half-open probe permit under CAS. On a shared-data error the request is allowed
    /// (fail open) and counted.
    pub fn acquire_probe(&mut self, entry: Handle, now_ms: u64) -> ProbeGrant {
        let config = Rc::clone(&self.config);
        let Some(entry) = self.entries.get_mut(entry) else {
            return ProbeGrant::Closed;
        };
        let policy = &route_settings(&config, entry.route_index).policy;
        let resets = &mut self.global_pending.shared.state_resets;
        let result = cas_update_on(&self.host, &entry.shared_key, DEFAULT_CAS_ATTEMPTS, |cur| {
            let (mut b, reset) = decode(cur, policy);
            let (grant, transition) = b.try_acquire_probe(now_ms, policy);
            let view = b.view();
            if transition.is_some() || matches!(grant, ProbeGrant::Granted { .. }) || reset {
                Update::Write(b.encode(), (grant, transition, view, reset))
            } else {
                Update::Keep((grant, transition, view, reset))
            }
        });
        match result {
            Ok((grant, transition, view, reset)) => {
                if reset {
                    *resets += 1;
                }
                entry.view = view;
                if let Some(t) = transition {
                    stats::transition(&mut self.metrics, &entry.stat_base, &t);
                }
                if matches!(grant, ProbeGrant::Granted { .. }) {
                    entry.pending.probes_admitted += 1;
                }
                grant
            }
            Err(e) => {
                self.global_pending.shared.count(e);
                ProbeGrant::Closed
            }
        }
    }

    /// Report a probe's outcome under CAS.
    pub fn report_probe(
        &mut self,
        entry: Handle,
        generation: u32,
        outcome: ProbeOutcome,
        hint_ms: u64,
        now_ms: u64,
    ) {
        let config = Rc::clone(&self.config);
        let Some(entry) = self.entries.get_mut(entry) else {
            return;
        };
        let policy = &route_settings(&config, entry.route_index).policy;
        let random = random_u64();
        let result = cas_update_on(&self.host, &entry.shared_key, DEFAULT_CAS_ATTEMPTS, |cur| {
            let (mut b, _) = decode(cur, policy);
            let t = b.probe_result(generation, outcome, now_ms, policy, random, hint_ms);
            let view = b.view();
            match t {
                Some(_) => Update::Write(b.encode(), (t, view)),
                None if outcome == ProbeOutcome::Success || outcome == ProbeOutcome::Abandoned => {
                    Update::Write(b.encode(), (t, view))
                }
                None => Update::Keep((t, view)),
            }
        });
        match outcome {
            ProbeOutcome::Success => entry.pending.probes_succeeded += 1,
            ProbeOutcome::Failure => entry.pending.probes_failed += 1,
            ProbeOutcome::Abandoned => {}
        }
        match result {
            Ok((t, view)) => {
                entry.view = view;
                if let Some(t) = t {
                    stats::transition(&mut self.metrics, &entry.stat_base, &t);
                    log_transition(&entry.stat_base, &t);
                    if t.to == State::Closed {
                        entry.delta = Delta::new(view.generation, policy.window);
                        if let Some(g) = &self.governor {
                            release(&self.host, g, entry.key_hash, &mut self.global_pending);
                        }
                    }
                }
            }
            Err(e) => self.global_pending.shared.count(e),
        }
    }
}

pub(crate) fn route_settings(config: &FilterConfig, route_index: Option<usize>) -> &Settings {
    route_index
        .and_then(|i| config.routes.routes.get(i))
        .map_or(&config.routes.defaults, |r| &r.settings)
}

/// Decode shared bytes, starting afresh on absence or garbage; the flag says garbage was seen.
pub(crate) fn decode(
    cur: Option<&[u8]>,
    policy: &resilience_core::breaker::Policy,
) -> (SharedBreaker, bool) {
    match cur {
        None => (SharedBreaker::new(policy), false),
        Some([]) => (SharedBreaker::new(policy), false),
        Some(bytes) => match SharedBreaker::decode(bytes, policy) {
            Ok(b) => (b, false),
            Err(_) => (SharedBreaker::new(policy), true),
        },
    }
}

/// Re-read the shared state into the cached view (one read, no write).
fn refresh<H: Host>(
    host: &H,
    entry: &mut Entry,
    policy: &resilience_core::breaker::Policy,
    g: &mut stats::GlobalPending,
) {
    match shared::get_on(host, &entry.shared_key) {
        Ok(v) => {
            let (b, reset) = decode(v.value.as_deref(), policy);
            if reset {
                g.shared.state_resets += 1;
            }
            adopt_view(entry, b.view(), policy);
        }
        Err(e) => g.shared.count(e),
    }
}

/// Take a view read from shared data; outcomes pending under an older generation are dropped.
fn adopt_view(entry: &mut Entry, view: View, policy: &resilience_core::breaker::Policy) {
    if view.generation != entry.delta.generation {
        entry.delta = Delta::new(view.generation, policy.window);
    }
    entry.view = view;
}

/// Publish an entry's delta under CAS. With a governor, a trip waits for a place in the open
/// set: the delta is merged without tripping, and only once a place is taken is the signal
/// checked again and the breaker tripped.
fn publish<H: Host>(
    host: &H,
    entry: &mut Entry,
    settings: &Settings,
    now_ms: u64,
    gov: Option<(&Governor, &KeyRegistry<H>)>,
    metrics: &mut Metrics<H>,
    g: &mut stats::GlobalPending,
) {
    let policy = &settings.policy;
    let hint_ms = entry.delta.retry_after_hint_ms;
    let held = merge(host, entry, policy, now_ms, gov.is_none(), metrics, g);
    let (Some(reason), Some((gov, registry))) = (held, gov) else {
        return;
    };
    if gov.full.get() {
        entry.pending.trips_held += 1;
        return;
    }
    let generation = entry.view.generation;
    let limit = match registry.count() {
        Ok(n) => governor::limit(n, gov.percent),
        Err(e) => {
            g.shared.count(e);
            return;
        }
    };
    let reserved = cas_update_on(host, &gov.open_key, DEFAULT_CAS_ATTEMPTS, |cur| {
        let mut set = cur
            .and_then(|b| OpenSet::decode(b).ok())
            .unwrap_or_default();
        match set.reserve(entry.key_hash, generation, limit) {
            Reserve::Taken => Update::Write(set.encode(), Reserve::Taken),
            other => Update::Keep(other),
        }
    });
    match reserved {
        Ok(Reserve::Full) => {
            gov.full.set(true);
            entry.pending.trips_held += 1;
            log::debug!(
                "circuit breaker {}: trip held ({}): max_open_percent reached",
                entry.stat_base,
                reason.as_str()
            );
        }
        Ok(took) => {
            entry.delta.retry_after_hint_ms = hint_ms;
            merge(host, entry, policy, now_ms, true, metrics, g);
            let tripped = entry.view.state != State::Closed;
            if took == Reserve::Taken && !tripped && entry.view.generation == generation {
                // The signal went away (or another worker's trip closed again): give it back.
                release(host, gov, entry.key_hash, g);
            }
        }
        Err(e) => g.shared.count(e),
    }
}

/// One CAS that merges the entry's delta (tripping only when `may_trip`) and adopts the result;
/// the trip signal a governed merge held back, if any.
fn merge<H: Host>(
    host: &H,
    entry: &mut Entry,
    policy: &resilience_core::breaker::Policy,
    now_ms: u64,
    may_trip: bool,
    metrics: &mut Metrics<H>,
    g: &mut stats::GlobalPending,
) -> Option<TripReason> {
    let random = random_u64();
    let delta = &entry.delta;
    type Merged = (Option<Transition>, View, bool, Option<TripReason>);
    let result: Result<Merged, SharedError> =
        cas_update_on(host, &entry.shared_key, DEFAULT_CAS_ATTEMPTS, |cur| {
            let (mut b, reset) = decode(cur, policy);
            match b.publish_governed(delta, now_ms, policy, random, may_trip) {
                Published::Merged(t) => {
                    let view = b.view();
                    Update::Write(b.encode(), (t, view, reset, None))
                }
                Published::Held(r) => {
                    let view = b.view();
                    Update::Write(b.encode(), (None, view, reset, Some(r)))
                }
                Published::Stale => Update::Keep((None, b.view(), reset, None)),
            }
        });
    match result {
        Ok((t, view, reset, held)) => {
            if reset {
                g.shared.state_resets += 1;
            }
            if let Some(t) = t {
                stats::transition(metrics, &entry.stat_base, &t);
                log_transition(&entry.stat_base, &t);
            }
            entry.delta = Delta::new(view.generation, policy.window);
            entry.view = view;
            held
        }
        Err(e) => {
            // Keep the outcomes for the next tick; a persistent error drops them with the
            // generation check once the view moves on.
            g.shared.count(e);
            None
        }
    }
}

/// Give back `key`'s place in the open set.
fn release<H: Host>(host: &H, gov: &Governor, key_hash: u64, g: &mut stats::GlobalPending) {
    gov.full.set(false);
    let result = cas_update_on(host, &gov.open_key, DEFAULT_CAS_ATTEMPTS, |cur| {
        let Some(mut set) = cur.and_then(|b| OpenSet::decode(b).ok()) else {
            return Update::Keep(());
        };
        if set.release(key_hash) {
            Update::Write(set.encode(), ())
        } else {
            Update::Keep(())
        }
    });
    if let Err(e) = result {
        g.shared.count(e);
    }
}

/// Give back the places of breakers this worker sees closed since (a worker that should have
/// given one back could not): one read per tick, a CAS only when something is stale.
fn release_stale<H: Host>(
    host: &H,
    gov: &Governor,
    entries: &Keyed<Entry>,
    g: &mut stats::GlobalPending,
) {
    let set = match shared::get_on(host, &gov.open_key) {
        Ok(v) => match v.value.as_deref().map(OpenSet::decode) {
            Some(Ok(set)) => set,
            _ => return,
        },
        Err(e) => {
            g.shared.count(e);
            return;
        }
    };
    for e in entries.values() {
        if set.stale(e.key_hash, e.view.state == State::Closed, e.view.generation) {
            release(host, gov, e.key_hash, g);
        }
    }
}

pub(crate) fn log_transition(stat_base: &str, t: &Transition) {
    match (t.to, t.reason) {
        (State::Open, Some(r)) => log::warn!(
            "circuit breaker {stat_base}: {} -> open for {} ms ({})",
            t.from.as_str(),
            t.open_ms,
            r.as_str()
        ),
        _ => log::info!(
            "circuit breaker {stat_base}: {} -> {}",
            t.from.as_str(),
            t.to.as_str()
        ),
    }
}
