//! The host as a trait: every proxy-wasm call a filter makes, behind one seam.
//!
//! Why a trait: the cross-worker glue of a filter (syncing a breaker through shared data, taking a
//! half-open probe permit, reserving a place in the open-breaker set) is where the bugs that only
//! show up under concurrency live, and calling the imports directly made that glue testable only
//! through a running Envoy, which rarely produces the interleavings that matter. Code written
//! against [`Host`] runs unchanged on the real host ([`crate::wasm::WasmHost`]) and on an in-memory
//! one (`fake::FakeHost`, feature `fake`) where a test plays several workers on one shared
//! store, moves the clock and races two writers on purpose.
//!
//! How: the methods mirror the proxy-wasm 0.2.1 imports one for one, statuses included (a
//! conditional shared-data write that loses returns `Err(HostStatus::CAS_MISMATCH)` here exactly as
//! the import does; one provided method, `known_header_map_value`, answers only from what a host
//! already holds), so the typed layers above ([`crate::shared`], [`crate::props`],
//! [`crate::request`], [`crate::metrics`], [`crate::reply`], ...) are exercised by the fake too.
//! Code takes a generic `H: Host` (or `&impl Host`), never `dyn Host`: [`WasmHost`] is zero-sized,
//! so after monomorphisation a call costs what calling [`crate::abi`] directly costs.
//!
//! [`WasmHost`]: crate::wasm::WasmHost

use proxy_wasm::types::{BufferType, MapType, MetricType, StreamType};

use crate::abi::HostStatus;
use crate::callout::CalloutError;

/// What a filter asks of the proxy. See the module docs for why this is a trait.
///
/// Every method takes `&self`: the real host keeps its state on the other side of the ABI, and a
/// fake keeps it behind interior mutability, so a worker can hold its host next to the state it
/// borrows mutably.
pub trait Host {
    /// The wall-clock time in nanoseconds since the Unix epoch.
    fn current_time_ns(&self) -> Result<u64, HostStatus>;

    /// Sets the calling root context's tick period (on Envoy, also re-arms its timer).
    fn set_tick_period_ms(&self, ms: u32) -> Result<(), HostStatus>;

    /// The shared-data value of `key` and its CAS token. `Ok(None)` when the key does not exist.
    fn get_shared_data(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, HostStatus>;

    /// Writes shared-data `key` if its token is still `cas`; 0 (or a key that does not exist yet)
    /// writes unconditionally. [`HostStatus::CAS_MISMATCH`] when another writer came first.
    fn set_shared_data(&self, key: &str, value: &[u8], cas: u32) -> Result<(), HostStatus>;

    /// One header's raw value from `map`. `Ok(None)` when the header is absent.
    fn get_header_map_value(&self, map: MapType, name: &str)
        -> Result<Option<Vec<u8>>, HostStatus>;

    /// The whole header map `map` in the proxy-wasm pairs format (see
    /// [`crate::stream::parse_header_map`]).
    fn get_header_map_pairs(&self, map: MapType) -> Result<Option<Vec<u8>>, HostStatus>;

    /// What this host holds of header `name` of `map` without a call: `Some(value)` when it
    /// knows (`Some(None)`: known absent), `None` when only a call would tell. Not an import: the
    /// real host knows nothing; the pack's stage host knows what an earlier stage read, so a
    /// stage can skip a read that a free fact makes pointless.
    fn known_header_map_value(&self, _map: MapType, _name: &str) -> Option<Option<Vec<u8>>> {
        None
    }

    /// Sets header `name` of `map` to `value`, replacing every value it had.
    fn replace_header_map_value(
        &self,
        map: MapType,
        name: &str,
        value: &str,
    ) -> Result<(), HostStatus>;

    /// Removes header `name` (every value of it) from `map`.
    fn remove_header_map_value(&self, map: MapType, name: &str) -> Result<(), HostStatus>;

    /// Up to `max_size` bytes of `buffer` from `start`. `Ok(None)` when the buffer does not exist.
    fn get_buffer(
        &self,
        buffer: BufferType,
        start: usize,
        max_size: usize,
    ) -> Result<Option<Vec<u8>>, HostStatus>;

    /// A property's raw bytes (`path` as segments, e.g. `["xds", "route_name"]`). `Ok(None)` when
    /// the property does not exist.
    fn get_property(&self, path: &[&str]) -> Result<Option<Vec<u8>>, HostStatus>;

    /// Answers the current request locally with `status`, `headers` and `body`.
    fn send_local_response(
        &self,
        status: u16,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<(), HostStatus>;

    /// Answers the current gRPC request locally: HTTP 200, `headers` (a trailers-only answer,
    /// `grpc-status` included), no body, and `code` as the call's gRPC status.
    fn send_grpc_local_response(
        &self,
        headers: &[(&str, &str)],
        code: u8,
    ) -> Result<(), HostStatus>;

    /// Defines (or finds) the metric `name` of `kind`; returns its id.
    fn define_metric(&self, kind: MetricType, name: &str) -> Result<u32, HostStatus>;

    /// Adds `offset` to metric `id`: positive for a counter, either sign for a gauge.
    fn increment_metric(&self, id: u32, offset: i64) -> Result<(), HostStatus>;

    /// Records `value` in histogram `id`.
    fn record_metric(&self, id: u32, value: u64) -> Result<(), HostStatus>;

    /// Makes stream `context_id` the context later calls act on (from the root context).
    /// [`HostStatus::BAD_ARGUMENT`] when there is no such stream (any more).
    fn set_effective_context(&self, context_id: u32) -> Result<(), HostStatus>;

    /// Continues the effective context's paused `stream`.
    fn continue_stream(&self, stream: StreamType) -> Result<(), HostStatus>;

    /// Sends a request through `cluster` (`headers` with `:method`, `:path`, `:authority`);
    /// returns the token its answer will carry. See [`crate::callout`] for Envoy's rules.
    fn dispatch_http_call(
        &self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
        timeout_ms: u64,
    ) -> Result<u32, CalloutError>;
}

/// A shared reference to a host is a host: code generic over `H: Host` can be handed `&host` and
/// leave the host where it lives.
impl<H: Host + ?Sized> Host for &H {
    #[inline]
    fn current_time_ns(&self) -> Result<u64, HostStatus> {
        (**self).current_time_ns()
    }
    #[inline]
    fn set_tick_period_ms(&self, ms: u32) -> Result<(), HostStatus> {
        (**self).set_tick_period_ms(ms)
    }
    #[inline]
    fn get_shared_data(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, HostStatus> {
        (**self).get_shared_data(key)
    }
    #[inline]
    fn set_shared_data(&self, key: &str, value: &[u8], cas: u32) -> Result<(), HostStatus> {
        (**self).set_shared_data(key, value, cas)
    }
    #[inline]
    fn get_header_map_value(
        &self,
        map: MapType,
        name: &str,
    ) -> Result<Option<Vec<u8>>, HostStatus> {
        (**self).get_header_map_value(map, name)
    }
    #[inline]
    fn get_header_map_pairs(&self, map: MapType) -> Result<Option<Vec<u8>>, HostStatus> {
        (**self).get_header_map_pairs(map)
    }
    #[inline]
    fn known_header_map_value(&self, map: MapType, name: &str) -> Option<Option<Vec<u8>>> {
        (**self).known_header_map_value(map, name)
    }
    #[inline]
    fn replace_header_map_value(
        &self,
        map: MapType,
        name: &str,
        value: &str,
    ) -> Result<(), HostStatus> {
        (**self).replace_header_map_value(map, name, value)
    }
    #[inline]
    fn remove_header_map_value(&self, map: MapType, name: &str) -> Result<(), HostStatus> {
        (**self).remove_header_map_value(map, name)
    }
    #[inline]
    fn get_buffer(
        &self,
        buffer: BufferType,
        start: usize,
        max_size: usize,
    ) -> Result<Option<Vec<u8>>, HostStatus> {
        (**self).get_buffer(buffer, start, max_size)
    }
    #[inline]
    fn get_property(&self, path: &[&str]) -> Result<Option<Vec<u8>>, HostStatus> {
        (**self).get_property(path)
    }
    #[inline]
    fn send_local_response(
        &self,
        status: u16,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<(), HostStatus> {
        (**self).send_local_response(status, headers, body)
    }
    #[inline]
    fn send_grpc_local_response(
        &self,
        headers: &[(&str, &str)],
        code: u8,
    ) -> Result<(), HostStatus> {
        (**self).send_grpc_local_response(headers, code)
    }
    #[inline]
    fn define_metric(&self, kind: MetricType, name: &str) -> Result<u32, HostStatus> {
        (**self).define_metric(kind, name)
    }
    #[inline]
    fn increment_metric(&self, id: u32, offset: i64) -> Result<(), HostStatus> {
        (**self).increment_metric(id, offset)
    }
    #[inline]
    fn record_metric(&self, id: u32, value: u64) -> Result<(), HostStatus> {
        (**self).record_metric(id, value)
    }
    #[inline]
    fn set_effective_context(&self, context_id: u32) -> Result<(), HostStatus> {
        (**self).set_effective_context(context_id)
    }
    #[inline]
    fn continue_stream(&self, stream: StreamType) -> Result<(), HostStatus> {
        (**self).continue_stream(stream)
    }
    #[inline]
    fn dispatch_http_call(
        &self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
        timeout_ms: u64,
    ) -> Result<u32, CalloutError> {
        (**self).dispatch_http_call(cluster, headers, body, timeout_ms)
    }
}
