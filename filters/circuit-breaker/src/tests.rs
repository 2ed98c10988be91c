//! The breaker's cross-worker glue on a fake proxy: several workers, one shared store.
//!
//! Why here and not only in the Envoy tests: Envoy decides which worker runs when, so the
//! interleavings that could break the breaker's promises (one state per key, exactly
//! `half_open_probes` probes across workers, at most `max_open_percent` open) happen there rarely
//! and never on demand. Here every worker is a [`FakeHost`] on one [`FakeStore`], streams go
//! through the real [`BreakerHttp`] callbacks, and a test can run one worker *between* another's
//! read and its conditional write ([`FakeStore::after_next_read`]).
//!
//! Every test uses a routeless configuration: a request is keyed by its Envoy route name, so the
//! breaker of route `orders` lives under `rpack/cb/test/orders` and counts under
//! `circuit_breaker.orders.*`.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use proxy_wasm::traits::HttpContext;
use proxy_wasm::types::{Action, MapType};
use resilience_core::breaker::{SharedBreaker, State, View};
use resilience_core::governor::{self, OpenSet};
use resilience_host::abi::HostStatus;
use resilience_host::fake::{FakeHost, FakeStore, LocalReply};

use crate::config::{self, FilterConfig, DECISION_HEADER};
use crate::http::BreakerHttp;
use crate::worker::Worker;

/// Two failures in a row trip; open for 1 s (no jitter); one probe; a probe lease of 2 s.
const BASE: &str = r#"{
    "consecutive_failures": 2,
    "open_duration": "1s",
    "open_jitter_percent": 0,
    "half_open_probes": 1,
    "probe_timeout": "2s"
}"#;

/// One fake proxy running the breaker with one configuration.
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

    /// A new worker of this proxy (its own VM: its own cached views, deltas and stats cache).
    fn worker(&self) -> TestWorker {
        let host = self.store.worker();
        let worker = Worker::on(host.clone(), Rc::clone(&self.config), "test");
        TestWorker {
            host,
            worker: Rc::new(RefCell::new(worker)),
        }
    }

    fn advance_ms(&self, ms: u64) {
        self.store.advance_ms(ms);
    }

    /// The breaker of `route` as stored in shared data.
    fn state(&self, route: &str) -> SharedBreaker {
        let bytes = self.store.get(&shared_key(route)).unwrap();
        SharedBreaker::decode(&bytes, &self.config.routes.defaults.policy).unwrap()
    }

    /// The counter `circuit_breaker.<name>`, summed over every worker.
    fn counter(&self, name: &str) -> u64 {
        self.store.counter(&format!("circuit_breaker.{name}"))
    }

    /// The `state` gauge of `route`, summed over every worker: 0 closed, 1 open, 2 half-open when
    /// every transition was counted exactly once.
    fn state_gauge(&self, route: &str) -> i64 {
        self.store.gauge(&format!("circuit_breaker.{route}.state"))
    }
}

fn shared_key(route: &str) -> String {
    format!("rpack/cb/test/{route}")
}

#[derive(Clone)]
struct TestWorker {
    host: FakeHost,
    worker: Rc<RefCell<Worker<FakeHost>>>,
}

impl TestWorker {
    /// A request for `route` through the request-headers callback; the response is still to come.
    fn start(&self, route: &str) -> Stream {
        self.host.set_map(
            MapType::HttpRequestHeaders,
            &[(":method", "GET"), (":path", "/"), (":authority", "svc")],
        );
        self.host.remove_map(MapType::HttpResponseHeaders);
        self.host
            .set_property(&["xds", "route_name"], route.as_bytes());
        let mut http = BreakerHttp::on(self.host.clone(), Some(Rc::clone(&self.worker)));
        let action = http.on_http_request_headers(3, true);
        Stream {
            http,
            host: self.host.clone(),
            action,
        }
    }

    /// A whole request for `route` answered with `status` (unless the breaker rejected it).
    fn request(&self, route: &str, status: u16) -> Action {
        let stream = self.start(route);
        let action = stream.action;
        stream.finish(status);
        action
    }

    /// The worker's timer fired.
    fn tick(&self) {
        let now = self.host.store().now_ms();
        self.worker.borrow_mut().tick(now);
    }

    fn view(&self, route: &str) -> View {
        self.worker.borrow().entries.by_key(route).unwrap().view
    }

    fn last_reply(&self) -> LocalReply {
        self.host.replies().pop().unwrap()
    }
}

/// One request between its request headers and its end.
struct Stream {
    http: BreakerHttp<FakeHost>,
    host: FakeHost,
    action: Action,
}

impl Stream {
    /// The upstream answers `status` (if the request reached it) and the stream ends.
    fn finish(mut self, status: u16) {
        if self.action == Action::Continue {
            let status = status.to_string();
            self.host
                .set_map(MapType::HttpResponseHeaders, &[(":status", &status)]);
            self.http.on_http_response_headers(1, true);
        }
        self.http.on_log();
    }
}

/// Trips `route` from worker `w`: two failures in a row.
fn trip(w: &TestWorker, route: &str) {
    assert_eq!(w.request(route, 503), Action::Continue);
    assert_eq!(w.request(route, 503), Action::Continue);
    assert_eq!(w.view(route).state, State::Open);
}

#[test]
fn two_workers_that_trip_at_once_leave_one_open_state_one_generation_and_one_counted_trip() {
    let proxy = Proxy::new(BASE);
    let (a, b) = (proxy.worker(), proxy.worker());
    assert_eq!(a.request("orders", 503), Action::Continue);
    // Worker a's second failure; worker b's first lands between a's read and a's write. Each
    // saw one failure before its own, so each would trip on what it read.
    let stream = a.start("orders");
    let raced = Rc::new(Cell::new(false));
    let (b2, raced2) = (b.clone(), Rc::clone(&raced));
    proxy.store.after_next_read(&shared_key("orders"), move || {
        assert_eq!(b2.request("orders", 503), Action::Continue);
        raced2.set(true);
    });
    stream.finish(503);
    assert!(raced.get());

    let state = proxy.state("orders");
    assert_eq!((state.state, state.generation), (State::Open, 1));
    assert_eq!(a.view("orders"), b.view("orders"));
    assert_eq!(proxy.counter("orders.trips_consecutive_failures"), 1);
    assert_eq!(proxy.state_gauge("orders"), 1);
}

#[test]
fn exactly_half_open_probes_requests_pass_across_all_workers_and_their_successes_close_it() {
    let proxy = Proxy::new(&BASE.replace(r#""half_open_probes": 1"#, r#""half_open_probes": 2"#));
    let workers: Vec<TestWorker> = (0..3).map(|_| proxy.worker()).collect();
    for w in &workers {
        w.request("orders", 200);
    }
    trip(&workers[0], "orders");
    workers.iter().for_each(TestWorker::tick);
    proxy.advance_ms(1_000);

    let streams: Vec<Stream> = (0..6).map(|i| workers[i % 3].start("orders")).collect();
    let admitted = streams
        .iter()
        .filter(|s| s.action == Action::Continue)
        .count();
    assert_eq!(admitted, 2);
    assert_eq!(proxy.state_gauge("orders"), 2);
    let refused = workers[2].last_reply();
    assert_eq!(refused.status, 503);
    assert_eq!(
        refused.header(DECISION_HEADER),
        Some("half_open; reason=consecutive_failures; probes=full")
    );

    for s in streams {
        s.finish(200);
    }
    assert_eq!(proxy.state("orders").state, State::Closed);
    assert_eq!(proxy.state_gauge("orders"), 0);
    workers.iter().for_each(TestWorker::tick);
    assert_eq!(proxy.counter("orders.probes_admitted"), 2);
    assert_eq!(proxy.counter("orders.probes_succeeded"), 2);
    assert!(workers
        .iter()
        .all(|w| w.request("orders", 200) == Action::Continue));
}

#[test]
fn two_workers_racing_for_the_last_probe_permit_never_both_get_it() {
    let proxy = Proxy::new(BASE);
    let (tripper, a, b) = (proxy.worker(), proxy.worker(), proxy.worker());
    for w in [&a, &b] {
        w.request("orders", 200);
    }
    trip(&tripper, "orders");
    for w in [&tripper, &a, &b] {
        w.tick();
    }
    proxy.advance_ms(1_000);

    // Worker b moves the breaker to half-open and takes the only permit between worker a's read
    // and worker a's write.
    let b_stream: Rc<RefCell<Option<Stream>>> = Rc::default();
    let (b2, slot) = (b.clone(), Rc::clone(&b_stream));
    proxy.store.after_next_read(&shared_key("orders"), move || {
        *slot.borrow_mut() = Some(b2.start("orders"));
    });
    let a_stream = a.start("orders");
    let b_stream = b_stream.borrow_mut().take().unwrap();

    assert_eq!(b_stream.action, Action::Continue);
    assert_eq!(a_stream.action, Action::Pause);
    assert_eq!(a.last_reply().status, 503);
    let state = proxy.state("orders");
    assert_eq!((state.state, state.probes_issued), (State::HalfOpen, 1));
    // Open -> half-open was counted once, by the worker whose write made it.
    assert_eq!(proxy.state_gauge("orders"), 2);
}

#[test]
fn a_worker_that_reads_garbage_or_an_older_encoding_starts_afresh_counts_it_and_lets_traffic_pass()
{
    let proxy = Proxy::new(BASE);
    let policy = &proxy.config.routes.defaults.policy;
    let valid = SharedBreaker::new(policy).encode();
    let mut older = valid.clone();
    older[1] = 1;
    let mut truncated = valid.clone();
    truncated.truncate(valid.len() / 2);
    let mut trailing = valid.clone();
    trailing.push(0);
    let mut bad_state = valid.clone();
    bad_state[2] = 9;
    let hostile: Vec<Vec<u8>> = vec![
        b"\xff".to_vec(),
        b"not a breaker at all".to_vec(),
        older,
        truncated,
        trailing,
        bad_state,
        vec![0xCB; 4096],
    ];
    for (i, bytes) in hostile.iter().enumerate() {
        let proxy = Proxy::new(BASE);
        let w = proxy.worker();
        proxy.store.put(&shared_key("orders"), bytes);
        assert_eq!(w.request("orders", 200), Action::Continue, "value {i}");
        w.tick();
        assert!(proxy.counter("state_resets") >= 1, "value {i}");
        // The tick wrote a valid state back, with the outcome it had.
        let state = proxy.state("orders");
        assert_eq!(state.totals(proxy.store.now_ms()).total, 1, "value {i}");
        let resets = proxy.counter("state_resets");
        w.tick();
        assert_eq!(proxy.counter("state_resets"), resets, "value {i}");
    }
}

#[test]
fn a_publish_that_loses_a_race_reads_again_and_loses_no_outcome() {
    let proxy = Proxy::new(BASE);
    let w = proxy.worker();
    w.request("orders", 200);
    w.tick();
    w.request("orders", 200);
    w.request("orders", 503);
    w.request("orders", 200);
    let (_, writes) = proxy.store.shared_calls();
    proxy.store.contend(&shared_key("orders"), 2);
    w.tick();

    // Two writes lost to the other writer, the third won.
    assert_eq!(proxy.store.shared_calls().1 - writes, 3);
    let totals = proxy.state("orders").totals(proxy.store.now_ms());
    assert_eq!((totals.total, totals.failures), (4, 1));
    assert_eq!(proxy.counter("cas_contended"), 0);
}

#[test]
fn a_publish_that_loses_every_attempt_is_counted_and_its_outcomes_wait_for_the_next_tick() {
    let proxy = Proxy::new(BASE);
    let w = proxy.worker();
    w.request("orders", 200);
    w.tick();
    w.request("orders", 200);
    w.request("orders", 200);
    proxy.store.contend(&shared_key("orders"), 8);
    w.tick();
    assert_eq!(proxy.counter("cas_contended"), 1);
    assert_eq!(proxy.state("orders").totals(proxy.store.now_ms()).total, 1);

    w.tick();
    assert_eq!(proxy.state("orders").totals(proxy.store.now_ms()).total, 3);
    assert_eq!(proxy.counter("cas_contended"), 1);
}

#[test]
fn the_governor_caps_open_breakers_across_workers_and_a_held_trip_fires_once_a_place_frees() {
    let proxy = Proxy::new(
        r#"{
            "consecutive_failures": 2,
            "open_duration": "10s",
            "open_jitter_percent": 0,
            "half_open_probes": 1,
            "max_open_percent": 50
        }"#,
    );
    let (one, two) = (proxy.worker(), proxy.worker());
    for route in ["a", "b"] {
        one.request(route, 200);
    }
    for route in ["c", "d"] {
        two.request(route, 200);
    }
    // Four keys registered: at most two open at once.
    trip(&one, "a");
    trip(&two, "c");
    for (w, route) in [(&one, "b"), (&two, "d")] {
        w.request(route, 503);
        w.request(route, 503);
        assert_eq!(w.view(route).state, State::Closed, "{route}");
    }
    let open = |proxy: &Proxy| {
        ["a", "b", "c", "d"]
            .into_iter()
            .filter(|r| proxy.state(r).state != State::Closed)
            .collect::<Vec<_>>()
    };
    assert_eq!(open(&proxy), vec!["a", "c"]);
    let set = OpenSet::decode(&proxy.store.get("rpack/cb/test/#open").unwrap()).unwrap();
    assert_eq!(set.places.len(), 2);
    one.tick();
    two.tick();
    assert_eq!(proxy.counter("b.trips_held"), 1);
    assert_eq!(proxy.counter("d.trips_held"), 1);

    // Breaker a recovers and gives its place back; d's next failure takes it.
    proxy.advance_ms(10_000);
    assert_eq!(one.request("a", 200), Action::Continue);
    assert_eq!(proxy.state("a").state, State::Closed);
    two.tick();
    two.request("d", 503);
    assert_eq!(open(&proxy), vec!["c", "d"]);
    let set = OpenSet::decode(&proxy.store.get("rpack/cb/test/#open").unwrap()).unwrap();
    let mut keys: Vec<u64> = set.places.iter().map(|p| p.key).collect();
    keys.sort_unstable();
    let mut expected = vec![governor::key_hash("c"), governor::key_hash("d")];
    expected.sort_unstable();
    assert_eq!(keys, expected);
}

#[test]
fn a_probe_whose_stream_never_ends_gives_its_permit_back_after_probe_timeout() {
    let proxy = Proxy::new(BASE);
    let (a, b) = (proxy.worker(), proxy.worker());
    b.request("orders", 200);
    trip(&a, "orders");
    a.tick();
    b.tick();
    proxy.advance_ms(1_000);

    let hung = a.start("orders");
    assert_eq!(hung.action, Action::Continue);
    proxy.advance_ms(1_999);
    assert_eq!(b.request("orders", 200), Action::Pause);
    proxy.advance_ms(1);
    // The lease ran out: b's request is the probe now, and its success closes the breaker.
    assert_eq!(b.request("orders", 200), Action::Continue);
    let closed = proxy.state("orders");
    assert_eq!(closed.state, State::Closed);

    // The hung probe ends at last: its report is for a generation gone by, and changes nothing.
    hung.finish(503);
    assert_eq!(proxy.state("orders"), closed);
    assert_eq!(proxy.state_gauge("orders"), 0);
}

#[test]
fn a_rejection_is_a_503_problem_with_the_remaining_open_time_as_retry_after() {
    let proxy = Proxy::new(&BASE.replace(r#""open_duration": "1s""#, r#""open_duration": "5s""#));
    let w = proxy.worker();
    trip(&w, "orders");
    proxy.advance_ms(2_500);
    assert_eq!(w.request("orders", 200), Action::Pause);

    let reply = w.last_reply();
    assert_eq!(reply.status, 503);
    assert_eq!(reply.header("retry-after"), Some("3"));
    assert_eq!(
        reply.header("content-type"),
        Some("application/problem+json")
    );
    assert_eq!(
        reply.header(DECISION_HEADER),
        Some("open; reason=consecutive_failures")
    );
    let body = reply.body_text();
    assert!(
        body.contains("circuit-open") && body.contains("orders"),
        "{body}"
    );
    w.tick();
    assert_eq!(proxy.counter("orders.rejected"), 1);
}

#[test]
fn a_grpc_call_on_an_open_breaker_gets_unavailable_with_the_open_time_as_pushback() {
    let proxy = Proxy::new(&BASE.replace(r#""open_duration": "1s""#, r#""open_duration": "5s""#));
    let w = proxy.worker();
    trip(&w, "orders");
    proxy.advance_ms(2_500);
    w.host.set_map(
        MapType::HttpRequestHeaders,
        &[
            (":method", "POST"),
            (":path", "/shop.Orders/Get"),
            ("content-type", "application/grpc"),
        ],
    );
    w.host.set_property(&["xds", "route_name"], b"orders");
    let mut http = BreakerHttp::on(w.host.clone(), Some(Rc::clone(&w.worker)));
    assert_eq!(http.on_http_request_headers(3, false), Action::Pause);

    let reply = w.last_reply();
    assert_eq!((reply.status, reply.grpc_status), (200, Some(14)));
    assert!(reply.body.is_empty(), "trailers-only");
    assert_eq!(reply.header("content-type"), Some("application/grpc"));
    assert_eq!(reply.header("grpc-status"), Some("14"));
    assert_eq!(reply.header("grpc-retry-pushback-ms"), Some("3000"));
    assert_eq!(reply.header("retry-after"), Some("3"));
    assert_eq!(
        reply.header(DECISION_HEADER),
        Some("open; reason=consecutive_failures")
    );
    assert!(reply
        .header("grpc-message")
        .is_some_and(|m| m.starts_with("Requests for orders are rejected") && !m.contains('{')));
}

#[test]
fn a_healthy_request_on_a_closed_breaker_makes_four_host_calls_and_none_to_shared_data() {
    let proxy = Proxy::new(BASE);
    let w = proxy.worker();
    w.request("orders", 200);
    let (shared, calls) = (proxy.store.shared_calls(), w.host.calls());
    assert_eq!(w.request("orders", 200), Action::Continue);
    // The route name (the key), `:status` and `grpc-status` of the response, and the clock when
    // the response headers arrive (the outcome's time; the end of the stream reads nothing).
    assert_eq!(w.host.calls() - calls, 4);
    assert_eq!(proxy.store.shared_calls(), shared);
}

#[test]
fn a_shared_data_error_lets_requests_through_and_is_counted() {
    let proxy = Proxy::new(BASE);
    let w = proxy.worker();
    trip(&w, "orders");
    proxy.advance_ms(1_000);
    proxy.store.fail_shared_data(Some(HostStatus(10)));

    // The probe permit cannot be asked for: the request passes rather than being refused.
    assert_eq!(w.request("orders", 200), Action::Continue);
    // A new key cannot be registered: it passes unguarded.
    assert_eq!(w.request("payments", 503), Action::Continue);
    w.tick();
    assert!(proxy.counter("shared_data_errors") >= 2);

    proxy.store.fail_shared_data(None);
    assert_eq!(w.request("orders", 200), Action::Continue);
    assert_eq!(proxy.state("orders").state, State::Closed);
}

#[test]
fn a_worker_learns_of_another_workers_trip_by_its_next_tick() {
    let proxy = Proxy::new(&BASE.replace(r#""open_duration": "1s""#, r#""open_duration": "5s""#));
    let (a, b) = (proxy.worker(), proxy.worker());
    b.request("orders", 200);
    trip(&a, "orders");

    // Worker b's cached view is one tick behind: its healthy path reads no shared data.
    assert_eq!(b.request("orders", 200), Action::Continue);
    b.tick();
    assert_eq!(b.view("orders"), a.view("orders"));
    assert_eq!(b.request("orders", 200), Action::Pause);
    // The outcome b recorded under the old generation was dropped, not merged into the new one.
    assert_eq!(proxy.state("orders").totals(proxy.store.now_ms()).total, 0);
}

/// [`BASE`] open for 10 s, with an active probe every 250 ms through cluster `health`.
fn with_active_probe() -> String {
    BASE.replace(r#""open_duration": "1s""#, r#""open_duration": "10s""#)
        .replace(
            r#""half_open_probes": 1,"#,
            r#""half_open_probes": 1, "active_probe": {"cluster": "health", "path": "/healthz", "interval": "250ms"},"#,
        )
}

/// Answers worker `w`'s probe `token` with `status` (`None`: the callout failed).
fn answer(w: &TestWorker, token: u32, status: Option<u16>) {
    match status {
        Some(s) => w.host.set_map(
            MapType::HttpCallResponseHeaders,
            &[(":status", &s.to_string())],
        ),
        None => w.host.set_map(MapType::HttpCallResponseHeaders, &[]),
    }
    let now = w.host.store().now_ms();
    assert!(w.worker.borrow_mut().active_probe_answered(token, now));
}

#[test]
fn an_open_breaker_sends_one_active_probe_per_interval_from_all_workers_together() {
    let proxy = Proxy::new(&with_active_probe());
    let (a, b) = (proxy.worker(), proxy.worker());
    assert_eq!(b.request("orders", 200), Action::Continue);
    trip(&a, "orders");
    b.tick();
    let sent = || a.host.callouts().len() + b.host.callouts().len();
    a.tick();
    b.tick();
    assert_eq!(sent(), 1, "one probe from the two workers");
    let probe = a
        .host
        .callouts()
        .into_iter()
        .chain(b.host.callouts())
        .next()
        .unwrap();
    assert_eq!(probe.cluster, "health");
    assert!(probe
        .headers
        .contains(&(":path".to_owned(), "/healthz".to_owned())));
    assert!(probe
        .headers
        .contains(&(":authority".to_owned(), "health".to_owned())));
    assert_eq!(probe.timeout_ms, 500);
    proxy.advance_ms(100);
    a.tick();
    b.tick();
    assert_eq!(sent(), 1, "not yet due");
    proxy.advance_ms(150);
    b.tick();
    a.tick();
    // Each worker keeps at most one probe out per key: the worker whose probe is still out sends
    // none, the other one takes the turn.
    assert_eq!(sent(), 2);
}

#[test]
fn a_failed_active_probe_leaves_the_breaker_open_and_a_successful_one_moves_it_to_half_open() {
    let proxy = Proxy::new(&with_active_probe());
    let (a, b) = (proxy.worker(), proxy.worker());
    trip(&a, "orders");
    a.tick();
    let token = a.host.callouts()[0].token;
    answer(&a, token, Some(503));
    assert_eq!(proxy.state("orders").state, State::Open);
    proxy.advance_ms(250);
    a.tick();
    let token = a.host.callouts()[1].token;
    answer(&a, token, None);
    assert_eq!(proxy.state("orders").state, State::Open, "a failed callout");
    proxy.advance_ms(250);
    a.tick();
    let token = a.host.callouts()[2].token;
    answer(&a, token, Some(200));
    assert_eq!(proxy.state("orders").state, State::HalfOpen);
    assert_eq!(
        proxy.state_gauge("orders"),
        2,
        "counted once, by the worker that moved it"
    );
    // Long before the open time is over, the other worker lets one probe request through.
    b.tick();
    assert_eq!(b.request("orders", 200), Action::Continue);
    assert_eq!(proxy.state("orders").state, State::Closed);
    a.tick();
    b.tick();
    assert_eq!(proxy.counter("orders.active_probes_sent"), 3);
    assert_eq!(proxy.counter("orders.active_probes_failed"), 2);
    assert_eq!(proxy.counter("orders.active_probes_succeeded"), 1);
}

#[test]
fn an_active_probe_answer_for_a_breaker_that_moved_on_changes_nothing() {
    let proxy = Proxy::new(&with_active_probe());
    let a = proxy.worker();
    trip(&a, "orders");
    a.tick();
    let token = a.host.callouts()[0].token;
    // The open time ends; the breaker waits for its probe for up to max_open_duration (60 s
    // by default), then a half-open probe closes it before the probe's answer arrives.
    proxy.advance_ms(10_000);
    assert_eq!(a.request("orders", 200), Action::Pause);
    proxy.advance_ms(60_000);
    assert_eq!(a.request("orders", 200), Action::Continue);
    assert_eq!(proxy.state("orders").state, State::Closed);
    answer(&a, token, Some(200));
    assert_eq!(proxy.state("orders").state, State::Closed);
    assert_eq!(proxy.state_gauge("orders"), 0);
}

#[test]
fn an_active_probe_is_refused_at_load_when_its_request_is_malformed() {
    let err = |probe: &str| {
        config::parse(
            BASE.replace(
                r#""half_open_probes": 1,"#,
                &format!(r#""half_open_probes": 1, "active_probe": {probe},"#),
            )
            .as_bytes(),
        )
        .err()
        .unwrap()
        .to_string()
    };
    assert!(err(r#"{"cluster": "h", "path": "healthz"}"#).starts_with("active_probe.path: "));
    assert!(err(r#"{"cluster": "", "path": "/"}"#).starts_with("active_probe.cluster: "));
    assert!(err(r#"{"cluster": "h", "path": "/", "interval": "1ms"}"#)
        .starts_with("active_probe.interval: "));
    assert!(
        err(r#"{"cluster": "h", "path": "/", "headers": {"host": "x"}}"#)
            .starts_with("active_probe.headers: ")
    );
    assert!(err(r#"{"cluster": "h", "path": "/", "method": "G T"}"#)
        .starts_with("active_probe.method: "));
    assert!(err(r#"{"cluster": "h", "path": "/", "colour": 1}"#).contains("colour"));
}

#[test]
fn with_an_active_probe_no_user_request_reaches_the_dependency_until_the_probe_saw_it_answer() {
    let proxy = Proxy::new(&with_active_probe());
    let (a, b) = (proxy.worker(), proxy.worker());
    trip(&a, "orders");
    // Tokens are per worker.
    let mut answered = std::collections::HashSet::new();
    // Long past the open time, on either worker: still rejected while probes fail.
    for _ in 0..4 {
        proxy.advance_ms(5_000);
        a.tick();
        b.tick();
        for w in [&a, &b] {
            assert_eq!(w.request("orders", 200), Action::Pause);
        }
        for (i, w) in [&a, &b].into_iter().enumerate() {
            for c in w.host.callouts() {
                if answered.insert((i, c.token)) {
                    answer(w, c.token, None);
                }
            }
        }
    }
    assert_eq!(proxy.state("orders").state, State::Open);
    // The next probe is answered: half-open, and a user's request may go.
    proxy.advance_ms(300);
    a.tick();
    let token = a
        .host
        .callouts()
        .last()
        .map(|c| c.token)
        .unwrap_or_default();
    answer(&a, token, Some(200));
    assert_eq!(proxy.state("orders").state, State::HalfOpen);
    assert_eq!(a.request("orders", 200), Action::Continue);
    assert_eq!(proxy.state("orders").state, State::Closed);
}

#[test]
fn an_active_probe_that_cannot_be_sent_leaves_the_open_timer_in_charge() {
    let proxy = Proxy::new(&with_active_probe());
    let a = proxy.worker();
    // As Envoy answers a callout to a cluster it does not know.
    a.host
        .refuse_callouts(Some(resilience_host::callout::CalloutError::BadArgument));
    trip(&a, "orders");
    a.tick();
    assert!(a.host.callouts().is_empty(), "the probe could not be sent");
    proxy.advance_ms(10_000);
    assert_eq!(
        a.request("orders", 200),
        Action::Continue,
        "half-open at the end of the open time, as without a probe"
    );
}
