//! The filter's part of the shared root context ([`FilterRoot`], one per worker per filter
//! instance): it parses the configuration (refusing bad config with the field named), owns the
//! worker's breakers, and publishes them on the tick.

use std::cell::RefCell;
use std::rc::Rc;

use resilience_core::config::ConfigError;
use resilience_host::host::Host;
use resilience_host::root::{Filter, FilterRoot};

use crate::config;
use crate::http::BreakerHttp;
use crate::worker::Worker;

/// The circuit-breaker filter's part of the shared root context.
pub struct BreakerFilter;

/// The root context of the circuit-breaker filter.
pub type BreakerRoot = FilterRoot<BreakerFilter>;

impl<H: Host + Clone + 'static> Filter<H> for BreakerFilter {
    const NAME: &'static str = "circuit_breaker";
    type Worker = Worker<H>;
    type Stream = BreakerHttp<H>;

    fn configure(
        host: H,
        config: &[u8],
        plugin: &str,
        _now_ms: u64,
    ) -> Result<Worker<H>, ConfigError> {
        let cfg = config::parse(config)?;
        Ok(Worker::on(host, Rc::new(cfg), plugin))
    }

    fn tick_period_ms(worker: &Worker<H>) -> u64 {
        worker.config.global.sync_interval_ms
    }

    fn on_tick(worker: &mut Worker<H>, now_ms: u64) {
        worker.tick(now_ms);
    }

    fn on_http_call_response(worker: &mut Worker<H>, token_id: u32, _body_size: usize) {
        let now = resilience_host::clock::now_ms_on(&worker.host);
        worker.active_probe_answered(token_id, now);
    }

    fn stream(host: H, worker: Option<Rc<RefCell<Worker<H>>>>, _context_id: u32) -> BreakerHttp<H> {
        BreakerHttp::on(host, worker)
    }
}
