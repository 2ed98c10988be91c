//! The per-request side: decide at request headers, explain at response headers, charge at the
//! end.
//!
//! **Outbound** (caller side, before the router). Each request first gets a verdict on its
//! retries, in this order: the hop guard (a request that arrived as a retry gets none here), the
//! deadline (none when the remaining deadline is below the key's learned median latency), then
//! the budget (it reserves up to `max_retries`). The router is told with `x-envoy-max-retries`
//! (0 when denied), plus the optional default retry policy. When the request ends, the retries
//! the router actually made (`upstream.request_attempt_count` − 1) are charged and the rest of the
//! reservation is refunded.
//!
//! **Inbound** (server side, in front of the app). A request that arrived as a retry
//! (`x-envoy-attempt-count` > 1, `grpc-previous-rpc-attempts` > 0, the hop-guard header or a
//! configured one) takes one token; without one it is shed with a 503, a jittered `retry-after`,
//! a problem+json body and the decision header (a gRPC call: `RESOURCE_EXHAUSTED` with pushback
//! -1, which stops the client's retry policy). First attempts are never shed: they only count
//! towards the allowance.
//!
//! Dry-run modes decide and count exactly the same way but never touch the request: the verdict
//! is only logged, counted in `dry_run_would_deny` and shown in the response's decision header.
//! Their budget is charged as if the verdict had been enforced.
//!
//! The context reads headers, properties and the clock through its [`Host`], the same calls and
//! as many as before the trait existed: the per-request path pays nothing for being testable.

use std::cell::RefCell;
use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, MapType};
use resilience_core::backoff::{jitter_between, random_u64};
use resilience_core::budget::{parse_attempts, Reservation};
use resilience_core::deadline::{parse_grpc_timeout, parse_millis};
use resilience_core::grpc::{Code, Pushback, Refusal};
use resilience_core::keyed::Handle;
use resilience_core::problem::{bounded, Problem};
use resilience_host::host::Host;
use resilience_host::request::{self, HostRequest};
use resilience_host::wasm::WasmHost;
use resilience_host::{clock, props, reply};

use crate::config::{Settings, Side, DECISION_HEADER, HOP_GUARD_HEADER};
use crate::stats::GlobalPending;
use crate::worker::{route_settings, Worker};

/// Retries above this from the attempt count are not believed (a hostile or broken value).
const MAX_BELIEVED_RETRIES: u64 = 1_000;

/// Why a request's retries were refused or cut.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// The budget is spent (or had fewer tokens than `max_retries`).
    Budget,
    /// The remaining deadline is below the observed median latency.
    Deadline,
    /// The request arrived as a retry: the caller retries, this hop does not.
    HopGuard,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Budget => "budget",
            Reason::Deadline => "deadline",
            Reason::HopGuard => "hop_guard",
        }
    }
}

/// The verdict on an outbound request's retries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// All `max_retries`.
    Full,
    /// Fewer than `max_retries` (but some).
    Capped { retries: u32 },
    /// None.
    Denied(Reason),
}

impl Verdict {
    fn restricts(self) -> bool {
        !matches!(self, Verdict::Full)
    }

    /// The decision header's value, `deny; reason=budget` or `cap; reason=budget; retries=1`.
    fn explain(self) -> String {
        match self {
            Verdict::Full => "allow".to_owned(),
            Verdict::Capped { retries } => format!("cap; reason=budget; retries={retries}"),
            Verdict::Denied(r) => format!("deny; reason={}", r.as_str()),
        }
    }

    /// The dry-run header's value, `dry_run; would_deny=budget`.
    fn explain_dry_run(self) -> String {
        match self {
            Verdict::Full => "dry_run".to_owned(),
            Verdict::Capped { retries } => {
                format!("dry_run; would_cap=budget; retries={retries}")
            }
            Verdict::Denied(r) => format!("dry_run; would_deny={}", r.as_str()),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    /// Disabled route or key overflow: nothing is counted.
    Unguarded,
    Outbound {
        reservation: Reservation,
        verdict: Verdict,
        dry_run: bool,
    },
    /// Inbound first attempt, or an admitted retry.
    InboundPassed,
    /// Inbound dry run: this retry would have been shed.
    InboundWouldShed,
    /// Inbound: shed locally.
    Shed,
}

/// The HTTP context of the retry-budget filter, on host `H` (the real proxy unless a test says
/// otherwise).
pub struct RetryBudgetHttp<H: Host = WasmHost> {
    host: H,
    worker: Option<Rc<RefCell<Worker<H>>>>,
    role: Role,
    /// This request's budget in the worker's table.
    entry: Option<Handle>,
    start_ms: u64,
    first_byte_ms: u64,
    status: u16,
}

impl RetryBudgetHttp {
    /// A stream on the real proxy.
    pub fn new(worker: Option<Rc<RefCell<Worker>>>) -> Self {
        RetryBudgetHttp::on(WasmHost, worker)
    }
}

impl<H: Host + Clone> RetryBudgetHttp<H> {
    /// A stream on `host`, deciding with `worker`'s budgets.
    pub fn on(host: H, worker: Option<Rc<RefCell<Worker<H>>>>) -> Self {
        RetryBudgetHttp {
            host,
            worker,
            role: Role::Unguarded,
            entry: None,
            start_ms: 0,
            first_byte_ms: 0,
            status: 0,
        }
    }

    fn decide(&mut self, w: &mut Worker<H>) -> Action {
        let mut req = HostRequest::on(&self.host);
        let config = Rc::clone(&w.config);
        let selected = config.routes.select(&mut req);
        let settings: &Settings = selected.settings;
        let Some(side) = settings.mode.side() else {
            return Action::Continue;
        };
        let base = selected.key(&mut req, &config.global.generic_route_names, || {
            props::cluster_name_on(&self.host)
        });
        let now = clock::now_ms_on(&self.host);
        self.start_ms = now;
        let dry_run = settings.mode.dry_run();
        let needs_evidence = side == Side::Inbound || settings.hop_guard;
        let arrived_as_retry =
            needs_evidence && arrived_as_retry(&self.host, settings, &mut w.global_pending);
        self.entry = w.entry(&base, selected.index);
        let Some(handle) = self.entry else {
            return Action::Continue;
        };
        let Some(entry) = w.entries.get_mut(handle) else {
            return Action::Continue;
        };
        entry.pending.requests += 1;
        match side {
            Side::Outbound => {
                entry.local.record_request();
                let median = if settings.deadline_aware {
                    entry.trusted_median(settings.min_latency_samples)
                } else {
                    None
                };
                let refused = if settings.hop_guard && arrived_as_retry {
                    Some(Reason::HopGuard)
                } else if median.is_some_and(|m| {
                    remaining_deadline(&self.host, settings).is_some_and(|d| d < m)
                }) {
                    Some(Reason::Deadline)
                } else {
                    None
                };
                let max = settings.max_retries;
                let (reservation, verdict) = match refused {
                    Some(reason) => (Reservation::NONE, Verdict::Denied(reason)),
                    None => {
                        let r = w.reserve(handle, max, now);
                        let verdict = if r.tokens >= max {
                            Verdict::Full
                        } else if r.tokens == 0 {
                            Verdict::Denied(Reason::Budget)
                        } else {
                            Verdict::Capped { retries: r.tokens }
                        };
                        (r, verdict)
                    }
                };
                self.outbound(w, settings, reservation, verdict, dry_run, arrived_as_retry)
            }
            Side::Inbound => {
                if !arrived_as_retry {
                    entry.local.record_request();
                    self.role = Role::InboundPassed;
                    return Action::Continue;
                }
                let r = w.reserve(handle, 1, now);
                if r.tokens >= 1 {
                    w.settle(handle, r, 1, now);
                    if let Some(entry) = self.entry.and_then(|h| w.entries.get_mut(h)) {
                        entry.pending.retries_allowed += 1;
                    }
                    self.role = Role::InboundPassed;
                    return Action::Continue;
                }
                self.shed(w, settings, dry_run)
            }
        }
    }

    fn outbound(
        &mut self,
        w: &mut Worker<H>,
        settings: &Settings,
        reservation: Reservation,
        verdict: Verdict,
        dry_run: bool,
        arrived_as_retry: bool,
    ) -> Action {
        self.role = Role::Outbound {
            reservation,
            verdict,
            dry_run,
        };
        if let Some(entry) = self.entry.and_then(|h| w.entries.get_mut(h)) {
            let p = &mut entry.pending;
            if dry_run {
                if verdict.restricts() {
                    p.would_deny += 1;
                }
            } else {
                match verdict {
                    Verdict::Full => {}
                    Verdict::Capped { .. } => p.retries_capped += 1,
                    Verdict::Denied(Reason::Budget) => p.denied_budget += 1,
                    Verdict::Denied(Reason::Deadline) => p.denied_deadline += 1,
                    Verdict::Denied(Reason::HopGuard) => p.denied_hop_guard += 1,
                }
            }
        }
        if dry_run {
            if verdict.restricts() {
                log::debug!(
                    "retry_budget {}: dry run: would {}",
                    self.entry
                        .and_then(|h| w.entries.key(h))
                        .unwrap_or_default(),
                    verdict.explain()
                );
            }
            return Action::Continue;
        }
        let set = |name, value: &str| {
            request::set_header_on(&self.host, MapType::HttpRequestHeaders, name, value)
        };
        set("x-envoy-max-retries", &reservation.tokens.to_string());
        if reservation.tokens > 0 {
            if let Some(on) = &settings.retry_on {
                set("x-envoy-retry-on", on);
            }
            if let Some(on) = &settings.retry_grpc_on {
                set("x-envoy-retry-grpc-on", on);
            }
            if let Some(ms) = settings.per_try_timeout_ms {
                set("x-envoy-upstream-rq-per-try-timeout-ms", &ms.to_string());
            }
        }
        if settings.hop_guard && arrived_as_retry {
            set(HOP_GUARD_HEADER, "1");
        }
        Action::Continue
    }

    fn shed(&mut self, w: &mut Worker<H>, settings: &Settings, dry_run: bool) -> Action {
        let Some(handle) = self.entry else {
            return Action::Continue;
        };
        let key = w.entries.key(handle).unwrap_or_default().to_owned();
        let Some(entry) = w.entries.get_mut(handle) else {
            return Action::Continue;
        };
        if dry_run {
            entry.pending.would_deny += 1;
            log::debug!("retry_budget {key}: dry run: would shed a retry (budget)");
            self.role = Role::InboundWouldShed;
            return Action::Continue;
        }
        entry.pending.retries_shed += 1;
        self.role = Role::Shed;
        let retry_after = jitter_between(
            settings.retry_after_min_s,
            settings.retry_after_max_s,
            random_u64(),
        );
        let retry_after_text = retry_after.to_string();
        let mut headers: Vec<(&str, &str)> = vec![
            ("retry-after", retry_after_text.as_str()),
            (DECISION_HEADER, "shed; reason=budget"),
        ];
        if settings.mark_ratelimited {
            headers.push(("x-envoy-ratelimited", "true"));
        }
        let p = &settings.policy;
        let limits = format!(
            "Retries for {key} are shed: they may be at most {}% of recent requests plus {} per second over {} s",
            p.budget_percent,
            p.min_retries_per_second,
            p.window_ms / 1000
        );
        let problem = Problem {
            status: settings.shed_status,
            kind: "retry-budget-exhausted",
            title: "Retry budget exhausted",
            detail: bounded(&format!("{limits}; retry after {retry_after} s."), 256),
            extensions: vec![
                ("budget", serde_json::Value::from(key)),
                ("reason", serde_json::Value::from("budget")),
                ("retry_after", serde_json::Value::from(retry_after)),
            ],
        };
        // The shed request is itself a retry: tell a gRPC client's retry policy to stop, with a
        // status no standard policy retries.
        let refusal = Refusal::new(Code::ResourceExhausted, "retry_budget", "budget")
            .with_pushback(Pushback::Stop)
            .with_message(format!("{limits}; do not retry."));
        reply::send_problem_on(&self.host, &problem, &refusal, &headers);
        Action::Pause
    }

    /// Explains the verdict and adds the optional `retry-after` hint.
    fn on_response(&mut self, w: &mut Worker<H>) {
        let config = Rc::clone(&w.config);
        let Some(entry) = self.entry.and_then(|h| w.entries.get_mut(h)) else {
            return;
        };
        let settings = route_settings(&config, entry.route_index);
        let host = &self.host;
        let set = |name, value: &str| {
            request::set_header_on(host, MapType::HttpResponseHeaders, name, value)
        };
        let dry_run = match self.role {
            Role::Outbound {
                verdict, dry_run, ..
            } => {
                if verdict.restricts() {
                    let text = if dry_run {
                        verdict.explain_dry_run()
                    } else {
                        verdict.explain()
                    };
                    set(DECISION_HEADER, &text);
                }
                dry_run
            }
            Role::InboundWouldShed => {
                set(DECISION_HEADER, "dry_run; would_shed=budget");
                true
            }
            Role::InboundPassed => settings.mode.dry_run(),
            Role::Unguarded | Role::Shed => return,
        };
        if settings.add_retry_after
            && !dry_run
            && matches!(self.status, 503 | 429)
            && request::map_value_on(host, MapType::HttpResponseHeaders, "retry-after").is_none()
        {
            let s = jitter_between(
                settings.retry_after_min_s,
                settings.retry_after_max_s,
                random_u64(),
            );
            set("retry-after", &s.to_string());
            entry.pending.retry_after_added += 1;
        }
    }

    /// Charges the retries the router made and learns the latency of a single good attempt.
    fn on_end(&mut self, w: &mut Worker<H>, reservation: Reservation, dry_run: bool) {
        let config = Rc::clone(&w.config);
        // Settled as of the response's first byte when there was one: by then the router has
        // made every attempt, and the clock read it had costs nothing again (a host call here
        // is a few µs per request, see `cargo pack bench --host-calls`). A lease that went stale
        // since is still dropped by the next reservation, which reads the clock.
        let now = if self.first_byte_ms > 0 {
            self.first_byte_ms
        } else {
            clock::now_ms_on(&self.host)
        };
        let Some(entry) = self.entry.and_then(|h| w.entries.get_mut(h)) else {
            return;
        };
        let settings = route_settings(&config, entry.route_index);
        let attempts =
            props::u64_on(&self.host, &["upstream", "request_attempt_count"]).or_else(|| {
                request::map_value_on(
                    &self.host,
                    MapType::HttpResponseHeaders,
                    "x-envoy-attempt-count",
                )
                .and_then(|v| parse_attempts(&v))
            });
        let used = match attempts {
            Some(n) => u32::try_from(n.saturating_sub(1).min(MAX_BELIEVED_RETRIES)).unwrap_or(0),
            // Unknown: keep the whole reservation charged (never under-charge).
            None => reservation.tokens,
        };
        entry.pending.retries_allowed += u64::from(used);
        // Dry run: charge what enforcing would have let through.
        let charged = if dry_run {
            used.min(reservation.tokens)
        } else {
            used
        };
        entry.local.settle(reservation, charged, now);
        if settings.deadline_aware
            && attempts == Some(1)
            && self.first_byte_ms > 0
            && (100..500).contains(&self.status)
        {
            entry
                .samples
                .record(self.first_byte_ms.saturating_sub(self.start_ms));
        }
    }
}

/// Whether the request says it is a retry. Unparseable values (negative, huge, non-numeric,
/// non-UTF-8) do not make a request a retry; they are counted in `attempt_headers_invalid`.
fn arrived_as_retry<H: Host>(host: &H, settings: &Settings, g: &mut GlobalPending) -> bool {
    let mut check = |name: &str, threshold: u64| -> bool {
        match request::map_value_on(host, MapType::HttpRequestHeaders, name) {
            None => false,
            Some(v) => match parse_attempts(&v) {
                Some(n) => n > threshold,
                None => {
                    g.attempt_headers_invalid += 1;
                    false
                }
            },
        }
    };
    settings.attempt_count_headers.iter().any(|h| check(h, 1))
        || settings
            .previous_attempts_headers
            .iter()
            .any(|h| check(h, 0))
        || check(HOP_GUARD_HEADER, 0)
}

/// The smallest remaining deadline the request announces, in ms.
fn remaining_deadline<H: Host>(host: &H, settings: &Settings) -> Option<u64> {
    let header = |name: &str| request::map_value_on(host, MapType::HttpRequestHeaders, name);
    let grpc = header("grpc-timeout").and_then(|v| parse_grpc_timeout(&v));
    let envoy = header("x-envoy-upstream-rq-timeout-ms").and_then(|v| parse_millis(&v));
    let custom = settings
        .deadline_header
        .as_deref()
        .and_then(header)
        .and_then(|v| parse_millis(&v));
    [grpc, envoy, custom].into_iter().flatten().min()
}

impl<H: Host + Clone> Context for RetryBudgetHttp<H> {}

impl<H: Host + Clone> resilience_host::stage::Stage for RetryBudgetHttp<H> {}

impl<H: Host + Clone> HttpContext for RetryBudgetHttp<H> {
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
        if matches!(self.role, Role::Unguarded | Role::Shed) {
            return Action::Continue;
        }
        self.first_byte_ms = clock::now_ms_on(&self.host);
        self.status = request::response_status_on(&self.host).unwrap_or(0);
        let Some(worker) = self.worker.as_ref().map(Rc::clone) else {
            return Action::Continue;
        };
        if let Ok(mut w) = worker.try_borrow_mut() {
            self.on_response(&mut w);
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        let Role::Outbound {
            reservation,
            dry_run,
            ..
        } = self.role
        else {
            return;
        };
        let Some(worker) = self.worker.as_ref().map(Rc::clone) else {
            return;
        };
        if let Ok(mut w) = worker.try_borrow_mut() {
            self.on_end(&mut w, reservation, dry_run);
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_explain_themselves_in_the_decision_header() {
        assert_eq!(
            Verdict::Denied(Reason::Budget).explain(),
            "deny; reason=budget"
        );
        assert_eq!(
            Verdict::Denied(Reason::HopGuard).explain(),
            "deny; reason=hop_guard"
        );
        assert_eq!(
            Verdict::Capped { retries: 1 }.explain(),
            "cap; reason=budget; retries=1"
        );
        assert_eq!(
            Verdict::Denied(Reason::Deadline).explain_dry_run(),
            "dry_run; would_deny=deadline"
        );
        assert_eq!(
            Verdict::Capped { retries: 2 }.explain_dry_run(),
            "dry_run; would_cap=budget; retries=2"
        );
    }

    #[test]
    fn only_a_full_grant_leaves_the_request_unrestricted() {
        assert!(!Verdict::Full.restricts());
        assert!(Verdict::Capped { retries: 1 }.restricts());
        assert!(Verdict::Denied(Reason::Budget).restricts());
    }
}
