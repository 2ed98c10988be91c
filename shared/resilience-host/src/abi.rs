//! The proxy-wasm host calls the pack makes, each declared once and wrapped so it cannot trap.
//!
//! Why: the proxy-wasm SDK answers almost every status it did not expect with `panic!`, and a
//! panic traps the worker's VM, taking every stream on it down. Hosts do answer such statuses:
//! Envoy returns `BadArgument` when a header map is touched in the wrong phase, other hosts
//! `Unimplemented`. (The SDK also declares its imports as returning its `Status` enum, which has
//! no variant for several codes the ABI defines.) Here each import returns the raw `u32`, and each
//! wrapper turns every status into a value: `Ok`, `NotFound` where it means "absent", and
//! [`HostStatus`] for anything else, for the caller to degrade on.
//!
//! The imports follow the proxy-wasm 0.2.1 ABI. The one host call that stays with the SDK is
//! `proxy_http_call` (see [`crate::callout`]): only the SDK can route its answer back.

use core::ptr::{null, null_mut};

use proxy_wasm::types::{BufferType, LogLevel, MapType, MetricType, StreamType};

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_log(level: u32, message_data: *const u8, message_size: usize) -> u32;
    fn proxy_get_current_time_nanoseconds(return_time: *mut u64) -> u32;
    fn proxy_set_tick_period_milliseconds(period: u32) -> u32;
    fn proxy_get_buffer_bytes(
        buffer_type: u32,
        start: usize,
        max_size: usize,
        return_buffer_data: *mut *mut u8,
        return_buffer_size: *mut usize,
    ) -> u32;
    fn proxy_get_header_map_pairs(
        map_type: u32,
        return_map_data: *mut *mut u8,
        return_map_size: *mut usize,
    ) -> u32;
    fn proxy_get_header_map_value(
        map_type: u32,
        key_data: *const u8,
        key_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
    ) -> u32;
    fn proxy_replace_header_map_value(
        map_type: u32,
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_remove_header_map_value(map_type: u32, key_data: *const u8, key_size: usize) -> u32;
    fn proxy_get_property(
        path_data: *const u8,
        path_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
    ) -> u32;
    fn proxy_get_shared_data(
        key_data: *const u8,
        key_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
        return_cas: *mut u32,
    ) -> u32;
    fn proxy_set_shared_data(
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
        cas: u32,
    ) -> u32;
    fn proxy_set_effective_context(context_id: u32) -> u32;
    fn proxy_continue_stream(stream_type: u32) -> u32;
    fn proxy_send_local_response(
        status_code: u32,
        status_code_details_data: *const u8,
        status_code_details_size: usize,
        body_data: *const u8,
        body_size: usize,
        headers_data: *const u8,
        headers_size: usize,
        grpc_status: i32,
    ) -> u32;
    fn proxy_define_metric(
        metric_type: u32,
        name_data: *const u8,
        name_size: usize,
        return_id: *mut u32,
    ) -> u32;
    fn proxy_increment_metric(metric_id: u32, offset: i64) -> u32;
    fn proxy_record_metric(metric_id: u32, value: u64) -> u32;
}

const STATUS_OK: u32 = 0;
const STATUS_NOT_FOUND: u32 = 1;

/// A status the host answered that the wrapper does not turn into a value: the raw proxy-wasm
/// code, since hosts answer codes the SDK's `Status` enum does not list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostStatus(pub u32);

impl HostStatus {
    /// `NotFound`: where it does not mean "absent" (an unknown metric id, for instance).
    pub const NOT_FOUND: HostStatus = HostStatus(STATUS_NOT_FOUND);
    /// `BadArgument`: an unknown id, cluster or map, or a map not available in this phase.
    pub const BAD_ARGUMENT: HostStatus = HostStatus(2);
    /// `CasMismatch`: a conditional shared-data write lost to another writer.
    pub const CAS_MISMATCH: HostStatus = HostStatus(8);
}

fn result(status: u32) -> Result<(), HostStatus> {
    match status {
        STATUS_OK => Ok(()),
        other => Err(HostStatus(other)),
    }
}

/// Takes ownership of a buffer the host handed over; empty when it sent none.
///
/// # Safety
/// `data` must be null or a pointer the host obtained from the SDK's exported
/// `proxy_on_memory_allocate` for exactly `size` bytes, not yet taken back.
unsafe fn take(data: *mut u8, size: usize) -> Vec<u8> {
    if data.is_null() {
        Vec::new()
    } else {
        // SAFETY: per the contract above, this is a forgotten `Vec<u8>` of `size` bytes (the
        // SDK's allocator returns a boxed slice of exactly `size`), which is how the SDK itself
        // frees it.
        unsafe { Vec::from_raw_parts(data, size, size) }
    }
}

/// The outcome of a read that hands back host-allocated bytes: `Ok(Some(bytes))` on Ok (empty
/// when the host sent none: Envoy sends a null pointer for an empty value), `Ok(None)` on
/// NotFound. The buffer is taken back whatever the status, so nothing leaks.
///
/// # Safety
/// As for [`take`]: `data` and `size` are what one host call wrote to its out-pointers (or the
/// null and 0 they started as).
unsafe fn read(status: u32, data: *mut u8, size: usize) -> Result<Option<Vec<u8>>, HostStatus> {
    // SAFETY: per the contract above.
    let bytes = unsafe { take(data, size) };
    match status {
        STATUS_OK => Ok(Some(bytes)),
        STATUS_NOT_FOUND => Ok(None),
        other => Err(HostStatus(other)),
    }
}

/// Writes `message` to the proxy's log at `level`.
pub fn log(level: LogLevel, message: &str) -> Result<(), HostStatus> {
    // SAFETY: the pointer and length come from a live `&str`; the host copies the bytes.
    result(unsafe { proxy_log(level as u32, message.as_ptr(), message.len()) })
}

/// The host's wall-clock time in nanoseconds since the Unix epoch.
pub fn current_time_ns() -> Result<u64, HostStatus> {
    let mut ns: u64 = 0;
    // SAFETY: the out-pointer is a live local the host writes 8 bytes into.
    result(unsafe { proxy_get_current_time_nanoseconds(&mut ns) }).map(|()| ns)
}

/// Sets the calling root context's tick period (and, on Envoy, re-arms its timer).
pub fn set_tick_period_ms(ms: u32) -> Result<(), HostStatus> {
    // SAFETY: a plain integer argument.
    result(unsafe { proxy_set_tick_period_milliseconds(ms) })
}

/// Up to `max_size` bytes of `buffer` from `start`. `Ok(None)` when the buffer does not exist.
pub fn get_buffer(
    buffer: BufferType,
    start: usize,
    max_size: usize,
) -> Result<Option<Vec<u8>>, HostStatus> {
    let mut data: *mut u8 = null_mut();
    let mut size: usize = 0;
    // SAFETY: the out-pointers are live locals; the host fills them with an allocation made
    // through the SDK's `proxy_on_memory_allocate`, which `read` takes back.
    let status =
        unsafe { proxy_get_buffer_bytes(buffer as u32, start, max_size, &mut data, &mut size) };
    // SAFETY: `data` and `size` are what the call above wrote.
    unsafe { read(status, data, size) }
}

/// The whole header map `map`, serialized in the proxy-wasm pairs format (see
/// [`crate::stream::parse_header_map`]). `Ok(None)` when the host says the map does not exist.
pub fn get_header_map_pairs(map: MapType) -> Result<Option<Vec<u8>>, HostStatus> {
    let mut data: *mut u8 = null_mut();
    let mut size: usize = 0;
    // SAFETY: as in `get_buffer`.
    let status = unsafe { proxy_get_header_map_pairs(map as u32, &mut data, &mut size) };
    // SAFETY: as in `get_buffer`.
    unsafe { read(status, data, size) }
}

/// One header's raw value. `Ok(None)` when the header is absent.
pub fn get_header_map_value(map: MapType, name: &str) -> Result<Option<Vec<u8>>, HostStatus> {
    let mut data: *mut u8 = null_mut();
    let mut size: usize = 0;
    // SAFETY: the key comes from a live `&str`; the out-pointers as in `get_buffer`.
    let status = unsafe {
        proxy_get_header_map_value(map as u32, name.as_ptr(), name.len(), &mut data, &mut size)
    };
    // SAFETY: as in `get_buffer`.
    unsafe { read(status, data, size) }
}

/// Sets header `name` of `map` to `value`, replacing every value it had.
pub fn replace_header_map_value(map: MapType, name: &str, value: &str) -> Result<(), HostStatus> {
    // SAFETY: pointers and lengths come from live `&str`s; the host copies the bytes.
    result(unsafe {
        proxy_replace_header_map_value(
            map as u32,
            name.as_ptr(),
            name.len(),
            value.as_ptr(),
            value.len(),
        )
    })
}

/// Removes header `name` (every value of it) from `map`.
pub fn remove_header_map_value(map: MapType, name: &str) -> Result<(), HostStatus> {
    // SAFETY: the pointer and length come from a live `&str`; the host copies the bytes.
    result(unsafe { proxy_remove_header_map_value(map as u32, name.as_ptr(), name.len()) })
}

/// A property's raw bytes (`path` as segments, e.g. `["xds", "route_name"]`). `Ok(None)` when the
/// property does not exist.
pub fn get_property(path: &[&str]) -> Result<Option<Vec<u8>>, HostStatus> {
    // The ABI's path format: every segment followed by a NUL.
    let mut serialized = Vec::with_capacity(path.iter().map(|p| p.len() + 1).sum());
    for segment in path {
        serialized.extend_from_slice(segment.as_bytes());
        serialized.push(0);
    }
    let mut data: *mut u8 = null_mut();
    let mut size: usize = 0;
    // SAFETY: the path comes from a live `Vec`; the out-pointers as in `get_buffer`.
    let status =
        unsafe { proxy_get_property(serialized.as_ptr(), serialized.len(), &mut data, &mut size) };
    // SAFETY: as in `get_buffer`.
    unsafe { read(status, data, size) }
}

/// The shared-data value of `key` and its CAS token. `Ok(None)` when the key does not exist.
pub fn get_shared_data(key: &str) -> Result<Option<(Vec<u8>, u32)>, HostStatus> {
    let mut data: *mut u8 = null_mut();
    let mut size: usize = 0;
    let mut cas: u32 = 0;
    // SAFETY: the key comes from a live `&str`; the out-pointers as in `get_buffer`.
    let status =
        unsafe { proxy_get_shared_data(key.as_ptr(), key.len(), &mut data, &mut size, &mut cas) };
    // SAFETY: as in `get_buffer`.
    let value = unsafe { read(status, data, size) }?;
    Ok(value.map(|v| (v, cas)))
}

/// Writes shared-data `key` if its token is still `cas` (0 writes unconditionally).
/// [`HostStatus::CAS_MISMATCH`] when another writer came first.
pub fn set_shared_data(key: &str, value: &[u8], cas: u32) -> Result<(), HostStatus> {
    // SAFETY: pointers and lengths come from live slices; the host copies the bytes.
    result(unsafe {
        proxy_set_shared_data(key.as_ptr(), key.len(), value.as_ptr(), value.len(), cas)
    })
}

/// Makes stream `context_id` the context later calls act on (from the root context).
/// [`HostStatus::BAD_ARGUMENT`] when there is no such stream (any more).
pub fn set_effective_context(context_id: u32) -> Result<(), HostStatus> {
    // SAFETY: a plain integer argument; the host validates the id.
    result(unsafe { proxy_set_effective_context(context_id) })
}

/// Continues the effective context's paused `stream`.
pub fn continue_stream(stream: StreamType) -> Result<(), HostStatus> {
    // SAFETY: a plain integer argument.
    result(unsafe { proxy_continue_stream(stream as u32) })
}

/// Answers the current request locally with `status`, `headers` and `body` (no gRPC status, no
/// details).
pub fn send_local_response(
    status: u16,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<(), HostStatus> {
    local_response(status, headers, body, -1)
}

/// Answers the current gRPC request locally: HTTP 200, `headers` (which carry `grpc-status`
/// and the rest of a trailers-only answer), no body, and `code` as the call's gRPC status.
pub fn send_grpc_local_response(headers: &[(&str, &str)], code: u8) -> Result<(), HostStatus> {
    local_response(200, headers, &[], i32::from(code))
}

fn local_response(
    status: u16,
    headers: &[(&str, &str)],
    body: &[u8],
    grpc_status: i32,
) -> Result<(), HostStatus> {
    let map = serialize_pairs(headers);
    // SAFETY: every pointer and length comes from a live slice (no details: null and 0); the
    // host copies the bytes.
    result(unsafe {
        proxy_send_local_response(
            u32::from(status),
            null(),
            0,
            body.as_ptr(),
            body.len(),
            map.as_ptr(),
            map.len(),
            grpc_status,
        )
    })
}

/// Defines (or finds) the metric `name` of `kind`; returns its id.
pub fn define_metric(kind: MetricType, name: &str) -> Result<u32, HostStatus> {
    let mut id: u32 = 0;
    // SAFETY: the name comes from a live `&str`; the out-pointer is a live local.
    result(unsafe { proxy_define_metric(kind as u32, name.as_ptr(), name.len(), &mut id) })
        .map(|()| id)
}

/// Adds `offset` (either sign for a gauge, positive for a counter) to metric `id`.
pub fn increment_metric(id: u32, offset: i64) -> Result<(), HostStatus> {
    // SAFETY: plain integer arguments.
    result(unsafe { proxy_increment_metric(id, offset) })
}

/// Records `value` in histogram `id`.
pub fn record_metric(id: u32, value: u64) -> Result<(), HostStatus> {
    // SAFETY: plain integer arguments.
    result(unsafe { proxy_record_metric(id, value) })
}

/// The proxy-wasm header-map wire format: count, then each (name length, value length) as
/// little-endian u32, then each name and value NUL-terminated.
fn serialize_pairs(headers: &[(&str, &str)]) -> Vec<u8> {
    let len32 = |n: usize| u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes();
    let size = headers.iter().fold(4usize, |acc, (k, v)| {
        acc.saturating_add(k.len() + v.len() + 10)
    });
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(&len32(headers.len()));
    for (k, v) in headers {
        out.extend_from_slice(&len32(k.len()));
        out.extend_from_slice(&len32(v.len()));
    }
    for (k, v) in headers {
        out.extend_from_slice(k.as_bytes());
        out.push(0);
        out.extend_from_slice(v.as_bytes());
        out.push(0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_serialize_in_the_proxy_wasm_map_format() {
        let bytes = serialize_pairs(&[("a", "bc"), ("retry-after", "1")]);
        let mut expected = vec![2, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 11, 0, 0, 0, 1, 0, 0, 0];
        expected.extend_from_slice(b"a\0bc\0retry-after\x001\0");
        assert_eq!(bytes, expected);
        assert_eq!(
            crate::stream::parse_header_map(&bytes),
            Some(vec![
                (b"a".to_vec(), b"bc".to_vec()),
                (b"retry-after".to_vec(), b"1".to_vec())
            ])
        );
    }
}
