//! # retry-budget
//!
//! Why: a slow dependency makes its callers retry, every proxy layer multiplies the attempts, and
//! the extra load keeps the dependency down. This filter bounds the *rate* of retries to a share
//! of recent requests (plus a small floor), one budget for all Envoy workers together. On the
//! caller side (`outbound`) it tells Envoy's router how many retries a request may make; on the
//! server side (`inbound`) it sheds incoming retries beyond the budget before they reach the app,
//! and never a first attempt. A request that arrived as a retry is not retried again at the next
//! hop (the hop guard), so amplification adds up across hops instead of multiplying, and no retry
//! is attempted when the caller's remaining deadline is below the route's median latency.
//!
//! How: the budget is the pure [`resilience_core::budget`] (reservations, refunds and leases);
//! [`worker`] keeps each worker's leases and latency samples and syncs them through shared data;
//! [`http`] decides per request; [`root`] parses the config and ticks. The crate is a `cdylib`
//! (the `.wasm` Envoy loads) and an `rlib` whose contexts another module can host; the
//! `entrypoint` feature (default) exports the proxy-wasm entry point.

pub mod config;
pub mod http;
pub mod root;
pub mod stats;
pub mod worker;

#[cfg(test)]
mod tests;

pub use http::RetryBudgetHttp;
pub use root::RetryBudgetRoot;
