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

/// Every request header as `(name, value)` bytes, pseudo-headers included, in wire order.
/// `None` when the host refused or sent a map that does not parse.
pub fn request_headers() -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
    request_headers_on(&WasmHost)
}

/// [`request_headers`] on `host`.
pub fn request_headers_on<H: Host>(host: &H) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
    let bytes = host
        .get_header_map_pairs(MapType::HttpRequestHeaders)
        .ok()
        .flatten()?;
    parse_header_map(&bytes)
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

/// Parses the proxy-wasm serialized map: a little-endian `u32` count, then `count` pairs of
/// `u32` lengths, then each name and value followed by a NUL. Any inconsistency is `None`.
pub fn parse_header_map(bytes: &[u8]) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
    if bytes.is_empty() {
        return Some(Vec::new());
    }
    let read_u32 = |at: usize| -> Option<usize> {
        let b = bytes.get(at..at.checked_add(4)?)?;
        let arr: [u8; 4] = b.try_into().ok()?;
        usize::try_from(u32::from_le_bytes(arr)).ok()
    };
    let count = read_u32(0)?;
    let sizes_end = count.checked_mul(8)?.checked_add(4)?;
    if sizes_end > bytes.len() {
        return None;
    }
    let mut out = Vec::with_capacity(count);
    let mut p = sizes_end;
    for i in 0..count {
        let at = i.checked_mul(8)?.checked_add(4)?;
        let key_len = read_u32(at)?;
        let value_len = read_u32(at.checked_add(4)?)?;
        let key = bytes.get(p..p.checked_add(key_len)?)?.to_vec();
        p = p.checked_add(key_len)?.checked_add(1)?;
        let value = bytes.get(p..p.checked_add(value_len)?)?.to_vec();
        p = p.checked_add(value_len)?.checked_add(1)?;
        out.push((key, value));
    }
    if p > bytes.len() {
        return None;
    }
    Some(out)
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
}
