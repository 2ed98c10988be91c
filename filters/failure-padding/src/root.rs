//! The filter's part of the shared root context ([`FilterRoot`], one per worker per filter
//! instance): it parses the configuration (refusing bad config with the field named), owns the
//! worker's state, and runs the tick that releases held responses and syncs the learned
//! latencies. The worker re-arms the timer itself when a held response is due before the next
//! tick.

use std::cell::RefCell;
use std::rc::Rc;

use resilience_core::config::ConfigError;
use resilience_host::host::Host;
use resilience_host::root::{Filter, FilterRoot};

use crate::config;
use crate::http::PaddingHttp;
use crate::worker::Worker;

/// The failure-padding filter's part of the shared root context.
pub struct PaddingFilter;

/// The root context of the failure-padding filter.
pub type PaddingRoot = FilterRoot<PaddingFilter>;

impl<H: Host + Clone + 'static> Filter<H> for PaddingFilter {
    const NAME: &'static str = "failure_padding";
    type Worker = Worker<H>;
    type Stream = PaddingHttp<H>;

    fn configure(
        host: H,
        config: &[u8],
        plugin: &str,
        now_ms: u64,
    ) -> Result<Worker<H>, ConfigError> {
        let cfg = config::parse(config)?;
        Ok(Worker::on(host, Rc::new(cfg), plugin, now_ms))
    }

    fn tick_period_ms(worker: &Worker<H>) -> u64 {
        worker.period_ms()
    }

    fn on_tick(worker: &mut Worker<H>, now_ms: u64) {
        worker.tick(now_ms);
    }

    fn stream(host: H, worker: Option<Rc<RefCell<Worker<H>>>>, context_id: u32) -> PaddingHttp<H> {
        PaddingHttp::on(host, worker, context_id)
    }
}
