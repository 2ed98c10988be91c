//! # resilience-core
//!
//! Why a separate core: every policy in the pack (windows, the breaker's state machine, budgets,
//! ramps, estimators) is a pure state machine that is *told* the time. Nothing here calls
//! proxy-wasm or reads a clock, so each behaviour is tested natively and deterministically, and
//! the same tests run inside wasm (32-bit `usize`) with `wasm-bindgen-test`.
//!
//! The host layer (`resilience-host`) is the only code that talks to the proxy; filters glue the
//! two together.
//!
//! Modules, one concept each:
//! - [`config`]: durations, percentages and typed errors that name the JSON path and the rule.
//! - [`routes`]: per-route overrides matched on route name, path, method or headers.
//! - [`outcome`]: one classification of a response (HTTP status, gRPC status, Envoy-local
//!   failures, slow calls) shared by every filter.
//! - [`window`]: sliding outcome windows, time-bucketed and count-based.
//! - [`codec`]: the compact, versioned binary encoding for state kept in shared data.
//! - [`backoff`]: jittered exponential backoff and full jitter.
//! - [`problem`]: RFC 9457 `application/problem+json` local replies.
//! - [`deadline`]: reading a request's remaining deadline from its headers.
//! - [`grpc`]: the gRPC answer to a refused call (status, message, pushback, binary details),
//!   and the gRPC request facts filters check (content type, message framing, method paths).
//! - [`breaker`]: the circuit breaker's state machine.
//! - [`governor`]: caps how many of one filter's breakers may be open at once.
//! - [`keyed`]: a worker's entries by key, reached by a handle the stream keeps.
//! - [`estimator`]: latency percentiles that decay per sample (never by the clock), mergeable
//!   across workers.
//! - [`padding`]: failure-latency padding: how long to hold a failed response, and the
//!   cross-worker cap on held responses.
//! - [`shedding`]: concurrency admission per route across workers, with priority classes and
//!   leases that forget a dead worker's requests.
//! - [`budget`]: the retry budget: retries as a share of recent requests plus a floor, reserved
//!   before a request is sent, shared by all workers through leases.
//! - [`ramp`]: slow start: one endpoint's warm-up (curve from first success, re-entry after
//!   failures, closed-loop pause, priming pacing).
//! - [`balance`]: choosing an endpoint by effective weight (weighted random or P2C least-request).
//! - [`rate_cap`]: an absolute requests-per-second cap shared by all workers (GCRA).
//! - [`cells`]: draining cells (zones) gradually: shares, the drain ramp, the governor.
//! - [`directory`]: the balancer's endpoint list with stable slots of shared state, and the
//!   discovery document it is refreshed from.
//! - `schema` (feature `schema`): JSON Schemas of the filter configurations, derived from the
//!   configuration types.

pub mod backoff;
pub mod balance;
pub mod breaker;
pub mod budget;
pub mod cells;
pub mod codec;
pub mod config;
pub mod deadline;
pub mod directory;
pub mod estimator;
pub mod governor;
pub mod grpc;
mod json_path;
pub mod keyed;
pub mod outcome;
pub mod padding;
pub mod problem;
pub mod ramp;
pub mod rate_cap;
pub mod routes;
#[cfg(feature = "schema")]
pub mod schema;
pub mod shedding;
pub mod window;
