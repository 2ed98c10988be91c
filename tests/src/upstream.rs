//! A scriptable HTTP/1.1 upstream that Envoy proxies to.
//!
//! Why: resilience filters are proven by what they do when the backend misbehaves, so tests need
//! a real TCP server whose failures are exact and changeable while Envoy runs: a given status or
//! header, added latency, every n-th or a seeded fraction of requests failing, connections that
//! hang, reset or close without answering, and a host that goes down and comes back on the same
//! port. It also records what reached it, so a test can tell a request the filter short-circuited
//! from one the upstream saw.
//!
//! How: std only, one thread per connection, keep-alive, Nagle off, and every response written
//! with one `write_all` of a prebuilt buffer: a response split into two writes meets the peer's
//! delayed ACK and gains ~40 ms, which would hide the latency effects under test. Each response
//! carries `x-upstream-name` so tests can see which instance answered.
//!
//! Optionally the upstream has a fixed capacity (`Upstream::set_capacity`): at most N requests
//! are served at once and the rest wait their turn in arrival order, so latency grows with
//! concurrency as on a saturated server.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::wire;

/// How many requests `Upstream::log` keeps (the oldest are dropped first).
pub const LOG_CAPACITY: usize = 10_000;

/// What the upstream does with a request once it has read it (after the behaviour's latency).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Answer with the behaviour's status, headers and body.
    Respond,
    /// Never answer; hold the connection open until the peer closes it or the upstream stops.
    Hang,
    /// Abort the connection with a TCP RST (SO_LINGER 0) and no response.
    Reset,
    /// Close the connection cleanly (FIN) without a response.
    CloseWithoutResponse,
}

/// A scripted behaviour: how to answer, and optionally which requests fail and how.
#[derive(Debug, Clone)]
pub struct Behavior {
    pub mode: Mode,
    pub status: u16,
    /// Waited after the request is read, before the mode is carried out.
    pub latency: Duration,
    /// Extra response headers (`content-length` is always computed, never taken from here).
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Every n-th request matched by this behaviour fails (0: never). Counting starts at 1, so
    /// with n = 3 requests 3, 6, 9, … fail.
    pub fail_every_nth: u64,
    /// This fraction of requests (0.0..=1.0) fails, chosen by a PRNG seeded with `seed` over the
    /// request's sequence number: the same seed gives the same failing sequence numbers.
    pub failure_fraction: f64,
    pub seed: u64,
    /// What a failing request gets; `None` means a plain 503 response.
    pub failure: Option<Box<Behavior>>,
}

impl Default for Behavior {
    /// 200 with body `ok`, no latency, never failing.
    fn default() -> Self {
        Behavior {
            mode: Mode::Respond,
            status: 200,
            latency: Duration::ZERO,
            headers: Vec::new(),
            body: b"ok".to_vec(),
            fail_every_nth: 0,
            failure_fraction: 0.0,
            seed: 0,
            failure: None,
        }
    }
}

impl Behavior {
    /// Respond with `status` (body `ok` for 2xx, empty otherwise).
    pub fn status(status: u16) -> Self {
        let body = if (200..300).contains(&status) {
            b"ok".to_vec()
        } else {
            Vec::new()
        };
        Behavior {
            status,
            body,
            ..Behavior::default()
        }
    }

    /// Never answer (see `Mode::Hang`).
    pub fn hang() -> Self {
        Behavior::default().with_mode(Mode::Hang)
    }

    /// Reset the connection (see `Mode::Reset`).
    pub fn reset() -> Self {
        Behavior::default().with_mode(Mode::Reset)
    }

    /// Close the connection without a response (see `Mode::CloseWithoutResponse`).
    pub fn close_without_response() -> Self {
        Behavior::default().with_mode(Mode::CloseWithoutResponse)
    }

    pub fn with_mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }

    pub fn with_status(mut self, status: u16) -> Self {
        self.status = status;
        self
    }

    pub fn with_latency(mut self, latency: Duration) -> Self {
        self.latency = latency;
        self
    }

    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    pub fn with_body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// Every n-th request fails (see `fail_every_nth`).
    pub fn failing_every_nth(mut self, n: u64) -> Self {
        self.fail_every_nth = n;
        self
    }

    /// A seeded `fraction` of requests fails (see `failure_fraction`).
    pub fn failing_fraction(mut self, fraction: f64, seed: u64) -> Self {
        self.failure_fraction = fraction;
        self.seed = seed;
        self
    }

    /// What failing requests get (default: a plain 503).
    pub fn on_failure(mut self, failure: Behavior) -> Self {
        self.failure = Some(Box::new(failure));
        self
    }

    /// Whether the request with 1-based sequence number `n` fails under this behaviour.
    pub fn fails(&self, n: u64) -> bool {
        if n.checked_rem(self.fail_every_nth) == Some(0) {
            return true;
        }
        if self.failure_fraction > 0.0 {
            let roll = splitmix64(self.seed ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            // The top 53 bits as a uniform float in [0, 1).
            let unit = (roll >> 11) as f64 / (1u64 << 53) as f64;
            return unit < self.failure_fraction;
        }
        false
    }
}

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// One request as the upstream received it.
#[derive(Debug, Clone)]
pub struct RequestRecord {
    pub at: Instant,
    pub method: String,
    /// The request target as sent (path plus query).
    pub path: String,
    /// Header names lowercased, in wire order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RequestRecord {
    pub fn header(&self, name: &str) -> Option<&str> {
        wire::find_header(&self.headers, name)
    }
}

#[derive(Debug)]
struct Rule {
    behavior: Behavior,
    /// Requests this rule has matched since it was set or counts were reset.
    seen: u64,
}

#[derive(Debug, Default)]
struct Script {
    default: Option<Rule>,
    /// By path prefix; the longest matching prefix wins.
    overrides: BTreeMap<String, Rule>,
}

#[derive(Debug, Default)]
struct Counts {
    total: u64,
    by_target: HashMap<String, u64>,
    log: VecDeque<RequestRecord>,
}

#[derive(Debug)]
struct Shared {
    name: String,
    script: Mutex<Script>,
    counts: Mutex<Counts>,
    /// Open connections, so stopping can shut them (hung ones included) down.
    conns: Mutex<HashMap<u64, TcpStream>>,
    next_conn: AtomicU64,
    /// The optional cold cache (see `Upstream::set_cold_cache`).
    cold: Mutex<ColdCache>,
    /// Held while a cache miss is being served: misses queue behind each other.
    miss_lock: Mutex<()>,
    /// The optional serving capacity (see `Upstream::set_capacity`).
    capacity: Mutex<Capacity>,
}

/// A counting semaphore over the requests being served, shared by every connection.
///
/// Waiters are served strictly in arrival order: a released slot is handed to the oldest waiter
/// directly, so a request that has just arrived cannot overtake the queue (a plain
/// `Mutex<usize>` + `Condvar` lets the newest thread win the race for a freed slot, which would
/// make the queue partly last-in-first-out). Each waiter sleeps on its own condition variable,
/// so a release wakes exactly one thread however long the queue is.
#[derive(Debug, Default)]
struct Capacity {
    /// Most requests served at once; `None` is unlimited.
    limit: Option<usize>,
    /// Requests holding a slot (counted even when unlimited, so a limit set later is exact).
    in_use: usize,
    /// Requests waiting for a slot, oldest first.
    waiting: VecDeque<Arc<Waiter>>,
    /// Set while the upstream is stopped: waiters are turned away.
    closed: bool,
}

#[derive(Debug, Default)]
struct Waiter {
    /// `None` while waiting; `Some(true)` when handed a slot, `Some(false)` when turned away.
    outcome: Mutex<Option<bool>>,
    woken: Condvar,
}

impl Waiter {
    fn settle(&self, granted: bool) {
        *lock(&self.outcome) = Some(granted);
        self.woken.notify_one();
    }
}

impl Capacity {
    fn has_room(&self) -> bool {
        self.limit.is_none_or(|limit| self.in_use < limit)
    }

    /// Hands free slots to the oldest waiters.
    fn grant_waiting(&mut self) {
        while self.has_room() {
            let Some(waiter) = self.waiting.pop_front() else {
                return;
            };
            self.in_use += 1;
            waiter.settle(true);
        }
    }

    /// Turns every waiter away (the upstream stopped).
    fn close(&mut self) {
        self.closed = true;
        for waiter in self.waiting.drain(..) {
            waiter.settle(false);
        }
    }
}

/// A slot of `Capacity`, given back on drop.
struct Slot<'a>(&'a Mutex<Capacity>);

impl Slot<'_> {
    /// Waits for a slot in arrival order; `None` when the upstream stops first.
    fn acquire(capacity: &Mutex<Capacity>) -> Option<Slot<'_>> {
        let waiter = {
            let mut cap = lock(capacity);
            if cap.closed {
                return None;
            }
            if cap.waiting.is_empty() && cap.has_room() {
                cap.in_use += 1;
                return Some(Slot(capacity));
            }
            let waiter = Arc::new(Waiter::default());
            cap.waiting.push_back(Arc::clone(&waiter));
            waiter
        };
        let mut outcome = lock(&waiter.outcome);
        loop {
            match *outcome {
                Some(true) => return Some(Slot(capacity)),
                Some(false) => return None,
                None => {
                    outcome = waiter
                        .woken
                        .wait(outcome)
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                }
            }
        }
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let mut cap = lock(self.0);
        cap.in_use = cap.in_use.saturating_sub(1);
        cap.grant_waiting();
    }
}

/// A cache that starts empty: the first request for each distinct target is a miss.
#[derive(Debug, Default)]
struct ColdCache {
    miss_latency: Option<Duration>,
    seen: std::collections::HashSet<String>,
}

/// What one request gets, decided under the lock and carried out without it.
struct Plan {
    mode: Mode,
    latency: Duration,
    /// A cold-cache miss: served for this long, one miss at a time.
    miss: Option<Duration>,
    response: Vec<u8>,
    close: bool,
}

impl Shared {
    fn plan(
        &self,
        method: &str,
        target: &str,
        headers: &[(String, String)],
        body: Vec<u8>,
        close: bool,
    ) -> Plan {
        {
            let mut counts = lock(&self.counts);
            counts.total += 1;
            *counts.by_target.entry(target.to_string()).or_insert(0) += 1;
            if counts.log.len() >= LOG_CAPACITY {
                counts.log.pop_front();
            }
            counts.log.push_back(RequestRecord {
                at: Instant::now(),
                method: method.to_string(),
                path: target.to_string(),
                headers: headers.to_vec(),
                body,
            });
        }
        let chosen = {
            let mut script = lock(&self.script);
            let Script { default, overrides } = &mut *script;
            let rule = overrides
                .iter_mut()
                .rev()
                .find(|(prefix, _)| target.starts_with(prefix.as_str()))
                .map(|(_, rule)| rule)
                .or(default.as_mut());
            match rule {
                Some(rule) => {
                    rule.seen += 1;
                    let b = &rule.behavior;
                    if b.fails(rule.seen) {
                        b.failure
                            .as_deref()
                            .cloned()
                            .unwrap_or_else(|| Behavior::status(503))
                    } else {
                        b.clone()
                    }
                }
                None => Behavior::default(),
            }
        };
        let miss = {
            let mut cold = lock(&self.cold);
            let ColdCache { miss_latency, seen } = &mut *cold;
            miss_latency.filter(|_| seen.insert(target.to_string()))
        };
        let head_only = method.eq_ignore_ascii_case("HEAD");
        Plan {
            mode: chosen.mode,
            latency: chosen.latency,
            miss,
            response: render_response(&self.name, &chosen, head_only, close),
            close,
        }
    }
}

fn render_response(name: &str, b: &Behavior, head_only: bool, close: bool) -> Vec<u8> {
    let no_body = wire::status_has_no_body(b.status);
    let mut out = Vec::with_capacity(256 + b.body.len());
    out.extend_from_slice(
        format!("HTTP/1.1 {} {}\r\n", b.status, wire::reason(b.status)).as_bytes(),
    );
    out.extend_from_slice(format!("x-upstream-name: {name}\r\n").as_bytes());
    for (k, v) in &b.headers {
        if k.eq_ignore_ascii_case("content-length") || k.eq_ignore_ascii_case("transfer-encoding") {
            continue;
        }
        out.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
    }
    if !no_body {
        out.extend_from_slice(format!("content-length: {}\r\n", b.body.len()).as_bytes());
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if !no_body && !head_only {
        out.extend_from_slice(&b.body);
    }
    out
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking test thread must not wedge the upstream for everyone else.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

struct Running {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

/// A running scripted upstream on `127.0.0.1:<port>`. Stops (and drops all connections) on drop.
pub struct Upstream {
    port: u16,
    shared: Arc<Shared>,
    running: Mutex<Option<Running>>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("name", &self.shared.name)
            .field("port", &self.port)
            .finish()
    }
}

impl Upstream {
    /// Starts an upstream named `upstream` on a free loopback port.
    pub fn start() -> Result<Upstream, String> {
        Upstream::start_named("upstream")
    }

    /// Starts an upstream that answers with `x-upstream-name: <name>`.
    pub fn start_named(name: &str) -> Result<Upstream, String> {
        let mut last_err = String::new();
        // A port from `free_port` could be taken by another process in between; try a few.
        for _ in 0..20 {
            let port = crate::envoy::free_port();
            match TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port))) {
                Ok(listener) => {
                    let upstream = Upstream {
                        port,
                        shared: Arc::new(Shared {
                            name: name.to_string(),
                            script: Mutex::new(Script::default()),
                            counts: Mutex::new(Counts::default()),
                            conns: Mutex::new(HashMap::new()),
                            next_conn: AtomicU64::new(0),
                            cold: Mutex::new(ColdCache::default()),
                            miss_lock: Mutex::new(()),
                            capacity: Mutex::new(Capacity::default()),
                        }),
                        running: Mutex::new(None),
                    };
                    upstream.serve(listener)?;
                    return Ok(upstream);
                }
                Err(e) => last_err = format!("binding 127.0.0.1:{port}: {e}"),
            }
        }
        Err(format!("upstream {name}: no free port ({last_err})"))
    }

    /// Starts an upstream on a fixed loopback `port` (for `cargo pack run`, whose Envoy configs
    /// name fixed ports); tests use [`Upstream::start_named`] and free ports instead.
    pub fn start_at(name: &str, port: u16) -> Result<Upstream, String> {
        let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port)))
            .map_err(|e| format!("upstream {name}: binding 127.0.0.1:{port}: {e}"))?;
        let upstream = Upstream {
            port,
            shared: Arc::new(Shared {
                name: name.to_string(),
                script: Mutex::new(Script::default()),
                counts: Mutex::new(Counts::default()),
                conns: Mutex::new(HashMap::new()),
                next_conn: AtomicU64::new(0),
                cold: Mutex::new(ColdCache::default()),
                miss_lock: Mutex::new(()),
                capacity: Mutex::new(Capacity::default()),
            }),
            running: Mutex::new(None),
        };
        upstream.serve(listener)?;
        Ok(upstream)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Replaces the behaviour for requests no override matches (and restarts its failure count).
    pub fn set_default(&self, behavior: Behavior) {
        lock(&self.shared.script).default = Some(Rule { behavior, seen: 0 });
    }

    /// Sets the behaviour for request targets starting with `prefix` (longest prefix wins).
    pub fn set_behavior(&self, prefix: &str, behavior: Behavior) {
        lock(&self.shared.script)
            .overrides
            .insert(prefix.to_string(), Rule { behavior, seen: 0 });
    }

    /// Models a replica whose cache starts cold: with `Some(miss)`, the first request for each
    /// distinct target takes an extra `miss` (after the behaviour's latency), and misses are
    /// served one at a time, like a cold backing store, so a flood of misses queues. `None`
    /// turns it off. Either way the cache is emptied (a restarted process has a cold cache:
    /// call this again after `restart`).
    pub fn set_cold_cache(&self, miss: Option<Duration>) {
        let mut cold = lock(&self.shared.cold);
        cold.miss_latency = miss;
        cold.seen.clear();
    }

    /// Models a server with a fixed number of workers: with `Some(n)`, at most `n` requests are
    /// served at once (each holds a slot from before its behaviour's latency until its response
    /// is written) and the others wait for a slot in arrival order, so latency grows with
    /// concurrency as on a saturated server. Every connection shares the slots. A waiting
    /// request is still served when its client has gone meanwhile, as many servers do: that work
    /// is wasted. `None` (the default) serves every request at once. Takes effect for requests
    /// that have not got a slot yet; waiters are handed slots at once if the new limit allows.
    pub fn set_capacity(&self, capacity: Option<usize>) {
        let mut cap = lock(&self.shared.capacity);
        cap.limit = capacity;
        cap.grant_waiting();
    }

    /// Removes the override for exactly `prefix`.
    pub fn remove_behavior(&self, prefix: &str) {
        lock(&self.shared.script).overrides.remove(prefix);
    }

    /// Removes every override and restores the default behaviour (200 `ok`).
    pub fn clear_behaviors(&self) {
        *lock(&self.shared.script) = Script::default();
    }

    /// Requests received (fully read) since start or the last `reset_counts`.
    pub fn requests(&self) -> u64 {
        lock(&self.shared.counts).total
    }

    /// Requests whose target (path plus query) starts with `prefix`.
    pub fn requests_for(&self, prefix: &str) -> u64 {
        lock(&self.shared.counts)
            .by_target
            .iter()
            .filter(|(target, _)| target.starts_with(prefix))
            .map(|(_, n)| *n)
            .sum()
    }

    /// The last `LOG_CAPACITY` requests, oldest first.
    pub fn log(&self) -> Vec<RequestRecord> {
        lock(&self.shared.counts).log.iter().cloned().collect()
    }

    /// Clears counts and log, and restarts every behaviour's failure sequence at request 1.
    pub fn reset_counts(&self) {
        *lock(&self.shared.counts) = Counts::default();
        let mut script = lock(&self.shared.script);
        if let Some(rule) = script.default.as_mut() {
            rule.seen = 0;
        }
        for rule in script.overrides.values_mut() {
            rule.seen = 0;
        }
    }

    /// Waits until at least `n` requests arrived; returns the count, or Err on timeout.
    pub fn wait_for_requests(&self, n: u64, timeout: Duration) -> Result<u64, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let seen = self.requests();
            if seen >= n {
                return Ok(seen);
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "upstream {}: {seen} requests after {timeout:?}, wanted {n}",
                    self.name()
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Whether the upstream is accepting connections.
    pub fn is_running(&self) -> bool {
        lock(&self.running).is_some()
    }

    /// Simulates a dead host: closes the listener (new connections are refused) and shuts down
    /// every open connection, hung ones included. The port is kept for `restart`. Idempotent.
    pub fn stop(&self) {
        let running = lock(&self.running).take();
        if let Some(running) = running {
            running.stop.store(true, Ordering::SeqCst);
            // Wake the blocking accept; the loop sees the flag and drops the listener.
            let _ = TcpStream::connect_timeout(
                &SocketAddr::from(([127, 0, 0, 1], self.port)),
                Duration::from_secs(1),
            );
            let _ = running.thread.join();
        }
        // Requests waiting for a slot are dropped with their connections.
        lock(&self.shared.capacity).close();
        let conns: Vec<TcpStream> = lock(&self.shared.conns).drain().map(|(_, s)| s).collect();
        for conn in conns {
            let _ = conn.shutdown(Shutdown::Both);
        }
    }

    /// Listens again on the same port after `stop`. Idempotent.
    pub fn restart(&self) -> Result<(), String> {
        if self.is_running() {
            return Ok(());
        }
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            // std sets SO_REUSEADDR, so connections in TIME_WAIT do not block the bind.
            match TcpListener::bind(addr) {
                Ok(listener) => return self.serve(listener),
                Err(e) if Instant::now() >= deadline => {
                    return Err(format!("upstream {}: rebinding {addr}: {e}", self.name()))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    /// `stop` when `down`, else `restart`.
    pub fn set_down(&self, down: bool) -> Result<(), String> {
        if down {
            self.stop();
            Ok(())
        } else {
            self.restart()
        }
    }

    fn serve(&self, listener: TcpListener) -> Result<(), String> {
        lock(&self.shared.capacity).closed = false;
        let stop = Arc::new(AtomicBool::new(false));
        let shared = Arc::clone(&self.shared);
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name(format!("upstream-{}-accept", self.shared.name))
            .spawn(move || accept_loop(listener, shared, flag))
            .map_err(|e| format!("spawning accept thread: {e}"))?;
        *lock(&self.running) = Some(Running { stop, thread });
        Ok(())
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop();
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>, stop: Arc<AtomicBool>) {
    loop {
        let stream = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(_) if stop.load(Ordering::SeqCst) => return,
            Err(_) => {
                // E.g. EMFILE: back off instead of spinning.
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let id = shared.next_conn.fetch_add(1, Ordering::Relaxed);
        if let Ok(clone) = stream.try_clone() {
            lock(&shared.conns).insert(id, clone);
        }
        let conn_shared = Arc::clone(&shared);
        let spawned = std::thread::Builder::new()
            .name(format!("upstream-{}-conn", shared.name))
            .spawn(move || {
                serve_connection(&conn_shared, stream);
                lock(&conn_shared.conns).remove(&id);
            });
        if spawned.is_err() {
            lock(&shared.conns).remove(&id);
        }
    }
}

fn serve_connection(shared: &Shared, stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let Ok(read_half) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_half);
    let mut writer = stream;
    loop {
        let head = match wire::read_head(&mut reader) {
            Ok(Some(head)) => head,
            _ => return,
        };
        let mut parts = head.start.split_whitespace();
        let method = parts.next().unwrap_or("").to_string();
        let target = parts.next().unwrap_or("").to_string();
        let version = parts.next().unwrap_or("HTTP/1.1");
        if head
            .header("expect")
            .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"))
            && writer.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").is_err()
        {
            return;
        }
        let framing = match head.framing() {
            Ok(framing) => framing,
            Err(_) => return,
        };
        let body = match wire::read_body(&mut reader, framing, false) {
            Ok(body) => body,
            Err(_) => return,
        };
        let connection = head.header("connection").unwrap_or("").to_ascii_lowercase();
        let close = connection.contains("close")
            || (version == "HTTP/1.0" && !connection.contains("keep-alive"));
        let plan = shared.plan(&method, &target, &head.headers, body, close);
        // Held until this request is done with (response written, or the connection ends).
        let Some(_slot) = Slot::acquire(&shared.capacity) else {
            return;
        };
        if !plan.latency.is_zero() {
            std::thread::sleep(plan.latency);
        }
        if let Some(miss) = plan.miss {
            let _serving = lock(&shared.miss_lock);
            std::thread::sleep(miss);
        }
        match plan.mode {
            Mode::Respond => {
                if writer.write_all(&plan.response).is_err() || plan.close {
                    return;
                }
            }
            Mode::Hang => {
                // Swallow anything further until the peer closes or `stop` shuts us down.
                let mut sink = [0u8; 4096];
                while matches!(reader.read(&mut sink), Ok(n) if n > 0) {}
                return;
            }
            Mode::Reset => {
                set_linger_zero(&writer);
                return;
            }
            Mode::CloseWithoutResponse => {
                let _ = writer.shutdown(Shutdown::Write);
                return;
            }
        }
    }
}

/// Makes the coming close send RST instead of FIN. `TcpStream::set_linger` is unstable, so this
/// calls `setsockopt(SO_LINGER, {on, 0})` directly.
#[cfg(any(target_os = "linux", target_os = "macos"))]
fn set_linger_zero(stream: &TcpStream) {
    use std::os::fd::AsRawFd;
    use std::os::raw::{c_int, c_void};

    #[repr(C)]
    struct Linger {
        l_onoff: c_int,
        l_linger: c_int,
    }
    extern "C" {
        fn setsockopt(
            fd: c_int,
            level: c_int,
            name: c_int,
            value: *const c_void,
            len: u32,
        ) -> c_int;
    }
    #[cfg(target_os = "linux")]
    const LEVEL_AND_NAME: (c_int, c_int) = (1, 13); // SOL_SOCKET, SO_LINGER
    #[cfg(target_os = "macos")]
    const LEVEL_AND_NAME: (c_int, c_int) = (0xffff, 0x1080); // SOL_SOCKET, SO_LINGER_SEC

    let linger = Linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: the fd is open for the lifetime of `stream`, and `linger` is a valid `struct
    // linger` whose size is passed along; setsockopt only reads it.
    let _ = unsafe {
        setsockopt(
            stream.as_raw_fd(),
            LEVEL_AND_NAME.0,
            LEVEL_AND_NAME.1,
            std::ptr::from_ref(&linger).cast::<c_void>(),
            std::mem::size_of::<Linger>() as u32,
        )
    };
}

#[cfg(not(any(target_os = "linux", target_os = "macos")))]
fn set_linger_zero(_stream: &TcpStream) {}
