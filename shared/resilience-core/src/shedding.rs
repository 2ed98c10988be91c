//! Concurrency admission (load shedding): at most `limit` requests in flight per route, counted
//! across all of Envoy's workers, with priority classes.
//!
//! # Why
//!
//! When a dependency slows down, requests pile up behind it; every extra one in flight adds queueing
//! delay for all the others and memory for the proxy, and none of them finishes sooner. Capping the
//! requests in flight per route, and answering the excess at once with `503` and `retry-after`,
//! keeps latency bounded for the requests that are admitted. Envoy's own `circuit_breakers`
//! (`max_requests`) cap a whole cluster, and `adaptive_concurrency` is per filter chain and can shed
//! the health checks that decide whether the host stays in rotation. Here the cap is per route, and
//! the caller keeps health checks out of the count entirely.
//!
//! # One count for all workers
//!
//! A per-worker cap would admit `workers × limit`. The count is one value in shared data, changed
//! under compare-and-swap on every admission and release. To survive a worker VM that dies with
//! requests in flight (its releases never come), the value is not a bare integer but one *slot*
//! per worker VM: `(owner, in_flight, seen_ms)`. Each worker knows its own in-flight count exactly
//! and writes it into its slot on every change, so any drift heals at its next write; a slot whose
//! owner has not written for `lease_ms` is dropped, so a dead VM's requests stop counting after the
//! lease. A live worker with long requests in flight refreshes its slot on the tick.
//!
//! # Priority classes
//!
//! A class may fill only its `share` of the limit: with `limit` 100, a `batch` class at 50% is shed
//! once 50 requests are in flight, while `critical` at 100% is admitted up to 100. Low-priority
//! traffic is thus shed first and leaves headroom for important traffic (the partitioned limiter of
//! Netflix's concurrency-limits, with static shares).

use crate::codec::{DecodeError, Decoder, Encoder};

/// Kind tag of the shared value ("shed").
const KIND: u8 = 0x5E;
/// Layout version of the shared value.
const VERSION: u8 = 1;

/// Most worker-VM slots one route's value holds. Workers × live configuration generations stay far
/// below this; past it, a new worker cannot be counted and the caller fails open (and counts it).
pub const MAX_SLOTS: usize = 64;

/// One worker VM's share of a route's requests in flight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot {
    /// A random id chosen by the worker VM when its filter instance starts.
    pub owner: u64,
    /// Requests this owner has in flight on the route.
    pub in_flight: u32,
    /// When the owner last wrote its slot (host milliseconds).
    pub seen_ms: u64,
}

/// A route's requests in flight, per worker VM. See the module docs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InFlight {
    slots: Vec<Slot>,
}

/// The answer to one admission request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Admitted; `in_flight` counts this request too.
    Admitted { in_flight: u32 },
    /// Over the class's limit: shed. `in_flight` is the count that was seen.
    Shed { in_flight: u32, limit: u32 },
}

impl Admission {
    pub fn is_admitted(self) -> bool {
        matches!(self, Admission::Admitted { .. })
    }
}

/// Every slot is taken (see [`MAX_SLOTS`]); the caller fails open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotsFull;

impl InFlight {
    /// Nothing in flight.
    pub fn new() -> Self {
        Self::default()
    }

    /// The slots, in storage order.
    pub fn slots(&self) -> &[Slot] {
        &self.slots
    }

    /// Requests in flight across all slots (saturating).
    pub fn total(&self) -> u32 {
        self.slots
            .iter()
            .fold(0u32, |acc, s| acc.saturating_add(s.in_flight))
    }

    /// Drops slots of other owners not written for more than `lease_ms`; returns the requests
    /// they held. The caller's own slot is never dropped: it is about to be rewritten.
    pub fn prune(&mut self, owner: u64, now_ms: u64, lease_ms: u64) -> u32 {
        let mut dropped = 0u32;
        self.slots.retain(|s| {
            let stale = s.owner != owner && now_ms.saturating_sub(s.seen_ms) > lease_ms;
            if stale {
                dropped = dropped.saturating_add(s.in_flight);
            }
            !stale
        });
        dropped
    }

    /// Writes `owner`'s count (its own, exact knowledge); a count of 0 removes the slot.
    pub fn set_own(&mut self, owner: u64, in_flight: u32, now_ms: u64) -> Result<(), SlotsFull> {
        match self.slots.iter().position(|s| s.owner == owner) {
            Some(i) if in_flight == 0 => {
                self.slots.swap_remove(i);
            }
            Some(i) => {
                if let Some(s) = self.slots.get_mut(i) {
                    s.in_flight = in_flight;
                    s.seen_ms = now_ms;
                }
            }
            None if in_flight == 0 => {}
            None => {
                if self.slots.len() >= MAX_SLOTS {
                    return Err(SlotsFull);
                }
                self.slots.push(Slot {
                    owner,
                    in_flight,
                    seen_ms: now_ms,
                });
            }
        }
        Ok(())
    }

    /// Requests in flight other than `owner`'s.
    fn others(&self, owner: u64) -> u32 {
        self.slots
            .iter()
            .filter(|s| s.owner != owner)
            .fold(0u32, |acc, s| acc.saturating_add(s.in_flight))
    }

    /// Admit one more request of `owner` (which has `own` in flight now) if fewer than `limit`
    /// are in flight across all owners. On admission the owner's slot becomes `own + 1`; when shed
    /// only stale slots may have been pruned (the caller need not write that back).
    pub fn try_admit(
        &mut self,
        owner: u64,
        own: u32,
        limit: u32,
        now_ms: u64,
        lease_ms: u64,
    ) -> Result<Admission, SlotsFull> {
        self.prune(owner, now_ms, lease_ms);
        let in_flight = self.others(owner).saturating_add(own);
        if in_flight >= limit {
            return Ok(Admission::Shed { in_flight, limit });
        }
        self.set_own(owner, own.saturating_add(1), now_ms)?;
        Ok(Admission::Admitted {
            in_flight: in_flight.saturating_add(1),
        })
    }

    /// Admit unconditionally (dry run) and say what [`InFlight::try_admit`] would have answered.
    pub fn admit_anyway(
        &mut self,
        owner: u64,
        own: u32,
        limit: u32,
        now_ms: u64,
        lease_ms: u64,
    ) -> Result<Admission, SlotsFull> {
        self.prune(owner, now_ms, lease_ms);
        let in_flight = self.others(owner).saturating_add(own);
        self.set_own(owner, own.saturating_add(1), now_ms)?;
        if in_flight >= limit {
            Ok(Admission::Shed { in_flight, limit })
        } else {
            Ok(Admission::Admitted {
                in_flight: in_flight.saturating_add(1),
            })
        }
    }

    /// The compact shared-data form: kind, version, slot count, then `(owner u64, in_flight u32,
    /// seen_ms u64)` per slot.
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Encoder::new(KIND, VERSION);
        let n = self.slots.len().min(MAX_SLOTS);
        e.u8(u8::try_from(n).unwrap_or(u8::MAX));
        for s in self.slots.iter().take(n) {
            e.u64(s.owner).u32(s.in_flight).u64(s.seen_ms);
        }
        e.finish()
    }

    /// Reads [`InFlight::encode`]'s output; anything else is an error the caller counts, and then
    /// starts from nothing in flight.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut d = Decoder::new(bytes, KIND, VERSION)?;
        let n = usize::from(d.u8()?);
        if n > MAX_SLOTS {
            return Err(DecodeError::Invalid);
        }
        let mut slots = Vec::with_capacity(n);
        for _ in 0..n {
            let slot = Slot {
                owner: d.u64()?,
                in_flight: d.u32()?,
                seen_ms: d.u64()?,
            };
            if slot.in_flight == 0 || slots.iter().any(|s: &Slot| s.owner == slot.owner) {
                return Err(DecodeError::Invalid);
            }
            slots.push(slot);
        }
        d.finish()?;
        Ok(InFlight { slots })
    }
}

/// The limit a priority class may fill: `share_percent` of `limit`, rounded up, at least 1 for any
/// share above 0 (a class with a share is never starved outright by rounding); 0 for a 0% share
/// or a 0 limit.
pub fn class_limit(limit: u32, share_percent: f64) -> u32 {
    if limit == 0 || !share_percent.is_finite() || share_percent <= 0.0 {
        return 0;
    }
    if share_percent >= 100.0 {
        return limit;
    }
    let scaled = (f64::from(limit) * share_percent / 100.0).ceil();
    // `scaled` is within 0..=limit, so the conversion is exact.
    (scaled as u32).clamp(1, limit)
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    const LEASE: u64 = 10_000;

    #[test]
    fn admits_until_the_limit_is_reached_across_owners_then_sheds() {
        let mut s = InFlight::new();
        assert_eq!(
            s.try_admit(1, 0, 3, 0, LEASE),
            Ok(Admission::Admitted { in_flight: 1 })
        );
        assert_eq!(
            s.try_admit(2, 0, 3, 0, LEASE),
            Ok(Admission::Admitted { in_flight: 2 })
        );
        assert_eq!(
            s.try_admit(1, 1, 3, 0, LEASE),
            Ok(Admission::Admitted { in_flight: 3 })
        );
        assert_eq!(
            s.try_admit(2, 1, 3, 0, LEASE),
            Ok(Admission::Shed {
                in_flight: 3,
                limit: 3
            })
        );
        assert_eq!(s.total(), 3);
    }

    #[test]
    fn a_release_makes_room_again_and_an_empty_slot_disappears() {
        let mut s = InFlight::new();
        s.try_admit(1, 0, 1, 0, LEASE).unwrap();
        assert!(!s.try_admit(2, 0, 1, 0, LEASE).unwrap().is_admitted());
        s.set_own(1, 0, 5).unwrap();
        assert!(s.slots().is_empty());
        assert!(s.try_admit(2, 0, 1, 6, LEASE).unwrap().is_admitted());
    }

    #[test]
    fn the_owners_own_count_is_the_truth_and_heals_drift() {
        let mut s = InFlight::new();
        // The shared slot says 5, but the owner knows it has 1 in flight (a release was lost).
        s.set_own(1, 5, 0).unwrap();
        assert_eq!(
            s.try_admit(1, 1, 3, 1, LEASE),
            Ok(Admission::Admitted { in_flight: 2 })
        );
        assert_eq!(s.total(), 2);
    }

    #[test]
    fn a_dead_workers_slot_stops_counting_after_the_lease() {
        let mut s = InFlight::new();
        s.set_own(1, 2, 0).unwrap();
        assert!(!s.try_admit(2, 0, 2, LEASE, LEASE).unwrap().is_admitted());
        assert_eq!(
            s.try_admit(2, 0, 2, LEASE + 1, LEASE),
            Ok(Admission::Admitted { in_flight: 1 })
        );
        assert_eq!(s.slots().len(), 1);
    }

    #[test]
    fn pruning_never_drops_the_callers_own_slot() {
        let mut s = InFlight::new();
        s.set_own(1, 2, 0).unwrap();
        assert_eq!(s.prune(1, 10 * LEASE, LEASE), 0);
        assert_eq!(s.prune(2, 10 * LEASE, LEASE), 2);
        assert!(s.slots().is_empty());
    }

    #[test]
    fn a_clock_that_goes_backwards_keeps_slots_fresh() {
        let mut s = InFlight::new();
        s.set_own(1, 1, 50_000).unwrap();
        assert_eq!(s.prune(2, 0, LEASE), 0);
    }

    #[test]
    fn dry_run_admits_anyway_but_says_it_would_shed() {
        let mut s = InFlight::new();
        s.set_own(1, 1, 0).unwrap();
        assert_eq!(
            s.admit_anyway(2, 0, 1, 0, LEASE),
            Ok(Admission::Shed {
                in_flight: 1,
                limit: 1
            })
        );
        assert_eq!(
            s.total(),
            2,
            "the would-be-shed request is in flight and counted"
        );
    }

    #[test]
    fn slots_are_bounded_and_a_full_table_is_an_error_not_a_panic() {
        let mut s = InFlight::new();
        for owner in 0..MAX_SLOTS as u64 {
            s.set_own(owner, 1, 0).unwrap();
        }
        assert_eq!(s.try_admit(u64::MAX, 0, 1_000, 0, LEASE), Err(SlotsFull));
        assert_eq!(
            s.set_own(u64::MAX, 0, 0),
            Ok(()),
            "removing nothing is fine"
        );
    }

    #[test]
    fn the_encoding_round_trips_and_is_compact() {
        let mut s = InFlight::new();
        s.set_own(7, 3, 1_000).unwrap();
        s.set_own(9, 1, 2_000).unwrap();
        let bytes = s.encode();
        assert_eq!(bytes.len(), 2 + 1 + 2 * 20);
        assert_eq!(InFlight::decode(&bytes), Ok(s));
        assert_eq!(
            InFlight::decode(&InFlight::new().encode()),
            Ok(InFlight::new())
        );
    }

    #[test]
    fn garbage_decodes_to_an_error() {
        assert_eq!(InFlight::decode(&[]), Err(DecodeError::Empty));
        assert!(InFlight::decode(&[KIND, VERSION + 1, 0]).is_err());
        assert!(InFlight::decode(&[KIND, VERSION, 1]).is_err(), "truncated");
        assert!(
            InFlight::decode(&[KIND, VERSION, 0, 0]).is_err(),
            "trailing"
        );
        assert!(
            InFlight::decode(&[KIND, VERSION, 65]).is_err(),
            "too many slots"
        );
        let mut e = Encoder::new(KIND, VERSION);
        e.u8(2).u64(1).u32(1).u64(0).u64(1).u32(1).u64(0);
        assert_eq!(
            InFlight::decode(&e.finish()),
            Err(DecodeError::Invalid),
            "duplicate owner"
        );
        let mut e = Encoder::new(KIND, VERSION);
        e.u8(1).u64(1).u32(0).u64(0);
        assert_eq!(
            InFlight::decode(&e.finish()),
            Err(DecodeError::Invalid),
            "an empty slot is never stored"
        );
    }

    #[test]
    fn class_limits_are_the_share_rounded_up_and_never_starve_a_nonzero_share() {
        assert_eq!(class_limit(100, 100.0), 100);
        assert_eq!(class_limit(100, 150.0), 100);
        assert_eq!(class_limit(100, 50.0), 50);
        assert_eq!(class_limit(10, 25.0), 3);
        assert_eq!(class_limit(10, 0.1), 1);
        assert_eq!(class_limit(10, 0.0), 0);
        assert_eq!(class_limit(10, f64::NAN), 0);
        assert_eq!(class_limit(0, 50.0), 0);
    }

    #[cfg(not(target_arch = "wasm32"))]
    mod properties {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn concurrent_owners_never_exceed_the_limit(
                limit in 1u32..50,
                ops in proptest::collection::vec((0u64..4, any::<bool>()), 0..400),
            ) {
                let mut shared = InFlight::new();
                let mut own = [0u32; 4];
                for (i, (owner, admit)) in ops.into_iter().enumerate() {
                    let now = i as u64;
                    let o = owner as usize;
                    if admit {
                        if let Ok(Admission::Admitted { .. }) =
                            shared.try_admit(owner, own[o], limit, now, 1_000_000)
                        {
                            own[o] += 1;
                        }
                    } else if own[o] > 0 {
                        own[o] -= 1;
                        shared.set_own(owner, own[o], now).unwrap();
                    }
                    prop_assert!(shared.total() <= limit);
                    prop_assert_eq!(shared.total(), own.iter().sum::<u32>());
                }
            }

            #[test]
            fn decoding_arbitrary_bytes_never_panics(
                bytes in proptest::collection::vec(any::<u8>(), 0..200),
            ) {
                let _ = InFlight::decode(&bytes);
            }

            #[test]
            fn class_limits_stay_within_the_limit(limit in 0u32..100_000, share in 0.0f64..200.0) {
                let l = class_limit(limit, share);
                prop_assert!(l <= limit);
                prop_assert!(share <= 0.0 || limit == 0 || l >= 1);
            }
        }
    }
}
