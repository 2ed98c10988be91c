//! Jittered exponential backoff and full jitter.
//!
//! # Why jitter
//!
//! When an upstream fails, every client that saw the failure retries. Without jitter they retry
//! on the same schedule and arrive together, so the recovering upstream meets a synchronised wave
//! at each backoff step. Spreading each delay over a range breaks the waves up; "full jitter"
//! (uniform in `[0, delay]`) spreads them the most, and [`Backoff::jitter`] lets a policy keep a
//! floor under the delay when it needs one.
//!
//! # Why the random number is a parameter
//!
//! Like time, randomness is *given* to the core: every function here takes `random: u64`, so
//! tests choose it and are deterministic. Filters draw it from `random_u64` (feature
//! `getrandom`).
//!
//! Arithmetic never overflows: the exponential is computed in `f64` and clamped to `max_ms`
//! before it is turned back into an integer.

/// `base_ms × multiplier^attempt`, capped at `max_ms`, then jittered.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Backoff {
    /// Delay before the first retry (attempt 0), before jitter.
    pub base_ms: u64,
    /// Growth per attempt. Values below 1 (or NaN) are treated as 1: a backoff does not shrink.
    pub multiplier: f64,
    /// Hard ceiling, jitter included.
    pub max_ms: u64,
    /// Share of the delay that is random, 0..=1: 0 is no jitter, 1 is full jitter. Clamped.
    pub jitter: f64,
}

impl Backoff {
    /// The delay before retry number `attempt` (0-based) when nothing is random.
    pub fn nominal_ms(&self, attempt: u32) -> u64 {
        let multiplier = if self.multiplier.is_nan() || self.multiplier < 1.0 {
            1.0
        } else {
            self.multiplier
        };
        let base = self.base_ms.min(self.max_ms);
        if base == 0 {
            return 0;
        }
        // f64 is exact for the integers that matter (< 2^53) and saturates to infinity instead
        // of overflowing; anything at or above the cap is the cap.
        let grown = base as f64 * multiplier.powf(f64::from(attempt));
        if !grown.is_finite() || grown >= self.max_ms as f64 {
            self.max_ms
        } else {
            // `grown` is finite, non-negative and below `max_ms`: the cast cannot saturate.
            (grown as u64).min(self.max_ms)
        }
    }

    /// The delay before retry number `attempt`: the nominal delay scaled by
    /// `1 − jitter + jitter × r`, where `r = random / u64::MAX` is in `[0, 1]`. Never above
    /// `max_ms`, never below `nominal × (1 − jitter)` (rounded down).
    pub fn delay_ms(&self, attempt: u32, random: u64) -> u64 {
        let nominal = self.nominal_ms(attempt);
        let jitter = if self.jitter.is_nan() {
            0.0
        } else {
            self.jitter.clamp(0.0, 1.0)
        };
        if jitter == 0.0 {
            return nominal;
        }
        let r = random as f64 / u64::MAX as f64;
        let scale = (1.0 - jitter + jitter * r).clamp(0.0, 1.0);
        ((nominal as f64 * scale) as u64)
            .min(nominal)
            .min(self.max_ms)
    }
}

/// Uniform in `[0, max_ms]` (both ends included), computed exactly in integers.
pub fn full_jitter(max_ms: u64, random: u64) -> u64 {
    let span = u128::from(max_ms) + 1;
    // (random × span) / 2^64 is below span, so it is at most max_ms and fits in u64.
    let scaled = (u128::from(random) * span) >> 64;
    u64::try_from(scaled).unwrap_or(max_ms).min(max_ms)
}

/// Uniform in `[min_ms, max_ms]`; the bounds may come in either order.
pub fn jitter_between(min_ms: u64, max_ms: u64, random: u64) -> u64 {
    let (lo, hi) = if min_ms <= max_ms {
        (min_ms, max_ms)
    } else {
        (max_ms, min_ms)
    };
    lo.saturating_add(full_jitter(hi - lo, random))
}

/// A random `u64` from the OS/WASI source. If that fails (it should not), falls back to a
/// process-local generator seeded from a counter: jitter must degrade, never trap.
#[cfg(feature = "getrandom")]
pub fn random_u64() -> u64 {
    match getrandom::u64() {
        Ok(v) => v,
        Err(_) => fallback_random(),
    }
}

/// SplitMix64 over a global counter: distinct values for each call, no unsafe, no clock.
#[cfg(feature = "getrandom")]
fn fallback_random() -> u64 {
    use core::sync::atomic::{AtomicU64, Ordering};
    const GOLDEN_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;
    static STATE: AtomicU64 = AtomicU64::new(0x853C_49E6_748F_EA9B);
    let mut z = STATE
        .fetch_add(GOLDEN_GAMMA, Ordering::Relaxed)
        .wrapping_add(GOLDEN_GAMMA);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    const NO_JITTER: Backoff = Backoff {
        base_ms: 100,
        multiplier: 2.0,
        max_ms: 1_000,
        jitter: 0.0,
    };

    #[test]
    fn without_jitter_delays_double_until_the_cap() {
        let delays: Vec<u64> = (0..6).map(|a| NO_JITTER.delay_ms(a, 12345)).collect();
        assert_eq!(delays, vec![100, 200, 400, 800, 1_000, 1_000]);
    }

    #[test]
    fn huge_attempt_numbers_stay_at_the_cap() {
        assert_eq!(NO_JITTER.delay_ms(u32::MAX, 0), 1_000);
        let unbounded = Backoff {
            max_ms: u64::MAX,
            ..NO_JITTER
        };
        assert_eq!(unbounded.delay_ms(u32::MAX, 0), u64::MAX);
    }

    #[test]
    fn a_base_above_the_cap_is_the_cap() {
        let b = Backoff {
            base_ms: 5_000,
            ..NO_JITTER
        };
        assert_eq!(b.delay_ms(0, 0), 1_000);
    }

    #[test]
    fn a_multiplier_below_one_or_nan_keeps_the_delay_constant() {
        for multiplier in [0.5, 0.0, -3.0, f64::NAN] {
            let b = Backoff {
                multiplier,
                ..NO_JITTER
            };
            assert_eq!(b.delay_ms(5, 0), 100, "{multiplier}");
        }
    }

    #[test]
    fn half_jitter_spans_half_the_delay_to_the_full_delay() {
        let b = Backoff {
            jitter: 0.5,
            ..NO_JITTER
        };
        assert_eq!(b.delay_ms(2, 0), 200);
        assert_eq!(b.delay_ms(2, u64::MAX), 400);
        assert_eq!(b.delay_ms(2, u64::MAX / 2), 300);
    }

    #[test]
    fn full_jitter_backoff_can_be_zero() {
        let b = Backoff {
            jitter: 1.0,
            ..NO_JITTER
        };
        assert_eq!(b.delay_ms(3, 0), 0);
        assert_eq!(b.delay_ms(3, u64::MAX), 800);
    }

    #[test]
    fn jitter_outside_zero_to_one_is_clamped() {
        let over = Backoff {
            jitter: 7.0,
            ..NO_JITTER
        };
        assert_eq!(over.delay_ms(0, 0), 0);
        let under = Backoff {
            jitter: -1.0,
            ..NO_JITTER
        };
        assert_eq!(under.delay_ms(0, 0), 100);
        let nan = Backoff {
            jitter: f64::NAN,
            ..NO_JITTER
        };
        assert_eq!(nan.delay_ms(0, 0), 100);
    }

    #[test]
    fn full_jitter_covers_both_ends() {
        assert_eq!(full_jitter(1_000, 0), 0);
        assert_eq!(full_jitter(1_000, u64::MAX), 1_000);
        assert_eq!(full_jitter(0, u64::MAX), 0);
        assert_eq!(full_jitter(u64::MAX, u64::MAX), u64::MAX);
        assert_eq!(full_jitter(1, u64::MAX / 2), 0);
        assert_eq!(full_jitter(1, u64::MAX / 2 + 1), 1);
    }

    #[test]
    fn jitter_between_accepts_bounds_in_either_order() {
        assert_eq!(jitter_between(10, 20, 0), 10);
        assert_eq!(jitter_between(10, 20, u64::MAX), 20);
        assert_eq!(jitter_between(20, 10, u64::MAX), 20);
        assert_eq!(jitter_between(7, 7, 12345), 7);
    }

    #[cfg(feature = "getrandom")]
    #[test]
    fn the_fallback_generator_does_not_repeat_itself() {
        let a = fallback_random();
        let b = fallback_random();
        assert_ne!(a, b);
        let _ = random_u64();
    }

    #[cfg(not(target_arch = "wasm32"))]
    mod properties {
        use super::super::*;
        use proptest::prelude::*;

        fn backoff() -> impl Strategy<Value = Backoff> {
            (
                any::<u64>(),
                prop_oneof![Just(1.0), Just(2.0), 0.0f64..10.0, any::<f64>()],
                any::<u64>(),
                prop_oneof![Just(0.0), Just(1.0), -1.0f64..2.0],
            )
                .prop_map(|(base_ms, multiplier, max_ms, jitter)| Backoff {
                    base_ms,
                    multiplier,
                    max_ms,
                    jitter,
                })
        }

        proptest! {
            #[test]
            fn a_delay_never_exceeds_the_cap_or_its_nominal(
                b in backoff(),
                attempt in any::<u32>(),
                random in any::<u64>(),
            ) {
                let d = b.delay_ms(attempt, random);
                prop_assert!(d <= b.max_ms);
                prop_assert!(d <= b.nominal_ms(attempt));
            }

            #[test]
            fn a_delay_keeps_its_unjittered_floor(
                base_ms in 0u64..1_000_000,
                attempt in 0u32..64,
                jitter in 0.0f64..=1.0,
                random in any::<u64>(),
            ) {
                let b = Backoff { base_ms, multiplier: 2.0, max_ms: 60_000, jitter };
                let nominal = b.nominal_ms(attempt) as f64;
                let floor = (nominal * (1.0 - jitter)).floor();
                // One millisecond of slack for the float rounding of r.
                prop_assert!(b.delay_ms(attempt, random) as f64 + 1.0 >= floor);
            }

            #[test]
            fn nominal_delays_never_shrink_as_attempts_grow(
                b in backoff(),
                attempt in 0u32..10_000,
            ) {
                prop_assert!(b.nominal_ms(attempt) <= b.nominal_ms(attempt + 1));
            }

            #[test]
            fn full_jitter_stays_in_range(max in any::<u64>(), random in any::<u64>()) {
                prop_assert!(full_jitter(max, random) <= max);
            }

            #[test]
            fn jitter_between_stays_between(a in any::<u64>(), b in any::<u64>(), r in any::<u64>()) {
                let v = jitter_between(a, b, r);
                prop_assert!(v >= a.min(b) && v <= a.max(b));
            }
        }
    }
}
