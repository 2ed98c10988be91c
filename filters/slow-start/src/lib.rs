//! # slow-start
//!
//! Why: a replica that restarts with an empty cache and gets its full share of traffic at once
//! melts — every request misses, latency and CPU spike, pools fill. The manual fix is a recipe:
//! drop its weight to a floor, prime its cache, raise the weight step by step while watching it.
//! This filter runs that recipe, in either of two places:
//!
//! - **`balance`**, in the *callers'* proxy: the filter picks the endpoint of an `ORIGINAL_DST`
//!   cluster for every request (by writing the destination header) from its own `endpoints`
//!   list, weighted by each endpoint's ramp, whose clock starts at the endpoint's first
//!   successful response and restarts when it comes back after being unhealthy.
//! - **`admit`**, in the *warming replica's own* proxy: after start or recovery the replica
//!   admits a ramping fraction of requests and answers the rest with a fast, retriable `503`;
//!   health checks always pass.
//!
//! Both can prime first (configured warm-up requests sent through `dispatch_http_call`, paced,
//! with a deadline), pause the ramp while the endpoint is worse than its peers (closed loop), and
//! cap a warming endpoint's absolute request rate.
//!
//! How: the ramp is the pure [`resilience_core::ramp`]; choosing by weight is
//! [`resilience_core::balance`]; the rate cap is [`resilience_core::rate_cap`]. [`worker`] keeps
//! each worker's views and batches and syncs them through shared data; [`http`] decides per
//! request; [`root`] parses the config, ticks and sends the callouts. The crate is a `cdylib`
//! and an `rlib`; the `entrypoint` feature (default) exports the proxy-wasm entry point.

pub mod config;
pub mod http;
pub mod root;
pub mod stats;
pub mod worker;

#[cfg(test)]
mod tests;

pub use http::SlowStartHttp;
pub use root::SlowStartRoot;
