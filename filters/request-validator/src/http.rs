//! The per-request side: check the head, the deadline and the route's concurrency at request
//! headers; count (and, when a rule needs it, buffer) the body; release the permit at the end.
//!
//! A request is one of: *unguarded* (a health check, a `disabled` route, or a header map the host
//! would not give: it passes untouched and uncounted), *checked* (it passes every rule so far),
//! or *rejected* (a local problem+json reply; nothing more reaches the upstream). In `dry_run` the
//! first rule a request breaks is counted, logged and named in the response's decision header,
//! and the request goes on unchanged: a body a rule needs is copied as it streams, never held.
//!
//! Only the rules that need the body look at it: with no body rule, body callbacks return at once;
//! with only `max_body_bytes`, they count; with a JSON rule, the body is held (at most
//! `max_body_bytes`) until it is complete and then checked once. With
//! `hold_headers_for_body_checks`, the headers are held too, so the upstream sees nothing of a
//! request whose body is rejected. With `grpc_framing`, a gRPC call's message prefixes are read
//! from each chunk as it passes (a few bytes per message, nothing held).
//!
//! A rejection of a gRPC call is a gRPC answer ([`resilience_host::reply`]): the status comes from
//! [`Rule::grpc_code`], shedding sends its `retry-after` as pushback, and a deadline refusal tells
//! the client's retry policy not to retry (a retry would have even less time).
//!
//! The context reads headers, the body, the route name and the clock, and replies, through its
//! [`Host`]: the same calls, in the same order and as many as before the trait existed.

use std::cell::RefCell;
use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, MapType};
use resilience_core::grpc::{self, Code, Pushback, Refusal, Wire};
use resilience_core::routes::RequestView;
use resilience_core::shedding::class_limit;
use resilience_host::host::Host;
use resilience_host::wasm::WasmHost;
use resilience_host::{clock, props, reply, request, stream};

use crate::config::{Mode, Settings, DECISION_HEADER};
use crate::rules::body::BodyPlan;
use crate::rules::deadline::{self, Observed};
use crate::rules::{head, RequestHead, Rule, Violation};
use crate::worker::{Admit, Worker};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Unguarded,
    Checked,
    Rejected,
}

/// The HTTP context of the request-validator filter, on host `H` (the real proxy unless a test
/// says otherwise).
pub struct ValidatorHttp<H: Host = WasmHost> {
    host: H,
    worker: Option<Rc<RefCell<Worker<H>>>>,
    context_id: u32,
    entry: usize,
    state: State,
    dry_run: bool,
    /// Dry run: the first rule this request broke.
    would_reject: Option<Rule>,
    /// Holds one of the route's concurrency permits.
    permit: bool,
    plan: BodyPlan,
    body_seen: u64,
    body_done: bool,
    /// Dry run: the body copied as it streams (never held).
    shadow: Vec<u8>,
    /// Paused at the headers, waiting for the body (hold mode).
    held: bool,
    latency_start_ms: Option<u64>,
    /// How the request speaks gRPC (read at its headers): rejections answer it in gRPC.
    wire: Option<Wire>,
}

impl ValidatorHttp {
    /// A stream on the real proxy.
    pub fn new(worker: Option<Rc<RefCell<Worker>>>, context_id: u32) -> Self {
        ValidatorHttp::on(WasmHost, worker, context_id)
    }
}

impl<H: Host + Clone> ValidatorHttp<H> {
    /// Stream `context_id` on `host`, deciding with `worker`'s state.
    pub fn on(host: H, worker: Option<Rc<RefCell<Worker<H>>>>, context_id: u32) -> Self {
        ValidatorHttp {
            host,
            worker,
            context_id,
            entry: 0,
            state: State::Unguarded,
            dry_run: false,
            would_reject: None,
            permit: false,
            plan: BodyPlan::default(),
            body_seen: 0,
            body_done: false,
            shadow: Vec::new(),
            held: false,
            latency_start_ms: None,
            wire: None,
        }
    }

    fn decide(&mut self, w: &mut Worker<H>, head: &RequestHead) -> Action {
        let config = Rc::clone(&w.config);
        if config.global.health_checks.matches(head) {
            w.global_pending.health_checks += 1;
            return Action::Continue;
        }
        let mut view = HeadView::new(&self.host, head);
        let selected = config.routes.select(&mut view);
        let settings: &Settings = selected.settings;
        if settings.mode == Mode::Disabled {
            return Action::Continue;
        }
        self.entry = selected.index.map_or(0, |i| i.saturating_add(1));
        self.state = State::Checked;
        self.dry_run = settings.mode == Mode::DryRun;
        if let Some(e) = w.entry_mut(self.entry) {
            e.pending.requests += 1;
        }

        let plan = match head::check(&settings.head, head) {
            Ok(plan) => plan,
            Err(v) => {
                if let Some(action) = self.violate(w, &v, None) {
                    return action;
                }
                BodyPlan::default()
            }
        };

        let remaining = deadline::remaining_ms(head, settings.deadline.header.as_deref());
        if remaining.is_some() {
            let observed = settings.deadline.observed.and_then(|o| {
                w.entries
                    .get(self.entry)
                    .and_then(|e| e.observed_ms)
                    .map(|latency_ms| Observed {
                        latency_ms,
                        percentile: o.percentile,
                    })
            });
            if let Err(v) = deadline::check(remaining, settings.deadline.min_remaining_ms, observed)
            {
                if let Some(action) = self.violate(w, &v, None) {
                    return action;
                }
            }
        }

        // The clock is a host call: read it only for the features that need it.
        let now = if settings.shedding.is_some()
            || settings.deadline.observed.is_some()
            || config.global.hold_headers_for_body_checks
        {
            clock::now_ms_on(&self.host)
        } else {
            0
        };
        if let Some(shed) = &settings.shedding {
            let share = shed
                .priority
                .as_ref()
                .map_or(100.0, |p| p.share_of(head.get(&p.header)));
            let limit = class_limit(shed.limit, share);
            match w.admit(self.entry, limit, self.dry_run, now) {
                Admit::Admitted => self.permit = true,
                Admit::WouldShed { in_flight, limit } => {
                    self.permit = true;
                    let v = shed_violation(in_flight, limit, shed.retry_after_s);
                    let _ = self.violate(w, &v, Some(shed.retry_after_s));
                }
                Admit::Shed { in_flight, limit } => {
                    let v = shed_violation(in_flight, limit, shed.retry_after_s);
                    if let Some(action) = self.violate(w, &v, Some(shed.retry_after_s)) {
                        return action;
                    }
                }
            }
        }

        if settings.deadline.observed.is_some() {
            self.latency_start_ms = Some(now);
        }
        if head.has_body() && !plan.is_passive() && self.would_reject.is_none() {
            self.plan = plan;
            if self.plan.buffers() && !self.dry_run && config.global.hold_headers_for_body_checks {
                self.held = true;
                w.hold(self.context_id, now);
                return Action::Pause;
            }
        }
        Action::Continue
    }

    /// Counts a broken rule. Enforce: sends the rejection and returns the action to return. Dry
    /// run: remembers the first broken rule, logs it, and returns `None` (the request goes on).
    fn violate(
        &mut self,
        w: &mut Worker<H>,
        v: &Violation,
        retry_after_s: Option<u64>,
    ) -> Option<Action> {
        let dry_run = self.dry_run;
        let first = self.would_reject.is_none();
        let entry = w.entry_mut(self.entry)?;
        if dry_run {
            if first {
                self.would_reject = Some(v.rule);
                entry.pending.violation(v.rule);
                entry.pending.would_reject += 1;
                log::debug!(
                    "request_validator {}: dry run: would reject ({}): {}",
                    entry.stat_base,
                    v.rule.name(),
                    v.detail
                );
            }
            return None;
        }
        entry.pending.violation(v.rule);
        entry.pending.rejected += 1;
        self.state = State::Rejected;
        let decision = format!("rejected; reason={}", v.rule.name());
        let retry = retry_after_s.map(|s| s.to_string());
        let mut headers: Vec<(&str, &str)> = vec![(DECISION_HEADER, decision.as_str())];
        if let Some(allow) = &v.allow {
            headers.push(("allow", allow.as_str()));
        }
        if let Some(r) = &retry {
            headers.push(("retry-after", r.as_str()));
        }
        let mut refusal = Refusal::new(v.rule.grpc_code(), "request_validator", v.rule.name());
        if let Some(ms) = retry_after_s.map(|s| s.saturating_mul(1000)) {
            refusal = refusal.with_pushback(Pushback::After { ms });
        } else if v.rule.grpc_code() == Code::DeadlineExceeded {
            // A retry has even less time left: it would be refused too.
            refusal = refusal.with_pushback(Pushback::Stop);
        }
        reply::send_problem_to_on(&self.host, self.wire, &v.problem(), &refusal, &headers);
        Some(Action::Pause)
    }

    fn with_worker<T>(&mut self, f: impl FnOnce(&mut Self, &mut Worker<H>) -> T) -> Option<T> {
        let worker = self.worker.as_ref().map(Rc::clone)?;
        let mut w = worker.try_borrow_mut().ok()?;
        Some(f(self, &mut w))
    }

    /// The body is complete (end of stream or trailers): check it once.
    fn finish_body(&mut self) -> Action {
        self.body_done = true;
        let body = if self.dry_run {
            std::mem::take(&mut self.shadow)
        } else {
            let len = usize::try_from(self.body_seen).unwrap_or(usize::MAX);
            stream::request_body_on(&self.host, 0, len).unwrap_or_default()
        };
        let result = self.plan.check_complete(&body);
        self.with_worker(|this, w| {
            if let Some(e) = w.entry_mut(this.entry) {
                e.pending.bodies_checked += 1;
            }
            match result {
                Ok(()) => Action::Continue,
                Err(v) => this.violate(w, &v, None).unwrap_or(Action::Continue),
            }
        })
        .unwrap_or(Action::Continue)
    }

    fn release_hold(&mut self) {
        if self.held {
            self.held = false;
            let id = self.context_id;
            self.with_worker(|_, w| w.unhold(id));
        }
    }
}

fn shed_violation(in_flight: u32, limit: u32, retry_after_s: u64) -> Violation {
    Violation::new(
        Rule::MaxConcurrentRequests,
        format!(
            "This route has {in_flight} requests in flight, its limit for this request is {limit}; retry after {retry_after_s} s."
        ),
    )
    .with("limit", limit)
    .with("retry_after", retry_after_s)
}

impl<H: Host + Clone> Context for ValidatorHttp<H> {}

impl<H: Host + Clone> resilience_host::stage::Stage for ValidatorHttp<H> {}

impl<H: Host + Clone> HttpContext for ValidatorHttp<H> {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let Some(headers) = stream::request_headers_on(&self.host) else {
            return Action::Continue;
        };
        let head = RequestHead {
            headers,
            end_of_stream,
        };
        self.wire = head.get("content-type").and_then(grpc::wire);
        self.with_worker(|this, w| this.decide(w, &head))
            .unwrap_or(Action::Continue)
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if self.state != State::Checked || self.body_done || self.plan.is_passive() {
            return Action::Continue;
        }
        self.release_hold();
        let size = body_size as u64;
        let holding = self.plan.buffers() && !self.dry_run;
        let before = self.body_seen;
        // While the body is held, Envoy reports the whole buffered size; otherwise each chunk.
        self.body_seen = if holding {
            size
        } else {
            self.body_seen.saturating_add(size)
        };
        // The prefixes first: a message that announces too much is named as such.
        if self.plan.frames.is_some() {
            // The bytes new in this callback: the chunk, or the end of the held buffer.
            let (offset, fresh) = if holding {
                (before, size.saturating_sub(before))
            } else {
                (0, size)
            };
            let offset = usize::try_from(offset).unwrap_or(usize::MAX);
            let fresh = usize::try_from(fresh).unwrap_or(0);
            let host = &self.host;
            let mut result = self.plan.check_frames(fresh, |at, n| {
                stream::request_body_on(host, offset.saturating_add(at), n)
            });
            if result.is_ok() && end_of_stream {
                result = self.plan.check_frames_complete();
            }
            if let Err(v) = result {
                // One violation per body: in dry run the body goes on unchecked.
                self.plan.frames = None;
                let action = self
                    .with_worker(|this, w| this.violate(w, &v, None))
                    .flatten();
                if let Some(action) = action {
                    self.body_done = true;
                    self.shadow = Vec::new();
                    return action;
                }
            }
        }
        if let Err(v) = self.plan.check_size(self.body_seen) {
            self.body_done = true;
            self.shadow = Vec::new();
            return self
                .with_worker(|this, w| this.violate(w, &v, None))
                .flatten()
                .unwrap_or(Action::Continue);
        }
        if !self.plan.buffers() {
            return Action::Continue;
        }
        if self.dry_run {
            if let Some(chunk) = stream::request_body_on(&self.host, 0, body_size) {
                self.shadow.extend_from_slice(&chunk);
            }
            if end_of_stream {
                self.finish_body();
            }
            return Action::Continue;
        }
        if !end_of_stream {
            return Action::Pause;
        }
        self.finish_body()
    }

    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        if self.state == State::Checked && !self.body_done {
            if let Err(v) = self.plan.check_frames_complete() {
                self.plan.frames = None;
                if let Some(action) = self
                    .with_worker(|this, w| this.violate(w, &v, None))
                    .flatten()
                {
                    self.body_done = true;
                    return action;
                }
            }
        }
        if self.state == State::Checked && !self.body_done && self.plan.buffers() {
            self.release_hold();
            let action = self.finish_body();
            return if self.dry_run {
                Action::Continue
            } else {
                action
            };
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if self.state != State::Checked {
            return Action::Continue;
        }
        if let Some(rule) = self.would_reject {
            request::set_header_on(
                &self.host,
                MapType::HttpResponseHeaders,
                DECISION_HEADER,
                &format!("dry_run; would_reject={}", rule.name()),
            );
        }
        if let Some(start) = self.latency_start_ms.take() {
            if request::response_status_on(&self.host).is_some_and(|s| s < 500) {
                let latency = clock::now_ms_on(&self.host).saturating_sub(start);
                let entry = self.entry;
                self.with_worker(|_, w| w.record_latency(entry, latency));
            }
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        self.release_hold();
        if self.permit {
            self.permit = false;
            let entry = self.entry;
            self.with_worker(|this, w| w.release(entry, clock::now_ms_on(&this.host)));
        }
    }
}

/// The request head as the core's route matcher sees it; the route name is read only if a
/// route matches on it, once.
struct HeadView<'a, H: Host> {
    host: &'a H,
    head: &'a RequestHead,
    route_name: Option<Option<String>>,
    scratch: Vec<(String, Option<String>)>,
}

impl<'a, H: Host> HeadView<'a, H> {
    fn new(host: &'a H, head: &'a RequestHead) -> Self {
        HeadView {
            host,
            head,
            route_name: None,
            scratch: Vec::new(),
        }
    }
}

impl<H: Host> RequestView for HeadView<'_, H> {
    fn route_name(&mut self) -> Option<&str> {
        let host = self.host;
        self.route_name
            .get_or_insert_with(|| props::route_name_on(host))
            .as_deref()
    }

    fn path(&mut self) -> Option<&str> {
        std::str::from_utf8(self.head.path()).ok()
    }

    fn method(&mut self) -> Option<&str> {
        std::str::from_utf8(self.head.method()).ok()
    }

    fn header(&mut self, name: &str) -> Option<&str> {
        // Borrowed straight from the head when the name is already lowercase (the core's
        // matchers lowercase names at load); otherwise looked up once and kept.
        if name.bytes().all(|b| !b.is_ascii_uppercase()) {
            return self
                .head
                .get(name)
                .and_then(|v| std::str::from_utf8(v).ok());
        }
        let lower = name.to_ascii_lowercase();
        if !self.scratch.iter().any(|(n, _)| *n == lower) {
            let value = self
                .head
                .get(&lower)
                .and_then(|v| String::from_utf8(v.to_vec()).ok());
            self.scratch.push((lower.clone(), value));
        }
        self.scratch
            .iter()
            .find(|(n, _)| *n == lower)
            .and_then(|(_, v)| v.as_deref())
    }
}
