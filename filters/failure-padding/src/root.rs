//! The filter's part of the shared root context ([`FilterRoot`], one per worker per filter
//! instance): it parses the configuration (refusing bad config with the field named), owns the
//! worker's state, and runs the tick that releases held responses and syncs the learned
//! latencies. The worker re-arms the timer itself when a held response is due before the next
//! tick.

use std::cell::RefCell;
use std::rc::Rc;

use proxy_wasm::traits::HttpContext;
use resilience_core::config::ConfigError;
use resilience_host::root::{Filter, FilterRoot};

use crate::config;
use crate::http::PaddingHttp;
use crate::worker::Worker;

/// The failure-padding filter's part of the shared root context.
pub struct PaddingFilter;

/// The root context of the failure-padding filter.
pub type PaddingRoot = FilterRoot<PaddingFilter>;

impl Filter for PaddingFilter {
    const NAME: &'static str = "failure_padding";
    type Worker = Worker;

    fn configure(config: &[u8], plugin: &str, now_ms: u64) -> Result<Worker, ConfigError> {
        let cfg = config::parse(config)?;
        Ok(Worker::new(Rc::new(cfg), plugin, now_ms))
    }

    fn tick_period_ms(worker: &Worker) -> u64 {
        worker.period_ms()
    }

    fn on_tick(worker: &mut Worker, now_ms: u64) {
        worker.tick(now_ms);
    }

    fn create_http_context(
        worker: Option<Rc<RefCell<Worker>>>,
        context_id: u32,
    ) -> Box<dyn HttpContext> {
        Box::new(PaddingHttp::new(worker, context_id))
    }
}
