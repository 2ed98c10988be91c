//! Slow start's cross-worker glue on a fake proxy: several workers, one shared store.
//!
//! Why here and not only in the Envoy tests: the promises slow start makes across Envoy's workers
//! (one ramp per endpoint, seen alike by every worker; each transition counted once; each
//! priming request claimed by exactly one worker; `max_warmup_rps` across all workers together)
//! hang on who runs when, which Envoy decides and rarely varies. Here every worker is a
//! [`FakeHost`] on one [`FakeStore`], streams go through the real [`SlowStartHttp`] callbacks,
//! the tick and the callouts' answers go through the root's [`send_due`] and
//! [`callout_answered`], and a test can run one worker *between* another's read and its
//! conditional write ([`FakeStore::after_next_read`]).
//!
//! Every test uses the plugin name `test`, so endpoint `i` of a balancing instance lives under
//! `rpack/ss/test/ep/<i>` (admit mode: `rpack/ss/test/ep/self`) and counts under
//! `slow_start.<address with _>.*`.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use proxy_wasm::traits::HttpContext;
use proxy_wasm::types::{Action, BufferType, MapType};
use resilience_core::directory::Directory;
use resilience_core::ramp::{identity_of, EndpointRamp, Phase};
use resilience_host::abi::HostStatus;
use resilience_host::fake::{Callout, FakeHost, FakeStore, LocalReply};

use crate::config::{self, FilterConfig, DECISION_HEADER, DEFAULT_DESTINATION_HEADER};
use crate::http::SlowStartHttp;
use crate::root::{callout_answered, send_due};
use crate::worker::Worker;

const DEST: &str = DEFAULT_DESTINATION_HEADER;
const A: &str = "10.0.0.1:80";
const B: &str = "10.0.0.2:80";
const C: &str = "10.0.0.3:80";

/// One fake proxy running slow start with one configuration.
struct Proxy {
    store: FakeStore,
    config: Rc<FilterConfig>,
}

impl Proxy {
    fn new(json: &str) -> Self {
        Proxy {
            store: FakeStore::new(),
            config: Rc::new(config::parse(json.as_bytes()).unwrap()),
        }
    }

    /// A new worker of this proxy (its own VM: its own cached views, batches and stats cache).
    fn worker(&self) -> TestWorker {
        let host = self.store.worker();
        let worker = Worker::on(host.clone(), Rc::clone(&self.config), "test");
        TestWorker {
            host,
            worker: Rc::new(RefCell::new(worker)),
            seen: Rc::new(Cell::new(0)),
        }
    }

    fn advance_ms(&self, ms: u64) {
        self.store.advance_ms(ms);
    }

    fn now(&self) -> u64 {
        self.store.now_ms()
    }

    /// The ramp stored under `key` (`"0"`, `"self"`, ...).
    fn ramp(&self, key: &str) -> EndpointRamp {
        let bytes = self.store.get(&ep_key(key)).unwrap();
        EndpointRamp::decode(&bytes, &self.config.global.policy).unwrap()
    }

    /// Writes a ramp for `address` under `key`, as another worker (or an earlier VM) left it.
    fn seed(&self, key: &str, address: &str, f: impl FnOnce(&mut EndpointRamp)) {
        let mut st = EndpointRamp::new(identity_of(address), &self.config.global.policy);
        f(&mut st);
        self.store.put(&ep_key(key), &st.encode());
    }

    /// The counter `slow_start.<name>`, summed over every worker.
    fn counter(&self, name: &str) -> u64 {
        self.store.counter(&format!("slow_start.{name}"))
    }

    /// The gauge `slow_start.<name>`, summed over every worker.
    fn gauge(&self, name: &str) -> i64 {
        self.store.gauge(&format!("slow_start.{name}"))
    }
}

fn ep_key(key: &str) -> String {
    format!("rpack/ss/test/ep/{key}")
}

/// An address as its stats name it.
fn stat(address: &str) -> String {
    address.replace(['.', ':'], "_")
}

fn header<'a>(c: &'a Callout, name: &str) -> Option<&'a str> {
    c.headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

#[derive(Clone)]
struct TestWorker {
    host: FakeHost,
    worker: Rc<RefCell<Worker<FakeHost>>>,
    /// Callouts already handed to the test by [`TestWorker::new_callouts`].
    seen: Rc<Cell<usize>>,
}

impl TestWorker {
    /// A request through the request-headers callback; the response is still to come.
    fn start(&self, path: &str, extra: &[(&str, &str)]) -> Stream {
        let mut headers = vec![(":method", "GET"), (":path", path), (":authority", "svc")];
        headers.extend_from_slice(extra);
        self.host.set_map(MapType::HttpRequestHeaders, &headers);
        self.host.remove_map(MapType::HttpResponseHeaders);
        let mut http = SlowStartHttp::on(self.host.clone(), Some(Rc::clone(&self.worker)));
        let action = http.on_http_request_headers(headers.len(), true);
        Stream {
            http,
            host: self.host.clone(),
            action,
            destination: self.host.header(MapType::HttpRequestHeaders, DEST),
        }
    }

    /// A whole request answered with `status` (unless it was shed); where it went.
    fn request(&self, status: u16) -> (Action, Option<String>) {
        let stream = self.start("/", &[]);
        let out = (stream.action, stream.destination.clone());
        stream.finish(status);
        out
    }

    /// The worker's timer fired: discovery, the per-endpoint CAS, and the callouts it claimed.
    fn tick(&self) {
        let now = self.host.store().now_ms();
        send_due(&mut self.worker.borrow_mut(), now);
    }

    /// The callouts this worker sent since the last call.
    fn new_callouts(&self) -> Vec<Callout> {
        let all = self.host.callouts();
        let fresh = all[self.seen.get()..].to_vec();
        self.seen.set(all.len());
        fresh
    }

    /// Callout `c` is answered with `status` and `body` (`None`: it failed, no headers at all).
    fn answer(&self, c: &Callout, status: Option<u16>, body: &[u8]) {
        match status {
            Some(s) => self.host.set_map(
                MapType::HttpCallResponseHeaders,
                &[(":status", &s.to_string())],
            ),
            None => self.host.set_map(MapType::HttpCallResponseHeaders, &[]),
        }
        self.host.set_buffer(BufferType::HttpCallResponseBody, body);
        callout_answered(&mut self.worker.borrow_mut(), c.token, body.len());
    }

    /// Answers every new callout: `status_of` decides by the endpoint each went to.
    fn answer_new(&self, status_of: impl Fn(&str) -> Option<u16>) -> Vec<Callout> {
        let fresh = self.new_callouts();
        for c in &fresh {
            let to = header(c, DEST).unwrap_or("self");
            self.answer(c, status_of(to), b"");
        }
        fresh
    }

    /// This worker's cached view of endpoint `index`.
    fn view(&self, index: usize) -> EndpointRamp {
        self.worker.borrow().endpoints[index].view.clone()
    }

    fn addresses(&self) -> Vec<(u16, String)> {
        self.worker
            .borrow()
            .endpoints
            .iter()
            .map(|e| (e.slot, e.address.clone()))
            .collect()
    }

    fn last_reply(&self) -> LocalReply {
        self.host.replies().pop().unwrap()
    }
}

/// One request between its request headers and its end.
struct Stream {
    http: SlowStartHttp<FakeHost>,
    host: FakeHost,
    action: Action,
    /// The destination header as the filter left it.
    destination: Option<String>,
}

impl Stream {
    /// The response headers arrive with `status`; returns the decision header the filter put on.
    fn respond(&mut self, status: u16) -> Option<String> {
        let status = status.to_string();
        self.host
            .set_map(MapType::HttpResponseHeaders, &[(":status", &status)]);
        self.http.on_http_response_headers(1, true);
        self.host
            .header(MapType::HttpResponseHeaders, DECISION_HEADER)
    }

    /// The upstream answers `status` (if the request reached it) and the stream ends.
    fn finish(mut self, status: u16) {
        if self.action == Action::Continue {
            self.respond(status);
        }
        self.http.on_log();
    }
}

/// One endpoint, no gate: a request always goes to it, and its first success starts the ramp.
const ONE: &str = r#"{
    "endpoints": [{ "address": "10.0.0.1:80" }],
    "slow_start_window": "10s",
    "unhealthy_after": 2
}"#;

#[test]
fn a_replica_restarted_on_one_worker_ramps_on_every_worker() {
    let proxy = Proxy::new(ONE);
    let (a, b) = (proxy.worker(), proxy.worker());
    let t0 = proxy.now();
    assert_eq!(a.request(200), (Action::Continue, Some(A.to_owned())));
    proxy.advance_ms(100);
    a.tick();
    b.tick();
    // The clock starts at the success itself, not at the tick that published it.
    let ramp = proxy.ramp("0");
    assert_eq!((ramp.phase, ramp.ramp_start_ms), (Phase::Ramping, t0));
    assert_eq!(a.view(0), b.view(0));

    // Worker b sees it fail (the replica went away) and come back; worker a only ticks.
    proxy.advance_ms(4_900);
    b.request(503);
    b.request(503);
    b.tick();
    a.tick();
    assert_eq!(a.view(0).phase, Phase::Unhealthy);
    proxy.advance_ms(1_000);
    let back = proxy.now();
    b.request(200);
    proxy.advance_ms(100);
    b.tick();
    a.tick();
    let (va, vb) = (a.view(0), b.view(0));
    assert_eq!(va, vb);
    assert_eq!((va.phase, va.ramp_start_ms), (Phase::Ramping, back));
    let curve = proxy.config.routes.defaults.curve;
    let policy = proxy.config.global.policy;
    let now = proxy.now();
    assert_eq!(
        va.fraction(now, &curve, &policy),
        vb.fraction(now, &curve, &policy)
    );

    // Each transition was counted once, by the worker whose CAS made it, and the phase gauge,
    // moved by both workers, adds up to "ramping".
    let ep = stat(A);
    assert_eq!(proxy.counter(&format!("{ep}.ramps_started")), 2);
    assert_eq!(proxy.counter(&format!("{ep}.became_unhealthy")), 1);
    assert_eq!(proxy.gauge(&format!("{ep}.phase")), 2);
    assert_eq!(
        proxy.gauge(&format!("{ep}.effective_weight")),
        i64::from(va.shown.weight)
    );
    assert_eq!(proxy.counter(&format!("{ep}.successes")), 2);
    assert_eq!(proxy.counter(&format!("{ep}.failures")), 2);
}

#[test]
fn priming_requests_go_out_from_the_tick_and_their_answers_move_the_endpoint_to_the_ramp() {
    let proxy = Proxy::new(
        r#"{
            "endpoints": [{ "address": "10.0.0.1:80" }],
            "dispatch_cluster": "backends",
            "warmup_requests": [
                { "path": "/warm/1" },
                { "method": "post", "path": "/warm/2", "headers": { "x-kind": "catalog" }, "body": "{}" }
            ],
            "warmup_rate": 1000,
            "warmup_timeout": "3s"
        }"#,
    );
    let (a, b) = (proxy.worker(), proxy.worker());
    let ep = stat(A);

    // New and gated: the first warm-up request is its readiness probe, claimed by one worker.
    a.tick();
    b.tick();
    assert!(b.new_callouts().is_empty());
    let probe = a.new_callouts();
    assert_eq!(probe.len(), 1);
    let p = &probe[0];
    assert_eq!((p.cluster.as_str(), p.timeout_ms), ("backends", 3_000));
    assert_eq!(header(p, ":method"), Some("GET"));
    assert_eq!(header(p, ":path"), Some("/warm/1"));
    assert_eq!(header(p, ":authority"), Some(A));
    assert_eq!(header(p, DEST), Some(A));
    assert_eq!(header(p, DECISION_HEADER), Some("priming"));

    // The probe fails (no headers: a connect failure): still new, probed again a second later.
    a.answer(p, None, b"");
    a.tick();
    assert_eq!(proxy.ramp("0").phase, Phase::New);
    assert!(a.new_callouts().is_empty());
    proxy.advance_ms(1_000);
    a.tick();
    let probe = a.new_callouts();
    assert_eq!(probe.len(), 1);
    a.answer(&probe[0], Some(200), b"");

    // It answers: priming starts, and goes on from the second request.
    a.tick();
    assert_eq!(proxy.ramp("0").phase, Phase::Priming);
    let second = a.new_callouts();
    assert_eq!(second.len(), 1);
    let s = &second[0];
    assert_eq!(header(s, ":method"), Some("POST"));
    assert_eq!(header(s, ":path"), Some("/warm/2"));
    assert_eq!(header(s, "x-kind"), Some("catalog"));
    assert_eq!(header(s, "content-length"), Some("2"));
    assert_eq!(s.body.as_deref(), Some(&b"{}"[..]));
    b.tick();
    assert_eq!(b.view(0).phase, Phase::Priming);
    assert!(b.new_callouts().is_empty());

    // Every warm-up request answered: the ramp starts.
    a.answer(s, Some(200), b"");
    a.tick();
    b.tick();
    assert_eq!(proxy.ramp("0").phase, Phase::Ramping);
    assert_eq!(b.view(0).phase, Phase::Ramping);
    assert_eq!(proxy.counter(&format!("{ep}.priming_sent")), 3);
    assert_eq!(proxy.counter(&format!("{ep}.priming_succeeded")), 2);
    assert_eq!(proxy.counter(&format!("{ep}.priming_failed")), 1);
    assert_eq!(proxy.counter(&format!("{ep}.priming_started")), 1);
    assert_eq!(proxy.counter(&format!("{ep}.ramps_started")), 1);
}

#[test]
fn a_failing_health_check_takes_an_endpoint_out_of_the_balance_and_a_passing_one_ramps_it_back() {
    let proxy = Proxy::new(
        r#"{
            "endpoints": [{ "address": "10.0.0.1:80" }, { "address": "10.0.0.2:80" }],
            "dispatch_cluster": "backends",
            "active_health_check": { "path": "/healthz", "interval": "1s" },
            "unhealthy_after": 2,
            "slow_start_window": "1s"
        }"#,
    );
    let (a, b) = (proxy.worker(), proxy.worker());
    let ok = |_: &str| Some(200);

    // Both new and gated: one health check each; both pass, both ramp, and after the window
    // both are warm.
    a.tick();
    let checks = a.answer_new(ok);
    assert_eq!(checks.len(), 2);
    assert!(checks.iter().all(|c| header(c, ":path") == Some("/healthz")
        && header(c, DECISION_HEADER) == Some("health_check")));
    a.tick();
    assert_eq!(proxy.ramp("0").phase, Phase::Ramping);
    assert_eq!(proxy.ramp("1").phase, Phase::Ramping);
    a.answer_new(ok);
    proxy.advance_ms(1_000);
    a.tick();
    b.tick();
    assert!(b.new_callouts().is_empty());
    assert_eq!(proxy.ramp("1").phase, Phase::Warm);

    // B fails two checks in a row: unhealthy, on every worker.
    let b_fails = |to: &str| (to != B).then_some(200);
    a.answer_new(|to| if to == B { Some(503) } else { Some(200) });
    proxy.advance_ms(1_000);
    a.tick();
    a.answer_new(b_fails);
    a.tick();
    b.tick();
    assert_eq!(proxy.ramp("1").phase, Phase::Unhealthy);
    assert_eq!(b.view(1).phase, Phase::Unhealthy);
    assert_eq!(proxy.counter(&format!("{}.became_unhealthy", stat(B))), 1);
    assert_eq!(
        proxy.counter(&format!("{}.health_checks_failed", stat(B))),
        2
    );

    // While it is out, no user request goes to it.
    for _ in 0..200 {
        assert_eq!(b.request(200), (Action::Continue, Some(A.to_owned())));
    }

    // Its next check passes: it ramps again from that success.
    let recheck = a.new_callouts();
    let to_b: Vec<&Callout> = recheck
        .iter()
        .filter(|c| header(c, DEST) == Some(B))
        .collect();
    assert_eq!(to_b.len(), 1);
    let back = proxy.now();
    a.answer(to_b[0], Some(200), b"");
    a.tick();
    b.tick();
    let ramp = proxy.ramp("1");
    assert_eq!((ramp.phase, ramp.ramp_start_ms), (Phase::Ramping, back));
    assert_eq!(b.view(1).phase, Phase::Ramping);
    assert_eq!(proxy.counter(&format!("{}.ramps_started", stat(B))), 2);
}

/// Admit mode with a gate: a new replica admits nothing until its first warm-up request passes.
const ADMIT_GATED: &str = r#"{
    "dispatch_cluster": "local",
    "warmup_requests": [{ "path": "/warm" }],
    "retry_after": "2s",
    "health_checks": { "paths": ["/healthz"], "headers": [{ "name": "x-probe" }] }
}"#;

#[test]
fn a_warming_replica_sheds_the_excess_as_a_problem_with_retry_after_and_the_decision_header() {
    let proxy = Proxy::new(ADMIT_GATED);
    let w = proxy.worker();
    let stream = w.start("/orders", &[("content-type", "application/json")]);
    assert_eq!(stream.action, Action::Pause);
    stream.finish(0);

    let reply = w.last_reply();
    assert_eq!((reply.status, reply.grpc_status), (503, None));
    assert_eq!(
        reply.header("content-type"),
        Some("application/problem+json")
    );
    assert_eq!(reply.header("retry-after"), Some("2"));
    assert_eq!(
        reply.header(DECISION_HEADER),
        Some("shed; reason=warming; phase=new; admit_percent=0")
    );
    let body = reply.body_text();
    assert!(
        body.starts_with(r#"{"type":"urn:resilience-pack:problem:warming-up""#)
            && body.contains(r#""phase":"new""#)
            && body.contains(r#""retry_after":2"#),
        "{body}"
    );

    // Health checks pass, by path (the query is ignored) or by header.
    assert_eq!(w.start("/healthz?full=1", &[]).action, Action::Continue);
    assert_eq!(w.start("/", &[("x-probe", "1")]).action, Action::Continue);
    assert_eq!(w.host.replies().len(), 1);
    w.tick();
    assert_eq!(proxy.counter("self.shed"), 1);
    assert_eq!(proxy.counter("self.health_checks"), 2);
    assert_eq!(proxy.counter("self.requests"), 1);
}

#[test]
fn a_grpc_call_shed_by_a_warming_replica_gets_a_trailers_only_unavailable_with_pushback() {
    let proxy = Proxy::new(ADMIT_GATED);
    let w = proxy.worker();
    let stream = w.start(
        "/shop.Orders/Get",
        &[("content-type", "application/grpc"), ("te", "trailers")],
    );
    assert_eq!(stream.action, Action::Pause);

    let reply = w.last_reply();
    assert_eq!((reply.status, reply.grpc_status), (200, Some(14)));
    assert!(reply.body.is_empty(), "trailers-only");
    assert_eq!(reply.header("content-type"), Some("application/grpc"));
    assert_eq!(reply.header("grpc-status"), Some("14"));
    assert_eq!(reply.header("grpc-retry-pushback-ms"), Some("2000"));
    assert_eq!(reply.header("retry-after"), Some("2"));
    assert_eq!(
        reply.header(DECISION_HEADER),
        Some("shed; reason=warming; phase=new; admit_percent=0")
    );
    assert!(reply
        .header("grpc-message")
        .is_some_and(|m| m.starts_with("This replica is warming up (new)") && !m.contains('{')));
}

#[test]
fn in_dry_run_a_request_the_replica_would_shed_passes_and_its_response_says_so() {
    let proxy = Proxy::new(&ADMIT_GATED.replace(
        r#""retry_after": "2s","#,
        r#""retry_after": "2s", "mode": "dry_run","#,
    ));
    let w = proxy.worker();
    let mut stream = w.start("/orders", &[]);
    assert_eq!(stream.action, Action::Continue);
    assert_eq!(
        stream.respond(200).as_deref(),
        Some("dry_run; would_shed=warming; phase=new; admit_percent=0")
    );
    stream.http.on_log();
    assert!(w.host.replies().is_empty());
    w.tick();
    assert_eq!(proxy.counter("self.dry_run_would_shed"), 1);
    assert_eq!(proxy.counter("self.shed"), 0);
}

#[test]
fn an_admitting_replica_admits_the_same_ramped_share_on_every_worker() {
    let proxy = Proxy::new(r#"{ "slow_start_window": "10s", "min_weight_percent": 10 }"#);
    let (a, b) = (proxy.worker(), proxy.worker());
    // Ungated, a new replica admits the floor; the first admitted success starts its ramp.
    let admitted = (0..400).find(|_| a.request(200).0 == Action::Continue);
    assert!(admitted.is_some());
    a.tick();
    b.tick();
    assert_eq!(proxy.ramp("self").phase, Phase::Ramping);
    proxy.advance_ms(5_000);

    for w in [&a, &b] {
        let n = 2_000;
        let passed = (0..n)
            .filter(|_| w.request(200).0 == Action::Continue)
            .count();
        let share = passed as f64 / f64::from(n);
        assert!(
            (share - 0.5).abs() < 0.06,
            "worker {}: {share}",
            w.host.id()
        );
    }
    let reply = b.last_reply();
    assert_eq!(
        reply.header(DECISION_HEADER),
        Some("shed; reason=warming; phase=ramping; admit_percent=50")
    );
}

/// Three endpoints with an active health check (a gate), for the picking tests.
const THREE: &str = r#"{
    "endpoints": [
        { "address": "10.0.0.1:80" }, { "address": "10.0.0.2:80" }, { "address": "10.0.0.3:80" }
    ],
    "dispatch_cluster": "backends",
    "active_health_check": { "path": "/healthz" },
    "slow_start_window": "8s",
    "routes": [{ "match": { "prefix": "/admin" }, "mode": "disabled" }]
}"#;

#[test]
fn balance_mode_writes_its_pick_into_the_destination_header_over_a_client_supplied_one() {
    let proxy = Proxy::new(THREE);
    for (key, address) in [("0", A), ("1", B), ("2", C)] {
        proxy.seed(key, address, |st| st.phase = Phase::Warm);
    }
    let w = proxy.worker();
    let spoofed = [(DEST, "169.254.169.254:80")];
    let stream = w.start("/orders", &spoofed);
    assert_eq!(stream.action, Action::Continue);
    let picked = stream.destination.clone().unwrap();
    assert!([A, B, C].contains(&picked.as_str()), "{picked}");
    stream.finish(200);

    // A disabled route is not balanced, and a client still does not pick: the header goes.
    let stream = w.start("/admin/users", &spoofed);
    assert_eq!(
        (stream.action, stream.destination.as_deref()),
        (Action::Continue, None)
    );
    stream.finish(200);
    w.tick();
    assert_eq!(proxy.counter("destination_header_overridden"), 2);
    assert_eq!(proxy.counter(&format!("{}.requests", stat(&picked))), 1);
}

#[test]
fn balance_mode_splits_traffic_by_ramped_weight_and_sends_nothing_to_an_unhealthy_gated_endpoint() {
    let proxy = Proxy::new(THREE);
    let now = proxy.now();
    proxy.seed("0", A, |st| st.phase = Phase::Warm);
    // A quarter of the way through its window: a quarter of its weight.
    proxy.seed("1", B, |st| {
        st.phase = Phase::Ramping;
        st.ramp_start_ms = now - 2_000;
    });
    proxy.seed("2", C, |st| {
        st.phase = Phase::Unhealthy;
        st.phase_since_ms = now;
    });
    for w in [proxy.worker(), proxy.worker()] {
        let n = 4_000;
        let mut to_b = 0;
        for _ in 0..n {
            let (action, to) = w.request(200);
            assert_eq!(action, Action::Continue);
            match to.as_deref() {
                Some(A) => {}
                Some(B) => to_b += 1,
                other => panic!("routed to {other:?}"),
            }
        }
        // B's share is 0.25 / (1 + 0.25).
        let share = f64::from(to_b) / f64::from(n);
        assert!(
            (share - 0.2).abs() < 0.04,
            "worker {}: {share}",
            w.host.id()
        );
    }
}

#[test]
fn with_alternates_the_header_names_a_retry_target_and_the_attempt_that_failed_counts_against_its_endpoint(
) {
    let proxy = Proxy::new(
        r#"{
            "endpoints": [{ "address": "10.0.0.1:80" }, { "address": "10.0.0.2:80" }],
            "destination_header": "x-pick",
            "alternates": 1
        }"#,
    );
    proxy.seed("0", A, |st| st.phase = Phase::Warm);
    proxy.seed("1", B, |st| st.phase = Phase::Warm);
    let w = proxy.worker();
    let mut stream = w.start("/", &[]);
    let named = w
        .host
        .header(MapType::HttpRequestHeaders, "x-pick")
        .unwrap();
    let (first, second) = named.split_once(',').unwrap();
    assert!(
        (first, second) == (A, B) || (first, second) == (B, A),
        "{named}"
    );
    // The first attempt failed; the router's retry went to the alternate and succeeded.
    w.host
        .set_property(&["upstream", "address"], second.as_bytes());
    stream.respond(200);
    stream.http.on_log();
    w.tick();
    assert_eq!(proxy.counter(&format!("{}.failures", stat(first))), 1);
    assert_eq!(
        proxy.counter(&format!("{}.retries_served", stat(second))),
        1
    );
    assert_eq!(proxy.counter(&format!("{}.successes", stat(second))), 1);
}

#[test]
fn the_endpoint_list_is_fetched_through_a_callout_by_one_worker_and_adopted_by_every_worker() {
    let proxy = Proxy::new(
        r#"{
            "endpoints": [{ "address": "10.0.0.1:80" }],
            "discovery": { "cluster": "registry", "path": "/endpoints", "interval": "1s" }
        }"#,
    );
    let (a, b) = (proxy.worker(), proxy.worker());
    a.tick();
    b.tick();
    // One fetch between them: a holds the lease.
    assert!(b.new_callouts().is_empty());
    let fetch = a.new_callouts();
    assert_eq!(fetch.len(), 1);
    let f = &fetch[0];
    assert_eq!(f.cluster, "registry");
    assert_eq!(header(f, ":path"), Some("/endpoints"));
    assert_eq!(header(f, ":authority"), Some("registry"));
    assert_eq!(header(f, "accept"), Some("application/json"));
    let gone_weight = format!("{}.effective_weight", stat(A));
    assert_eq!(proxy.gauge(&gone_weight), 10);

    a.answer(
        f,
        Some(200),
        br#"{"endpoints": [{"address": "10.0.0.2:80", "weight": 2}, {"address": "10.0.0.3:80"}]}"#,
    );
    let list: Vec<(u16, String)> = vec![(0, B.to_owned()), (1, C.to_owned())];
    assert_eq!(a.addresses(), list);
    let stored = Directory::decode(&proxy.store.get("rpack/ss/test/directory").unwrap()).unwrap();
    assert_eq!(stored.entries.len(), 2);
    b.tick();
    assert_eq!(b.addresses(), list);
    // The endpoint that left had its gauges taken back out exactly once.
    assert_eq!(proxy.gauge(&gone_weight), 0);
    for _ in 0..50 {
        let (_, to) = b.request(200);
        assert!(matches!(to.as_deref(), Some(B) | Some(C)), "{to:?}");
    }

    // A refused document and a failed fetch keep the list.
    proxy.advance_ms(1_000);
    a.tick();
    let fetch = a.new_callouts();
    a.answer(
        &fetch[0],
        Some(200),
        br#"{"endpoints": [{"address": "db:80"}]}"#,
    );
    proxy.advance_ms(1_000);
    a.tick();
    let fetch = a.new_callouts();
    a.answer(&fetch[0], None, b"");
    a.tick();
    b.tick();
    assert_eq!((a.addresses(), b.addresses()), (list.clone(), list));
    assert_eq!(proxy.counter("discovery_fetches"), 3);
    assert_eq!(proxy.counter("discovery_updates"), 1);
    assert_eq!(proxy.counter("discovery_rejected"), 1);
    assert_eq!(proxy.counter("discovery_failures"), 1);
}

#[test]
fn garbage_in_shared_data_is_read_as_a_fresh_ramp_counted_and_never_a_panic() {
    let policy = Proxy::new(ONE).config.global.policy;
    let valid = EndpointRamp::new(identity_of(A), &policy).encode();
    let mut truncated = valid.clone();
    truncated.truncate(valid.len() / 2);
    let mut trailing = valid.clone();
    trailing.push(0);
    let mut bad_phase = valid.clone();
    bad_phase[10] = 9;
    let mut other_version = valid.clone();
    other_version[1] = 7;
    let hostile: Vec<Vec<u8>> = vec![
        b"\xff".to_vec(),
        b"not a ramp at all".to_vec(),
        truncated,
        trailing,
        bad_phase,
        other_version,
        vec![0x55; 4096],
    ];
    for (i, bytes) in hostile.iter().enumerate() {
        let proxy = Proxy::new(ONE);
        proxy.store.put(&ep_key("0"), bytes);
        let w = proxy.worker();
        assert_eq!(w.request(200).0, Action::Continue, "value {i}");
        w.tick();
        assert!(proxy.counter("state_resets") >= 1, "value {i}");
        // The tick wrote a valid ramp back, with the success it had seen.
        let ramp = proxy.ramp("0");
        assert_eq!(
            (ramp.identity, ramp.phase),
            (identity_of(A), Phase::Ramping),
            "value {i}"
        );
        let resets = proxy.counter("state_resets");
        w.tick();
        assert_eq!(proxy.counter("state_resets"), resets, "value {i}");
    }

    // A garbage directory: the configured list is used, and the garbage counted.
    let proxy = Proxy::new(
        r#"{
            "endpoints": [{ "address": "10.0.0.1:80" }],
            "discovery": { "cluster": "registry", "path": "/endpoints" }
        }"#,
    );
    proxy.store.put("rpack/ss/test/directory", b"\x00garbage");
    let w = proxy.worker();
    assert_eq!(w.addresses(), vec![(0, A.to_owned())]);
    assert_eq!(w.request(200), (Action::Continue, Some(A.to_owned())));
    w.tick();
    assert!(proxy.counter("state_resets") >= 1);
}

/// One endpoint gated by three warm-up requests, paced at 10/s.
const PRIMED: &str = r#"{
    "endpoints": [{ "address": "10.0.0.1:80" }],
    "dispatch_cluster": "backends",
    "warmup_requests": [{ "path": "/w/0" }, { "path": "/w/1" }, { "path": "/w/2" }],
    "warmup_rate": 10
}"#;

#[test]
fn two_workers_ticking_at_once_claim_each_priming_request_and_count_the_transition_once() {
    let proxy = Proxy::new(PRIMED);
    let (a, b) = (proxy.worker(), proxy.worker());
    // The endpoint's state exists: a's first tick created it (and sent a readiness probe,
    // which stays unanswered here).
    a.tick();
    b.tick();
    assert_eq!(a.new_callouts().len(), 1);
    // New and gated, the only endpoint: both workers route by configured weight (panic), and
    // both see it answer.
    assert_eq!(a.request(200), (Action::Continue, Some(A.to_owned())));
    assert_eq!(b.request(200), (Action::Continue, Some(A.to_owned())));

    // Worker b's whole tick lands between worker a's read and a's write.
    let raced = Rc::new(Cell::new(false));
    let (b2, raced2) = (b.clone(), Rc::clone(&raced));
    proxy.store.after_next_read(&ep_key("0"), move || {
        b2.tick();
        raced2.set(true);
    });
    a.tick();
    assert!(raced.get());
    assert_eq!(proxy.ramp("0").phase, Phase::Priming);
    let ep = stat(A);
    assert_eq!(proxy.counter(&format!("{ep}.priming_started")), 1);
    assert_eq!(proxy.gauge(&format!("{ep}.phase")), 1);
    // Worker a's outcome is in too: its retry published on top of b's write.
    assert_eq!(proxy.ramp("0").recent.totals(proxy.now()).requests, 2);
    // The first warm-up request went out once, from b; a, retrying on b's state, claimed none.
    let sent_b = b.new_callouts();
    assert!(a.new_callouts().is_empty());
    assert_eq!(sent_b.len(), 1);
    assert_eq!(header(&sent_b[0], ":path"), Some("/w/0"));

    // Paced at 10/s across both workers: one request every 100 ms, whoever ticks.
    let mut paths = vec!["/w/0".to_owned()];
    for (first, second) in [(&a, &b), (&b, &a)] {
        proxy.advance_ms(100);
        first.tick();
        second.tick();
        assert!(second.new_callouts().is_empty());
        let sent = first.new_callouts();
        assert_eq!(sent.len(), 1);
        paths.push(header(&sent[0], ":path").unwrap().to_owned());
    }
    assert_eq!(paths, ["/w/0", "/w/1", "/w/2"]);
    proxy.advance_ms(1_000);
    a.tick();
    b.tick();
    assert!(a.new_callouts().is_empty() && b.new_callouts().is_empty());
}

/// The same race on the tick that *creates* an endpoint's state. Both workers read the key as
/// missing; worker b creates it between worker a's read and write. With a create written under
/// token 0 (unconditional) both first writes "won": the transition was counted twice, the phase
/// gauge moved twice and the first warm-up request was claimed by both. A create now fails on a
/// key another worker made (`shared::cas_update_on`), so a starts again from b's state.
#[test]
fn two_workers_creating_an_endpoints_state_at_once_still_count_its_first_transition_once() {
    let proxy = Proxy::new(PRIMED);
    let (a, b) = (proxy.worker(), proxy.worker());
    assert_eq!(a.request(200).0, Action::Continue);
    assert_eq!(b.request(200).0, Action::Continue);
    let b2 = b.clone();
    proxy.store.after_next_read(&ep_key("0"), move || b2.tick());
    a.tick();
    let ep = stat(A);
    assert_eq!(proxy.counter(&format!("{ep}.priming_started")), 1);
    assert_eq!(proxy.gauge(&format!("{ep}.phase")), 1);
    assert_eq!(a.new_callouts().len() + b.new_callouts().len(), 1);
}

#[test]
fn the_warmup_rate_cap_holds_across_workers_when_one_takes_the_last_slot_mid_update() {
    // 20/s: a burst of 2, then one every 50 ms, for all workers together.
    let proxy = Proxy::new(&ONE.replace(
        r#""unhealthy_after": 2"#,
        r#""unhealthy_after": 2, "max_warmup_rps": 20"#,
    ));
    let (a, b) = (proxy.worker(), proxy.worker());
    assert_eq!(a.request(200).0, Action::Continue);

    // Worker b takes the last slot between worker a's read of the cap and a's write.
    let cap_key = "rpack/ss/test/cap/0";
    let b_got = Rc::new(Cell::new(None));
    let (b2, got) = (b.clone(), Rc::clone(&b_got));
    proxy.store.after_next_read(cap_key, move || {
        got.set(Some(b2.request(200).0));
    });
    let (action, to) = a.request(200);
    assert_eq!(b_got.get(), Some(Action::Continue));
    assert_eq!((action, to.as_deref()), (Action::Pause, None));
    let reply = a.last_reply();
    assert_eq!(reply.status, 503);
    assert_eq!(
        reply.header(DECISION_HEADER),
        Some("shed; reason=warmup_rate_cap")
    );
    assert!(reply
        .body_text()
        .starts_with(r#"{"type":"urn:resilience-pack:problem:no-ready-endpoint""#));
    assert_eq!(b.request(200).0, Action::Pause);

    proxy.advance_ms(50);
    assert_eq!(b.request(200).0, Action::Continue);
    assert_eq!(a.request(200).0, Action::Pause);
    a.tick();
    b.tick();
    assert_eq!(proxy.counter(&format!("{}.rate_capped", stat(A))), 3);
    assert_eq!(proxy.counter("no_ready_endpoint"), 3);
}

#[test]
fn a_shared_data_error_fails_open_is_counted_and_loses_no_outcome() {
    let proxy = Proxy::new(&ONE.replace(
        r#""unhealthy_after": 2"#,
        r#""unhealthy_after": 2, "max_warmup_rps": 1"#,
    ));
    let w = proxy.worker();
    w.tick();
    proxy.store.fail_shared_data(Some(HostStatus(10)));

    // The cap cannot be asked: every request passes rather than being refused.
    for _ in 0..5 {
        assert_eq!(w.request(200), (Action::Continue, Some(A.to_owned())));
    }
    // A worker that starts now cannot read the ramp: it starts from a new one.
    let late = proxy.worker();
    assert_eq!(late.view(0).phase, Phase::New);
    w.tick();
    late.tick();
    assert!(proxy.counter("shared_data_errors") >= 3);
    assert!(proxy.store.get(&ep_key("0")).is_some());
    assert_eq!(proxy.ramp("0").phase, Phase::New);

    // Healed: the batch kept through the failed tick is published whole.
    proxy.store.fail_shared_data(None);
    w.tick();
    let ramp = proxy.ramp("0");
    assert_eq!(ramp.phase, Phase::Ramping);
    assert_eq!(ramp.recent.totals(proxy.now()).requests, 5);
    late.tick();
    assert_eq!(late.view(0), w.view(0));
}

#[test]
fn a_routed_request_makes_five_host_calls_and_none_to_shared_data() {
    let proxy = Proxy::new(ONE);
    proxy.seed("0", A, |st| st.phase = Phase::Warm);
    let w = proxy.worker();
    w.request(200);
    let (shared, calls) = (proxy.store.shared_calls(), w.host.calls());
    assert_eq!(w.request(200), (Action::Continue, Some(A.to_owned())));
    // The client's destination header, the clock and the header write at the request; the
    // clock and `:status` at the response; nothing more at the end of the stream (the outcome
    // is recorded at the first byte's time).
    assert_eq!(w.host.calls() - calls, 5);
    assert_eq!(proxy.store.shared_calls(), shared);
}

/// Three cells of two warm endpoints each: 10.0.0.1-2 in az1, 3-4 in az2, 5-6 in az3.
fn six_in_three_cells(extra: &str) -> Proxy {
    let mut endpoints = Vec::new();
    for i in 1..=6 {
        endpoints.push(format!(
            r#"{{"address": "10.0.0.{i}:80", "cell": "az{}"}}"#,
            (i + 1) / 2
        ));
    }
    let proxy = Proxy::new(&format!(
        r#"{{ "endpoints": [{}], "slow_start_window": "10s" {extra} }}"#,
        endpoints.join(", ")
    ));
    for i in 1..=6 {
        proxy.seed(&(i - 1).to_string(), &format!("10.0.0.{i}:80"), |st| {
            st.phase = Phase::Warm
        });
    }
    proxy
}

/// The cell an address of [`six_in_three_cells`] is in.
fn cell_of(address: &str) -> &'static str {
    match address {
        "10.0.0.1:80" | "10.0.0.2:80" => "az1",
        "10.0.0.3:80" | "10.0.0.4:80" => "az2",
        _ => "az3",
    }
}

/// The share of `n` requests through `w` that went to `cell`.
fn cell_share(w: &TestWorker, cell: &str, n: u32) -> f64 {
    let mut hits = 0;
    for _ in 0..n {
        let (action, to) = w.request(200);
        assert_eq!(action, Action::Continue);
        if cell_of(to.as_deref().unwrap()) == cell {
            hits += 1;
        }
    }
    f64::from(hits) / f64::from(n)
}

/// The cell document a discovery fetch answers with, listing the six endpoints.
fn cells_document(cells: &str) -> String {
    let endpoints: Vec<String> = (1..=6)
        .map(|i| {
            format!(
                r#"{{"address": "10.0.0.{i}:80", "cell": "az{}"}}"#,
                (i + 1) / 2
            )
        })
        .collect();
    format!(
        r#"{{"endpoints": [{}], "cells": {{ {cells} }}}}"#,
        endpoints.join(", ")
    )
}

const DISCOVERY_1S: &str =
    r#", "discovery": { "cluster": "registry", "path": "/endpoints", "interval": "1s" }"#;

#[test]
fn a_cell_drained_through_the_document_moves_at_the_drain_rate_on_every_worker_alike() {
    let proxy = six_in_three_cells(&format!(r#"{DISCOVERY_1S}, "drain_rate": 50"#));
    let (a, b) = (proxy.worker(), proxy.worker());
    a.tick();
    b.tick();
    let share = cell_share(&b, "az1", 3_000);
    assert!((share - 1.0 / 3.0).abs() < 0.04, "normal share {share}");
    let fetch = a.new_callouts();
    a.answer(
        &fetch[0],
        Some(200),
        cells_document(r#""az1": {"drain_percent": 100}"#).as_bytes(),
    );
    // The first step starts the drain's clock; after one second at 50 points a second, half.
    a.tick();
    b.tick();
    proxy.advance_ms(1_000);
    b.tick();
    a.tick();
    assert_eq!(proxy.gauge("cell.az1.commanded_drain"), 100_000);
    assert_eq!(proxy.gauge("cell.az1.effective_drain"), 50_000);
    for w in [&a, &b] {
        let share = cell_share(w, "az1", 6_000);
        assert!(
            (share - 1.0 / 6.0).abs() < 0.025,
            "worker {}: half drained: {share}",
            w.host.id()
        );
    }
    proxy.advance_ms(1_000);
    a.tick();
    b.tick();
    assert_eq!(proxy.gauge("cell.az1.effective_drain"), 100_000);
    for w in [&a, &b] {
        assert_eq!(cell_share(w, "az1", 2_000), 0.0);
    }
    // The response names the cell that served it; the cells' request counters add up.
    let mut stream = b.start("/", &[]);
    let cell = cell_of(stream.destination.as_deref().unwrap());
    assert_eq!(stream.respond(200), Some(format!("routed; cell={cell}")));
    stream.http.on_log();
    a.tick();
    b.tick();
    let served: u64 = ["az1", "az2", "az3"]
        .iter()
        .map(|c| proxy.counter(&format!("cell.{c}.requests")))
        .sum();
    assert_eq!(served, 3_000 + 12_000 + 4_000 + 1);
    // Undrained to a value that leaves it 1% of all traffic (3% of its normal share).
    proxy.advance_ms(1_000);
    a.tick();
    a.answer(
        &a.new_callouts()[0],
        Some(200),
        cells_document(r#""az1": {"drain_percent": 97}"#).as_bytes(),
    );
    for _ in 0..3 {
        a.tick();
        b.tick();
        proxy.advance_ms(100);
    }
    assert_eq!(proxy.gauge("cell.az1.effective_drain"), 97_000);
    let share = cell_share(&b, "az1", 20_000);
    assert!((share - 0.01).abs() < 0.003, "one percent: {share}");
}

#[test]
fn the_governor_refuses_a_second_drain_counts_it_once_and_keeps_the_first() {
    let proxy = six_in_three_cells(&format!(
        r#"{DISCOVERY_1S}, "drain_rate": 100000, "max_drained_cells": 1"#
    ));
    let (a, b) = (proxy.worker(), proxy.worker());
    a.tick();
    a.answer(
        &a.new_callouts()[0],
        Some(200),
        cells_document(r#""az1": {"drain_percent": 100}"#).as_bytes(),
    );
    a.tick();
    proxy.advance_ms(1_000);
    a.tick();
    a.answer(
        &a.new_callouts()[0],
        Some(200),
        cells_document(r#""az1": {"drain_percent": 100}, "az2": {"drain_percent": 100}"#)
            .as_bytes(),
    );
    for _ in 0..3 {
        proxy.advance_ms(100);
        b.tick();
        a.tick();
    }
    assert_eq!(proxy.counter("cell.az2.drain_refused"), 1);
    assert_eq!(proxy.counter("cell.az1.drain_refused"), 0);
    assert_eq!(proxy.gauge("cell.az2.commanded_drain"), 0);
    assert_eq!(proxy.gauge("cell.az1.effective_drain"), 100_000);
    assert_eq!(cell_share(&b, "az1", 1_000), 0.0);
    let az2 = cell_share(&b, "az2", 4_000);
    assert!((az2 - 0.5).abs() < 0.04, "{az2}");
}

#[test]
fn when_every_cell_is_drained_traffic_spreads_as_if_none_were_and_is_counted() {
    let proxy = six_in_three_cells(
        r#", "max_drained_cells": 3,
            "cells": {"az1": {"drain_percent": 100}, "az2": {"drain_percent": 100}, "az3": {"drain_percent": 100}}"#,
    );
    let w = proxy.worker();
    w.tick();
    let share = cell_share(&w, "az2", 3_000);
    assert!((share - 1.0 / 3.0).abs() < 0.04, "{share}");
    w.tick();
    assert_eq!(proxy.counter("cells_fail_open"), 3_000);
}

#[test]
fn a_retry_goes_to_another_cell_first_while_its_cell_is_draining() {
    let proxy = six_in_three_cells(
        r#", "destination_header": "x-pick", "alternates": 2,
            "cells": {"az1": {"drain_percent": 50}}"#,
    );
    let w = proxy.worker();
    let mut from_az1 = 0;
    for _ in 0..500 {
        let stream = w.start("/", &[]);
        let named = w
            .host
            .header(MapType::HttpRequestHeaders, "x-pick")
            .unwrap();
        let named: Vec<&str> = named.split(',').collect();
        if cell_of(named[0]) == "az1" {
            from_az1 += 1;
            assert!(named[1..].iter().all(|a| cell_of(a) != "az1"), "{named:?}");
        }
        stream.finish(200);
    }
    assert!(from_az1 > 50, "{from_az1}");
    // The response names the cell of the endpoint that served it: the alternate's after a retry.
    let mut stream = w.start("/", &[]);
    let named = w
        .host
        .header(MapType::HttpRequestHeaders, "x-pick")
        .unwrap();
    let second = named.split(',').nth(1).unwrap().to_owned();
    w.host
        .set_property(&["upstream", "address"], second.as_bytes());
    assert_eq!(
        stream.respond(200),
        Some(format!("routed; cell={}", cell_of(&second)))
    );
    stream.http.on_log();
}

#[test]
fn garbage_in_the_cell_table_is_a_reset_counted_never_a_panic() {
    let proxy = six_in_three_cells(r#", "cells": {"az3": {"drain_percent": 100}}"#);
    proxy
        .store
        .put("rpack/ss/test/cells", &[0x59, 1, 0xff, 0xff]);
    let w = proxy.worker();
    w.tick();
    assert!(proxy.counter("state_resets") >= 1);
    assert_eq!(cell_share(&w, "az3", 1_000), 0.0);
}

#[test]
fn a_cell_undrained_after_a_long_full_drain_ramps_its_endpoints_again() {
    let proxy = six_in_three_cells(&format!(
        r#"{DISCOVERY_1S}, "drain_rate": 100000, "cold_after": "10s""#
    ));
    let w = proxy.worker();
    w.tick();
    w.answer(
        &w.new_callouts()[0],
        Some(200),
        cells_document(r#""az1": {"drain_percent": 100}"#).as_bytes(),
    );
    w.tick();
    proxy.advance_ms(100);
    w.tick();
    proxy.advance_ms(11_000);
    w.tick();
    w.answer(
        &w.new_callouts()[0],
        Some(200),
        cells_document("").as_bytes(),
    );
    w.tick();
    proxy.advance_ms(100);
    w.tick();
    proxy.advance_ms(100);
    w.tick();
    assert_eq!(w.view(0).phase, Phase::Ramping);
    assert_eq!(w.view(2).phase, Phase::Warm);
    assert_eq!(proxy.counter(&format!("{}.cold_restarts", stat(A))), 1);
}

#[test]
fn endpoints_without_a_cell_form_one_undrainable_cell_that_takes_its_part_of_a_drain() {
    let proxy = Proxy::new(
        r#"{ "endpoints": [{"address": "10.0.0.1:80", "cell": "az1"}, {"address": "10.0.0.2:80", "cell": "az2"},
                           {"address": "10.0.0.3:80"}],
             "cells": {"az1": {"drain_percent": 100}, "az2": {"drain_percent": 100}} }"#,
    );
    for (i, a) in [A, B, C].iter().enumerate() {
        proxy.seed(&i.to_string(), a, |st| st.phase = Phase::Warm);
    }
    let w = proxy.worker();
    w.tick();
    // All cells but one may drain by default, and the implicit cell is the one left.
    for _ in 0..300 {
        assert_eq!(w.request(200).1.as_deref(), Some(C));
    }
    w.tick();
    assert_eq!(proxy.counter("no_cell.requests"), 300);
    assert_eq!(proxy.counter("cells_fail_open"), 0);
    assert_eq!(proxy.counter("cell.az1.drain_refused"), 0);
}
