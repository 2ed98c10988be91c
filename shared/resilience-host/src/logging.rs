//! Logging set-up shared by every filter.
//!
//! Filters log through the `log` crate; the SDK forwards it to the proxy's log at the proxy's
//! level. A panic should never happen (clippy denies the usual sources), but if one does, the hook
//! logs it at critical level with the filter's name before the VM traps, so the operator sees why.

/// Install the log forwarding and the panic hook once per VM.
pub fn init(filter: &'static str) {
    proxy_wasm::set_log_level(proxy_wasm::types::LogLevel::Trace);
    std::panic::set_hook(Box::new(move |info| {
        let _ = proxy_wasm::hostcalls::log(
            proxy_wasm::types::LogLevel::Critical,
            &format!("{filter}: panic: {info}"),
        );
    }));
}
