//! Failure padding's cross-worker glue on a fake proxy: several workers, one shared store.
//!
//! Why here and not only in the Envoy tests: the padding's promises (at most
//! `max_padded_in_flight` responses held across all workers; a hold the client abandons gives
//! its slot back; every worker pads to the target learned from all workers' successes) depend on
//! which worker reads and writes when, which Envoy decides and never on demand. Here every worker
//! is a [`FakeHost`] on one [`FakeStore`], streams go through the real [`PaddingHttp`] callbacks,
//! and the clock moves only when a test says so, so a release "at its due time" is exact.
//!
//! Every test uses a routeless configuration: a request is keyed by its Envoy route name, so the
//! histogram of route `orders` lives under `rpack/fp/test/orders` and counts under
//! `failure_padding.orders.*`.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use proxy_wasm::traits::HttpContext;
use proxy_wasm::types::{Action, MapType, StreamType};
use resilience_core::estimator::LatencyHistogram;
use resilience_core::padding::InFlight;
use resilience_host::abi::HostStatus;
use resilience_host::fake::{FakeHost, FakeStore};

use crate::config::{self, FilterConfig, DECISION_HEADER};
use crate::http::PaddingHttp;
use crate::worker::Worker;

/// Learns from the first success, syncs every 100 ms, and holds at most two responses in all.
const BASE: &str = r#"{
    "sync_interval": "100ms",
    "min_samples": 1,
    "max_padded_in_flight": 2
}"#;

/// Like [`BASE`], but pads to 50 ms before anything was learned (and learns only after 1000
/// successes), so a test of holding needs no learning first.
const FALLBACK: &str = r#"{
    "sync_interval": "100ms",
    "min_samples": 1000,
    "fallback_target": "50ms",
    "max_padded_in_flight": 2
}"#;

/// The histogram of route `orders`.
const ORDERS: &str = "rpack/fp/test/orders";

/// The in-flight table of the instance.
const IN_FLIGHT: &str = "rpack/fp/test/#in_flight";

/// One fake proxy running failure padding with one configuration.
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

    /// A new worker of this proxy (its own VM: its own queue, batches and cached targets).
    fn worker(&self) -> TestWorker {
        let host = self.store.worker();
        let now = self.store.now_ms();
        let worker = Worker::on(host.clone(), Rc::clone(&self.config), "test", now);
        TestWorker {
            host,
            worker: Rc::new(RefCell::new(worker)),
            next_id: Rc::new(Cell::new(1)),
        }
    }

    fn advance_ms(&self, ms: u64) {
        self.store.advance_ms(ms);
    }

    /// The counter `failure_padding.<name>`, summed over every worker.
    fn counter(&self, name: &str) -> u64 {
        self.store.counter(&format!("failure_padding.{name}"))
    }

    /// Responses held across all workers, as the shared table says.
    fn held_in_table(&self) -> u64 {
        let bytes = self.store.get(IN_FLIGHT).unwrap_or_default();
        if bytes.is_empty() {
            return 0;
        }
        InFlight::decode(&bytes)
            .unwrap()
            .total(self.store.now_ms(), u64::MAX)
    }
}

#[derive(Clone)]
struct TestWorker {
    host: FakeHost,
    worker: Rc<RefCell<Worker<FakeHost>>>,
    next_id: Rc<Cell<u32>>,
}

impl TestWorker {
    /// A request for route `orders` through the request-headers callback; the response is
    /// still to come.
    fn start(&self) -> Stream {
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        self.host.open_stream(id);
        self.host.set_map(
            MapType::HttpRequestHeaders,
            &[(":method", "GET"), (":path", "/"), (":authority", "svc")],
        );
        self.host.remove_map(MapType::HttpResponseHeaders);
        self.host.set_property(&["xds", "route_name"], b"orders");
        let mut http = PaddingHttp::on(self.host.clone(), Some(Rc::clone(&self.worker)), id);
        assert_eq!(http.on_http_request_headers(3, true), Action::Continue);
        Stream {
            http,
            host: self.host.clone(),
            id,
        }
    }

    /// The worker's timer fired.
    fn tick(&self) {
        let now = self.host.store().now_ms();
        self.worker.borrow_mut().tick(now);
    }

    /// Streams this worker resumed, in order.
    fn resumed_ids(&self) -> Vec<u32> {
        self.host
            .resumed()
            .into_iter()
            .map(|(id, stream)| {
                assert_eq!(stream, StreamType::HttpResponse);
                id
            })
            .collect()
    }
}

/// One request between its request headers and its end.
struct Stream {
    http: PaddingHttp<FakeHost>,
    host: FakeHost,
    id: u32,
}

impl Stream {
    /// The upstream answers `status`: the response-headers callback's action and the decision
    /// header the response carries, if any.
    fn respond(&mut self, status: u16) -> (Action, Option<String>) {
        let status = status.to_string();
        self.host
            .set_map(MapType::HttpResponseHeaders, &[(":status", &status)]);
        let action = self.http.on_http_response_headers(1, false);
        let decision = self
            .host
            .header(MapType::HttpResponseHeaders, DECISION_HEADER);
        (action, decision)
    }

    /// The stream ends (after its response, or because the client went away).
    fn end(mut self) {
        self.http.on_log();
    }
}

/// `worker` sees one success of `orders` that took `ms`.
fn success(proxy: &Proxy, worker: &TestWorker, ms: u64) {
    let mut s = worker.start();
    proxy.advance_ms(ms);
    assert_eq!(s.respond(200), (Action::Continue, None));
    s.end();
}

#[test]
fn held_responses_across_three_workers_never_exceed_max_padded_in_flight() {
    let proxy = Proxy::new(FALLBACK);
    let workers: Vec<TestWorker> = (0..3).map(|_| proxy.worker()).collect();
    let mut streams: Vec<Stream> = (0..6).map(|i| workers[i % 3].start()).collect();
    proxy.advance_ms(5);
    let answers: Vec<(Action, Option<String>)> =
        streams.iter_mut().map(|s| s.respond(503)).collect();
    let held = answers.iter().filter(|(a, _)| *a == Action::Pause).count();
    assert_eq!(held, 2, "{answers:?}");
    for (action, header) in &answers {
        if *action == Action::Continue {
            assert_eq!(header.as_deref(), Some("skipped; reason=in_flight_cap"));
        } else {
            assert_eq!(header.as_deref(), Some("padded; ms=45; target=50"));
        }
    }
    assert_eq!(proxy.held_in_table(), 2);
    assert_eq!(proxy.store.gauge("failure_padding.in_flight"), 2);

    // Released on time, the slots come back and another worker may hold again.
    proxy.advance_ms(45);
    workers.iter().for_each(TestWorker::tick);
    assert_eq!(proxy.held_in_table(), 0);
    assert_eq!(proxy.store.gauge("failure_padding.in_flight"), 0);
    let mut again = workers[2].start();
    assert_eq!(again.respond(503).0, Action::Pause);
}

#[test]
fn a_held_failure_is_released_by_the_workers_tick_at_its_due_time_and_counted() {
    let proxy = Proxy::new(FALLBACK);
    let w = proxy.worker();
    let mut s = w.start();
    proxy.advance_ms(10);
    let (action, header) = s.respond(503);
    assert_eq!(action, Action::Pause);
    assert_eq!(header.as_deref(), Some("padded; ms=40; target=50"));
    // The timer was re-armed to fire when the hold is due, not at the next 100 ms sync.
    assert_eq!(w.host.tick_period_ms(), Some(40));

    proxy.advance_ms(39);
    w.tick();
    assert!(w.resumed_ids().is_empty(), "released a millisecond early");
    proxy.advance_ms(1);
    w.tick();
    assert_eq!(w.resumed_ids(), vec![s.id]);
    s.end();

    // Counted on the next sync, and the timer is back to the sync interval.
    proxy.advance_ms(100);
    w.tick();
    assert_eq!(proxy.counter("orders.padded"), 1);
    assert_eq!(proxy.counter("orders.padding_ms"), 40);
    assert_eq!(proxy.counter("orders.failures"), 1);
    assert_eq!(proxy.counter("orders.abandoned"), 0);
    assert_eq!(w.host.tick_period_ms(), Some(100));
}

#[test]
fn a_held_failures_body_and_trailers_stay_held_until_its_release_and_pass_after_it() {
    // Envoy calls these during a hold when allow_on_headers_stop_iteration is set.
    let proxy = Proxy::new(FALLBACK);
    let w = proxy.worker();
    let mut s = w.start();
    assert_eq!(s.respond(503).0, Action::Pause);
    assert_eq!(s.http.on_http_response_body(100, false), Action::Pause);
    assert_eq!(s.http.on_http_response_trailers(1), Action::Pause);
    proxy.advance_ms(50);
    w.tick();
    assert_eq!(w.resumed_ids(), vec![s.id]);
    assert_eq!(s.http.on_http_response_body(100, true), Action::Continue);
    // A response that was not held is never paused by its body.
    let mut ok = w.start();
    assert_eq!(ok.respond(200).0, Action::Continue);
    assert_eq!(ok.http.on_http_response_body(100, true), Action::Continue);
}

#[test]
fn a_hold_the_client_abandons_gives_its_slot_back_to_every_worker() {
    let proxy = Proxy::new(
        r#"{ "min_samples": 1000, "fallback_target": "50ms", "max_padded_in_flight": 1 }"#,
    );
    let (a, b) = (proxy.worker(), proxy.worker());
    let mut held = a.start();
    assert_eq!(held.respond(503).0, Action::Pause);
    let mut refused = b.start();
    assert_eq!(
        refused.respond(503).1.as_deref(),
        Some("skipped; reason=in_flight_cap")
    );

    // The client goes away before the hold is due: the stream ends, nothing is resumed.
    proxy.advance_ms(20);
    a.host.close_stream(held.id);
    held.end();
    assert_eq!(proxy.held_in_table(), 0);
    assert_eq!(proxy.store.gauge("failure_padding.in_flight"), 0);
    proxy.advance_ms(100);
    a.tick();
    assert!(a.resumed_ids().is_empty());

    let mut next = b.start();
    assert_eq!(next.respond(503).0, Action::Pause);
    proxy.advance_ms(1_000);
    a.tick();
    assert_eq!(proxy.counter("orders.abandoned"), 1);
    assert_eq!(proxy.counter("orders.padding_ms"), 20);
}

#[test]
fn a_worker_that_saw_no_success_pads_to_the_target_another_worker_learned() {
    let proxy = Proxy::new(BASE);
    let (learner, other) = (proxy.worker(), proxy.worker());
    // Before anything is learned, a failure on the other worker is not held.
    let mut cold = other.start();
    assert_eq!(cold.respond(503).1.as_deref(), Some("skipped; reason=cold"));
    cold.end();

    for _ in 0..5 {
        success(&proxy, &learner, 60);
    }
    proxy.advance_ms(100);
    learner.tick();
    let stored = LatencyHistogram::decode(&proxy.store.get(ORDERS).unwrap(), 1_000).unwrap();
    assert_eq!(stored.total_seen(), 5);

    // The other worker re-reads the shared histogram on its sync and pads to it.
    other.tick();
    let mut s = other.start();
    proxy.advance_ms(10);
    let (action, header) = s.respond(503);
    assert_eq!(action, Action::Pause);
    let header = header.unwrap();
    assert!(header.starts_with("padded; ms="), "{header}");
    let target: u64 = header.rsplit("target=").next().unwrap().parse().unwrap();
    assert!((55..=65).contains(&target), "{header}");
}

#[test]
fn garbage_and_old_encodings_in_shared_data_are_reset_and_counted() {
    let proxy = Proxy::new(FALLBACK);
    // An older module's layout (same kind, version 0) for the histogram, noise for the table.
    let mut old = LatencyHistogram::new(1_000).encode();
    old[1] = 0;
    assert!(LatencyHistogram::decode(&old, 1_000).is_err());
    proxy.store.put(ORDERS, &old);
    proxy.store.put(IN_FLIGHT, b"\xff\x00garbage");

    let w = proxy.worker();
    let mut s = w.start();
    proxy.advance_ms(10);
    // The fallback still applies and the table starts afresh: the failure is held.
    assert_eq!(s.respond(503).0, Action::Pause);
    assert_eq!(proxy.held_in_table(), 1);
    proxy.advance_ms(100);
    w.tick();
    assert_eq!(w.resumed_ids(), vec![s.id]);
    // The table once (the hold rewrote it); the histogram at admission and again at the sync's
    // re-read (with no success to publish nothing rewrites it, so each read counts).
    assert_eq!(proxy.counter("state_resets"), 3);
    assert!(InFlight::decode(&proxy.store.get(IN_FLIGHT).unwrap()).is_ok());
    assert_eq!(proxy.counter("shared_data_errors"), 0);
}

#[test]
fn shared_data_errors_fail_open_without_holding_and_are_counted() {
    let proxy = Proxy::new(FALLBACK);
    let w = proxy.worker();
    success(&proxy, &w, 5);
    let ticks_before = w.host.tick_period_ms();

    proxy.store.fail_shared_data(Some(HostStatus::BAD_ARGUMENT));
    let mut s = w.start();
    proxy.advance_ms(10);
    let (action, header) = s.respond(503);
    assert_eq!(action, Action::Continue);
    assert_eq!(header.as_deref(), Some("skipped; reason=error"));
    assert_eq!(w.host.tick_period_ms(), ticks_before);
    s.end();
    assert_eq!(proxy.store.gauge("failure_padding.in_flight"), 0);

    proxy.store.fail_shared_data(None);
    proxy.advance_ms(100);
    w.tick();
    assert!(w.resumed_ids().is_empty());
    assert_eq!(proxy.counter("shared_data_errors"), 1);
    assert_eq!(proxy.counter("orders.skipped_error"), 1);
    assert_eq!(proxy.counter("orders.padded"), 0);
}

#[test]
fn a_success_on_a_known_route_costs_eight_host_calls_and_no_shared_data() {
    let proxy = Proxy::new(BASE);
    let w = proxy.worker();
    success(&proxy, &w, 5);
    let calls = w.host.calls();
    let shared = proxy.store.shared_calls();
    success(&proxy, &w, 5);
    // Request: route name, health-check user agent, grpc-timeout, x-envoy-expected-rq-timeout-ms,
    // clock. Response: clock, :status, grpc-status. The end: none.
    assert_eq!(w.host.calls() - calls, 8);
    assert_eq!(proxy.store.shared_calls(), shared);
}
