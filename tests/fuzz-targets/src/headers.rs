//! The header-value parsers in the core and the validator, and the gRPC message reader: the
//! values a client or an upstream sends.
//!
//! Every line of the input (split at `\n`) is fed to each parser as one value; the whole input
//! is also read as a proxy-wasm serialized header map and as a gRPC request body. Each parser is
//! held to an oracle written independently here:
//! - `grpc-timeout` ([`parse_grpc_timeout`]): 1–8 digits and a unit, in ms, sub-ms rounded up;
//! - milliseconds, `retry-after` seconds, `grpc-retry-pushback-ms`, attempt counts
//!   ([`parse_millis`], [`parse_attempts`]): 1–20 digits, saturating, and every number's decimal
//!   form reads back as itself;
//! - `grpc-status` ([`parse_grpc_status`]): 1–10 digits that fit `u32`;
//! - configuration durations ([`parse_duration`]): an accepted one prints
//!   ([`DurationMs`]'s `Display`) as a string that reads back as the same duration;
//! - query components (`decode`, `parse_integer`): decoding without `%` or `+` changes nothing,
//!   integers are what a strict `i64` reading says;
//! - media types (`essence`): lowercase `type/subtype`, and the essence of an essence is itself;
//! - the serialized header map ([`parse_header_map`]): what parses re-serializes and parses to
//!   the same pairs;
//! - gRPC framing ([`FrameReader`]): the body read whole and byte by byte gives the same answer.

use request_validator::rules::media::essence;
use request_validator::rules::query::{decode, pairs, parse_integer};
use resilience_core::budget::parse_attempts;
use resilience_core::config::{parse_duration, DurationMs};
use resilience_core::deadline::{parse_grpc_timeout, parse_millis};
use resilience_core::grpc::{wire, FrameReader};
use resilience_core::outcome::parse_grpc_status;
use resilience_host::stream::parse_header_map;

fn digits(v: &[u8]) -> Option<u128> {
    if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(v.iter().fold(0u128, |acc, b| {
        (acc * 10 + u128::from(b - b'0')).min(u128::from(u64::MAX))
    }))
}

fn saturate(v: u128) -> u64 {
    u64::try_from(v).unwrap_or(u64::MAX)
}

fn grpc_timeout_oracle(v: &[u8]) -> Option<u64> {
    let (&unit, number) = v.split_last()?;
    if number.len() > 8 {
        return None;
    }
    let n = digits(number)?;
    let ms = match unit {
        b'H' => n * 3_600_000,
        b'M' => n * 60_000,
        b'S' => n * 1_000,
        b'm' => n,
        b'u' => n.div_ceil(1_000),
        b'n' => n.div_ceil(1_000_000),
        _ => return None,
    };
    Some(saturate(ms))
}

fn millis_oracle(v: &[u8]) -> Option<u64> {
    if v.len() > 20 {
        return None;
    }
    digits(v).map(saturate)
}

fn grpc_status_oracle(v: &[u8]) -> Option<u32> {
    if v.len() > 10 {
        return None;
    }
    digits(v).and_then(|n| u32::try_from(n).ok())
}

fn value(v: &[u8]) {
    assert_eq!(
        parse_grpc_timeout(v),
        grpc_timeout_oracle(v),
        "grpc-timeout {v:?}"
    );
    let ms = parse_millis(v);
    assert_eq!(ms, millis_oracle(v), "millis {v:?}");
    assert_eq!(parse_attempts(v), ms);
    if let Some(ms) = ms {
        assert_eq!(parse_millis(ms.to_string().as_bytes()), Some(ms));
    }
    assert_eq!(
        parse_grpc_status(v),
        grpc_status_oracle(v),
        "grpc-status {v:?}"
    );

    if let Ok(text) = std::str::from_utf8(v) {
        match parse_duration(text) {
            Ok(ms) => {
                let shown = DurationMs(ms).to_string();
                assert_eq!(
                    parse_duration(&shown),
                    Ok(ms),
                    "{text:?} shown as {shown:?}"
                );
            }
            Err(e) => assert!(!e.is_empty()),
        }
    }

    if !v.iter().any(|b| *b == b'%' || *b == b'+') {
        assert_eq!(decode(v).as_ref(), v);
    }
    assert!(decode(v).len() <= v.len());
    let _ = pairs(v).count();
    let strict = std::str::from_utf8(v)
        .ok()
        .filter(|t| {
            let d = t.strip_prefix('-').unwrap_or(t);
            !d.is_empty() && d.len() <= 19 && d.bytes().all(|b| b.is_ascii_digit())
        })
        .and_then(|t| t.parse::<i64>().ok());
    assert_eq!(parse_integer(v), strict, "integer {v:?}");

    if let Some(e) = essence(v) {
        assert_eq!(e, e.to_ascii_lowercase());
        assert!(e.contains('/'));
        assert_eq!(essence(e.as_bytes()).as_deref(), Some(e.as_str()));
    }
    let _ = wire(v);
}

fn serialize(pairs: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let mut out = (pairs.len() as u32).to_le_bytes().to_vec();
    for (k, v) in pairs {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (k, v) in pairs {
        out.extend_from_slice(k);
        out.push(0);
        out.extend_from_slice(v);
        out.push(0);
    }
    out
}

fn frames(body: &[u8], max: Option<u64>, compression: bool) {
    let mut whole = FrameReader::new(max, compression);
    let whole_result = whole.feed(body).and_then(|()| whole.finish());
    let mut split = FrameReader::new(max, compression);
    let split_result = body
        .iter()
        .try_for_each(|b| split.feed(std::slice::from_ref(b)))
        .and_then(|()| split.finish());
    assert_eq!(
        whole_result, split_result,
        "gRPC framing depends on chunking"
    );
}

/// See the module docs.
pub fn headers(data: &[u8]) {
    for line in data.split(|b| *b == b'\n') {
        value(line);
    }
    if let Some(map) = parse_header_map(data) {
        assert_eq!(parse_header_map(&serialize(&map)), Some(map));
    }
    let max = data.first().map(|b| u64::from(*b));
    frames(data, max, data.len().is_multiple_of(2));
    frames(data, None, true);
}
