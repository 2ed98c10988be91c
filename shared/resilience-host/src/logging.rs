//! Logging set-up shared by every filter.
//!
//! Filters log through the `log` crate; records go to the proxy's log, which filters them by its
//! own level. The forwarding is ours, not the SDK's: the SDK's logger unwraps `proxy_log`'s status
//! and would trap the VM on a refused log line; here a refused line is dropped. A panic should
//! never happen (clippy denies the usual sources), but if one does, the hook logs it at critical
//! level with the filter's name before the VM traps, so the operator sees why.

use log::{LevelFilter, Log, Metadata, Record};
use proxy_wasm::types::LogLevel;

use crate::abi;

/// Forwards `log` records to the proxy's log through [`abi::log`].
struct HostLogger;

static LOGGER: HostLogger = HostLogger;

impl Log for HostLogger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let level = match record.level() {
            log::Level::Trace => LogLevel::Trace,
            log::Level::Debug => LogLevel::Debug,
            log::Level::Info => LogLevel::Info,
            log::Level::Warn => LogLevel::Warn,
            log::Level::Error => LogLevel::Error,
        };
        let _ = abi::log(level, &record.args().to_string());
    }

    fn flush(&self) {}
}

/// Install the log forwarding and the panic hook once per VM.
pub fn init(filter: &'static str) {
    // Err only if a logger is already installed (a second init): that one keeps forwarding.
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(LevelFilter::Trace);
    std::panic::set_hook(Box::new(move |info| {
        let _ = abi::log(LogLevel::Critical, &format!("{filter}: panic: {info}"));
    }));
}
