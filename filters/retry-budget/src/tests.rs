//! The retry budget's cross-worker glue on a fake proxy: several workers, one shared store.
//!
//! Why here and not only in the Envoy tests: the budget's promises (retries across all workers
//! never exceed one shared budget; a lease a worker does not use comes back to the others; a
//! write that loses a CAS race charges nothing twice) depend on which worker reads and writes
//! when, which Envoy decides and never on demand. Here every worker is a [`FakeHost`] on one
//! [`FakeStore`], streams go through the real [`RetryBudgetHttp`] callbacks, the clock moves
//! only when a test says so, and a test can run one worker *between* another's read and its
//! conditional write ([`FakeStore::after_next_read`], [`FakeStore::contend`]).
//!
//! Every test uses a routeless configuration: a request is keyed by its Envoy route name, so the
//! budget of route `orders` lives under `rpack/rb/test/orders` and counts under
//! `retry_budget.orders.*`. The fake clock starts on a bucket boundary, so every charge in a test
//! that moves the clock by less than 9 s stays in the window.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use proxy_wasm::traits::HttpContext;
use proxy_wasm::types::{Action, MapType};
use resilience_core::budget::SharedBudget;
use resilience_core::estimator::LatencyHistogram;
use resilience_host::abi::HostStatus;
use resilience_host::fake::{FakeHost, FakeStore};

use crate::config::{self, FilterConfig, DECISION_HEADER, HOP_GUARD_HEADER};
use crate::http::RetryBudgetHttp;
use crate::worker::Worker;

/// Outbound, two retries per request, and a budget of exactly 10 retries per 10 s window
/// whatever the traffic (no percentage, a floor of 1 per second), so bounds are plain numbers.
const BASE: &str = r#"{
    "max_retries": 2,
    "budget_percent": 0,
    "min_retries_per_second": 1,
    "window": "10s",
    "sync_interval": "100ms",
    "deadline_aware": false
}"#;

/// The budget key of route `orders`.
const ORDERS: &str = "rpack/rb/test/orders";

/// One fake proxy running the retry budget with one configuration.
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

    /// A new worker of this proxy (its own VM: its own leases, pending news and stats cache).
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

    /// The budget of `orders` as stored in shared data.
    fn budget(&self) -> SharedBudget {
        let bytes = self.store.get(ORDERS).unwrap();
        SharedBudget::decode(&bytes, &self.config.routes.defaults.policy).unwrap()
    }

    /// Tokens charged to the shared window of `orders` now: retries made, reservations and
    /// leases.
    fn charged(&self) -> u64 {
        self.budget().totals(self.store.now_ms()).charged
    }

    /// The counter `retry_budget.<name>`, summed over every worker.
    fn counter(&self, name: &str) -> u64 {
        self.store.counter(&format!("retry_budget.{name}"))
    }
}

#[derive(Clone)]
struct TestWorker {
    host: FakeHost,
    worker: Rc<RefCell<Worker<FakeHost>>>,
}

impl TestWorker {
    /// A request for `route` with `headers` and the raw header `raw` through the
    /// request-headers callback; the response is still to come.
    fn request(&self, route: &str, headers: &[(&str, &str)], raw: Option<(&str, &[u8])>) -> Stream {
        let mut map = vec![(":method", "GET"), (":path", "/"), (":authority", "svc")];
        map.extend_from_slice(headers);
        self.host.set_map(MapType::HttpRequestHeaders, &map);
        if let Some((name, value)) = raw {
            self.host
                .set_header_bytes(MapType::HttpRequestHeaders, name, value);
        }
        self.host.remove_map(MapType::HttpResponseHeaders);
        self.host
            .set_property(&["xds", "route_name"], route.as_bytes());
        let mut http = RetryBudgetHttp::on(self.host.clone(), Some(Rc::clone(&self.worker)));
        let action = http.on_http_request_headers(map.len(), true);
        let request_header = |name| self.host.header(MapType::HttpRequestHeaders, name);
        let max_retries = request_header("x-envoy-max-retries").map(|v| v.parse().unwrap());
        let marked = request_header(HOP_GUARD_HEADER);
        Stream {
            http,
            host: self.host.clone(),
            action,
            max_retries,
            marked,
        }
    }

    /// A request for route `orders` with `headers`.
    fn start(&self, headers: &[(&str, &str)]) -> Stream {
        self.request("orders", headers, None)
    }

    /// A first attempt for `orders`.
    fn first(&self) -> Stream {
        self.start(&[])
    }

    /// The worker's timer fired.
    fn tick(&self) {
        let now = self.host.store().now_ms();
        self.worker.borrow_mut().tick(now);
    }

    /// Tokens of `orders` this worker holds, each charged to the shared window: its lease and
    /// the reservations of its requests in flight.
    fn held(&self) -> u64 {
        let w = self.worker.borrow();
        w.entries.by_key("orders").map_or(0, |e| {
            u64::from(e.local.lease_tokens() + e.local.reserved())
        })
    }
}

/// One request between its request headers and its end.
struct Stream {
    http: RetryBudgetHttp<FakeHost>,
    host: FakeHost,
    action: Action,
    /// What the filter told the router (`x-envoy-max-retries`); `None` when it said nothing.
    max_retries: Option<u32>,
    /// The hop guard's mark on the request, if any.
    marked: Option<String>,
}

impl Stream {
    /// The upstream answers `status` after `attempts` attempts and the stream ends; the decision
    /// header the response carried, if any.
    fn finish(mut self, status: u16, attempts: u64) -> Option<String> {
        let status = status.to_string();
        self.host
            .set_map(MapType::HttpResponseHeaders, &[(":status", &status)]);
        self.host
            .set_property_u64(&["upstream", "request_attempt_count"], attempts);
        self.http.on_http_response_headers(1, true);
        let decision = self
            .host
            .header(MapType::HttpResponseHeaders, DECISION_HEADER);
        self.http.on_log();
        decision
    }

    /// The stream ends after every retry it was allowed failed too.
    fn exhaust(self) -> Option<String> {
        let attempts = u64::from(self.max_retries.unwrap_or(0)) + 1;
        self.finish(503, attempts)
    }
}

#[test]
fn retries_reserved_at_once_on_three_workers_never_exceed_the_shared_budget() {
    let proxy = Proxy::new(BASE);
    let workers: Vec<TestWorker> = (0..3).map(|_| proxy.worker()).collect();
    // A burst: twelve requests in flight at once, four per worker, before any has ended or any
    // worker has ticked. Each asks for two retries; the budget holds ten.
    let streams: Vec<Stream> = (0..12).map(|i| workers[i % 3].first()).collect();
    let granted: u32 = streams.iter().map(|s| s.max_retries.unwrap()).sum();
    assert!(granted <= 10, "{granted} retries granted");
    assert_eq!(
        proxy.charged(),
        workers.iter().map(TestWorker::held).sum::<u64>()
    );

    // Every request then spends every retry it was given; more rounds follow, with ticks, all
    // within one window. The retries made add up to the budget, never past it.
    let mut made = 0;
    for s in streams {
        made += s.max_retries.unwrap();
        s.exhaust();
    }
    for _ in 0..20 {
        for w in &workers {
            let s = w.first();
            made += s.max_retries.unwrap();
            s.exhaust();
        }
        workers.iter().for_each(TestWorker::tick);
        proxy.advance_ms(100);
    }
    assert_eq!(made, 10);
    assert_eq!(proxy.charged(), 10);
    let denied = workers[0].first();
    assert_eq!(denied.max_retries, Some(0));
    assert_eq!(
        denied.finish(200, 1).as_deref(),
        Some("deny; reason=budget")
    );
    workers.iter().for_each(TestWorker::tick);
    assert_eq!(proxy.counter("orders.retries_allowed"), 10);
    assert_eq!(proxy.store.gauge("retry_budget.orders.budget_remaining"), 0);
}

#[test]
fn a_lease_a_worker_did_not_use_goes_back_on_its_tick_and_another_worker_reserves_it() {
    // A budget of 4: two requests of worker a hold all of it.
    let proxy = Proxy::new(&BASE.replace(
        r#""min_retries_per_second": 1"#,
        r#""min_retries_per_second": 0.4"#,
    ));
    let (a, b) = (proxy.worker(), proxy.worker());
    let (a1, a2) = (a.first(), a.first());
    assert_eq!((a1.max_retries, a2.max_retries), (Some(2), Some(2)));
    assert_eq!(b.first().max_retries, Some(0));

    // Worker a's requests succeed at once: their reservations come back to a, not yet to the
    // shared budget, so b still finds it empty.
    a1.finish(200, 1);
    a2.finish(200, 1);
    assert_eq!(proxy.charged(), 4);
    proxy.advance_ms(100);
    assert_eq!(b.first().max_retries, Some(0));

    // a's tick publishes the refunds and gives back what it leased beyond its next lease.
    a.tick();
    assert_eq!(proxy.charged(), a.held());
    assert!(a.held() < 4);
    proxy.advance_ms(100);
    assert_eq!(b.first().max_retries, Some(2));
    assert_eq!(proxy.charged(), a.held() + b.held());
    assert!(proxy.charged() <= 4);
}

#[test]
fn a_lease_held_by_a_worker_that_stops_ticking_comes_back_to_the_others_with_its_bucket() {
    let proxy = Proxy::new(&BASE.replace(
        r#""min_retries_per_second": 1"#,
        r#""min_retries_per_second": 0.4"#,
    ));
    let (gone, b) = (proxy.worker(), proxy.worker());
    // The worker that will disappear (its VM reloaded) holds the whole budget: two requests'
    // reservations, one refunded into its lease, the other waiting for a tick that never comes.
    let (g1, g2) = (gone.first(), gone.first());
    g1.finish(200, 1);
    g2.finish(200, 1);
    assert_eq!(proxy.charged(), 4);

    // Its lease was charged to the first bucket, which stays in the window for 10 s.
    proxy.advance_ms(9_900);
    assert_eq!(b.first().max_retries, Some(0));
    proxy.advance_ms(100);
    assert_eq!(b.first().max_retries, Some(2));
    assert_eq!(proxy.charged(), b.held());

    // Were the worker to come back, its lease is stale: it asks the shared budget again rather
    // than spend tokens no longer charged anywhere.
    let back = gone.first();
    assert_eq!(back.max_retries, Some(2));
    assert_eq!(proxy.charged(), gone.held() + b.held());
    assert!(proxy.charged() <= 4);
}

#[test]
fn a_budget_write_that_loses_a_race_reads_again_and_charges_requests_and_leases_once() {
    let proxy = Proxy::new(BASE);
    let (a, b, c) = (proxy.worker(), proxy.worker(), proxy.worker());
    for w in [&a, &b] {
        w.first().finish(200, 1);
        w.tick();
    }
    for w in [&a, &b] {
        for _ in 0..3 {
            w.first().finish(200, 1);
        }
    }

    // Worker b's tick lands between worker a's read and a's conditional write.
    let (_, writes) = proxy.store.shared_calls();
    let raced = Rc::new(Cell::new(false));
    let (b2, raced2) = (b.clone(), Rc::clone(&raced));
    proxy.store.after_next_read(ORDERS, move || {
        b2.tick();
        raced2.set(true);
    });
    a.tick();
    assert!(raced.get());
    // b's write, a's lost write, a's write from a fresh read.
    assert_eq!(proxy.store.shared_calls().1 - writes, 3);
    let totals = proxy.budget().totals(proxy.store.now_ms());
    assert_eq!(totals.requests, 8);
    assert_eq!(totals.charged, a.held() + b.held());

    // A refill on the request path that loses two races in a row.
    let (_, writes) = proxy.store.shared_calls();
    proxy.store.contend(ORDERS, 2);
    let s = c.first();
    assert_eq!(proxy.store.shared_calls().1 - writes, 3);
    assert_eq!(s.max_retries, Some(2));
    let totals = proxy.budget().totals(proxy.store.now_ms());
    assert_eq!(totals.requests, 9);
    assert_eq!(totals.charged, a.held() + b.held() + c.held());

    // The gauge moved by exactly what each winning write changed: it adds up to the last level.
    for w in [&a, &b, &c] {
        w.tick();
    }
    assert_eq!(
        proxy.store.gauge("retry_budget.orders.budget_remaining"),
        i64::try_from(proxy.budget().published_level()).unwrap()
    );
    assert_eq!(proxy.counter("cas_contended"), 0);
}

#[test]
fn a_refill_that_loses_every_race_fails_open_is_counted_and_its_retries_are_charged_later() {
    let proxy = Proxy::new(BASE);
    let (a, b) = (proxy.worker(), proxy.worker());
    a.first().finish(200, 1);
    a.tick();
    let charged = proxy.charged();

    proxy.store.contend(ORDERS, 8);
    let s = b.first();
    // The budget could not be reached: the request keeps its retries rather than losing them.
    assert_eq!(s.max_retries, Some(2));
    assert_eq!(proxy.charged(), charged);
    s.exhaust();
    b.tick();
    assert_eq!(proxy.counter("cas_contended"), 1);
    // The two retries it made were charged by b's tick, on top of what b leased there.
    assert_eq!(proxy.charged(), charged + 2 + b.held());
}

#[test]
fn garbage_or_an_older_encoding_of_the_budget_is_reset_counted_and_requests_keep_their_retries() {
    let policy = Proxy::new(BASE).config.routes.defaults.policy;
    let valid = SharedBudget::new(&policy).encode();
    let mut older = valid.clone();
    older[1] = 0;
    let mut other_kind = valid.clone();
    other_kind[0] = 0xCB;
    let mut truncated = valid.clone();
    truncated.truncate(valid.len() / 2);
    let mut trailing = valid.clone();
    trailing.push(0);
    let mut no_buckets = valid.clone();
    no_buckets[10..14].copy_from_slice(&0u32.to_le_bytes());
    // Bucket 0 (from byte 30) holds a charge for epoch 5: not its slot, and after the head.
    let mut misplaced = valid.clone();
    misplaced[30..38].copy_from_slice(&5u64.to_le_bytes());
    misplaced[42..46].copy_from_slice(&1u32.to_le_bytes());
    let hostile: Vec<Vec<u8>> = vec![
        b"\xff".to_vec(),
        b"not a budget at all".to_vec(),
        older,
        other_kind,
        truncated,
        trailing,
        no_buckets,
        misplaced,
        vec![0xB6; 4096],
    ];
    for (i, bytes) in hostile.iter().enumerate() {
        let proxy = Proxy::new(BASE);
        let w = proxy.worker();
        proxy.store.put(ORDERS, bytes);
        let s = w.first();
        assert_eq!(s.action, Action::Continue, "value {i}");
        assert_eq!(s.max_retries, Some(2), "value {i}");
        s.finish(200, 1);
        w.tick();
        assert_eq!(proxy.counter("state_resets"), 1, "value {i}");
        // The budget was written back whole, with the request it counted.
        assert_eq!(
            proxy.budget().totals(proxy.store.now_ms()).requests,
            1,
            "value {i}"
        );
        w.tick();
        assert_eq!(proxy.counter("state_resets"), 1, "value {i}");
    }

    // The same for the latency histogram a deadline-aware budget shares.
    let proxy =
        Proxy::new(&BASE.replace(r#""deadline_aware": false"#, r#""deadline_aware": true"#));
    let w = proxy.worker();
    let latency = format!("{ORDERS}/latency");
    proxy.store.put(&latency, b"\x00\x01garbage");
    assert_eq!(w.first().finish(200, 1), None);
    w.tick();
    assert_eq!(proxy.counter("state_resets"), 1);
    let stored = proxy.store.get(&latency).unwrap();
    assert!(LatencyHistogram::decode(&stored, 200).is_ok());
}

#[test]
fn a_shared_data_error_lets_requests_keep_their_retries_is_counted_and_is_charged_once_healed() {
    let proxy = Proxy::new(BASE);
    let w = proxy.worker();
    w.first().finish(200, 1);
    proxy.store.fail_shared_data(Some(HostStatus(10)));

    // One request holds the lease; the next needs a refill, which the host refuses.
    let held = w.first();
    let refused = w.first();
    assert_eq!((held.max_retries, refused.max_retries), (Some(2), Some(2)));
    // A new key cannot be registered: it passes unguarded, the router's own policy applies.
    let unguarded = w.request("payments", &[], None);
    assert_eq!(
        (unguarded.action, unguarded.max_retries),
        (Action::Continue, None)
    );
    refused.exhaust();
    held.finish(200, 1);
    w.tick();
    assert_eq!(proxy.counter("shared_data_errors"), 3);
    assert_eq!(proxy.counter("keys_overflow"), 1);

    // Healed: the two retries made without the budget's backing are charged, once.
    proxy.store.fail_shared_data(None);
    w.tick();
    assert_eq!(proxy.charged(), 2 + w.held());
    w.tick();
    assert_eq!(proxy.charged(), 2 + w.held());
}

#[test]
fn inbound_sheds_retries_beyond_the_budget_on_every_worker_but_never_a_first_attempt() {
    // Inbound: retries may be half of the first attempts seen, with no floor.
    let proxy = Proxy::new(
        r#"{
            "mode": "inbound",
            "budget_percent": 50,
            "min_retries_per_second": 0,
            "window": "10s",
            "sync_interval": "100ms"
        }"#,
    );
    let (a, b) = (proxy.worker(), proxy.worker());
    let retry = [("x-envoy-attempt-count", "2")];
    assert_eq!(a.start(&retry).action, Action::Pause);
    let reply = a.host.take_replies().pop().unwrap();
    assert_eq!(reply.status, 503);
    assert_eq!(reply.header(DECISION_HEADER), Some("shed; reason=budget"));
    assert_eq!(reply.header("x-envoy-ratelimited"), Some("true"));
    let retry_after: u64 = reply.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=5).contains(&retry_after), "{retry_after}");
    assert_eq!(
        reply.header("content-type"),
        Some("application/problem+json")
    );
    let body = reply.body_text();
    assert!(
        body.contains("retry-budget-exhausted") && body.contains("orders"),
        "{body}"
    );

    // Four first attempts across the workers make room for two retries.
    for w in [&a, &b, &a, &b] {
        assert_eq!(w.first().action, Action::Continue);
    }
    a.tick();
    b.tick();
    let passed = [&a, &b, &a, &b, &a, &b]
        .iter()
        .filter(|w| w.start(&retry).action == Action::Continue)
        .count();
    assert_eq!(passed, 2);
    // The budget is spent, yet first attempts still pass, on both workers.
    for w in [&a, &b] {
        assert_eq!(w.first().action, Action::Continue);
    }
    a.tick();
    b.tick();
    assert_eq!(proxy.counter("orders.retries_allowed"), 2);
    assert_eq!(proxy.counter("orders.retries_shed"), 5);
    assert_eq!(proxy.counter("orders.requests"), 13);
    assert_eq!(a.host.replies().len() + b.host.replies().len(), 4);
}

#[test]
fn a_request_that_arrived_as_a_retry_gets_no_retries_here_and_is_marked_for_the_next_hop() {
    let proxy = Proxy::new(BASE);
    let w = proxy.worker();
    w.first().finish(200, 1);
    let (held, shared) = (w.held(), proxy.store.shared_calls());
    for retry in [
        ("x-envoy-attempt-count", "2"),
        ("grpc-previous-rpc-attempts", "1"),
        (HOP_GUARD_HEADER, "1"),
    ] {
        let s = w.start(&[retry]);
        assert_eq!(s.max_retries, Some(0), "{retry:?}");
        assert_eq!(s.marked.as_deref(), Some("1"), "{retry:?}");
        assert_eq!(
            s.finish(503, 1).as_deref(),
            Some("deny; reason=hop_guard"),
            "{retry:?}"
        );
    }
    // The guard decided before the budget: nothing was reserved, nothing asked of shared data.
    assert_eq!((w.held(), proxy.store.shared_calls()), (held, shared));

    // A first attempt, or a value that proves nothing, is not a retry.
    for first in [
        ("x-envoy-attempt-count", "1"),
        ("grpc-previous-rpc-attempts", "0"),
        ("x-envoy-attempt-count", "-1"),
        ("x-envoy-attempt-count", "1.5"),
        ("grpc-previous-rpc-attempts", " 2"),
    ] {
        let s = w.start(&[first]);
        assert_eq!(
            (s.max_retries, s.marked.as_deref()),
            (Some(2), None),
            "{first:?}"
        );
        assert_eq!(s.finish(200, 1), None, "{first:?}");
    }
    let s = w.request("orders", &[], Some(("x-envoy-attempt-count", b"\xff")));
    assert_eq!((s.max_retries, s.marked.as_deref()), (Some(2), None));
    s.finish(200, 1);
    w.tick();
    assert_eq!(proxy.counter("orders.retries_denied_hop_guard"), 3);
    assert_eq!(proxy.counter("attempt_headers_invalid"), 4);
}

#[test]
fn a_healthy_request_with_a_lease_in_hand_makes_nine_host_calls_and_none_to_shared_data() {
    let proxy = Proxy::new(BASE);
    let w = proxy.worker();
    w.first().finish(200, 1);
    let (shared, calls) = (proxy.store.shared_calls(), w.host.calls());
    let s = w.first();
    assert_eq!(s.max_retries, Some(2));
    assert_eq!(s.finish(200, 1), None);
    // Request headers: the route name (the key), the clock, the three attempt headers of the hop
    // guard, and x-envoy-max-retries set. Response headers: the clock and `:status`. End of
    // stream: upstream.request_attempt_count (settled at the first byte's time, no clock).
    assert_eq!(w.host.calls() - calls, 9);
    assert_eq!(proxy.store.shared_calls(), shared);
}
