//! One worker's side of the ramps: cached views, pending outcomes, and the shared-data calls
//! that keep every worker on one ramp per endpoint.
//!
//! # What lives where
//!
//! - **Shared data, one value per endpoint** (`rpack/ss/<plugin>/ep/<slot>`, or `.../self` in
//!   admit mode): the endpoint's [`EndpointRamp`] — phase, ramp clock, pauses, failure run,
//!   in-flight count, priming cursor and pacing, the gauge values shown, and a short window of
//!   recent outcomes for the closed loop. Keys are slots of the configured endpoint list, so the
//!   key space is bounded by `max_endpoints` (shared data cannot delete keys). Each value holds
//!   the endpoint's address hash; a slot that now names another endpoint starts afresh.
//! - **Shared data, one value per capped endpoint** (`.../cap/<slot>`): the GCRA time of
//!   `max_warmup_rps`, taken under CAS on the request path, but only for requests to endpoints
//!   that are still warming.
//! - **Per worker**: a cached copy of every endpoint's state (read on the tick), and a
//!   [`Batch`] of what this worker saw since its last tick (outcomes, in-flight changes,
//!   priming answers).
//!
//! # The tick
//!
//! For each endpoint the worker runs one compare-and-swap that publishes its batch, moves the
//! phases time moves (priming deadline, end of the ramp, closed-loop pause and resume), claims
//! the priming requests and health checks that are due, and settles the gauges. Whatever that
//! CAS decided happened exactly once across all workers; this worker then counts it, logs it
//! and sends the requests it claimed. The request path reads only the cached views.
//!
//! Every host call goes through the worker's [`Host`] (`H`, the real proxy by default), so the
//! glue also runs natively, on several fake workers sharing one in-memory store.

use std::rc::Rc;

use hashbrown::HashMap;
use resilience_core::backoff::random_u64;
use resilience_core::balance::{alternates, pick, total_weight, Candidate};
use resilience_core::directory::{parse_document, Directory, FetchLease};
use resilience_core::ramp::{
    identity_of, Batch, Curve, Dispatch, EndpointRamp, Event, GaugeDeltas, Phase, Policy,
    RecentTotals, Shown,
};
use resilience_core::rate_cap;
use resilience_host::host::Host;
use resilience_host::metrics::{sanitize_segment, Metrics};
use resilience_host::shared::{self, cas_update_on, Update, DEFAULT_CAS_ATTEMPTS};
use resilience_host::wasm::WasmHost;

use crate::config::{CalloutSpec, FilterConfig, Kind, DECISION_HEADER};
use crate::stats::{self, GlobalPending, Pending};

/// Most callouts in flight per worker; beyond it, due callouts wait for the next tick.
const MAX_PENDING_CALLOUTS: usize = 10_000;

/// One endpoint as this worker sees it.
pub struct Endpoint {
    /// `ip:port`, or `self` in admit mode.
    pub address: String,
    /// Its slot of shared state (the directory's; 0 in admit mode).
    pub slot: u16,
    pub weight: u32,
    pub identity: u64,
    pub shared_key: String,
    pub cap_key: String,
    pub stat_base: String,
    /// The shared state as of this worker's last tick.
    pub view: EndpointRamp,
    /// What this worker saw since its last tick.
    pub batch: Batch,
    pub pending: Pending,
}

/// A callout this worker claimed and must send.
#[derive(Clone, Copy, Debug)]
pub struct Outgoing {
    pub endpoint: usize,
    pub identity: u64,
    pub dispatch: Dispatch,
}

/// A request ready for `dispatch_http_call`.
pub struct CalloutRequest {
    pub cluster: String,
    pub headers: Vec<(String, String)>,
    pub body: Option<String>,
    pub timeout_ms: u64,
}

/// The endpoint chosen for a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Choice {
    Endpoint {
        index: usize,
        panic: bool,
    },
    /// No endpoint can take it: none has weight, or every one is at its warm-up rate cap.
    None {
        capped: bool,
    },
}

/// All of one worker's ramps for one filter instance, on host `H` (the real proxy unless a test
/// says otherwise).
pub struct Worker<H: Host = WasmHost> {
    host: H,
    pub config: Rc<FilterConfig>,
    pub endpoints: Vec<Endpoint>,
    pub metrics: Metrics<H>,
    pub global_pending: GlobalPending,
    calls: HashMap<u32, Outgoing>,
    rng: u64,
    scratch: Vec<Candidate>,
    namespace: String,
    /// The directory version the endpoint table was built from.
    dir_version: u32,
    /// This worker's token for the discovery lease.
    me: u64,
    /// The discovery fetch in flight, if any.
    discovery_call: Option<u32>,
}

impl Worker {
    /// The worker's ramps on the real proxy.
    pub fn new(config: Rc<FilterConfig>, plugin: &str) -> Self {
        Worker::on(WasmHost, config, plugin)
    }
}

impl<H: Host + Clone> Worker<H> {
    /// The worker's ramps on `host`: stats defined, every endpoint's ramp read from shared data.
    pub fn on(host: H, config: Rc<FilterConfig>, plugin: &str) -> Self {
        let namespace = format!("rpack/ss/{}", sanitize_segment(plugin, 64));
        let mut metrics = Metrics::on(host.clone());
        stats::define_global(&mut metrics, &config.global.stat_prefix);
        let mut w = Worker {
            host,
            config: Rc::clone(&config),
            endpoints: Vec::new(),
            metrics,
            global_pending: GlobalPending::default(),
            calls: HashMap::new(),
            rng: random_u64(),
            scratch: Vec::new(),
            namespace,
            dir_version: 0,
            me: random_u64(),
            discovery_call: None,
        };
        match config.global.kind {
            Kind::Balance => {
                // With discovery, another worker may have written a discovered list already.
                let shared = if config.global.discovery.is_some() {
                    w.shared_directory()
                } else {
                    None
                };
                let dir = shared.unwrap_or_else(|| w.static_directory());
                w.adopt(dir);
            }
            Kind::Admit => {
                let ep = w.make_endpoint(0, "self".to_owned(), 1, "self".to_owned());
                w.endpoints.push(ep);
            }
        }
        w
    }
}

impl<H: Host> Worker<H> {
    /// The host this worker runs on (the root context sends its callouts through it).
    pub fn host(&self) -> &H {
        &self.host
    }

    fn static_directory(&self) -> Directory {
        let list: Vec<(String, u32)> = self
            .config
            .global
            .endpoints
            .iter()
            .map(|e| (e.address.clone(), e.weight))
            .collect();
        Directory::from_list(&list)
    }

    fn directory_key(&self) -> String {
        format!("{}/directory", self.namespace)
    }

    /// The directory in shared data, if a discovered list was ever written.
    fn shared_directory(&mut self) -> Option<Directory> {
        match shared::get_on(&self.host, &self.directory_key()) {
            Ok(v) => match v.value.as_deref() {
                None | Some([]) => None,
                Some(bytes) => match Directory::decode(bytes) {
                    Ok(d) => Some(d),
                    Err(_) => {
                        self.global_pending.shared.state_resets += 1;
                        None
                    }
                },
            },
            Err(e) => {
                self.global_pending.shared.count(e);
                None
            }
        }
    }

    /// Sets up one endpoint: stats defined, its ramp read from shared data.
    fn make_endpoint(&mut self, slot: u16, address: String, weight: u32, key: String) -> Endpoint {
        let policy = self.config.global.policy;
        let identity = identity_of(&address);
        let stat_base = format!(
            "{}.{}",
            self.config.global.stat_prefix,
            sanitize_segment(&address, 64)
        );
        stats::define_endpoint(&mut self.metrics, &stat_base);
        let mut ep = Endpoint {
            view: EndpointRamp::new(identity, &policy),
            shared_key: format!("{}/ep/{key}", self.namespace),
            cap_key: format!("{}/cap/{key}", self.namespace),
            address,
            slot,
            weight,
            identity,
            stat_base,
            batch: Batch::default(),
            pending: Pending::default(),
        };
        // Another worker may have this endpoint's ramp already (or this VM was reloaded).
        refresh(&self.host, &mut ep, &policy, &mut self.global_pending);
        ep
    }

    /// Rebuilds the endpoint table from `dir`: endpoints that stay keep their views and
    /// batches; endpoints that left are retired (their gauges brought back to zero) before any
    /// newcomer writes to a freed slot.
    fn adopt(&mut self, dir: Directory) {
        let mut old = std::mem::take(&mut self.endpoints);
        let mut next = Vec::with_capacity(dir.entries.len());
        let mut fresh = Vec::new();
        for e in &dir.entries {
            match old
                .iter()
                .position(|o| o.address == e.address && o.slot == e.slot)
            {
                Some(pos) => {
                    let mut kept = old.swap_remove(pos);
                    kept.weight = e.weight;
                    next.push(kept);
                }
                None => fresh.push(e.clone()),
            }
        }
        for gone in old {
            self.retire(gone);
        }
        for e in fresh {
            let ep = self.make_endpoint(e.slot, e.address, e.weight, e.slot.to_string());
            next.push(ep);
        }
        next.sort_by_key(|e| e.slot);
        self.endpoints = next;
        self.dir_version = dir.version;
    }

    /// An endpoint left the directory: flush its stats and, exactly once across workers, take
    /// its gauge values back out.
    fn retire(&mut self, mut ep: Endpoint) {
        stats::flush_endpoint(&mut self.metrics, &ep.stat_base, &mut ep.pending);
        let policy = self.config.global.policy;
        let identity = ep.identity;
        let result = cas_update_on(
            &self.host,
            &ep.shared_key,
            DEFAULT_CAS_ATTEMPTS,
            |cur| match cur.map(|b| EndpointRamp::decode(b, &policy)) {
                Some(Ok(mut st)) if st.identity == identity && st.shown != Shown::default() => {
                    let shown = st.shown;
                    st.shown = Shown::default();
                    Update::Write(st.encode(), Some(shown))
                }
                _ => Update::Keep(None),
            },
        );
        match result {
            Ok(Some(shown)) => {
                let d = GaugeDeltas {
                    weight: -i64::from(shown.weight),
                    phase: -i64::from(shown.phase),
                    paused: -i64::from(shown.paused),
                };
                stats::gauges(&mut self.metrics, &ep.stat_base, &d);
                log::info!(
                    "{} {}: left the endpoint list",
                    self.config.global.stat_prefix,
                    ep.address
                );
            }
            Ok(None) => {}
            Err(e) => self.global_pending.shared.count(e),
        }
    }

    /// Adopts a newer directory from shared data, if there is one.
    fn sync_directory(&mut self) {
        if let Some(d) = self.shared_directory() {
            if d.version != self.dir_version {
                self.adopt(d);
            }
        }
    }

    /// Whether this worker should fetch the discovery document now (it holds the lease and a
    /// fetch is due); the request to send if so.
    pub fn discovery_due(&mut self, now_ms: u64) -> Option<CalloutRequest> {
        let d = self.config.global.discovery.clone()?;
        if self.discovery_call.is_some() {
            return None;
        }
        let me = self.me;
        let key = format!("{}/discovery_lease", self.namespace);
        let claimed = cas_update_on(&self.host, &key, DEFAULT_CAS_ATTEMPTS, |cur| {
            let lease = cur.and_then(|b| FetchLease::decode(b).ok());
            match FetchLease::claim(lease, me, now_ms, d.interval_ms) {
                Some(l) => Update::Write(l.encode(), true),
                None => Update::Keep(false),
            }
        });
        match claimed {
            Ok(true) => Some(CalloutRequest {
                cluster: d.cluster,
                headers: vec![
                    (":method".to_owned(), "GET".to_owned()),
                    (":path".to_owned(), d.path),
                    (":authority".to_owned(), d.authority),
                    ("accept".to_owned(), "application/json".to_owned()),
                ],
                body: None,
                timeout_ms: d.timeout_ms,
            }),
            Ok(false) => None,
            Err(e) => {
                self.global_pending.shared.count(e);
                None
            }
        }
    }

    /// The discovery fetch went out with `token` (`None`: the host refused it).
    pub fn discovery_sent(&mut self, token: Option<u32>) {
        self.global_pending.discovery_fetches += 1;
        match token {
            Some(t) => self.discovery_call = Some(t),
            None => self.global_pending.discovery_failures += 1,
        }
    }

    /// Whether `token` is the discovery fetch.
    pub fn is_discovery(&self, token: u32) -> bool {
        self.discovery_call == Some(token)
    }

    /// The discovery document arrived (or the fetch failed: no status). A valid, changed list
    /// becomes the next directory, written under CAS and adopted at once.
    pub fn discovery_answered(&mut self, status: Option<u16>, body: Option<Vec<u8>>) {
        self.discovery_call = None;
        let prefix = self.config.global.stat_prefix.clone();
        if !status.is_some_and(|s| (200..300).contains(&s)) {
            self.global_pending.discovery_failures += 1;
            log::warn!("{prefix}: discovery fetch failed (status {status:?}); keeping the list");
            return;
        }
        let max = self.config.global.max_endpoints;
        let list = match parse_document(body.as_deref().unwrap_or_default(), usize::from(max)) {
            Ok(l) => l,
            Err(e) => {
                self.global_pending.discovery_rejected += 1;
                log::warn!("{prefix}: discovery document refused ({e}); keeping the list");
                return;
            }
        };
        let fallback = self.static_directory();
        let result = cas_update_on(
            &self.host,
            &self.directory_key(),
            DEFAULT_CAS_ATTEMPTS,
            |cur| {
                let current = cur
                    .and_then(|b| Directory::decode(b).ok())
                    .unwrap_or_else(|| fallback.clone());
                let (next, overflow) = current.next(&list, max);
                if next.version == current.version {
                    Update::Keep((next, overflow, false))
                } else {
                    Update::Write(next.encode(), (next, overflow, true))
                }
            },
        );
        match result {
            Ok((next, overflow, changed)) => {
                self.global_pending.endpoints_overflow += overflow as u64;
                if changed {
                    self.global_pending.discovery_updates += 1;
                    log::info!(
                        "{prefix}: discovery: {} endpoints (directory version {})",
                        next.entries.len(),
                        next.version
                    );
                }
                if next.version != self.dir_version {
                    self.adopt(next);
                }
            }
            Err(e) => self.global_pending.shared.count(e),
        }
    }

    /// A random number from this worker's generator (SplitMix64 seeded from the host's random
    /// source once): no host call per request.
    pub fn next_random(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// The tick: for every endpoint one CAS that publishes, maintains, claims callouts and
    /// settles gauges; then stats are flushed. Returns the callouts to send.
    pub fn tick(&mut self, now_ms: u64) -> Vec<Outgoing> {
        if self.config.global.discovery.is_some() {
            self.sync_directory();
        }
        let config = Rc::clone(&self.config);
        let policy = config.global.policy;
        let curve = config.routes.defaults.curve;
        let may_dispatch =
            config.global.dispatch_cluster.is_some() && self.calls.len() < MAX_PENDING_CALLOUTS;
        // The closed loop compares a warming endpoint with its warm peers, as last seen.
        let warm: Vec<Option<RecentTotals>> = self
            .endpoints
            .iter()
            .map(|e| (e.view.phase == Phase::Warm).then(|| e.view.recent.totals(now_ms)))
            .collect();
        let mut outgoing = Vec::new();
        for (i, ep) in self.endpoints.iter_mut().enumerate() {
            let peers = policy.closed_loop.and_then(|_| {
                let mut sum = RecentTotals::default();
                let mut any = false;
                for (j, t) in warm.iter().enumerate() {
                    if let (true, Some(t)) = (j != i, t) {
                        sum = sum.plus(*t);
                        any = true;
                    }
                }
                any.then_some(sum)
            });
            let batch = ep.batch.clone();
            let identity = ep.identity;
            let weight = ep.weight;
            let result = cas_update_on(&self.host, &ep.shared_key, DEFAULT_CAS_ATTEMPTS, |cur| {
                let (mut st, reset) = decode(cur, identity, &policy);
                let mut events = Vec::new();
                if !batch.is_empty() {
                    events.extend(st.publish(&batch, now_ms, &policy));
                }
                events.extend(st.maintain(now_ms, &policy, peers.as_ref()));
                let dispatches = if may_dispatch {
                    st.claim_dispatches(now_ms, &policy)
                } else {
                    Vec::new()
                };
                let gauges = st.sync_shown(weight_centi(weight, &st, now_ms, &curve, &policy));
                let bytes = st.encode();
                let changed = cur != Some(bytes.as_slice());
                let out = (st, events, dispatches, gauges, reset);
                if changed {
                    Update::Write(bytes, out)
                } else {
                    Update::Keep(out)
                }
            });
            match result {
                Ok((st, events, dispatches, gauges, reset)) => {
                    if reset {
                        self.global_pending.shared.state_resets += 1;
                    }
                    ep.batch = Batch::default();
                    ep.view = st;
                    for e in &events {
                        stats::event(&mut self.metrics, &ep.stat_base, e);
                        log_event(&config.global.stat_prefix, &ep.address, e, &ep.view);
                    }
                    if let Some(d) = gauges {
                        stats::gauges(&mut self.metrics, &ep.stat_base, &d);
                    }
                    outgoing.extend(dispatches.into_iter().map(|dispatch| Outgoing {
                        endpoint: i,
                        identity,
                        dispatch,
                    }));
                }
                // The batch stays and is published with the next tick's.
                Err(e) => self.global_pending.shared.count(e),
            }
            stats::flush_endpoint(&mut self.metrics, &ep.stat_base, &mut ep.pending);
        }
        stats::flush_global(
            &mut self.metrics,
            &config.global.stat_prefix,
            &mut self.global_pending,
        );
        outgoing
    }

    /// Fills the scratch candidates for a pick: ramped effective weights, or the configured
    /// ones (`ramped: false`, what dry run routes by). Returns whether nobody had weight and
    /// everyone was given their configured weight instead (panic routing).
    fn fill_candidates(&mut self, now_ms: u64, curve: &Curve, ramped: bool) -> bool {
        let policy = self.config.global.policy;
        self.scratch.clear();
        for e in &self.endpoints {
            let f = if ramped {
                e.view.fraction(now_ms, curve, &policy)
            } else {
                1.0
            };
            let in_flight = i64::from(e.view.in_flight).saturating_add(e.batch.in_flight_delta);
            self.scratch.push(Candidate {
                weight: f64::from(e.weight) * f,
                in_flight: u32::try_from(in_flight.max(0)).unwrap_or(u32::MAX),
            });
        }
        if total_weight(&self.scratch) > 0.0 {
            return false;
        }
        // Nobody is ready (every endpoint new and gated, or unhealthy): refusing all traffic
        // would be an outage of its own, so route by configured weight, like Envoy's panic mode.
        for (c, e) in self.scratch.iter_mut().zip(self.endpoints.iter()) {
            c.weight = f64::from(e.weight);
        }
        true
    }

    /// Chooses the endpoint for a request under `curve`, honouring `max_warmup_rps`.
    pub fn choose(&mut self, now_ms: u64, curve: &Curve) -> Choice {
        let panic = self.fill_candidates(now_ms, curve, true);
        let strategy = self.config.global.balancer;
        let mut capped = false;
        for _ in 0..self.endpoints.len() {
            let randoms = [self.next_random(), self.next_random()];
            let Some(index) = pick(&self.scratch, strategy, randoms) else {
                break;
            };
            if self.over_cap(index, now_ms) {
                capped = true;
                if let Some(e) = self.endpoints.get_mut(index) {
                    e.pending.rate_capped += 1;
                }
                if let Some(c) = self.scratch.get_mut(index) {
                    c.weight = 0.0;
                }
                continue;
            }
            return Choice::Endpoint { index, panic };
        }
        Choice::None { capped }
    }

    /// The endpoints a request names after `first` for its retries (`alternates`), drawn from
    /// the candidates of the choice just made: an endpoint that had no weight there (unhealthy,
    /// gated, at its warm-up cap) is never named. Returns how many of `out` it filled.
    pub fn alternates(&mut self, first: usize, out: &mut [usize]) -> usize {
        let strategy = self.config.global.balancer;
        let mut scratch = std::mem::take(&mut self.scratch);
        let n = alternates(&mut scratch, strategy, first, out, || self.next_random());
        self.scratch = scratch;
        n
    }

    /// Dry run: the endpoint the configured weights give (where the request goes), and the one
    /// the ramp would have chosen with the same random numbers (counted, not used).
    pub fn choose_dry_run(&mut self, now_ms: u64, curve: &Curve) -> (Option<usize>, Option<usize>) {
        let strategy = self.config.global.balancer;
        let randoms = [self.next_random(), self.next_random()];
        self.fill_candidates(now_ms, curve, true);
        let would = pick(&self.scratch, strategy, randoms);
        self.fill_candidates(now_ms, curve, false);
        (pick(&self.scratch, strategy, randoms), would)
    }

    /// Whether a request to endpoint `index` is over its warm-up rate cap (taking a slot when it
    /// is not). Only warming endpoints are capped; on a shared-data error the request passes.
    pub fn over_cap(&mut self, index: usize, now_ms: u64) -> bool {
        let Some(cap) = self.config.global.max_warmup_rps else {
            return false;
        };
        let Some(ep) = self.endpoints.get(index) else {
            return false;
        };
        if !ep.view.is_warming() {
            return false;
        }
        let now_us = now_ms.saturating_mul(1_000);
        let result = cas_update_on(&self.host, &ep.cap_key, DEFAULT_CAS_ATTEMPTS, |cur| {
            let tat = cur.and_then(|b| rate_cap::decode_tat(b).ok()).unwrap_or(0);
            match cap.try_take(tat, now_us) {
                Ok(next) => Update::Write(rate_cap::encode_tat(next), false),
                Err(_) => Update::Keep(true),
            }
        });
        match result {
            Ok(over) => over,
            Err(e) => {
                self.global_pending.shared.count(e);
                false
            }
        }
    }

    /// The admitted fraction of the replica itself (admit mode) under `curve`.
    pub fn admit_fraction(&self, now_ms: u64, curve: &Curve) -> (f64, Phase) {
        let policy = self.config.global.policy;
        self.endpoints.first().map_or((1.0, Phase::Warm), |e| {
            (e.view.fraction(now_ms, curve, &policy), e.view.phase)
        })
    }

    /// The endpoint at `index` if it is still the one with `identity`.
    pub fn endpoint_mut(&mut self, index: usize, identity: u64) -> Option<&mut Endpoint> {
        self.endpoints
            .get_mut(index)
            .filter(|e| e.identity == identity)
    }

    /// Builds the request for a claimed callout.
    pub fn callout_request(&self, o: &Outgoing) -> Option<CalloutRequest> {
        let g = &self.config.global;
        let cluster = g.dispatch_cluster.clone()?;
        let ep = self.endpoints.get(o.endpoint)?;
        let (spec, timeout_ms, marker): (&CalloutSpec, u64, &str) = match o.dispatch {
            Dispatch::Priming { index, .. } => (
                g.warmup_requests.get(usize::try_from(index).ok()?)?,
                g.warmup_timeout_ms,
                "priming",
            ),
            Dispatch::PrimingProbe => (g.warmup_requests.first()?, g.warmup_timeout_ms, "priming"),
            Dispatch::HealthCheck => (
                g.health_check.as_ref()?,
                g.health_check_timeout_ms,
                "health_check",
            ),
        };
        let authority = match (&g.warmup_authority, g.kind) {
            (Some(a), _) => a.clone(),
            (None, Kind::Balance) => ep.address.clone(),
            (None, Kind::Admit) => "localhost".to_owned(),
        };
        let mut headers = Vec::with_capacity(spec.headers.len() + 6);
        headers.push((":method".to_owned(), spec.method.clone()));
        headers.push((":path".to_owned(), spec.path.clone()));
        headers.push((":authority".to_owned(), authority));
        if g.kind == Kind::Balance {
            headers.push((g.destination_header.clone(), ep.address.clone()));
        }
        headers.push((DECISION_HEADER.to_owned(), marker.to_owned()));
        if let Some(b) = &spec.body {
            headers.push(("content-length".to_owned(), b.len().to_string()));
        }
        headers.extend(spec.headers.iter().cloned());
        Some(CalloutRequest {
            cluster,
            headers,
            body: spec.body.clone(),
            timeout_ms,
        })
    }

    /// A callout went out with `token`.
    pub fn callout_sent(&mut self, token: u32, o: Outgoing) {
        if let Some(ep) = self.endpoint_mut(o.endpoint, o.identity) {
            match o.dispatch {
                Dispatch::HealthCheck => ep.pending.health_checks_sent += 1,
                _ => ep.pending.priming_sent += 1,
            }
        }
        self.calls.insert(token, o);
    }

    /// The host refused a callout: it counts as a failed one.
    pub fn callout_refused(&mut self, o: Outgoing, now_ms: u64) {
        self.global_pending.callout_errors += 1;
        self.settle(o, false, now_ms);
    }

    /// The answer to callout `token` arrived (`success` judged by the caller).
    pub fn callout_answered(&mut self, token: u32, success: bool, now_ms: u64) {
        if let Some(o) = self.calls.remove(&token) {
            self.settle(o, success, now_ms);
        }
    }

    fn settle(&mut self, o: Outgoing, success: bool, now_ms: u64) {
        let Some(ep) = self.endpoint_mut(o.endpoint, o.identity) else {
            return;
        };
        match o.dispatch {
            Dispatch::HealthCheck => {
                if !success {
                    ep.pending.health_checks_failed += 1;
                }
                ep.batch.health(success, now_ms);
            }
            Dispatch::PrimingProbe => {
                if success {
                    ep.pending.priming_succeeded += 1;
                    ep.batch.priming_probe_ok = true;
                } else {
                    ep.pending.priming_failed += 1;
                }
                ep.batch.health(success, now_ms);
            }
            Dispatch::Priming { generation, .. } => {
                if success {
                    ep.pending.priming_succeeded += 1;
                } else {
                    ep.pending.priming_failed += 1;
                }
                ep.batch.priming(generation, success, now_ms);
            }
        }
    }
}

/// Decode shared bytes, starting afresh on absence, on another endpoint's state (a reused
/// slot) or on garbage; the flag says garbage was seen.
fn decode(cur: Option<&[u8]>, identity: u64, policy: &Policy) -> (EndpointRamp, bool) {
    match cur {
        None | Some([]) => (EndpointRamp::new(identity, policy), false),
        Some(bytes) => match EndpointRamp::decode(bytes, policy) {
            Ok(st) if st.identity == identity => (st, false),
            Ok(_) => (EndpointRamp::new(identity, policy), false),
            Err(_) => (EndpointRamp::new(identity, policy), true),
        },
    }
}

/// Effective weight in hundredths, as the gauge shows it (default route's curve).
fn weight_centi(
    weight: u32,
    st: &EndpointRamp,
    now_ms: u64,
    curve: &Curve,
    policy: &Policy,
) -> u32 {
    let w = f64::from(weight) * st.fraction(now_ms, curve, policy) * 100.0;
    if w.is_finite() && w > 0.0 {
        w.round().min(f64::from(u32::MAX)) as u32
    } else {
        0
    }
}

/// Re-read one endpoint's shared state into the cached view (used at start-up).
fn refresh<H: Host>(host: &H, ep: &mut Endpoint, policy: &Policy, g: &mut GlobalPending) {
    match shared::get_on(host, &ep.shared_key) {
        Ok(v) => {
            let (st, reset) = decode(v.value.as_deref(), ep.identity, policy);
            if reset {
                g.shared.state_resets += 1;
            }
            ep.view = st;
        }
        Err(e) => g.shared.count(e),
    }
}

fn log_event(prefix: &str, address: &str, e: &Event, st: &EndpointRamp) {
    match e {
        Event::PrimingStarted => log::info!("{prefix} {address}: answering; priming starts"),
        Event::RampStarted { from } => log::info!(
            "{prefix} {address}: ramp started (was {}); clock from {} ms",
            from.as_str(),
            st.ramp_start_ms
        ),
        Event::Warm => log::info!("{prefix} {address}: warm"),
        Event::BecameUnhealthy { from } => log::warn!(
            "{prefix} {address}: unhealthy after {} failures in a row (was {})",
            st.consecutive_failures,
            from.as_str()
        ),
        Event::Silence => log::info!("{prefix} {address}: first success after a silence"),
        Event::Paused(r) => log::info!(
            "{prefix} {address}: ramp paused: {} worse than its peers",
            r.as_str()
        ),
        Event::Resumed => log::info!("{prefix} {address}: ramp resumed"),
    }
}
