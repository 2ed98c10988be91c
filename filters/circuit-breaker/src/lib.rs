//! # circuit-breaker
//!
//! Why: when a dependency dies, callers that keep waiting on it exhaust their own connections and
//! fail too. This filter counts each route's outcomes (error rate, slow calls, consecutive
//! failures), opens the circuit when a threshold is crossed so callers get a fast, explicit `503`
//! with `retry-after` instead of a slow failure, and then admits a fixed number of probes across
//! *all* Envoy workers together to learn whether the dependency is back.
//!
//! How: the state machine is the pure [`resilience_core::breaker`]; [`worker`] keeps each worker's
//! cached view and pending outcomes and syncs them through shared data; [`http`] decides per
//! request; [`root`] parses the config and ticks. The crate is a `cdylib` (the `.wasm` Envoy loads)
//! and an `rlib` whose contexts another module can host; the `entrypoint` feature (default) exports
//! the proxy-wasm entry point.

pub mod active;
pub mod config;
pub mod http;
pub mod root;
pub mod stats;
pub mod worker;

#[cfg(test)]
mod tests;

pub use http::BreakerHttp;
pub use root::BreakerRoot;
