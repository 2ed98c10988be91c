//! Per-request decisions.
//!
//! **Balance mode.** Every request gets its destination from the filter: the endpoint chosen by
//! ramped weight is written into the `ORIGINAL_DST` cluster's header (`x-envoy-original-dst-host`
//! by default). Envoy does not sanitise that header, so a client could name any `ip:port` behind
//! the proxy; the filter therefore **always** overwrites it (or, on a `disabled` route, removes
//! it), counts a client-supplied one in `destination_header_overridden`, and only ever writes an
//! address from its own list. When no endpoint can take the request (every one at its warm-up
//! rate cap) the request gets a fast 503.
//!
//! With `alternates`, the header names further endpoints after the pick (`a,b,c`), drawn the
//! same way among the others; Envoy's `override_host` load-balancing policy sends each retry to
//! the next one, so a retry never returns to the endpoint that just failed. When the response
//! comes, `upstream.address` tells which of them served it: the ones named before it failed.
//!
//! **Admit mode.** The request is admitted when a per-request random number falls below the
//! replica's shared ramp fraction, so the admitted share is the same on every worker. The excess
//! gets a fast, retriable `503` with `retry-after` and `x-resilience-slow-start: shed; ...`, so
//! callers retry on warm replicas. Configured health checks are always admitted.
//!
//! **Cells.** Endpoints in a cell are picked under the cells' drains (see
//! [`resilience_core::cells`]); a retry goes to another cell first while the picked endpoint's
//! cell is draining; the response says which cell served it:
//! `x-resilience-slow-start: routed; cell=use1-az1`.
//!
//! Outcomes (status, Envoy's failure flags, latency) go into the worker's batch for the chosen
//! endpoint; the healthy path makes no shared-data call.
//!
//! The context reads headers, properties and the clock through its [`Host`], the same calls and
//! as many as before the trait existed: the per-request path pays nothing for being testable.

use std::cell::RefCell;
use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, MapType};
use resilience_core::cells::Spread;
use resilience_core::grpc::{Code, Pushback, Refusal};
use resilience_core::outcome::{local_failure_from_flags, ResponseFacts};
use resilience_core::problem::{bounded, Problem};
use resilience_core::ramp::admits;
use resilience_core::routes::{HeaderMatch, RequestView};
use resilience_host::host::Host;
use resilience_host::request::{self, HostRequest};
use resilience_host::wasm::WasmHost;
use resilience_host::{clock, props, reply};

use crate::config::{Global, Kind, Mode, Settings, DECISION_HEADER, MAX_ALTERNATES};
use crate::worker::{Choice, Worker};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    /// Not ours to count (disabled route, or nothing decided).
    Untouched,
    /// Sent to endpoint `endpoint` (admit mode: the replica itself, index 0).
    Routed {
        endpoint: usize,
        identity: u64,
        in_flight: bool,
        alternates: Alternates,
    },
    /// Answered locally with a 503.
    Shed,
}

/// The endpoints named after the pick, in the order the host tries them on retries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
struct Alternates {
    /// (index, identity) of each named endpoint.
    named: [(usize, u64); MAX_ALTERNATES],
    len: usize,
}

impl Alternates {
    fn as_slice(&self) -> &[(usize, u64)] {
        self.named.get(..self.len).unwrap_or(&[])
    }
}

/// The HTTP context of the slow-start filter, on host `H` (the real proxy unless a test says
/// otherwise).
pub struct SlowStartHttp<H: Host = WasmHost> {
    host: H,
    worker: Option<Rc<RefCell<Worker<H>>>>,
    role: Role,
    start_ms: u64,
    first_byte_ms: u64,
    status: u16,
    /// Dry run: the decision header to put on the response.
    dry_run_note: Option<String>,
}

/// The decision header of a routed request whose endpoint is in a cell.
fn cell_note(cell: &str) -> String {
    format!("routed; cell={cell}")
}

impl SlowStartHttp {
    /// A stream on the real proxy.
    pub fn new(worker: Option<Rc<RefCell<Worker>>>) -> Self {
        SlowStartHttp::on(WasmHost, worker)
    }
}

impl<H: Host> SlowStartHttp<H> {
    /// A stream on `host`, deciding with `worker`'s ramps.
    pub fn on(host: H, worker: Option<Rc<RefCell<Worker<H>>>>) -> Self {
        SlowStartHttp {
            host,
            worker,
            role: Role::Untouched,
            start_ms: 0,
            first_byte_ms: 0,
            status: 0,
            dry_run_note: None,
        }
    }

    fn decide(&mut self, w: &mut Worker<H>) -> Action {
        let config = Rc::clone(&w.config);
        let g = &config.global;
        if g.kind == Kind::Balance
            && request::map_value_on(
                &self.host,
                MapType::HttpRequestHeaders,
                &g.destination_header,
            )
            .is_some()
        {
            // Overwritten below (or removed): a client never picks the destination.
            w.global_pending.destination_header_overridden += 1;
        }
        let mut req = HostRequest::on(&self.host);
        let now = clock::now_ms_on(&self.host);
        self.start_ms = now;
        if g.kind == Kind::Admit && is_health_check(g, &mut req) {
            if let Some(ep) = w.endpoints.first_mut() {
                ep.pending.health_checks += 1;
                self.role = Role::Routed {
                    endpoint: 0,
                    identity: ep.identity,
                    in_flight: false,
                    alternates: Alternates::default(),
                };
            }
            return Action::Continue;
        }
        let selected = config.routes.select(&mut req);
        let s: &Settings = selected.settings;
        match (g.kind, s.mode) {
            (Kind::Balance, Mode::Disabled) => {
                request::remove_header_on(
                    &self.host,
                    MapType::HttpRequestHeaders,
                    &g.destination_header,
                );
                Action::Continue
            }
            (Kind::Admit, Mode::Disabled) => Action::Continue,
            (Kind::Balance, Mode::DryRun) => {
                let (go, would) = w.choose_dry_run(now, &s.curve);
                if let Some(ep) = would.and_then(|i| w.endpoints.get_mut(i)) {
                    ep.pending.dry_run_would_pick += 1;
                    self.dry_run_note = Some(format!("dry_run; would_pick={}", ep.address));
                }
                match go {
                    Some(i) => self.route(w, i, g),
                    None => {
                        request::remove_header_on(
                            &self.host,
                            MapType::HttpRequestHeaders,
                            &g.destination_header,
                        );
                        Action::Continue
                    }
                }
            }
            (Kind::Balance, _) => match w.choose(now, &s.curve) {
                Choice::Endpoint { index, panic } => {
                    if panic {
                        w.global_pending.panic_routed += 1;
                    }
                    if w.last_spread == Spread::FailOpen {
                        w.global_pending.cells_fail_open += 1;
                    }
                    self.route(w, index, g)
                }
                Choice::None { capped } => {
                    w.global_pending.no_ready_endpoint += 1;
                    let reason = if capped {
                        "warmup_rate_cap"
                    } else {
                        "no_ready_endpoint"
                    };
                    self.shed_balance(s, reason)
                }
            },
            (Kind::Admit, mode) => self.admit(w, s, mode, now),
        }
    }

    fn route(&mut self, w: &mut Worker<H>, index: usize, g: &Global) -> Action {
        let mut alternates = Alternates::default();
        if g.alternates > 0 {
            let mut picked = [0usize; MAX_ALTERNATES];
            let n = w.alternates(index, picked.get_mut(..g.alternates).unwrap_or(&mut []));
            for &i in picked.get(..n).unwrap_or(&[]) {
                if let (Some(e), Some(slot)) =
                    (w.endpoints.get(i), alternates.named.get_mut(alternates.len))
                {
                    *slot = (i, e.identity);
                    alternates.len += 1;
                }
            }
        }
        let Some(ep) = w.endpoints.get(index) else {
            request::remove_header_on(
                &self.host,
                MapType::HttpRequestHeaders,
                &g.destination_header,
            );
            return Action::Continue;
        };
        if alternates.len == 0 {
            request::set_header_on(
                &self.host,
                MapType::HttpRequestHeaders,
                &g.destination_header,
                &ep.address,
            );
        } else {
            let mut value = String::with_capacity(24 * (alternates.len + 1));
            value.push_str(&ep.address);
            for &(i, _) in alternates.as_slice() {
                if let Some(e) = w.endpoints.get(i) {
                    value.push(',');
                    value.push_str(&e.address);
                }
            }
            request::set_header_on(
                &self.host,
                MapType::HttpRequestHeaders,
                &g.destination_header,
                &value,
            );
        }
        let identity = ep.identity;
        if let Some(ep) = w.endpoints.get_mut(index) {
            ep.pending.requests += 1;
            ep.batch.in_flight_delta = ep.batch.in_flight_delta.saturating_add(1);
        }
        w.count_cell_request(index);
        self.role = Role::Routed {
            endpoint: index,
            identity,
            in_flight: true,
            alternates,
        };
        Action::Continue
    }

    fn admit(&mut self, w: &mut Worker<H>, s: &Settings, mode: Mode, now: u64) -> Action {
        let (fraction, phase) = w.admit_fraction(now, &s.curve);
        let random = w.next_random();
        let mut admitted = admits(fraction, random);
        let mut reason = "warming";
        if admitted && mode == Mode::Admit && w.over_cap(0, now) {
            admitted = false;
            reason = "warmup_rate_cap";
            if let Some(ep) = w.endpoints.first_mut() {
                ep.pending.rate_capped += 1;
            }
        }
        let Some(ep) = w.endpoints.first_mut() else {
            return Action::Continue;
        };
        ep.pending.requests += 1;
        let percent = (fraction * 100.0).round().clamp(0.0, 100.0) as u64;
        if admitted || mode == Mode::DryRun {
            if admitted {
                ep.pending.admitted += 1;
            } else {
                ep.pending.dry_run_would_shed += 1;
                self.dry_run_note = Some(format!(
                    "dry_run; would_shed={reason}; phase={}; admit_percent={percent}",
                    phase.as_str()
                ));
                log::debug!("slow_start: dry run: would shed ({reason}, {percent}% admitted)");
            }
            self.role = Role::Routed {
                endpoint: 0,
                identity: ep.identity,
                in_flight: false,
                alternates: Alternates::default(),
            };
            return Action::Continue;
        }
        ep.pending.shed += 1;
        self.role = Role::Shed;
        let retry_after = s.retry_after_s.to_string();
        let decision = format!(
            "shed; reason={reason}; phase={}; admit_percent={percent}",
            phase.as_str()
        );
        let problem = Problem {
            status: 503,
            kind: "warming-up",
            title: "Replica warming up",
            detail: bounded(
                &format!(
                    "This replica is warming up ({}) and admits {percent}% of requests; retry on another replica or after {} s.",
                    phase.as_str(),
                    s.retry_after_s
                ),
                256,
            ),
            extensions: vec![
                ("phase", serde_json::Value::from(phase.as_str())),
                ("reason", serde_json::Value::from(reason)),
                ("admit_percent", serde_json::Value::from(percent)),
                ("retry_after", serde_json::Value::from(s.retry_after_s)),
            ],
        };
        let refusal =
            Refusal::new(Code::Unavailable, "slow_start", reason).with_pushback(Pushback::After {
                ms: s.retry_after_s.saturating_mul(1000),
            });
        reply::send_problem_on(
            &self.host,
            &problem,
            &refusal,
            &[
                ("retry-after", retry_after.as_str()),
                (DECISION_HEADER, decision.as_str()),
            ],
        );
        Action::Pause
    }

    fn shed_balance(&mut self, s: &Settings, reason: &str) -> Action {
        self.role = Role::Shed;
        let retry_after = s.retry_after_s.to_string();
        let decision = format!("shed; reason={reason}");
        let problem = Problem {
            status: 503,
            kind: "no-ready-endpoint",
            title: "No endpoint ready",
            detail: bounded(
                &format!(
                    "No endpoint can take this request now ({reason}); retry after {} s.",
                    s.retry_after_s
                ),
                256,
            ),
            extensions: vec![
                ("reason", serde_json::Value::from(reason)),
                ("retry_after", serde_json::Value::from(s.retry_after_s)),
            ],
        };
        let refusal =
            Refusal::new(Code::Unavailable, "slow_start", reason).with_pushback(Pushback::After {
                ms: s.retry_after_s.saturating_mul(1000),
            });
        reply::send_problem_on(
            &self.host,
            &problem,
            &refusal,
            &[
                ("retry-after", retry_after.as_str()),
                (DECISION_HEADER, decision.as_str()),
            ],
        );
        Action::Pause
    }

    /// The cell of the endpoint that served the response (an alternate's after retries).
    fn serving_cell(
        &self,
        endpoint: usize,
        identity: u64,
        alternates: &Alternates,
    ) -> Option<String> {
        let worker = self.worker.as_ref()?;
        let w = worker.try_borrow().ok()?;
        if w.cells.is_empty() {
            return None;
        }
        let (served, id) = served_by_alternate(&self.host, &w, endpoint, alternates)
            .and_then(|k| alternates.as_slice().get(k.saturating_sub(1)).copied())
            .unwrap_or((endpoint, identity));
        w.cell_name(served, id).map(str::to_owned)
    }

    /// Success or failure of the exchange that ended at `end_ms`; `None` when the client went
    /// away before any response and Envoy saw no upstream failure (not an outcome).
    fn outcome(&self, w: &Worker<H>, end_ms: u64) -> Option<bool> {
        let mut status = self.status;
        if status == 0 {
            status = props::u64_on(&self.host, &["response", "code"])
                .and_then(|c| u16::try_from(c).ok())
                .unwrap_or(0);
        }
        let mut local = None;
        if status == 0 || status >= 500 {
            local = props::u64_on(&self.host, &["response", "flags"])
                .and_then(local_failure_from_flags);
            if status == 0 && local.is_none() {
                return None;
            }
        }
        let facts = ResponseFacts {
            status,
            grpc_status: None,
            local,
            duration_ms: end_ms.saturating_sub(self.start_ms),
        };
        Some(!w.config.global.classifier.classify(&facts).is_failure())
    }
}

/// Which of the named endpoints served the request, when it was not the first: its position
/// in the destination header (1 is the first alternate). Asks the host for `upstream.address`
/// only when alternates were named.
fn served_by_alternate<H: Host>(
    host: &H,
    w: &Worker<H>,
    first: usize,
    alternates: &Alternates,
) -> Option<usize> {
    if alternates.len == 0 {
        return None;
    }
    let upstream = props::bytes_on(host, &["upstream", "address"])?;
    let is = |i: usize| {
        w.endpoints
            .get(i)
            .is_some_and(|e| e.address.as_bytes() == upstream.as_slice())
    };
    if is(first) {
        return None;
    }
    alternates
        .as_slice()
        .iter()
        .position(|&(i, _)| is(i))
        .map(|p| p + 1)
}

fn header_matches(m: &HeaderMatch, req: &mut impl RequestView) -> bool {
    let found = req.header(&m.name);
    match (&m.value, m.present.unwrap_or(true)) {
        (Some(expected), _) => found == Some(expected.as_str()),
        (None, true) => found.is_some(),
        (None, false) => found.is_none(),
    }
}

fn is_health_check(g: &Global, req: &mut impl RequestView) -> bool {
    let hc = &g.health_checks;
    if !hc.paths.is_empty() {
        if let Some(full) = req.path() {
            let path = full.split_once('?').map_or(full, |(p, _)| p);
            if hc.paths.iter().any(|p| p == path) {
                return true;
            }
        }
    }
    hc.headers.iter().any(|m| header_matches(m, req))
}

impl<H: Host> Context for SlowStartHttp<H> {}

impl<H: Host> resilience_host::stage::Stage for SlowStartHttp<H> {}

impl<H: Host> HttpContext for SlowStartHttp<H> {
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
        let mut cell = None;
        if let Role::Routed {
            endpoint,
            identity,
            alternates,
            ..
        } = self.role
        {
            self.first_byte_ms = clock::now_ms_on(&self.host);
            self.status = request::response_status_on(&self.host).unwrap_or(0);
            cell = self.serving_cell(endpoint, identity, &alternates);
        }
        let note = match (&self.dry_run_note, cell) {
            (Some(n), Some(c)) => Some(format!("{n}; cell={c}")),
            (Some(n), None) => Some(n.clone()),
            (None, Some(c)) => Some(cell_note(&c)),
            (None, None) => None,
        };
        if let Some(note) = note {
            request::set_header_on(
                &self.host,
                MapType::HttpResponseHeaders,
                DECISION_HEADER,
                &note,
            );
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        let Role::Routed {
            endpoint,
            identity,
            in_flight,
            alternates,
        } = self.role
        else {
            return;
        };
        let Some(worker) = self.worker.as_ref().map(Rc::clone) else {
            return;
        };
        let Ok(mut w) = worker.try_borrow_mut() else {
            return;
        };
        // The outcome is known at the response's first byte, and that time was read then: it
        // is the outcome's time too, which saves a clock call per request (a few µs in Envoy,
        // see `cargo pack bench --host-calls`). A stream without a response reads the clock,
        // once.
        let now = if self.first_byte_ms > 0 {
            self.first_byte_ms
        } else {
            clock::now_ms_on(&self.host)
        };
        let outcome = self.outcome(&w, now);
        let latency = now.saturating_sub(self.start_ms);
        let Some(ep) = w.endpoint_mut(endpoint, identity) else {
            return;
        };
        if in_flight {
            ep.batch.in_flight_delta = ep.batch.in_flight_delta.saturating_sub(1);
        }
        if let Some(k) = served_by_alternate(&self.host, &w, endpoint, &alternates) {
            // Every endpoint named before the one that served failed its attempt; the one that
            // served gets the outcome, but not the latency (it includes the failed attempts).
            for j in 0..k {
                let named = match j.checked_sub(1) {
                    None => Some((endpoint, identity)),
                    Some(a) => alternates.as_slice().get(a).copied(),
                };
                if let Some(e) = named.and_then(|(i, id)| w.endpoint_mut(i, id)) {
                    e.pending.failures += 1;
                    e.batch.record(false, 0, now);
                }
            }
            let Some(&(i, id)) = alternates.as_slice().get(k.saturating_sub(1)) else {
                return;
            };
            let Some(e) = w.endpoint_mut(i, id) else {
                return;
            };
            e.pending.retries_served += 1;
            match outcome {
                Some(true) => {
                    e.pending.successes += 1;
                    e.batch.health(true, now);
                }
                Some(false) => {
                    e.pending.failures += 1;
                    e.batch.record(false, 0, now);
                }
                None => {}
            }
            return;
        }
        let Some(ep) = w.endpoint_mut(endpoint, identity) else {
            return;
        };
        match outcome {
            Some(true) => {
                ep.pending.successes += 1;
                ep.batch.record(true, latency, now);
            }
            Some(false) => {
                ep.pending.failures += 1;
                ep.batch.record(false, latency, now);
            }
            None => {}
        }
    }
}
