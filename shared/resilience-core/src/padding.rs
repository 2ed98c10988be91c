//! Failure-latency padding: whether to hold a failed response, for how long, and how many may be
//! held at once across all workers.
//!
//! # Why
//!
//! A least-request balancer sends the next request to the host with the fewest requests in
//! flight. A host that fails in 1 ms while healthy ones take 50 ms never has requests in flight,
//! so it wins almost every pick and swallows a large share of all traffic: one bad host becomes a
//! black hole. The Amazon Builders' Library describes the cure: make a failed response take as
//! long as a successful one. The balancer then sees the failing host as busy as the others and
//! gives it only its fair share.
//!
//! # What is decided here
//!
//! - [`Policy::target_ms`]: the total time a failed response should take: the learned success
//!   percentile × `factor` once `min_samples` successes were seen, else the configured fallback,
//!   else nothing (a host that never succeeded has no latency to imitate).
//! - [`decide`]: given the target, the time the request already took and its remaining deadline,
//!   hold the response for how long, or skip it and say why ([`Skip`]). Holds never exceed
//!   `max_padding` and always end `deadline_margin` before the caller's deadline.
//! - [`InFlight`]: the cap on held responses, exact across all workers. It lives in shared data as
//!   one slot per worker (its held count and when it last said so); a worker changes only its own
//!   slot, by absolute value, under compare-and-swap. A worker that disappears (its VM failed and
//!   was replaced) stops counting once its slot is `stale_after_ms` old, so a crash can never
//!   leak capacity.
//! - [`HoldQueue`]: one worker's held responses and when each is due.
//! - [`next_tick_ms`]: when the worker's timer must fire next: at the earliest release, or at the
//!   next sync, whichever comes first.
//!
//! Nothing here reads a clock or a random source: `now_ms`, elapsed times and `random` are given.

use crate::codec::{DecodeError, Decoder, Encoder};

/// How to pad one route's failures.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Policy {
    /// Target = learned percentile × `factor`.
    pub factor: f64,
    /// Spread of the target: uniform in `target × (1 ± jitter)`, 0..=1.
    pub jitter: f64,
    /// Longest hold, whatever the target.
    pub max_padding_ms: u64,
    /// Successes that must have been seen before the learned latency is trusted.
    pub min_samples: u64,
    /// Target while fewer than `min_samples` successes were seen; `None`: do not pad then.
    pub fallback_target_ms: Option<u64>,
    /// A held response is released at least this long before the caller's deadline.
    pub deadline_margin_ms: u64,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            factor: 1.0,
            jitter: 0.0,
            max_padding_ms: 1_000,
            min_samples: 20,
            fallback_target_ms: None,
            deadline_margin_ms: 5,
        }
    }
}

impl Policy {
    /// The total time a failed response should take, from the learned percentile and the number
    /// of successes ever seen. Never decays by the clock: only new successes move it.
    pub fn target_ms(&self, learned_ms: Option<u64>, samples_seen: u64) -> Option<u64> {
        match learned_ms {
            Some(learned) if samples_seen >= self.min_samples => Some(scale(learned, self.factor)),
            _ => self.fallback_target_ms,
        }
    }
}

/// `ms × factor`, rounded, saturating; a negative or NaN factor counts as 0.
fn scale(ms: u64, factor: f64) -> u64 {
    let f = if factor.is_finite() && factor > 0.0 {
        factor
    } else {
        return 0;
    };
    let v = (ms as f64 * f).round();
    if v >= u64::MAX as f64 {
        u64::MAX
    } else {
        v as u64
    }
}

/// Why a failed response is not held.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Skip {
    /// No target yet: fewer than `min_samples` successes and no `fallback_target`.
    Cold,
    /// The response already took at least the target.
    AlreadySlow,
    /// The caller's deadline (less the margin) has already passed or is about to.
    Deadline,
    /// `max_padded_in_flight` responses are held already (decided by the caller with
    /// [`InFlight`], listed here so every skip has one name).
    InFlightCap,
    /// A health check: never padded.
    HealthCheck,
    /// Shared data failed while taking an in-flight slot: fail open, do not hold.
    Error,
}

impl Skip {
    /// Stable name for stats and the decision header.
    pub const fn as_str(self) -> &'static str {
        match self {
            Skip::Cold => "cold",
            Skip::AlreadySlow => "already_slow",
            Skip::Deadline => "deadline",
            Skip::InFlightCap => "in_flight_cap",
            Skip::HealthCheck => "health_check",
            Skip::Error => "error",
        }
    }

    pub const ALL: [Skip; 6] = [
        Skip::Cold,
        Skip::AlreadySlow,
        Skip::Deadline,
        Skip::InFlightCap,
        Skip::HealthCheck,
        Skip::Error,
    ];
}

/// What shortened a hold below the target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cap {
    MaxPadding,
    Deadline,
}

impl Cap {
    pub const fn as_str(self) -> &'static str {
        match self {
            Cap::MaxPadding => "max_padding",
            Cap::Deadline => "deadline",
        }
    }
}

/// Hold a failed response for `hold_ms` more.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hold {
    pub hold_ms: u64,
    /// The total time aimed at (the target after jitter), before caps.
    pub target_ms: u64,
    /// Set when a cap made the hold shorter than `target_ms − elapsed`.
    pub capped: Option<Cap>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Hold(Hold),
    Skip(Skip),
}

/// Decide for one failed response.
///
/// - `target_ms`: [`Policy::target_ms`] for its route.
/// - `elapsed_ms`: time since this proxy received the request.
/// - `deadline_ms`: the caller's whole budget, counted from the same start (the smallest of the
///   request's `grpc-timeout`, `x-envoy-expected-rq-timeout-ms` and configured header), if any.
/// - `random`: uniform `u64` for the jitter (ignored when `jitter` is 0).
pub fn decide(
    policy: &Policy,
    target_ms: Option<u64>,
    elapsed_ms: u64,
    deadline_ms: Option<u64>,
    random: u64,
) -> Decision {
    let Some(target) = target_ms else {
        return Decision::Skip(Skip::Cold);
    };
    let target = jittered(target, policy.jitter, random);
    if target <= elapsed_ms {
        return Decision::Skip(Skip::AlreadySlow);
    }
    let mut hold = target - elapsed_ms;
    let mut capped = None;
    if hold > policy.max_padding_ms {
        hold = policy.max_padding_ms;
        capped = Some(Cap::MaxPadding);
    }
    if let Some(deadline) = deadline_ms {
        let latest = deadline.saturating_sub(policy.deadline_margin_ms);
        if latest <= elapsed_ms {
            return Decision::Skip(Skip::Deadline);
        }
        let room = latest - elapsed_ms;
        if hold > room {
            hold = room;
            capped = Some(Cap::Deadline);
        }
    }
    if hold == 0 {
        return Decision::Skip(Skip::AlreadySlow);
    }
    Decision::Hold(Hold {
        hold_ms: hold,
        target_ms: target,
        capped,
    })
}

/// `target × (1 + jitter × (2r − 1))` with `r = random / u64::MAX`, rounded; jitter clamped to
/// 0..=1 (NaN is 0).
fn jittered(target: u64, jitter: f64, random: u64) -> u64 {
    let j = if jitter.is_nan() {
        0.0
    } else {
        jitter.clamp(0.0, 1.0)
    };
    if j == 0.0 {
        return target;
    }
    let r = random as f64 / u64::MAX as f64;
    scale(target, 1.0 + j * (2.0 * r - 1.0))
}

// ---------------------------------------------------------------------------------------------
// The cross-worker in-flight cap
// ---------------------------------------------------------------------------------------------

/// Most worker slots one table holds (Envoy runs one VM per worker; a few hundred is plenty).
pub const MAX_SLOTS: usize = 256;

const KIND: u8 = 0xFB;
const VERSION: u8 = 1;

/// One worker's share of the held responses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot {
    /// A random id the worker drew when its VM started.
    pub worker: u64,
    pub held: u32,
    /// When the worker last wrote this slot.
    pub seen_ms: u64,
}

/// The held responses of every worker, as stored in shared data. See the module docs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InFlight {
    slots: Vec<Slot>,
}

impl InFlight {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn slots(&self) -> &[Slot] {
        &self.slots
    }

    fn fresh(slot: &Slot, now_ms: u64, stale_after_ms: u64) -> bool {
        slot.seen_ms.saturating_add(stale_after_ms) >= now_ms
    }

    /// Forget slots that were not written for `stale_after_ms` (their worker is gone).
    pub fn prune(&mut self, now_ms: u64, stale_after_ms: u64) {
        self.slots
            .retain(|s| s.held > 0 && Self::fresh(s, now_ms, stale_after_ms));
    }

    /// Responses held by all live workers.
    pub fn total(&self, now_ms: u64, stale_after_ms: u64) -> u64 {
        self.slots
            .iter()
            .filter(|s| Self::fresh(s, now_ms, stale_after_ms))
            .map(|s| u64::from(s.held))
            .sum()
    }

    /// Take one more slot for `worker`, which holds `held_now` responses before this one, if the
    /// total stays within `cap`. On success the worker's slot says `held_now + 1`.
    pub fn try_acquire(
        &mut self,
        worker: u64,
        held_now: u32,
        cap: u64,
        now_ms: u64,
        stale_after_ms: u64,
    ) -> bool {
        self.prune(now_ms, stale_after_ms);
        let others: u64 = self
            .slots
            .iter()
            .filter(|s| s.worker != worker)
            .map(|s| u64::from(s.held))
            .sum();
        let mine = u64::from(held_now).saturating_add(1);
        if others.saturating_add(mine) > cap {
            return false;
        }
        self.write(worker, held_now.saturating_add(1), now_ms)
    }

    /// Say that `worker` now holds `held` responses (after releases, or as a heartbeat). Never
    /// refused unless the table is full of other live workers; `held == 0` removes the slot.
    pub fn report(&mut self, worker: u64, held: u32, now_ms: u64, stale_after_ms: u64) -> bool {
        self.prune(now_ms, stale_after_ms);
        self.write(worker, held, now_ms)
    }

    fn write(&mut self, worker: u64, held: u32, now_ms: u64) -> bool {
        if let Some(pos) = self.slots.iter().position(|s| s.worker == worker) {
            if held == 0 {
                self.slots.swap_remove(pos);
            } else if let Some(s) = self.slots.get_mut(pos) {
                s.held = held;
                s.seen_ms = now_ms;
            }
            return true;
        }
        if held == 0 {
            return true;
        }
        if self.slots.len() >= MAX_SLOTS {
            return false;
        }
        self.slots.push(Slot {
            worker,
            held,
            seen_ms: now_ms,
        });
        true
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut e = Encoder::new(KIND, VERSION);
        e.u16(u16::try_from(self.slots.len()).unwrap_or(u16::MAX));
        for s in self.slots.iter().take(MAX_SLOTS) {
            e.u64(s.worker).u32(s.held).u64(s.seen_ms);
        }
        e.finish()
    }

    /// Decode [`InFlight::encode`]'s output; more than [`MAX_SLOTS`] slots is invalid.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut d = Decoder::new(bytes, KIND, VERSION)?;
        let n = usize::from(d.u16()?);
        if n > MAX_SLOTS {
            return Err(DecodeError::Invalid);
        }
        let mut slots = Vec::with_capacity(n);
        for _ in 0..n {
            slots.push(Slot {
                worker: d.u64()?,
                held: d.u32()?,
                seen_ms: d.u64()?,
            });
        }
        d.finish()?;
        Ok(InFlight { slots })
    }
}

// ---------------------------------------------------------------------------------------------
// One worker's held responses
// ---------------------------------------------------------------------------------------------

/// One held response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Held<T> {
    /// The proxy's id of the stream (its HTTP context).
    pub id: u32,
    pub release_at_ms: u64,
    pub data: T,
}

/// The responses one worker holds. Small (bounded by the in-flight cap), so a vector with linear
/// scans beats a heap: removal by id is as common as release by time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HoldQueue<T> {
    items: Vec<Held<T>>,
}

impl<T> Default for HoldQueue<T> {
    fn default() -> Self {
        HoldQueue { items: Vec::new() }
    }
}

impl<T> HoldQueue<T> {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn push(&mut self, id: u32, release_at_ms: u64, data: T) {
        self.items.push(Held {
            id,
            release_at_ms,
            data,
        });
    }

    /// Whether the response of stream `id` is held.
    pub fn holds(&self, id: u32) -> bool {
        self.items.iter().any(|h| h.id == id)
    }

    /// Take out the response of stream `id`, if it is held.
    pub fn remove(&mut self, id: u32) -> Option<Held<T>> {
        let pos = self.items.iter().position(|h| h.id == id)?;
        Some(self.items.swap_remove(pos))
    }

    /// Take out every response due at `now_ms`, earliest first.
    pub fn take_due(&mut self, now_ms: u64) -> Vec<Held<T>> {
        let mut due = Vec::new();
        let mut i = 0;
        while i < self.items.len() {
            if self.items.get(i).is_some_and(|h| h.release_at_ms <= now_ms) {
                due.push(self.items.swap_remove(i));
            } else {
                i += 1;
            }
        }
        due.sort_by_key(|h| h.release_at_ms);
        due
    }

    /// When the next response is due.
    pub fn earliest(&self) -> Option<u64> {
        self.items.iter().map(|h| h.release_at_ms).min()
    }
}

/// Milliseconds until the worker's timer must fire: at the earliest release or the next sync,
/// whichever comes first; at least 1 (a 0 period stops the timer).
pub fn next_tick_ms(now_ms: u64, earliest_release_ms: Option<u64>, next_sync_ms: u64) -> u64 {
    let wake = earliest_release_ms.map_or(next_sync_ms, |r| r.min(next_sync_ms));
    wake.saturating_sub(now_ms).max(1)
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    fn policy() -> Policy {
        Policy::default()
    }

    fn hold(d: Decision) -> Hold {
        match d {
            Decision::Hold(h) => h,
            Decision::Skip(s) => panic!("expected a hold, got skip {s:?}"),
        }
    }

    #[test]
    fn a_fast_failure_is_held_until_it_took_as_long_as_the_learned_latency() {
        let p = policy();
        let target = p.target_ms(Some(50), 100);
        let h = hold(decide(&p, target, 2, None, 0));
        assert_eq!(h.hold_ms, 48);
        assert_eq!(h.target_ms, 50);
        assert_eq!(h.capped, None);
    }

    #[test]
    fn the_factor_scales_the_learned_latency() {
        let p = Policy {
            factor: 1.5,
            ..policy()
        };
        assert_eq!(p.target_ms(Some(40), 100), Some(60));
    }

    #[test]
    fn cold_start_uses_the_fallback_or_does_not_pad_at_all() {
        let p = policy();
        assert_eq!(p.target_ms(Some(50), 19), None);
        assert_eq!(decide(&p, None, 1, None, 0), Decision::Skip(Skip::Cold));
        assert_eq!(p.target_ms(None, 0), None);
        let p = Policy {
            fallback_target_ms: Some(30),
            ..policy()
        };
        assert_eq!(p.target_ms(Some(50), 19), Some(30));
        assert_eq!(p.target_ms(Some(50), 20), Some(50));
        assert_eq!(p.target_ms(None, 500), Some(30));
    }

    #[test]
    fn a_response_already_slower_than_the_target_is_not_held() {
        let p = policy();
        assert_eq!(
            decide(&p, Some(50), 50, None, 0),
            Decision::Skip(Skip::AlreadySlow)
        );
        assert_eq!(
            decide(&p, Some(50), 70, None, 0),
            Decision::Skip(Skip::AlreadySlow)
        );
        assert_eq!(
            decide(&p, Some(0), 0, None, 0),
            Decision::Skip(Skip::AlreadySlow)
        );
    }

    #[test]
    fn max_padding_caps_the_hold() {
        let p = Policy {
            max_padding_ms: 20,
            ..policy()
        };
        let h = hold(decide(&p, Some(500), 1, None, 0));
        assert_eq!(h.hold_ms, 20);
        assert_eq!(h.capped, Some(Cap::MaxPadding));
    }

    #[test]
    fn the_hold_ends_a_margin_before_the_callers_deadline() {
        let p = policy();
        let h = hold(decide(&p, Some(50), 2, Some(30), 0));
        assert_eq!(
            h.hold_ms, 23,
            "released at 25 ms: 30 ms deadline − 5 ms margin"
        );
        assert_eq!(h.capped, Some(Cap::Deadline));
        // A deadline further out than the target changes nothing.
        let h = hold(decide(&p, Some(50), 2, Some(15_000), 0));
        assert_eq!((h.hold_ms, h.capped), (48, None));
    }

    #[test]
    fn a_deadline_already_spent_skips_padding() {
        let p = policy();
        assert_eq!(
            decide(&p, Some(50), 10, Some(12), 0),
            Decision::Skip(Skip::Deadline)
        );
        assert_eq!(
            decide(&p, Some(50), 10, Some(0), 0),
            Decision::Skip(Skip::Deadline)
        );
    }

    #[test]
    fn the_tighter_of_two_caps_wins_and_is_named() {
        let p = Policy {
            max_padding_ms: 40,
            ..policy()
        };
        let h = hold(decide(&p, Some(100), 0, Some(30), 0));
        assert_eq!((h.hold_ms, h.capped), (25, Some(Cap::Deadline)));
        let h = hold(decide(&p, Some(100), 0, Some(1_000), 0));
        assert_eq!((h.hold_ms, h.capped), (40, Some(Cap::MaxPadding)));
    }

    #[test]
    fn jitter_spreads_the_target_symmetrically() {
        let p = Policy {
            jitter: 0.2,
            ..policy()
        };
        assert_eq!(hold(decide(&p, Some(100), 0, None, 0)).target_ms, 80);
        assert_eq!(
            hold(decide(&p, Some(100), 0, None, u64::MAX)).target_ms,
            120
        );
        assert_eq!(
            hold(decide(&p, Some(100), 0, None, u64::MAX / 2)).target_ms,
            100
        );
    }

    #[test]
    fn the_in_flight_cap_counts_every_workers_slots() {
        let mut t = InFlight::new();
        assert!(t.try_acquire(1, 0, 3, 0, 1_000));
        assert!(t.try_acquire(2, 0, 3, 0, 1_000));
        assert!(t.try_acquire(1, 1, 3, 0, 1_000));
        assert!(!t.try_acquire(2, 1, 3, 0, 1_000), "3 held: full");
        assert_eq!(t.total(0, 1_000), 3);
        assert!(t.report(1, 0, 10, 1_000));
        assert_eq!(t.total(10, 1_000), 1);
        assert!(t.try_acquire(2, 1, 3, 10, 1_000));
    }

    #[test]
    fn a_vanished_workers_slots_stop_counting_once_stale() {
        let mut t = InFlight::new();
        assert!(t.try_acquire(7, 4, 5, 0, 1_000));
        assert!(!t.try_acquire(8, 0, 5, 500, 1_000));
        // Worker 7 never writes again (its VM died): after stale_after its slots are free.
        assert!(t.try_acquire(8, 0, 5, 1_001, 1_000));
        assert_eq!(t.slots().len(), 1);
    }

    #[test]
    fn a_heartbeat_keeps_a_live_workers_slots_counted() {
        let mut t = InFlight::new();
        assert!(t.try_acquire(7, 4, 5, 0, 1_000));
        assert!(t.report(7, 5, 900, 1_000));
        assert!(!t.try_acquire(8, 0, 5, 1_500, 1_000));
    }

    #[test]
    fn the_table_round_trips_and_refuses_garbage() {
        let mut t = InFlight::new();
        for w in 0..10 {
            assert!(t.try_acquire(w, 0, 100, 5, 1_000));
        }
        let back = InFlight::decode(&t.encode()).unwrap();
        assert_eq!(back, t);
        assert!(InFlight::decode(&[]).is_err());
        let mut bytes = t.encode();
        bytes.pop();
        assert!(InFlight::decode(&bytes).is_err());
        assert!(InFlight::decode(&[KIND, VERSION, 0xFF, 0xFF]).is_err());
    }

    #[test]
    fn a_full_table_refuses_new_workers_but_not_known_ones() {
        let mut t = InFlight::new();
        for w in 0..MAX_SLOTS as u64 {
            assert!(t.try_acquire(w, 0, u64::MAX, 0, 1_000));
        }
        assert!(!t.try_acquire(10_000, 0, u64::MAX, 0, 1_000));
        assert!(t.try_acquire(3, 1, u64::MAX, 0, 1_000));
    }

    #[test]
    fn the_queue_releases_due_responses_earliest_first_and_forgets_removed_ones() {
        let mut q: HoldQueue<&str> = HoldQueue::new();
        q.push(1, 50, "a");
        q.push(2, 30, "b");
        q.push(3, 70, "c");
        assert_eq!(q.earliest(), Some(30));
        assert_eq!(q.remove(3).map(|h| h.data), Some("c"));
        assert_eq!(q.remove(3), None);
        let due: Vec<u32> = q.take_due(60).iter().map(|h| h.id).collect();
        assert_eq!(due, vec![2, 1]);
        assert!(q.is_empty());
        assert_eq!(q.earliest(), None);
    }

    #[test]
    fn the_timer_fires_at_the_earliest_release_or_the_next_sync() {
        assert_eq!(next_tick_ms(1_000, None, 1_100), 100);
        assert_eq!(next_tick_ms(1_000, Some(1_042), 1_100), 42);
        assert_eq!(next_tick_ms(1_000, Some(1_500), 1_100), 100);
        assert_eq!(
            next_tick_ms(1_000, Some(990), 1_100),
            1,
            "overdue: as soon as possible"
        );
    }

    #[cfg(not(target_arch = "wasm32"))]
    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn a_hold_never_exceeds_max_padding_nor_reaches_past_the_deadline(
                target in proptest::option::of(0u64..1_000_000),
                elapsed in 0u64..1_000_000,
                deadline in proptest::option::of(0u64..2_000_000),
                max_padding in 1u64..100_000,
                margin in 0u64..1_000,
                jitter in 0.0f64..1.0,
                factor in 0.0f64..10.0,
                random in any::<u64>(),
            ) {
                let p = Policy {
                    factor, jitter, max_padding_ms: max_padding, min_samples: 1,
                    fallback_target_ms: None, deadline_margin_ms: margin,
                };
                let t = p.target_ms(target, 1);
                if let Decision::Hold(h) = decide(&p, t, elapsed, deadline, random) {
                    prop_assert!(h.hold_ms >= 1);
                    prop_assert!(h.hold_ms <= max_padding);
                    prop_assert!(elapsed + h.hold_ms <= h.target_ms);
                    if let Some(d) = deadline {
                        prop_assert!(elapsed + h.hold_ms + margin <= d);
                    }
                }
            }

            #[test]
            fn the_cap_holds_whatever_the_interleaving_of_workers(
                ops in proptest::collection::vec((0u64..6, any::<bool>()), 1..300),
                cap in 1u64..20,
            ) {
                // Each op is one worker's CAS applied in turn: acquire (true) or release (false).
                let mut table = InFlight::new();
                let mut local = [0u32; 6];
                for (now, (w, acquire)) in ops.into_iter().enumerate() {
                    let i = w as usize;
                    if acquire {
                        if table.try_acquire(w, local[i], cap, now as u64, 1_000_000) {
                            local[i] += 1;
                        }
                    } else if local[i] > 0 {
                        local[i] -= 1;
                        prop_assert!(table.report(w, local[i], now as u64, 1_000_000));
                    }
                    let held: u64 = local.iter().map(|n| u64::from(*n)).sum();
                    prop_assert!(held <= cap);
                    prop_assert_eq!(held, table.total(now as u64, 1_000_000));
                }
            }

            #[test]
            fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
                let _ = InFlight::decode(&bytes);
            }
        }
    }
}
