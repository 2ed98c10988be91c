//! Sliding outcome windows: how many calls, failures and slow calls happened recently.
//!
//! # Why two windows
//!
//! A failure *rate* needs a denominator, and "recently" can mean two things:
//!
//! - [`TimeWindow`]: the last `window_ms` of wall time. Rates follow the clock, so an idle route
//!   forgets old failures on its own; this is what a breaker that should recover after a quiet
//!   minute wants.
//! - [`CountWindow`]: the last `size` calls, however long ago. Rates react at the same speed on a
//!   busy and a quiet route; this is what a low-traffic route needs, where a time window would
//!   rarely hold enough calls to judge.
//!
//! # Window mechanics
//!
//! [`TimeWindow`] splits the window into `buckets` equal slots of `width_ms` and keys each by its
//! *epoch*, `now_ms / width_ms`. Slot `epoch % buckets` is reused when its stored epoch is stale,
//! so recording is O(1) and nothing is ever shifted. Totals sum the slots whose epoch lies within
//! the last `buckets` epochs. The window therefore moves in steps of one bucket: an outcome is
//! forgotten between `(buckets - 1) × width_ms` and `buckets × width_ms` after it was recorded.
//! More buckets make the steps smaller; 60 is the cap (each bucket is 20 bytes of shared data).
//!
//! Time is a parameter and never runs backwards here: windows are shared between workers through
//! shared data, and two workers' clocks can disagree by a millisecond. A `now_ms` older than the
//! newest bucket is treated as the newest bucket's time, so a late record lands in the current
//! bucket instead of overwriting history.
//!
//! [`CountWindow`] is a ring of two bits per call (failed, slow) with running counters, so
//! totals are O(1) too.
//!
//! Both encode into [`crate::codec`] for shared data; see their `decode_from` for what happens
//! when the stored window was written under another configuration.

use crate::codec::{DecodeError, Decoder, Encoder};

/// Calls, failures and slow calls. Arithmetic saturates.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub total: u32,
    pub failures: u32,
    pub slow: u32,
}

impl Counts {
    /// One call.
    pub const fn one(failure: bool, slow: bool) -> Self {
        Self {
            total: 1,
            failures: failure as u32,
            slow: slow as u32,
        }
    }

    /// `self + other`, each field saturating at `u32::MAX`. (Also available as `+` and `+=`.)
    #[allow(clippy::should_implement_trait)] // it is implemented too; this one needs no import
    #[must_use]
    pub const fn add(self, other: Counts) -> Counts {
        Counts {
            total: self.total.saturating_add(other.total),
            failures: self.failures.saturating_add(other.failures),
            slow: self.slow.saturating_add(other.slow),
        }
    }

    pub fn successes(&self) -> u32 {
        self.total.saturating_sub(self.failures)
    }

    /// Failures as a percentage of all calls, 0 when there were none.
    pub fn failure_rate_percent(&self) -> f64 {
        percent(self.failures, self.total)
    }

    /// Slow calls as a percentage of all calls, 0 when there were none.
    pub fn slow_rate_percent(&self) -> f64 {
        percent(self.slow, self.total)
    }
}

impl core::ops::Add for Counts {
    type Output = Counts;

    fn add(self, other: Counts) -> Counts {
        Counts::add(self, other)
    }
}

impl core::ops::AddAssign for Counts {
    fn add_assign(&mut self, other: Counts) {
        *self = Counts::add(*self, other);
    }
}

fn percent(part: u32, total: u32) -> f64 {
    if total == 0 {
        0.0
    } else {
        f64::from(part) * 100.0 / f64::from(total)
    }
}

// ---------------------------------------------------------------------------------------------
// Time window
// ---------------------------------------------------------------------------------------------

/// Most buckets a [`TimeWindow`] keeps.
pub const MAX_BUCKETS: u32 = 60;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Bucket {
    epoch: u64,
    counts: Counts,
}

/// Outcomes of the last `window_ms`, in buckets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimeWindow {
    width_ms: u64,
    buckets: Vec<Bucket>,
    /// Newest epoch seen; time never runs backwards past it.
    head: u64,
}

impl TimeWindow {
    /// A window of about `window_ms` in `buckets` slots. `buckets` is clamped to 1..=60 and to at
    /// most `window_ms` (a bucket is at least 1 ms wide); the width is `window_ms / buckets`
    /// rounded down, so the effective window ([`TimeWindow::window_ms`]) can be a few
    /// milliseconds shorter than asked.
    pub fn new(window_ms: u64, buckets: u32) -> Self {
        let (width_ms, count) = Self::geometry(window_ms, buckets);
        Self {
            width_ms,
            buckets: vec![Bucket::default(); usize::try_from(count).unwrap_or(1)],
            head: 0,
        }
    }

    fn geometry(window_ms: u64, buckets: u32) -> (u64, u32) {
        let window_ms = window_ms.max(1);
        let count = buckets
            .clamp(1, MAX_BUCKETS)
            .min(u32::try_from(window_ms).unwrap_or(u32::MAX));
        let width = (window_ms / u64::from(count)).max(1);
        (width, count)
    }

    /// The window actually covered: bucket width × bucket count.
    pub fn window_ms(&self) -> u64 {
        self.width_ms.saturating_mul(self.bucket_count_u64())
    }

    pub fn width_ms(&self) -> u64 {
        self.width_ms
    }

    pub fn bucket_count(&self) -> u32 {
        u32::try_from(self.buckets.len()).unwrap_or(MAX_BUCKETS)
    }

    fn bucket_count_u64(&self) -> u64 {
        u64::try_from(self.buckets.len()).unwrap_or(1).max(1)
    }

    fn epoch_at(&self, now_ms: u64) -> u64 {
        (now_ms / self.width_ms.max(1)).max(self.head)
    }

    /// Adds `counts` to the bucket of `now_ms`.
    pub fn record(&mut self, now_ms: u64, counts: Counts) {
        let epoch = self.epoch_at(now_ms);
        self.head = epoch;
        let n = self.bucket_count_u64();
        let Some(slot) = usize::try_from(epoch % n)
            .ok()
            .and_then(|i| self.buckets.get_mut(i))
        else {
            return;
        };
        if slot.epoch != epoch {
            *slot = Bucket {
                epoch,
                counts: Counts::default(),
            };
        }
        slot.counts += counts;
    }

    /// Sums the buckets within the window ending at `now_ms`.
    pub fn totals(&self, now_ms: u64) -> Counts {
        let epoch = self.epoch_at(now_ms);
        let n = self.bucket_count_u64();
        let mut sum = Counts::default();
        for bucket in &self.buckets {
            if bucket.epoch <= epoch && epoch - bucket.epoch < n {
                sum += bucket.counts;
            }
        }
        sum
    }

    /// Forgets everything (the breaker does this when it changes state).
    pub fn clear(&mut self) {
        for bucket in &mut self.buckets {
            *bucket = Bucket::default();
        }
        self.head = 0;
    }

    /// Appends the window: width, bucket count, head epoch, then each bucket's epoch and counts.
    pub fn encode_into(&self, enc: &mut Encoder) {
        enc.u64(self.width_ms)
            .u32(self.bucket_count())
            .u64(self.head);
        for bucket in &self.buckets {
            enc.u64(bucket.epoch)
                .u32(bucket.counts.total)
                .u32(bucket.counts.failures)
                .u32(bucket.counts.slow);
        }
    }

    /// Reads a window written by [`TimeWindow::encode_into`], for a configuration of
    /// `window_ms` / `buckets`.
    ///
    /// If the stored window has another bucket width or count (the configuration changed since
    /// it was written), its buckets cannot be mapped onto the new ones, and the result is an
    /// *empty* window of the new shape rather than an error: a configuration change starts the
    /// statistics afresh, just as a restart would. The bytes are still read in full, so the
    /// decoder stays positioned for whatever follows. Structurally impossible contents (more
    /// than 60 buckets, more failures than calls, a bucket in the wrong slot) are
    /// [`DecodeError::Invalid`].
    pub fn decode_from(
        dec: &mut Decoder<'_>,
        window_ms: u64,
        buckets: u32,
    ) -> Result<Self, DecodeError> {
        let width_ms = dec.u64()?;
        let count = dec.u32()?;
        let head = dec.u64()?;
        if count == 0 || count > MAX_BUCKETS || width_ms == 0 {
            return Err(DecodeError::Invalid);
        }
        let mut stored = Vec::with_capacity(usize::try_from(count).unwrap_or(0));
        for slot in 0..u64::from(count) {
            let bucket = Bucket {
                epoch: dec.u64()?,
                counts: Counts {
                    total: dec.u32()?,
                    failures: dec.u32()?,
                    slow: dec.u32()?,
                },
            };
            let empty = bucket.counts == Counts::default();
            if bucket.counts.failures > bucket.counts.total
                || bucket.counts.slow > bucket.counts.total
                || bucket.epoch > head
                || (!empty && bucket.epoch % u64::from(count) != slot)
            {
                return Err(DecodeError::Invalid);
            }
            stored.push(bucket);
        }
        let fresh = Self::new(window_ms, buckets);
        if fresh.width_ms != width_ms || fresh.bucket_count() != count {
            return Ok(fresh);
        }
        Ok(Self {
            width_ms,
            buckets: stored,
            head,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Count window
// ---------------------------------------------------------------------------------------------

/// Largest [`CountWindow`]: 10 000 calls is 2.5 KB of shared data.
pub const MAX_COUNT_WINDOW: u32 = 10_000;

/// Outcomes of the last `size` calls.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CountWindow {
    size: u32,
    /// Calls held, up to `size`.
    len: u32,
    /// Ring position the next call is written to.
    next: u32,
    failure_bits: Vec<u64>,
    slow_bits: Vec<u64>,
    failures: u32,
    slow: u32,
}

fn bit(words: &[u64], pos: u32) -> bool {
    let word = usize::try_from(pos / 64).unwrap_or(usize::MAX);
    words
        .get(word)
        .is_some_and(|w| w & (1u64 << (pos % 64)) != 0)
}

fn set_bit(words: &mut [u64], pos: u32, value: bool) {
    let word = usize::try_from(pos / 64).unwrap_or(usize::MAX);
    if let Some(w) = words.get_mut(word) {
        if value {
            *w |= 1u64 << (pos % 64);
        } else {
            *w &= !(1u64 << (pos % 64));
        }
    }
}

fn words_for(size: u32) -> usize {
    usize::try_from(size.div_ceil(64)).unwrap_or(0)
}

impl CountWindow {
    /// A window over the last `size` calls, clamped to 1..=10 000.
    pub fn new(size: u32) -> Self {
        let size = size.clamp(1, MAX_COUNT_WINDOW);
        Self {
            size,
            len: 0,
            next: 0,
            failure_bits: vec![0; words_for(size)],
            slow_bits: vec![0; words_for(size)],
            failures: 0,
            slow: 0,
        }
    }

    pub fn size(&self) -> u32 {
        self.size
    }

    /// Records one call, pushing out the oldest once the window is full.
    pub fn record(&mut self, failure: bool, slow: bool) {
        let pos = self.next;
        if self.len == self.size {
            if bit(&self.failure_bits, pos) {
                self.failures = self.failures.saturating_sub(1);
            }
            if bit(&self.slow_bits, pos) {
                self.slow = self.slow.saturating_sub(1);
            }
        } else {
            self.len = self.len.saturating_add(1);
        }
        set_bit(&mut self.failure_bits, pos, failure);
        set_bit(&mut self.slow_bits, pos, slow);
        self.failures = self.failures.saturating_add(u32::from(failure));
        self.slow = self.slow.saturating_add(u32::from(slow));
        self.next = if pos.saturating_add(1) >= self.size {
            0
        } else {
            pos + 1
        };
    }

    /// The calls held and how many failed or were slow.
    pub fn totals(&self) -> Counts {
        Counts {
            total: self.len,
            failures: self.failures,
            slow: self.slow,
        }
    }

    pub fn clear(&mut self) {
        *self = Self::new(self.size);
    }

    /// Appends the window: size, length, ring position, then the failure and slow bit words.
    pub fn encode_into(&self, enc: &mut Encoder) {
        enc.u32(self.size).u32(self.len).u32(self.next);
        for w in self.failure_bits.iter().chain(&self.slow_bits) {
            enc.u64(*w);
        }
    }

    /// Reads a window written by [`CountWindow::encode_into`], for a configured `size`.
    ///
    /// A stored window of another size (the configuration changed) decodes to an *empty* window
    /// of the configured size rather than an error, after reading its bytes in full. Impossible
    /// contents (size out of range, a ring position past the end, bits set for calls that were
    /// never recorded) are [`DecodeError::Invalid`].
    pub fn decode_from(dec: &mut Decoder<'_>, size: u32) -> Result<Self, DecodeError> {
        let stored_size = dec.u32()?;
        let len = dec.u32()?;
        let next = dec.u32()?;
        if stored_size == 0
            || stored_size > MAX_COUNT_WINDOW
            || len > stored_size
            || next >= stored_size
            || (len < stored_size && next != len)
        {
            return Err(DecodeError::Invalid);
        }
        let words = words_for(stored_size);
        let mut failure_bits = Vec::with_capacity(words);
        for _ in 0..words {
            failure_bits.push(dec.u64()?);
        }
        let mut slow_bits = Vec::with_capacity(words);
        for _ in 0..words {
            slow_bits.push(dec.u64()?);
        }
        // Positions at or past `len` hold no call; a bit there is corruption.
        let stray =
            |words: &[u64]| (len..words_for(stored_size) as u32 * 64).any(|p| bit(words, p));
        if stray(&failure_bits) || stray(&slow_bits) {
            return Err(DecodeError::Invalid);
        }
        let count = |words: &[u64]| words.iter().map(|w| w.count_ones()).sum::<u32>();
        let window = Self {
            size: stored_size,
            len,
            next,
            failures: count(&failure_bits),
            slow: count(&slow_bits),
            failure_bits,
            slow_bits,
        };
        if stored_size != size.clamp(1, MAX_COUNT_WINDOW) {
            return Ok(Self::new(size));
        }
        Ok(window)
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    const KIND: u8 = 1;
    const V: u8 = 1;

    fn failure() -> Counts {
        Counts::one(true, false)
    }

    fn success() -> Counts {
        Counts::one(false, false)
    }

    #[test]
    fn counts_add_saturates_instead_of_wrapping() {
        let mut c = Counts {
            total: u32::MAX - 1,
            failures: u32::MAX,
            slow: 0,
        };
        c = c.add(Counts::one(true, true));
        c += Counts::one(true, true);
        assert_eq!(
            c,
            Counts {
                total: u32::MAX,
                failures: u32::MAX,
                slow: 2
            }
        );
    }

    #[test]
    fn rates_are_percentages_and_zero_without_calls() {
        let c = Counts {
            total: 8,
            failures: 2,
            slow: 4,
        };
        assert_eq!(c.failure_rate_percent(), 25.0);
        assert_eq!(c.slow_rate_percent(), 50.0);
        assert_eq!(c.successes(), 6);
        assert_eq!(Counts::default().failure_rate_percent(), 0.0);
        assert_eq!(Counts::default().slow_rate_percent(), 0.0);
    }

    #[test]
    fn time_window_sums_everything_recorded_within_the_window() {
        let mut w = TimeWindow::new(10_000, 10);
        w.record(0, failure());
        w.record(3_500, success());
        w.record(9_999, success());
        assert_eq!(
            w.totals(9_999),
            Counts {
                total: 3,
                failures: 1,
                slow: 0
            }
        );
    }

    #[test]
    fn time_window_forgets_buckets_older_than_the_window() {
        let mut w = TimeWindow::new(10_000, 10);
        w.record(500, failure()); // bucket [0, 1000)
        w.record(1_500, failure()); // bucket [1000, 2000)
        assert_eq!(w.totals(9_999).failures, 2);
        // At 10 000 the window is [1000, 11000): the first bucket has slid out.
        assert_eq!(w.totals(10_000).failures, 1);
        assert_eq!(w.totals(11_000).failures, 0);
    }

    #[test]
    fn time_window_reuses_a_stale_slot_instead_of_adding_to_it() {
        let mut w = TimeWindow::new(10_000, 10);
        w.record(500, failure());
        // 10 500 lands in the same slot (epoch 10 % 10 == 0), which must start from zero.
        w.record(10_500, success());
        assert_eq!(
            w.totals(10_500),
            Counts {
                total: 1,
                failures: 0,
                slow: 0
            }
        );
    }

    #[test]
    fn time_window_that_sat_idle_for_hours_is_empty() {
        let mut w = TimeWindow::new(60_000, 60);
        for t in 0..60 {
            w.record(t * 1_000, failure());
        }
        assert_eq!(w.totals(59_999).total, 60);
        assert_eq!(w.totals(3 * 3_600_000).total, 0);
    }

    #[test]
    fn time_window_treats_a_clock_running_backwards_as_the_newest_bucket() {
        let mut w = TimeWindow::new(10_000, 10);
        w.record(20_000, failure());
        // Another worker's clock is a bit behind: its record joins the newest bucket.
        w.record(19_400, failure());
        assert_eq!(w.totals(20_000).failures, 2);
        // And asking with an old time does not resurrect or hide anything.
        assert_eq!(w.totals(0).failures, 2);
    }

    #[test]
    fn time_window_clamps_its_geometry() {
        let w = TimeWindow::new(10_000, 0);
        assert_eq!((w.bucket_count(), w.width_ms()), (1, 10_000));
        let w = TimeWindow::new(10_000, 1_000);
        assert_eq!((w.bucket_count(), w.width_ms()), (60, 166));
        assert_eq!(w.window_ms(), 9_960);
        let w = TimeWindow::new(5, 60);
        assert_eq!((w.bucket_count(), w.width_ms()), (5, 1));
        let w = TimeWindow::new(0, 10);
        assert_eq!((w.bucket_count(), w.width_ms()), (1, 1));
    }

    #[test]
    fn time_window_clear_forgets_everything() {
        let mut w = TimeWindow::new(10_000, 10);
        w.record(5_000, failure());
        w.clear();
        assert_eq!(w.totals(5_000), Counts::default());
        assert_eq!(w, TimeWindow::new(10_000, 10));
    }

    #[test]
    fn time_window_round_trips_through_the_codec() {
        let mut w = TimeWindow::new(10_000, 10);
        w.record(1_000, failure());
        w.record(7_300, Counts::one(false, true));
        let mut enc = Encoder::new(KIND, V);
        w.encode_into(&mut enc);
        let bytes = enc.finish();
        assert_eq!(bytes.len(), 2 + 20 + 10 * 20);
        let mut dec = Decoder::new(&bytes, KIND, V).unwrap();
        let back = TimeWindow::decode_from(&mut dec, 10_000, 10).unwrap();
        dec.finish().unwrap();
        assert_eq!(back, w);
    }

    #[test]
    fn a_time_window_stored_under_another_geometry_decodes_empty() {
        let mut w = TimeWindow::new(10_000, 10);
        w.record(1_000, failure());
        let mut enc = Encoder::new(KIND, V);
        w.encode_into(&mut enc);
        enc.u8(0xAB);
        let bytes = enc.finish();
        let mut dec = Decoder::new(&bytes, KIND, V).unwrap();
        let back = TimeWindow::decode_from(&mut dec, 30_000, 10).unwrap();
        assert_eq!(back, TimeWindow::new(30_000, 10));
        // The stored window was read in full: what follows is still there.
        assert_eq!(dec.u8(), Ok(0xAB));
        assert_eq!(dec.finish(), Ok(()));
    }

    #[test]
    fn a_time_window_with_more_failures_than_calls_is_invalid() {
        let mut enc = Encoder::new(KIND, V);
        enc.u64(1_000).u32(1).u64(5);
        enc.u64(5).u32(1).u32(2).u32(0);
        let bytes = enc.finish();
        let mut dec = Decoder::new(&bytes, KIND, V).unwrap();
        assert_eq!(
            TimeWindow::decode_from(&mut dec, 1_000, 1),
            Err(DecodeError::Invalid)
        );
    }

    #[test]
    fn a_time_window_claiming_too_many_buckets_is_invalid() {
        let mut enc = Encoder::new(KIND, V);
        enc.u64(1_000).u32(61).u64(5);
        let bytes = enc.finish();
        let mut dec = Decoder::new(&bytes, KIND, V).unwrap();
        assert_eq!(
            TimeWindow::decode_from(&mut dec, 61_000, 61),
            Err(DecodeError::Invalid)
        );
    }

    #[test]
    fn count_window_holds_the_last_size_calls() {
        let mut w = CountWindow::new(3);
        w.record(true, false);
        w.record(true, true);
        assert_eq!(
            w.totals(),
            Counts {
                total: 2,
                failures: 2,
                slow: 1
            }
        );
        w.record(false, false);
        w.record(false, false); // pushes out the first failure
        assert_eq!(
            w.totals(),
            Counts {
                total: 3,
                failures: 1,
                slow: 1
            }
        );
        w.record(false, false); // pushes out the slow failure
        assert_eq!(
            w.totals(),
            Counts {
                total: 3,
                failures: 0,
                slow: 0
            }
        );
    }

    #[test]
    fn count_window_clamps_its_size() {
        assert_eq!(CountWindow::new(0).size(), 1);
        assert_eq!(CountWindow::new(u32::MAX).size(), MAX_COUNT_WINDOW);
    }

    #[test]
    fn count_window_of_one_holds_only_the_latest_call() {
        let mut w = CountWindow::new(1);
        w.record(true, true);
        w.record(false, false);
        assert_eq!(
            w.totals(),
            Counts {
                total: 1,
                failures: 0,
                slow: 0
            }
        );
    }

    #[test]
    fn count_window_clear_keeps_the_size() {
        let mut w = CountWindow::new(100);
        w.record(true, false);
        w.clear();
        assert_eq!(w, CountWindow::new(100));
    }

    #[test]
    fn count_window_round_trips_through_the_codec() {
        let mut w = CountWindow::new(130);
        for i in 0..200u32 {
            w.record(i % 3 == 0, i % 7 == 0);
        }
        let mut enc = Encoder::new(KIND, V);
        w.encode_into(&mut enc);
        let bytes = enc.finish();
        assert_eq!(bytes.len(), 2 + 12 + 2 * 3 * 8);
        let mut dec = Decoder::new(&bytes, KIND, V).unwrap();
        let back = CountWindow::decode_from(&mut dec, 130).unwrap();
        dec.finish().unwrap();
        assert_eq!(back, w);
    }

    #[test]
    fn a_count_window_stored_under_another_size_decodes_empty() {
        let mut w = CountWindow::new(10);
        w.record(true, false);
        let mut enc = Encoder::new(KIND, V);
        w.encode_into(&mut enc);
        let bytes = enc.finish();
        let mut dec = Decoder::new(&bytes, KIND, V).unwrap();
        assert_eq!(
            CountWindow::decode_from(&mut dec, 20).unwrap(),
            CountWindow::new(20)
        );
        assert_eq!(dec.finish(), Ok(()));
    }

    #[test]
    fn a_count_window_with_bits_for_unrecorded_calls_is_invalid() {
        let mut enc = Encoder::new(KIND, V);
        enc.u32(10).u32(2).u32(2).u64(0b100).u64(0);
        let bytes = enc.finish();
        let mut dec = Decoder::new(&bytes, KIND, V).unwrap();
        assert_eq!(
            CountWindow::decode_from(&mut dec, 10),
            Err(DecodeError::Invalid)
        );
    }

    #[test]
    fn a_count_window_with_its_ring_position_past_the_end_is_invalid() {
        let mut enc = Encoder::new(KIND, V);
        enc.u32(10).u32(10).u32(10).u64(0).u64(0);
        let bytes = enc.finish();
        let mut dec = Decoder::new(&bytes, KIND, V).unwrap();
        assert_eq!(
            CountWindow::decode_from(&mut dec, 10),
            Err(DecodeError::Invalid)
        );
    }

    #[cfg(not(target_arch = "wasm32"))]
    mod properties {
        use super::super::*;
        use proptest::prelude::*;
        use std::collections::VecDeque;

        fn counts() -> impl Strategy<Value = Counts> {
            (0u32..5, 0u32..5, 0u32..5).prop_map(|(t, f, s)| Counts {
                total: t + f.max(s),
                failures: f,
                slow: s,
            })
        }

        proptest! {
            #[test]
            fn time_window_totals_match_a_naive_model(
                window_ms in 1u64..20_000,
                buckets in 1u32..=60,
                steps in proptest::collection::vec((0u64..3_000, counts()), 1..80),
                query_after in 0u64..40_000,
            ) {
                let mut w = TimeWindow::new(window_ms, buckets);
                let width = w.width_ms();
                let n = u64::from(w.bucket_count());
                let mut model: Vec<(u64, Counts)> = Vec::new();
                let mut now = 0u64;
                let in_window = |model: &[(u64, Counts)], now: u64| {
                    let e = now / width;
                    let mut sum = Counts::default();
                    for (epoch, c) in model {
                        if *epoch <= e && e - epoch < n {
                            sum += *c;
                        }
                    }
                    sum
                };
                for (dt, c) in steps {
                    now += dt;
                    w.record(now, c);
                    model.push((now / width, c));
                    prop_assert_eq!(w.totals(now), in_window(&model, now));
                }
                let later = now + query_after;
                prop_assert_eq!(w.totals(later), in_window(&model, later));
            }

            #[test]
            fn time_window_survives_an_encode_decode_round_trip(
                steps in proptest::collection::vec((0u64..5_000, counts()), 0..50),
            ) {
                let mut w = TimeWindow::new(30_000, 30);
                let mut now = 1_000_000u64;
                for (dt, c) in steps {
                    now += dt;
                    w.record(now, c);
                }
                let mut enc = Encoder::new(3, 1);
                w.encode_into(&mut enc);
                let bytes = enc.finish();
                let mut dec = Decoder::new(&bytes, 3, 1).unwrap();
                prop_assert_eq!(TimeWindow::decode_from(&mut dec, 30_000, 30).unwrap(), w);
                prop_assert_eq!(dec.finish(), Ok(()));
            }

            #[test]
            fn count_window_totals_match_the_last_size_calls(
                size in 1u32..300,
                calls in proptest::collection::vec((any::<bool>(), any::<bool>()), 0..700),
            ) {
                let mut w = CountWindow::new(size);
                let mut model: VecDeque<(bool, bool)> = VecDeque::new();
                for (failure, slow) in calls {
                    w.record(failure, slow);
                    model.push_back((failure, slow));
                    if model.len() > size as usize {
                        model.pop_front();
                    }
                    let expected = Counts {
                        total: model.len() as u32,
                        failures: model.iter().filter(|c| c.0).count() as u32,
                        slow: model.iter().filter(|c| c.1).count() as u32,
                    };
                    prop_assert_eq!(w.totals(), expected);
                }
                let mut enc = Encoder::new(4, 1);
                w.encode_into(&mut enc);
                let bytes = enc.finish();
                let mut dec = Decoder::new(&bytes, 4, 1).unwrap();
                prop_assert_eq!(CountWindow::decode_from(&mut dec, size).unwrap(), w);
            }

            #[test]
            fn decoding_garbage_windows_never_panics(
                bytes in proptest::collection::vec(any::<u8>(), 0..400),
                size in any::<u32>(),
                window_ms in any::<u64>(),
                buckets in any::<u32>(),
            ) {
                let mut framed = vec![9u8, 1];
                framed.extend_from_slice(&bytes);
                if let Ok(mut dec) = Decoder::new(&framed, 9, 1) {
                    let _ = TimeWindow::decode_from(&mut dec, window_ms, buckets);
                }
                if let Ok(mut dec) = Decoder::new(&framed, 9, 1) {
                    if let Ok(w) = CountWindow::decode_from(&mut dec, size) {
                        let t = w.totals();
                        prop_assert!(t.failures <= t.total && t.slow <= t.total);
                    }
                }
            }
        }
    }
}
