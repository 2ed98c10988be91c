//! The filter's part of the shared root context ([`FilterRoot`], one per worker per filter
//! instance): it parses the configuration (refusing bad config with the field named), owns the
//! worker's breakers, and publishes them on the tick.

use std::cell::RefCell;
use std::rc::Rc;

use proxy_wasm::traits::HttpContext;
use resilience_core::config::ConfigError;
use resilience_host::root::{Filter, FilterRoot};

use crate::config;
use crate::http::BreakerHttp;
use crate::worker::Worker;

/// The circuit-breaker filter's part of the shared root context.
pub struct BreakerFilter;

/// The root context of the circuit-breaker filter.
pub type BreakerRoot = FilterRoot<BreakerFilter>;

impl Filter for BreakerFilter {
    const NAME: &'static str = "circuit_breaker";
    type Worker = Worker;

    fn configure(config: &[u8], plugin: &str, _now_ms: u64) -> Result<Worker, ConfigError> {
        let cfg = config::parse(config)?;
        Ok(Worker::new(Rc::new(cfg), plugin))
    }

    fn tick_period_ms(worker: &Worker) -> u64 {
        worker.config.global.sync_interval_ms
    }

    fn on_tick(worker: &mut Worker, now_ms: u64) {
        worker.tick(now_ms);
    }

    fn create_http_context(
        worker: Option<Rc<RefCell<Worker>>>,
        _context_id: u32,
    ) -> Box<dyn HttpContext> {
        Box::new(BreakerHttp::new(worker))
    }
}
