//! The filter's part of the shared root context ([`FilterRoot`], one per worker per filter
//! instance): it parses the configuration (refusing bad config with the field named), owns the
//! worker's budgets, and publishes them on the tick.

use std::cell::RefCell;
use std::rc::Rc;

use resilience_core::config::ConfigError;
use resilience_host::host::Host;
use resilience_host::root::{Filter, FilterRoot};

use crate::config;
use crate::http::RetryBudgetHttp;
use crate::worker::Worker;

/// The retry-budget filter's part of the shared root context.
pub struct RetryBudgetFilter;

/// The root context of the retry-budget filter.
pub type RetryBudgetRoot = FilterRoot<RetryBudgetFilter>;

impl<H: Host + Clone + 'static> Filter<H> for RetryBudgetFilter {
    const NAME: &'static str = "retry_budget";
    type Worker = Worker<H>;
    type Stream = RetryBudgetHttp<H>;

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
        _context_id: u32,
    ) -> RetryBudgetHttp<H> {
        RetryBudgetHttp::on(host, worker)
    }
}
