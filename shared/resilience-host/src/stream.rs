//! The current HTTP stream seen whole: every request header in one call and the buffered request
//! body. (Resuming a paused request lives in [`crate::resume`].)
//!
//! Why a [`Host`] ([`crate::abi`] on the real one): the SDK's `get_map_bytes` unwraps header
//! *names* as UTF-8 and its `get_buffer` panics on any status it does not expect; a panic traps
//! the worker's VM. Here the serialized map is parsed with every length checked, and every status
//! is a value. Reading the whole header map costs one host call, cheaper than the several
//! single-header reads a validator would otherwise make.

use proxy_wasm::types::{BufferType, MapType};

use crate::host::Host;
use crate::wasm::WasmHost;

/// Every request header, pseudo-headers included, in wire order. `None` when the host refused or
/// sent a map that does not parse.
pub fn request_headers() -> Option<HeaderMap> {
    request_headers_on(&WasmHost)
}

/// [`request_headers`] on `host`.
pub fn request_headers_on<H: Host>(host: &H) -> Option<HeaderMap> {
    let bytes = host
        .get_header_map_pairs(MapType::HttpRequestHeaders)
        .ok()
        .flatten()?;
    HeaderMap::parse(bytes)
}

/// Up to `max` bytes of the buffered request body from `start`. `None` when the host refused.
pub fn request_body(start: usize, max: usize) -> Option<Vec<u8>> {
    request_body_on(&WasmHost, start, max)
}

/// [`request_body`] on `host`.
pub fn request_body_on<H: Host>(host: &H, start: usize, max: usize) -> Option<Vec<u8>> {
    host.get_buffer(BufferType::HttpRequestBody, start, max)
        .ok()
        .flatten()
}

/// A header map as the host serialized it, checked once and then read in place.
///
/// Why not name-value pairs: copying every name and value out costs two allocations per header
/// on every request, for maps that are mostly searched for a few names. The serialized form is a
/// little-endian `u32` count, then `count` pairs of `u32` lengths, then each name and value
/// followed by a NUL.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HeaderMap {
    /// The serialized map, consistent ([`HeaderMap::parse`]); empty for no headers.
    bytes: Vec<u8>,
}

impl HeaderMap {
    /// Takes `bytes` if every length in them is consistent; `None` otherwise. No bytes at all is
    /// an empty map.
    pub fn parse(bytes: Vec<u8>) -> Option<Self> {
        if bytes.is_empty() {
            return Some(HeaderMap::default());
        }
        let mut pairs = Pairs::over(&bytes)?;
        for _ in pairs.by_ref() {}
        let whole = !pairs.failed && pairs.data_at <= bytes.len();
        whole.then_some(HeaderMap { bytes })
    }

    /// Every `(name, value)`, in the host's order.
    pub fn iter(&self) -> Pairs<'_> {
        Pairs::over(&self.bytes).unwrap_or_default()
    }

    pub fn len(&self) -> usize {
        self.iter().count
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The serialized map, as the host would send it.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }
}

impl From<&[(&[u8], &[u8])]> for HeaderMap {
    fn from(pairs: &[(&[u8], &[u8])]) -> Self {
        let mut bytes = Vec::new();
        let len = |n: usize| u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes();
        bytes.extend_from_slice(&len(pairs.len()));
        for (k, v) in pairs {
            bytes.extend_from_slice(&len(k.len()));
            bytes.extend_from_slice(&len(v.len()));
        }
        for (k, v) in pairs {
            bytes.extend_from_slice(k);
            bytes.push(0);
            bytes.extend_from_slice(v);
            bytes.push(0);
        }
        HeaderMap { bytes }
    }
}

impl From<Vec<(Vec<u8>, Vec<u8>)>> for HeaderMap {
    fn from(pairs: Vec<(Vec<u8>, Vec<u8>)>) -> Self {
        let refs: Vec<(&[u8], &[u8])> = pairs
            .iter()
            .map(|(k, v)| (k.as_slice(), v.as_slice()))
            .collect();
        HeaderMap::from(refs.as_slice())
    }
}

fn u32_at(bytes: &[u8], at: usize) -> Option<usize> {
    let b = bytes.get(at..at.checked_add(4)?)?;
    let arr: [u8; 4] = b.try_into().ok()?;
    usize::try_from(u32::from_le_bytes(arr)).ok()
}

/// The pairs of a serialized map, read in place. Stops at the first inconsistency (which a
/// [`HeaderMap`] never has).
#[derive(Clone, Debug, Default)]
pub struct Pairs<'a> {
    bytes: &'a [u8],
    count: usize,
    next: usize,
    data_at: usize,
    failed: bool,
}

impl<'a> Pairs<'a> {
    fn over(bytes: &'a [u8]) -> Option<Self> {
        if bytes.is_empty() {
            return Some(Pairs::default());
        }
        let count = u32_at(bytes, 0)?;
        let data_at = count.checked_mul(8)?.checked_add(4)?;
        if data_at > bytes.len() {
            return None;
        }
        Some(Pairs {
            bytes,
            count,
            next: 0,
            data_at,
            failed: false,
        })
    }

    fn step(&mut self) -> Option<(&'a [u8], &'a [u8])> {
        let at = self.next.checked_mul(8)?.checked_add(4)?;
        let key_len = u32_at(self.bytes, at)?;
        let value_len = u32_at(self.bytes, at.checked_add(4)?)?;
        let p = self.data_at;
        let key = self.bytes.get(p..p.checked_add(key_len)?)?;
        let p = p.checked_add(key_len)?.checked_add(1)?;
        let value = self.bytes.get(p..p.checked_add(value_len)?)?;
        self.data_at = p.checked_add(value_len)?.checked_add(1)?;
        Some((key, value))
    }
}

impl<'a> Iterator for Pairs<'a> {
    type Item = (&'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.next >= self.count {
            return None;
        }
        let pair = self.step();
        match pair {
            Some(_) => self.next = self.next.saturating_add(1),
            None => self.failed = true,
        }
        pair
    }
}

/// Parses a serialized map into owned pairs (see [`HeaderMap`]); any inconsistency is `None`.
pub fn parse_header_map(bytes: &[u8]) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
    let map = HeaderMap::parse(bytes.to_vec())?;
    Some(map.iter().map(|(k, v)| (k.to_vec(), v.to_vec())).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serialize(pairs: &[(&[u8], &[u8])]) -> Vec<u8> {
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

    #[test]
    fn a_serialized_map_parses_back_including_non_utf8_bytes() {
        let pairs: &[(&[u8], &[u8])] =
            &[(b":path", b"/a"), (b"x-bin", b"\xff\x00\xfe"), (b"e", b"")];
        let parsed = parse_header_map(&serialize(pairs)).unwrap();
        assert_eq!(parsed.len(), 3);
        assert_eq!(parsed[1], (b"x-bin".to_vec(), b"\xff\x00\xfe".to_vec()));
        assert_eq!(parse_header_map(&[]), Some(vec![]));
    }

    #[test]
    fn truncated_or_lying_maps_are_none_not_a_panic() {
        let full = serialize(&[(b"name", b"value")]);
        for cut in 1..full.len() - 1 {
            assert_eq!(parse_header_map(&full[..cut]), None, "cut at {cut}");
        }
        let mut lying = full.clone();
        lying[0] = 0xff;
        assert_eq!(parse_header_map(&lying), None);
        let mut huge = full;
        huge[4] = 0xff;
        huge[7] = 0xff;
        assert_eq!(parse_header_map(&huge), None);
    }

    #[test]
    fn a_header_map_reads_its_pairs_in_place_and_refuses_what_does_not_parse() {
        let pairs: &[(&[u8], &[u8])] = &[(b":path", b"/a"), (b"x", b"1"), (b"x", b"2")];
        let map = HeaderMap::parse(serialize(pairs)).unwrap();
        assert_eq!(map.iter().collect::<Vec<_>>(), pairs);
        assert_eq!(map.len(), 3);
        assert_eq!(HeaderMap::from(pairs), map);
        assert_eq!(HeaderMap::parse(Vec::new()).map(|m| m.len()), Some(0));
        let full = serialize(pairs);
        for cut in 1..full.len() - 1 {
            assert_eq!(HeaderMap::parse(full[..cut].to_vec()), None, "cut at {cut}");
        }
    }
}
