//! Choosing an endpoint by effective weight: weighted random, or power-of-two-choices
//! least-request over weighted draws.
//!
//! # Why weighted random is the default
//!
//! A slow-start ramp promises that a warming endpoint's *share* of traffic follows a curve. With
//! weighted random the expected share is exactly `w_i / Σ w`, whatever the load or the latency
//! of the endpoints, and picking needs nothing shared: no in-flight counters on the request
//! path. That makes the ramp predictable and cheap, and it is what the filter's end-to-end test
//! measures against the curve.
//!
//! Least-request balancing is better at avoiding a queueing endpoint, so it is available
//! (`balancer: "least_request"`): two candidates are drawn by weight and the one with fewer
//! requests in flight per unit of weight wins. The share then follows the curve only while
//! endpoints are equally loaded; a warming endpoint that is slow gets *less* than its ramp
//! allows, which is usually what one wants. In-flight counts are per-worker exact plus the other
//! workers' counts as of their last tick (see the filter's docs).
//!
//! Random numbers are parameters, so every choice here is deterministic under test.

/// One endpoint as the picker sees it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Candidate {
    /// Effective weight (configured weight × ramp fraction); 0 or less never wins.
    pub weight: f64,
    /// Requests in flight (least-request only).
    pub in_flight: u32,
}

/// How to choose among candidates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Strategy {
    #[default]
    WeightedRandom,
    /// Power of two choices over weighted draws, fewer in flight per weight wins.
    LeastRequest,
}

fn usable(w: f64) -> f64 {
    if w.is_finite() && w > 0.0 {
        w
    } else {
        0.0
    }
}

/// Sum of the usable weights.
pub fn total_weight(candidates: &[Candidate]) -> f64 {
    candidates.iter().map(|c| usable(c.weight)).sum()
}

/// The index drawn with probability proportional to weight, `None` when no weight is positive.
pub fn weighted_index(candidates: &[Candidate], random: u64) -> Option<usize> {
    let total = total_weight(candidates);
    if total <= 0.0 || !total.is_finite() {
        return None;
    }
    let target = crate::ramp::unit_interval(random) * total;
    let mut acc = 0.0;
    let mut last = None;
    for (i, c) in candidates.iter().enumerate() {
        let w = usable(c.weight);
        if w <= 0.0 {
            continue;
        }
        acc += w;
        last = Some(i);
        if target < acc {
            return Some(i);
        }
    }
    // Rounding can leave `target` a hair above the last sum: the last usable candidate.
    last
}

/// Picks a candidate; `randoms` are two independent random numbers (the second is used only
/// by least-request).
pub fn pick(candidates: &[Candidate], strategy: Strategy, randoms: [u64; 2]) -> Option<usize> {
    let a = weighted_index(candidates, randoms[0])?;
    match strategy {
        Strategy::WeightedRandom => Some(a),
        Strategy::LeastRequest => {
            let Some(b) = weighted_index(candidates, randoms[1]) else {
                return Some(a);
            };
            let load = |i: usize| {
                candidates
                    .get(i)
                    .map_or(f64::INFINITY, |c| f64::from(c.in_flight) / usable(c.weight))
            };
            if load(b) < load(a) {
                Some(b)
            } else {
                Some(a)
            }
        }
    }
}

/// The endpoints to try after `first`, in order, for a host that sends each retry to the next
/// one named (Envoy's `override_host` load-balancing policy): each is drawn like [`pick`] among
/// the candidates not named yet, so a retry avoids the endpoint that just failed and still
/// follows the ramp. Fills `out` from the front and returns how many it named; an endpoint
/// with no weight (unhealthy, gated, at its cap) is never named. `candidates` is scratch:
/// the named ones lose their weight.
pub fn alternates(
    candidates: &mut [Candidate],
    strategy: Strategy,
    first: usize,
    out: &mut [usize],
    mut random: impl FnMut() -> u64,
) -> usize {
    if let Some(c) = candidates.get_mut(first) {
        c.weight = 0.0;
    }
    let mut named = 0;
    for slot in out.iter_mut() {
        let Some(i) = pick(candidates, strategy, [random(), random()]) else {
            break;
        };
        *slot = i;
        named += 1;
        if let Some(c) = candidates.get_mut(i) {
            c.weight = 0.0;
        }
    }
    named
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    fn c(weight: f64, in_flight: u32) -> Candidate {
        Candidate { weight, in_flight }
    }

    /// A seeded generator (SplitMix64) for deterministic draws.
    fn seq(seed: u64) -> impl FnMut() -> u64 {
        let mut x = seed;
        move || {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }
    }

    #[test]
    fn weighted_random_shares_follow_the_weights() {
        let cands = [c(10.0, 0), c(100.0, 0), c(100.0, 0)];
        let mut r = seq(42);
        let mut hits = [0u32; 3];
        for _ in 0..21_000 {
            let i = pick(&cands, Strategy::WeightedRandom, [r(), r()]).unwrap();
            hits[i] += 1;
        }
        // Expected 1000 / 10000 / 10000.
        assert!((850..1_150).contains(&hits[0]), "{hits:?}");
        assert!((9_600..10_400).contains(&hits[1]), "{hits:?}");
    }

    #[test]
    fn zero_negative_and_nan_weights_never_win() {
        let cands = [c(0.0, 0), c(-1.0, 0), c(f64::NAN, 0), c(3.0, 0)];
        let mut r = seq(1);
        for _ in 0..1_000 {
            assert_eq!(pick(&cands, Strategy::WeightedRandom, [r(), r()]), Some(3));
        }
        assert_eq!(weighted_index(&[c(0.0, 0)], 5), None);
        assert_eq!(weighted_index(&[], 5), None);
        assert_eq!(weighted_index(&[c(1.0, 0), c(1.0, 0)], u64::MAX), Some(1));
    }

    #[test]
    fn least_request_prefers_the_less_loaded_of_two_weighted_draws() {
        let cands = [c(1.0, 10), c(1.0, 0)];
        // Draw 0 then 1: the idle one wins; draw 1 then 0: still the idle one.
        assert_eq!(pick(&cands, Strategy::LeastRequest, [0, u64::MAX]), Some(1));
        assert_eq!(pick(&cands, Strategy::LeastRequest, [u64::MAX, 0]), Some(1));
        // Load is per unit of weight: 10 in flight on weight 10 beats 2 on weight 1.
        let cands = [c(10.0, 10), c(1.0, 2)];
        assert_eq!(pick(&cands, Strategy::LeastRequest, [0, u64::MAX]), Some(0));
    }

    #[test]
    fn alternates_name_each_other_endpoint_once_and_never_the_first() {
        let mut cands = [c(1.0, 0), c(1.0, 0), c(1.0, 0), c(1.0, 0)];
        let mut out = [usize::MAX; 4];
        let n = alternates(&mut cands, Strategy::WeightedRandom, 2, &mut out, seq(7));
        assert_eq!(n, 3);
        let mut named = out[..n].to_vec();
        named.sort_unstable();
        assert_eq!(named, vec![0, 1, 3]);
    }

    #[test]
    fn alternates_skip_endpoints_without_weight_and_stop_when_none_is_left() {
        // Endpoint 1 is unhealthy (weight 0): a retry must never be sent there.
        let mut cands = [c(5.0, 0), c(0.0, 0), c(5.0, 0)];
        let mut out = [usize::MAX; 3];
        let n = alternates(&mut cands, Strategy::LeastRequest, 0, &mut out, seq(3));
        assert_eq!((n, out[0]), (1, 2));
    }

    #[test]
    fn alternates_follow_the_ramp_a_warming_endpoint_is_rarely_the_first_fallback() {
        let mut r = seq(11);
        let mut warming_second = 0;
        for _ in 0..10_000 {
            let mut cands = [c(100.0, 0), c(100.0, 0), c(5.0, 0)];
            let mut out = [0; 1];
            alternates(&mut cands, Strategy::WeightedRandom, 0, &mut out, &mut r);
            if out[0] == 2 {
                warming_second += 1;
            }
        }
        // Expected 5 / 105 of the time: about 476.
        assert!((380..580).contains(&warming_second), "{warming_second}");
    }

    #[cfg(not(target_arch = "wasm32"))]
    mod properties {
        use super::{c, pick, Candidate};
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn a_pick_is_always_a_candidate_with_positive_weight(
                weights in proptest::collection::vec(-5.0f64..50.0, 0..20),
                loads in proptest::collection::vec(0u32..100, 20),
                r1 in any::<u64>(), r2 in any::<u64>(), lr in any::<bool>()
            ) {
                let cands: Vec<Candidate> = weights.iter().zip(loads.iter())
                    .map(|(w, l)| c(*w, *l)).collect();
                let s = if lr { super::Strategy::LeastRequest } else { super::Strategy::WeightedRandom };
                match pick(&cands, s, [r1, r2]) {
                    Some(i) => prop_assert!(cands[i].weight > 0.0),
                    None => prop_assert!(cands.iter().all(|c| c.weight <= 0.0)),
                }
            }
        }
    }
}
