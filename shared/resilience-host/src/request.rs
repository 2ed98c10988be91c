//! A lazy view of the current request for route matching.
//!
//! Route matching may need the Envoy route name (a property read), the path, the method or a
//! header. Each is fetched at most once per request and only if a matcher asks for it: host calls
//! cost microseconds each. Header values are read as bytes: the SDK's `String` getters unwrap
//! UTF-8 and would trap the VM on a hostile header, so non-UTF-8 values are treated as absent.
//!
//! Reads go through our own import of `proxy_get_header_map_value`: the SDK's
//! `get_map_value_bytes` panics on any status but Ok/NotFound, and Envoy 1.40 answers
//! `BadArgument` when, for example, request headers are read during the response phase. Here any
//! such status is simply "absent".

use proxy_wasm::hostcalls;
use proxy_wasm::types::MapType;
use resilience_core::routes::RequestView;

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

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_get_header_map_value(
        map_type: u32,
        key_data: *const u8,
        key_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
    ) -> u32;
}

const STATUS_OK: u32 = 0;

/// One header's raw value from a map; `None` when absent or when the host says anything but Ok.
fn map_value(map: MapType, name: &str) -> Option<Vec<u8>> {
    let mut data: *mut u8 = core::ptr::null_mut();
    let mut size: usize = 0;
    // SAFETY: the out-pointers are valid for writes; the host fills them with memory allocated
    // through the SDK's exported `proxy_on_memory_allocate` (a forgotten `Vec<u8>` of `size`
    // bytes), which `Vec::from_raw_parts` takes back, as the SDK itself does.
    let status = unsafe {
        proxy_get_header_map_value(map as u32, name.as_ptr(), name.len(), &mut data, &mut size)
    };
    let value = if data.is_null() {
        Vec::new()
    } else {
        // SAFETY: see above.
        unsafe { Vec::from_raw_parts(data, size, size) }
    };
    (status == STATUS_OK).then_some(value)
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

/// Set (or replace) a response header.
pub fn set_response_header(name: &str, value: &str) {
    let _ = hostcalls::set_map_value(MapType::HttpResponseHeaders, name, Some(value));
}

/// Set (or replace) a request header.
pub fn set_request_header(name: &str, value: &str) {
    let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, name, Some(value));
}

/// Remove a request header (every value of it).
pub fn remove_request_header(name: &str) {
    let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, name, None);
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
