//! The generated part of the seed corpus: encoded shared-data states for `shared_decode`.
//!
//! Why generated: a hand-written state is stale the day its layout changes. These are made by
//! the states' own code (a fresh value and one moved by a fixed sequence of operations, under
//! the default policies), and `tests/corpus.rs` fails when the committed files differ from what
//! the code writes now; `FUZZ_WRITE_SEEDS=1 cargo test -p fuzz-targets --test corpus` rewrites
//! them. Configurations, requests, documents and header values are written by hand (or copied
//! from the shipped configurations) and live in `fuzz/corpus/` only.

use arbitrary::Unstructured;
use resilience_core::breaker::SharedBreaker;
use resilience_core::budget::SharedBudget;
use resilience_core::directory::{Directory, FetchLease};
use resilience_core::estimator::LatencyHistogram;
use resilience_core::governor::OpenSet;
use resilience_core::ramp::EndpointRamp;
use resilience_core::{padding, rate_cap, shedding};

use crate::shared::{self, STATES};

/// Fixed pseudo-random bytes (xorshift), the "operations" that move a seed state.
fn script(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()[0]
        })
        .collect()
}

/// One state's encoding, fresh (`moved == false`) or after the fixed operations.
fn encoded(selector: usize, moved: bool) -> Vec<u8> {
    let bytes = if moved {
        script(selector as u64 + 1, 2_048)
    } else {
        Vec::new()
    };
    let u = &mut Unstructured::new(&bytes);
    match selector {
        0 => {
            let p = shared::breaker_policy(0);
            if moved {
                shared::build_breaker(u, &p).unwrap().encode()
            } else {
                SharedBreaker::new(&p).encode()
            }
        }
        1 => {
            let p = shared::budget_policy(0);
            if moved {
                shared::build_budget(u, &p).unwrap().encode()
            } else {
                SharedBudget::new(&p).encode()
            }
        }
        2 => {
            let p = shared::ramp_policy(0);
            if moved {
                shared::build_ramp(u, &p).unwrap().encode()
            } else {
                EndpointRamp::new(7, &p).encode()
            }
        }
        3 => {
            let half = shared::half_life(0);
            if moved {
                // Through a decode, so the weights are the f32 values shared data holds.
                let built = shared::build_histogram(u, half).unwrap().encode();
                LatencyHistogram::decode(&built, half).unwrap().encode()
            } else {
                LatencyHistogram::new(half).encode()
            }
        }
        4 => if moved {
            shared::build_padding(u).unwrap()
        } else {
            padding::InFlight::new()
        }
        .encode(),
        5 => if moved {
            shared::build_shedding(u).unwrap()
        } else {
            shedding::InFlight::new()
        }
        .encode(),
        6 => if moved {
            shared::build_open_set(u).unwrap()
        } else {
            OpenSet::default()
        }
        .encode(),
        7 => if moved {
            shared::build_directory(u).unwrap()
        } else {
            Directory::default()
        }
        .encode(),
        8 => FetchLease {
            owner: 0x1234,
            until_ms: if moved { 30_000 } else { 0 },
            next_fetch_ms: if moved { 10_000 } else { 0 },
        }
        .encode(),
        _ => rate_cap::encode_tat(if moved { 1_700_000_000_000_000 } else { 0 }),
    }
}

/// `(file name, bytes)` of every generated `shared_decode` seed: the selector byte, the policy
/// byte (0: the defaults) and the state.
pub fn shared_decode() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for (selector, name) in STATES.iter().enumerate() {
        for moved in [false, true] {
            let mut bytes = vec![selector as u8, 0];
            bytes.extend(encoded(selector, moved));
            let which = if moved { "moved" } else { "fresh" };
            out.push((format!("{name}-{which}.bin"), bytes));
        }
    }
    out
}
