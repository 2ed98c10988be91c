//! The validator's cross-worker glue on a fake proxy: several workers, one shared store.
//!
//! Why here and not only in the Envoy tests: the concurrency limit's promise (never more than
//! `max_concurrent_requests` admitted at once across all workers, a permit back whenever a
//! stream ends) depends on which worker reads and writes the in-flight slots when, which Envoy
//! decides and never on demand. Here every worker is a [`FakeHost`] on one [`FakeStore`], streams
//! go through the real [`ValidatorHttp`] callbacks and the clock moves only when a test says so.
//!
//! Every test uses a routeless configuration: requests count under the key `default`, whose
//! in-flight slots live under `rpack/rv/test/default/in_flight` and whose counters are
//! `request_validator.default.*`.

use std::cell::RefCell;
use std::rc::Rc;

use proxy_wasm::traits::HttpContext;
use proxy_wasm::types::{Action, MapType};
use resilience_core::shedding::InFlight;
use resilience_host::abi::HostStatus;
use resilience_host::fake::{FakeHost, FakeStore, LocalReply};

use crate::config::{self, FilterConfig, DECISION_HEADER};
use crate::http::ValidatorHttp;
use crate::worker::Worker;

/// Three requests in flight on the route across all workers; `/healthz` is a health check.
const BASE: &str = r#"{
    "max_concurrent_requests": 3,
    "sync_interval": "100ms",
    "health_checks": { "paths": ["/healthz"] }
}"#;

/// The shared in-flight slots of the routeless key.
const IN_FLIGHT: &str = "rpack/rv/test/default/in_flight";

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

    /// A new worker of this proxy (its own VM: its own slot, counts and stats cache).
    fn worker(&self) -> TestWorker {
        let host = self.store.worker();
        let worker = Worker::on(host.clone(), Rc::clone(&self.config), "test");
        TestWorker {
            host,
            worker: Rc::new(RefCell::new(worker)),
            next_id: RefCell::new(1),
        }
    }

    /// Requests in flight across every worker, as the shared slots say.
    fn in_flight(&self) -> u32 {
        self.store
            .get(IN_FLIGHT)
            .map_or(0, |b| InFlight::decode(&b).unwrap().total())
    }

    /// The counter `request_validator.<name>`, summed over every worker.
    fn counter(&self, name: &str) -> u64 {
        self.store.counter(&format!("request_validator.{name}"))
    }
}

struct TestWorker {
    host: FakeHost,
    worker: Rc<RefCell<Worker<FakeHost>>>,
    next_id: RefCell<u32>,
}

impl TestWorker {
    /// A bodiless GET of `path` with extra `headers` through the request-headers callback.
    fn request(&self, path: &str, headers: &[(&str, &str)]) -> Stream {
        let mut map = vec![(":method", "GET"), (":path", path), (":authority", "svc")];
        map.extend_from_slice(headers);
        self.host.set_map(MapType::HttpRequestHeaders, &map);
        self.host.remove_map(MapType::HttpResponseHeaders);
        self.host.take_replies();
        let id = {
            let mut n = self.next_id.borrow_mut();
            *n += 1;
            *n
        };
        let mut http = ValidatorHttp::on(self.host.clone(), Some(Rc::clone(&self.worker)), id);
        let action = http.on_http_request_headers(map.len(), true);
        let reply = self.host.take_replies().pop();
        Stream {
            http,
            host: self.host.clone(),
            action,
            reply,
        }
    }

    fn start(&self) -> Stream {
        self.request("/orders", &[])
    }

    fn tick(&self) {
        let now = self.host.store().now_ms();
        self.worker.borrow_mut().tick(now);
    }

    /// Requests this worker believes it has in flight on the route.
    fn own(&self) -> u32 {
        self.worker.borrow().entries[0].in_flight
    }
}

struct Stream {
    http: ValidatorHttp<FakeHost>,
    host: FakeHost,
    action: Action,
    /// The local reply sent at the request headers, if the request was rejected.
    reply: Option<LocalReply>,
}

impl Stream {
    fn admitted(&self) -> bool {
        self.action == Action::Continue && self.reply.is_none()
    }

    /// The upstream answers `status` and the stream ends.
    fn finish(mut self, status: u16) {
        let status = status.to_string();
        self.host
            .set_map(MapType::HttpResponseHeaders, &[(":status", &status)]);
        self.http.on_http_response_headers(1, true);
        self.http.on_log();
    }

    /// The client resets the stream before any response: only `on_log` runs.
    fn abandon(mut self) {
        self.http.on_log();
    }
}

#[test]
fn the_concurrency_limit_holds_across_three_workers_and_a_freed_permit_admits_the_next() {
    let proxy = Proxy::new(BASE);
    let workers: Vec<TestWorker> = (0..3).map(|_| proxy.worker()).collect();
    let streams: Vec<Stream> = (0..9).map(|i| workers[i % 3].start()).collect();
    let admitted = streams.iter().filter(|s| s.admitted()).count();
    assert_eq!(admitted, 3);
    assert_eq!(proxy.in_flight(), 3);
    assert_eq!(workers.iter().map(TestWorker::own).sum::<u32>(), 3);

    // Rounds of arrivals and departures on every worker, with ticks: never more than three.
    let mut live: Vec<Stream> = streams.into_iter().filter(Stream::admitted).collect();
    for round in 0..10 {
        for w in &workers {
            let s = w.start();
            if s.admitted() {
                live.push(s);
            }
            assert!(proxy.in_flight() <= 3, "round {round}");
            assert!(live.len() <= 3, "round {round}: {} admitted", live.len());
        }
        if let Some(s) = (!live.is_empty()).then(|| live.remove(0)) {
            s.finish(200);
        }
        workers.iter().for_each(TestWorker::tick);
        proxy.store.advance_ms(100);
    }
    assert_eq!(proxy.in_flight(), u32::try_from(live.len()).unwrap());
}

#[test]
fn a_permit_is_given_back_when_a_request_ends_and_when_it_is_abandoned() {
    let proxy = Proxy::new(&BASE.replace(
        r#""max_concurrent_requests": 3"#,
        r#""max_concurrent_requests": 1"#,
    ));
    let (a, b) = (proxy.worker(), proxy.worker());
    let first = a.start();
    assert!(first.admitted());
    assert!(!b.start().admitted());

    first.finish(200);
    assert_eq!(proxy.in_flight(), 0);
    let second = b.start();
    assert!(second.admitted());
    assert!(!a.start().admitted());

    second.abandon();
    assert_eq!((proxy.in_flight(), b.own()), (0, 0));
    assert!(a.start().admitted());
}

#[test]
fn priority_classes_shed_in_order_and_the_default_class_keeps_the_whole_limit() {
    let proxy = Proxy::new(
        r#"{
            "max_concurrent_requests": 4,
            "priority": { "header": "x-priority", "shares": { "batch": 50 } }
        }"#,
    );
    let (a, b) = (proxy.worker(), proxy.worker());
    let batch = |w: &TestWorker| w.request("/orders", &[("x-priority", "batch")]);
    let b1 = batch(&a);
    let b2 = batch(&b);
    assert!(b1.admitted() && b2.admitted());
    // Batch may fill only half of the limit; the default class may still use the rest.
    assert!(!batch(&a).admitted());
    let d1 = a.start();
    let d2 = b.start();
    assert!(d1.admitted() && d2.admitted());
    assert!(!a.start().admitted());
    assert_eq!(proxy.in_flight(), 4);
    // A freed permit goes to the default class only: batch still fills its whole share.
    d1.finish(200);
    assert!(!batch(&b).admitted());
    assert!(b.start().admitted());
    a.tick();
    b.tick();
    assert_eq!(
        proxy.counter("default.violations_max_concurrent_requests"),
        3
    );
}

#[test]
fn health_checks_are_admitted_at_the_limit_and_never_take_a_permit() {
    let proxy = Proxy::new(BASE);
    let (a, b) = (proxy.worker(), proxy.worker());
    let _held: Vec<Stream> = (0..3).map(|_| a.start()).collect();
    assert!(!b.start().admitted());
    let (reads, writes) = proxy.store.shared_calls();
    for w in [&a, &b] {
        let probe = w.request("/healthz", &[]);
        assert!(probe.admitted());
        probe.finish(200);
    }
    assert_eq!(proxy.store.shared_calls(), (reads, writes));
    assert_eq!(proxy.in_flight(), 3);
    a.tick();
    b.tick();
    assert_eq!(proxy.counter("health_checks"), 2);
}

#[test]
fn garbage_shared_bytes_are_reset_counted_and_the_request_is_admitted() {
    let hostile: Vec<Vec<u8>> = vec![
        b"\xff".to_vec(),
        b"not in-flight slots at all".to_vec(),
        vec![0xA5; 4096],
    ];
    for (i, bytes) in hostile.iter().enumerate() {
        let proxy = Proxy::new(BASE);
        let w = proxy.worker();
        proxy.store.put(IN_FLIGHT, bytes);
        let s = w.start();
        assert!(s.admitted(), "case {i}");
        assert_eq!(proxy.in_flight(), 1, "case {i}");
        s.finish(200);
        w.tick();
        assert_eq!(proxy.counter("state_resets"), 1, "case {i}");
        assert_eq!(proxy.in_flight(), 0, "case {i}");
    }
}

#[test]
fn shared_data_host_errors_fail_open_are_counted_and_the_slot_heals_on_the_tick() {
    let proxy = Proxy::new(&BASE.replace(
        r#""max_concurrent_requests": 3"#,
        r#""max_concurrent_requests": 1"#,
    ));
    let (a, b) = (proxy.worker(), proxy.worker());
    proxy.store.fail_shared_data(Some(HostStatus(10)));
    // The limit cannot be checked: both are admitted rather than shed.
    let (s1, s2) = (a.start(), b.start());
    assert!(s1.admitted() && s2.admitted());
    a.tick();
    b.tick();
    assert_eq!(proxy.counter("shared_data_errors"), 4);

    // Healed: each worker's tick rewrites its slot with its exact count, so the limit holds again.
    proxy.store.fail_shared_data(None);
    a.tick();
    b.tick();
    assert_eq!(proxy.in_flight(), 2);
    assert!(!a.start().admitted());
    s1.finish(200);
    s2.abandon();
    assert_eq!(proxy.in_flight(), 0);
    assert!(b.start().admitted());
}

#[test]
fn a_shed_request_gets_a_503_problem_json_reply_with_the_decision_header_and_retry_after() {
    let proxy = Proxy::new(&BASE.replace(
        r#""max_concurrent_requests": 3"#,
        r#""max_concurrent_requests": 1, "shed_retry_after": "2s""#,
    ));
    let w = proxy.worker();
    let _first = w.start();
    let shed = w.start();
    assert_eq!(shed.action, Action::Pause);
    let reply = shed.reply.as_ref().unwrap();
    assert_eq!(reply.status, 503);
    assert_eq!(reply.grpc_status, None);
    assert_eq!(
        reply.header("content-type"),
        Some("application/problem+json")
    );
    assert_eq!(
        reply.header(DECISION_HEADER),
        Some("rejected; reason=max_concurrent_requests")
    );
    assert_eq!(reply.header("retry-after"), Some("2"));
    let body: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(body["status"], 503);
    assert_eq!(body["limit"], 1);
    // A shed request holds no permit: its end gives nothing back.
    shed.finish(503);
    assert_eq!(proxy.in_flight(), 1);
    w.tick();
    assert_eq!(proxy.counter("default.rejected"), 1);
}

#[test]
fn the_healthy_path_makes_the_same_few_host_calls_as_before_the_trait() {
    let proxy = Proxy::new(BASE);
    let w = proxy.worker();
    // Headers: the header map, the clock, one read and one conditional write of the slots.
    let before = w.host.calls();
    let s = w.start();
    assert!(s.admitted());
    // set_map/remove_map/take_replies are test set-up, not host calls of the filter.
    assert_eq!(w.host.calls() - before, 4);
    // Response headers: nothing to explain or time. End: the clock, one read, one write.
    let before = w.host.calls();
    s.finish(200);
    assert_eq!(w.host.calls() - before, 3);

    // A route without a concurrency limit: the header map only, and nothing at the end.
    let proxy = Proxy::new(r#"{ "max_header_bytes": 8192 }"#);
    let w = proxy.worker();
    let before = w.host.calls();
    let s = w.start();
    assert!(s.admitted());
    s.finish(200);
    assert_eq!(w.host.calls() - before, 1);
    assert_eq!(proxy.store.shared_calls(), (0, 0));
}
