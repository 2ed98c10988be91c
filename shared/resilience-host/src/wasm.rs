//! [`Host`] over the real proxy-wasm imports.
//!
//! Why a zero-sized type: a filter generic over `H: Host` must cost in production exactly what
//! calling [`crate::abi`] directly costs. `WasmHost` holds nothing, every method is a call into
//! [`crate::abi`] (or, for callouts, the SDK; see [`crate::callout`]), and monomorphisation turns
//! `host.get_shared_data(key)` back into `abi::get_shared_data(key)`.

use std::time::Duration;

use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, MapType, MetricType, Status, StreamType};

use crate::abi::{self, HostStatus};
use crate::callout::CalloutError;
use crate::host::Host;

/// The proxy the module runs in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WasmHost;

impl Host for WasmHost {
    #[inline]
    fn current_time_ns(&self) -> Result<u64, HostStatus> {
        abi::current_time_ns()
    }

    #[inline]
    fn set_tick_period_ms(&self, ms: u32) -> Result<(), HostStatus> {
        abi::set_tick_period_ms(ms)
    }

    #[inline]
    fn get_shared_data(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, HostStatus> {
        abi::get_shared_data(key)
    }

    #[inline]
    fn set_shared_data(&self, key: &str, value: &[u8], cas: u32) -> Result<(), HostStatus> {
        abi::set_shared_data(key, value, cas)
    }

    #[inline]
    fn get_header_map_value(
        &self,
        map: MapType,
        name: &str,
    ) -> Result<Option<Vec<u8>>, HostStatus> {
        abi::get_header_map_value(map, name)
    }

    #[inline]
    fn get_header_map_pairs(&self, map: MapType) -> Result<Option<Vec<u8>>, HostStatus> {
        abi::get_header_map_pairs(map)
    }

    #[inline]
    fn replace_header_map_value(
        &self,
        map: MapType,
        name: &str,
        value: &str,
    ) -> Result<(), HostStatus> {
        abi::replace_header_map_value(map, name, value)
    }

    #[inline]
    fn remove_header_map_value(&self, map: MapType, name: &str) -> Result<(), HostStatus> {
        abi::remove_header_map_value(map, name)
    }

    #[inline]
    fn get_buffer(
        &self,
        buffer: BufferType,
        start: usize,
        max_size: usize,
    ) -> Result<Option<Vec<u8>>, HostStatus> {
        abi::get_buffer(buffer, start, max_size)
    }

    #[inline]
    fn get_property(&self, path: &[&str]) -> Result<Option<Vec<u8>>, HostStatus> {
        abi::get_property(path)
    }

    #[inline]
    fn send_local_response(
        &self,
        status: u16,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<(), HostStatus> {
        abi::send_local_response(status, headers, body)
    }

    #[inline]
    fn send_grpc_local_response(
        &self,
        headers: &[(&str, &str)],
        code: u8,
    ) -> Result<(), HostStatus> {
        abi::send_grpc_local_response(headers, code)
    }

    #[inline]
    fn define_metric(&self, kind: MetricType, name: &str) -> Result<u32, HostStatus> {
        abi::define_metric(kind, name)
    }

    #[inline]
    fn increment_metric(&self, id: u32, offset: i64) -> Result<(), HostStatus> {
        abi::increment_metric(id, offset)
    }

    #[inline]
    fn record_metric(&self, id: u32, value: u64) -> Result<(), HostStatus> {
        abi::record_metric(id, value)
    }

    #[inline]
    fn set_effective_context(&self, context_id: u32) -> Result<(), HostStatus> {
        abi::set_effective_context(context_id)
    }

    #[inline]
    fn continue_stream(&self, stream: StreamType) -> Result<(), HostStatus> {
        abi::continue_stream(stream)
    }

    /// Through the SDK, not [`crate::abi`]: only the SDK can route the answer back to the context
    /// that sent the call (see [`crate::callout::send`] for the statuses Envoy answers).
    fn dispatch_http_call(
        &self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
        timeout_ms: u64,
    ) -> Result<u32, CalloutError> {
        match hostcalls::dispatch_http_call(
            cluster,
            headers.to_vec(),
            body,
            Vec::new(),
            Duration::from_millis(timeout_ms.max(1)),
        ) {
            Ok(token) => Ok(token),
            Err(Status::BadArgument) => Err(CalloutError::BadArgument),
            Err(_) => Err(CalloutError::InternalFailure),
        }
    }
}
