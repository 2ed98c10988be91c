//! The warm-up ramp of one endpoint: when it may take traffic, and how much.
//!
//! # Why
//!
//! A replica that restarts with an empty cache and gets its full share of traffic at once melts:
//! every request misses the cache, latency and CPU spike, pools fill, and the replica that was
//! supposed to add capacity takes some away. The manual fix is a recipe: drop its weight to a
//! small floor, prime its cache, then raise the weight step by step while watching it. This
//! module is that recipe as a state machine.
//!
//! Envoy's own `slow_start_config` has the curve but starts the clock when the host is *created*
//! (not when it first answers), does not prime, and does not look at how the new host is doing.
//! Here the clock starts at the endpoint's **first successful response**, restarts when the
//! endpoint comes back after being unhealthy (or after a long silence), can **pause** while the
//! endpoint is doing worse than its peers, and can be preceded by **priming** requests.
//!
//! # The curve
//!
//! [`Curve::fraction`] is Envoy's formula:
//! `max(min_weight_percent / 100, (t / slow_start_window)^(1 / aggression))`, where `t` is the
//! ramp time (wall time since the clock started, minus time spent paused). Aggression 1 is a
//! straight line; above 1 the weight rises fast and then flattens; below 1 it stays low longer.
//!
//! # Phases
//!
//! ```text
//!            first success                 all answered or deadline        t >= window
//!   New ───────────────────▶ Priming ─────────────────────────▶ Ramping ───────────────▶ Warm
//!    │   (no priming: straight to Ramping, clock = first success)   ▲  │ closed loop: pause
//!    │                                                              │  ▼ while worse than peers
//!    └──── consecutive failures ──▶ Unhealthy ── first success ─────┘ (through Priming if any)
//!          (from any phase)                      or silence > silence_timeout in Ramping/Warm
//! ```
//!
//! How much traffic each phase takes is [`EndpointRamp::fraction`]: New and Unhealthy take the
//! floor, or nothing when a *gate* exists (priming or an active health check can find out
//! whether the endpoint is back without risking user requests) until the gate has been shut for
//! `gate_timeout` (then the floor: a gate that can never open, such as priming requests that
//! cannot reach the application, must not shed an instance's traffic forever); Priming takes
//! nothing (or the
//! floor, when `prime_before_traffic` is off); Ramping follows the curve; Warm takes all.
//!
//! # Who decides, and when
//!
//! One [`EndpointRamp`] per endpoint lives in shared data. Workers never change it on the request
//! path: each worker collects a [`Batch`] of outcomes and, on its tick, folds the batch in with
//! [`EndpointRamp::publish`], moves time-driven phases with [`EndpointRamp::maintain`], claims
//! priming and health-check requests with [`EndpointRamp::claim_dispatches`] and brings the
//! exported gauges up to date with [`EndpointRamp::sync_shown`], all inside one compare-and-swap.
//! Every transition therefore happens exactly once, in the CAS of the worker that made it, and
//! every priming request is claimed by exactly one worker.
//!
//! The closed loop compares the endpoint's recent error rate and mean latency (a small
//! time-bucketed [`Recent`] window kept in the same value) with its warm peers'. Why a mean over
//! a short time window and not the pack's per-sample-decayed latency histogram: the loop must see
//! the warming endpoint's *current* latency within seconds while it gets only a trickle of
//! traffic; a histogram that forgets per sample would remember the cold misses for as many
//! samples as its half-life, which at the floor share can take minutes.

use crate::codec::{DecodeError, Decoder, Encoder};

/// Kind tag of an encoded [`EndpointRamp`].
const KIND: u8 = 0x55;
/// Layout version of an encoded [`EndpointRamp`].
const VERSION: u8 = 1;
/// Buckets in the [`Recent`] window.
pub const RECENT_BUCKETS: usize = 10;
/// Most dispatches one worker claims for one endpoint in one tick (bounds a burst after a stall).
pub const MAX_DISPATCHES_PER_TICK: usize = 64;

fn clamp01(x: f64) -> f64 {
    if x.is_nan() {
        0.0
    } else {
        x.clamp(0.0, 1.0)
    }
}

// ---------------------------------------------------------------------------------------------
// The curve
// ---------------------------------------------------------------------------------------------

/// Envoy's slow-start curve.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Curve {
    /// `slow_start_window`: ramp time after which the weight is full.
    pub window_ms: u64,
    /// `aggression`: the exponent is `1 / aggression`. Non-finite or non-positive means 1.
    pub aggression: f64,
    /// `min_weight_percent / 100`: the floor of the fraction, 0..=1.
    pub min_fraction: f64,
}

impl Curve {
    /// The share of the configured weight after `elapsed_ms` of ramp time, in `[min, 1]`.
    /// Like Envoy, a ramp time of 0 counts as 1 ms, so aggression below 1 never raises 0 to a
    /// negative power.
    pub fn fraction(&self, elapsed_ms: u64) -> f64 {
        if self.window_ms == 0 || elapsed_ms >= self.window_ms {
            return 1.0;
        }
        let time_factor = elapsed_ms.max(1) as f64 / self.window_ms as f64;
        let aggression = if self.aggression.is_finite() && self.aggression > 0.0 {
            self.aggression
        } else {
            1.0
        };
        let curve = if aggression == 1.0 {
            time_factor
        } else {
            time_factor.powf(1.0 / aggression)
        };
        clamp01(curve.max(clamp01(self.min_fraction)))
    }
}

// ---------------------------------------------------------------------------------------------
// Policy
// ---------------------------------------------------------------------------------------------

/// Where an endpoint is in its warm-up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Listed, never seen succeeding.
    New,
    /// Answering; priming requests are being sent before (most) traffic.
    Priming,
    /// Taking a share of traffic that follows the curve.
    Ramping,
    /// Full weight.
    Warm,
    /// Failing; waiting for a success to start over.
    Unhealthy,
}

impl Phase {
    /// Value of the `phase` gauge.
    pub const fn gauge_value(self) -> u8 {
        match self {
            Phase::New => 0,
            Phase::Priming => 1,
            Phase::Ramping => 2,
            Phase::Warm => 3,
            Phase::Unhealthy => 4,
        }
    }

    fn from_u8(v: u8) -> Result<Self, DecodeError> {
        Ok(match v {
            0 => Phase::New,
            1 => Phase::Priming,
            2 => Phase::Ramping,
            3 => Phase::Warm,
            4 => Phase::Unhealthy,
            _ => return Err(DecodeError::Invalid),
        })
    }

    /// Lowercase name for headers and logs.
    pub const fn as_str(self) -> &'static str {
        match self {
            Phase::New => "new",
            Phase::Priming => "priming",
            Phase::Ramping => "ramping",
            Phase::Warm => "warm",
            Phase::Unhealthy => "unhealthy",
        }
    }
}

/// When a warming endpoint counts as doing worse than its peers.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ClosedLoop {
    /// Pause while its mean latency exceeds the peers' by this factor (`None`: not judged).
    pub latency_factor: Option<f64>,
    /// Pause while its error rate exceeds the peers' by this factor (`None`: not judged).
    pub error_rate_factor: Option<f64>,
    /// Both it and its peers need this many requests in the window before they are compared.
    pub min_requests: u32,
    /// Latencies below this count as this: a 0.4 ms endpoint is not "3× slower" than 0.1 ms.
    pub latency_floor_ms: f64,
    /// Error rates below this (percent) count as this, so one error among peers' zero does not
    /// pause the ramp.
    pub error_floor_percent: f64,
}

/// Why a ramp paused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PauseReason {
    Latency,
    ErrorRate,
}

impl PauseReason {
    pub const fn as_str(self) -> &'static str {
        match self {
            PauseReason::Latency => "latency",
            PauseReason::ErrorRate => "error_rate",
        }
    }
}

impl ClosedLoop {
    /// Whether `me` is doing worse than `peers`, and by which signal (latency first). `None`
    /// also when either side has too few requests to judge.
    pub fn worse(&self, me: &RecentTotals, peers: &RecentTotals) -> Option<PauseReason> {
        let min = self.min_requests.max(1);
        if me.requests < min || peers.requests < min {
            return None;
        }
        if let (Some(factor), Some(mine), Some(theirs)) = (
            self.latency_factor,
            me.mean_latency_ms(),
            peers.mean_latency_ms(),
        ) {
            let floor = self.latency_floor_ms.max(0.0);
            if mine.max(floor) > factor * theirs.max(floor) {
                return Some(PauseReason::Latency);
            }
        }
        if let Some(factor) = self.error_rate_factor {
            let floor = self.error_floor_percent.max(0.0);
            if me.error_percent().max(floor) > factor * peers.error_percent().max(floor) {
                return Some(PauseReason::ErrorRate);
            }
        }
        None
    }
}

/// Priming: a list of requests sent before the endpoint takes (most) traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Priming {
    /// How many warm-up requests are configured (at least 1).
    pub requests: u32,
    /// Pacing: one request per this many ms across all workers (`1000 / warmup_rate`).
    pub interval_ms: u64,
    /// Priming ends this long after it began even if answers are missing.
    pub deadline_ms: u64,
}

/// Everything the ramp needs to know about the configuration.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Policy {
    /// Ramp time after which an endpoint is warm: the longest window of any route's curve.
    pub window_ms: u64,
    /// This many failures in a row make an endpoint unhealthy; 0 turns passive detection off.
    pub unhealthy_after: u32,
    /// A success this long after the previous one restarts the ramp (`None`: never).
    pub silence_ms: Option<u64>,
    pub closed_loop: Option<ClosedLoop>,
    /// Span of the [`Recent`] window the closed loop judges.
    pub recent_window_ms: u64,
    pub priming: Option<Priming>,
    /// Active health checks of answering endpoints, every this many ms (`None`: off).
    pub health_check_interval_ms: Option<u64>,
    /// How often a new or unhealthy endpoint is checked for readiness when it is gated.
    pub recheck_interval_ms: u64,
    /// While priming, the endpoint takes no traffic (else the floor).
    pub prime_before_traffic: bool,
    /// A gated new or unhealthy endpoint takes the floor after this long in that phase
    /// (`None`: it waits for its gate forever). Failing automation must fail open.
    pub gate_timeout_ms: Option<u64>,
}

impl Policy {
    /// Whether readiness can be learned without user traffic (a priming or health-check request
    /// can be sent): then new and unhealthy endpoints take none.
    pub fn gated(&self) -> bool {
        self.priming.is_some() || self.health_check_interval_ms.is_some()
    }

    /// A policy with only the ramp: no priming, health checks, closed loop or silence.
    pub fn ramp_only(window_ms: u64) -> Self {
        Policy {
            window_ms,
            unhealthy_after: 5,
            silence_ms: None,
            closed_loop: None,
            recent_window_ms: 5_000,
            priming: None,
            health_check_interval_ms: None,
            recheck_interval_ms: 1_000,
            prime_before_traffic: true,
            gate_timeout_ms: None,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Recent outcomes
// ---------------------------------------------------------------------------------------------

/// Requests, failures and summed success latency.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecentTotals {
    pub requests: u32,
    pub failures: u32,
    /// Sum of the latencies of successful requests, in ms.
    pub latency_sum_ms: u64,
}

impl RecentTotals {
    /// Failures as a percentage of requests (0 when none).
    pub fn error_percent(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            f64::from(self.failures) * 100.0 / f64::from(self.requests)
        }
    }

    /// Mean latency of successful requests, if there were any.
    pub fn mean_latency_ms(&self) -> Option<f64> {
        let successes = self.requests.saturating_sub(self.failures);
        if successes == 0 {
            None
        } else {
            Some(self.latency_sum_ms as f64 / f64::from(successes))
        }
    }

    /// `self + other`, saturating.
    #[must_use]
    pub fn plus(self, other: RecentTotals) -> RecentTotals {
        RecentTotals {
            requests: self.requests.saturating_add(other.requests),
            failures: self.failures.saturating_add(other.failures),
            latency_sum_ms: self.latency_sum_ms.saturating_add(other.latency_sum_ms),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct RecentBucket {
    epoch: u64,
    totals: RecentTotals,
}

/// Outcomes of the last `window_ms`, in [`RECENT_BUCKETS`] slots keyed by epoch (the same
/// mechanics as the pack's outcome `TimeWindow`, with a latency sum added).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recent {
    width_ms: u64,
    buckets: [RecentBucket; RECENT_BUCKETS],
    head: u64,
}

impl Recent {
    /// An empty window spanning about `window_ms`.
    pub fn new(window_ms: u64) -> Self {
        Recent {
            width_ms: (window_ms / RECENT_BUCKETS as u64).max(1),
            buckets: [RecentBucket::default(); RECENT_BUCKETS],
            head: 0,
        }
    }

    fn slot(epoch: u64) -> usize {
        (epoch % RECENT_BUCKETS as u64) as usize
    }

    /// Adds `totals` at `now_ms` (a time older than the newest bucket lands in it).
    pub fn record(&mut self, now_ms: u64, totals: RecentTotals) {
        if totals.requests == 0 {
            return;
        }
        let epoch = (now_ms / self.width_ms).max(self.head);
        self.head = epoch;
        if let Some(b) = self.buckets.get_mut(Self::slot(epoch)) {
            if b.epoch != epoch {
                *b = RecentBucket {
                    epoch,
                    totals: RecentTotals::default(),
                };
            }
            b.totals = b.totals.plus(totals);
        }
    }

    /// Totals of the buckets within the window ending at `now_ms`.
    pub fn totals(&self, now_ms: u64) -> RecentTotals {
        let now_epoch = (now_ms / self.width_ms).max(self.head);
        let oldest = now_epoch.saturating_sub(RECENT_BUCKETS as u64 - 1);
        self.buckets
            .iter()
            .filter(|b| b.epoch >= oldest && b.epoch <= now_epoch && b.totals.requests > 0)
            .fold(RecentTotals::default(), |acc, b| acc.plus(b.totals))
    }

    /// Forget everything.
    pub fn clear(&mut self) {
        self.buckets = [RecentBucket::default(); RECENT_BUCKETS];
        self.head = 0;
    }

    fn encode_into(&self, e: &mut Encoder) {
        e.u64(self.width_ms).u64(self.head);
        for b in &self.buckets {
            e.u64(b.epoch)
                .u32(b.totals.requests)
                .u32(b.totals.failures)
                .u64(b.totals.latency_sum_ms);
        }
    }

    fn decode_from(d: &mut Decoder<'_>, window_ms: u64) -> Result<Self, DecodeError> {
        let width_ms = d.u64()?;
        let head = d.u64()?;
        let mut buckets = [RecentBucket::default(); RECENT_BUCKETS];
        for b in &mut buckets {
            b.epoch = d.u64()?;
            b.totals.requests = d.u32()?;
            b.totals.failures = d.u32()?;
            b.totals.latency_sum_ms = d.u64()?;
        }
        let mut recent = Recent {
            width_ms,
            buckets,
            head,
        };
        if width_ms != Recent::new(window_ms).width_ms {
            // Written under another window: its buckets mean other spans. Start empty.
            recent = Recent::new(window_ms);
        }
        Ok(recent)
    }
}

// ---------------------------------------------------------------------------------------------
// One worker's observations
// ---------------------------------------------------------------------------------------------

/// What one worker saw of one endpoint since its last publish. Plain counters: no host call,
/// no allocation on the request path.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Batch {
    /// User requests that succeeded / failed.
    pub successes: u32,
    pub failures: u32,
    /// Summed latency of the successful user requests, ms.
    pub latency_sum_ms: u64,
    /// Earliest and latest success of any kind (user, priming, health check), 0 when none.
    pub first_success_ms: u64,
    pub last_success_ms: u64,
    /// Failures of any kind after the last success in this batch (all of them when none).
    pub trailing_failures: u32,
    /// Requests started minus requests finished.
    pub in_flight_delta: i64,
    /// Priming answers, for the round `generation`.
    pub generation: u32,
    pub priming_ok: u32,
    pub priming_failed: u32,
    /// The readiness probe of a gated endpoint was the first warm-up request, and it succeeded:
    /// priming can go on from the second one.
    pub priming_probe_ok: bool,
    /// The endpoint's cell is being undrained after a long full drain: its caches went cold,
    /// so a ramping or warm endpoint warms up again (see [`crate::cells`]).
    pub cold: bool,
}

impl Batch {
    /// One finished user request.
    pub fn record(&mut self, success: bool, latency_ms: u64, now_ms: u64) {
        if success {
            self.successes = self.successes.saturating_add(1);
            self.latency_sum_ms = self.latency_sum_ms.saturating_add(latency_ms);
        } else {
            self.failures = self.failures.saturating_add(1);
        }
        self.health(success, now_ms);
    }

    /// A readiness signal that is not a user request (health check, priming answer).
    pub fn health(&mut self, success: bool, now_ms: u64) {
        if success {
            let at = now_ms.max(1);
            if self.first_success_ms == 0 || at < self.first_success_ms {
                self.first_success_ms = at;
            }
            self.last_success_ms = self.last_success_ms.max(at);
            self.trailing_failures = 0;
        } else {
            self.trailing_failures = self.trailing_failures.saturating_add(1);
        }
    }

    /// The answer to a priming request of round `generation` (0 headers, a 5xx: failed).
    pub fn priming(&mut self, generation: u32, success: bool, now_ms: u64) {
        if self.generation != generation {
            self.generation = generation;
            self.priming_ok = 0;
            self.priming_failed = 0;
        }
        if success {
            self.priming_ok = self.priming_ok.saturating_add(1);
        } else {
            self.priming_failed = self.priming_failed.saturating_add(1);
        }
        self.health(success, now_ms);
    }

    /// Nothing to publish.
    pub fn is_empty(&self) -> bool {
        *self == Batch::default()
    }
}

// ---------------------------------------------------------------------------------------------
// The shared state
// ---------------------------------------------------------------------------------------------

/// What a transition was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// Answering again (or for the first time): priming begins.
    PrimingStarted,
    /// The ramp clock started (`from` says whether after priming, as new, or after recovery).
    RampStarted {
        from: Phase,
    },
    /// Ramp time reached the window.
    Warm,
    /// Too many failures in a row.
    BecameUnhealthy {
        from: Phase,
    },
    /// A success after `silence_timeout` without one: warming up again.
    Silence,
    /// Its cell was undrained after a long full drain: warming up again.
    Cold,
    Paused(PauseReason),
    Resumed,
}

/// Which request a worker should send for an endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dispatch {
    /// Warm-up request `index` of the priming round `generation`.
    Priming { index: u32, generation: u32 },
    /// The first warm-up request, sent to learn whether a gated endpoint answers.
    PrimingProbe,
    /// The active health check.
    HealthCheck,
}

/// The values the exported gauges show, kept in the shared state so that whichever worker
/// notices a change moves the gauge by exactly the difference (gauges add across workers).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Shown {
    /// Effective weight in hundredths of a weight unit.
    pub weight: u32,
    pub phase: u8,
    pub paused: bool,
}

/// Gauge moves owed after [`EndpointRamp::sync_shown`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GaugeDeltas {
    pub weight: i64,
    pub phase: i64,
    pub paused: i64,
}

/// One endpoint's warm-up state, shared by all workers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointRamp {
    /// Hash of the endpoint's address: a slot reused by another endpoint starts afresh.
    pub identity: u64,
    pub phase: Phase,
    /// Bumped on entering New, Unhealthy or Priming: answers of older priming rounds are stale.
    pub generation: u32,
    pub phase_since_ms: u64,
    /// Ramping: when the ramp clock started (first success, or end of priming).
    pub ramp_start_ms: u64,
    /// Ramping: time spent paused before the current pause.
    pub paused_ms: u64,
    /// Ramping: when the current pause began; 0 when running.
    pub pause_since_ms: u64,
    pub pause_reason: Option<PauseReason>,
    pub last_success_ms: u64,
    pub consecutive_failures: u32,
    /// Requests in flight as of each worker's last publish.
    pub in_flight: u32,
    /// Priming: next warm-up request to claim, answers so far.
    pub priming_next: u32,
    pub priming_ok: u32,
    pub priming_failed: u32,
    /// Pacing of priming requests and readiness probes: the next may be claimed at this time.
    pub next_dispatch_ms: u64,
    /// Pacing of active health checks of answering endpoints.
    pub next_health_check_ms: u64,
    pub shown: Shown,
    pub recent: Recent,
}

impl EndpointRamp {
    /// A new endpoint: never seen succeeding.
    pub fn new(identity: u64, policy: &Policy) -> Self {
        EndpointRamp {
            identity,
            phase: Phase::New,
            generation: 0,
            phase_since_ms: 0,
            ramp_start_ms: 0,
            paused_ms: 0,
            pause_since_ms: 0,
            pause_reason: None,
            last_success_ms: 0,
            consecutive_failures: 0,
            in_flight: 0,
            priming_next: 0,
            priming_ok: 0,
            priming_failed: 0,
            next_dispatch_ms: 0,
            next_health_check_ms: 0,
            shown: Shown::default(),
            recent: Recent::new(policy.recent_window_ms),
        }
    }

    /// Ramp time at `now_ms` (wall time since the clock started minus pauses); `None` unless
    /// ramping.
    pub fn ramp_elapsed_ms(&self, now_ms: u64) -> Option<u64> {
        if self.phase != Phase::Ramping {
            return None;
        }
        let current_pause = if self.pause_since_ms > 0 {
            now_ms.saturating_sub(self.pause_since_ms)
        } else {
            0
        };
        Some(
            now_ms
                .saturating_sub(self.ramp_start_ms)
                .saturating_sub(self.paused_ms)
                .saturating_sub(current_pause),
        )
    }

    /// Whether the ramp is paused by the closed loop.
    pub fn is_paused(&self) -> bool {
        self.phase == Phase::Ramping && self.pause_since_ms > 0
    }

    /// The share of the endpoint's weight it takes now, under `curve`, in `[0, 1]`.
    pub fn fraction(&self, now_ms: u64, curve: &Curve, policy: &Policy) -> f64 {
        let floor = clamp01(curve.min_fraction);
        match self.phase {
            Phase::Warm => 1.0,
            Phase::Ramping => self
                .ramp_elapsed_ms(now_ms)
                .map_or(floor, |t| curve.fraction(t)),
            Phase::Priming => {
                if policy.prime_before_traffic {
                    0.0
                } else {
                    floor
                }
            }
            Phase::New | Phase::Unhealthy => {
                if policy.gated() && !self.gate_timed_out(now_ms, policy) {
                    0.0
                } else {
                    floor
                }
            }
        }
    }

    /// Whether a new or unhealthy endpoint has been gated for `gate_timeout_ms`: it then takes
    /// the floor as if ungated, so user requests can show it is back. A new endpoint's clock
    /// starts at the first [`EndpointRamp::maintain`] that sees it.
    pub fn gate_timed_out(&self, now_ms: u64, policy: &Policy) -> bool {
        matches!(self.phase, Phase::New | Phase::Unhealthy)
            && self.phase_since_ms > 0
            && policy
                .gate_timeout_ms
                .is_some_and(|t| now_ms.saturating_sub(self.phase_since_ms) >= t)
    }

    /// Whether the endpoint is somewhere in its warm-up (a per-endpoint rate cap applies).
    pub fn is_warming(&self) -> bool {
        self.phase != Phase::Warm
    }

    fn enter(&mut self, phase: Phase, now_ms: u64) {
        self.phase = phase;
        self.phase_since_ms = now_ms;
        self.paused_ms = 0;
        self.pause_since_ms = 0;
        self.pause_reason = None;
        if matches!(phase, Phase::New | Phase::Unhealthy | Phase::Priming) {
            self.generation = self.generation.wrapping_add(1);
            self.ramp_start_ms = 0;
            self.priming_next = 0;
            self.priming_ok = 0;
            self.priming_failed = 0;
            self.next_dispatch_ms = now_ms;
        }
    }

    /// The endpoint answered (first time, after failures, or after silence): prime or ramp.
    fn become_ready(
        &mut self,
        first_success_ms: u64,
        via_priming_probe: bool,
        now_ms: u64,
        policy: &Policy,
    ) -> Event {
        let from = self.phase;
        if let Some(p) = policy.priming {
            self.enter(Phase::Priming, now_ms);
            if via_priming_probe {
                // The probe was warm-up request 0 and it succeeded: go on from the second.
                self.priming_next = 1;
                self.priming_ok = 1;
            }
            if self.priming_next >= p.requests {
                self.start_ramp(now_ms);
                return Event::RampStarted { from };
            }
            Event::PrimingStarted
        } else {
            self.enter(Phase::Ramping, now_ms);
            self.ramp_start_ms = first_success_ms.clamp(1, now_ms.max(1));
            Event::RampStarted { from }
        }
    }

    fn start_ramp(&mut self, now_ms: u64) {
        self.enter(Phase::Ramping, now_ms);
        self.ramp_start_ms = now_ms.max(1);
    }

    /// Folds one worker's batch in. Returns what changed (at most a few events).
    pub fn publish(&mut self, batch: &Batch, now_ms: u64, policy: &Policy) -> Vec<Event> {
        let mut events = Vec::new();
        self.recent.record(
            now_ms,
            RecentTotals {
                requests: batch.successes.saturating_add(batch.failures),
                failures: batch.failures,
                latency_sum_ms: batch.latency_sum_ms,
            },
        );
        let in_flight = i64::from(self.in_flight).saturating_add(batch.in_flight_delta);
        self.in_flight = u32::try_from(in_flight.max(0)).unwrap_or(u32::MAX);
        if self.phase == Phase::Priming && batch.generation == self.generation {
            self.priming_ok = self.priming_ok.saturating_add(batch.priming_ok);
            self.priming_failed = self.priming_failed.saturating_add(batch.priming_failed);
        }
        if batch.cold && matches!(self.phase, Phase::Ramping | Phase::Warm) {
            events.push(Event::Cold);
            events.push(self.become_ready(now_ms, false, now_ms, policy));
        }
        if batch.first_success_ms > 0 {
            let silent = policy.silence_ms.is_some_and(|s| {
                self.last_success_ms > 0
                    && batch.first_success_ms.saturating_sub(self.last_success_ms) > s
            });
            match self.phase {
                Phase::New | Phase::Unhealthy => {
                    events.push(self.become_ready(
                        batch.first_success_ms,
                        batch.priming_probe_ok,
                        now_ms,
                        policy,
                    ));
                }
                Phase::Ramping | Phase::Warm if silent => {
                    events.push(Event::Silence);
                    events.push(self.become_ready(batch.first_success_ms, false, now_ms, policy));
                }
                _ => {}
            }
            self.last_success_ms = self.last_success_ms.max(batch.last_success_ms);
            self.consecutive_failures = batch.trailing_failures;
        } else {
            self.consecutive_failures = self
                .consecutive_failures
                .saturating_add(batch.trailing_failures);
        }
        // An unhealthy endpoint whose gate timed out is entered again when the user requests
        // let through fail: the gate shuts for another `gate_timeout` (a backoff) instead of
        // letting the floor fail on. Failed gate probes alone do not shut it: they are what
        // timed out.
        if policy.unhealthy_after > 0
            && self.consecutive_failures >= policy.unhealthy_after
            && (self.phase != Phase::Unhealthy
                || (batch.failures > 0 && self.gate_timed_out(now_ms, policy)))
        {
            let from = self.phase;
            self.enter(Phase::Unhealthy, now_ms);
            self.recent.clear();
            events.push(Event::BecameUnhealthy { from });
        }
        events
    }

    /// Moves the phases that time moves: priming ends, ramps finish, the closed loop pauses or
    /// resumes. `peers` is the sum of the warm peers' recent outcomes (`None`: no peers).
    pub fn maintain(
        &mut self,
        now_ms: u64,
        policy: &Policy,
        peers: Option<&RecentTotals>,
    ) -> Vec<Event> {
        let mut events = Vec::new();
        if self.phase == Phase::New && self.phase_since_ms == 0 {
            // A new endpoint's state is created without a clock; its gate timeout counts from here.
            self.phase_since_ms = now_ms.max(1);
        }
        if self.phase == Phase::Priming {
            let answered = self.priming_ok.saturating_add(self.priming_failed);
            let all = policy.priming.map_or(0, |p| p.requests);
            let deadline = policy.priming.map_or(0, |p| p.deadline_ms);
            if answered >= all || now_ms >= self.phase_since_ms.saturating_add(deadline) {
                self.start_ramp(now_ms);
                events.push(Event::RampStarted {
                    from: Phase::Priming,
                });
            }
        }
        if self.phase == Phase::Ramping {
            if let Some(cl) = policy.closed_loop {
                let mine = self.recent.totals(now_ms);
                let verdict = peers.and_then(|p| cl.worse(&mine, p));
                match (verdict, self.pause_since_ms > 0) {
                    (Some(reason), false) => {
                        self.pause_since_ms = now_ms.max(1);
                        self.pause_reason = Some(reason);
                        events.push(Event::Paused(reason));
                    }
                    (None, true) => {
                        self.paused_ms = self
                            .paused_ms
                            .saturating_add(now_ms.saturating_sub(self.pause_since_ms));
                        self.pause_since_ms = 0;
                        self.pause_reason = None;
                        events.push(Event::Resumed);
                    }
                    _ => {}
                }
            } else if self.pause_since_ms > 0 {
                // The closed loop was switched off by a new configuration.
                self.paused_ms = self
                    .paused_ms
                    .saturating_add(now_ms.saturating_sub(self.pause_since_ms));
                self.pause_since_ms = 0;
                self.pause_reason = None;
            }
            if self
                .ramp_elapsed_ms(now_ms)
                .is_some_and(|t| t >= policy.window_ms)
            {
                self.enter(Phase::Warm, now_ms);
                events.push(Event::Warm);
            }
        }
        events
    }

    /// Claims the priming requests and health checks due at `now_ms` (paced across all workers,
    /// since the claim happens under CAS). The caller sends them.
    pub fn claim_dispatches(&mut self, now_ms: u64, policy: &Policy) -> Vec<Dispatch> {
        let mut out = Vec::new();
        match self.phase {
            Phase::New | Phase::Unhealthy if policy.gated() && now_ms >= self.next_dispatch_ms => {
                let every = policy
                    .health_check_interval_ms
                    .unwrap_or(policy.recheck_interval_ms)
                    .max(1);
                self.next_dispatch_ms = now_ms.saturating_add(every);
                out.push(if policy.health_check_interval_ms.is_some() {
                    Dispatch::HealthCheck
                } else {
                    Dispatch::PrimingProbe
                });
            }
            Phase::Priming => {
                if let Some(p) = policy.priming {
                    let interval = p.interval_ms.max(1);
                    // After a stall (no tick for a while), catch up with at most a second's
                    // worth of backlog rather than a burst of everything that was missed.
                    let backlog = interval.saturating_mul(8).max(1_000);
                    self.next_dispatch_ms =
                        self.next_dispatch_ms.max(now_ms.saturating_sub(backlog));
                    while self.priming_next < p.requests
                        && self.next_dispatch_ms <= now_ms
                        && out.len() < MAX_DISPATCHES_PER_TICK
                    {
                        out.push(Dispatch::Priming {
                            index: self.priming_next,
                            generation: self.generation,
                        });
                        self.priming_next += 1;
                        self.next_dispatch_ms = self.next_dispatch_ms.saturating_add(interval);
                    }
                }
            }
            _ => {}
        }
        if let Some(every) = policy.health_check_interval_ms {
            if matches!(self.phase, Phase::Priming | Phase::Ramping | Phase::Warm)
                && now_ms >= self.next_health_check_ms
            {
                self.next_health_check_ms = now_ms.saturating_add(every.max(1));
                out.push(Dispatch::HealthCheck);
            }
        }
        out
    }

    /// Brings the shown gauge values to the current ones; returns the moves owed, if any.
    pub fn sync_shown(&mut self, weight_centi: u32) -> Option<GaugeDeltas> {
        let now = Shown {
            weight: weight_centi,
            phase: self.phase.gauge_value(),
            paused: self.is_paused(),
        };
        if now == self.shown {
            return None;
        }
        let d = GaugeDeltas {
            weight: i64::from(now.weight) - i64::from(self.shown.weight),
            phase: i64::from(now.phase) - i64::from(self.shown.phase),
            paused: i64::from(now.paused) - i64::from(self.shown.paused),
        };
        self.shown = now;
        Some(d)
    }

    /// The compact encoding kept in shared data.
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Encoder::new(KIND, VERSION);
        e.u64(self.identity)
            .u8(self.phase.gauge_value())
            .u32(self.generation)
            .u64(self.phase_since_ms)
            .u64(self.ramp_start_ms)
            .u64(self.paused_ms)
            .u64(self.pause_since_ms)
            .u8(match self.pause_reason {
                None => 0,
                Some(PauseReason::Latency) => 1,
                Some(PauseReason::ErrorRate) => 2,
            })
            .u64(self.last_success_ms)
            .u32(self.consecutive_failures)
            .u32(self.in_flight)
            .u32(self.priming_next)
            .u32(self.priming_ok)
            .u32(self.priming_failed)
            .u64(self.next_dispatch_ms)
            .u64(self.next_health_check_ms)
            .u32(self.shown.weight)
            .u8(self.shown.phase)
            .bool(self.shown.paused);
        self.recent.encode_into(&mut e);
        e.finish()
    }

    /// Reads [`EndpointRamp::encode`]'s bytes; any other input is an error, never a panic.
    pub fn decode(bytes: &[u8], policy: &Policy) -> Result<Self, DecodeError> {
        let mut d = Decoder::new(bytes, KIND, VERSION)?;
        let identity = d.u64()?;
        let phase = Phase::from_u8(d.u8()?)?;
        let generation = d.u32()?;
        let phase_since_ms = d.u64()?;
        let ramp_start_ms = d.u64()?;
        let paused_ms = d.u64()?;
        let pause_since_ms = d.u64()?;
        let pause_reason = match d.u8()? {
            0 => None,
            1 => Some(PauseReason::Latency),
            2 => Some(PauseReason::ErrorRate),
            _ => return Err(DecodeError::Invalid),
        };
        let last_success_ms = d.u64()?;
        let consecutive_failures = d.u32()?;
        let in_flight = d.u32()?;
        let priming_next = d.u32()?;
        let priming_ok = d.u32()?;
        let priming_failed = d.u32()?;
        let next_dispatch_ms = d.u64()?;
        let next_health_check_ms = d.u64()?;
        let shown = Shown {
            weight: d.u32()?,
            phase: d.u8()?,
            paused: d.bool()?,
        };
        let recent = Recent::decode_from(&mut d, policy.recent_window_ms)?;
        d.finish()?;
        Ok(EndpointRamp {
            identity,
            phase,
            generation,
            phase_since_ms,
            ramp_start_ms,
            paused_ms,
            pause_since_ms,
            pause_reason,
            last_success_ms,
            consecutive_failures,
            in_flight,
            priming_next,
            priming_ok,
            priming_failed,
            next_dispatch_ms,
            next_health_check_ms,
            shown,
            recent,
        })
    }
}

/// A stable 64-bit identity for an endpoint address (FNV-1a): which endpoint a shared slot
/// belongs to.
pub fn identity_of(address: &str) -> u64 {
    address.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A uniform number in `[0, 1)` from a random `u64` (its top 53 bits).
pub fn unit_interval(random: u64) -> f64 {
    (random >> 11) as f64 / (1u64 << 53) as f64
}

/// Admit-mode decision: admit when the request's random number falls below the fraction. Every
/// worker reads the same shared fraction, so the admitted share is the same whichever worker a
/// request lands on.
pub fn admits(fraction: f64, random: u64) -> bool {
    unit_interval(random) < clamp01(fraction)
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    const CURVE: Curve = Curve {
        window_ms: 10_000,
        aggression: 1.0,
        min_fraction: 0.1,
    };

    fn policy() -> Policy {
        Policy::ramp_only(10_000)
    }

    fn success_at(t: u64) -> Batch {
        let mut b = Batch::default();
        b.record(true, 5, t);
        b
    }

    fn failures(n: u32, t: u64) -> Batch {
        let mut b = Batch::default();
        for _ in 0..n {
            b.record(false, 0, t);
        }
        b
    }

    fn ramping_from(start: u64, p: &Policy) -> EndpointRamp {
        let mut e = EndpointRamp::new(1, p);
        e.publish(&success_at(start), start + 50, p);
        assert_eq!(e.phase, Phase::Ramping);
        e
    }

    #[test]
    fn a_warm_endpoint_in_a_cold_cell_ramps_again() {
        let policy = Policy::ramp_only(10_000);
        let mut st = EndpointRamp::new(1, &policy);
        st.publish(&success_at(1_000), 1_000, &policy);
        st.maintain(20_000, &policy, None);
        assert_eq!(st.phase, Phase::Warm);
        let batch = Batch {
            cold: true,
            ..Batch::default()
        };
        let events = st.publish(&batch, 30_000, &policy);
        assert_eq!(
            events,
            vec![Event::Cold, Event::RampStarted { from: Phase::Warm }]
        );
        assert_eq!(st.ramp_start_ms, 30_000);
        // A new endpoint is not warm yet: nothing to restart.
        let mut fresh = EndpointRamp::new(2, &policy);
        assert!(fresh.publish(&batch, 30_000, &policy).is_empty());
    }

    #[test]
    fn the_curve_is_envoys_formula_with_a_floor() {
        assert_eq!(CURVE.fraction(0), 0.1);
        assert_eq!(CURVE.fraction(500), 0.1);
        assert!((CURVE.fraction(5_000) - 0.5).abs() < 1e-12);
        assert_eq!(CURVE.fraction(10_000), 1.0);
        assert_eq!(CURVE.fraction(u64::MAX), 1.0);
        let steep = Curve {
            aggression: 2.0,
            ..CURVE
        };
        assert!((steep.fraction(2_500) - 0.5).abs() < 1e-12, "sqrt(0.25)");
        let lazy = Curve {
            aggression: 0.5,
            ..CURVE
        };
        assert!((lazy.fraction(5_000) - 0.25).abs() < 1e-12, "0.5^2");
        assert_eq!(lazy.fraction(1_000), 0.1, "0.01 is below the floor");
    }

    #[test]
    fn a_degenerate_curve_never_yields_nan_or_leaves_zero_to_one() {
        for c in [
            Curve {
                window_ms: 0,
                ..CURVE
            },
            Curve {
                aggression: f64::NAN,
                ..CURVE
            },
            Curve {
                aggression: -3.0,
                ..CURVE
            },
            Curve {
                min_fraction: 7.0,
                ..CURVE
            },
            Curve {
                min_fraction: f64::NAN,
                ..CURVE
            },
        ] {
            for t in [0, 1, 4_999, 10_000] {
                let f = c.fraction(t);
                assert!((0.0..=1.0).contains(&f), "{c:?} at {t}: {f}");
            }
        }
    }

    #[test]
    fn the_clock_starts_at_the_first_success_not_when_the_endpoint_was_listed() {
        let p = policy();
        let mut e = EndpointRamp::new(1, &p);
        assert_eq!(
            e.fraction(60_000, &CURVE, &p),
            0.1,
            "listed long ago, no success yet"
        );
        let events = e.publish(&success_at(60_000), 60_080, &p);
        assert_eq!(events, vec![Event::RampStarted { from: Phase::New }]);
        assert_eq!(
            e.ramp_start_ms, 60_000,
            "the success's own time, not the publish time"
        );
        assert!((e.fraction(65_000, &CURVE, &p) - 0.5).abs() < 1e-9);
        assert_eq!(e.maintain(69_999, &p, None), vec![]);
        assert_eq!(e.maintain(70_000, &p, None), vec![Event::Warm]);
        assert_eq!(e.fraction(70_000, &CURVE, &p), 1.0);
    }

    #[test]
    fn consecutive_failures_make_an_endpoint_unhealthy_and_a_success_restarts_the_ramp() {
        let p = policy();
        let mut e = ramping_from(1_000, &p);
        e.maintain(11_000, &p, None);
        assert_eq!(e.phase, Phase::Warm);
        assert!(e.publish(&failures(4, 20_000), 20_000, &p).is_empty());
        let ev = e.publish(&failures(1, 20_100), 20_100, &p);
        assert_eq!(ev, vec![Event::BecameUnhealthy { from: Phase::Warm }]);
        assert_eq!(e.fraction(20_200, &CURVE, &p), 0.1, "ungated: the floor");
        let ev = e.publish(&success_at(30_000), 30_050, &p);
        assert_eq!(
            ev,
            vec![Event::RampStarted {
                from: Phase::Unhealthy
            }]
        );
        assert_eq!(e.fraction(30_000, &CURVE, &p), 0.1, "back at the floor");
        assert!((e.fraction(35_000, &CURVE, &p) - 0.5).abs() < 1e-9);
    }

    #[test]
    fn a_success_inside_the_batch_resets_the_failure_run() {
        let p = policy();
        let mut e = ramping_from(1_000, &p);
        let mut b = Batch::default();
        for _ in 0..4 {
            b.record(false, 0, 2_000);
        }
        b.record(true, 3, 2_001);
        b.record(false, 0, 2_002);
        e.publish(&b, 2_100, &p);
        assert_eq!(e.consecutive_failures, 1);
        assert_eq!(e.phase, Phase::Ramping);
    }

    #[test]
    fn a_gated_endpoint_takes_no_traffic_until_a_dispatched_request_succeeds() {
        let mut p = policy();
        p.health_check_interval_ms = Some(500);
        let mut e = EndpointRamp::new(1, &p);
        assert_eq!(e.fraction(0, &CURVE, &p), 0.0);
        assert_eq!(e.claim_dispatches(1_000, &p), vec![Dispatch::HealthCheck]);
        assert_eq!(e.claim_dispatches(1_200, &p), vec![], "paced");
        assert_eq!(e.claim_dispatches(1_500, &p), vec![Dispatch::HealthCheck]);
        let mut b = Batch::default();
        b.health(true, 1_510);
        e.publish(&b, 1_600, &p);
        assert_eq!(e.phase, Phase::Ramping);
        assert_eq!(e.ramp_start_ms, 1_510);
        assert_eq!(e.fraction(1_600, &CURVE, &p), 0.1);
    }

    #[test]
    fn a_gate_that_never_opens_lets_the_floor_through_after_the_gate_timeout() {
        let mut p = policy();
        p.health_check_interval_ms = Some(500);
        p.gate_timeout_ms = Some(30_000);
        let mut e = EndpointRamp::new(1, &p);
        e.maintain(1_000, &p, None);
        assert_eq!(e.fraction(30_999, &CURVE, &p), 0.0, "gated");
        assert!(!e.gate_timed_out(30_999, &p));
        assert_eq!(
            e.fraction(31_000, &CURVE, &p),
            0.1,
            "the floor, as if ungated"
        );
        // A user request that succeeds opens the ramp as a health check would.
        let mut b = Batch::default();
        b.record(true, 3, 31_100);
        e.publish(&b, 31_200, &p);
        assert_eq!(e.phase, Phase::Ramping);
    }

    #[test]
    fn an_unhealthy_endpoint_whose_floor_keeps_failing_shuts_its_gate_again() {
        let mut p = policy();
        p.health_check_interval_ms = Some(500);
        p.gate_timeout_ms = Some(10_000);
        p.unhealthy_after = 2;
        let mut e = EndpointRamp::new(1, &p);
        e.maintain(1_000, &p, None);
        let mut b = Batch::default();
        b.health(true, 1_100);
        e.publish(&b, 1_200, &p);
        let mut fail = Batch::default();
        fail.record(false, 0, 2_000);
        fail.record(false, 0, 2_001);
        e.publish(&fail, 2_100, &p);
        assert_eq!(e.phase, Phase::Unhealthy);
        assert_eq!(e.fraction(12_099, &CURVE, &p), 0.0);
        assert_eq!(e.fraction(12_100, &CURVE, &p), 0.1, "timed out: the floor");
        let mut one = Batch::default();
        one.record(false, 0, 12_200);
        let events = e.publish(&one, 12_300, &p);
        assert!(events.contains(&Event::BecameUnhealthy {
            from: Phase::Unhealthy
        }));
        assert_eq!(
            e.fraction(12_400, &CURVE, &p),
            0.0,
            "shut for another timeout"
        );
        assert_eq!(e.fraction(22_300, &CURVE, &p), 0.1);
        let mut probe = Batch::default();
        probe.health(false, 22_400);
        e.publish(&probe, 22_500, &p);
        assert_eq!(
            e.fraction(22_600, &CURVE, &p),
            0.1,
            "a failed gate probe does not shut the gate again"
        );
    }

    #[test]
    fn without_a_gate_timeout_a_gated_endpoint_waits_for_its_gate_forever() {
        let mut p = policy();
        p.health_check_interval_ms = Some(500);
        let mut e = EndpointRamp::new(1, &p);
        e.maintain(1_000, &p, None);
        assert_eq!(e.fraction(100_000_000, &CURVE, &p), 0.0);
    }

    fn priming_policy(requests: u32) -> Policy {
        let mut p = policy();
        p.priming = Some(Priming {
            requests,
            interval_ms: 100,
            deadline_ms: 5_000,
        });
        p
    }

    #[test]
    fn priming_probes_with_the_first_request_then_sends_the_rest_paced_before_any_traffic() {
        let p = priming_policy(4);
        let mut e = EndpointRamp::new(1, &p);
        assert_eq!(e.claim_dispatches(1_000, &p), vec![Dispatch::PrimingProbe]);
        assert_eq!(
            e.claim_dispatches(1_500, &p),
            vec![],
            "re-probed once a second"
        );
        let mut b = Batch {
            priming_probe_ok: true,
            ..Batch::default()
        };
        b.health(true, 1_020);
        assert_eq!(e.publish(&b, 1_050, &p), vec![Event::PrimingStarted]);
        assert_eq!(
            e.fraction(1_050, &CURVE, &p),
            0.0,
            "no traffic while priming"
        );
        let g = e.generation;
        assert_eq!(
            e.claim_dispatches(1_250, &p),
            vec![
                Dispatch::Priming {
                    index: 1,
                    generation: g
                },
                Dispatch::Priming {
                    index: 2,
                    generation: g
                },
                Dispatch::Priming {
                    index: 3,
                    generation: g
                },
            ]
        );
        assert_eq!(e.claim_dispatches(1_400, &p), vec![], "all four claimed");
        let mut b = Batch::default();
        for _ in 0..3 {
            b.priming(g, true, 1_300);
        }
        e.publish(&b, 1_350, &p);
        assert_eq!(e.priming_ok, 4);
        assert_eq!(
            e.maintain(1_360, &p, None),
            vec![Event::RampStarted {
                from: Phase::Priming
            }]
        );
        assert_eq!(e.ramp_start_ms, 1_360, "the clock starts when priming ends");
    }

    #[test]
    fn priming_ends_at_its_deadline_even_if_answers_are_missing() {
        let p = priming_policy(3);
        let mut e = EndpointRamp::new(1, &p);
        e.publish(&success_at(1_000), 1_000, &p);
        assert_eq!(e.phase, Phase::Priming);
        assert_eq!(e.claim_dispatches(1_000, &p).len(), 1);
        assert!(e.maintain(5_999, &p, None).is_empty());
        assert_eq!(
            e.maintain(6_000, &p, None),
            vec![Event::RampStarted {
                from: Phase::Priming
            }]
        );
    }

    #[test]
    fn answers_from_an_older_priming_round_are_ignored() {
        let p = priming_policy(3);
        let mut e = EndpointRamp::new(1, &p);
        e.publish(&success_at(1_000), 1_000, &p);
        let old = e.generation;
        e.publish(&failures(5, 1_100), 1_100, &p);
        e.publish(&success_at(2_000), 2_000, &p);
        assert_eq!(e.phase, Phase::Priming);
        let mut b = Batch::default();
        b.priming(old, true, 2_010);
        b.priming(old, true, 2_011);
        e.publish(&b, 2_050, &p);
        assert_eq!(e.priming_ok, 0);
    }

    #[test]
    fn with_priming_off_before_traffic_a_priming_endpoint_takes_the_floor() {
        let mut p = priming_policy(3);
        p.prime_before_traffic = false;
        let mut e = EndpointRamp::new(1, &p);
        e.publish(&success_at(1_000), 1_000, &p);
        assert_eq!(e.fraction(1_100, &CURVE, &p), 0.1);
    }

    fn closed_loop() -> ClosedLoop {
        ClosedLoop {
            latency_factor: Some(2.0),
            error_rate_factor: Some(2.0),
            min_requests: 5,
            latency_floor_ms: 5.0,
            error_floor_percent: 1.0,
        }
    }

    fn totals(requests: u32, failures: u32, mean_ms: u64) -> RecentTotals {
        RecentTotals {
            requests,
            failures,
            latency_sum_ms: mean_ms * u64::from(requests - failures),
        }
    }

    #[test]
    fn the_closed_loop_judges_latency_and_errors_against_peers_with_floors() {
        let cl = closed_loop();
        let peers = totals(100, 0, 3);
        assert_eq!(
            cl.worse(&totals(10, 0, 9), &peers),
            None,
            "9 ≤ 2 × max(3, 5)"
        );
        assert_eq!(
            cl.worse(&totals(10, 0, 11), &peers),
            Some(PauseReason::Latency)
        );
        assert_eq!(
            cl.worse(&totals(50, 1, 3), &peers),
            None,
            "2% vs the 1% floor: exactly 2×, not worse"
        );
        assert_eq!(
            cl.worse(&totals(10, 3, 3), &peers),
            Some(PauseReason::ErrorRate)
        );
        assert_eq!(cl.worse(&totals(4, 4, 0), &peers), None, "too few to judge");
    }

    #[test]
    fn the_closed_loop_pauses_the_ramp_while_worse_and_resumes_where_it_left_off() {
        let mut p = policy();
        p.closed_loop = Some(closed_loop());
        p.recent_window_ms = 1_000;
        let mut e = ramping_from(1_000, &p);
        let peers = totals(100, 0, 2);
        let mut slow = Batch::default();
        for _ in 0..10 {
            slow.record(true, 50, 3_000);
        }
        e.publish(&slow, 3_000, &p);
        assert_eq!(
            e.maintain(3_000, &p, Some(&peers)),
            vec![Event::Paused(PauseReason::Latency)]
        );
        let held = e.fraction(3_000, &CURVE, &p);
        assert!((held - 0.2).abs() < 1e-9);
        assert!((e.fraction(3_900, &CURVE, &p) - held).abs() < 1e-9, "held");
        // The slow samples leave the 1 s window; fast ones arrive.
        let mut fast = Batch::default();
        for _ in 0..10 {
            fast.record(true, 2, 6_000);
        }
        e.publish(&fast, 6_000, &p);
        assert_eq!(e.maintain(6_000, &p, Some(&peers)), vec![Event::Resumed]);
        assert_eq!(e.paused_ms, 3_000);
        assert!(
            (e.fraction(6_000, &CURVE, &p) - 0.2).abs() < 1e-9,
            "resumes at 20%"
        );
        assert!(e.maintain(13_999, &p, Some(&peers)).is_empty());
        assert_eq!(e.maintain(14_000, &p, Some(&peers)), vec![Event::Warm]);
    }

    #[test]
    fn without_peers_the_closed_loop_never_pauses() {
        let mut p = policy();
        p.closed_loop = Some(closed_loop());
        let mut e = ramping_from(1_000, &p);
        e.publish(&failures(3, 2_000), 2_000, &p);
        assert!(e.maintain(2_000, &p, None).is_empty());
    }

    #[test]
    fn a_success_after_a_long_silence_restarts_the_ramp() {
        let mut p = policy();
        p.silence_ms = Some(60_000);
        let mut e = ramping_from(1_000, &p);
        e.maintain(20_000, &p, None);
        assert_eq!(e.phase, Phase::Warm);
        e.publish(&success_at(50_000), 50_000, &p);
        assert_eq!(e.phase, Phase::Warm, "49 s is not silence");
        let ev = e.publish(&success_at(111_000), 111_000, &p);
        assert_eq!(
            ev,
            vec![Event::Silence, Event::RampStarted { from: Phase::Warm }]
        );
    }

    #[test]
    fn in_flight_counts_follow_the_published_deltas_and_never_go_negative() {
        let p = policy();
        let mut e = EndpointRamp::new(1, &p);
        e.publish(
            &Batch {
                in_flight_delta: 3,
                ..Batch::default()
            },
            1,
            &p,
        );
        e.publish(
            &Batch {
                in_flight_delta: -5,
                ..Batch::default()
            },
            2,
            &p,
        );
        assert_eq!(e.in_flight, 0);
    }

    #[test]
    fn gauges_move_by_the_difference_exactly_once() {
        let p = policy();
        let mut e = ramping_from(1_000, &p);
        let d = e.sync_shown(10).unwrap();
        assert_eq!(
            d,
            GaugeDeltas {
                weight: 10,
                phase: 2,
                paused: 0
            }
        );
        assert_eq!(e.sync_shown(10), None);
        e.maintain(11_000, &p, None);
        let d = e.sync_shown(100).unwrap();
        assert_eq!(
            d,
            GaugeDeltas {
                weight: 90,
                phase: 1,
                paused: 0
            }
        );
    }

    #[test]
    fn the_state_survives_an_encode_decode_round_trip() {
        let mut p = priming_policy(5);
        p.closed_loop = Some(closed_loop());
        let mut e = EndpointRamp::new(identity_of("10.0.0.1:80"), &p);
        e.publish(&success_at(1_000), 1_000, &p);
        e.claim_dispatches(1_100, &p);
        let mut b = success_at(1_200);
        b.in_flight_delta = 2;
        e.publish(&b, 1_200, &p);
        e.sync_shown(0);
        let back = EndpointRamp::decode(&e.encode(), &p).unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn garbage_and_other_versions_are_errors_not_panics() {
        let p = policy();
        assert!(EndpointRamp::decode(&[], &p).is_err());
        assert!(EndpointRamp::decode(&[KIND, VERSION + 1], &p).is_err());
        let mut bytes = EndpointRamp::new(1, &p).encode();
        bytes.pop();
        assert!(EndpointRamp::decode(&bytes, &p).is_err());
        let mut bytes = EndpointRamp::new(1, &p).encode();
        bytes[10] = 9; // the phase byte
        assert_eq!(EndpointRamp::decode(&bytes, &p), Err(DecodeError::Invalid));
    }

    #[test]
    fn a_recent_window_written_under_another_span_starts_empty() {
        let mut p = policy();
        let mut e = EndpointRamp::new(1, &p);
        e.publish(&success_at(1_000), 1_000, &p);
        assert_eq!(e.recent.totals(1_000).requests, 1);
        p.recent_window_ms = 2_000;
        let back = EndpointRamp::decode(&e.encode(), &p).unwrap();
        assert_eq!(back.recent.totals(1_000).requests, 0);
    }

    #[test]
    fn admission_compares_a_uniform_draw_with_the_fraction() {
        assert!(!admits(0.0, 0));
        assert!(admits(1.0, u64::MAX));
        assert!(admits(0.5, u64::MAX / 4));
        assert!(!admits(0.5, u64::MAX / 4 * 3));
        // A seeded sequence admits about the fraction.
        let mut x = 7u64;
        let admitted = (0..10_000)
            .filter(|_| {
                x = x
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                admits(0.3, x)
            })
            .count();
        assert!((2_800..3_200).contains(&admitted), "{admitted}");
    }

    #[cfg(not(target_arch = "wasm32"))]
    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
                let _ = EndpointRamp::decode(&bytes, &policy());
            }

            #[test]
            fn the_curve_never_falls_and_stays_between_the_floor_and_one(
                window in 1u64..100_000, aggression in 0.1f64..10.0, min in 0.0f64..1.0,
                a in any::<u32>(), b in any::<u32>()
            ) {
                let c = Curve { window_ms: window, aggression, min_fraction: min };
                let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
                let (f_lo, f_hi) = (c.fraction(u64::from(lo)), c.fraction(u64::from(hi)));
                prop_assert!(f_lo <= f_hi + 1e-12);
                prop_assert!(f_lo >= min - 1e-12 && f_hi <= 1.0);
            }

            #[test]
            fn priming_never_claims_a_request_twice_or_past_the_list(
                requests in 1u32..50, ticks in proptest::collection::vec(0u64..500, 1..40)
            ) {
                let p = priming_policy(requests);
                let mut e = EndpointRamp::new(1, &p);
                e.publish(&success_at(1), 1, &p);
                let mut now = 1;
                let mut claimed = Vec::new();
                for dt in ticks {
                    now += dt;
                    for d in e.claim_dispatches(now, &p) {
                        if let Dispatch::Priming { index, .. } = d {
                            claimed.push(index);
                        }
                    }
                }
                let n = claimed.len();
                claimed.sort_unstable();
                claimed.dedup();
                prop_assert_eq!(claimed.len(), n);
                prop_assert!(claimed.iter().all(|i| *i < requests));
                // Paced: no more than elapsed / interval + 1 requests.
                prop_assert!(n as u64 <= (now - 1) / 100 + 1);
            }
        }
    }
}
