//! A filter that does nothing and exports only what a header-only filter needs.
//!
//! Why: the proxy-wasm Rust SDK exports every `proxy_on_*` callback, so Envoy calls into the VM
//! for each request body chunk, response body chunk and trailer map even when the filter has no
//! use for them; Envoy skips a callback a module does not export. This module is the SDK-free
//! no-op (the ABI by hand: the version marker, the allocator, context creation, start,
//! configure, the two header callbacks and the stream's end) that `cargo pack bench` runs beside
//! `noop-filter` to show what the unused callbacks cost per request.
//!
//! Nothing here reads host memory or calls the host; every callback answers at once.

/// Marks the module as speaking proxy-wasm ABI 0.2.1.
#[no_mangle]
pub extern "C" fn proxy_abi_version_0_2_1() {}

/// The host asks the module for memory to pass values in (none is ever asked for here, since
/// the module calls no host function that returns data; kept because hosts require it).
#[no_mangle]
pub extern "C" fn proxy_on_memory_allocate(size: usize) -> *mut u8 {
    let mut buf: Vec<u8> = Vec::with_capacity(size.max(1));
    let ptr = buf.as_mut_ptr();
    std::mem::forget(buf);
    ptr
}

#[no_mangle]
pub extern "C" fn proxy_on_context_create(_context_id: u32, _root_context_id: u32) {}

#[no_mangle]
pub extern "C" fn proxy_on_vm_start(_root_context_id: u32, _vm_configuration_size: usize) -> u32 {
    1
}

#[no_mangle]
pub extern "C" fn proxy_on_configure(
    _root_context_id: u32,
    _plugin_configuration_size: usize,
) -> u32 {
    1
}

/// Continue.
#[no_mangle]
pub extern "C" fn proxy_on_request_headers(
    _context_id: u32,
    _headers: usize,
    _end_of_stream: u32,
) -> u32 {
    0
}

/// Continue.
#[no_mangle]
pub extern "C" fn proxy_on_response_headers(
    _context_id: u32,
    _headers: usize,
    _end_of_stream: u32,
) -> u32 {
    0
}

/// The stream is done and may be deleted at once.
#[no_mangle]
pub extern "C" fn proxy_on_done(_context_id: u32) -> u32 {
    1
}

#[no_mangle]
pub extern "C" fn proxy_on_delete(_context_id: u32) {}
