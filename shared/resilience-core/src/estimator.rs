//! Streaming latency percentiles that forget by *samples*, not by time.
//!
//! # Why
//! Several filters need "how long does a good response on this route take?": failure padding
//! holds failures to the success median, the retry budget and the validator refuse work whose
//! remaining deadline is below the observed median. Two properties matter more than precision:
//!
//! - **It must not decay by the clock.** A host that has been failing for an hour sees no
//!   successes; if its learned latency faded with time, padding would shrink to zero exactly when
//!   it is needed. Here a sample's weight halves only after `half_life_samples` *newer* samples.
//! - **It must merge across workers.** Each Envoy worker records raw latencies in a small
//!   [`LatencySamples`] batch; on the tick the batch is absorbed (under CAS) into one shared
//!   [`LatencyHistogram`] per key, encoded compactly with [`crate::codec`].
//!
//! # Mechanics
//! Latencies fall into logarithmic buckets, eight per doubling (each about 9% wide), from 1 ms to
//! 2^17 ms (≈131 s); bucket 0 holds sub-millisecond samples and the last bucket everything slower.
//! A percentile walks the cumulative weights and interpolates linearly inside the bucket that
//! crosses the target, so the answer is within one bucket width (≈9%) of the true value.
//! Absorbing a batch of `n` samples first multiplies every weight by `2^(−n / half_life)`; within
//! one batch samples are not decayed against each other (batches are one tick of traffic).

use crate::codec::{DecodeError, Decoder, Encoder};

/// Buckets per doubling of latency.
const PER_DOUBLING: u32 = 8;
/// Doublings covered above 1 ms.
const DOUBLINGS: u32 = 17;
/// Bucket 0 (< 1 ms) plus eight per doubling.
pub const BUCKETS: usize = 1 + (PER_DOUBLING * DOUBLINGS) as usize;

/// The bucket a latency falls into.
fn bucket_of(latency_ms: u64) -> usize {
    if latency_ms == 0 {
        return 0;
    }
    let idx = (latency_ms as f64).log2() * f64::from(PER_DOUBLING);
    let idx = if idx.is_finite() && idx >= 0.0 {
        idx as usize
    } else {
        0
    };
    (idx + 1).min(BUCKETS - 1)
}

/// The latency range `[lo, hi)` a bucket covers, in ms.
fn bucket_bounds(bucket: usize) -> (f64, f64) {
    if bucket == 0 {
        return (0.0, 1.0);
    }
    let k = bucket as f64 - 1.0;
    let per = f64::from(PER_DOUBLING);
    ((k / per).exp2(), ((k + 1.0) / per).exp2())
}

/// One worker's raw latencies since its last publication. No decay; counts saturate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LatencySamples {
    counts: Vec<u32>,
    count: u64,
}

impl Default for LatencySamples {
    fn default() -> Self {
        Self::new()
    }
}

impl LatencySamples {
    /// An empty batch.
    pub fn new() -> Self {
        LatencySamples {
            counts: vec![0; BUCKETS],
            count: 0,
        }
    }

    /// Record one latency.
    pub fn record(&mut self, latency_ms: u64) {
        if let Some(c) = self.counts.get_mut(bucket_of(latency_ms)) {
            *c = c.saturating_add(1);
        }
        self.count = self.count.saturating_add(1);
    }

    /// Samples in the batch.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Nothing recorded.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Forget the batch (after it was published).
    pub fn clear(&mut self) {
        self.counts.iter_mut().for_each(|c| *c = 0);
        self.count = 0;
    }
}

/// A decaying, mergeable latency histogram. See the module docs.
#[derive(Clone, Debug, PartialEq)]
pub struct LatencyHistogram {
    half_life_samples: u32,
    weights: Vec<f64>,
    total_seen: u64,
}

const KIND: u8 = 0xE5;
const VERSION: u8 = 1;

impl LatencyHistogram {
    /// An empty histogram whose samples' weight halves after `half_life_samples` newer ones
    /// (clamped to at least 1).
    pub fn new(half_life_samples: u32) -> Self {
        LatencyHistogram {
            half_life_samples: half_life_samples.max(1),
            weights: vec![0.0; BUCKETS],
            total_seen: 0,
        }
    }

    fn decay(&mut self, samples: u64) {
        if samples == 0 {
            return;
        }
        let factor = (-(samples as f64) / f64::from(self.half_life_samples)).exp2();
        for w in &mut self.weights {
            *w *= factor;
            if *w < 1e-9 {
                *w = 0.0;
            }
        }
    }

    /// Record one latency (decays the older samples by one step).
    pub fn record(&mut self, latency_ms: u64) {
        self.decay(1);
        if let Some(w) = self.weights.get_mut(bucket_of(latency_ms)) {
            *w += 1.0;
        }
        self.total_seen = self.total_seen.saturating_add(1);
    }

    /// Merge one worker's batch: decay by the batch's size, then add its counts.
    pub fn absorb(&mut self, batch: &LatencySamples) {
        if batch.is_empty() {
            return;
        }
        self.decay(batch.count);
        for (w, c) in self.weights.iter_mut().zip(&batch.counts) {
            *w += f64::from(*c);
        }
        self.total_seen = self.total_seen.saturating_add(batch.count);
    }

    /// The `p`-th percentile (0–100) in ms, or `None` while nothing was recorded.
    pub fn percentile(&self, p: f64) -> Option<u64> {
        let total: f64 = self.weights.iter().sum();
        if total <= 0.0 || !total.is_finite() {
            return None;
        }
        let p = if p.is_finite() {
            p.clamp(0.0, 100.0)
        } else {
            50.0
        };
        let target = total * p / 100.0;
        let mut cumulative = 0.0;
        let mut last_nonempty = 0;
        for (i, w) in self.weights.iter().enumerate() {
            if *w <= 0.0 {
                continue;
            }
            last_nonempty = i;
            if cumulative + w >= target {
                let (lo, hi) = bucket_bounds(i);
                let within = ((target - cumulative) / w).clamp(0.0, 1.0);
                return Some((lo + (hi - lo) * within).round() as u64);
            }
            cumulative += w;
        }
        Some(bucket_bounds(last_nonempty).1.round() as u64)
    }

    /// Samples ever recorded (never decays), for `min_samples` checks.
    pub fn total_seen(&self) -> u64 {
        self.total_seen
    }

    /// Forget everything.
    pub fn clear(&mut self) {
        self.weights.iter_mut().for_each(|w| *w = 0.0);
        self.total_seen = 0;
    }

    /// Append the compact form (standalone use: see [`LatencyHistogram::encode`]).
    pub fn encode_into(&self, e: &mut Encoder) {
        e.u64(self.total_seen);
        e.u16(BUCKETS as u16);
        for w in &self.weights {
            e.u32((*w as f32).to_bits());
        }
    }

    /// Read the form written by [`LatencyHistogram::encode_into`]. Negative, infinite or NaN
    /// weights, or another bucket layout, are [`DecodeError::Invalid`].
    pub fn decode_from(d: &mut Decoder<'_>, half_life_samples: u32) -> Result<Self, DecodeError> {
        let total_seen = d.u64()?;
        if usize::from(d.u16()?) != BUCKETS {
            return Err(DecodeError::Invalid);
        }
        let mut h = LatencyHistogram::new(half_life_samples);
        h.total_seen = total_seen;
        for w in &mut h.weights {
            let v = f64::from(f32::from_bits(d.u32()?));
            if !v.is_finite() || v < 0.0 {
                return Err(DecodeError::Invalid);
            }
            *w = v;
        }
        Ok(h)
    }

    /// A standalone versioned encoding, for a histogram kept alone under a shared-data key.
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Encoder::new(KIND, VERSION);
        self.encode_into(&mut e);
        e.finish()
    }

    /// Decode [`LatencyHistogram::encode`]'s output.
    pub fn decode(bytes: &[u8], half_life_samples: u32) -> Result<Self, DecodeError> {
        let mut d = Decoder::new(bytes, KIND, VERSION)?;
        let h = Self::decode_from(&mut d, half_life_samples)?;
        d.finish()?;
        Ok(h)
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    fn within(actual: u64, expected: u64, tolerance: f64) -> bool {
        let (a, e) = (actual as f64, expected as f64);
        (a - e).abs() <= e * tolerance + 1.0
    }

    #[test]
    fn an_empty_histogram_has_no_percentile() {
        assert_eq!(LatencyHistogram::new(100).percentile(50.0), None);
    }

    #[test]
    fn a_constant_latency_is_reported_within_one_bucket() {
        let mut h = LatencyHistogram::new(1_000);
        for _ in 0..500 {
            h.record(50);
        }
        let p50 = h.percentile(50.0).unwrap();
        assert!(within(p50, 50, 0.1), "p50 {p50}");
        assert!(within(h.percentile(99.0).unwrap(), 50, 0.1));
    }

    #[test]
    fn percentiles_separate_a_fast_majority_from_a_slow_tail() {
        let mut h = LatencyHistogram::new(10_000);
        for i in 0..1_000 {
            h.record(if i % 10 == 0 { 400 } else { 20 });
        }
        assert!(within(h.percentile(50.0).unwrap(), 20, 0.1));
        assert!(within(h.percentile(95.0).unwrap(), 400, 0.1));
    }

    #[test]
    fn old_samples_fade_as_new_ones_arrive() {
        let mut h = LatencyHistogram::new(100);
        for _ in 0..1_000 {
            h.record(10);
        }
        for _ in 0..1_000 {
            h.record(200);
        }
        assert!(within(h.percentile(50.0).unwrap(), 200, 0.1));
    }

    #[test]
    fn without_new_samples_nothing_is_forgotten() {
        // No clock anywhere: a host that stops succeeding keeps its learned latency.
        let mut h = LatencyHistogram::new(10);
        for _ in 0..50 {
            h.record(80);
        }
        let before = h.percentile(50.0);
        let bytes = h.encode();
        let after = LatencyHistogram::decode(&bytes, 10).unwrap();
        assert_eq!(after.percentile(50.0), before);
    }

    #[test]
    fn absorbing_a_batch_matches_recording_it_when_the_half_life_is_long() {
        let mut one = LatencyHistogram::new(1_000_000);
        let mut batched = LatencyHistogram::new(1_000_000);
        let mut batch = LatencySamples::new();
        for ms in [3, 8, 21, 55, 144] {
            one.record(ms);
            batch.record(ms);
        }
        batched.absorb(&batch);
        assert_eq!(one.percentile(50.0), batched.percentile(50.0));
        assert_eq!(batched.total_seen(), 5);
        batch.clear();
        assert!(batch.is_empty());
    }

    #[test]
    fn sub_millisecond_and_huge_latencies_stay_in_range() {
        let mut h = LatencyHistogram::new(100);
        h.record(0);
        assert_eq!(h.percentile(50.0), Some(1));
        h.clear();
        h.record(u64::MAX);
        let p = h.percentile(50.0).unwrap();
        // The last bucket starts at 2^(135/8) ms ≈ 120 s and holds everything slower.
        assert!(p >= 120_000, "{p}");
    }

    #[test]
    fn the_encoding_round_trips_and_refuses_garbage() {
        let mut h = LatencyHistogram::new(64);
        for ms in 1..200 {
            h.record(ms);
        }
        let back = LatencyHistogram::decode(&h.encode(), 64).unwrap();
        assert_eq!(back.total_seen(), h.total_seen());
        assert_eq!(back.percentile(90.0), h.percentile(90.0));
        assert!(LatencyHistogram::decode(&[], 64).is_err());
        let mut bytes = h.encode();
        bytes.truncate(bytes.len() - 3);
        assert!(LatencyHistogram::decode(&bytes, 64).is_err());
        let mut nan = h.encode();
        let last = nan.len() - 4;
        nan[last..].copy_from_slice(&f32::NAN.to_bits().to_le_bytes());
        assert!(LatencyHistogram::decode(&nan, 64).is_err());
    }

    #[cfg(not(target_arch = "wasm32"))]
    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn percentiles_are_monotone_and_within_the_recorded_range(
                samples in proptest::collection::vec(1u64..100_000, 1..300),
                p in 0.0f64..100.0, q in 0.0f64..100.0
            ) {
                let mut h = LatencyHistogram::new(1_000);
                for s in &samples { h.record(*s); }
                let (lo, hi) = if p <= q { (p, q) } else { (q, p) };
                let (a, b) = (h.percentile(lo).unwrap(), h.percentile(hi).unwrap());
                prop_assert!(a <= b);
                let min = *samples.iter().min().unwrap() as f64;
                let max = *samples.iter().max().unwrap() as f64;
                prop_assert!(a as f64 >= min / 1.1 - 1.0 && b as f64 <= max * 1.1 + 1.0);
            }

            #[test]
            fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..700)) {
                let _ = LatencyHistogram::decode(&bytes, 10);
            }
        }
    }
}
