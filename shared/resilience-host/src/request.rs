//! A lazy view of the current request for route matching.
//!
//! Route matching may need the Envoy route name (a property read), the path, the method or a
//! header. Each is fetched at most once per request and only if a matcher asks for it: host calls
//! cost microseconds each. Header values are read as bytes: the SDK's `String` getters unwrap
//! UTF-8 and would trap the VM on a hostile header, so non-UTF-8 values are treated as absent.
//!
//! Reads and writes go through a [`Host`] ([`crate::abi`] on the real one): the SDK's `get_map_value_bytes` and
//! `set_map_value` panic on any status but the ones they expect, and Envoy 1.40 answers
//! `BadArgument` when, for example, request headers are touched during the response phase. Here
//! such a read is simply "absent" and such a write is reported (`false`), never a trap. The
//! functions without a host parameter are the same calls on [`WasmHost`], for code not yet written
//! against the trait.

use proxy_wasm::types::MapType;
use resilience_core::routes::RequestView;

use crate::host::Host;
use crate::wasm::WasmHost;

/// One header's raw value from a map; `None` when absent or when the host says anything but Ok.
pub fn map_value_on<H: Host>(host: &H, map: MapType, name: &str) -> Option<Vec<u8>> {
    host.get_header_map_value(map, name).ok().flatten()
}

/// One header of a map as text, if present and valid UTF-8.
pub fn header_on<H: Host>(host: &H, map: MapType, name: &str) -> Option<String> {
    let bytes = map_value_on(host, map, name)?;
    String::from_utf8(bytes).ok()
}

/// The response's `:status` on `host`, if present and a 3-digit number.
pub fn response_status_on<H: Host>(host: &H) -> Option<u16> {
    let v = map_value_on(host, MapType::HttpResponseHeaders, ":status")?;
    if v.len() != 3 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(v.iter().fold(0u16, |n, b| n * 10 + u16::from(b - b'0')))
}

/// Whether the request is surely not gRPC, known without a host call: its `content-type` is
/// already held (in the pack, once the validator read the request's headers) and is not a gRPC
/// type. Read on the request's headers; `false` when only a call would tell. Why: a stage that
/// knows the request is plain HTTP can skip reading `grpc-status` on the response, which no
/// plain HTTP answer carries, and that read is a host call per request.
pub fn known_plain_http_on<H: Host>(host: &H) -> bool {
    host.known_header_map_value(MapType::HttpRequestHeaders, "content-type")
        .is_some_and(|ct| {
            ct.as_deref()
                .and_then(resilience_core::grpc::wire)
                .is_none()
        })
}

/// Set (or replace) header `name` of `map` on `host`. False if the host refused (e.g. the map is
/// not available in this phase).
pub fn set_header_on<H: Host>(host: &H, map: MapType, name: &str, value: &str) -> bool {
    host.replace_header_map_value(map, name, value).is_ok()
}

/// Remove header `name` (every value of it) from `map` on `host`. False if the host refused.
pub fn remove_header_on<H: Host>(host: &H, map: MapType, name: &str) -> bool {
    host.remove_header_map_value(map, name).is_ok()
}

/// Read a request header as text, if present and valid UTF-8.
pub fn request_header(name: &str) -> Option<String> {
    header_on(&WasmHost, MapType::HttpRequestHeaders, name)
}

/// Read a response header as text, if present and valid UTF-8.
pub fn response_header(name: &str) -> Option<String> {
    header_on(&WasmHost, MapType::HttpResponseHeaders, name)
}

/// Read a response trailer as text, if present and valid UTF-8.
pub fn response_trailer(name: &str) -> Option<String> {
    header_on(&WasmHost, MapType::HttpResponseTrailers, name)
}

/// Raw bytes of a request header.
pub fn request_header_bytes(name: &str) -> Option<Vec<u8>> {
    map_value_on(&WasmHost, MapType::HttpRequestHeaders, name)
}

/// Raw bytes of a response header.
pub fn response_header_bytes(name: &str) -> Option<Vec<u8>> {
    map_value_on(&WasmHost, MapType::HttpResponseHeaders, name)
}

/// Raw bytes of a response trailer.
pub fn response_trailer_bytes(name: &str) -> Option<Vec<u8>> {
    map_value_on(&WasmHost, MapType::HttpResponseTrailers, name)
}

/// The response's `:status`, if present and a 3-digit number.
pub fn response_status() -> Option<u16> {
    response_status_on(&WasmHost)
}

/// Set (or replace) a response header. False if the host refused (e.g. the response headers are
/// not available in this phase).
pub fn set_response_header(name: &str, value: &str) -> bool {
    set_header_on(&WasmHost, MapType::HttpResponseHeaders, name, value)
}

/// Set (or replace) a request header. False if the host refused.
pub fn set_request_header(name: &str, value: &str) -> bool {
    set_header_on(&WasmHost, MapType::HttpRequestHeaders, name, value)
}

/// Remove a request header (every value of it). False if the host refused.
pub fn remove_request_header(name: &str) -> bool {
    remove_header_on(&WasmHost, MapType::HttpRequestHeaders, name)
}

/// The current request on host `H`, fetched lazily.
#[derive(Default)]
pub struct HostRequest<H: Host = WasmHost> {
    host: H,
    route_name: Option<Option<String>>,
    path: Option<Option<String>>,
    method: Option<Option<String>>,
    headers: Vec<(String, Option<String>)>,
}

impl HostRequest {
    /// The current request on the real host.
    pub fn new() -> Self {
        Self::default()
    }
}

impl<H: Host> HostRequest<H> {
    /// The current request on `host` (pass `&host` to leave the host where it lives).
    pub fn on(host: H) -> Self {
        HostRequest {
            host,
            route_name: None,
            path: None,
            method: None,
            headers: Vec::new(),
        }
    }
}

/// At most this many distinct headers are cached per request (bounded by the config's matchers).
const MAX_CACHED_HEADERS: usize = 32;

impl<H: Host> RequestView for HostRequest<H> {
    fn route_name(&mut self) -> Option<&str> {
        let host = &self.host;
        self.route_name
            .get_or_insert_with(|| crate::props::route_name_on(host))
            .as_deref()
    }

    fn path(&mut self) -> Option<&str> {
        let host = &self.host;
        self.path
            .get_or_insert_with(|| header_on(host, MapType::HttpRequestHeaders, ":path"))
            .as_deref()
    }

    fn method(&mut self) -> Option<&str> {
        let host = &self.host;
        self.method
            .get_or_insert_with(|| header_on(host, MapType::HttpRequestHeaders, ":method"))
            .as_deref()
    }

    fn header(&mut self, name: &str) -> Option<&str> {
        let pos = match self.headers.iter().position(|(n, _)| n == name) {
            Some(p) => p,
            None => {
                let v = header_on(&self.host, MapType::HttpRequestHeaders, name);
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
