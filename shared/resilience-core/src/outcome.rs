//! One classification of a response, shared by every filter.
//!
//! # Why one classifier
//!
//! The breaker counts failures, the retry budget counts retries of failures, the adaptive limiter
//! counts slow calls. If each decided on its own what "failed" means, a 503 could open the breaker
//! and not be retried, or a gRPC `UNAVAILABLE` (which arrives with HTTP 200) could be invisible to
//! one filter and fatal to another. [`Classifier`] is configured once per route and answers for
//! all of them.
//!
//! # What a response can tell us
//!
//! - **Envoy-local failures** ([`LocalFailure`]): the upstream never answered. Connection refused,
//!   stream reset, upstream timeout, Envoy's own circuit breaker overflow, no healthy host. Envoy
//!   reports these as response flags and response code details, which the host reads and turns
//!   into a [`LocalFailure`] with [`local_failure_from_flags`] or
//!   [`local_failure_from_details`]. They are checked first: a 503 that Envoy made up because the
//!   connection failed is a connect failure, not an upstream 503.
//! - **gRPC status** (`grpc-status` trailer or trailers-only header): decides alone when present,
//!   because gRPC errors travel on HTTP 200 and gRPC `OK` can travel on nothing else.
//! - **HTTP status**, matched against a [`StatusSet`] (`"5xx"`, `429`, `"500-504"`).
//! - **Slowness** is orthogonal: a call can succeed and be slow. [`Classified::slow`] is set when
//!   the call took at least `slow_call_ms`.

use core::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

use crate::config::describe_unexpected;

// ---------------------------------------------------------------------------------------------
// HTTP status sets
// ---------------------------------------------------------------------------------------------

const STATUS_MIN: u16 = 100;
const STATUS_MAX: u16 = 599;
/// 500 statuses in 8 words of 64 bits.
const STATUS_WORDS: usize = 8;

/// A set of HTTP statuses (100..=599), read from a JSON array of statuses (`503`, `"503"`),
/// classes (`"5xx"`) and inclusive ranges (`"500-504"`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct StatusSet {
    bits: [u64; STATUS_WORDS],
}

impl StatusSet {
    pub const fn empty() -> Self {
        Self {
            bits: [0; STATUS_WORDS],
        }
    }

    /// Parses the same items a configuration accepts, for defaults written in code.
    pub fn from_strs(items: &[&str]) -> Result<Self, String> {
        let mut set = Self::empty();
        for item in items {
            let (lo, hi) = parse_status_item(item)?;
            set.insert_range(lo, hi);
        }
        Ok(set)
    }

    /// Adds `lo..=hi`; statuses outside 100..=599 are ignored.
    pub fn insert_range(&mut self, lo: u16, hi: u16) {
        for status in lo.max(STATUS_MIN)..=hi.min(STATUS_MAX) {
            let offset = usize::from(status - STATUS_MIN);
            if let Some(word) = self.bits.get_mut(offset / 64) {
                *word |= 1u64 << (offset % 64);
            }
        }
    }

    pub fn insert(&mut self, status: u16) {
        self.insert_range(status, status);
    }

    pub fn contains(&self, status: u16) -> bool {
        if !(STATUS_MIN..=STATUS_MAX).contains(&status) {
            return false;
        }
        let offset = usize::from(status - STATUS_MIN);
        self.bits
            .get(offset / 64)
            .is_some_and(|word| word & (1u64 << (offset % 64)) != 0)
    }

    pub fn is_empty(&self) -> bool {
        self.bits.iter().all(|w| *w == 0)
    }

    /// The set as sorted, disjoint inclusive ranges.
    pub fn ranges(&self) -> Vec<(u16, u16)> {
        let mut out: Vec<(u16, u16)> = Vec::new();
        for status in STATUS_MIN..=STATUS_MAX {
            if !self.contains(status) {
                continue;
            }
            match out.last_mut() {
                Some((_, hi)) if *hi + 1 == status => *hi = status,
                _ => out.push((status, status)),
            }
        }
        out
    }
}

impl fmt::Debug for StatusSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StatusSet[")?;
        for (i, (lo, hi)) in self.ranges().into_iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            if lo == hi {
                write!(f, "{lo}")?;
            } else {
                write!(f, "{lo}-{hi}")?;
            }
        }
        f.write_str("]")
    }
}

fn not_a_status_item(shown: &str) -> String {
    format!(r#"item {shown} is not a status, class ("5xx") or range ("500-599")"#)
}

/// A three-digit status in range, from its text.
fn parse_status_digits(s: &str) -> Option<u16> {
    if s.len() != 3 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse::<u16>()
        .ok()
        .filter(|v| (STATUS_MIN..=STATUS_MAX).contains(v))
}

/// One configuration item as an inclusive range.
fn parse_status_item(item: &str) -> Result<(u16, u16), String> {
    let shown = format!("{:?}", crate::problem::bounded(item, 32));
    let bytes = item.as_bytes();
    if let [class @ b'1'..=b'5', x1, x2] = bytes {
        if x1.eq_ignore_ascii_case(&b'x') && x2.eq_ignore_ascii_case(&b'x') {
            let lo = u16::from(class - b'0') * 100;
            return Ok((lo, lo + 99));
        }
    }
    if let Some((a, b)) = item.split_once('-') {
        let (Some(lo), Some(hi)) = (parse_status_digits(a), parse_status_digits(b)) else {
            return Err(not_a_status_item(&shown));
        };
        if lo > hi {
            return Err(format!(
                "item {shown} is a range whose start is above its end"
            ));
        }
        return Ok((lo, hi));
    }
    parse_status_digits(item)
        .map(|s| (s, s))
        .ok_or_else(|| not_a_status_item(&shown))
}

/// One array item of a [`StatusSet`]; its own type so error paths name the index.
struct StatusItem(u16, u16);

impl<'de> Deserialize<'de> for StatusItem {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ItemVisitor;

        impl ItemVisitor {
            fn reject<E: de::Error>(got: de::Unexpected<'_>) -> E {
                E::custom(not_a_status_item(&describe_unexpected(got)))
            }
        }

        impl<'de> Visitor<'de> for ItemVisitor {
            type Value = StatusItem;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(r#"a status (503), class ("5xx") or range ("500-599")"#)
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<StatusItem, E> {
                match u16::try_from(v) {
                    Ok(s) if (STATUS_MIN..=STATUS_MAX).contains(&s) => Ok(StatusItem(s, s)),
                    _ => Err(E::custom(format!(
                        "item {v} is not a status between {STATUS_MIN} and {STATUS_MAX}"
                    ))),
                }
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<StatusItem, E> {
                match u64::try_from(v) {
                    Ok(v) => self.visit_u64(v),
                    Err(_) => Err(E::custom(format!(
                        "item {v} is not a status between {STATUS_MIN} and {STATUS_MAX}"
                    ))),
                }
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<StatusItem, E> {
                parse_status_item(v)
                    .map(|(lo, hi)| StatusItem(lo, hi))
                    .map_err(E::custom)
            }

            fn visit_f64<E: de::Error>(self, v: f64) -> Result<StatusItem, E> {
                Err(Self::reject(de::Unexpected::Float(v)))
            }

            fn visit_bool<E: de::Error>(self, v: bool) -> Result<StatusItem, E> {
                Err(Self::reject(de::Unexpected::Bool(v)))
            }

            fn visit_unit<E: de::Error>(self) -> Result<StatusItem, E> {
                Err(Self::reject(de::Unexpected::Unit))
            }

            fn visit_seq<A: de::SeqAccess<'de>>(self, _: A) -> Result<StatusItem, A::Error> {
                Err(Self::reject(de::Unexpected::Seq))
            }

            fn visit_map<A: de::MapAccess<'de>>(self, _: A) -> Result<StatusItem, A::Error> {
                Err(Self::reject(de::Unexpected::Map))
            }
        }

        deserializer.deserialize_any(ItemVisitor)
    }
}

impl<'de> Deserialize<'de> for StatusSet {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let items = Vec::<StatusItem>::deserialize(deserializer)?;
        let mut set = StatusSet::empty();
        for StatusItem(lo, hi) in items {
            set.insert_range(lo, hi);
        }
        Ok(set)
    }
}

// ---------------------------------------------------------------------------------------------
// gRPC status codes
// ---------------------------------------------------------------------------------------------

/// The 17 canonical gRPC status codes, indexed by their number.
pub const GRPC_CODE_NAMES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// The canonical name of a gRPC code, `None` above 16.
pub fn grpc_code_name(code: u32) -> Option<&'static str> {
    usize::try_from(code)
        .ok()
        .and_then(|i| GRPC_CODE_NAMES.get(i))
        .copied()
}

fn grpc_code_from_name(name: &str) -> Option<u32> {
    GRPC_CODE_NAMES
        .iter()
        .position(|n| n.eq_ignore_ascii_case(name))
        .and_then(|i| u32::try_from(i).ok())
}

fn not_a_grpc_item(shown: &str) -> String {
    format!(r#"item {shown} is not a gRPC status name (like "UNAVAILABLE") or code 0-16"#)
}

/// A set of gRPC status codes (0..=16), read from a JSON array of names (`"UNAVAILABLE"`,
/// case-insensitive) or numbers (`14`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct GrpcCodeSet(u32);

impl GrpcCodeSet {
    pub const fn empty() -> Self {
        Self(0)
    }

    /// Codes that say the server, not the request, is in trouble: `UNKNOWN`, `DEADLINE_EXCEEDED`,
    /// `INTERNAL`, `UNAVAILABLE`, `DATA_LOSS`. (The gRPC-to-HTTP mapping puts these on 5xx;
    /// `UNIMPLEMENTED`, also 5xx there, is a property of the method and is left out.)
    pub const fn server_errors() -> Self {
        Self((1 << 2) | (1 << 4) | (1 << 13) | (1 << 14) | (1 << 15))
    }

    /// Codes by number; numbers above 16 are ignored.
    pub fn from_codes(codes: &[u32]) -> Self {
        let mut set = Self::empty();
        for &code in codes {
            set.insert(code);
        }
        set
    }

    /// Codes by name or decimal number, for defaults written in code.
    pub fn from_strs(items: &[&str]) -> Result<Self, String> {
        let mut set = Self::empty();
        for item in items {
            let code = grpc_code_from_name(item)
                .or_else(|| item.parse::<u32>().ok().filter(|c| *c <= 16))
                .ok_or_else(|| {
                    not_a_grpc_item(&format!("{:?}", crate::problem::bounded(item, 32)))
                })?;
            set.insert(code);
        }
        Ok(set)
    }

    pub fn insert(&mut self, code: u32) {
        if code <= 16 {
            self.0 |= 1 << code;
        }
    }

    pub fn contains(&self, code: u32) -> bool {
        code <= 16 && self.0 & (1 << code) != 0
    }

    pub fn is_empty(&self) -> bool {
        self.0 == 0
    }
}

impl fmt::Debug for GrpcCodeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set()
            .entries(
                (0..=16)
                    .filter(|c| self.contains(*c))
                    .filter_map(grpc_code_name),
            )
            .finish()
    }
}

struct GrpcItem(u32);

impl<'de> Deserialize<'de> for GrpcItem {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ItemVisitor;

        impl ItemVisitor {
            fn reject<E: de::Error>(got: de::Unexpected<'_>) -> E {
                E::custom(not_a_grpc_item(&describe_unexpected(got)))
            }
        }

        impl<'de> Visitor<'de> for ItemVisitor {
            type Value = GrpcItem;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(r#"a gRPC status name ("UNAVAILABLE") or code (0-16)"#)
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<GrpcItem, E> {
                match u32::try_from(v) {
                    Ok(c) if c <= 16 => Ok(GrpcItem(c)),
                    _ => Err(Self::reject(de::Unexpected::Unsigned(v))),
                }
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<GrpcItem, E> {
                match u64::try_from(v) {
                    Ok(v) => self.visit_u64(v),
                    Err(_) => Err(Self::reject(de::Unexpected::Signed(v))),
                }
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<GrpcItem, E> {
                grpc_code_from_name(v)
                    .map(GrpcItem)
                    .ok_or_else(|| Self::reject(de::Unexpected::Str(v)))
            }

            fn visit_f64<E: de::Error>(self, v: f64) -> Result<GrpcItem, E> {
                Err(Self::reject(de::Unexpected::Float(v)))
            }

            fn visit_bool<E: de::Error>(self, v: bool) -> Result<GrpcItem, E> {
                Err(Self::reject(de::Unexpected::Bool(v)))
            }

            fn visit_unit<E: de::Error>(self) -> Result<GrpcItem, E> {
                Err(Self::reject(de::Unexpected::Unit))
            }

            fn visit_seq<A: de::SeqAccess<'de>>(self, _: A) -> Result<GrpcItem, A::Error> {
                Err(Self::reject(de::Unexpected::Seq))
            }

            fn visit_map<A: de::MapAccess<'de>>(self, _: A) -> Result<GrpcItem, A::Error> {
                Err(Self::reject(de::Unexpected::Map))
            }
        }

        deserializer.deserialize_any(ItemVisitor)
    }
}

impl<'de> Deserialize<'de> for GrpcCodeSet {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let items = Vec::<GrpcItem>::deserialize(deserializer)?;
        let mut set = GrpcCodeSet::empty();
        for GrpcItem(code) in items {
            set.insert(code);
        }
        Ok(set)
    }
}

/// Reads a `grpc-status` value: 1 to 10 ASCII digits fitting in `u32`, nothing else.
pub fn parse_grpc_status(v: &[u8]) -> Option<u32> {
    if v.is_empty() || v.len() > 10 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    v.iter().try_fold(0u32, |acc, &b| {
        acc.checked_mul(10)?.checked_add(u32::from(b - b'0'))
    })
}

// ---------------------------------------------------------------------------------------------
// Envoy-local failures
// ---------------------------------------------------------------------------------------------

/// A failure Envoy observed itself, before or instead of an upstream response.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum LocalFailure {
    /// The connection to the upstream could not be established (refused, TLS error, connect
    /// timeout). Envoy flag `UF`.
    ConnectFailure,
    /// The stream was reset before a full response (`UR`, `LR`, `UC`).
    Reset,
    /// The upstream did not answer in time (`UT`, max stream duration `UMSDR`).
    Timeout,
    /// Envoy's own circuit breaker refused the request (`UO`).
    Overflow,
    /// The cluster had no healthy host (`UH`).
    NoHealthyUpstream,
}

impl LocalFailure {
    pub const ALL: [LocalFailure; 5] = [
        LocalFailure::ConnectFailure,
        LocalFailure::Reset,
        LocalFailure::Timeout,
        LocalFailure::Overflow,
        LocalFailure::NoHealthyUpstream,
    ];

    /// The configuration spelling, also used in stats names.
    pub const fn as_str(self) -> &'static str {
        match self {
            LocalFailure::ConnectFailure => "connect_failure",
            LocalFailure::Reset => "reset",
            LocalFailure::Timeout => "timeout",
            LocalFailure::Overflow => "overflow",
            LocalFailure::NoHealthyUpstream => "no_healthy_upstream",
        }
    }

    const fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// A set of [`LocalFailure`]s, read from a JSON array of their snake_case names.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct LocalFailureSet(u8);

impl LocalFailureSet {
    pub const fn empty() -> Self {
        Self(0)
    }

    pub const fn all() -> Self {
        Self(0b1_1111)
    }

    pub fn from_slice(items: &[LocalFailure]) -> Self {
        let mut set = Self::empty();
        for &item in items {
            set.insert(item);
        }
        set
    }

    pub fn insert(&mut self, failure: LocalFailure) {
        self.0 |= failure.bit();
    }

    pub fn contains(&self, failure: LocalFailure) -> bool {
        self.0 & failure.bit() != 0
    }

    pub fn is_empty(&self) -> bool {
        self.0 == 0
    }
}

impl fmt::Debug for LocalFailureSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set()
            .entries(
                LocalFailure::ALL
                    .iter()
                    .filter(|l| self.contains(**l))
                    .map(|l| l.as_str()),
            )
            .finish()
    }
}

impl<'de> Deserialize<'de> for LocalFailureSet {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let items = Vec::<LocalFailure>::deserialize(deserializer)?;
        Ok(Self::from_slice(&items))
    }
}

/// Bits of Envoy's `response.flags` property.
///
/// The property is `StreamInfo::legacyResponseFlags()`: for every `CoreResponseFlag` set on the
/// stream, bit `1 << flag` (`source/common/stream_info/stream_info_impl.h`). The positions are the
/// order of `enum CoreResponseFlag` in `envoy/stream_info/stream_info.h`, cross-checked against
/// the `LegacyResponseFlag` table in `test/common/stream_info/stream_info_impl_test.cc`. The wasm
/// host serves `response.*` from the CEL `ResponseWrapper`
/// (`source/extensions/filters/common/expr/context.cc`: `Flags` is
/// `CelValue::CreateInt64(info.legacyResponseFlags())`), serialised as 8 little-endian bytes by
/// `source/extensions/common/wasm/context.cc`.
pub mod envoy_flags {
    /// `LH` FailedLocalHealthCheck.
    pub const FAILED_LOCAL_HEALTH_CHECK: u64 = 1 << 0;
    /// `UH` NoHealthyUpstream.
    pub const NO_HEALTHY_UPSTREAM: u64 = 1 << 1;
    /// `UT` UpstreamRequestTimeout.
    pub const UPSTREAM_REQUEST_TIMEOUT: u64 = 1 << 2;
    /// `LR` LocalReset.
    pub const LOCAL_RESET: u64 = 1 << 3;
    /// `UR` UpstreamRemoteReset.
    pub const UPSTREAM_REMOTE_RESET: u64 = 1 << 4;
    /// `UF` UpstreamConnectionFailure.
    pub const UPSTREAM_CONNECTION_FAILURE: u64 = 1 << 5;
    /// `UC` UpstreamConnectionTermination.
    pub const UPSTREAM_CONNECTION_TERMINATION: u64 = 1 << 6;
    /// `UO` UpstreamOverflow.
    pub const UPSTREAM_OVERFLOW: u64 = 1 << 7;
    /// `NR` NoRouteFound.
    pub const NO_ROUTE_FOUND: u64 = 1 << 8;
    /// `DC` DownstreamConnectionTermination.
    pub const DOWNSTREAM_CONNECTION_TERMINATION: u64 = 1 << 14;
    /// `URX` UpstreamRetryLimitExceeded.
    pub const UPSTREAM_RETRY_LIMIT_EXCEEDED: u64 = 1 << 15;
    /// `SI` StreamIdleTimeout.
    pub const STREAM_IDLE_TIMEOUT: u64 = 1 << 16;
    /// `UMSDR` UpstreamMaxStreamDurationReached.
    pub const UPSTREAM_MAX_STREAM_DURATION_REACHED: u64 = 1 << 19;
    /// `UPE` UpstreamProtocolError.
    pub const UPSTREAM_PROTOCOL_ERROR: u64 = 1 << 23;
}

/// The local failure a `response.flags` value reports, if any.
///
/// Several flags can be set at once (`URX,UF` after retries): the most specific cause wins, in
/// the order no healthy upstream, connect failure, overflow, timeout, reset.
pub fn local_failure_from_flags(flags: u64) -> Option<LocalFailure> {
    use envoy_flags::*;
    if flags & NO_HEALTHY_UPSTREAM != 0 {
        Some(LocalFailure::NoHealthyUpstream)
    } else if flags & UPSTREAM_CONNECTION_FAILURE != 0 {
        Some(LocalFailure::ConnectFailure)
    } else if flags & UPSTREAM_OVERFLOW != 0 {
        Some(LocalFailure::Overflow)
    } else if flags & (UPSTREAM_REQUEST_TIMEOUT | UPSTREAM_MAX_STREAM_DURATION_REACHED) != 0 {
        Some(LocalFailure::Timeout)
    } else if flags & (UPSTREAM_REMOTE_RESET | LOCAL_RESET | UPSTREAM_CONNECTION_TERMINATION) != 0 {
        Some(LocalFailure::Reset)
    } else {
        None
    }
}

/// The local failure a `response.code_details` string reports, if any.
///
/// The strings are Envoy's `ResponseCodeDetailValues` (`envoy/stream_info/stream_info.h`). Resets
/// read `upstream_reset_before_response_started{<reason>...}` (or `_after_`), where the reason is
/// `Http::Utility::resetReasonToString` with spaces turned into underscores:
/// `connection_failure` (older Envoy), `local_connection_failure`, `remote_connection_failure`,
/// `connection_timeout`, `connection_termination`, `overflow`, `remote_reset`, `local_reset`, ...
/// Timeouts are `response_timeout`, `upstream_per_try_timeout`, `upstream_per_try_idle_timeout`
/// and `upstream_max_stream_duration_reached`. `maintenance_mode` is Envoy's overflow too (it sets
/// `UO`).
pub fn local_failure_from_details(details: &str) -> Option<LocalFailure> {
    const RESETS: [&str; 2] = [
        "upstream_reset_before_response_started",
        "upstream_reset_after_response_started",
    ];
    const TIMEOUTS: [&str; 4] = [
        "response_timeout",
        "upstream_per_try_timeout",
        "upstream_per_try_idle_timeout",
        "upstream_max_stream_duration_reached",
    ];

    if details.starts_with("no_healthy_upstream") {
        return Some(LocalFailure::NoHealthyUpstream);
    }
    if let Some(rest) = RESETS.iter().find_map(|p| details.strip_prefix(p)) {
        // Only the first token inside the braces is Envoy's reason; what follows (a TLS error, a
        // remote address) is free text that must not be searched for keywords.
        let reason = rest
            .strip_prefix('{')
            .map(|r| r.split(['|', ',', '}']).next().unwrap_or(""))
            .unwrap_or("");
        return Some(
            if reason.contains("connection_failure") || reason == "connection_timeout" {
                LocalFailure::ConnectFailure
            } else if reason == "overflow" {
                LocalFailure::Overflow
            } else {
                LocalFailure::Reset
            },
        );
    }
    if TIMEOUTS.iter().any(|t| details.starts_with(t)) || details.contains("response_timeout") {
        return Some(LocalFailure::Timeout);
    }
    if details.starts_with("maintenance_mode") {
        return Some(LocalFailure::Overflow);
    }
    None
}

// ---------------------------------------------------------------------------------------------
// Classification
// ---------------------------------------------------------------------------------------------

/// What the host learned about one finished exchange.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ResponseFacts {
    /// HTTP status; 0 when no response headers were received (the stream was reset).
    pub status: u16,
    /// `grpc-status`, from trailers or a trailers-only response, when present.
    pub grpc_status: Option<u32>,
    /// A failure Envoy observed itself, from response flags or code details.
    pub local: Option<LocalFailure>,
    /// Time from request start to the end of the response, in milliseconds.
    pub duration_ms: u64,
}

/// Why an exchange counted as a failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureKind {
    Status(u16),
    Grpc(u32),
    Local(LocalFailure),
}

impl FailureKind {
    /// A stable name for stats: `http_status`, `grpc_status` or the local failure's name.
    pub const fn reason(self) -> &'static str {
        match self {
            FailureKind::Status(_) => "http_status",
            FailureKind::Grpc(_) => "grpc_status",
            FailureKind::Local(local) => local.as_str(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Failure(FailureKind),
}

/// The verdict on one exchange.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Classified {
    pub outcome: Outcome,
    /// Took at least the configured slow-call duration (independent of success).
    pub slow: bool,
}

impl Classified {
    pub fn is_failure(&self) -> bool {
        matches!(self.outcome, Outcome::Failure(_))
    }
}

/// Decides what counts as a failure and as slow.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Classifier {
    pub statuses: StatusSet,
    pub grpc_codes: GrpcCodeSet,
    pub local: LocalFailureSet,
    pub slow_call_ms: Option<u64>,
}

impl Classifier {
    /// A common starting point: HTTP 5xx, [`GrpcCodeSet::server_errors`], every local failure,
    /// no slow-call threshold.
    pub fn server_errors() -> Self {
        let mut statuses = StatusSet::empty();
        statuses.insert_range(500, 599);
        Self {
            statuses,
            grpc_codes: GrpcCodeSet::server_errors(),
            local: LocalFailureSet::all(),
            slow_call_ms: None,
        }
    }

    /// Classifies one exchange. Order: a local failure in the set fails; otherwise a gRPC status
    /// decides alone (so gRPC `OK` on HTTP 200 succeeds and `UNAVAILABLE` on HTTP 200 fails);
    /// otherwise status 0 (no response) is a reset, failing if resets are in the set; otherwise the
    /// HTTP status set decides.
    pub fn classify(&self, f: &ResponseFacts) -> Classified {
        let outcome = match (f.local, f.grpc_status) {
            (Some(local), _) if self.local.contains(local) => {
                Outcome::Failure(FailureKind::Local(local))
            }
            (_, Some(code)) => {
                if self.grpc_codes.contains(code) {
                    Outcome::Failure(FailureKind::Grpc(code))
                } else {
                    Outcome::Success
                }
            }
            _ if f.status == 0 => {
                if self.local.contains(LocalFailure::Reset) {
                    Outcome::Failure(FailureKind::Local(LocalFailure::Reset))
                } else {
                    Outcome::Success
                }
            }
            _ if self.statuses.contains(f.status) => {
                Outcome::Failure(FailureKind::Status(f.status))
            }
            _ => Outcome::Success,
        };
        Classified {
            outcome,
            slow: self.slow_call_ms.is_some_and(|s| f.duration_ms >= s),
        }
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use crate::config::parse_value;
    use serde_json::json;

    fn statuses(v: serde_json::Value) -> Result<StatusSet, String> {
        parse_value::<StatusSet>(v, "statuses").map_err(|e| e.to_string())
    }

    #[test]
    fn status_sets_read_statuses_classes_and_ranges() {
        let set = statuses(json!([429, "503", "4xx", "500-502"])).unwrap();
        for s in [400, 429, 499, 500, 501, 502, 503] {
            assert!(set.contains(s), "{s}");
        }
        for s in [200, 399, 504, 599] {
            assert!(!set.contains(s), "{s}");
        }
        // 4xx, 500-502 and 503 touch: one range.
        assert_eq!(format!("{set:?}"), "StatusSet[400-503]");
        let apart = StatusSet::from_strs(&["429", "5xx"]).unwrap();
        assert_eq!(format!("{apart:?}"), "StatusSet[429, 500-599]");
    }

    #[test]
    fn status_classes_accept_either_case_of_x() {
        let set = StatusSet::from_strs(&["5XX"]).unwrap();
        assert!(set.contains(500) && set.contains(599) && !set.contains(499));
    }

    #[test]
    fn a_bad_status_item_is_named_with_its_index() {
        let err = statuses(json!([500, "6xx"])).unwrap_err();
        assert_eq!(
            err,
            r#"statuses[1]: item "6xx" is not a status, class ("5xx") or range ("500-599")"#
        );
    }

    #[test]
    fn status_numbers_outside_100_to_599_are_rejected() {
        assert_eq!(
            statuses(json!([600])).unwrap_err(),
            "statuses[0]: item 600 is not a status between 100 and 599"
        );
        assert!(statuses(json!([99])).is_err());
        assert!(statuses(json!([-1])).is_err());
        assert!(statuses(json!(["0500"])).is_err());
        assert!(statuses(json!([true]))
            .unwrap_err()
            .contains("item true is not"));
    }

    #[test]
    fn a_reversed_range_is_rejected() {
        assert_eq!(
            StatusSet::from_strs(&["599-500"]).unwrap_err(),
            r#"item "599-500" is a range whose start is above its end"#
        );
        assert!(StatusSet::from_strs(&["500-600"]).is_err());
        assert!(StatusSet::from_strs(&["500-"]).is_err());
    }

    #[test]
    fn statuses_outside_the_valid_range_are_never_contained() {
        let set = StatusSet::from_strs(&["1xx", "5xx"]).unwrap();
        assert!(!set.contains(0));
        assert!(!set.contains(600));
        assert!(!set.contains(u16::MAX));
        assert!(StatusSet::empty().is_empty());
    }

    #[test]
    fn grpc_sets_read_names_in_any_case_and_numbers() {
        let set = parse_value::<GrpcCodeSet>(json!(["UNAVAILABLE", "deadline_exceeded", 13]), "")
            .unwrap();
        assert!(set.contains(14) && set.contains(4) && set.contains(13));
        assert!(!set.contains(0) && !set.contains(17) && !set.contains(u32::MAX));
        assert_eq!(
            format!("{set:?}"),
            r#"{"DEADLINE_EXCEEDED", "INTERNAL", "UNAVAILABLE"}"#
        );
    }

    #[test]
    fn unknown_grpc_names_and_numbers_are_rejected() {
        let err = parse_value::<GrpcCodeSet>(json!(["UNAVAILABLE", "NOPE"]), "grpc").unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"grpc[1]: item "NOPE" is not a gRPC status name (like "UNAVAILABLE") or code 0-16"#
        );
        assert!(parse_value::<GrpcCodeSet>(json!([17]), "").is_err());
        assert!(GrpcCodeSet::from_strs(&["17"]).is_err());
        assert_eq!(
            GrpcCodeSet::from_strs(&["14", "internal"]).unwrap(),
            GrpcCodeSet::from_codes(&[13, 14])
        );
    }

    #[test]
    fn grpc_code_names_are_the_canonical_seventeen() {
        assert_eq!(grpc_code_name(0), Some("OK"));
        assert_eq!(grpc_code_name(14), Some("UNAVAILABLE"));
        assert_eq!(grpc_code_name(16), Some("UNAUTHENTICATED"));
        assert_eq!(grpc_code_name(17), None);
    }

    #[test]
    fn grpc_status_values_are_strict_decimal() {
        assert_eq!(parse_grpc_status(b"0"), Some(0));
        assert_eq!(parse_grpc_status(b"14"), Some(14));
        assert_eq!(parse_grpc_status(b"4294967295"), Some(u32::MAX));
        for bad in [
            &b""[..],
            b"4294967296",
            b"12345678901",
            b"-1",
            b" 14",
            b"14 ",
            b"UNAVAILABLE",
        ] {
            assert_eq!(parse_grpc_status(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn local_failure_sets_read_snake_case_names() {
        let set =
            parse_value::<LocalFailureSet>(json!(["reset", "no_healthy_upstream"]), "").unwrap();
        assert!(set.contains(LocalFailure::Reset));
        assert!(set.contains(LocalFailure::NoHealthyUpstream));
        assert!(!set.contains(LocalFailure::Timeout));
        for l in LocalFailure::ALL {
            assert!(LocalFailureSet::all().contains(l));
            assert!(!LocalFailureSet::empty().contains(l));
            let parsed: LocalFailure = parse_value(json!(l.as_str()), "").unwrap();
            assert_eq!(parsed, l);
        }
    }

    #[test]
    fn an_unknown_local_failure_name_lists_the_known_ones() {
        let err =
            parse_value::<LocalFailureSet>(json!(["reset", "explosion"]), "local").unwrap_err();
        assert_eq!(err.path, "local[1]");
        assert!(
            err.rule.starts_with(r#"unknown variant "explosion""#),
            "{err}"
        );
        assert!(err.rule.contains(r#""connect_failure""#), "{err}");
    }

    #[test]
    fn response_flag_bits_follow_envoys_core_response_flag_order() {
        // Values of Envoy's LegacyResponseFlag table (stream_info_impl_test.cc).
        assert_eq!(envoy_flags::NO_HEALTHY_UPSTREAM, 0x2);
        assert_eq!(envoy_flags::UPSTREAM_REQUEST_TIMEOUT, 0x4);
        assert_eq!(envoy_flags::LOCAL_RESET, 0x8);
        assert_eq!(envoy_flags::UPSTREAM_REMOTE_RESET, 0x10);
        assert_eq!(envoy_flags::UPSTREAM_CONNECTION_FAILURE, 0x20);
        assert_eq!(envoy_flags::UPSTREAM_CONNECTION_TERMINATION, 0x40);
        assert_eq!(envoy_flags::UPSTREAM_OVERFLOW, 0x80);
        assert_eq!(envoy_flags::UPSTREAM_RETRY_LIMIT_EXCEEDED, 0x8000);
        assert_eq!(envoy_flags::UPSTREAM_MAX_STREAM_DURATION_REACHED, 0x80000);
    }

    #[test]
    fn each_upstream_flag_maps_to_its_local_failure() {
        use envoy_flags::*;
        let cases = [
            (UPSTREAM_CONNECTION_FAILURE, LocalFailure::ConnectFailure),
            (UPSTREAM_REMOTE_RESET, LocalFailure::Reset),
            (LOCAL_RESET, LocalFailure::Reset),
            (UPSTREAM_CONNECTION_TERMINATION, LocalFailure::Reset),
            (UPSTREAM_REQUEST_TIMEOUT, LocalFailure::Timeout),
            (UPSTREAM_MAX_STREAM_DURATION_REACHED, LocalFailure::Timeout),
            (UPSTREAM_OVERFLOW, LocalFailure::Overflow),
            (NO_HEALTHY_UPSTREAM, LocalFailure::NoHealthyUpstream),
        ];
        for (flag, expected) in cases {
            assert_eq!(local_failure_from_flags(flag), Some(expected), "{flag:#x}");
        }
    }

    #[test]
    fn flags_without_an_upstream_failure_map_to_nothing() {
        use envoy_flags::*;
        assert_eq!(local_failure_from_flags(0), None);
        assert_eq!(
            local_failure_from_flags(NO_ROUTE_FOUND | DOWNSTREAM_CONNECTION_TERMINATION),
            None
        );
        assert_eq!(local_failure_from_flags(FAILED_LOCAL_HEALTH_CHECK), None);
    }

    #[test]
    fn the_most_specific_flag_wins_when_several_are_set() {
        use envoy_flags::*;
        assert_eq!(
            local_failure_from_flags(UPSTREAM_RETRY_LIMIT_EXCEEDED | UPSTREAM_CONNECTION_FAILURE),
            Some(LocalFailure::ConnectFailure)
        );
        assert_eq!(
            local_failure_from_flags(UPSTREAM_REQUEST_TIMEOUT | LOCAL_RESET),
            Some(LocalFailure::Timeout)
        );
    }

    #[test]
    fn code_details_recorded_from_envoy_map_to_local_failures() {
        let cases = [
            ("upstream_reset_before_response_started{connection_failure}", LocalFailure::ConnectFailure),
            (
                "upstream_reset_before_response_started{remote_connection_failure|immediate_connect_error:_Network_is_unreachable|remote_address:[fdc4::254]:42349}",
                LocalFailure::ConnectFailure,
            ),
            (
                "upstream_reset_before_response_started{remote_connection_failure|TLS_error:|268435703:SSL_routines:OPENSSL_internal:WRONG_VERSION_NUMBER:TLS_error_end}",
                LocalFailure::ConnectFailure,
            ),
            ("upstream_reset_before_response_started{connection_timeout}", LocalFailure::ConnectFailure),
            ("upstream_reset_before_response_started{connection_termination}", LocalFailure::Reset),
            ("upstream_reset_before_response_started{remote_reset}", LocalFailure::Reset),
            ("upstream_reset_after_response_started{remote_reset}", LocalFailure::Reset),
            ("upstream_reset_before_response_started{overflow}", LocalFailure::Overflow),
            ("maintenance_mode", LocalFailure::Overflow),
            ("response_timeout", LocalFailure::Timeout),
            ("upstream_response_timeout", LocalFailure::Timeout),
            ("upstream_per_try_timeout", LocalFailure::Timeout),
            ("upstream_per_try_idle_timeout", LocalFailure::Timeout),
            ("upstream_max_stream_duration_reached", LocalFailure::Timeout),
            ("no_healthy_upstream", LocalFailure::NoHealthyUpstream),
        ];
        for (details, expected) in cases {
            assert_eq!(
                local_failure_from_details(details),
                Some(expected),
                "{details}"
            );
        }
    }

    #[test]
    fn free_text_inside_reset_details_is_not_searched_for_keywords() {
        assert_eq!(
            local_failure_from_details(
                "upstream_reset_before_response_started{remote_reset|overflow_connection_failure}"
            ),
            Some(LocalFailure::Reset)
        );
    }

    #[test]
    fn ordinary_code_details_are_not_local_failures() {
        for details in [
            "via_upstream",
            "",
            "route_not_found",
            "drop_overload",
            "overload",
            "direct_response",
        ] {
            assert_eq!(local_failure_from_details(details), None, "{details}");
        }
    }

    fn facts(status: u16) -> ResponseFacts {
        ResponseFacts {
            status,
            ..ResponseFacts::default()
        }
    }

    #[test]
    fn a_listed_http_status_is_a_failure_and_others_succeed() {
        let c = Classifier::server_errors();
        assert_eq!(
            c.classify(&facts(503)).outcome,
            Outcome::Failure(FailureKind::Status(503))
        );
        assert_eq!(c.classify(&facts(200)).outcome, Outcome::Success);
        assert_eq!(c.classify(&facts(404)).outcome, Outcome::Success);
        assert!(c.classify(&facts(500)).is_failure());
    }

    #[test]
    fn a_local_failure_in_the_set_wins_over_the_status_envoy_made_up() {
        let c = Classifier::server_errors();
        let f = ResponseFacts {
            status: 503,
            local: Some(LocalFailure::ConnectFailure),
            ..ResponseFacts::default()
        };
        assert_eq!(
            c.classify(&f).outcome,
            Outcome::Failure(FailureKind::Local(LocalFailure::ConnectFailure))
        );
    }

    #[test]
    fn a_local_failure_not_in_the_set_falls_through_to_the_status() {
        let c = Classifier {
            local: LocalFailureSet::from_slice(&[LocalFailure::Reset]),
            ..Classifier::server_errors()
        };
        let f = ResponseFacts {
            status: 503,
            local: Some(LocalFailure::Overflow),
            ..ResponseFacts::default()
        };
        assert_eq!(
            c.classify(&f).outcome,
            Outcome::Failure(FailureKind::Status(503))
        );
    }

    #[test]
    fn grpc_ok_on_http_200_succeeds_and_grpc_unavailable_on_http_200_fails() {
        let c = Classifier::server_errors();
        let ok = ResponseFacts {
            status: 200,
            grpc_status: Some(0),
            ..ResponseFacts::default()
        };
        assert_eq!(c.classify(&ok).outcome, Outcome::Success);
        let unavailable = ResponseFacts {
            grpc_status: Some(14),
            ..ok
        };
        assert_eq!(
            c.classify(&unavailable).outcome,
            Outcome::Failure(FailureKind::Grpc(14))
        );
    }

    #[test]
    fn a_grpc_status_decides_even_when_the_http_status_is_listed() {
        let c = Classifier::server_errors();
        let f = ResponseFacts {
            status: 503,
            grpc_status: Some(5),
            ..ResponseFacts::default()
        };
        assert_eq!(c.classify(&f).outcome, Outcome::Success);
    }

    #[test]
    fn no_response_at_all_is_a_reset_when_resets_count() {
        let c = Classifier::server_errors();
        assert_eq!(
            c.classify(&facts(0)).outcome,
            Outcome::Failure(FailureKind::Local(LocalFailure::Reset))
        );
        let lenient = Classifier {
            local: LocalFailureSet::empty(),
            ..c
        };
        assert_eq!(lenient.classify(&facts(0)).outcome, Outcome::Success);
    }

    #[test]
    fn slowness_is_judged_separately_from_success() {
        let c = Classifier {
            slow_call_ms: Some(100),
            ..Classifier::server_errors()
        };
        let at = |status, duration_ms| ResponseFacts {
            status,
            duration_ms,
            ..ResponseFacts::default()
        };
        assert!(!c.classify(&at(200, 99)).slow);
        assert!(c.classify(&at(200, 100)).slow);
        let slow_failure = c.classify(&at(500, 5_000));
        assert!(slow_failure.slow && slow_failure.is_failure());
        assert!(
            !Classifier::server_errors()
                .classify(&at(200, u64::MAX))
                .slow
        );
    }

    #[test]
    fn failure_kinds_have_stats_names() {
        assert_eq!(FailureKind::Status(503).reason(), "http_status");
        assert_eq!(FailureKind::Grpc(14).reason(), "grpc_status");
        assert_eq!(
            FailureKind::Local(LocalFailure::Timeout).reason(),
            "timeout"
        );
    }

    #[cfg(not(target_arch = "wasm32"))]
    mod properties {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn a_single_status_set_contains_exactly_that_status(s in 100u16..=599, probe in any::<u16>()) {
                let set = StatusSet::from_strs(&[&s.to_string()]).unwrap();
                prop_assert_eq!(set.contains(probe), probe == s);
            }

            #[test]
            fn a_range_contains_exactly_its_members(
                a in 100u16..=599,
                b in 100u16..=599,
                probe in 0u16..700,
            ) {
                let (lo, hi) = (a.min(b), a.max(b));
                let set = StatusSet::from_strs(&[&format!("{lo}-{hi}")]).unwrap();
                prop_assert_eq!(set.contains(probe), (lo..=hi).contains(&probe));
                prop_assert_eq!(set.ranges(), vec![(lo, hi)]);
            }

            #[test]
            fn arbitrary_strings_never_panic_as_status_items(s in "\\PC{0,12}") {
                let _ = StatusSet::from_strs(&[&s]);
                let _ = GrpcCodeSet::from_strs(&[&s]);
                let _ = local_failure_from_details(&s);
            }

            #[test]
            fn grpc_status_parsing_round_trips_u32(n in any::<u32>()) {
                prop_assert_eq!(parse_grpc_status(n.to_string().as_bytes()), Some(n));
            }

            #[test]
            fn arbitrary_grpc_status_bytes_never_panic(v in proptest::collection::vec(any::<u8>(), 0..16)) {
                let _ = parse_grpc_status(&v);
            }
        }
    }
}
