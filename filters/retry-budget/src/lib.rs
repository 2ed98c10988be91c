//! # retry-budget
//!
//! Proxy-wasm retry budget: bounds the retry rate across all Envoy workers, sheds excess inbound retries, stops amplification across hops.
//!
//! (Being written: this stub only keeps the workspace building.)

#[cfg(feature = "entrypoint")]
proxy_wasm::main! {{
    proxy_wasm::set_log_level(proxy_wasm::types::LogLevel::Info);
}}
