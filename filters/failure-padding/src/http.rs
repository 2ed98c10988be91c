//! The per-request side: note when the request arrived, judge the response, hold a failure.
//!
//! At the request headers the route's settings and key are chosen, health checks recognised and
//! the caller's deadline read (request headers cannot be read once the response is under way). At the response headers a *failure* (the route's
//! classifier: 5xx except 501, Envoy-local failures, gRPC failure codes in the headers; 4xx are
//! not failures unless configured) is decided on: held until it took as long as the route's
//! learned target, or skipped with a reason. A held response gets its decision header first
//! (header maps cannot be changed after a resume) and the callback returns `Pause`; the worker's
//! tick resumes it. At the end of the stream a success teaches the route its latency, and a
//! response still held (the client went away) gives its in-flight slot back.
//!
//! The latency measured is this proxy's: from the request headers to the response headers, the
//! same clock for what is learned and what is padded.
//!
//! The context reads headers, properties and the clock through its [`Host`], the same calls and
//! as many as before the trait existed: the per-request path pays nothing for being testable.

use std::cell::RefCell;
use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, MapType};
use resilience_core::backoff::random_u64;
use resilience_core::deadline::{parse_grpc_timeout, parse_millis};
use resilience_core::keyed::Handle;
use resilience_core::outcome::{
    local_failure_from_flags, parse_grpc_status, Classifier, Outcome, ResponseFacts,
};
use resilience_core::padding::{decide, Cap, Decision, Skip};
use resilience_host::host::Host;
use resilience_host::request::{self, HostRequest};
use resilience_host::wasm::WasmHost;
use resilience_host::{clock, props};

use crate::config::{Mode, Settings, DECISION_HEADER};
use crate::worker::Worker;

/// The HTTP context of the failure-padding filter, on host `H` (the real proxy unless a test
/// says otherwise).
pub struct PaddingHttp<H: Host = WasmHost> {
    host: H,
    worker: Option<Rc<RefCell<Worker<H>>>>,
    context_id: u32,
    /// The request was seen, has a key and its route is not disabled.
    active: bool,
    health_check: bool,
    /// The response was queued to be held (it may have been released since).
    held: bool,
    /// This request's entry in the worker's table.
    entry: Option<Handle>,
    start_ms: u64,
    first_byte_ms: u64,
    status: u16,
    grpc_status: Option<u32>,
    /// The caller's deadline read from the request (its headers are gone by the response).
    deadline_ms: Option<u64>,
    /// The request is surely not gRPC (known at no cost): its response's `grpc-status` is not read.
    plain_http: bool,
}

impl PaddingHttp {
    /// A stream on the real proxy.
    pub fn new(worker: Option<Rc<RefCell<Worker>>>, context_id: u32) -> Self {
        PaddingHttp::on(WasmHost, worker, context_id)
    }
}

impl<H: Host> PaddingHttp<H> {
    /// Stream `context_id` on `host`, padding with `worker`'s targets and slots.
    pub fn on(host: H, worker: Option<Rc<RefCell<Worker<H>>>>, context_id: u32) -> Self {
        PaddingHttp {
            host,
            worker,
            context_id,
            active: false,
            health_check: false,
            held: false,
            entry: None,
            start_ms: 0,
            first_byte_ms: 0,
            status: 0,
            grpc_status: None,
            deadline_ms: None,
            plain_http: false,
        }
    }

    fn on_request(&mut self, w: &mut Worker<H>) {
        let mut req = HostRequest::on(&self.host);
        let config = Rc::clone(&w.config);
        let selected = config.routes.select(&mut req);
        let settings: &Settings = selected.settings;
        if settings.mode == Mode::Disabled {
            return;
        }
        let base = selected.key(&mut req, &config.global.generic_route_names, || {
            props::cluster_name_on(&self.host)
        });
        self.entry = w.entry(&base, selected.index);
        if self.entry.is_none() {
            return;
        }
        self.health_check = settings.health_checks.iter().any(|m| m.matches(&mut req));
        if !self.health_check {
            self.deadline_ms = Self::deadline_ms(&self.host, settings);
        }
        self.start_ms = clock::now_ms_on(&self.host);
        self.plain_http = request::known_plain_http_on(&self.host);
        self.active = true;
    }

    /// Whether the response so far is a failure under `classifier`.
    fn is_failure(&self, classifier: &Classifier) -> bool {
        let local = if self.status == 0 || self.status >= 500 {
            props::u64_on(&self.host, &["response", "flags"]).and_then(local_failure_from_flags)
        } else {
            None
        };
        let facts = ResponseFacts {
            status: self.status,
            grpc_status: self.grpc_status,
            local,
            duration_ms: 0,
        };
        classifier.classify(&facts).is_failure()
    }

    /// The caller's whole budget in ms, counted from when it sent the request: the smallest of
    /// `grpc-timeout`, `x-envoy-expected-rq-timeout-ms` and the configured header. Read with the
    /// request: Envoy 1.40 refuses request-header reads once the response is under way.
    fn deadline_ms(host: &H, settings: &Settings) -> Option<u64> {
        let header = |name: &str| request::map_value_on(host, MapType::HttpRequestHeaders, name);
        let grpc = header("grpc-timeout").and_then(|v| parse_grpc_timeout(&v));
        let envoy = header("x-envoy-expected-rq-timeout-ms").and_then(|v| parse_millis(&v));
        let custom = settings
            .deadline_header
            .as_deref()
            .and_then(header)
            .and_then(|v| parse_millis(&v));
        [grpc, envoy, custom].into_iter().flatten().min()
    }

    /// Decide on a failed response; `Pause` when it is held.
    fn on_failure(&mut self, w: &mut Worker<H>, now_ms: u64) -> Action {
        let config = Rc::clone(&w.config);
        let Some(handle) = self.entry else {
            return Action::Continue;
        };
        let Some(entry) = w.entries.get_mut(handle) else {
            return Action::Continue;
        };
        let settings = config.settings(entry.route_index);
        entry.pending.failures += 1;
        if self.health_check {
            entry.pending.skip(Skip::HealthCheck);
            skipped_header(&self.host, Skip::HealthCheck);
            return Action::Continue;
        }
        let elapsed = now_ms.saturating_sub(self.start_ms);
        let deadline = self.deadline_ms;
        let random = if settings.policy.jitter > 0.0 {
            random_u64()
        } else {
            0
        };
        let hold = match decide(&settings.policy, entry.target_ms, elapsed, deadline, random) {
            Decision::Skip(s) => {
                entry.pending.skip(s);
                skipped_header(&self.host, s);
                return Action::Continue;
            }
            Decision::Hold(h) => h,
        };
        if settings.mode == Mode::DryRun {
            entry.pending.would_pad += 1;
            entry.pending.would_pad_ms += hold.hold_ms;
            log::debug!(
                "failure_padding {}: dry run: would hold a failed response for {} ms (target {} ms)",
                w.entries.key(handle).unwrap_or_default(),
                hold.hold_ms,
                hold.target_ms
            );
            request::set_header_on(
                &self.host,
                MapType::HttpResponseHeaders,
                DECISION_HEADER,
                &format!(
                    "dry_run; would_pad_ms={}; target={}",
                    hold.hold_ms, hold.target_ms
                ),
            );
            return Action::Continue;
        }
        match w.try_hold(handle, self.context_id, &hold, now_ms) {
            Ok(()) => {
                if let Some(entry) = w.entries.get_mut(handle) {
                    entry.pending.padded += 1;
                    match hold.capped {
                        Some(Cap::MaxPadding) => entry.pending.capped_max_padding += 1,
                        Some(Cap::Deadline) => entry.pending.capped_deadline += 1,
                        None => {}
                    }
                }
                self.held = true;
                let mut value = format!("padded; ms={}; target={}", hold.hold_ms, hold.target_ms);
                if let Some(c) = hold.capped {
                    value.push_str("; capped=");
                    value.push_str(c.as_str());
                }
                // Header maps are gone after a resume: the header goes on before the pause.
                request::set_header_on(
                    &self.host,
                    MapType::HttpResponseHeaders,
                    DECISION_HEADER,
                    &value,
                );
                Action::Pause
            }
            Err(s) => {
                if let Some(entry) = w.entries.get_mut(handle) {
                    entry.pending.skip(s);
                }
                skipped_header(&self.host, s);
                Action::Continue
            }
        }
    }

    /// The stream ended: learn from a success, give back a slot still held.
    fn finish(&mut self) {
        if !self.active {
            return;
        }
        self.active = false;
        let Some(worker) = self.worker.as_ref().map(Rc::clone) else {
            return;
        };
        let Ok(mut w) = worker.try_borrow_mut() else {
            return;
        };
        if self.held {
            self.held = false;
            w.abandon(self.context_id, clock::now_ms_on(&self.host));
        }
        if self.health_check || self.first_byte_ms == 0 || !(100..400).contains(&self.status) {
            return;
        }
        if !matches!(self.grpc_status, None | Some(0)) {
            return;
        }
        let Some(handle) = self.entry else {
            return;
        };
        let Some(index) = w.entries.get(handle).map(|e| e.route_index) else {
            return;
        };
        let config = Rc::clone(&w.config);
        let facts = ResponseFacts {
            status: self.status,
            grpc_status: self.grpc_status,
            local: None,
            duration_ms: 0,
        };
        if config.settings(index).classifier.classify(&facts).outcome == Outcome::Success {
            let latency = self.first_byte_ms.saturating_sub(self.start_ms);
            w.record_success(handle, latency);
        }
    }
}

impl<H: Host> PaddingHttp<H> {
    /// A body or trailer callback: `Pause` while the response is held, so that it stays held.
    /// Envoy makes these calls during a hold only with `allow_on_headers_stop_iteration` (without
    /// it a held header map stops the body too); there, "continue" would let the response go at
    /// its first body chunk, long before its release.
    fn while_held(&self) -> Action {
        if !self.held {
            return Action::Continue;
        }
        let held = self
            .worker
            .as_ref()
            .and_then(|w| w.try_borrow().ok().map(|w| w.is_holding(self.context_id)));
        if held == Some(true) {
            Action::Pause
        } else {
            Action::Continue
        }
    }
}

fn skipped_header<H: Host>(host: &H, s: Skip) {
    request::set_header_on(
        host,
        MapType::HttpResponseHeaders,
        DECISION_HEADER,
        &format!("skipped; reason={}", s.as_str()),
    );
}

impl<H: Host> Context for PaddingHttp<H> {}

impl<H: Host> resilience_host::stage::Stage for PaddingHttp<H> {}

impl<H: Host> HttpContext for PaddingHttp<H> {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(worker) = self.worker.as_ref().map(Rc::clone) else {
            return Action::Continue;
        };
        if let Ok(mut w) = worker.try_borrow_mut() {
            self.on_request(&mut w);
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if !self.active || self.first_byte_ms != 0 {
            return Action::Continue;
        }
        let now = clock::now_ms_on(&self.host);
        self.first_byte_ms = now.max(1);
        self.status = request::response_status_on(&self.host).unwrap_or(0);
        if !self.plain_http {
            self.grpc_status =
                request::map_value_on(&self.host, MapType::HttpResponseHeaders, "grpc-status")
                    .and_then(|v| parse_grpc_status(&v));
        }
        let Some(worker) = self.worker.as_ref().map(Rc::clone) else {
            return Action::Continue;
        };
        let Ok(mut w) = worker.try_borrow_mut() else {
            return Action::Continue;
        };
        let Some(index) = self
            .entry
            .and_then(|h| w.entries.get(h))
            .map(|e| e.route_index)
        else {
            return Action::Continue;
        };
        let config = Rc::clone(&w.config);
        if !self.is_failure(&config.settings(index).classifier) {
            return Action::Continue;
        }
        self.on_failure(&mut w, now)
    }

    fn on_http_response_body(&mut self, _body_size: usize, _end_of_stream: bool) -> Action {
        self.while_held()
    }

    fn on_http_response_trailers(&mut self, _num_trailers: usize) -> Action {
        if self.active {
            if let Some(g) =
                request::map_value_on(&self.host, MapType::HttpResponseTrailers, "grpc-status")
                    .and_then(|v| parse_grpc_status(&v))
            {
                self.grpc_status = Some(g);
            }
        }
        self.while_held()
    }

    fn on_log(&mut self) {
        self.finish();
    }
}

impl<H: Host> Drop for PaddingHttp<H> {
    /// A backstop: should a stream end without `on_log`, its slot still comes back.
    fn drop(&mut self) {
        if self.held {
            self.finish();
        }
    }
}
