//! # request-validator
//!
//! Proxy-wasm fast-fail validator: strict, cheap request checks at the edge, deadline-aware fast fail and load shedding that always admits health checks.
//!
//! (Being written: this stub only keeps the workspace building.)

#[cfg(feature = "entrypoint")]
proxy_wasm::main! {{
    proxy_wasm::set_log_level(proxy_wasm::types::LogLevel::Info);
}}
