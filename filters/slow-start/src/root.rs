//! The root context: one per worker per filter instance. It parses the configuration (refusing
//! bad config with the field named), ticks the worker, and owns the callouts: priming requests
//! and health checks are sent from the tick and answered here (`dispatch_http_call` belongs to
//! the context that sent it and cannot be cancelled).

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::ContextType;
use resilience_host::{callout, clock, props};

use crate::config;
use crate::http::SlowStartHttp;
use crate::worker::Worker;

/// Largest discovery document read (bytes); a longer one is cut and then refused as invalid.
const MAX_DISCOVERY_BYTES: usize = 1 << 20;

/// The root context of the slow-start filter.
#[derive(Default)]
pub struct SlowStartRoot {
    worker: Option<Rc<RefCell<Worker>>>,
}

impl SlowStartRoot {
    pub fn new() -> Self {
        Self::default()
    }

    fn send_due(&self, w: &mut Worker, now_ms: u64) {
        if let Some(req) = w.discovery_due(now_ms) {
            let headers: Vec<(&str, &str)> = req
                .headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            match callout::send(&req.cluster, &headers, None, req.timeout_ms) {
                Ok(token) => w.discovery_sent(Some(token)),
                Err(e) => {
                    log::warn!(
                        "slow_start: cannot fetch the endpoint list through cluster {:?}: {}",
                        req.cluster,
                        e.as_str()
                    );
                    w.discovery_sent(None);
                }
            }
        }
        for o in w.tick(now_ms) {
            let Some(req) = w.callout_request(&o) else {
                continue;
            };
            let headers: Vec<(&str, &str)> = req
                .headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            match callout::send(
                &req.cluster,
                &headers,
                req.body.as_deref().map(str::as_bytes),
                req.timeout_ms,
            ) {
                Ok(token) => w.callout_sent(token, o),
                Err(e) => {
                    log::warn!(
                        "slow_start: cannot send a {:?} through cluster {:?}: {}",
                        o.dispatch,
                        req.cluster,
                        e.as_str()
                    );
                    w.callout_refused(o, now_ms);
                }
            }
        }
    }
}

impl Context for SlowStartRoot {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        _num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        let Some(w) = &self.worker else {
            return;
        };
        let Ok(mut w) = w.try_borrow_mut() else {
            return;
        };
        if w.is_discovery(token_id) {
            let status = callout::response_status();
            let body = callout::response_body(body_size, MAX_DISCOVERY_BYTES);
            w.discovery_answered(status, body);
            return;
        }
        // No `:status` means the callout failed (Envoy calls back with zero headers).
        let success = callout::response_status()
            .is_some_and(|s| !w.config.global.classifier.statuses.contains(s));
        w.callout_answered(token_id, success, clock::now_ms());
    }
}

impl RootContext for SlowStartRoot {
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
                log::error!("slow_start: invalid configuration: {e}");
                false
            }
        }
    }

    fn on_tick(&mut self) {
        if let Some(w) = &self.worker {
            if let Ok(mut w) = w.try_borrow_mut() {
                self.send_due(&mut w, clock::now_ms());
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        let worker = self.worker.as_ref().map(Rc::clone);
        Some(Box::new(SlowStartHttp::new(worker)))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
