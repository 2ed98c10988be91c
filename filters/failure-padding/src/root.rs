//! The root context: one per worker per filter instance. It parses the configuration (refusing
//! bad config with the field named), owns the worker's state, and runs the tick that releases
//! held responses and syncs the learned latencies.

use std::cell::RefCell;
use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::ContextType;
use resilience_host::{clock, props};

use crate::config;
use crate::http::PaddingHttp;
use crate::worker::Worker;

/// The root context of the failure-padding filter.
#[derive(Default)]
pub struct PaddingRoot {
    worker: Option<Rc<RefCell<Worker>>>,
}

impl PaddingRoot {
    pub fn new() -> Self {
        Self::default()
    }
}

impl Context for PaddingRoot {}

impl RootContext for PaddingRoot {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        match config::parse(&bytes) {
            Ok(cfg) => {
                let plugin = props::plugin_name().unwrap_or_else(|| "default".to_owned());
                let mut worker = Worker::new(Rc::new(cfg), &plugin, clock::now_ms());
                if !worker.start_timer() {
                    log::error!("failure_padding: the proxy refused to start the tick timer");
                    return false;
                }
                self.worker = Some(Rc::new(RefCell::new(worker)));
                true
            }
            Err(e) => {
                log::error!("failure_padding: invalid configuration: {e}");
                false
            }
        }
    }

    fn on_tick(&mut self) {
        if let Some(w) = &self.worker {
            if let Ok(mut w) = w.try_borrow_mut() {
                w.tick(clock::now_ms());
            }
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        let worker = self.worker.as_ref().map(Rc::clone);
        Some(Box::new(PaddingHttp::new(worker, context_id)))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
