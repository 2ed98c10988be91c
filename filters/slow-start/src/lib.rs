//! # slow-start
//!
//! Proxy-wasm slow-start warm-up: ramps cold or recovering replicas by first success, primes their caches, and self-protects in admit mode.
//!
//! (Being written: this stub only keeps the workspace building.)

#[cfg(feature = "entrypoint")]
proxy_wasm::main! {{
    proxy_wasm::set_log_level(proxy_wasm::types::LogLevel::Info);
}}
