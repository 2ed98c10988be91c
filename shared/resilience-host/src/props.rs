//! Typed reads of Envoy properties (`get_property`).
//!
//! Envoy returns numbers as little-endian 8-byte integers, booleans as one byte and strings raw.
//! A missing or malformed value is `None`, and so is a host error (read through [`crate::abi`]:
//! the SDK's `get_property` panics on statuses it does not expect): callers fall back rather than
//! fail.
//!
//! Each read takes the [`Host`] it runs on (`…_on`); the functions without the suffix are the same
//! reads on [`WasmHost`], for code not yet written against the trait.

use crate::host::Host;
use crate::wasm::WasmHost;

/// Raw bytes of a property; `None` when missing, empty (Envoy hands an empty value back as no
/// bytes at all) or unreadable.
pub fn bytes_on<H: Host>(host: &H, path: &[&str]) -> Option<Vec<u8>> {
    host.get_property(path)
        .ok()
        .flatten()
        .filter(|b| !b.is_empty())
}

/// A property holding an integer (8 bytes little-endian; shorter values are zero-extended).
pub fn u64_on<H: Host>(host: &H, path: &[&str]) -> Option<u64> {
    let b = bytes_on(host, path)?;
    if b.is_empty() || b.len() > 8 {
        return None;
    }
    let mut buf = [0u8; 8];
    for (dst, src) in buf.iter_mut().zip(b.iter()) {
        *dst = *src;
    }
    Some(u64::from_le_bytes(buf))
}

/// A property holding text; invalid UTF-8 is replaced, never trusted.
pub fn string_on<H: Host>(host: &H, path: &[&str]) -> Option<String> {
    bytes_on(host, path).map(|b| String::from_utf8_lossy(&b).into_owned())
}

/// The name of the plugin instance (`config.name` of the Wasm filter), to namespace shared data.
pub fn plugin_name_on<H: Host>(host: &H) -> Option<String> {
    string_on(host, &["plugin_name"]).filter(|s| !s.is_empty())
}

/// The Envoy route's `name` for the current request.
pub fn route_name_on<H: Host>(host: &H) -> Option<String> {
    string_on(host, &["xds", "route_name"]).filter(|s| !s.is_empty())
}

/// The upstream cluster's name for the current request.
pub fn cluster_name_on<H: Host>(host: &H) -> Option<String> {
    string_on(host, &["xds", "cluster_name"]).filter(|s| !s.is_empty())
}

/// [`bytes_on`] the real host.
pub fn bytes(path: &[&str]) -> Option<Vec<u8>> {
    bytes_on(&WasmHost, path)
}

/// [`u64_on`] the real host.
pub fn u64(path: &[&str]) -> Option<u64> {
    u64_on(&WasmHost, path)
}

/// [`string_on`] the real host.
pub fn string(path: &[&str]) -> Option<String> {
    string_on(&WasmHost, path)
}

/// [`plugin_name_on`] the real host.
pub fn plugin_name() -> Option<String> {
    plugin_name_on(&WasmHost)
}

/// [`route_name_on`] the real host.
pub fn route_name() -> Option<String> {
    route_name_on(&WasmHost)
}

/// [`cluster_name_on`] the real host.
pub fn cluster_name() -> Option<String> {
    cluster_name_on(&WasmHost)
}
