//! # failure-padding
//!
//! Proxy-wasm failure-latency padding: holds failed responses to the learned success latency so least-request balancers stop black-holing into a fast-failing host.
//!
//! (Being written: this stub only keeps the workspace building.)

#[cfg(feature = "entrypoint")]
proxy_wasm::main! {{
    proxy_wasm::set_log_level(proxy_wasm::types::LogLevel::Info);
}}
