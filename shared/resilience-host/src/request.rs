//! A lazy view of the current request for route matching.
//!
//! Route matching may need the Envoy route name (a property read), the path, the method or a
//! header. Each is fetched at most once per request and only if a matcher asks for it: host calls
//! cost microseconds each. Header values are read as bytes: the SDK's `String` getters unwrap
//! UTF-8 and would trap the VM on a hostile header, so non-UTF-8 values are treated as absent.
//!
//! Reads and writes go through [`crate::abi`]: the SDK's `get_map_value_bytes` and
//! `set_map_value` panic on any status but the ones they expect, and Envoy 1.40 answers
//! `BadArgument` when, for example, request headers are touched during the response phase. Here
//! such a read is simply "absent" and such a write is reported (`false`), never a trap.

use proxy_wasm::types::MapType;
use resilience_core::routes::RequestView;

use crate::abi;

/// Read a request header as text, if present and valid UTF-8.
pub fn request_header(name: &str) -> Option<String> {
    header(MapType::HttpRequestHeaders, name)
}

/// Read a response header as text, if present and valid UTF-8.
pub fn response_header(name: &str) -> Option<String> {
    header(MapType::HttpResponseHeaders, name)
}

/// Read a response trailer as text, if present and valid UTF-8.
pub fn response_trailer(name: &str) -> Option<String> {
    header(MapType::HttpResponseTrailers, name)
}

/// One header's raw value from a map; `None` when absent or when the host says anything but Ok.
fn map_value(map: MapType, name: &str) -> Option<Vec<u8>> {
    abi::get_header_map_value(map, name).ok().flatten()
}

/// Raw bytes of a request header.
pub fn request_header_bytes(name: &str) -> Option<Vec<u8>> {
    map_value(MapType::HttpRequestHeaders, name)
}

/// Raw bytes of a response header.
pub fn response_header_bytes(name: &str) -> Option<Vec<u8>> {
    map_value(MapType::HttpResponseHeaders, name)
}

/// Raw bytes of a response trailer.
pub fn response_trailer_bytes(name: &str) -> Option<Vec<u8>> {
    map_value(MapType::HttpResponseTrailers, name)
}

/// The response's `:status`, if present and a 3-digit number.
pub fn response_status() -> Option<u16> {
    let v = response_header_bytes(":status")?;
    if v.len() != 3 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(v.iter().fold(0u16, |n, b| n * 10 + u16::from(b - b'0')))
}

/// Set (or replace) a response header. False if the host refused (e.g. the response headers are
/// not available in this phase).
pub fn set_response_header(name: &str, value: &str) -> bool {
    abi::replace_header_map_value(MapType::HttpResponseHeaders, name, value).is_ok()
}

/// Set (or replace) a request header. False if the host refused.
pub fn set_request_header(name: &str, value: &str) -> bool {
    abi::replace_header_map_value(MapType::HttpRequestHeaders, name, value).is_ok()
}

/// Remove a request header (every value of it). False if the host refused.
pub fn remove_request_header(name: &str) -> bool {
    abi::remove_header_map_value(MapType::HttpRequestHeaders, name).is_ok()
}

fn header(map: MapType, name: &str) -> Option<String> {
    let bytes = map_value(map, name)?;
    String::from_utf8(bytes).ok()
}

/// The current request, fetched lazily.
#[derive(Default)]
pub struct HostRequest {
    route_name: Option<Option<String>>,
    path: Option<Option<String>>,
    method: Option<Option<String>>,
    headers: Vec<(String, Option<String>)>,
}

impl HostRequest {
    pub fn new() -> Self {
        Self::default()
    }
}

/// At most this many distinct headers are cached per request (bounded by the config's matchers).
const MAX_CACHED_HEADERS: usize = 32;

impl RequestView for HostRequest {
    fn route_name(&mut self) -> Option<&str> {
        self.route_name
            .get_or_insert_with(crate::props::route_name)
            .as_deref()
    }

    fn path(&mut self) -> Option<&str> {
        self.path
            .get_or_insert_with(|| request_header(":path"))
            .as_deref()
    }

    fn method(&mut self) -> Option<&str> {
        self.method
            .get_or_insert_with(|| request_header(":method"))
            .as_deref()
    }

    fn header(&mut self, name: &str) -> Option<&str> {
        let pos = match self.headers.iter().position(|(n, _)| n == name) {
            Some(p) => p,
            None => {
                let v = request_header(name);
                if self.headers.len() >= MAX_CACHED_HEADERS {
                    return None;
                }
                self.headers.push((name.to_owned(), v));
                self.headers.len().saturating_sub(1)
            }
        };
        self.headers.get(pos).and_then(|(_, v)| v.as_deref())
    }
}
