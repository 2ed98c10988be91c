//! The root context: one per worker per filter instance. It parses and compiles the
//! configuration (refusing bad config with the field named), owns the worker's state, and ticks.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::ContextType;
use resilience_host::{clock, props};

use crate::config;
use crate::http::ValidatorHttp;
use crate::worker::Worker;

/// The root context of the request-validator filter.
#[derive(Default)]
pub struct ValidatorRoot {
    worker: Option<Rc<RefCell<Worker>>>,
}

impl ValidatorRoot {
    pub fn new() -> Self {
        Self::default()
    }
}

impl Context for ValidatorRoot {}

impl RootContext for ValidatorRoot {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        match config::parse(&bytes) {
            Ok(cfg) => {
                let plugin = props::plugin_name().unwrap_or_else(|| "default".to_owned());
                let sync = cfg.global.sync_interval_ms;
                self.worker = Some(Rc::new(RefCell::new(Worker::new(Rc::new(cfg), &plugin))));
                self.set_tick_period(Duration::from_millis(sync));
                true
            }
            Err(e) => {
                log::error!("request_validator: invalid configuration: {e}");
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
        Some(Box::new(ValidatorHttp::new(worker, context_id)))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
