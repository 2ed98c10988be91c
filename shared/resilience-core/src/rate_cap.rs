//! An absolute rate cap shared by all workers: the generic cell rate algorithm (GCRA).
//!
//! # Why
//!
//! A ramp gives a warming endpoint a *share* of traffic. When every endpoint is new, shares say
//! nothing (a third of everything is still everything a cold replica can't take), and a share
//! of a traffic spike is a spike. `max_warmup_rps` therefore caps the requests a warming endpoint
//! gets per second in absolute terms, across all of Envoy's workers together.
//!
//! # How
//!
//! GCRA keeps one number per cap, the *theoretical arrival time* (TAT): when the next request
//! would be due if requests came exactly at the rate. A request at `now` is allowed when
//! `TAT − now` is within the burst tolerance, and then moves TAT forward by one interval. One
//! `u64` makes it a cheap compare-and-swap value; the filter pays that CAS only for requests to
//! endpoints that are warming and capped. Times are microseconds so that rates up to a million
//! per second keep their precision.

use crate::codec::{DecodeError, Decoder, Encoder};

const KIND: u8 = 0x56;
const VERSION: u8 = 1;

/// A rate of `1_000_000 / interval_us` per second with a burst of `burst` requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateCap {
    pub interval_us: u64,
    pub burst: u32,
}

impl RateCap {
    /// `rps` requests per second (must be positive and finite) with a burst of a tenth of a
    /// second's worth, at least one request.
    pub fn per_second(rps: f64) -> Option<Self> {
        if !(rps.is_finite() && rps > 0.0) {
            return None;
        }
        let interval_us = (1_000_000.0 / rps).round().max(1.0) as u64;
        let burst = (rps / 10.0).floor().clamp(1.0, 1_000_000.0) as u32;
        Some(RateCap { interval_us, burst })
    }

    /// Whether a request at `now_us` fits; `Ok(new_tat)` to store, or `Err(wait_us)` until one
    /// would.
    pub fn try_take(&self, tat_us: u64, now_us: u64) -> Result<u64, u64> {
        let tolerance = self
            .interval_us
            .saturating_mul(u64::from(self.burst.max(1)).saturating_sub(1));
        let tat = tat_us.max(now_us);
        if tat.saturating_sub(now_us) > tolerance {
            return Err(tat - now_us - tolerance);
        }
        Ok(tat.saturating_add(self.interval_us))
    }
}

/// Encodes a TAT for shared data.
pub fn encode_tat(tat_us: u64) -> Vec<u8> {
    let mut e = Encoder::new(KIND, VERSION);
    e.u64(tat_us);
    e.finish()
}

/// Decodes [`encode_tat`]'s bytes.
pub fn decode_tat(bytes: &[u8]) -> Result<u64, DecodeError> {
    let mut d = Decoder::new(bytes, KIND, VERSION)?;
    let tat = d.u64()?;
    d.finish()?;
    Ok(tat)
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    #[test]
    fn a_cap_of_ten_per_second_admits_one_every_hundred_ms() {
        let cap = RateCap::per_second(10.0).unwrap();
        assert_eq!(
            cap,
            RateCap {
                interval_us: 100_000,
                burst: 1
            }
        );
        let tat = cap.try_take(0, 1_000_000).unwrap();
        assert_eq!(cap.try_take(tat, 1_050_000), Err(50_000));
        assert!(cap.try_take(tat, 1_100_000).is_ok());
    }

    #[test]
    fn a_burst_is_allowed_up_front_then_the_rate_holds() {
        let cap = RateCap::per_second(100.0).unwrap();
        assert_eq!(cap.burst, 10);
        let mut tat = 0;
        let mut allowed = 0;
        for _ in 0..50 {
            if let Ok(t) = cap.try_take(tat, 5_000_000) {
                tat = t;
                allowed += 1;
            }
        }
        assert_eq!(allowed, 10);
    }

    #[test]
    fn nonsense_rates_are_refused_and_the_tat_round_trips() {
        assert!(RateCap::per_second(0.0).is_none());
        assert!(RateCap::per_second(f64::NAN).is_none());
        assert_eq!(decode_tat(&encode_tat(123)), Ok(123));
        assert!(decode_tat(&[KIND]).is_err());
    }

    #[cfg(not(target_arch = "wasm32"))]
    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn never_more_than_rate_times_time_plus_burst(
                rps in 1.0f64..2_000.0,
                gaps in proptest::collection::vec(0u64..20_000, 1..500)
            ) {
                let cap = RateCap::per_second(rps).unwrap();
                let start = 1_000_000u64;
                let mut now = start;
                let mut tat = 0;
                let mut allowed = 0u64;
                for g in gaps {
                    now += g;
                    if let Ok(t) = cap.try_take(tat, now) {
                        tat = t;
                        allowed += 1;
                    }
                }
                let bound = (now - start) / cap.interval_us + u64::from(cap.burst);
                prop_assert!(allowed <= bound, "{} > {}", allowed, bound);
            }

            #[test]
            fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..32)) {
                let _ = decode_tat(&bytes);
            }
        }
    }
}
