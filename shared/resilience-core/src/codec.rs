//! Compact, versioned binary encoding for state kept in the proxy's shared data.
//!
//! # Why a hand-rolled codec
//!
//! Every worker VM in the proxy sees the same shared-data bytes, and during a rolling config or
//! plugin update two builds of a filter can read each other's state. The bytes therefore have to
//! say what they are (a *kind* tag) and which layout they use (a *version*), so a reader that does
//! not understand them can throw them away and start fresh instead of misreading a breaker's
//! state. serde formats would add a dependency and tens of kilobytes to every `.wasm`; the state
//! is a handful of integers, so a fixed little-endian layout is smaller, faster and easy to audit.
//!
//! # Layout
//!
//! ```text
//! byte 0      kind tag   (which state type, chosen by the owner of the state)
//! byte 1      version    (bumped whenever the layout after it changes)
//! byte 2..    fields, little-endian, fixed width, in the order they were written
//! ```
//!
//! Decoding never panics, whatever the input: every read checks the remaining length and returns a
//! [`DecodeError`], whose [`DecodeError::reason`] is a stable stats name.

use core::fmt;

/// Writes one value: the kind and version header, then fields in order.
#[derive(Debug, Clone)]
pub struct Encoder {
    buf: Vec<u8>,
}

impl Encoder {
    /// Starts a value of the given kind and layout version.
    pub fn new(kind: u8, version: u8) -> Self {
        let mut buf = Vec::with_capacity(32);
        buf.push(kind);
        buf.push(version);
        Self { buf }
    }

    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.buf.push(v);
        self
    }

    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }

    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }

    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }

    pub fn i64(&mut self, v: i64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// One byte, `0` or `1`; the decoder rejects anything else as [`DecodeError::Invalid`].
    pub fn bool(&mut self, v: bool) -> &mut Self {
        self.buf.push(u8::from(v));
        self
    }

    /// Bytes written so far, header included.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Never true: the header is always there. Present for clippy's `len_without_is_empty`.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub fn finish(self) -> Vec<u8> {
        self.buf
    }
}

/// Why bytes could not be decoded. The caller usually counts it and starts from fresh state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// No bytes at all (nothing stored yet).
    Empty,
    /// The bytes belong to another state type.
    WrongKind { found: u8 },
    /// Same state type, a layout this build does not read (an older or newer filter wrote it).
    WrongVersion { found: u8 },
    /// The bytes end before the layout does.
    Truncated,
    /// Bytes left over after the last field.
    TrailingBytes,
    /// A field holds a value the layout does not allow.
    Invalid,
}

impl DecodeError {
    /// A stable, lowercase name for stats and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::Empty => "empty",
            DecodeError::WrongKind { .. } => "wrong_kind",
            DecodeError::WrongVersion { .. } => "wrong_version",
            DecodeError::Truncated => "truncated",
            DecodeError::TrailingBytes => "trailing_bytes",
            DecodeError::Invalid => "invalid",
        }
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::WrongKind { found } => write!(f, "wrong_kind (found {found})"),
            DecodeError::WrongVersion { found } => write!(f, "wrong_version (found {found})"),
            other => f.write_str(other.reason()),
        }
    }
}

impl std::error::Error for DecodeError {}

/// Reads one value written by [`Encoder`], checking the header first.
#[derive(Debug, Clone)]
pub struct Decoder<'a> {
    rest: &'a [u8],
}

impl<'a> Decoder<'a> {
    /// Checks the kind and version header and positions the reader on the first field.
    pub fn new(bytes: &'a [u8], kind: u8, version: u8) -> Result<Self, DecodeError> {
        let (&found_kind, rest) = bytes.split_first().ok_or(DecodeError::Empty)?;
        if found_kind != kind {
            return Err(DecodeError::WrongKind { found: found_kind });
        }
        let (&found_version, rest) = rest.split_first().ok_or(DecodeError::Truncated)?;
        if found_version != version {
            return Err(DecodeError::WrongVersion {
                found: found_version,
            });
        }
        Ok(Self { rest })
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.rest.len()
    }

    fn take<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let (head, rest) = self
            .rest
            .split_at_checked(N)
            .ok_or(DecodeError::Truncated)?;
        let array = <[u8; N]>::try_from(head).map_err(|_| DecodeError::Truncated)?;
        self.rest = rest;
        Ok(array)
    }

    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        self.take::<1>().map(u8::from_le_bytes)
    }

    pub fn u16(&mut self) -> Result<u16, DecodeError> {
        self.take::<2>().map(u16::from_le_bytes)
    }

    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        self.take::<4>().map(u32::from_le_bytes)
    }

    pub fn u64(&mut self) -> Result<u64, DecodeError> {
        self.take::<8>().map(u64::from_le_bytes)
    }

    pub fn i64(&mut self) -> Result<i64, DecodeError> {
        self.take::<8>().map(i64::from_le_bytes)
    }

    pub fn bool(&mut self) -> Result<bool, DecodeError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(DecodeError::Invalid),
        }
    }

    /// Ends decoding: a value followed by extra bytes is not the value this layout describes.
    pub fn finish(self) -> Result<(), DecodeError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes)
        }
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    const KIND: u8 = 7;
    const VERSION: u8 = 2;

    #[test]
    fn fields_read_back_in_the_order_they_were_written() {
        let mut enc = Encoder::new(KIND, VERSION);
        enc.u8(1)
            .u16(0xBEEF)
            .u32(0xDEAD_BEEF)
            .u64(u64::MAX - 1)
            .i64(-42)
            .bool(true)
            .bool(false);
        let bytes = enc.finish();

        let mut dec = Decoder::new(&bytes, KIND, VERSION).unwrap();
        assert_eq!(dec.u8(), Ok(1));
        assert_eq!(dec.u16(), Ok(0xBEEF));
        assert_eq!(dec.u32(), Ok(0xDEAD_BEEF));
        assert_eq!(dec.u64(), Ok(u64::MAX - 1));
        assert_eq!(dec.i64(), Ok(-42));
        assert_eq!(dec.bool(), Ok(true));
        assert_eq!(dec.bool(), Ok(false));
        assert_eq!(dec.finish(), Ok(()));
    }

    #[test]
    fn header_is_kind_then_version_then_little_endian_fields() {
        let mut enc = Encoder::new(KIND, VERSION);
        enc.u16(0x0102).u32(0x0304_0506);
        assert_eq!(
            enc.finish(),
            vec![KIND, VERSION, 0x02, 0x01, 0x06, 0x05, 0x04, 0x03]
        );
    }

    #[test]
    fn nothing_stored_decodes_as_empty() {
        assert_eq!(
            Decoder::new(&[], KIND, VERSION).unwrap_err(),
            DecodeError::Empty
        );
    }

    #[test]
    fn another_state_type_is_rejected_by_its_kind() {
        let bytes = Encoder::new(KIND + 1, VERSION).finish();
        assert_eq!(
            Decoder::new(&bytes, KIND, VERSION).unwrap_err(),
            DecodeError::WrongKind { found: KIND + 1 }
        );
    }

    #[test]
    fn a_layout_from_another_build_is_rejected_by_its_version() {
        let bytes = Encoder::new(KIND, VERSION + 1).finish();
        assert_eq!(
            Decoder::new(&bytes, KIND, VERSION).unwrap_err(),
            DecodeError::WrongVersion { found: VERSION + 1 }
        );
    }

    #[test]
    fn a_kind_byte_without_a_version_is_truncated() {
        assert_eq!(
            Decoder::new(&[KIND], KIND, VERSION).unwrap_err(),
            DecodeError::Truncated
        );
    }

    #[test]
    fn reading_past_the_end_is_truncated_and_consumes_nothing() {
        let mut enc = Encoder::new(KIND, VERSION);
        enc.u16(9);
        let bytes = enc.finish();
        let mut dec = Decoder::new(&bytes, KIND, VERSION).unwrap();
        assert_eq!(dec.u32(), Err(DecodeError::Truncated));
        assert_eq!(dec.remaining(), 2);
        assert_eq!(dec.u16(), Ok(9));
    }

    #[test]
    fn leftover_bytes_are_rejected_at_finish() {
        let mut enc = Encoder::new(KIND, VERSION);
        enc.u8(1).u8(2);
        let bytes = enc.finish();
        let mut dec = Decoder::new(&bytes, KIND, VERSION).unwrap();
        assert_eq!(dec.u8(), Ok(1));
        assert_eq!(dec.finish(), Err(DecodeError::TrailingBytes));
    }

    #[test]
    fn a_bool_byte_other_than_zero_or_one_is_invalid() {
        let bytes = [KIND, VERSION, 2];
        let mut dec = Decoder::new(&bytes, KIND, VERSION).unwrap();
        assert_eq!(dec.bool(), Err(DecodeError::Invalid));
    }

    #[test]
    fn every_error_has_a_stable_stats_name() {
        let all = [
            (DecodeError::Empty, "empty"),
            (DecodeError::WrongKind { found: 1 }, "wrong_kind"),
            (DecodeError::WrongVersion { found: 1 }, "wrong_version"),
            (DecodeError::Truncated, "truncated"),
            (DecodeError::TrailingBytes, "trailing_bytes"),
            (DecodeError::Invalid, "invalid"),
        ];
        for (error, name) in all {
            assert_eq!(error.reason(), name);
        }
        assert_eq!(
            DecodeError::WrongVersion { found: 3 }.to_string(),
            "wrong_version (found 3)"
        );
    }

    #[cfg(not(target_arch = "wasm32"))]
    mod properties {
        use super::super::*;
        use proptest::prelude::*;

        #[derive(Debug, Clone, PartialEq)]
        enum Field {
            U8(u8),
            U16(u16),
            U32(u32),
            U64(u64),
            I64(i64),
            Bool(bool),
        }

        fn field() -> impl Strategy<Value = Field> {
            prop_oneof![
                any::<u8>().prop_map(Field::U8),
                any::<u16>().prop_map(Field::U16),
                any::<u32>().prop_map(Field::U32),
                any::<u64>().prop_map(Field::U64),
                any::<i64>().prop_map(Field::I64),
                any::<bool>().prop_map(Field::Bool),
            ]
        }

        fn read(dec: &mut Decoder<'_>, like: &Field) -> Result<Field, DecodeError> {
            Ok(match like {
                Field::U8(_) => Field::U8(dec.u8()?),
                Field::U16(_) => Field::U16(dec.u16()?),
                Field::U32(_) => Field::U32(dec.u32()?),
                Field::U64(_) => Field::U64(dec.u64()?),
                Field::I64(_) => Field::I64(dec.i64()?),
                Field::Bool(_) => Field::Bool(dec.bool()?),
            })
        }

        proptest! {
            #[test]
            fn any_sequence_of_fields_round_trips(
                kind in any::<u8>(),
                version in any::<u8>(),
                fields in proptest::collection::vec(field(), 0..40),
            ) {
                let mut enc = Encoder::new(kind, version);
                for f in &fields {
                    match *f {
                        Field::U8(v) => enc.u8(v),
                        Field::U16(v) => enc.u16(v),
                        Field::U32(v) => enc.u32(v),
                        Field::U64(v) => enc.u64(v),
                        Field::I64(v) => enc.i64(v),
                        Field::Bool(v) => enc.bool(v),
                    };
                }
                let bytes = enc.finish();
                let mut dec = Decoder::new(&bytes, kind, version).unwrap();
                for f in &fields {
                    prop_assert_eq!(&read(&mut dec, f).unwrap(), f);
                }
                prop_assert_eq!(dec.finish(), Ok(()));
            }

            #[test]
            fn arbitrary_bytes_never_panic_whatever_is_read(
                bytes in proptest::collection::vec(any::<u8>(), 0..64),
                reads in proptest::collection::vec(field(), 0..20),
            ) {
                if let Ok(mut dec) = Decoder::new(&bytes, 7, 2) {
                    for like in &reads {
                        let before = dec.remaining();
                        if read(&mut dec, like).is_err() {
                            prop_assert!(dec.remaining() <= before);
                        }
                    }
                    let _ = dec.finish();
                }
            }
        }
    }
}
