//! The filter's part of the shared root context ([`FilterRoot`], one per worker per filter
//! instance): it parses the configuration (refusing bad config with the field named), ticks the
//! worker, and owns the callouts: priming requests and health checks are sent from the tick and
//! answered here (`dispatch_http_call` belongs to the context that sent it and cannot be
//! cancelled).
//!
//! Sending and answering callouts are generic over the worker's [`Host`] ([`send_due`],
//! [`callout_answered`]), so a test drives the tick and the callouts' answers on a fake host.

use std::cell::RefCell;
use std::rc::Rc;

use resilience_core::config::ConfigError;
use resilience_host::host::Host;
use resilience_host::root::{Filter, FilterRoot};
use resilience_host::{callout, clock};

use crate::config;
use crate::http::SlowStartHttp;
use crate::worker::Worker;

/// Largest discovery document read (bytes); a longer one is cut and then refused as invalid.
const MAX_DISCOVERY_BYTES: usize = 1 << 20;

/// The slow-start filter's part of the shared root context.
pub struct SlowStartFilter;

/// The root context of the slow-start filter.
pub type SlowStartRoot = FilterRoot<SlowStartFilter>;

impl<H: Host + Clone + 'static> Filter<H> for SlowStartFilter {
    const NAME: &'static str = "slow_start";
    type Worker = Worker<H>;
    type Stream = SlowStartHttp<H>;

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
        send_due(worker, now_ms);
    }

    fn stream(
        host: H,
        worker: Option<Rc<RefCell<Worker<H>>>>,
        _context_id: u32,
    ) -> SlowStartHttp<H> {
        SlowStartHttp::on(host, worker)
    }

    fn on_http_call_response(w: &mut Worker<H>, token_id: u32, body_size: usize) {
        callout_answered(w, token_id, body_size);
    }
}

/// The answer to callout `token_id` arrived on `w`'s root context (`body_size` as the host
/// reported it): the discovery document, or a priming request's or health check's answer.
pub fn callout_answered<H: Host>(w: &mut Worker<H>, token_id: u32, body_size: usize) {
    if w.is_discovery(token_id) {
        let status = callout::response_status_on(w.host());
        let body = callout::response_body_on(w.host(), body_size, MAX_DISCOVERY_BYTES);
        w.discovery_answered(status, body);
        return;
    }
    // No `:status` means the callout failed (Envoy calls back with zero headers).
    let success = callout::response_status_on(w.host())
        .is_some_and(|s| !w.config.global.classifier.statuses.contains(s));
    let now_ms = clock::now_ms_on(w.host());
    w.callout_answered(token_id, success, now_ms);
}

/// The tick: fetch the endpoint list when due, then tick the worker and send the priming
/// requests and health checks it asks for, all through `w`'s host.
pub fn send_due<H: Host>(w: &mut Worker<H>, now_ms: u64) {
    if let Some(req) = w.discovery_due(now_ms) {
        let headers: Vec<(&str, &str)> = req
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        match callout::send_on(w.host(), &req.cluster, &headers, None, req.timeout_ms) {
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
        match callout::send_on(
            w.host(),
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
