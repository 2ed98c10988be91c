//! The end-to-end harness: proves the resilience pack against a real Envoy.
//!
//! Unit tests prove the policies; only a real proxy proves the filters: that Envoy loads the
//! modules, that each worker's VM shares state as designed, and that responses, timings and
//! stats are what a client sees. This crate provides the pieces such tests are made of:
//!
//! - [`bench`]: Envoy CPU per request with and without the pack (`cargo pack bench`).
//! - [`paths`]: where the workspace, the tools and the build output are.
//! - [`prereq`]: what the commands need from the machine, checked and installed where it can be.
//! - [`envoy`]: installing the pinned Envoy release and running it as a supervised child.
//! - [`config`]: static bootstraps with the filters under test in front of the router.
//! - [`wasm`]: building the filter crates into the `.wasm` modules Envoy loads.
//! - [`binaryen`]: the modules' last optimization pass (`wasm-opt`, pinned, from npm).
//! - [`upstream`]: scriptable HTTP/1.1 backends (statuses, latency, hangs, resets, outages).
//! - [`client`]: a blocking HTTP/1.1 client with timing, and a parallel driver.
//! - [`grpc`]: a real gRPC server and client (grpcio, pinned, installed from PyPI), over HTTP/2.
//! - [`lab`]: the failure lab (scenarios, load, report) behind `cargo pack lab`.
//! - [`stats`]: reading Envoy's counters, gauges and Prometheus text.
//!
//! Every test gets its own ports, Envoy and upstreams, so tests run in parallel.
//!
//! The harness runs on the host only. For a wasm target it compiles to nothing, so the
//! conventional proxy-wasm build at the workspace root (`cargo build --target wasm32-wasip1
//! --release`) builds the filter modules instead of failing inside this crate.
#![cfg(not(target_family = "wasm"))]

pub mod bench;
pub mod binaryen;
pub mod client;
pub mod config;
pub mod envoy;
pub mod exports;
pub mod fleet;
pub mod grpc;
pub mod lab;
pub mod paths;
pub mod prereq;
pub mod shipped;
pub mod stats;
pub mod upstream;
pub mod wasm;
mod wire;

pub use client::{get, parallel, request, Response};
pub use config::{basic_proxy_config, ClusterSpec, ProxyConfig, RouteSpec};
pub use envoy::{free_port, Envoy, EnvoyOptions, ENVOY_VERSION};
pub use upstream::{Behavior, Mode, RequestRecord, Upstream};
pub use wasm::filter_wasm;
