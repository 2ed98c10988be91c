//! The open-breaker governor: at most a share of one filter's breakers may be open at once.
//!
//! # Why
//!
//! Breakers decide one key at a time, and each decision is right on its own. When *every* key
//! looks sick at once, the cause is rarely every dependency: more often it is something they
//! share (this proxy's network, a DNS blip, an overloaded node, a bad deploy of the caller). A
//! breaker per key then opens everywhere and turns a partial problem into a full outage, the
//! failure that Envoy's `max_ejection_percent` guards outlier detection against. The governor
//! caps the breakers that are open (or half-open) at once to `max_open_percent` of the keys the
//! filter has registered, and lets one open whatever the share, so a lone route still trips. A
//! trip it refuses is *held*: the breaker stays closed, keeps counting, and trips as soon as
//! another breaker closes.
//!
//! # How
//!
//! The set of open breakers is one shared-data value, a list of `(key hash, generation)` changed
//! under compare-and-swap only at transitions, so it is exact across workers: a worker reserves a
//! place before it trips a breaker and gives it back when the breaker closes (or when the trip
//! did not happen after all). The generation is the breaker's, read when the place was reserved;
//! it lets any worker drop a place whose breaker has since closed, if the worker that should have
//! given it back could not ([`OpenSet::stale`]).

use crate::codec::{DecodeError, Decoder, Encoder};

const KIND: u8 = 0x60;
const VERSION: u8 = 1;

/// Most places in one set: the registry behind it caps keys at 10 000.
const MAX_PLACES: usize = 10_000;

/// How many breakers may be open at once among `registered` keys: `max_open_percent` of them,
/// rounded down, but never fewer than one.
pub fn limit(registered: usize, max_open_percent: f64) -> usize {
    let share = (registered as f64) * max_open_percent / 100.0;
    if share.is_finite() && share >= 1.0 {
        (share.floor() as usize).min(MAX_PLACES)
    } else {
        1
    }
}

/// A stable 64-bit hash of a breaker key (FNV-1a): the set stores hashes, not keys.
pub fn key_hash(key: &str) -> u64 {
    key.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// One reserved place: whose it is, and the breaker's generation when it was reserved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Place {
    pub key: u64,
    pub generation: u32,
}

/// What [`OpenSet::reserve`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reserve {
    /// The key already had a place (another worker reserved it, or it is open).
    Held,
    /// A new place was taken for the key.
    Taken,
    /// The set is at its limit: the trip must wait.
    Full,
}

/// The breakers open (or about to open) right now.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OpenSet {
    pub places: Vec<Place>,
}

impl OpenSet {
    /// Takes a place for `key` at `generation` unless the set already holds `limit` places.
    pub fn reserve(&mut self, key: u64, generation: u32, limit: usize) -> Reserve {
        if self.places.iter().any(|p| p.key == key) {
            return Reserve::Held;
        }
        if self.places.len() >= limit.max(1) || self.places.len() >= MAX_PLACES {
            return Reserve::Full;
        }
        self.places.push(Place { key, generation });
        Reserve::Taken
    }

    /// Gives back the place of `key`; false when it had none.
    pub fn release(&mut self, key: u64) -> bool {
        let before = self.places.len();
        self.places.retain(|p| p.key != key);
        self.places.len() != before
    }

    /// Whether the place of `key` outlived its breaker's open spell: the breaker is closed now,
    /// at another generation than the one its place was reserved at (a trip and a close each
    /// move the generation on, so a reservation whose trip is still on its way is not stale).
    pub fn stale(&self, key: u64, closed: bool, generation: u32) -> bool {
        closed
            && self
                .places
                .iter()
                .any(|p| p.key == key && p.generation != generation)
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut e = Encoder::new(KIND, VERSION);
        let n = u16::try_from(self.places.len().min(usize::from(u16::MAX))).unwrap_or(u16::MAX);
        e.u16(n);
        for p in self.places.iter().take(usize::from(n)) {
            e.u64(p.key).u32(p.generation);
        }
        e.finish()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut d = Decoder::new(bytes, KIND, VERSION)?;
        let n = usize::from(d.u16()?);
        if n > MAX_PLACES {
            return Err(DecodeError::Invalid);
        }
        let mut places = Vec::with_capacity(n);
        for _ in 0..n {
            places.push(Place {
                key: d.u64()?,
                generation: d.u32()?,
            });
        }
        d.finish()?;
        Ok(Self { places })
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    #[test]
    fn the_limit_is_the_share_of_registered_keys_rounded_down_but_at_least_one() {
        assert_eq!(limit(10, 50.0), 5);
        assert_eq!(limit(5, 50.0), 2);
        assert_eq!(limit(1, 50.0), 1);
        assert_eq!(limit(0, 50.0), 1);
        assert_eq!(limit(3, 100.0), 3);
        assert_eq!(limit(4, 10.0), 1);
        assert_eq!(limit(7, f64::NAN), 1);
    }

    #[test]
    fn a_full_set_refuses_a_new_key_but_not_one_it_already_holds() {
        let mut s = OpenSet::default();
        assert_eq!(s.reserve(1, 7, 2), Reserve::Taken);
        assert_eq!(s.reserve(2, 3, 2), Reserve::Taken);
        assert_eq!(s.reserve(3, 0, 2), Reserve::Full);
        assert_eq!(s.reserve(1, 9, 2), Reserve::Held);
        assert!(s.release(1));
        assert!(!s.release(1));
        assert_eq!(s.reserve(3, 0, 2), Reserve::Taken);
    }

    #[test]
    fn a_place_is_stale_only_once_its_breaker_closed_at_another_generation() {
        let mut s = OpenSet::default();
        s.reserve(5, 10, 1);
        // Reserved at 10, the trip not yet made: closed at 10 is not stale.
        assert!(!s.stale(5, true, 10));
        // Open at 11: not stale.
        assert!(!s.stale(5, false, 11));
        // Closed again at 12 (or reset to a fresh breaker at 0): stale.
        assert!(s.stale(5, true, 12));
        assert!(s.stale(5, true, 0));
        assert!(!s.stale(6, true, 12));
    }

    #[test]
    fn the_set_round_trips_and_garbage_is_refused() {
        let mut s = OpenSet::default();
        s.reserve(key_hash("orders"), 4, 3);
        s.reserve(key_hash("search"), 1, 3);
        assert_eq!(OpenSet::decode(&s.encode()), Ok(s.clone()));
        assert_ne!(key_hash("orders"), key_hash("search"));
        assert!(OpenSet::decode(&[]).is_err());
        assert!(OpenSet::decode(&[KIND, VERSION, 2, 0, 1]).is_err());
        let mut long = s.encode();
        long.push(0);
        assert!(OpenSet::decode(&long).is_err());
    }
}
