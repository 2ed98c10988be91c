//! The per-request side: decide at request headers, observe the response, report the outcome.
//!
//! A request is in one of four roles: *unguarded* (disabled route, forced closed, key overflow or
//! a shared-data error: it passes and is not counted), *counted* (closed breaker: its outcome goes
//! into the worker's delta), *probe* (it holds one of the half-open permits: its outcome is
//! reported under CAS at once) or *rejected* (a local reply; nothing reaches the upstream). In
//! dry-run a would-be rejection passes, is counted as `dry_run_would_reject`, is explained by the
//! response header, and its outcome is not recorded (as if it had been rejected).
//!
//! The context reads headers, properties and the clock through its [`Host`], the same calls and
//! as many as before the trait existed: the per-request path pays nothing for being testable.

use std::cell::RefCell;
use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, MapType};
use resilience_core::breaker::{Admission, ProbeGrant, ProbeOutcome, Rejection, State};
use resilience_core::deadline::parse_millis;
use resilience_core::grpc::{Code, Pushback, Refusal};
use resilience_core::keyed::Handle;
use resilience_core::outcome::{
    local_failure_from_flags, parse_grpc_status, Classifier, LocalFailure, ResponseFacts,
};
use resilience_core::problem::{bounded, Problem};
use resilience_core::routes::RequestView;
use resilience_host::host::Host;
use resilience_host::request::{self, HostRequest};
use resilience_host::wasm::WasmHost;
use resilience_host::{clock, props, reply};

use crate::config::{Mode, Settings, DECISION_HEADER};
use crate::worker::Worker;

/// Upper bound on an upstream's `retry-after` we remember (one day); larger values are clamped
/// anyway by `max_open_duration`.
const MAX_HINT_MS: u64 = 86_400_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Unguarded,
    Counted,
    Probe { generation: u32 },
    Rejected,
    WouldReject { rejection: Rejection, forced: bool },
}

/// The HTTP context of the circuit-breaker filter, on host `H` (the real proxy unless a test says
/// otherwise).
pub struct BreakerHttp<H: Host = WasmHost> {
    host: H,
    worker: Option<Rc<RefCell<Worker<H>>>>,
    role: Role,
    /// This request's breaker in the worker's table.
    entry: Option<Handle>,
    start_ms: u64,
    first_byte_ms: u64,
    /// When the outcome became known: the response headers' time, or 0 when it is not known
    /// before the end (no response headers, or trailers that may carry the gRPC status).
    outcome_ms: u64,
    status: u16,
    grpc_status: Option<u32>,
    hint_ms: u64,
    /// Whether the slow-call signal needs this request's latency.
    track_latency: bool,
    /// The request is surely not gRPC (known at no cost): its response's `grpc-status` is not read.
    plain_http: bool,
}

impl BreakerHttp {
    /// A stream on the real proxy.
    pub fn new(worker: Option<Rc<RefCell<Worker>>>) -> Self {
        BreakerHttp::on(WasmHost, worker)
    }
}

impl<H: Host + Clone> BreakerHttp<H> {
    /// A stream on `host`, deciding with `worker`'s breakers.
    pub fn on(host: H, worker: Option<Rc<RefCell<Worker<H>>>>) -> Self {
        BreakerHttp {
            host,
            worker,
            role: Role::Unguarded,
            entry: None,
            start_ms: 0,
            first_byte_ms: 0,
            outcome_ms: 0,
            status: 0,
            grpc_status: None,
            hint_ms: 0,
            track_latency: false,
            plain_http: false,
        }
    }

    fn decide(&mut self, w: &mut Worker<H>) -> Action {
        let mut req = HostRequest::on(&self.host);
        let config = Rc::clone(&w.config);
        let selected = config.routes.select(&mut req);
        let settings: &Settings = selected.settings;
        if settings.mode == Mode::Disabled || settings.force_closed {
            return Action::Continue;
        }
        let base = selected.key(&mut req, &config.global.generic_route_names, || {
            props::cluster_name_on(&self.host)
        });
        self.plain_http = request::known_plain_http_on(&self.host);
        let header_value = config
            .global
            .key_header
            .as_deref()
            .map(|h| req.header(h).unwrap_or("-").to_owned());
        self.entry = w.entry(&base, header_value.as_deref(), selected.index);
        let Some(handle) = self.entry else {
            return Action::Continue;
        };
        let Some(entry) = w.entries.get_mut(handle) else {
            return Action::Continue;
        };
        entry.pending.requests += 1;
        // The clock is a host call: read it only when something needs the time. A closed,
        // quiet breaker without the slow-call signal decides without it.
        self.track_latency = settings.classifier.slow_call_ms.is_some();
        let now = if self.track_latency
            || entry.view.state != State::Closed
            || entry.hot_until_ms > 0
            || settings.force_open
        {
            clock::now_ms_on(&self.host)
        } else {
            0
        };
        self.start_ms = now;
        if settings.force_open {
            return self.reject(
                w,
                settings,
                Rejection::Open {
                    reason: None,
                    retry_after_s: 1,
                },
                true,
            );
        }
        if entry.hot_until_ms > now {
            w.refresh_if_hot(handle, now);
        }
        let Some(entry) = w.entries.get_mut(handle) else {
            return Action::Continue;
        };
        // With a working active probe, an open breaker waits for it rather than sending users'
        // requests into the dependency as half-open probes, for at most max_open_duration.
        let admission = if settings.active_probe.is_some() && !entry.active_probe_unsendable {
            entry
                .view
                .admit_awaiting_probe(now, settings.policy.max_open_duration_ms)
        } else {
            entry.view.admit(now)
        };
        let decision = match admission {
            Admission::Allow => ProbeGrant::Closed,
            Admission::Reject(r) => ProbeGrant::Rejected(r),
            Admission::AskShared => w.acquire_probe(handle, now),
        };
        match decision {
            ProbeGrant::Closed => {
                self.role = Role::Counted;
                Action::Continue
            }
            ProbeGrant::Granted { generation } => {
                self.role = Role::Probe { generation };
                Action::Continue
            }
            ProbeGrant::Rejected(r) => self.reject(w, settings, r, false),
        }
    }

    fn reject(
        &mut self,
        w: &mut Worker<H>,
        settings: &Settings,
        r: Rejection,
        forced: bool,
    ) -> Action {
        let Some(handle) = self.entry else {
            return Action::Continue;
        };
        let key = w.entries.key(handle).unwrap_or_default().to_owned();
        let Some(entry) = w.entries.get_mut(handle) else {
            return Action::Continue;
        };
        if settings.mode == Mode::DryRun {
            entry.pending.would_reject += 1;
            log::debug!(
                "circuit_breaker {key}: dry run: would reject ({})",
                explain(r, forced)
            );
            self.role = Role::WouldReject {
                rejection: r,
                forced,
            };
            return Action::Continue;
        }
        entry.pending.rejected += 1;
        self.role = Role::Rejected;
        let retry_after = r.retry_after_s().to_string();
        let decision = explain(r, forced);
        let mut headers: Vec<(&str, &str)> = vec![
            ("retry-after", retry_after.as_str()),
            (DECISION_HEADER, decision.as_str()),
        ];
        for (k, v) in &settings.rejection.headers {
            headers.push((k.as_str(), v.as_str()));
        }
        let reason = if forced {
            "forced_open"
        } else {
            r.reason().map_or("unknown", |x| x.as_str())
        };
        let wire = reply::request_wire_on(&self.host);
        match &settings.rejection.body {
            Some((body, content_type)) if wire.is_none() => {
                headers.push(("content-type", content_type.as_str()));
                reply::send_on(
                    &self.host,
                    settings.rejection.status,
                    &headers,
                    body.as_bytes(),
                );
            }
            _ => {
                let problem = Problem {
                    status: settings.rejection.status,
                    kind: "circuit-open",
                    title: "Circuit breaker open",
                    detail: bounded(
                        &format!(
                            "Requests for {key} are rejected while its circuit breaker is {} ({reason}); retry after {} s.",
                            r.state().as_str(),
                            r.retry_after_s()
                        ),
                        256,
                    ),
                    extensions: vec![
                        ("breaker", serde_json::Value::from(key.clone())),
                        ("state", serde_json::Value::from(r.state().as_str())),
                        ("reason", serde_json::Value::from(reason)),
                        ("retry_after", serde_json::Value::from(r.retry_after_s())),
                    ],
                };
                let ms = r.retry_after_s().saturating_mul(1000);
                let refusal = Refusal::new(Code::Unavailable, "circuit_breaker", reason)
                    .with_pushback(Pushback::After { ms });
                reply::send_problem_to_on(&self.host, wire, &problem, &refusal, &headers);
            }
        }
        Action::Pause
    }

    /// What the response tells us: status, gRPC status and the upstream's back-off hint.
    fn observe_response_headers(&mut self) {
        let host = &self.host;
        let header = |name| request::map_value_on(host, MapType::HttpResponseHeaders, name);
        // The outcome is recorded as of now, when it became known, not when the stream ends:
        // in the pack the clock was already read for this callback (padding, the budget), so
        // the end of the stream needs no host call of its own.
        self.outcome_ms = clock::now_ms_on(host);
        if self.track_latency {
            self.first_byte_ms = self.outcome_ms;
        }
        self.status = request::response_status_on(host).unwrap_or(0);
        if !self.plain_http {
            if let Some(g) = header("grpc-status").and_then(|v| parse_grpc_status(&v)) {
                self.grpc_status = Some(g);
            }
        }
        if self.status >= 400 || self.grpc_status.is_some_and(|g| g != 0) {
            let retry_after = header("retry-after")
                .and_then(|v| parse_millis(&v))
                .map(|s| s.saturating_mul(1000));
            let pushback = header("grpc-retry-pushback-ms").and_then(|v| parse_millis(&v));
            self.hint_ms = retry_after.max(pushback).unwrap_or(0).min(MAX_HINT_MS);
        }
    }

    fn classify(&self, classifier: &Classifier, now_ms: u64) -> Option<(bool, bool)> {
        let mut local: Option<LocalFailure> = None;
        let mut status = self.status;
        if status == 0 {
            status = props::u64_on(&self.host, &["response", "code"])
                .and_then(|c| u16::try_from(c).ok())
                .unwrap_or(0);
        }
        if status == 0 || status >= 500 {
            local = props::u64_on(&self.host, &["response", "flags"])
                .and_then(local_failure_from_flags);
            if status == 0 && local.is_none() {
                // No response and no upstream failure flag: the client went away. Not an outcome.
                return None;
            }
        }
        let end = if self.first_byte_ms > 0 {
            self.first_byte_ms
        } else {
            now_ms
        };
        let facts = ResponseFacts {
            status,
            grpc_status: self.grpc_status,
            local,
            duration_ms: end.saturating_sub(self.start_ms),
        };
        let c = classifier.classify(&facts);
        Some((c.is_failure(), c.slow))
    }
}

fn explain(r: Rejection, forced: bool) -> String {
    if forced {
        return "open; reason=forced_open".to_owned();
    }
    let reason = r.reason().map_or("unknown", |x| x.as_str());
    match r.state() {
        State::HalfOpen => format!("half_open; reason={reason}; probes=full"),
        s => format!("{}; reason={reason}", s.as_str()),
    }
}

impl<H: Host + Clone> Context for BreakerHttp<H> {}

impl<H: Host + Clone> resilience_host::stage::Stage for BreakerHttp<H> {
    /// A later stage's local reply (slow start's shed, a budget's 503) never reached the
    /// dependency: not counted, and a probe permit it held is given back at once.
    fn later_stage_answered(&mut self) {
        match self.role {
            Role::Counted => {}
            Role::Probe { generation } => {
                let now = clock::now_ms_on(&self.host);
                if let Some(worker) = self.worker.as_ref().map(Rc::clone) {
                    if let Ok(mut w) = worker.try_borrow_mut() {
                        if let Some(h) = self.entry {
                            w.report_probe(h, generation, ProbeOutcome::Abandoned, 0, now);
                        }
                    }
                }
            }
            _ => return,
        }
        self.role = Role::Unguarded;
    }
}

impl<H: Host + Clone> HttpContext for BreakerHttp<H> {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(worker) = self.worker.as_ref().map(Rc::clone) else {
            return Action::Continue;
        };
        let Ok(mut w) = worker.try_borrow_mut() else {
            return Action::Continue;
        };
        self.decide(&mut w)
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        match self.role {
            Role::Unguarded | Role::Rejected => {}
            Role::WouldReject { rejection, forced } => {
                let explanation = format!("dry_run; would_reject={}", explain(rejection, forced));
                request::set_header_on(
                    &self.host,
                    MapType::HttpResponseHeaders,
                    DECISION_HEADER,
                    &explanation,
                );
            }
            Role::Counted | Role::Probe { .. } => self.observe_response_headers(),
        }
        Action::Continue
    }

    fn on_http_response_trailers(&mut self, _num_trailers: usize) -> Action {
        if matches!(self.role, Role::Counted | Role::Probe { .. }) {
            // A gRPC stream's status comes now, maybe long after the headers: its outcome is
            // recorded at the end, with the clock read then.
            self.outcome_ms = 0;
            if let Some(g) =
                request::map_value_on(&self.host, MapType::HttpResponseTrailers, "grpc-status")
                    .and_then(|v| parse_grpc_status(&v))
            {
                self.grpc_status = Some(g);
            }
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        if !matches!(self.role, Role::Counted | Role::Probe { .. }) {
            return;
        }
        let Some(worker) = self.worker.as_ref().map(Rc::clone) else {
            return;
        };
        let Ok(mut w) = worker.try_borrow_mut() else {
            return;
        };
        let config = Rc::clone(&w.config);
        let Some(handle) = self.entry else {
            return;
        };
        let Some(index) = w.entries.get(handle).map(|e| e.route_index) else {
            return;
        };
        let settings = index
            .and_then(|i| config.routes.routes.get(i))
            .map_or(&config.routes.defaults, |r| &r.settings);
        let now = if self.outcome_ms > 0 {
            self.outcome_ms
        } else {
            clock::now_ms_on(&self.host)
        };
        let outcome = self.classify(&settings.classifier, now);
        match self.role {
            Role::Probe { generation } => {
                let probe = match outcome {
                    None => ProbeOutcome::Abandoned,
                    Some((true, _)) => ProbeOutcome::Failure,
                    // A slow probe fails when slow calls can trip this breaker.
                    Some((false, true)) if settings.policy.slow_call_rate_threshold.is_some() => {
                        ProbeOutcome::Failure
                    }
                    Some((false, _)) => ProbeOutcome::Success,
                };
                w.report_probe(handle, generation, probe, self.hint_ms, now);
            }
            _ => {
                if let (Some((failure, slow)), Some(entry)) = (outcome, w.entries.get_mut(handle)) {
                    entry.delta.record(failure, slow, now);
                    if slow {
                        entry.pending.slow_calls += 1;
                    }
                    if failure {
                        entry.delta.hint_retry_after(self.hint_ms);
                        entry.pending.failures += 1;
                        w.publish_failure(handle, now);
                    }
                }
            }
        }
    }
}
