//! Reading a request's remaining deadline from its headers.
//!
//! # Why
//!
//! A retry or a hedge that starts after the caller has given up is pure load: it cannot help the
//! caller and it competes with requests that still can. Callers announce how long they will wait,
//! with `grpc-timeout` (gRPC) or a plain millisecond header such as Envoy's
//! `x-envoy-expected-rq-timeout-ms`; filters read it here and compare it with their own timers.
//!
//! Header values come from the network, so both parsers are strict (no signs, spaces or
//! exponents) and return `None` instead of guessing; arithmetic saturates rather than wraps.

/// Longest value of a `grpc-timeout` header, in digits (gRPC over HTTP/2 spec: `TimeoutValue` is
/// at most 8 ASCII digits).
const GRPC_TIMEOUT_MAX_DIGITS: usize = 8;

/// Longest plain millisecond value accepted: `u64::MAX` has 20 digits.
const MILLIS_MAX_DIGITS: usize = 20;

/// Reads a `grpc-timeout` value: 1–8 ASCII digits and one unit, `H` hours, `M` minutes,
/// `S` seconds, `m` milliseconds, `u` microseconds, `n` nanoseconds. Returns milliseconds, with a
/// nonzero sub-millisecond remainder rounded *up* (a 1µs deadline is not "no time left").
pub fn parse_grpc_timeout(v: &[u8]) -> Option<u64> {
    let (&unit, digits) = v.split_last()?;
    if digits.is_empty() || digits.len() > GRPC_TIMEOUT_MAX_DIGITS {
        return None;
    }
    let n = parse_digits(digits)?;
    match unit {
        b'H' => Some(n.saturating_mul(3_600_000)),
        b'M' => Some(n.saturating_mul(60_000)),
        b'S' => Some(n.saturating_mul(1_000)),
        b'm' => Some(n),
        b'u' => Some(n.div_ceil(1_000)),
        b'n' => Some(n.div_ceil(1_000_000)),
        _ => None,
    }
}

/// Reads a plain non-negative integer of milliseconds (at most 20 digits, no sign, no spaces).
/// Values above `u64::MAX` saturate: such a deadline is "practically never".
pub fn parse_millis(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > MILLIS_MAX_DIGITS {
        return None;
    }
    parse_digits(v)
}

/// Decimal ASCII digits to a saturating `u64`; `None` on any other byte.
fn parse_digits(digits: &[u8]) -> Option<u64> {
    digits.iter().try_fold(0u64, |acc, &b| {
        b.is_ascii_digit()
            .then(|| acc.saturating_mul(10).saturating_add(u64::from(b - b'0')))
    })
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    #[test]
    fn grpc_timeouts_convert_every_unit_to_milliseconds() {
        assert_eq!(parse_grpc_timeout(b"2H"), Some(7_200_000));
        assert_eq!(parse_grpc_timeout(b"3M"), Some(180_000));
        assert_eq!(parse_grpc_timeout(b"10S"), Some(10_000));
        assert_eq!(parse_grpc_timeout(b"250m"), Some(250));
        assert_eq!(parse_grpc_timeout(b"2500u"), Some(3));
        assert_eq!(parse_grpc_timeout(b"5000000n"), Some(5));
    }

    #[test]
    fn a_nonzero_sub_millisecond_grpc_timeout_rounds_up_to_one() {
        assert_eq!(parse_grpc_timeout(b"1u"), Some(1));
        assert_eq!(parse_grpc_timeout(b"1n"), Some(1));
        assert_eq!(parse_grpc_timeout(b"0n"), Some(0));
        assert_eq!(parse_grpc_timeout(b"0S"), Some(0));
    }

    #[test]
    fn grpc_timeouts_allow_at_most_eight_digits() {
        assert_eq!(
            parse_grpc_timeout(b"99999999H"),
            Some(99_999_999 * 3_600_000)
        );
        assert_eq!(parse_grpc_timeout(b"100000000m"), None);
    }

    #[test]
    fn malformed_grpc_timeouts_are_none() {
        for bad in [
            &b""[..],
            b"S",
            b"10",
            b"10s",
            b"10 S",
            b" 10S",
            b"-1S",
            b"+1S",
            b"1.5S",
            b"1SS",
            b"\xff\xfeS",
        ] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn plain_milliseconds_parse_digits_only() {
        assert_eq!(parse_millis(b"0"), Some(0));
        assert_eq!(parse_millis(b"1500"), Some(1500));
        assert_eq!(parse_millis(b"007"), Some(7));
        for bad in [&b""[..], b"-1", b"+1", b"1.0", b" 1", b"1 ", b"1e3", b"abc"] {
            assert_eq!(parse_millis(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn plain_milliseconds_saturate_and_cap_the_length() {
        assert_eq!(parse_millis(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(parse_millis(b"99999999999999999999"), Some(u64::MAX));
        assert_eq!(parse_millis(b"100000000000000000000"), None);
    }

    #[cfg(not(target_arch = "wasm32"))]
    mod properties {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn arbitrary_bytes_never_panic(v in proptest::collection::vec(any::<u8>(), 0..32)) {
                let _ = parse_grpc_timeout(&v);
                let _ = parse_millis(&v);
            }

            #[test]
            fn millisecond_grpc_timeouts_equal_their_digits(n in 0u64..100_000_000) {
                prop_assert_eq!(parse_grpc_timeout(format!("{n}m").as_bytes()), Some(n));
                prop_assert_eq!(parse_millis(n.to_string().as_bytes()), Some(n));
            }

            #[test]
            fn microsecond_grpc_timeouts_never_round_down(n in 0u64..100_000_000) {
                let ms = parse_grpc_timeout(format!("{n}u").as_bytes()).unwrap();
                prop_assert!(ms * 1000 >= n);
                prop_assert!(ms * 1000 < n + 1000);
            }
        }
    }
}
