//! # request-validator
//!
//! Why: a malformed or doomed request that reaches business logic wastes capacity exactly when
//! capacity is scarce, and a slow failure is worse than a fast one. This filter makes strict,
//! cheap checks at the edge and answers with the correct status and an
//! `application/problem+json` body: methods (405), URL length (414), header count and size (431),
//! required headers and query parameters (400), media types (415), body size (413, from
//! `content-length` and again while a body streams), JSON well-formedness (400) and JSON Schema
//! (422), OpenAPI 3 operations (404/405/400/415/422). It refuses work whose deadline is already
//! too short (504), and sheds load beyond a per-route concurrency limit counted across all of
//! Envoy's workers (503 with `retry-after`) while always admitting health checks.
//!
//! How: the rules are pure ([`rules`], no proxy-wasm: native tests); admission is the core's
//! [`resilience_core::shedding`] and the observed latency its
//! [`resilience_core::estimator`]; [`worker`] keeps the per-worker state and the shared-data
//! calls; [`http`] decides per request; [`root`] parses the configuration and ticks; [`stats`]
//! names and flushes the counters; [`verdict`] asks the same rules about one request without a
//! host (for the fuzz targets and tools). The crate is a `cdylib` (the `.wasm` Envoy loads) and an
//! `rlib` whose contexts another module can host; the `entrypoint` feature (default) exports the
//! proxy-wasm entry point.

pub mod config;
pub mod http;
pub mod root;
pub mod rules;
pub mod stats;
pub mod verdict;
pub mod worker;

#[cfg(test)]
mod tests;

pub use http::ValidatorHttp;
pub use root::ValidatorRoot;
