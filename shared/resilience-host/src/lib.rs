//! # resilience-host
//!
//! Why a host layer: proxy-wasm calls are the one place where the outside world can surprise a
//! filter. A host may return a status the SDK does not expect (the Rust SDK then panics and the
//! worker's VM traps), a header may not be UTF-8 (the SDK's `String` getters unwrap), a property may
//! be missing. This crate is the only code in the pack that calls proxy-wasm; it turns every such
//! surprise into a value the filter can degrade on (fail open, counted), never a trap. Its host
//! calls go through [`abi`]; the one SDK host call left is `dispatch_http_call` ([`callout`]).
//!
//! Why a seam: code written against the [`host::Host`] trait runs on the real proxy
//! ([`wasm::WasmHost`], zero-sized, as cheap as calling [`abi`]) and, in native tests, on
//! `fake::FakeHost` (feature `fake`): several workers on one in-memory shared store, so the
//! cross-worker glue is tested without Envoy. Each typed helper below takes its host (`…_on`, or
//! `::on(host)` for the types); the forms without a host are the same on [`wasm::WasmHost`].
//!
//! Modules, one concept each:
//! - [`host`]: the [`host::Host`] trait, one method per proxy-wasm call a filter makes.
//! - [`wasm`]: [`host::Host`] over the real imports.
//! - `fake` (tests, feature `fake`): an in-memory host with a shared store and a virtual clock.
//! - [`abi`]: every proxy-wasm import the pack makes, declared once, each status a value.
//! - [`callout`]: requests the filter sends itself (`dispatch_http_call`) and their answers.
//! - [`shared`]: shared data with compare-and-swap updates in a bounded retry loop.
//! - [`stream`]: the whole request header map and body as bytes.
//! - [`registry`]: a bounded set of keys shared by all workers (shared data cannot delete).
//! - [`metrics`]: counters and cross-worker gauges (± increments, never `set`).
//! - [`counters`]: per-worker event counts declared once (names, counts, flush).
//! - [`props`]: typed reads of Envoy properties.
//! - [`request`]: a lazy, cached view of the request for route matching.
//! - [`reply`]: local replies: `application/problem+json`, or a gRPC answer to a gRPC call.
//! - [`root`]: the root context all filters share (configuration, tick, HTTP contexts).
//! - [`stage`]: several filters as stages of one module (one chain, one timer, facts read once).
//! - [`resume`]: resuming a paused request or response from the tick; re-arming the tick timer.
//! - [`clock`]: the host's time in milliseconds.
//! - [`logging`]: log forwarding to the proxy and a panic hook that logs before the VM traps.
//! - [`callbacks`]: the proxy-wasm callbacks a module leaves out of its exports.

pub mod abi;
pub mod callbacks;
pub mod callout;
pub mod clock;
pub mod counters;
#[cfg(any(test, feature = "fake"))]
pub mod fake;
pub mod host;
pub mod logging;
pub mod metrics;
pub mod props;
pub mod registry;
pub mod reply;
pub mod request;
pub mod resume;
pub mod root;
pub mod shared;
pub mod stage;
pub mod stream;
pub mod wasm;
