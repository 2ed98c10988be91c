//! # failure-padding
//!
//! Why: with least-request balancing, a host that fails in 1 ms while healthy ones take 50 ms
//! looks like the least busy host and draws ever more traffic into its errors: a black hole. This
//! filter, running in the failing host's own proxy (a sidecar or per-host Envoy), holds each
//! failed response until it took as long as the route's successes usually take, so every
//! caller's balancer sees the failing host as busy as the others and gives it only its fair share.
//!
//! How: the decision (target, caps, skips) and the cross-worker in-flight cap are the pure
//! [`resilience_core::padding`]; the learned latency is a
//! [`resilience_core::estimator::LatencyHistogram`] per route in shared data; [`worker`] keeps
//! each worker's held responses, batches and cached targets and releases and syncs them on the
//! tick; [`http`] judges each response; [`root`] parses the config and ticks. The crate is a
//! `cdylib` (the `.wasm` Envoy loads) and an `rlib` whose contexts another module can host; the
//! `entrypoint` feature (default) exports the proxy-wasm entry point.

pub mod config;
pub mod http;
pub mod root;
pub mod stats;
pub mod worker;

#[cfg(test)]
mod tests;

pub use http::PaddingHttp;
pub use root::PaddingRoot;
