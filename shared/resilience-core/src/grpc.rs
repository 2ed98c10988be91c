//! gRPC: the answer a gRPC client gets when a filter refuses its call, and the wire facts of a
//! gRPC request that the filters read.
//!
//! # Why
//!
//! A gRPC client never reads an HTTP status or a body. It reads `grpc-status` (which decides
//! whether its retry policy retries), `grpc-message` (what it shows a person), and, when a
//! server sends them, `grpc-retry-pushback-ms` (gRPC A6: wait this long before the next
//! attempt, or do not retry at all when the value is negative) and `grpc-status-details-bin` (a
//! `google.rpc.Status` with typed details such as `RetryInfo`). A refusal that says "come back in
//! 3 s" in `retry-after` and an RFC 9457 body tells a gRPC client nothing, and a refusal whose
//! status is `UNAVAILABLE` by accident is retried at once by every standard retry policy. So every
//! local reply to a gRPC call is a proper gRPC answer: HTTP 200, trailers-only, a status chosen
//! for what happened ([`Refusal`]), a short percent-encoded message, pushback where it helps and
//! the same details in the binary status.
//!
//! # What Envoy does with it
//!
//! Envoy 1.40 turns a local reply to a request it sees as gRPC (`content-type` exactly
//! `application/grpc` or `application/grpc+…`) into a trailers-only answer itself: `:status` 200,
//! `content-type: application/grpc`, `grpc-status` from the call's gRPC status argument *only if
//! the headers do not already carry one* (otherwise from the HTTP status: 503 and 504 both become
//! 14), and the body, percent-encoded, as `grpc-message`. A gRPC-Web request is not gRPC to
//! Envoy's local-reply code when the wasm filter runs before the `grpc_web` filter (the
//! `content-type` is still `application/grpc-web…`); the `grpc_web` filter then rewrites a reply
//! with a body by the HTTP status, but passes a headers-only reply that already carries
//! `grpc-status` through unchanged. The pack therefore sends the whole trailers-only header set
//! itself, with an empty body and HTTP 200 ([`Refusal::headers`]), and passes the same code as
//! the gRPC status argument: both Envoy paths keep it exactly as sent.
//!
//! # Why by hand
//!
//! The binary status is three small protobuf messages; a protobuf library would add far more to
//! every `.wasm` than the few lines of field encoding below. Everything here is pure and bounded:
//! messages are cut to [`MAX_MESSAGE_BYTES`] before encoding, pushback to [`MAX_PUSHBACK_MS`].

use crate::problem::{bounded, Problem};

/// The media type of a gRPC answer.
pub const CONTENT_TYPE: &str = "application/grpc";

/// `google.rpc.ErrorInfo.domain` of every refusal the pack sends.
pub const ERROR_DOMAIN: &str = "resilience-pack";

/// Longest `grpc-message` before percent-encoding, in bytes.
pub const MAX_MESSAGE_BYTES: usize = 256;

/// Longest pushback sent (one day): larger delays are sent as this.
pub const MAX_PUSHBACK_MS: u64 = 86_400_000;

/// Longest `ErrorInfo` metadata value, in bytes.
const MAX_METADATA_BYTES: usize = 64;

/// How a request speaks gRPC, from its `content-type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wire {
    /// `application/grpc`, `application/grpc+proto`, `application/grpc+json`, …
    Grpc,
    /// `application/grpc-web`, `application/grpc-web+proto`, …: binary frames, as gRPC.
    GrpcWeb,
    /// `application/grpc-web-text`, `application/grpc-web-text+proto`: base64 frames.
    GrpcWebText,
}

/// The gRPC flavour of a request from its `content-type` value; `None` when it is not gRPC.
///
/// The media type (before any `;` parameter, without surrounding spaces) is compared ASCII
/// case-insensitively: `application/grpc` alone or followed by `+subtype`, and the same for the
/// two gRPC-Web types. `application/grpcx` or `application/grpc-webx` are not gRPC.
pub fn wire(content_type: &[u8]) -> Option<Wire> {
    let essence = content_type
        .split(|b| *b == b';')
        .next()
        .unwrap_or_default()
        .trim_ascii();
    let is = |base: &[u8]| -> bool {
        essence.len() >= base.len()
            && essence
                .get(..base.len())
                .is_some_and(|head| head.eq_ignore_ascii_case(base))
            && matches!(essence.get(base.len()), None | Some(b'+'))
    };
    if is(b"application/grpc-web-text") {
        Some(Wire::GrpcWebText)
    } else if is(b"application/grpc-web") {
        Some(Wire::GrpcWeb)
    } else if is(b"application/grpc") {
        Some(Wire::Grpc)
    } else {
        None
    }
}

/// The gRPC status codes (gRPC's `statuscodes.md`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Code {
    Ok,
    Cancelled,
    Unknown,
    InvalidArgument,
    DeadlineExceeded,
    NotFound,
    AlreadyExists,
    PermissionDenied,
    ResourceExhausted,
    FailedPrecondition,
    Aborted,
    OutOfRange,
    Unimplemented,
    Internal,
    Unavailable,
    DataLoss,
    Unauthenticated,
}

impl Code {
    /// Every code, in numeric order.
    pub const ALL: [Code; 17] = [
        Code::Ok,
        Code::Cancelled,
        Code::Unknown,
        Code::InvalidArgument,
        Code::DeadlineExceeded,
        Code::NotFound,
        Code::AlreadyExists,
        Code::PermissionDenied,
        Code::ResourceExhausted,
        Code::FailedPrecondition,
        Code::Aborted,
        Code::OutOfRange,
        Code::Unimplemented,
        Code::Internal,
        Code::Unavailable,
        Code::DataLoss,
        Code::Unauthenticated,
    ];

    /// The number sent in `grpc-status`.
    pub fn value(self) -> u8 {
        match self {
            Code::Ok => 0,
            Code::Cancelled => 1,
            Code::Unknown => 2,
            Code::InvalidArgument => 3,
            Code::DeadlineExceeded => 4,
            Code::NotFound => 5,
            Code::AlreadyExists => 6,
            Code::PermissionDenied => 7,
            Code::ResourceExhausted => 8,
            Code::FailedPrecondition => 9,
            Code::Aborted => 10,
            Code::OutOfRange => 11,
            Code::Unimplemented => 12,
            Code::Internal => 13,
            Code::Unavailable => 14,
            Code::DataLoss => 15,
            Code::Unauthenticated => 16,
        }
    }

    /// The canonical name, e.g. `UNAVAILABLE` (the names the outcome classifier reads).
    pub fn name(self) -> &'static str {
        crate::outcome::grpc_code_name(u32::from(self.value())).unwrap_or("UNKNOWN")
    }
}

/// What the client's retry policy is told about its next attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pushback {
    /// Wait this long before the next attempt (the same delay as `retry-after`).
    After { ms: u64 },
    /// Do not retry: retrying is what the refusal is about (a shed retry, a doomed deadline).
    Stop,
}

impl Pushback {
    /// The `grpc-retry-pushback-ms` value: the delay in ms, or `-1` for [`Pushback::Stop`].
    pub fn header_value(self) -> String {
        match self {
            Pushback::After { ms } => ms.min(MAX_PUSHBACK_MS).to_string(),
            Pushback::Stop => "-1".to_owned(),
        }
    }
}

/// How a filter refuses a gRPC call: the status, who refused and why, and the pushback.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub code: Code,
    /// The filter, as in its stats prefix (`circuit_breaker`): `ErrorInfo.metadata["filter"]`.
    pub filter: &'static str,
    /// The decision's reason, as in the decision header (`failure_rate`, `budget`, a rule name):
    /// `ErrorInfo.metadata["reason"]`.
    pub reason: String,
    pub pushback: Option<Pushback>,
    /// The message, when the problem's detail would say something else to a gRPC client (a
    /// `retry after` that the pushback contradicts); bounded like any message.
    pub message: Option<String>,
}

impl Refusal {
    pub fn new(code: Code, filter: &'static str, reason: impl Into<String>) -> Self {
        Refusal {
            code,
            filter,
            reason: reason.into(),
            pushback: None,
            message: None,
        }
    }

    pub fn with_message(mut self, message: impl Into<String>) -> Self {
        self.message = Some(bounded(&message.into(), MAX_MESSAGE_BYTES));
        self
    }

    pub fn with_pushback(mut self, pushback: Pushback) -> Self {
        self.pushback = Some(pushback);
        self
    }

    /// The `google.rpc.ErrorInfo` of this refusal: `reason` is the problem's kind in upper snake
    /// case (`circuit-open` → `CIRCUIT_OPEN`), the domain [`ERROR_DOMAIN`], and the metadata names
    /// the filter and the decision's reason.
    pub fn error_info(&self, problem: &Problem) -> ErrorInfo {
        ErrorInfo {
            reason: error_reason(problem.kind),
            domain: ERROR_DOMAIN,
            metadata: vec![
                ("filter", bounded(self.filter, MAX_METADATA_BYTES)),
                ("reason", bounded(&self.reason, MAX_METADATA_BYTES)),
            ],
        }
    }

    /// The trailers-only response headers for `problem`: `content-type`, `grpc-status`,
    /// `grpc-message` (the [`message`], or the refusal's own, percent-encoded), `grpc-retry-pushback-ms` when there is pushback, and
    /// `grpc-status-details-bin` (base64, unpadded) with the same code and message, a
    /// `RetryInfo` when the pushback is a delay, and the [`Refusal::error_info`].
    pub fn headers(&self, problem: &Problem) -> Vec<(&'static str, String)> {
        let text = self.message.clone().unwrap_or_else(|| message(problem));
        let delay = match self.pushback {
            Some(Pushback::After { ms }) => Some(ms.min(MAX_PUSHBACK_MS)),
            _ => None,
        };
        let details = status_details(self.code, &text, delay, &self.error_info(problem));
        let mut out = Vec::with_capacity(5);
        out.push(("content-type", CONTENT_TYPE.to_owned()));
        out.push(("grpc-status", self.code.value().to_string()));
        out.push(("grpc-message", percent_encode(&text)));
        if let Some(p) = self.pushback {
            out.push(("grpc-retry-pushback-ms", p.header_value()));
        }
        out.push(("grpc-status-details-bin", base64(&details)));
        out
    }
}

/// The short human message of a refusal: the problem's `detail` (one sentence that says what
/// happened and what to do), or its `title` when it has none, cut to [`MAX_MESSAGE_BYTES`].
pub fn message(problem: &Problem) -> String {
    let text = if problem.detail.is_empty() {
        problem.title
    } else {
        problem.detail.as_str()
    };
    bounded(text, MAX_MESSAGE_BYTES)
}

/// `circuit-open` → `CIRCUIT_OPEN` (the `ErrorInfo.reason` convention: upper snake case).
pub fn error_reason(kind: &str) -> String {
    kind.chars()
        .map(|c| match c {
            'a'..='z' => c.to_ascii_uppercase(),
            'A'..='Z' | '0'..='9' => c,
            _ => '_',
        })
        .collect()
}

/// `google.rpc.ErrorInfo`: why, in which domain, with which facts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErrorInfo {
    pub reason: String,
    pub domain: &'static str,
    pub metadata: Vec<(&'static str, String)>,
}

const RETRY_INFO_TYPE: &str = "type.googleapis.com/google.rpc.RetryInfo";
const ERROR_INFO_TYPE: &str = "type.googleapis.com/google.rpc.ErrorInfo";

/// A `google.rpc.Status` in protobuf wire form: `code` (1), `message` (2) and `details` (3, each
/// a `google.protobuf.Any`): a `google.rpc.RetryInfo` with `retry_delay` when `retry_delay_ms` is
/// given, then the `google.rpc.ErrorInfo`.
pub fn status_details(
    code: Code,
    message: &str,
    retry_delay_ms: Option<u64>,
    info: &ErrorInfo,
) -> Vec<u8> {
    let mut status = Vec::with_capacity(128 + message.len());
    if code != Code::Ok {
        put_varint_field(&mut status, 1, u64::from(code.value()));
    }
    put_bytes_field(&mut status, 2, message.as_bytes());
    if let Some(ms) = retry_delay_ms {
        // google.protobuf.Duration { seconds (1): int64, nanos (2): int32 }
        let mut duration = Vec::with_capacity(12);
        let seconds = ms / 1000;
        let nanos = (ms % 1000) * 1_000_000;
        if seconds > 0 {
            put_varint_field(&mut duration, 1, seconds);
        }
        if nanos > 0 {
            put_varint_field(&mut duration, 2, nanos);
        }
        // google.rpc.RetryInfo { retry_delay (1): Duration }
        let mut retry_info = Vec::with_capacity(duration.len() + 2);
        put_bytes_field(&mut retry_info, 1, &duration);
        put_any(&mut status, RETRY_INFO_TYPE, &retry_info);
    }
    // google.rpc.ErrorInfo { reason (1), domain (2), metadata (3): map<string, string> }
    let mut error_info = Vec::with_capacity(96);
    put_bytes_field(&mut error_info, 1, info.reason.as_bytes());
    put_bytes_field(&mut error_info, 2, info.domain.as_bytes());
    for (key, value) in &info.metadata {
        // A map entry is a message { key (1), value (2) }.
        let mut entry = Vec::with_capacity(key.len() + value.len() + 4);
        put_bytes_field(&mut entry, 1, key.as_bytes());
        put_bytes_field(&mut entry, 2, value.as_bytes());
        put_bytes_field(&mut error_info, 3, &entry);
    }
    put_any(&mut status, ERROR_INFO_TYPE, &error_info);
    status
}

/// `google.protobuf.Any { type_url (1), value (2) }` as field 3 of the status.
fn put_any(out: &mut Vec<u8>, type_url: &str, value: &[u8]) {
    let mut any = Vec::with_capacity(type_url.len() + value.len() + 6);
    put_bytes_field(&mut any, 1, type_url.as_bytes());
    put_bytes_field(&mut any, 2, value);
    put_bytes_field(out, 3, &any);
}

/// Wire type 0 (varint) field.
fn put_varint_field(out: &mut Vec<u8>, field: u32, value: u64) {
    put_varint(out, u64::from(field) << 3);
    put_varint(out, value);
}

/// Wire type 2 (length-delimited) field.
fn put_bytes_field(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    put_varint(out, (u64::from(field) << 3) | 2);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// `grpc-message` encoding (gRPC over HTTP/2): every byte outside printable ASCII (0x20–0x7E),
/// and `%` itself, as `%XX` with upper-case hex; the message is UTF-8 before encoding.
pub fn percent_encode(text: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(text.len());
    for &b in text.as_bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push('%');
            let hex = |n: u8| char::from(HEX.get(usize::from(n)).copied().unwrap_or(b'0'));
            out.push(hex(b >> 4));
            out.push(hex(b & 0x0f));
        }
    }
    out
}

/// Standard base64 without padding: what gRPC's `-bin` metadata carries (implementations must
/// accept it padded or not, and should send it unpadded).
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let sym = |i: u32| char::from(ALPHABET.get((i & 0x3f) as usize).copied().unwrap_or(b'A'));
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = |i: usize| u32::from(chunk.get(i).copied().unwrap_or(0));
        let n = (b(0) << 16) | (b(1) << 8) | b(2);
        out.push(sym(n >> 18));
        out.push(sym(n >> 12));
        if chunk.len() > 1 {
            out.push(sym(n >> 6));
        }
        if chunk.len() > 2 {
            out.push(sym(n));
        }
    }
    out
}

/// The length prefix of one gRPC message: a compressed flag byte and a 4-byte big-endian length.
pub const FRAME_HEADER_BYTES: usize = 5;

/// Why a gRPC request body does not hold well-formed messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// The compressed flag of message `index` (0-based) is neither 0 nor 1.
    BadFlag { index: u64, flag: u8 },
    /// Message `index` says it is compressed, but the request named no `grpc-encoding`.
    CompressedWithoutEncoding { index: u64 },
    /// Message `index` announces `len` bytes, more than the limit `max`.
    TooLarge { index: u64, len: u64, max: u64 },
    /// The body ended inside message `index`: in its length prefix or its payload.
    Truncated { index: u64 },
}

/// Reads the length-prefixed messages of a gRPC request body as it streams, looking only at the
/// 5-byte prefixes: the payloads are skipped, never copied, so a stream of any length costs a few
/// bytes of state. A message whose prefix announces more than the limit is refused at the
/// prefix, before its bytes arrive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrameReader {
    max_message_bytes: Option<u64>,
    compression: bool,
    prefix: [u8; FRAME_HEADER_BYTES],
    have: usize,
    payload_left: u64,
    messages: u64,
    /// The host could not hand over a prefix: stop checking (fail open).
    lost: bool,
}

impl FrameReader {
    /// A reader for one body. `compression` says whether the request named a `grpc-encoding`
    /// other than `identity` (only then may a message set its compressed flag).
    pub fn new(max_message_bytes: Option<u64>, compression: bool) -> Self {
        FrameReader {
            max_message_bytes,
            compression,
            prefix: [0; FRAME_HEADER_BYTES],
            have: 0,
            payload_left: 0,
            messages: 0,
            lost: false,
        }
    }

    /// Complete messages seen so far.
    pub fn messages(&self) -> u64 {
        self.messages
    }

    /// Whether a prefix could not be read and checking stopped.
    pub fn lost(&self) -> bool {
        self.lost
    }

    /// Feeds the next `len` bytes of the body. `read(offset, n)` returns `n` bytes of this chunk
    /// from `offset` (the reader asks only for prefix bytes); `None` stops the checking (the
    /// host failed: fail open).
    pub fn feed_with(
        &mut self,
        len: usize,
        mut read: impl FnMut(usize, usize) -> Option<Vec<u8>>,
    ) -> Result<(), FrameError> {
        let mut at = 0usize;
        while at < len && !self.lost {
            let left = len - at;
            if self.payload_left > 0 {
                let skip = usize::try_from(self.payload_left).map_or(left, |p| p.min(left));
                self.payload_left -= skip as u64;
                at += skip;
                if self.payload_left == 0 {
                    self.messages = self.messages.saturating_add(1);
                }
                continue;
            }
            let want = (FRAME_HEADER_BYTES - self.have).min(left);
            let Some(bytes) = read(at, want).filter(|b| b.len() == want) else {
                self.lost = true;
                return Ok(());
            };
            for (slot, b) in self.prefix.iter_mut().skip(self.have).zip(bytes) {
                *slot = b;
            }
            self.have += want;
            at += want;
            if self.have == FRAME_HEADER_BYTES {
                self.have = 0;
                self.prefix_complete()?;
            }
        }
        Ok(())
    }

    /// Feeds the next chunk of the body.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<(), FrameError> {
        self.feed_with(chunk.len(), |offset, n| {
            chunk
                .get(offset..offset.saturating_add(n))
                .map(<[u8]>::to_vec)
        })
    }

    /// The body ended: every message must be complete. Returns how many there were.
    pub fn finish(&self) -> Result<u64, FrameError> {
        if !self.lost && (self.have > 0 || self.payload_left > 0) {
            return Err(FrameError::Truncated {
                index: self.messages,
            });
        }
        Ok(self.messages)
    }

    fn prefix_complete(&mut self) -> Result<(), FrameError> {
        let [flag, a, b, c, d] = self.prefix;
        let index = self.messages;
        match flag {
            0 => {}
            1 if self.compression => {}
            1 => return Err(FrameError::CompressedWithoutEncoding { index }),
            _ => return Err(FrameError::BadFlag { index, flag }),
        }
        let len = u64::from(u32::from_be_bytes([a, b, c, d]));
        if let Some(max) = self.max_message_bytes.filter(|max| len > *max) {
            return Err(FrameError::TooLarge { index, len, max });
        }
        if len == 0 {
            self.messages = self.messages.saturating_add(1);
        } else {
            self.payload_left = len;
        }
        Ok(())
    }
}

/// Whether `path` names a gRPC method: `/` + a service (dot-separated identifiers, the package
/// first) + `/` + a method identifier, ASCII only.
pub fn is_method_path(path: &[u8]) -> bool {
    let Some(rest) = path.strip_prefix(b"/") else {
        return false;
    };
    let mut parts = rest.split(|b| *b == b'/');
    let (Some(service), Some(method), None) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    !service.is_empty() && service.split(|b| *b == b'.').all(is_identifier) && is_identifier(method)
}

/// A protobuf identifier: a letter or `_`, then letters, digits or `_`.
fn is_identifier(s: &[u8]) -> bool {
    match s.split_first() {
        Some((first, rest)) => {
            (first.is_ascii_alphabetic() || *first == b'_')
                && rest.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'_')
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    #[test]
    fn grpc_content_types_are_recognised_with_their_subtypes_and_parameters() {
        assert_eq!(wire(b"application/grpc"), Some(Wire::Grpc));
        assert_eq!(wire(b"application/grpc+proto"), Some(Wire::Grpc));
        assert_eq!(
            wire(b"Application/GRPC+json; charset=utf-8"),
            Some(Wire::Grpc)
        );
        assert_eq!(wire(b" application/grpc ;x=y"), Some(Wire::Grpc));
        assert_eq!(wire(b"application/grpc-web"), Some(Wire::GrpcWeb));
        assert_eq!(wire(b"application/grpc-web+proto"), Some(Wire::GrpcWeb));
        assert_eq!(wire(b"application/grpc-web-text"), Some(Wire::GrpcWebText));
        assert_eq!(
            wire(b"application/grpc-web-text+proto"),
            Some(Wire::GrpcWebText)
        );
    }

    #[test]
    fn look_alike_content_types_are_not_grpc() {
        for v in [
            &b"application/grpcx"[..],
            b"application/grpc-webx",
            b"application/json",
            b"application/grp",
            b"",
            b"\xff\xfe",
            b"text/plain; application/grpc",
        ] {
            assert_eq!(wire(v), None, "{:?}", String::from_utf8_lossy(v));
        }
    }

    #[test]
    fn codes_have_their_numbers_and_names() {
        for (i, c) in Code::ALL.iter().enumerate() {
            assert_eq!(usize::from(c.value()), i);
        }
        assert_eq!(Code::DeadlineExceeded.value(), 4);
        assert_eq!(Code::Unavailable.name(), "UNAVAILABLE");
        assert_eq!(Code::ResourceExhausted.value(), 8);
        assert_eq!(Code::Unauthenticated.name(), "UNAUTHENTICATED");
    }

    #[test]
    fn messages_are_percent_encoded_as_grpc_requires() {
        assert_eq!(percent_encode("retry after 3 s."), "retry after 3 s.");
        assert_eq!(percent_encode("50% done"), "50%25 done");
        assert_eq!(percent_encode("a\r\nb"), "a%0D%0Ab");
        assert_eq!(percent_encode("é…"), "%C3%A9%E2%80%A6");
        assert_eq!(percent_encode("~ "), "~ ");
    }

    #[test]
    fn base64_is_standard_and_unpadded() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg");
        assert_eq!(base64(b"fo"), "Zm8");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64(&[0xfb, 0xff, 0xfe]), "+//+");
    }

    #[test]
    fn pushback_is_the_delay_in_ms_or_minus_one_to_stop() {
        assert_eq!(Pushback::After { ms: 3000 }.header_value(), "3000");
        assert_eq!(Pushback::After { ms: u64::MAX }.header_value(), "86400000");
        assert_eq!(Pushback::Stop.header_value(), "-1");
    }

    #[test]
    fn error_reasons_are_upper_snake_case_kinds() {
        assert_eq!(error_reason("circuit-open"), "CIRCUIT_OPEN");
        assert_eq!(
            error_reason("retry-budget-exhausted"),
            "RETRY_BUDGET_EXHAUSTED"
        );
    }

    fn problem() -> Problem {
        Problem::new(503, "circuit-open", "Circuit breaker open")
            .with_detail("Requests for api are rejected; retry after 3 s.")
    }

    #[test]
    fn the_status_details_are_the_protobuf_bytes_of_status_retry_info_and_error_info() {
        let info = ErrorInfo {
            reason: "X".to_owned(),
            domain: "d",
            metadata: vec![("k", "v".to_owned())],
        };
        let bytes = status_details(Code::Unavailable, "m", Some(1500), &info);
        let mut expected = vec![0x08, 14, 0x12, 1, b'm'];
        // details[0]: Any { type_url, value: RetryInfo { Duration { 1 s, 500_000_000 ns } } }
        let duration = [0x08, 1, 0x10, 0x80, 0xca, 0xb5, 0xee, 0x01];
        let mut retry = vec![0x0a, duration.len() as u8];
        retry.extend_from_slice(&duration);
        let mut any = vec![0x0a, RETRY_INFO_TYPE.len() as u8];
        any.extend_from_slice(RETRY_INFO_TYPE.as_bytes());
        any.extend_from_slice(&[0x12, retry.len() as u8]);
        any.extend_from_slice(&retry);
        expected.extend_from_slice(&[0x1a, any.len() as u8]);
        expected.extend_from_slice(&any);
        // details[1]: Any { type_url, value: ErrorInfo { "X", "d", {k: v} } }
        let error = [
            0x0a, 1, b'X', 0x12, 1, b'd', 0x1a, 6, 0x0a, 1, b'k', 0x12, 1, b'v',
        ];
        let mut any = vec![0x0a, ERROR_INFO_TYPE.len() as u8];
        any.extend_from_slice(ERROR_INFO_TYPE.as_bytes());
        any.extend_from_slice(&[0x12, error.len() as u8]);
        any.extend_from_slice(&error);
        expected.extend_from_slice(&[0x1a, any.len() as u8]);
        expected.extend_from_slice(&any);
        assert_eq!(bytes, expected);
    }

    #[test]
    fn long_fields_get_multi_byte_lengths() {
        let info = ErrorInfo {
            reason: "R".repeat(200),
            domain: ERROR_DOMAIN,
            metadata: vec![],
        };
        let bytes = status_details(Code::Internal, &"m".repeat(300), None, &info);
        // message: tag 0x12, length 300 = 0xac 0x02
        assert_eq!(&bytes[..5], &[0x08, 13, 0x12, 0xac, 0x02]);
        assert_eq!(bytes[305], 0x1a);
    }

    #[test]
    fn a_refusal_with_a_delay_sends_every_trailers_only_header() {
        let r = Refusal::new(Code::Unavailable, "circuit_breaker", "failure_rate")
            .with_pushback(Pushback::After { ms: 3000 });
        let h = r.headers(&problem());
        let names: Vec<&str> = h.iter().map(|(k, _)| *k).collect();
        assert_eq!(
            names,
            [
                "content-type",
                "grpc-status",
                "grpc-message",
                "grpc-retry-pushback-ms",
                "grpc-status-details-bin"
            ]
        );
        assert_eq!(h[0].1, "application/grpc");
        assert_eq!(h[1].1, "14");
        assert_eq!(h[2].1, "Requests for api are rejected; retry after 3 s.");
        assert_eq!(h[3].1, "3000");
        let info = r.error_info(&problem());
        assert_eq!(
            h[4].1,
            base64(&status_details(
                Code::Unavailable,
                "Requests for api are rejected; retry after 3 s.",
                Some(3000),
                &info
            ))
        );
        assert_eq!(info.reason, "CIRCUIT_OPEN");
        assert_eq!(
            info.metadata,
            [
                ("filter", "circuit_breaker".to_owned()),
                ("reason", "failure_rate".to_owned())
            ]
        );
    }

    #[test]
    fn a_refusal_that_stops_retries_sends_minus_one_and_no_retry_info() {
        let r = Refusal::new(Code::ResourceExhausted, "retry_budget", "budget")
            .with_pushback(Pushback::Stop);
        let h = r.headers(&problem());
        assert!(h.contains(&("grpc-retry-pushback-ms", "-1".to_owned())));
        let plain = Refusal::new(Code::ResourceExhausted, "retry_budget", "budget");
        assert!(!plain
            .headers(&problem())
            .iter()
            .any(|(k, _)| *k == "grpc-retry-pushback-ms"));
        let details = status_details(
            Code::ResourceExhausted,
            &message(&problem()),
            None,
            &r.error_info(&problem()),
        );
        assert!(!details
            .windows(RETRY_INFO_TYPE.len())
            .any(|w| w == RETRY_INFO_TYPE.as_bytes()));
    }

    #[test]
    fn a_refusal_may_say_its_own_message() {
        let r = Refusal::new(Code::ResourceExhausted, "retry_budget", "budget")
            .with_message("Shed; do not retry.");
        let h = r.headers(&problem());
        assert!(h.contains(&("grpc-message", "Shed; do not retry.".to_owned())));
        let long = Refusal::new(Code::Internal, "f", "r").with_message("x".repeat(1000));
        assert!(long.message.unwrap().len() <= MAX_MESSAGE_BYTES);
    }

    #[test]
    fn the_message_is_the_detail_or_else_the_title_and_is_bounded() {
        assert_eq!(
            message(&Problem::new(
                504,
                "deadline-too-short",
                "Deadline too short"
            )),
            "Deadline too short"
        );
        let long = Problem::new(400, "x", "X").with_detail("é".repeat(1000));
        assert!(message(&long).len() <= MAX_MESSAGE_BYTES);
        let hostile = Problem::new(400, "x", "X").with_detail("a\r\nb");
        assert!(!percent_encode(&message(&hostile)).contains('\n'));
    }

    fn frame(flag: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![flag];
        out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn well_formed_messages_pass_in_any_chunking() {
        let mut body = frame(0, b"hello");
        body.extend(frame(0, b""));
        body.extend(frame(0, &[7; 300]));
        for chunk in [1, 2, 4, 5, 6, 7, 64, body.len()] {
            let mut r = FrameReader::new(Some(300), false);
            for part in body.chunks(chunk) {
                r.feed(part).unwrap();
            }
            assert_eq!(r.finish(), Ok(3), "chunk {chunk}");
        }
    }

    #[test]
    fn a_body_that_ends_inside_a_message_is_truncated() {
        let body = frame(0, b"hello");
        for cut in [1, 4, 5, 9] {
            let mut r = FrameReader::new(None, false);
            r.feed(&body[..cut]).unwrap();
            assert_eq!(r.finish(), Err(FrameError::Truncated { index: 0 }), "{cut}");
        }
        let mut r = FrameReader::new(None, false);
        r.feed(&body).unwrap();
        r.feed(&[0, 0]).unwrap();
        assert_eq!(r.finish(), Err(FrameError::Truncated { index: 1 }));
    }

    #[test]
    fn a_message_over_the_limit_is_refused_at_its_prefix() {
        let mut r = FrameReader::new(Some(10), false);
        r.feed(&frame(0, b"ok")).unwrap();
        // Only the prefix of the second message arrives: refused before its payload.
        assert_eq!(
            r.feed(&[0, 0, 0, 0, 11]),
            Err(FrameError::TooLarge {
                index: 1,
                len: 11,
                max: 10
            })
        );
        let mut r = FrameReader::new(Some(10), false);
        assert!(r.feed(&[0, 0xff, 0xff, 0xff, 0xff]).is_err());
    }

    #[test]
    fn flags_other_than_zero_and_one_are_malformed_and_one_needs_an_encoding() {
        let mut r = FrameReader::new(None, false);
        assert_eq!(
            r.feed(&frame(2, b"x")),
            Err(FrameError::BadFlag { index: 0, flag: 2 })
        );
        let mut r = FrameReader::new(None, false);
        assert_eq!(
            r.feed(&frame(1, b"x")),
            Err(FrameError::CompressedWithoutEncoding { index: 0 })
        );
        let mut r = FrameReader::new(None, true);
        r.feed(&frame(1, b"x")).unwrap();
        assert_eq!(r.finish(), Ok(1));
    }

    #[test]
    fn payload_bytes_are_never_read() {
        let body = frame(0, &[9; 10_000]);
        let mut r = FrameReader::new(None, false);
        let mut asked = 0usize;
        r.feed_with(body.len(), |offset, n| {
            asked += n;
            body.get(offset..offset + n).map(<[u8]>::to_vec)
        })
        .unwrap();
        assert_eq!(asked, FRAME_HEADER_BYTES);
        assert_eq!(r.finish(), Ok(1));
    }

    #[test]
    fn a_prefix_the_host_cannot_hand_over_stops_the_checking() {
        let mut r = FrameReader::new(Some(1), false);
        r.feed_with(10, |_, _| None).unwrap();
        assert!(r.lost());
        r.feed(&[0, 0xff, 0xff, 0xff, 0xff]).unwrap();
        assert_eq!(r.finish(), Ok(0));
    }

    #[test]
    fn method_paths_are_slash_service_slash_method() {
        for ok in [
            &b"/pkg.Service/Method"[..],
            b"/Service/Method",
            b"/a.b.c.Svc/_m1",
            b"/grpc.health.v1.Health/Check",
        ] {
            assert!(is_method_path(ok), "{}", String::from_utf8_lossy(ok));
        }
        for bad in [
            &b""[..],
            b"/",
            b"/pkg.Service",
            b"/pkg.Service/",
            b"pkg.Service/Method",
            b"/pkg..Service/Method",
            b"/pkg.Service/Method/x",
            b"/pkg.Service/Me-thod",
            b"/1pkg.Service/Method",
            b"/pkg.Service/Method?x=1",
        ] {
            assert!(!is_method_path(bad), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[cfg(not(target_arch = "wasm32"))]
    mod properties {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn percent_encoding_is_printable_ascii_and_reversible(s in "\\PC{0,40}|[\\x00-\\x7f]{0,40}") {
                let out = percent_encode(&s);
                prop_assert!(out.bytes().all(|b| (0x20..=0x7e).contains(&b)));
                let mut back = Vec::new();
                let bytes = out.as_bytes();
                let mut i = 0;
                while i < bytes.len() {
                    if bytes[i] == b'%' {
                        let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
                        back.push(u8::from_str_radix(hex, 16).unwrap());
                        i += 3;
                    } else {
                        back.push(bytes[i]);
                        i += 1;
                    }
                }
                prop_assert_eq!(back, s.as_bytes().to_vec());
            }

            #[test]
            fn hostile_bodies_never_panic_the_frame_reader(
                body in proptest::collection::vec(any::<u8>(), 0..64),
                chunk in 1usize..9,
                max in proptest::option::of(0u64..64),
                compression in any::<bool>(),
            ) {
                let mut r = FrameReader::new(max, compression);
                let mut failed = false;
                for part in body.chunks(chunk) {
                    if r.feed(part).is_err() {
                        failed = true;
                        break;
                    }
                }
                if !failed {
                    let _ = r.finish();
                }
            }

            #[test]
            fn content_type_and_method_checks_take_any_bytes(v in proptest::collection::vec(any::<u8>(), 0..40)) {
                let _ = wire(&v);
                let _ = is_method_path(&v);
            }
        }
    }
}
