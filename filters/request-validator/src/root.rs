//! The filter's part of the shared root context ([`FilterRoot`], one per worker per filter
//! instance): it parses and compiles the configuration (refusing bad config with the field
//! named), owns the worker's state, and ticks.

use std::cell::RefCell;
use std::rc::Rc;

use resilience_core::config::ConfigError;
use resilience_host::host::Host;
use resilience_host::root::{Filter, FilterRoot};

use crate::config;
use crate::http::ValidatorHttp;
use crate::worker::Worker;

/// The request-validator filter's part of the shared root context.
pub struct ValidatorFilter;

/// The root context of the request-validator filter.
pub type ValidatorRoot = FilterRoot<ValidatorFilter>;

impl<H: Host + Clone + 'static> Filter<H> for ValidatorFilter {
    const NAME: &'static str = "request_validator";
    type Worker = Worker<H>;
    type Stream = ValidatorHttp<H>;

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

    fn stream(
        host: H,
        worker: Option<Rc<RefCell<Worker<H>>>>,
        context_id: u32,
    ) -> ValidatorHttp<H> {
        ValidatorHttp::on(host, worker, context_id)
    }
}
