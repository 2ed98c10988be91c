//! The shared-data decoders: state one worker VM writes and every other one reads, possibly a
//! build apart during a rolling update, possibly torn or foreign bytes.
//!
//! The input is a selector byte (which state: [`STATES`]), a policy byte (which configuration it
//! is read under: window shapes, half-lives) and the state's bytes. Properties, for any input:
//! - no panic, whatever the bytes (decoding returns an error the filter counts);
//! - whatever decodes, re-encodes to bytes that decode to the same value and re-encode to the
//!   same bytes (`decode(encode(x)) == x`: a worker that reads and writes back loses nothing);
//! - the same holds for a value built by the state's own operations, driven by the same bytes
//!   read as a sequence of operations (outcomes, probes, leases, reservations, ramps, ...),
//!   which reaches states no hand-written seed does. A latency histogram keeps its weights as
//!   `f32` in shared data, so a built one is held to "re-encoding is stable" instead.

use std::net::{IpAddr, SocketAddr};

use arbitrary::{Result as ArbResult, Unstructured};
use resilience_core::breaker::{self, ProbeOutcome, SharedBreaker, WindowSpec};
use resilience_core::budget::{self, BudgetPolicy, Publication, SharedBudget};
use resilience_core::directory::{Directory, FetchLease};
use resilience_core::estimator::{LatencyHistogram, LatencySamples};
use resilience_core::governor::OpenSet;
use resilience_core::ramp::{self, Batch, ClosedLoop, EndpointRamp, Priming, RecentTotals};
use resilience_core::rate_cap::{self, RateCap};
use resilience_core::{padding, shedding};

/// The states, by selector (the input's first byte, modulo their number).
pub const STATES: &[&str] = &[
    "breaker",
    "budget",
    "ramp",
    "latency_histogram",
    "padding_in_flight",
    "shedding_in_flight",
    "governor_open_set",
    "directory",
    "fetch_lease",
    "rate_cap_tat",
];

/// Checks the round trip of one decoded or built value.
fn round_trip<T: PartialEq + std::fmt::Debug, E: std::fmt::Debug>(
    what: &str,
    x: &T,
    encode: impl Fn(&T) -> Vec<u8>,
    decode: impl Fn(&[u8]) -> Result<T, E>,
) {
    let bytes = encode(x);
    let back = decode(&bytes).unwrap_or_else(|e| panic!("{what}: its own encoding: {e:?}"));
    assert_eq!(&back, x, "{what}: decode(encode(x)) != x");
    assert_eq!(
        encode(&back),
        bytes,
        "{what}: re-encoding changed the bytes"
    );
}

/// Re-encoding is stable (for a value whose encoding rounds it).
fn stable<T: std::fmt::Debug, E: std::fmt::Debug>(
    what: &str,
    x: &T,
    encode: impl Fn(&T) -> Vec<u8>,
    decode: impl Fn(&[u8]) -> Result<T, E>,
) {
    let bytes = encode(x);
    let back = decode(&bytes).unwrap_or_else(|e| panic!("{what}: its own encoding: {e:?}"));
    let again = encode(&back);
    assert_eq!(again, bytes, "{what}: re-encoding changed the bytes");
}

/// Policies by the policy byte: the shipped defaults first (knob 0), then edge shapes.
pub(crate) fn breaker_policy(knob: u8) -> breaker::Policy {
    let window = match knob % 8 {
        0 => WindowSpec::Time {
            window_ms: 10_000,
            buckets: 10,
        },
        1 => WindowSpec::Time {
            window_ms: 1,
            buckets: 1,
        },
        2 => WindowSpec::Time {
            window_ms: 60_000,
            buckets: 60,
        },
        3 => WindowSpec::Time {
            window_ms: 7,
            buckets: 60,
        },
        4 => WindowSpec::Count { size: 100 },
        5 => WindowSpec::Count { size: 1 },
        6 => WindowSpec::Count { size: 65 },
        _ => WindowSpec::Count { size: 10_000 },
    };
    breaker::Policy {
        window,
        minimum_requests: 4,
        consecutive_failures: u32::from(knob / 8 % 4),
        slow_call_rate_threshold: Some(80.0),
        open_jitter: 0.5,
        honor_retry_after: knob & 0x80 != 0,
        ..breaker::Policy::default()
    }
}

pub(crate) fn budget_policy(knob: u8) -> BudgetPolicy {
    let (window_ms, buckets) = match knob % 5 {
        0 => (10_000, 10),
        1 => (1, 1),
        2 => (60_000, 60),
        3 => (5, 60),
        _ => (1_000, 7),
    };
    BudgetPolicy {
        window_ms,
        buckets,
        ..BudgetPolicy::default()
    }
}

pub(crate) fn ramp_policy(knob: u8) -> ramp::Policy {
    let mut p = ramp::Policy::ramp_only(if knob & 1 == 0 { 30_000 } else { 1 });
    if knob & 2 != 0 {
        p.priming = Some(Priming {
            requests: 3,
            interval_ms: 100,
            deadline_ms: 2_000,
        });
    }
    if knob & 4 != 0 {
        p.health_check_interval_ms = Some(500);
    }
    if knob & 8 != 0 {
        p.closed_loop = Some(ClosedLoop {
            latency_factor: Some(2.0),
            error_rate_factor: Some(2.0),
            min_requests: 2,
            latency_floor_ms: 1.0,
            error_floor_percent: 1.0,
        });
    }
    if knob & 16 != 0 {
        p.silence_ms = Some(1_000);
        p.gate_timeout_ms = Some(5_000);
    }
    if knob & 32 != 0 {
        p.recent_window_ms = 1;
    }
    p.unhealthy_after = u32::from(knob >> 6);
    p
}

pub(crate) fn half_life(knob: u8) -> u32 {
    [500, 1, 1_000_000, 7][usize::from(knob % 4)]
}

/// Moves the clock forward by a small or a large step.
fn tick(u: &mut Unstructured<'_>, now: &mut u64) -> ArbResult<()> {
    let step: u64 = if u.arbitrary::<bool>()? {
        u.int_in_range(0..=2_000)?
    } else {
        u.arbitrary::<u32>()?.into()
    };
    *now = now.saturating_add(step);
    Ok(())
}

const MAX_OPS: usize = 64;

pub(crate) fn build_breaker(
    u: &mut Unstructured<'_>,
    p: &breaker::Policy,
) -> ArbResult<SharedBreaker> {
    let mut x = SharedBreaker::new(p);
    let mut now = u64::from(u.arbitrary::<u16>()?);
    for _ in 0..MAX_OPS {
        if u.is_empty() {
            break;
        }
        tick(u, &mut now)?;
        match u.int_in_range(0..=3u8)? {
            0 => {
                let mut delta = breaker::Delta::new(x.view().generation, p.window);
                for _ in 0..u.int_in_range(0..=40u8)? {
                    delta.record(u.arbitrary()?, u.arbitrary()?, now);
                }
                if u.arbitrary::<bool>()? {
                    delta.hint_retry_after(u.arbitrary::<u16>()?.into());
                }
                let _ = x.publish_governed(&delta, now, p, u.arbitrary()?, u.arbitrary()?);
            }
            1 => {
                let _ = x.try_acquire_probe(now, p);
            }
            2 => {
                let outcome = *u.choose(&[
                    ProbeOutcome::Success,
                    ProbeOutcome::Failure,
                    ProbeOutcome::Abandoned,
                ])?;
                let generation = if u.arbitrary::<bool>()? {
                    x.view().generation
                } else {
                    u.arbitrary()?
                };
                let hint = u.arbitrary::<u16>()?.into();
                let _ = x.probe_result(generation, outcome, now, p, u.arbitrary()?, hint);
            }
            _ => now = now.saturating_add(u64::from(u.arbitrary::<u32>()?)),
        }
    }
    Ok(x)
}

pub(crate) fn build_budget(u: &mut Unstructured<'_>, p: &BudgetPolicy) -> ArbResult<SharedBudget> {
    let mut x = SharedBudget::new(p);
    let mut now = 0u64;
    for _ in 0..MAX_OPS {
        if u.is_empty() {
            break;
        }
        tick(u, &mut now)?;
        let mut delta = budget::Delta::default();
        delta.requests = u.int_in_range(0..=1_000)?;
        delta.extra = u.int_in_range(0..=50)?;
        for _ in 0..u.int_in_range(0..=3u8)? {
            let back: u64 = u.int_in_range(0..=70)?;
            delta.refund(
                x.epoch_at(now).saturating_sub(back),
                u.int_in_range(0..=20)?,
            );
        }
        let publication = Publication {
            delta,
            want: u.int_in_range(0..=5_000)?,
            min_useful: u.int_in_range(0..=10)?,
        };
        let _ = x.apply(&publication, now, p);
    }
    Ok(x)
}

pub(crate) fn build_ramp(u: &mut Unstructured<'_>, p: &ramp::Policy) -> ArbResult<EndpointRamp> {
    let mut x = EndpointRamp::new(u.arbitrary()?, p);
    let mut now = 1u64;
    for _ in 0..MAX_OPS {
        if u.is_empty() {
            break;
        }
        tick(u, &mut now)?;
        match u.int_in_range(0..=3u8)? {
            0 => {
                let mut batch = Batch::default();
                for _ in 0..u.int_in_range(0..=20u8)? {
                    match u.int_in_range(0..=2u8)? {
                        0 => batch.record(u.arbitrary()?, u.int_in_range(0..=5_000)?, now),
                        1 => batch.health(u.arbitrary()?, now),
                        _ => batch.priming(u.int_in_range(0..=3)?, u.arbitrary()?, now),
                    }
                }
                batch.in_flight_delta = u.int_in_range(-3..=3)?;
                batch.priming_probe_ok = u.arbitrary()?;
                let _ = x.publish(&batch, now, p);
            }
            1 => {
                let peers = if u.arbitrary::<bool>()? {
                    Some(RecentTotals {
                        requests: u.int_in_range(0..=100)?,
                        failures: u.int_in_range(0..=10)?,
                        latency_sum_ms: u.int_in_range(0..=100_000)?,
                    })
                } else {
                    None
                };
                let _ = x.maintain(now, p, peers.as_ref());
            }
            2 => {
                let _ = x.claim_dispatches(now, p);
            }
            _ => {
                let _ = x.sync_shown(u.int_in_range(0..=10_000)?);
            }
        }
    }
    Ok(x)
}

pub(crate) fn build_histogram(u: &mut Unstructured<'_>, half: u32) -> ArbResult<LatencyHistogram> {
    let mut x = LatencyHistogram::new(half);
    for _ in 0..MAX_OPS {
        if u.is_empty() {
            break;
        }
        if u.arbitrary::<bool>()? {
            x.record(u.arbitrary()?);
        } else {
            let mut batch = LatencySamples::new();
            for _ in 0..u.int_in_range(0..=50u8)? {
                batch.record(u.int_in_range(0..=100_000)?);
            }
            x.absorb(&batch);
        }
    }
    Ok(x)
}

pub(crate) fn build_padding(u: &mut Unstructured<'_>) -> ArbResult<padding::InFlight> {
    let mut x = padding::InFlight::new();
    let mut now = 0u64;
    for _ in 0..MAX_OPS * 4 {
        if u.is_empty() {
            break;
        }
        tick(u, &mut now)?;
        let worker = u64::from(u.int_in_range(0..=300u16)?);
        let stale = u.int_in_range(1..=10_000)?;
        if u.arbitrary::<bool>()? {
            let _ = x.try_acquire(worker, u.int_in_range(0..=20)?, u.arbitrary()?, now, stale);
        } else {
            let _ = x.report(worker, u.int_in_range(0..=20)?, now, stale);
        }
    }
    Ok(x)
}

pub(crate) fn build_shedding(u: &mut Unstructured<'_>) -> ArbResult<shedding::InFlight> {
    let mut x = shedding::InFlight::new();
    let mut now = 0u64;
    for _ in 0..MAX_OPS * 2 {
        if u.is_empty() {
            break;
        }
        tick(u, &mut now)?;
        let owner = u64::from(u.int_in_range(0..=80u8)?);
        let lease = u.int_in_range(1..=10_000)?;
        let own = u.int_in_range(0..=20)?;
        match u.int_in_range(0..=3u8)? {
            0 => {
                let _ = x.try_admit(owner, own, u.int_in_range(0..=100)?, now, lease);
            }
            1 => {
                let _ = x.admit_anyway(owner, own, u.int_in_range(0..=100)?, now, lease);
            }
            2 => {
                let _ = x.set_own(owner, own, now);
            }
            _ => {
                let _ = x.prune(owner, now, lease);
            }
        }
    }
    Ok(x)
}

pub(crate) fn build_open_set(u: &mut Unstructured<'_>) -> ArbResult<OpenSet> {
    let mut x = OpenSet::default();
    for _ in 0..MAX_OPS * 2 {
        if u.is_empty() {
            break;
        }
        let key = u64::from(u.int_in_range(0..=100u8)?);
        if u.ratio(3, 4)? {
            let _ = x.reserve(key, u.arbitrary()?, u.int_in_range(0..=200)?);
        } else {
            let _ = x.release(key);
        }
    }
    Ok(x)
}

pub(crate) fn build_directory(u: &mut Unstructured<'_>) -> ArbResult<Directory> {
    let mut x = Directory::default();
    for _ in 0..8 {
        if u.is_empty() {
            break;
        }
        let mut list = Vec::new();
        for _ in 0..u.int_in_range(0..=20u8)? {
            let ip: IpAddr = u.arbitrary()?;
            let addr = SocketAddr::new(ip, u.arbitrary()?).to_string();
            list.push(resilience_core::directory::Listed {
                address: addr,
                weight: u.int_in_range(1..=1_000)?,
                cell: None,
            });
        }
        x = x.next(&list, u.int_in_range(1..=64)?).0;
    }
    Ok(x)
}

/// See the module docs.
pub fn shared_decode(data: &[u8]) {
    let (selector, knob, state) = match data {
        [s, k, rest @ ..] => (*s, *k, rest),
        [s] => (*s, 0, &[][..]),
        [] => return,
    };
    let mut u = Unstructured::new(state);
    match usize::from(selector) % STATES.len() {
        0 => {
            let p = breaker_policy(knob);
            let enc = SharedBreaker::encode;
            let dec = |b: &[u8]| SharedBreaker::decode(b, &p);
            if let Ok(x) = dec(state) {
                round_trip("breaker", &x, enc, dec);
            }
            if let Ok(x) = build_breaker(&mut u, &p) {
                round_trip("built breaker", &x, enc, dec);
            }
        }
        1 => {
            let p = budget_policy(knob);
            let dec = |b: &[u8]| SharedBudget::decode(b, &p);
            if let Ok(x) = dec(state) {
                round_trip("budget", &x, SharedBudget::encode, dec);
            }
            if let Ok(x) = build_budget(&mut u, &p) {
                round_trip("built budget", &x, SharedBudget::encode, dec);
            }
        }
        2 => {
            let p = ramp_policy(knob);
            let dec = |b: &[u8]| EndpointRamp::decode(b, &p);
            if let Ok(x) = dec(state) {
                round_trip("ramp", &x, EndpointRamp::encode, dec);
            }
            if let Ok(x) = build_ramp(&mut u, &p) {
                round_trip("built ramp", &x, EndpointRamp::encode, dec);
            }
        }
        3 => {
            let half = half_life(knob);
            let dec = |b: &[u8]| LatencyHistogram::decode(b, half);
            if let Ok(x) = dec(state) {
                round_trip("histogram", &x, LatencyHistogram::encode, dec);
            }
            if let Ok(x) = build_histogram(&mut u, half) {
                stable("built histogram", &x, LatencyHistogram::encode, dec);
            }
        }
        4 => {
            let dec = padding::InFlight::decode;
            if let Ok(x) = dec(state) {
                round_trip("padding in-flight", &x, padding::InFlight::encode, dec);
            }
            if let Ok(x) = build_padding(&mut u) {
                round_trip(
                    "built padding in-flight",
                    &x,
                    padding::InFlight::encode,
                    dec,
                );
            }
        }
        5 => {
            let dec = shedding::InFlight::decode;
            if let Ok(x) = dec(state) {
                round_trip("shedding in-flight", &x, shedding::InFlight::encode, dec);
            }
            if let Ok(x) = build_shedding(&mut u) {
                round_trip(
                    "built shedding in-flight",
                    &x,
                    shedding::InFlight::encode,
                    dec,
                );
            }
        }
        6 => {
            if let Ok(x) = OpenSet::decode(state) {
                round_trip("open set", &x, OpenSet::encode, OpenSet::decode);
            }
            if let Ok(x) = build_open_set(&mut u) {
                round_trip("built open set", &x, OpenSet::encode, OpenSet::decode);
            }
        }
        7 => {
            if let Ok(x) = Directory::decode(state) {
                round_trip("directory", &x, Directory::encode, Directory::decode);
            }
            if let Ok(x) = build_directory(&mut u) {
                round_trip("built directory", &x, Directory::encode, Directory::decode);
            }
        }
        8 => {
            if let Ok(x) = FetchLease::decode(state) {
                round_trip("fetch lease", &x, FetchLease::encode, FetchLease::decode);
            }
            let built: ArbResult<FetchLease> = (|| {
                let current = if u.arbitrary::<bool>()? {
                    Some(FetchLease {
                        owner: u.arbitrary()?,
                        until_ms: u.arbitrary()?,
                        next_fetch_ms: u.arbitrary()?,
                    })
                } else {
                    None
                };
                let claimed =
                    FetchLease::claim(current, u.arbitrary()?, u.arbitrary()?, u.arbitrary()?);
                Ok(claimed.or(current).unwrap_or_default())
            })();
            if let Ok(x) = built {
                round_trip(
                    "built fetch lease",
                    &x,
                    FetchLease::encode,
                    FetchLease::decode,
                );
            }
        }
        _ => {
            let enc = |t: &u64| rate_cap::encode_tat(*t);
            if let Ok(tat) = rate_cap::decode_tat(state) {
                round_trip("rate cap", &tat, enc, rate_cap::decode_tat);
            }
            let built: ArbResult<()> = (|| {
                let rps = f64::from(u.int_in_range(1..=100_000u32)?) / 10.0;
                let cap = RateCap::per_second(rps).expect("a positive rate");
                let mut tat = 0u64;
                let mut now = 0u64;
                for _ in 0..MAX_OPS {
                    if u.is_empty() {
                        break;
                    }
                    now = now.saturating_add(u64::from(u.arbitrary::<u16>()?));
                    if let Ok(next) = cap.try_take(tat, now) {
                        assert!(next >= now);
                        tat = next;
                    }
                    round_trip("built rate cap", &tat, enc, rate_cap::decode_tat);
                }
                Ok(())
            })();
            let _ = built;
        }
    }
}
