//! The circuit breaker's state machine, shared by every Envoy worker.
//!
//! # Why
//! A caller that keeps waiting on a dead dependency runs out of its own connections, threads and
//! memory, and fails too: one outage becomes many. A breaker notices that a dependency is failing
//! (too high an error rate, too many slow calls, or a run of consecutive failures), stops sending
//! it traffic for a while (*open*: callers get a fast, explicit rejection instead of a slow
//! failure), then lets a fixed number of probe requests through (*half-open*) to learn whether it
//! has recovered.
//!
//! # Why one state for all workers
//! Envoy runs one wasm VM per worker thread. A breaker per worker would see only its share of the
//! traffic (tripping late, or never, at low rates) and would admit `workers × probes` requests in
//! half-open: exactly the over-admission users of other breakers complain about. So the state of a
//! breaker ([`SharedBreaker`]) lives in the proxy's shared data, one value per key, and every change
//! to it is a compare-and-swap by the host layer. This module is the pure part: each function takes
//! the decoded state and `now`, and says what the new state is.
//!
//! # Cost model
//! Exactness matters for probe permits, so [`SharedBreaker::try_acquire_probe`] runs inside a CAS
//! loop on every half-open request. It does not matter to a millisecond for the error-rate window,
//! so each worker aggregates outcomes in a [`Delta`] and publishes it on a short tick
//! ([`SharedBreaker::publish`]); a worker learns about a trip made by another worker on its next
//! tick, through its cached [`View`]. The healthy (closed) path makes no shared-data call at all.

use crate::codec::{DecodeError, Decoder, Encoder};
use crate::window::{CountWindow, Counts, TimeWindow};

/// Where a breaker is in its cycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Traffic flows; outcomes are counted.
    Closed,
    /// Traffic is rejected until `open_until_ms`.
    Open,
    /// A bounded number of probes may pass; their outcomes close or re-open the breaker.
    HalfOpen,
}

impl State {
    /// The value of the `state` gauge: 0 closed, 1 open, 2 half-open.
    pub fn gauge_value(self) -> i64 {
        match self {
            State::Closed => 0,
            State::Open => 1,
            State::HalfOpen => 2,
        }
    }

    /// Lower-case name used in headers, logs and stats.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half_open",
        }
    }

    fn to_u8(self) -> u8 {
        match self {
            State::Closed => 0,
            State::Open => 1,
            State::HalfOpen => 2,
        }
    }

    fn from_u8(v: u8) -> Result<Self, DecodeError> {
        match v {
            0 => Ok(State::Closed),
            1 => Ok(State::Open),
            2 => Ok(State::HalfOpen),
            _ => Err(DecodeError::Invalid),
        }
    }
}

/// Why a breaker opened: recorded in the state, reported in the rejection header and in stats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TripReason {
    /// The failure rate over the window reached `failure_rate_threshold`.
    FailureRate,
    /// The slow-call rate over the window reached `slow_call_rate_threshold`.
    SlowCallRate,
    /// `consecutive_failures` failures in a row.
    ConsecutiveFailures,
    /// A half-open probe failed.
    ProbeFailed,
}

impl TripReason {
    /// Every reason, for defining stats up front.
    pub const ALL: [TripReason; 4] = [
        TripReason::FailureRate,
        TripReason::SlowCallRate,
        TripReason::ConsecutiveFailures,
        TripReason::ProbeFailed,
    ];

    /// Stable snake_case name used in headers, logs and stats.
    pub fn as_str(self) -> &'static str {
        match self {
            TripReason::FailureRate => "failure_rate",
            TripReason::SlowCallRate => "slow_call_rate",
            TripReason::ConsecutiveFailures => "consecutive_failures",
            TripReason::ProbeFailed => "probe_failed",
        }
    }

    fn to_u8(self) -> u8 {
        match self {
            TripReason::FailureRate => 1,
            TripReason::SlowCallRate => 2,
            TripReason::ConsecutiveFailures => 3,
            TripReason::ProbeFailed => 4,
        }
    }

    fn from_u8(v: u8) -> Result<Option<Self>, DecodeError> {
        match v {
            0 => Ok(None),
            1 => Ok(Some(TripReason::FailureRate)),
            2 => Ok(Some(TripReason::SlowCallRate)),
            3 => Ok(Some(TripReason::ConsecutiveFailures)),
            4 => Ok(Some(TripReason::ProbeFailed)),
            _ => Err(DecodeError::Invalid),
        }
    }
}

/// Which outcomes a breaker remembers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WindowSpec {
    /// Outcomes of the last `window_ms`, in `buckets` buckets (the default: rates over time).
    Time { window_ms: u64, buckets: u32 },
    /// The last `size` outcomes, however old.
    Count { size: u32 },
}

/// The thresholds and timings of one breaker, already validated by the filter's config layer.
#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    pub window: WindowSpec,
    /// No rate-based trip before this many outcomes are in the window.
    pub minimum_requests: u32,
    /// Percent 0–100; `None` disables the signal.
    pub failure_rate_threshold: Option<f64>,
    /// Percent 0–100; `None` disables the signal.
    pub slow_call_rate_threshold: Option<f64>,
    /// Trip after this many failures in a row; 0 disables the signal.
    pub consecutive_failures: u32,
    /// How long the first trip stays open.
    pub open_duration_ms: u64,
    /// Each further trip without a successful close multiplies the open time by this.
    pub open_duration_multiplier: f64,
    /// Cap on the open time, also for upstream `retry-after` hints.
    pub max_open_duration_ms: u64,
    /// Fraction 0–1 of the open time that is randomised (spreads re-probing across proxies).
    pub open_jitter: f64,
    /// Probes admitted across all workers in half-open; that many successes close the breaker.
    pub half_open_probes: u32,
    /// A probe that has not completed after this long gives its permit back.
    pub probe_timeout_ms: u64,
    /// Stay open at least as long as the upstream asked (`retry-after`, `grpc-retry-pushback-ms`).
    pub honor_retry_after: bool,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            window: WindowSpec::Time {
                window_ms: 10_000,
                buckets: 10,
            },
            minimum_requests: 20,
            failure_rate_threshold: Some(50.0),
            slow_call_rate_threshold: None,
            consecutive_failures: 0,
            open_duration_ms: 5_000,
            open_duration_multiplier: 2.0,
            max_open_duration_ms: 60_000,
            open_jitter: 0.1,
            half_open_probes: 3,
            probe_timeout_ms: 10_000,
            honor_retry_after: false,
        }
    }
}

impl Policy {
    /// The open time for the `trips`-th trip in a row (1-based), before jitter and hints.
    pub fn nominal_open_ms(&self, trips: u32) -> u64 {
        let exp = trips.saturating_sub(1).min(64) as i32;
        let factor = self.open_duration_multiplier.max(1.0).powi(exp);
        let raw = self.open_duration_ms as f64 * factor;
        let cap = self.max_open_duration_ms.max(self.open_duration_ms) as f64;
        if raw.is_finite() && raw < cap {
            raw as u64
        } else {
            cap as u64
        }
    }

    /// The open time with jitter (`random` uniform over u64) and the upstream's hint applied.
    pub fn open_ms(&self, trips: u32, random: u64, hint_ms: u64) -> u64 {
        let nominal = self.nominal_open_ms(trips);
        let jitter = self.open_jitter.clamp(0.0, 1.0);
        let r = random as f64 / u64::MAX as f64;
        let jittered = (nominal as f64 * (1.0 - jitter + jitter * r)) as u64;
        let cap = self.max_open_duration_ms.max(self.open_duration_ms);
        let hinted = if self.honor_retry_after {
            jittered.max(hint_ms.min(cap))
        } else {
            jittered
        };
        hinted.clamp(1, cap.max(1))
    }
}

/// The outcome window of either kind.
#[derive(Clone, Debug, PartialEq)]
pub enum Window {
    Time(TimeWindow),
    Count(CountWindow),
}

impl Window {
    fn new(spec: WindowSpec) -> Self {
        match spec {
            WindowSpec::Time { window_ms, buckets } => {
                Window::Time(TimeWindow::new(window_ms, buckets))
            }
            WindowSpec::Count { size } => Window::Count(CountWindow::new(size)),
        }
    }

    fn totals(&self, now_ms: u64) -> Counts {
        match self {
            Window::Time(w) => w.totals(now_ms),
            Window::Count(w) => w.totals(),
        }
    }

    fn clear(&mut self) {
        match self {
            Window::Time(w) => w.clear(),
            Window::Count(w) => w.clear(),
        }
    }
}

/// Outcomes one worker saw since its last publication, for one breaker key.
///
/// Bounded: counts saturate, and the ordered outcomes kept for count-based windows never exceed
/// the window's size (older ones would fall out of the window anyway).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Delta {
    /// The breaker generation the outcomes were seen under; stale ones are dropped on publish.
    pub generation: u32,
    pub counts: Counts,
    /// Failures since this worker's last success in this delta.
    pub trailing_failures: u32,
    /// When this delta's last success happened, if it has one.
    pub last_success_ms: Option<u64>,
    /// When the first and the last of the trailing failures happened.
    pub first_trailing_failure_ms: u64,
    pub last_trailing_failure_ms: u64,
    /// Largest `retry-after` / pushback the upstream sent with a failure, in ms.
    pub retry_after_hint_ms: u64,
    /// Ordered (failure, slow) outcomes, only for count-based windows.
    outcomes: Vec<(bool, bool)>,
    outcome_cap: usize,
}

impl Delta {
    /// An empty delta for a breaker at `generation` whose policy uses `window`.
    pub fn new(generation: u32, window: WindowSpec) -> Self {
        let outcome_cap = match window {
            WindowSpec::Time { .. } => 0,
            WindowSpec::Count { size } => size as usize,
        };
        Delta {
            generation,
            outcome_cap,
            ..Delta::default()
        }
    }

    /// Record one classified outcome that completed at `now_ms`.
    pub fn record(&mut self, failure: bool, slow: bool, now_ms: u64) {
        self.counts = self.counts.add(Counts {
            total: 1,
            failures: u32::from(failure),
            slow: u32::from(slow),
        });
        if failure {
            if self.trailing_failures == 0 {
                self.first_trailing_failure_ms = now_ms;
            }
            self.trailing_failures = self.trailing_failures.saturating_add(1);
            self.last_trailing_failure_ms = now_ms;
        } else {
            self.trailing_failures = 0;
            self.last_success_ms = Some(now_ms);
        }
        if self.outcome_cap > 0 {
            if self.outcomes.len() >= self.outcome_cap && !self.outcomes.is_empty() {
                self.outcomes.remove(0);
            }
            self.outcomes.push((failure, slow));
        }
    }

    /// Remember the upstream's hint of how long to stay away.
    pub fn hint_retry_after(&mut self, ms: u64) {
        self.retry_after_hint_ms = self.retry_after_hint_ms.max(ms);
    }

    /// Nothing to publish.
    pub fn is_empty(&self) -> bool {
        self.counts.total == 0
    }
}

/// What a worker caches about a breaker between ticks: enough to decide the common cases without
/// touching shared data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct View {
    pub state: State,
    pub generation: u32,
    pub open_until_ms: u64,
    pub reason: Option<TripReason>,
}

impl View {
    /// A closed breaker at generation 0, before anything was read.
    pub const INITIAL: View = View {
        state: State::Closed,
        generation: 0,
        open_until_ms: 0,
        reason: None,
    };

    /// Decide from the cached view alone.
    pub fn admit(&self, now_ms: u64) -> Admission {
        match self.state {
            State::Closed => Admission::Allow,
            State::Open if now_ms < self.open_until_ms => Admission::Reject(Rejection::Open {
                reason: self.reason,
                retry_after_s: retry_after_seconds(self.open_until_ms, now_ms),
            }),
            State::Open | State::HalfOpen => Admission::AskShared,
        }
    }
}

/// Whole seconds until `until_ms`, rounded up, at least 1: the `retry-after` of a rejection.
pub fn retry_after_seconds(until_ms: u64, now_ms: u64) -> u64 {
    let remaining = until_ms.saturating_sub(now_ms);
    remaining.div_ceil(1000).max(1)
}

/// A decision on one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Let it through and count its outcome.
    Allow,
    /// The cached view cannot decide (open time over, or half-open): take a probe permit with
    /// [`SharedBreaker::try_acquire_probe`] under CAS.
    AskShared,
    /// Reject it locally.
    Reject(Rejection),
}

/// Why a request was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// The breaker is open; `retry_after_s` is the remaining open time in whole seconds.
    Open {
        reason: Option<TripReason>,
        retry_after_s: u64,
    },
    /// Half-open and every probe permit is taken.
    HalfOpenFull { reason: Option<TripReason> },
}

impl Rejection {
    /// The trip reason behind the rejection, if known.
    pub fn reason(&self) -> Option<TripReason> {
        match *self {
            Rejection::Open { reason, .. } | Rejection::HalfOpenFull { reason } => reason,
        }
    }

    /// The `retry-after` seconds to send.
    pub fn retry_after_s(&self) -> u64 {
        match *self {
            Rejection::Open { retry_after_s, .. } => retry_after_s,
            Rejection::HalfOpenFull { .. } => 1,
        }
    }

    /// The state name to report.
    pub fn state(&self) -> State {
        match self {
            Rejection::Open { .. } => State::Open,
            Rejection::HalfOpenFull { .. } => State::HalfOpen,
        }
    }
}

/// The answer of [`SharedBreaker::try_acquire_probe`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeGrant {
    /// The breaker is closed after all: allow normally.
    Closed,
    /// This request is a probe of `generation`; report its outcome with
    /// [`SharedBreaker::probe_result`].
    Granted {
        generation: u32,
    },
    Rejected(Rejection),
}

/// A change of state made by a call, for stats and logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transition {
    pub from: State,
    pub to: State,
    pub reason: Option<TripReason>,
    /// How long the breaker stays open, when `to` is [`State::Open`].
    pub open_ms: u64,
}

/// What [`SharedBreaker::publish`] did with a delta.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Published {
    /// Merged; the state may have changed.
    Merged(Option<Transition>),
    /// Merged, and this signal would trip the breaker, but the caller did not allow a trip (the
    /// open-breaker governor is full): the breaker stays closed and keeps counting.
    Held(TripReason),
    /// The delta belonged to an older generation (or the breaker is not closed): dropped.
    Stale,
}

/// A probe's outcome as the state machine sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeOutcome {
    Success,
    Failure,
    /// The stream ended without a usable outcome (e.g. the client went away): give the permit back.
    Abandoned,
}

const KIND: u8 = 0xCB;
const VERSION: u8 = 2;
const WINDOW_TIME: u8 = 1;
const WINDOW_COUNT: u8 = 2;

/// The state of one breaker as stored in shared data.
#[derive(Clone, Debug, PartialEq)]
pub struct SharedBreaker {
    pub state: State,
    /// Bumped on every transition; probe permits and deltas carry it so stale ones are ignored.
    pub generation: u32,
    pub reason: Option<TripReason>,
    pub open_until_ms: u64,
    /// Trips since the breaker last closed successfully (drives the growing open time).
    pub trips: u32,
    pub probes_issued: u32,
    pub probes_succeeded: u32,
    pub last_probe_ms: u64,
    /// Failures in a row since the newest success any worker reported.
    pub consecutive_failures: u32,
    /// The newest success any worker reported (ms).
    pub last_success_ms: u64,
    /// When the current run of failures began (ms; meaningful while `consecutive_failures > 0`).
    pub run_first_failure_ms: u64,
    pub window: Window,
}

impl SharedBreaker {
    /// A closed breaker with an empty window.
    pub fn new(policy: &Policy) -> Self {
        SharedBreaker {
            state: State::Closed,
            generation: 0,
            reason: None,
            open_until_ms: 0,
            trips: 0,
            probes_issued: 0,
            probes_succeeded: 0,
            last_probe_ms: 0,
            consecutive_failures: 0,
            last_success_ms: 0,
            run_first_failure_ms: 0,
            window: Window::new(policy.window),
        }
    }

    /// What a worker caches.
    pub fn view(&self) -> View {
        View {
            state: self.state,
            generation: self.generation,
            open_until_ms: self.open_until_ms,
            reason: self.reason,
        }
    }

    /// The window's totals now (for logs and tests).
    pub fn totals(&self, now_ms: u64) -> Counts {
        self.window.totals(now_ms)
    }

    fn bump_generation(&mut self) {
        self.generation = self.generation.wrapping_add(1);
    }

    fn reset_run(&mut self) {
        self.window.clear();
        self.consecutive_failures = 0;
        self.probes_issued = 0;
        self.probes_succeeded = 0;
    }

    fn trip(
        &mut self,
        now_ms: u64,
        reason: TripReason,
        policy: &Policy,
        random: u64,
        hint_ms: u64,
    ) -> Transition {
        let from = self.state;
        self.trips = self.trips.saturating_add(1);
        let open_ms = policy.open_ms(self.trips, random, hint_ms);
        self.state = State::Open;
        self.reason = Some(reason);
        self.open_until_ms = now_ms.saturating_add(open_ms);
        self.bump_generation();
        self.reset_run();
        Transition {
            from,
            to: State::Open,
            reason: Some(reason),
            open_ms,
        }
    }

    /// Merge one worker's outcomes and trip if a signal crossed its threshold.
    ///
    /// Signals are checked in order consecutive failures, failure rate, slow-call rate; the first
    /// that holds is the recorded reason. Rate signals wait for `minimum_requests` outcomes.
    pub fn publish(
        &mut self,
        delta: &Delta,
        now_ms: u64,
        policy: &Policy,
        random: u64,
    ) -> Published {
        self.publish_governed(delta, now_ms, policy, random, true)
    }

    /// [`Self::publish`], tripping only when `may_trip`; otherwise a signal that holds is
    /// reported as [`Published::Held`]. To trip later, publish an empty delta with `may_trip`.
    pub fn publish_governed(
        &mut self,
        delta: &Delta,
        now_ms: u64,
        policy: &Policy,
        random: u64,
        may_trip: bool,
    ) -> Published {
        if delta.generation != self.generation || self.state != State::Closed {
            return Published::Stale;
        }
        match &mut self.window {
            Window::Time(w) => w.record(now_ms, delta.counts),
            Window::Count(w) => {
                for &(failure, slow) in &delta.outcomes {
                    w.record(failure, slow);
                }
            }
        }
        self.merge_run(delta);
        match self.tripping_signal(now_ms, policy) {
            Some(r) if !may_trip => Published::Held(r),
            reason => Published::Merged(
                reason.map(|r| self.trip(now_ms, r, policy, random, delta.retry_after_hint_ms)),
            ),
        }
    }

    /// Merge a delta's failure run into the shared one.
    ///
    /// Workers publish on their own ticks, so a delta's success may be older or newer than the
    /// failures other workers already published. Times decide: a success newer than every known one
    /// restarts the run, but keeps the failures known to have happened after it; failures that
    /// followed an older success extend the run if any of them came after the newest success.
    fn merge_run(&mut self, delta: &Delta) {
        let extend = |this: &mut Self| {
            if delta.trailing_failures == 0 {
                return;
            }
            this.run_first_failure_ms = if this.consecutive_failures == 0 {
                delta.first_trailing_failure_ms
            } else {
                this.run_first_failure_ms
                    .min(delta.first_trailing_failure_ms)
            };
            this.consecutive_failures = this
                .consecutive_failures
                .saturating_add(delta.trailing_failures);
        };
        match delta.last_success_ms {
            Some(ls) if ls >= self.last_success_ms => {
                let later_failures_known =
                    self.consecutive_failures > 0 && self.run_first_failure_ms > ls;
                if !later_failures_known {
                    self.consecutive_failures = 0;
                }
                self.last_success_ms = ls;
                extend(self);
            }
            _ => {
                if delta.last_trailing_failure_ms >= self.last_success_ms {
                    extend(self);
                }
            }
        }
    }

    fn tripping_signal(&self, now_ms: u64, policy: &Policy) -> Option<TripReason> {
        if policy.consecutive_failures > 0
            && self.consecutive_failures >= policy.consecutive_failures
        {
            return Some(TripReason::ConsecutiveFailures);
        }
        let totals = self.window.totals(now_ms);
        if totals.total == 0 || totals.total < policy.minimum_requests {
            return None;
        }
        if policy
            .failure_rate_threshold
            .is_some_and(|t| totals.failure_rate_percent() >= t)
        {
            return Some(TripReason::FailureRate);
        }
        if policy
            .slow_call_rate_threshold
            .is_some_and(|t| totals.slow_rate_percent() >= t)
        {
            return Some(TripReason::SlowCallRate);
        }
        None
    }

    /// Open to half-open: a new generation, no probe issued yet.
    fn enter_half_open(&mut self, now_ms: u64) -> Transition {
        self.state = State::HalfOpen;
        self.bump_generation();
        self.probes_issued = 0;
        self.probes_succeeded = 0;
        self.last_probe_ms = now_ms;
        Transition {
            from: State::Open,
            to: State::HalfOpen,
            reason: self.reason,
            open_ms: 0,
        }
    }

    /// An active probe, sent while the breaker was open in `generation`, succeeded: the
    /// dependency answers again, so the breaker goes half-open now rather than at
    /// `open_until_ms`, and the half-open probes decide as usual. Ignored in any other state or
    /// generation (the breaker moved on while the probe was out).
    pub fn active_probe_succeeded(&mut self, generation: u32, now_ms: u64) -> Option<Transition> {
        if self.state != State::Open || generation != self.generation {
            return None;
        }
        Some(self.enter_half_open(now_ms))
    }

    /// Take one of the half-open probe permits, moving an expired open breaker to half-open.
    ///
    /// Permits held by probes older than `probe_timeout_ms` that never reported are reclaimed
    /// first, so a probe whose stream hangs cannot wedge the breaker in half-open.
    pub fn try_acquire_probe(
        &mut self,
        now_ms: u64,
        policy: &Policy,
    ) -> (ProbeGrant, Option<Transition>) {
        let mut transition = None;
        match self.state {
            State::Closed => return (ProbeGrant::Closed, None),
            State::Open if now_ms < self.open_until_ms => {
                return (
                    ProbeGrant::Rejected(Rejection::Open {
                        reason: self.reason,
                        retry_after_s: retry_after_seconds(self.open_until_ms, now_ms),
                    }),
                    None,
                )
            }
            State::Open => transition = Some(self.enter_half_open(now_ms)),
            State::HalfOpen => {}
        }
        if self.probes_issued > self.probes_succeeded
            && now_ms >= self.last_probe_ms.saturating_add(policy.probe_timeout_ms)
        {
            self.probes_issued = self.probes_succeeded;
        }
        if self.probes_issued < policy.half_open_probes.max(1) {
            self.probes_issued = self.probes_issued.saturating_add(1);
            self.last_probe_ms = now_ms;
            (
                ProbeGrant::Granted {
                    generation: self.generation,
                },
                transition,
            )
        } else {
            (
                ProbeGrant::Rejected(Rejection::HalfOpenFull {
                    reason: self.reason,
                }),
                transition,
            )
        }
    }

    /// Report a probe's outcome: enough successes close the breaker, one failure re-opens it for
    /// longer. Reports for another generation (a probe that outlived its half-open phase) are
    /// ignored.
    pub fn probe_result(
        &mut self,
        generation: u32,
        outcome: ProbeOutcome,
        now_ms: u64,
        policy: &Policy,
        random: u64,
        hint_ms: u64,
    ) -> Option<Transition> {
        if self.state != State::HalfOpen || generation != self.generation {
            return None;
        }
        match outcome {
            ProbeOutcome::Abandoned => {
                self.probes_issued = self
                    .probes_issued
                    .saturating_sub(1)
                    .max(self.probes_succeeded);
                None
            }
            ProbeOutcome::Failure => {
                Some(self.trip(now_ms, TripReason::ProbeFailed, policy, random, hint_ms))
            }
            ProbeOutcome::Success => {
                self.probes_succeeded = self.probes_succeeded.saturating_add(1);
                if self.probes_succeeded >= policy.half_open_probes.max(1) {
                    let reason = self.reason;
                    self.state = State::Closed;
                    self.reason = None;
                    self.trips = 0;
                    self.open_until_ms = 0;
                    self.bump_generation();
                    self.reset_run();
                    Some(Transition {
                        from: State::HalfOpen,
                        to: State::Closed,
                        reason,
                        open_ms: 0,
                    })
                } else {
                    None
                }
            }
        }
    }

    /// The compact binary form kept in shared data.
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Encoder::new(KIND, VERSION);
        e.u8(self.state.to_u8());
        e.u32(self.generation);
        e.u8(self.reason.map_or(0, TripReason::to_u8));
        e.u64(self.open_until_ms);
        e.u32(self.trips);
        e.u32(self.probes_issued);
        e.u32(self.probes_succeeded);
        e.u64(self.last_probe_ms);
        e.u32(self.consecutive_failures);
        e.u64(self.last_success_ms);
        e.u64(self.run_first_failure_ms);
        match &self.window {
            Window::Time(w) => {
                e.u8(WINDOW_TIME);
                w.encode_into(&mut e);
            }
            Window::Count(w) => {
                e.u8(WINDOW_COUNT);
                w.encode_into(&mut e);
            }
        }
        e.finish()
    }

    /// Decode shared data written by any worker. Garbage or another version is an error the caller
    /// counts before starting from [`SharedBreaker::new`]; a window of another shape (the config
    /// changed) silently starts empty.
    pub fn decode(bytes: &[u8], policy: &Policy) -> Result<Self, DecodeError> {
        let mut d = Decoder::new(bytes, KIND, VERSION)?;
        let state = State::from_u8(d.u8()?)?;
        let generation = d.u32()?;
        let reason = TripReason::from_u8(d.u8()?)?;
        let open_until_ms = d.u64()?;
        let trips = d.u32()?;
        let probes_issued = d.u32()?;
        let probes_succeeded = d.u32()?;
        let last_probe_ms = d.u64()?;
        let consecutive_failures = d.u32()?;
        let last_success_ms = d.u64()?;
        let run_first_failure_ms = d.u64()?;
        let window = match (d.u8()?, policy.window) {
            (WINDOW_TIME, WindowSpec::Time { window_ms, buckets }) => {
                Window::Time(TimeWindow::decode_from(&mut d, window_ms, buckets)?)
            }
            (WINDOW_COUNT, WindowSpec::Count { size }) => {
                Window::Count(CountWindow::decode_from(&mut d, size)?)
            }
            (WINDOW_TIME | WINDOW_COUNT, spec) => {
                // The window kind changed with the config: start it empty.
                return Ok(SharedBreaker {
                    state,
                    generation,
                    reason,
                    open_until_ms,
                    trips,
                    probes_issued,
                    probes_succeeded,
                    last_probe_ms,
                    consecutive_failures,
                    last_success_ms,
                    run_first_failure_ms,
                    window: Window::new(spec),
                });
            }
            _ => return Err(DecodeError::Invalid),
        };
        d.finish()?;
        Ok(SharedBreaker {
            state,
            generation,
            reason,
            open_until_ms,
            trips,
            probes_issued,
            probes_succeeded,
            last_probe_ms,
            consecutive_failures,
            last_success_ms,
            run_first_failure_ms,
            window,
        })
    }
}

/// Kind tag of [`ProbeTurn`].
const PROBE_TURN_KIND: u8 = 0xCC;
const PROBE_TURN_VERSION: u8 = 1;

/// Whose turn it is to send an open breaker's active probe: the time the next one is due, one
/// value per breaker key shared by every worker, so the dependency sees one probe per interval
/// from the whole proxy rather than one per worker.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProbeTurn {
    pub due_ms: u64,
}

impl ProbeTurn {
    /// Takes the turn at `now_ms` if it is due, making the next one due `interval_ms` later.
    pub fn claim(&mut self, now_ms: u64, interval_ms: u64) -> bool {
        if now_ms < self.due_ms {
            return false;
        }
        self.due_ms = now_ms.saturating_add(interval_ms);
        true
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut e = Encoder::new(PROBE_TURN_KIND, PROBE_TURN_VERSION);
        e.u64(self.due_ms);
        e.finish()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut d = Decoder::new(bytes, PROBE_TURN_KIND, PROBE_TURN_VERSION)?;
        let due_ms = d.u64()?;
        d.finish()?;
        Ok(ProbeTurn { due_ms })
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    fn policy() -> Policy {
        Policy {
            window: WindowSpec::Time {
                window_ms: 10_000,
                buckets: 10,
            },
            minimum_requests: 10,
            failure_rate_threshold: Some(50.0),
            slow_call_rate_threshold: Some(80.0),
            consecutive_failures: 0,
            open_duration_ms: 1_000,
            open_duration_multiplier: 2.0,
            max_open_duration_ms: 5_000,
            open_jitter: 0.0,
            half_open_probes: 2,
            probe_timeout_ms: 3_000,
            honor_retry_after: false,
        }
    }

    /// A test clock: every recorded outcome happens 1 ms after the previous one.
    fn tick() -> u64 {
        use std::sync::atomic::{AtomicU64, Ordering};
        static CLOCK: AtomicU64 = AtomicU64::new(1);
        CLOCK.fetch_add(1, Ordering::Relaxed)
    }

    fn delta(b: &SharedBreaker, p: &Policy, outcomes: &[(bool, bool)]) -> Delta {
        let mut d = Delta::new(b.generation, p.window);
        for &(f, s) in outcomes {
            d.record(f, s, tick());
        }
        d
    }

    fn delta_at(b: &SharedBreaker, p: &Policy, outcomes: &[(bool, u64)]) -> Delta {
        let mut d = Delta::new(b.generation, p.window);
        for &(failure, at) in outcomes {
            d.record(failure, false, at);
        }
        d
    }

    fn consecutive_policy() -> Policy {
        let mut p = policy();
        p.consecutive_failures = 100;
        p.minimum_requests = 1_000;
        p
    }

    #[test]
    fn a_held_trip_keeps_the_breaker_closed_and_counting_until_a_trip_is_allowed() {
        let p = policy();
        let mut b = SharedBreaker::new(&p);
        let failures = delta(&b, &p, &[(true, false); 12]);
        assert_eq!(
            b.publish_governed(&failures, 100, &p, 0, false),
            Published::Held(TripReason::FailureRate)
        );
        assert_eq!(b.state, State::Closed);
        let generation = b.generation;
        // The window still holds the failures: an empty delta trips once allowed.
        let empty = Delta::new(b.generation, p.window);
        assert_eq!(
            b.publish_governed(&empty, 200, &p, 0, false),
            Published::Held(TripReason::FailureRate)
        );
        match b.publish_governed(&empty, 300, &p, 0, true) {
            Published::Merged(Some(t)) => {
                assert_eq!((t.from, t.to), (State::Closed, State::Open));
                assert_eq!(t.reason, Some(TripReason::FailureRate));
            }
            other => panic!("expected a trip, got {other:?}"),
        }
        assert_ne!(b.generation, generation, "a trip moves the generation on");
    }

    #[test]
    fn failures_two_workers_saw_after_their_last_successes_add_up() {
        // The outage starts at t=100: both workers saw successes before it and failures after.
        let p = consecutive_policy();
        let mut b = SharedBreaker::new(&p);
        b.publish(
            &delta_at(&b, &p, &[(false, 10), (true, 101), (true, 102)]),
            200,
            &p,
            0,
        );
        b.publish(
            &delta_at(&b, &p, &[(false, 12), (true, 103), (true, 104)]),
            200,
            &p,
            0,
        );
        assert_eq!(b.consecutive_failures, 4);
    }

    #[test]
    fn a_success_newer_than_the_run_restarts_it() {
        let p = consecutive_policy();
        let mut b = SharedBreaker::new(&p);
        b.publish(&delta_at(&b, &p, &[(true, 20), (true, 21)]), 50, &p, 0);
        b.publish(&delta_at(&b, &p, &[(false, 30)]), 50, &p, 0);
        assert_eq!(b.consecutive_failures, 0);
    }

    #[test]
    fn failures_older_than_the_newest_success_do_not_extend_the_run() {
        let p = consecutive_policy();
        let mut b = SharedBreaker::new(&p);
        b.publish(&delta_at(&b, &p, &[(false, 30)]), 50, &p, 0);
        b.publish(&delta_at(&b, &p, &[(true, 10), (true, 11)]), 50, &p, 0);
        assert_eq!(b.consecutive_failures, 0);
    }

    fn tripped(p: &Published) -> Option<TripReason> {
        match p {
            Published::Merged(Some(t)) if t.to == State::Open => t.reason,
            _ => None,
        }
    }

    #[test]
    fn stays_closed_under_healthy_traffic() {
        let p = policy();
        let mut b = SharedBreaker::new(&p);
        for i in 0..100 {
            let d = delta(&b, &p, &[(false, false); 10]);
            assert_eq!(b.publish(&d, i * 100, &p, 0), Published::Merged(None));
        }
        assert_eq!(b.state, State::Closed);
    }

    #[test]
    fn does_not_trip_below_minimum_requests_even_when_everything_fails() {
        let p = policy();
        let mut b = SharedBreaker::new(&p);
        let d = delta(&b, &p, &[(true, false); 9]);
        assert_eq!(b.publish(&d, 0, &p, 0), Published::Merged(None));
        assert_eq!(b.state, State::Closed);
    }

    #[test]
    fn trips_when_the_failure_rate_reaches_the_threshold() {
        let p = policy();
        let mut b = SharedBreaker::new(&p);
        let mut outcomes = vec![(false, false); 5];
        outcomes.extend([(true, false); 5]);
        let d = delta(&b, &p, &outcomes);
        assert_eq!(
            tripped(&b.publish(&d, 0, &p, 0)),
            Some(TripReason::FailureRate)
        );
        assert_eq!(b.state, State::Open);
        assert_eq!(b.open_until_ms, 1_000);
    }

    #[test]
    fn trips_on_slow_calls_even_when_they_succeed() {
        let p = policy();
        let mut b = SharedBreaker::new(&p);
        let d = delta(&b, &p, &[(false, true); 10]);
        assert_eq!(
            tripped(&b.publish(&d, 0, &p, 0)),
            Some(TripReason::SlowCallRate)
        );
    }

    #[test]
    fn consecutive_failures_trip_independently_of_the_rate_and_across_deltas() {
        let mut p = policy();
        p.consecutive_failures = 5;
        p.minimum_requests = 1_000;
        let mut b = SharedBreaker::new(&p);
        let d = delta(&b, &p, &[(false, false), (true, false), (true, false)]);
        assert_eq!(b.publish(&d, 0, &p, 0), Published::Merged(None));
        let d = delta(&b, &p, &[(true, false); 3]);
        assert_eq!(
            tripped(&b.publish(&d, 10, &p, 0)),
            Some(TripReason::ConsecutiveFailures)
        );
    }

    #[test]
    fn a_success_in_a_later_delta_restarts_the_consecutive_run() {
        let mut p = policy();
        p.consecutive_failures = 3;
        p.minimum_requests = 1_000;
        let mut b = SharedBreaker::new(&p);
        b.publish(&delta(&b, &p, &[(true, false); 2]), 0, &p, 0);
        b.publish(
            &delta(&b, &p, &[(true, false), (false, false), (true, false)]),
            1,
            &p,
            0,
        );
        assert_eq!(b.consecutive_failures, 1);
        assert_eq!(b.state, State::Closed);
    }

    #[test]
    fn old_failures_fall_out_of_a_time_window() {
        let p = policy();
        let mut b = SharedBreaker::new(&p);
        b.publish(&delta(&b, &p, &[(true, false); 4]), 0, &p, 0);
        // 11 s later the failures are gone: 6 successes and 4 fresh failures do not reach 50%.
        b.publish(&delta(&b, &p, &[(false, false); 6]), 11_000, &p, 0);
        let r = b.publish(&delta(&b, &p, &[(true, false); 4]), 11_000, &p, 0);
        assert_eq!(tripped(&r), None);
    }

    #[test]
    fn count_based_windows_remember_the_last_n_outcomes() {
        let mut p = policy();
        p.window = WindowSpec::Count { size: 10 };
        let mut b = SharedBreaker::new(&p);
        b.publish(&delta(&b, &p, &[(true, false); 4]), 0, &p, 0);
        b.publish(&delta(&b, &p, &[(false, false); 10]), 999_999, &p, 0);
        assert_eq!(b.totals(0).failures, 0);
        let r = b.publish(&delta(&b, &p, &[(true, false); 5]), 999_999, &p, 0);
        assert_eq!(tripped(&r), Some(TripReason::FailureRate));
    }

    #[test]
    fn deltas_from_an_older_generation_are_dropped() {
        let p = policy();
        let mut b = SharedBreaker::new(&p);
        let stale = delta(&b, &p, &[(true, false); 10]);
        b.publish(&stale, 0, &p, 0);
        assert_eq!(b.state, State::Open);
        assert_eq!(b.publish(&stale, 1, &p, 0), Published::Stale);
    }

    fn open_breaker(p: &Policy) -> SharedBreaker {
        let mut b = SharedBreaker::new(p);
        b.publish(&delta(&b, p, &[(true, false); 10]), 0, p, 0);
        assert_eq!(b.state, State::Open);
        b
    }

    #[test]
    fn the_cached_view_rejects_while_open_with_the_remaining_time_rounded_up() {
        let p = policy();
        let b = open_breaker(&p);
        match b.view().admit(1) {
            Admission::Reject(r) => assert_eq!(r.retry_after_s(), 1),
            other => panic!("expected a rejection, got {other:?}"),
        }
        assert_eq!(b.view().admit(1_000), Admission::AskShared);
    }

    #[test]
    fn half_open_admits_exactly_the_configured_number_of_probes() {
        let p = policy();
        let mut b = open_breaker(&p);
        let grants: Vec<_> = (0..5).map(|_| b.try_acquire_probe(1_000, &p).0).collect();
        let granted = grants
            .iter()
            .filter(|g| matches!(g, ProbeGrant::Granted { .. }))
            .count();
        assert_eq!(granted, 2);
        assert_eq!(b.state, State::HalfOpen);
        assert!(matches!(
            grants[4],
            ProbeGrant::Rejected(Rejection::HalfOpenFull { .. })
        ));
    }

    #[test]
    fn closes_after_every_probe_succeeds_and_forgets_the_trip_count() {
        let p = policy();
        let mut b = open_breaker(&p);
        let g = match b.try_acquire_probe(1_000, &p).0 {
            ProbeGrant::Granted { generation } => generation,
            other => panic!("{other:?}"),
        };
        b.try_acquire_probe(1_000, &p);
        assert_eq!(
            b.probe_result(g, ProbeOutcome::Success, 1_010, &p, 0, 0),
            None
        );
        let t = b.probe_result(g, ProbeOutcome::Success, 1_020, &p, 0, 0);
        assert_eq!(t.map(|t| t.to), Some(State::Closed));
        assert_eq!(b.trips, 0);
        assert_eq!(b.view().admit(1_030), Admission::Allow);
    }

    #[test]
    fn a_failed_probe_reopens_for_longer() {
        let p = policy();
        let mut b = open_breaker(&p);
        let g = match b.try_acquire_probe(1_000, &p).0 {
            ProbeGrant::Granted { generation } => generation,
            other => panic!("{other:?}"),
        };
        let t = b.probe_result(g, ProbeOutcome::Failure, 1_000, &p, 0, 0);
        assert_eq!(
            t.map(|t| (t.to, t.reason, t.open_ms)),
            Some((State::Open, Some(TripReason::ProbeFailed), 2_000))
        );
        assert_eq!(b.open_until_ms, 3_000);
    }

    #[test]
    fn open_time_grows_up_to_the_maximum() {
        let p = policy();
        let times: Vec<u64> = (1..=5).map(|t| p.nominal_open_ms(t)).collect();
        assert_eq!(times, vec![1_000, 2_000, 4_000, 5_000, 5_000]);
        assert_eq!(p.nominal_open_ms(u32::MAX), 5_000);
    }

    #[test]
    fn jitter_only_shortens_the_open_time_within_its_fraction() {
        let mut p = policy();
        p.open_jitter = 0.5;
        assert_eq!(p.open_ms(1, u64::MAX, 0), 1_000);
        assert_eq!(p.open_ms(1, 0, 0), 500);
    }

    #[test]
    fn an_upstream_retry_after_hint_extends_the_open_time_up_to_the_cap_when_honoured() {
        let mut p = policy();
        assert_eq!(p.open_ms(1, 0, 3_000), 1_000);
        p.honor_retry_after = true;
        assert_eq!(p.open_ms(1, 0, 3_000), 3_000);
        assert_eq!(p.open_ms(1, 0, 3_600_000), 5_000);
    }

    #[test]
    fn a_probe_that_never_reports_gives_its_permit_back_after_the_timeout() {
        let p = policy();
        let mut b = open_breaker(&p);
        b.try_acquire_probe(1_000, &p);
        b.try_acquire_probe(1_000, &p);
        assert!(matches!(
            b.try_acquire_probe(3_999, &p).0,
            ProbeGrant::Rejected(_)
        ));
        assert!(matches!(
            b.try_acquire_probe(4_000, &p).0,
            ProbeGrant::Granted { .. }
        ));
    }

    #[test]
    fn an_abandoned_probe_returns_its_permit_at_once() {
        let p = policy();
        let mut b = open_breaker(&p);
        let g = match b.try_acquire_probe(1_000, &p).0 {
            ProbeGrant::Granted { generation } => generation,
            other => panic!("{other:?}"),
        };
        b.try_acquire_probe(1_000, &p);
        b.probe_result(g, ProbeOutcome::Abandoned, 1_001, &p, 0, 0);
        assert!(matches!(
            b.try_acquire_probe(1_002, &p).0,
            ProbeGrant::Granted { .. }
        ));
    }

    #[test]
    fn a_probe_report_from_an_earlier_half_open_phase_is_ignored() {
        let p = policy();
        let mut b = open_breaker(&p);
        let old = match b.try_acquire_probe(1_000, &p).0 {
            ProbeGrant::Granted { generation } => generation,
            other => panic!("{other:?}"),
        };
        b.probe_result(old, ProbeOutcome::Failure, 1_000, &p, 0, 0);
        b.try_acquire_probe(3_000, &p);
        assert_eq!(
            b.probe_result(old, ProbeOutcome::Failure, 3_001, &p, 0, 0),
            None
        );
        assert_eq!(b.state, State::HalfOpen);
    }

    #[test]
    fn the_encoding_round_trips_every_field() {
        let p = policy();
        let mut b = open_breaker(&p);
        b.try_acquire_probe(1_000, &p);
        let back = SharedBreaker::decode(&b.encode(), &p).unwrap();
        assert_eq!(back, b);
        let mut pc = policy();
        pc.window = WindowSpec::Count { size: 7 };
        let mut c = SharedBreaker::new(&pc);
        c.publish(&delta(&c, &pc, &[(true, true), (false, false)]), 5, &pc, 0);
        assert_eq!(SharedBreaker::decode(&c.encode(), &pc).unwrap(), c);
    }

    #[test]
    fn a_window_of_another_kind_starts_empty_instead_of_failing() {
        let p = policy();
        let b = open_breaker(&p);
        let mut pc = policy();
        pc.window = WindowSpec::Count { size: 7 };
        let back = SharedBreaker::decode(&b.encode(), &pc).unwrap();
        assert_eq!(back.state, State::Open);
        assert_eq!(back.totals(0), Counts::default());
    }

    #[test]
    fn garbage_and_other_versions_are_errors_not_panics() {
        let p = policy();
        assert!(SharedBreaker::decode(&[], &p).is_err());
        assert!(SharedBreaker::decode(&[0xCB, 9, 0, 0], &p).is_err());
        let mut bytes = SharedBreaker::new(&p).encode();
        bytes.truncate(bytes.len() - 1);
        assert!(SharedBreaker::decode(&bytes, &p).is_err());
    }

    #[cfg(not(target_arch = "wasm32"))]
    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
                let _ = SharedBreaker::decode(&bytes, &policy());
            }

            #[test]
            fn half_open_never_grants_more_permits_than_configured(
                probes in 1u32..20, attempts in 0usize..100, t in 1_000u64..2_999
            ) {
                let mut p = policy();
                p.half_open_probes = probes;
                let mut b = open_breaker(&p);
                let granted = (0..attempts)
                    .filter(|_| matches!(b.try_acquire_probe(t, &p).0, ProbeGrant::Granted { .. }))
                    .count();
                prop_assert_eq!(granted, attempts.min(probes as usize));
            }

            #[test]
            fn open_time_is_always_within_one_ms_and_the_cap(
                trips in 0u32..100, random in any::<u64>(), hint in any::<u64>(), honour in any::<bool>()
            ) {
                let mut p = policy();
                p.open_jitter = 0.3;
                p.honor_retry_after = honour;
                let ms = p.open_ms(trips, random, hint);
                prop_assert!((1..=5_000).contains(&ms));
            }
        }
    }

    #[test]
    fn an_active_probe_success_goes_half_open_at_once_but_only_for_the_generation_it_was_sent_in() {
        let mut policy = policy();
        policy.consecutive_failures = 1;
        policy.open_duration_ms = 10_000;
        let mut b = SharedBreaker::new(&policy);
        let failure = delta_at(&b, &policy, &[(true, 100)]);
        b.publish(&failure, 100, &policy, 0);
        assert_eq!(b.state, State::Open);
        let open_generation = b.generation;
        assert_eq!(b.active_probe_succeeded(open_generation + 1, 200), None);
        let t = b.active_probe_succeeded(open_generation, 200).unwrap();
        assert_eq!((t.from, t.to), (State::Open, State::HalfOpen));
        assert_eq!(b.state, State::HalfOpen);
        // Half-open as usual: the probes now decide, and a late second success changes nothing.
        assert_eq!(b.active_probe_succeeded(open_generation, 250), None);
        let (grant, _) = b.try_acquire_probe(300, &policy);
        assert!(matches!(grant, ProbeGrant::Granted { .. }));
    }

    #[test]
    fn a_probe_turn_is_taken_once_per_interval_and_survives_its_encoding() {
        let mut turn = ProbeTurn::default();
        assert!(turn.claim(1_000, 250));
        assert!(!turn.claim(1_100, 250));
        assert!(turn.claim(1_250, 250));
        assert_eq!(ProbeTurn::decode(&turn.encode()), Ok(turn));
        assert!(ProbeTurn::decode(&[0xCC]).is_err());
        assert!(ProbeTurn::decode(&SharedBreaker::new(&policy()).encode()).is_err());
    }
}
