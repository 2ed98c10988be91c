//! An in-memory [`Host`] for tests: several workers on one shared store, a clock the test moves,
//! and every reply, metric and header the filter touched, recorded.
//!
//! Why: Envoy runs one VM per worker thread, and the workers meet only in shared data. The bugs
//! worth fearing there (two workers tripping one breaker at once, a probe permit taken twice, a
//! write that lands between another worker's read and write) need interleavings a real proxy
//! produces rarely and never on demand. Here each [`FakeHost`] is one worker; workers made from the
//! same [`FakeStore`] share its data, clock and stats, and the test decides who runs when, down to
//! "right after this read" ([`FakeStore::after_next_read`], [`FakeStore::contend`]).
//!
//! Fidelity, where it matters, follows proxy-wasm-cpp-host and Envoy 1.40:
//! - Shared data: one CAS counter for the whole store, starting at 1, bumped on every write and
//!   never 0. A write with token 0, or to a key that does not exist yet, is unconditional; a write
//!   with any other token that is not the key's current one answers
//!   [`HostStatus::CAS_MISMATCH`]. A missing key reads as `Ok(None)`, an empty value as
//!   `Ok(Some(empty))`.
//! - Metrics: stats are the proxy's, by name, so increments from every worker add up in one value;
//!   a counter refuses a non-positive increment (`BadArgument`), an unknown id is `NotFound`.
//! - Header maps: a map the test has not set is not available in this phase (`BadArgument`), as
//!   Envoy answers for, say, response headers during the request; in a set map a missing header
//!   is absent (`Ok(None)`). Names match case-insensitively.
//!
//! Everything else is recorded as asked and answered `Ok`, unless the test injects a refusal.
//! The fake never panics on anything a filter asks; it compiles for tests and behind the cargo
//! feature `fake`, never into a filter module.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::rc::Rc;

use proxy_wasm::types::{BufferType, MapType, MetricType, StreamType};

use crate::abi::HostStatus;
use crate::callout::CalloutError;
use crate::host::Host;

/// The fake proxy's wall clock starts here (2026-01-01T00:00:00Z), far from 0 so that code which
/// treats 0 as "unset" cannot pass by accident.
pub const START_MS: u64 = 1_767_225_600_000;

/// How many host call names a worker keeps for [`FakeHost::take_call_log`].
pub const CALL_LOG_LIMIT: usize = 100_000;

/// What every worker of one fake proxy shares: shared data, the clock and the stats. Cloning it
/// gives another handle to the same store.
#[derive(Clone, Default)]
pub struct FakeStore {
    inner: Rc<RefCell<Store>>,
}

/// Code to run as "another worker" at a chosen point.
type Hook = Box<dyn FnOnce()>;

struct Store {
    shared: HashMap<String, (Vec<u8>, u32)>,
    next_cas: u32,
    now_ns: u64,
    metrics: Vec<Metric>,
    after_read: Vec<(String, Hook)>,
    contended: HashMap<String, u32>,
    shared_fault: Option<HostStatus>,
    refuse_tokens_for_missing: bool,
    shared_reads: u64,
    shared_writes: u64,
    workers: u32,
}

impl Default for Store {
    fn default() -> Self {
        Store {
            shared: HashMap::new(),
            next_cas: 1,
            now_ns: START_MS.saturating_mul(1_000_000),
            metrics: Vec::new(),
            after_read: Vec::new(),
            contended: HashMap::new(),
            shared_fault: None,
            refuse_tokens_for_missing: false,
            shared_reads: 0,
            shared_writes: 0,
            workers: 0,
        }
    }
}

impl Store {
    /// The next CAS token, as the real store hands them out: counting up, skipping 0.
    fn next_cas(&mut self) -> u32 {
        let cas = self.next_cas;
        self.next_cas = self.next_cas.wrapping_add(1);
        if self.next_cas == 0 {
            self.next_cas = 1;
        }
        cas
    }

    /// Writes `key` unconditionally, as another writer would.
    fn put(&mut self, key: &str, value: Vec<u8>) -> u32 {
        let cas = self.next_cas();
        self.shared.insert(key.to_owned(), (value, cas));
        cas
    }

    fn metric(&self, kind: MetricType, name: &str) -> Option<&Metric> {
        self.metrics
            .iter()
            .find(|m| m.kind == kind && m.name == name)
    }
}

/// One stat of the fake proxy, summed over every worker.
struct Metric {
    kind: MetricType,
    name: String,
    value: i64,
    samples: Vec<u64>,
}

impl FakeStore {
    /// An empty store at [`START_MS`].
    pub fn new() -> Self {
        Self::default()
    }

    /// A new worker of this proxy: its own streams, replies and callouts; this store's shared
    /// data, clock and stats.
    pub fn worker(&self) -> FakeHost {
        let id = {
            let mut s = self.inner.borrow_mut();
            s.workers = s.workers.saturating_add(1);
            s.workers
        };
        FakeHost {
            store: self.clone(),
            worker: Rc::new(RefCell::new(WorkerState::new(id))),
        }
    }

    /// The clock, in milliseconds since the Unix epoch.
    pub fn now_ms(&self) -> u64 {
        self.inner.borrow().now_ns / 1_000_000
    }

    /// Moves the clock forward by `ms`.
    pub fn advance_ms(&self, ms: u64) {
        let mut s = self.inner.borrow_mut();
        s.now_ns = s.now_ns.saturating_add(ms.saturating_mul(1_000_000));
    }

    /// Sets the clock to `ms` since the Unix epoch (backwards too: real clocks do step).
    pub fn set_now_ms(&self, ms: u64) {
        self.inner.borrow_mut().now_ns = ms.saturating_mul(1_000_000);
    }

    /// The stored bytes of `key`, without counting as a host call.
    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        self.inner.borrow().shared.get(key).map(|(v, _)| v.clone())
    }

    /// The current CAS token of `key`.
    pub fn cas(&self, key: &str) -> Option<u32> {
        self.inner.borrow().shared.get(key).map(|(_, cas)| *cas)
    }

    /// Every key in shared data, sorted.
    pub fn keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self.inner.borrow().shared.keys().cloned().collect();
        keys.sort();
        keys
    }

    /// Writes `value` to `key` unconditionally, as some other writer (an older module version,
    /// a buggy filter) would; returns the new token.
    pub fn put(&self, key: &str, value: &[u8]) -> u32 {
        self.inner.borrow_mut().put(key, value.to_vec())
    }

    /// Runs `f` right after the next read of `key` returns, before the reader can write: the
    /// moment another worker's update lands between a read and its conditional write.
    pub fn after_next_read(&self, key: &str, f: impl FnOnce() + 'static) {
        self.inner
            .borrow_mut()
            .after_read
            .push((key.to_owned(), Box::new(f)));
    }

    /// Makes the next `times` reads of `key` each followed by another writer rewriting the same
    /// bytes: every conditional write based on one of those reads loses with `CasMismatch`.
    pub fn contend(&self, key: &str, times: u32) {
        self.inner
            .borrow_mut()
            .contended
            .insert(key.to_owned(), times);
    }

    /// Makes writes that present a token for a missing key fail with `CasMismatch`, as a host
    /// stricter than Envoy could (Envoy creates the key whatever the token).
    pub fn refuse_tokens_for_missing_keys(&self, refuse: bool) {
        self.inner.borrow_mut().refuse_tokens_for_missing = refuse;
    }

    /// Makes every shared-data call answer `status` (`None` to heal).
    pub fn fail_shared_data(&self, status: Option<HostStatus>) {
        self.inner.borrow_mut().shared_fault = status;
    }

    /// Shared-data reads and writes so far, by every worker: `(reads, writes)`.
    pub fn shared_calls(&self) -> (u64, u64) {
        let s = self.inner.borrow();
        (s.shared_reads, s.shared_writes)
    }

    /// The counter `name` summed over every worker; 0 when never incremented.
    pub fn counter(&self, name: &str) -> u64 {
        self.inner
            .borrow()
            .metric(MetricType::Counter, name)
            .map_or(0, |m| u64::try_from(m.value).unwrap_or(0))
    }

    /// The gauge `name` summed over every worker; 0 when never moved.
    pub fn gauge(&self, name: &str) -> i64 {
        self.inner
            .borrow()
            .metric(MetricType::Gauge, name)
            .map_or(0, |m| m.value)
    }

    /// Every value recorded in histogram `name`, in order.
    pub fn histogram(&self, name: &str) -> Vec<u64> {
        self.inner
            .borrow()
            .metric(MetricType::Histogram, name)
            .map_or_else(Vec::new, |m| m.samples.clone())
    }

    /// Whether a metric `name` of `kind` was defined.
    pub fn defined(&self, kind: MetricType, name: &str) -> bool {
        self.inner.borrow().metric(kind, name).is_some()
    }

    fn read_shared(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, HostStatus> {
        let (result, hook) = {
            let mut s = self.inner.borrow_mut();
            s.shared_reads = s.shared_reads.saturating_add(1);
            if let Some(status) = s.shared_fault {
                return Err(status);
            }
            let result = s.shared.get(key).cloned();
            if let Some(left) = s.contended.get_mut(key) {
                if *left > 0 {
                    *left -= 1;
                    if let Some((value, _)) = &result {
                        let value = value.clone();
                        s.put(key, value);
                    }
                }
            }
            let hook = s
                .after_read
                .iter()
                .position(|(k, _)| k == key)
                .map(|i| s.after_read.remove(i).1);
            (result, hook)
        };
        // The store is not borrowed here: the hook plays another worker on this same store.
        if let Some(hook) = hook {
            hook();
        }
        Ok(result)
    }

    fn write_shared(&self, key: &str, value: &[u8], cas: u32) -> Result<(), HostStatus> {
        let mut s = self.inner.borrow_mut();
        s.shared_writes = s.shared_writes.saturating_add(1);
        if let Some(status) = s.shared_fault {
            return Err(status);
        }
        match s.shared.get(key) {
            Some((_, current)) if cas != 0 && cas != *current => {
                return Err(HostStatus::CAS_MISMATCH);
            }
            None if cas != 0 && s.refuse_tokens_for_missing => {
                return Err(HostStatus::CAS_MISMATCH);
            }
            _ => {}
        }
        s.put(key, value.to_vec());
        Ok(())
    }
}

/// A local reply the filter sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalReply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The gRPC status argument: `Some` for a gRPC answer.
    pub grpc_status: Option<u8>,
}

impl LocalReply {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as text (lossy).
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A callout the filter sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Callout {
    pub token: u32,
    pub cluster: String,
    pub headers: Vec<(String, String)>,
    pub body: Option<Vec<u8>>,
    pub timeout_ms: u64,
}

/// What one worker has that the others do not: its streams and what it sent.
struct WorkerState {
    id: u32,
    maps: HashMap<MapType, Vec<(String, Vec<u8>)>>,
    buffers: HashMap<BufferType, Vec<u8>>,
    properties: HashMap<Vec<String>, Vec<u8>>,
    replies: Vec<LocalReply>,
    reply_refusal: Option<HostStatus>,
    tick_period_ms: Option<u32>,
    streams: HashSet<u32>,
    effective: Option<u32>,
    resumed: Vec<(u32, StreamType)>,
    callouts: Vec<Callout>,
    callout_refusal: Option<CalloutError>,
    next_token: u32,
    calls: u64,
    call_log: Vec<&'static str>,
}

impl WorkerState {
    fn new(id: u32) -> Self {
        WorkerState {
            id,
            maps: HashMap::new(),
            buffers: HashMap::new(),
            properties: HashMap::new(),
            replies: Vec::new(),
            reply_refusal: None,
            tick_period_ms: None,
            streams: HashSet::new(),
            effective: None,
            resumed: Vec::new(),
            callouts: Vec::new(),
            callout_refusal: None,
            next_token: 1,
            calls: 0,
            call_log: Vec::new(),
        }
    }
}

/// One worker of a fake proxy. Cloning it gives another handle to the same worker (for the
/// filter and the test to share); [`FakeStore::worker`] makes another worker.
#[derive(Clone)]
pub struct FakeHost {
    store: FakeStore,
    worker: Rc<RefCell<WorkerState>>,
}

impl FakeHost {
    /// A lone worker on a store of its own.
    pub fn new() -> Self {
        FakeStore::new().worker()
    }

    /// The store this worker shares with the others.
    pub fn store(&self) -> &FakeStore {
        &self.store
    }

    /// This worker's number on its store, from 1.
    pub fn id(&self) -> u32 {
        self.worker.borrow().id
    }

    /// The names of the host calls this worker made since the last call of this (the first
    /// [`CALL_LOG_LIMIT`]), for tests that show what a request costs.
    pub fn take_call_log(&self) -> Vec<&'static str> {
        std::mem::take(&mut self.worker.borrow_mut().call_log)
    }

    /// Host calls this worker has made so far (every [`Host`] method counts one).
    pub fn calls(&self) -> u64 {
        self.worker.borrow().calls
    }

    /// Makes `map` available with exactly `pairs` (replacing what it held).
    pub fn set_map(&self, map: MapType, pairs: &[(&str, &str)]) {
        let pairs = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.as_bytes().to_vec()))
            .collect();
        self.worker.borrow_mut().maps.insert(map, pairs);
    }

    /// Sets header `name` of `map` to the raw `value` (making the map available).
    pub fn set_header_bytes(&self, map: MapType, name: &str, value: &[u8]) {
        let mut w = self.worker.borrow_mut();
        let pairs = w.maps.entry(map).or_default();
        pairs.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
        pairs.push((name.to_owned(), value.to_vec()));
    }

    /// Makes `map` unavailable, as outside its phase.
    pub fn remove_map(&self, map: MapType) {
        self.worker.borrow_mut().maps.remove(&map);
    }

    /// The first value of header `name` of `map` as text (lossy), as the filter left it.
    pub fn header(&self, map: MapType, name: &str) -> Option<String> {
        self.worker.borrow().maps.get(&map).and_then(|pairs| {
            pairs
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        })
    }

    /// Sets the contents of `buffer`.
    pub fn set_buffer(&self, buffer: BufferType, bytes: &[u8]) {
        self.worker
            .borrow_mut()
            .buffers
            .insert(buffer, bytes.to_vec());
    }

    /// Sets property `path` to raw `bytes`.
    pub fn set_property(&self, path: &[&str], bytes: &[u8]) {
        let path = path.iter().map(|p| (*p).to_owned()).collect();
        self.worker
            .borrow_mut()
            .properties
            .insert(path, bytes.to_vec());
    }

    /// Sets property `path` to an integer, encoded as Envoy does (8 bytes little-endian).
    pub fn set_property_u64(&self, path: &[&str], value: u64) {
        self.set_property(path, &value.to_le_bytes());
    }

    /// Removes property `path`.
    pub fn remove_property(&self, path: &[&str]) {
        let path: Vec<String> = path.iter().map(|p| (*p).to_owned()).collect();
        self.worker.borrow_mut().properties.remove(&path);
    }

    /// The local replies sent so far, oldest first.
    pub fn replies(&self) -> Vec<LocalReply> {
        self.worker.borrow().replies.clone()
    }

    /// The local replies sent so far, forgetting them.
    pub fn take_replies(&self) -> Vec<LocalReply> {
        std::mem::take(&mut self.worker.borrow_mut().replies)
    }

    /// Makes local replies answer `status` (`None` to accept them again).
    pub fn refuse_replies(&self, status: Option<HostStatus>) {
        self.worker.borrow_mut().reply_refusal = status;
    }

    /// The last tick period set, if any.
    pub fn tick_period_ms(&self) -> Option<u32> {
        self.worker.borrow().tick_period_ms
    }

    /// Stream `context_id` exists on this worker (it can be made effective and resumed).
    pub fn open_stream(&self, context_id: u32) {
        self.worker.borrow_mut().streams.insert(context_id);
    }

    /// Stream `context_id` is gone (reset by the client, say).
    pub fn close_stream(&self, context_id: u32) {
        let mut w = self.worker.borrow_mut();
        w.streams.remove(&context_id);
        if w.effective == Some(context_id) {
            w.effective = None;
        }
    }

    /// The streams continued so far, oldest first.
    pub fn resumed(&self) -> Vec<(u32, StreamType)> {
        self.worker.borrow().resumed.clone()
    }

    /// The callouts sent so far, oldest first.
    pub fn callouts(&self) -> Vec<Callout> {
        self.worker.borrow().callouts.clone()
    }

    /// Makes callouts fail with `error` (`None` to send them again).
    pub fn refuse_callouts(&self, error: Option<CalloutError>) {
        self.worker.borrow_mut().callout_refusal = error;
    }

    fn count_call(&self, name: &'static str) {
        let mut w = self.worker.borrow_mut();
        w.calls = w.calls.saturating_add(1);
        if w.call_log.len() < CALL_LOG_LIMIT {
            w.call_log.push(name);
        }
    }
}

impl Default for FakeHost {
    fn default() -> Self {
        Self::new()
    }
}

impl Host for FakeHost {
    fn current_time_ns(&self) -> Result<u64, HostStatus> {
        self.count_call("current_time_ns");
        Ok(self.store.inner.borrow().now_ns)
    }

    fn set_tick_period_ms(&self, ms: u32) -> Result<(), HostStatus> {
        self.count_call("set_tick_period_ms");
        self.worker.borrow_mut().tick_period_ms = Some(ms);
        Ok(())
    }

    fn get_shared_data(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, HostStatus> {
        self.count_call("get_shared_data");
        self.store.read_shared(key)
    }

    fn set_shared_data(&self, key: &str, value: &[u8], cas: u32) -> Result<(), HostStatus> {
        self.count_call("set_shared_data");
        self.store.write_shared(key, value, cas)
    }

    fn get_header_map_value(
        &self,
        map: MapType,
        name: &str,
    ) -> Result<Option<Vec<u8>>, HostStatus> {
        self.count_call("get_header_map_value");
        let w = self.worker.borrow();
        let pairs = w.maps.get(&map).ok_or(HostStatus::BAD_ARGUMENT)?;
        Ok(pairs
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone()))
    }

    fn get_header_map_pairs(&self, map: MapType) -> Result<Option<Vec<u8>>, HostStatus> {
        self.count_call("get_header_map_pairs");
        let w = self.worker.borrow();
        let pairs = w.maps.get(&map).ok_or(HostStatus::BAD_ARGUMENT)?;
        Ok(Some(serialize_map(pairs)))
    }

    fn replace_header_map_value(
        &self,
        map: MapType,
        name: &str,
        value: &str,
    ) -> Result<(), HostStatus> {
        self.count_call("replace_header_map_value");
        let mut w = self.worker.borrow_mut();
        let pairs = w.maps.get_mut(&map).ok_or(HostStatus::BAD_ARGUMENT)?;
        pairs.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
        pairs.push((name.to_owned(), value.as_bytes().to_vec()));
        Ok(())
    }

    fn remove_header_map_value(&self, map: MapType, name: &str) -> Result<(), HostStatus> {
        self.count_call("remove_header_map_value");
        let mut w = self.worker.borrow_mut();
        let pairs = w.maps.get_mut(&map).ok_or(HostStatus::BAD_ARGUMENT)?;
        pairs.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
        Ok(())
    }

    fn get_buffer(
        &self,
        buffer: BufferType,
        start: usize,
        max_size: usize,
    ) -> Result<Option<Vec<u8>>, HostStatus> {
        self.count_call("get_buffer");
        let w = self.worker.borrow();
        Ok(w.buffers
            .get(&buffer)
            .map(|bytes| bytes.iter().skip(start).take(max_size).copied().collect()))
    }

    fn get_property(&self, path: &[&str]) -> Result<Option<Vec<u8>>, HostStatus> {
        self.count_call("get_property");
        let w = self.worker.borrow();
        Ok(w.properties
            .iter()
            .find(|(k, _)| k.iter().map(String::as_str).eq(path.iter().copied()))
            .map(|(_, v)| v.clone()))
    }

    fn send_local_response(
        &self,
        status: u16,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<(), HostStatus> {
        self.count_call("send_local_response");
        let mut w = self.worker.borrow_mut();
        if let Some(refusal) = w.reply_refusal {
            return Err(refusal);
        }
        w.replies.push(LocalReply {
            status,
            headers: headers
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            body: body.to_vec(),
            grpc_status: None,
        });
        Ok(())
    }

    fn send_grpc_local_response(
        &self,
        headers: &[(&str, &str)],
        code: u8,
    ) -> Result<(), HostStatus> {
        self.count_call("send_grpc_local_response");
        let mut w = self.worker.borrow_mut();
        if let Some(refusal) = w.reply_refusal {
            return Err(refusal);
        }
        w.replies.push(LocalReply {
            status: 200,
            headers: headers
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            body: Vec::new(),
            grpc_status: Some(code),
        });
        Ok(())
    }

    fn define_metric(&self, kind: MetricType, name: &str) -> Result<u32, HostStatus> {
        self.count_call("define_metric");
        let mut s = self.store.inner.borrow_mut();
        let index = match s
            .metrics
            .iter()
            .position(|m| m.kind == kind && m.name == name)
        {
            Some(i) => i,
            None => {
                s.metrics.push(Metric {
                    kind,
                    name: name.to_owned(),
                    value: 0,
                    samples: Vec::new(),
                });
                s.metrics.len().saturating_sub(1)
            }
        };
        // Ids from 1, so that 0 is never a valid one.
        u32::try_from(index.saturating_add(1)).map_err(|_| HostStatus::BAD_ARGUMENT)
    }

    fn increment_metric(&self, id: u32, offset: i64) -> Result<(), HostStatus> {
        self.count_call("increment_metric");
        let mut s = self.store.inner.borrow_mut();
        let index = usize::try_from(id.saturating_sub(1)).unwrap_or(usize::MAX);
        let metric = match s.metrics.get_mut(index) {
            Some(m) if id > 0 => m,
            _ => return Err(HostStatus::NOT_FOUND),
        };
        match metric.kind {
            MetricType::Counter if offset > 0 => {}
            MetricType::Gauge => {}
            _ => return Err(HostStatus::BAD_ARGUMENT),
        }
        metric.value = metric.value.saturating_add(offset);
        Ok(())
    }

    fn record_metric(&self, id: u32, value: u64) -> Result<(), HostStatus> {
        self.count_call("record_metric");
        let mut s = self.store.inner.borrow_mut();
        let index = usize::try_from(id.saturating_sub(1)).unwrap_or(usize::MAX);
        match s.metrics.get_mut(index) {
            Some(m) if id > 0 && m.kind == MetricType::Histogram => {
                m.samples.push(value);
                Ok(())
            }
            Some(_) if id > 0 => Err(HostStatus::BAD_ARGUMENT),
            _ => Err(HostStatus::NOT_FOUND),
        }
    }

    fn set_effective_context(&self, context_id: u32) -> Result<(), HostStatus> {
        self.count_call("set_effective_context");
        let mut w = self.worker.borrow_mut();
        if w.streams.contains(&context_id) {
            w.effective = Some(context_id);
            Ok(())
        } else {
            Err(HostStatus::BAD_ARGUMENT)
        }
    }

    fn continue_stream(&self, stream: StreamType) -> Result<(), HostStatus> {
        self.count_call("continue_stream");
        let mut w = self.worker.borrow_mut();
        match w.effective {
            Some(id) => {
                w.resumed.push((id, stream));
                Ok(())
            }
            None => Err(HostStatus::BAD_ARGUMENT),
        }
    }

    fn dispatch_http_call(
        &self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
        timeout_ms: u64,
    ) -> Result<u32, CalloutError> {
        self.count_call("dispatch_http_call");
        let mut w = self.worker.borrow_mut();
        if let Some(error) = w.callout_refusal {
            return Err(error);
        }
        let token = w.next_token;
        w.next_token = w.next_token.saturating_add(1);
        w.callouts.push(Callout {
            token,
            cluster: cluster.to_owned(),
            headers: headers
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            body: body.map(<[u8]>::to_vec),
            timeout_ms,
        });
        Ok(token)
    }
}

/// A header map in the proxy-wasm pairs format (see [`crate::stream::parse_header_map`]).
fn serialize_map(pairs: &[(String, Vec<u8>)]) -> Vec<u8> {
    let len32 = |n: usize| u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes();
    let mut out = Vec::new();
    out.extend_from_slice(&len32(pairs.len()));
    for (k, v) in pairs {
        out.extend_from_slice(&len32(k.len()));
        out.extend_from_slice(&len32(v.len()));
    }
    for (k, v) in pairs {
        out.extend_from_slice(k.as_bytes());
        out.push(0);
        out.extend_from_slice(v);
        out.push(0);
    }
    out
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use resilience_core::problem::Problem;

    use super::*;
    use crate::metrics::Metrics;
    use crate::resume::{resume_on, Resumed};
    use crate::shared::{
        cas_update_on, get_on, set_on, SharedError, Update, Written, DEFAULT_CAS_ATTEMPTS,
    };
    use crate::{clock, props, reply, request};

    #[test]
    fn a_write_with_a_stale_token_fails_with_the_hosts_cas_mismatch_and_changes_nothing() {
        let host = FakeHost::new();
        host.set_shared_data("k", b"one", 0).unwrap();
        let (_, stale) = host.get_shared_data("k").unwrap().unwrap();
        host.set_shared_data("k", b"two", stale).unwrap();
        assert_eq!(
            host.set_shared_data("k", b"three", stale),
            Err(HostStatus::CAS_MISMATCH)
        );
        assert_eq!(host.store().get("k").unwrap(), b"two");
        assert_eq!(
            set_on(&host, "k", b"three", stale),
            Ok(Written::CasMismatch)
        );
    }

    #[test]
    fn every_write_gets_a_new_token_from_one_counter_for_all_keys() {
        let host = FakeHost::new();
        host.set_shared_data("a", b"1", 0).unwrap();
        let a1 = host.store().cas("a").unwrap();
        host.set_shared_data("b", b"1", 0).unwrap();
        host.set_shared_data("a", b"1", a1).unwrap();
        let a2 = host.store().cas("a").unwrap();
        let b = host.store().cas("b").unwrap();
        assert!(a1 != 0 && a1 < b && b < a2, "{a1} {b} {a2}");
    }

    #[test]
    fn the_token_counter_skips_zero_when_it_wraps() {
        let store = FakeStore::new();
        store.inner.borrow_mut().next_cas = u32::MAX;
        assert_eq!(store.put("k", b"x"), u32::MAX);
        assert_eq!(store.put("k", b"y"), 1);
    }

    #[test]
    fn token_zero_and_keys_that_do_not_exist_yet_write_unconditionally() {
        let host = FakeHost::new();
        // As in Envoy: a missing key reads as absent, and any token creates it.
        assert_eq!(host.get_shared_data("k"), Ok(None));
        host.set_shared_data("k", b"created", 12345).unwrap();
        host.set_shared_data("k", b"overwritten", 0).unwrap();
        assert_eq!(host.store().get("k").unwrap(), b"overwritten");
        let v = get_on(&host, "missing").unwrap();
        assert_eq!((v.value, v.cas), (None, 0));
    }

    #[test]
    fn an_empty_value_reads_back_as_no_value_with_its_token() {
        let host = FakeHost::new();
        host.set_shared_data("k", b"", 0).unwrap();
        let v = get_on(&host, "k").unwrap();
        assert_eq!(v.value, None);
        assert_eq!(Some(v.cas), host.store().cas("k"));
    }

    #[test]
    fn workers_of_one_store_share_data_and_workers_of_two_stores_do_not() {
        let store = FakeStore::new();
        let (one, two) = (store.worker(), store.worker());
        let elsewhere = FakeHost::new();
        one.set_shared_data("k", b"v", 0).unwrap();
        assert_eq!(two.get_shared_data("k").unwrap().unwrap().0, b"v");
        assert_eq!(elsewhere.get_shared_data("k"), Ok(None));
        assert_ne!(one.id(), two.id());
    }

    #[test]
    fn cas_update_starts_again_from_a_fresh_read_when_another_write_lands_in_between() {
        let store = FakeStore::new();
        let (one, two) = (store.worker(), store.worker());
        one.set_shared_data("n", b"1", 0).unwrap();
        // Worker two increments right after worker one's first read.
        let racer = two.clone();
        store.after_next_read("n", move || {
            let r = cas_update_on(&racer, "n", 1, |_| Update::Write(b"2".to_vec(), ()));
            assert_eq!(r, Ok(()));
        });
        let runs = Cell::new(0);
        let seen = cas_update_on(&one, "n", DEFAULT_CAS_ATTEMPTS, |cur| {
            runs.set(runs.get() + 1);
            let n: u8 = cur.map_or(0, |b| b[0] - b'0');
            Update::Write(vec![b'0' + n + 1], n)
        })
        .unwrap();
        assert_eq!((seen, runs.get()), (2, 2));
        assert_eq!(store.get("n").unwrap(), b"3");
    }

    #[test]
    fn two_workers_that_create_a_key_at_once_both_land_their_update() {
        let store = FakeStore::new();
        let (one, two) = (store.worker(), store.worker());
        // Worker two creates the key right after worker one read it as missing.
        let racer = two.clone();
        store.after_next_read("n", move || {
            let r = cas_update_on(&racer, "n", 1, |cur| {
                assert_eq!(cur, None);
                Update::Write(b"1".to_vec(), ())
            });
            assert_eq!(r, Ok(()));
        });
        let runs = Cell::new(0);
        cas_update_on(&one, "n", DEFAULT_CAS_ATTEMPTS, |cur| {
            runs.set(runs.get() + 1);
            let n: u8 = cur.map_or(0, |b| b[0] - b'0');
            Update::Write(vec![b'0' + n + 1], ())
        })
        .unwrap();
        assert_eq!(runs.get(), 2, "worker one's create lost and started again");
        assert_eq!(store.get("n").unwrap(), b"2");
    }

    #[test]
    fn on_a_host_that_refuses_tokens_for_missing_keys_a_create_still_lands() {
        let host = FakeHost::new();
        host.store().refuse_tokens_for_missing_keys(true);
        let r = cas_update_on(&host, "k", DEFAULT_CAS_ATTEMPTS, |_| {
            Update::Write(b"v".to_vec(), ())
        });
        assert_eq!(r, Ok(()));
        assert_eq!(host.store().get("k").unwrap(), b"v");
        assert_eq!(host.store().shared_calls(), (2, 2));
    }

    #[test]
    fn cas_update_gives_up_as_contended_when_every_attempt_loses() {
        let host = FakeHost::new();
        host.set_shared_data("k", b"v", 0).unwrap();
        host.store().contend("k", 3);
        let r = cas_update_on(&host, "k", 3, |_| Update::Write(b"mine".to_vec(), ()));
        assert_eq!(r, Err(SharedError::Contended));
        assert_eq!(host.store().get("k").unwrap(), b"v");
        // The contention is over: the next update wins at once.
        let r = cas_update_on(&host, "k", 1, |_| Update::Write(b"mine".to_vec(), ()));
        assert_eq!(r, Ok(()));
    }

    #[test]
    fn a_refused_shared_data_call_is_a_host_error_the_caller_sees() {
        let host = FakeHost::new();
        host.store().fail_shared_data(Some(HostStatus(10)));
        assert!(matches!(get_on(&host, "k"), Err(SharedError::Host(10))));
        assert!(matches!(
            set_on(&host, "k", b"v", 0),
            Err(SharedError::Host(10))
        ));
        host.store().fail_shared_data(None);
        assert!(get_on(&host, "k").is_ok());
        assert_eq!(host.store().shared_calls(), (2, 1));
    }

    #[test]
    fn metrics_from_every_worker_add_up_by_name_and_counters_refuse_to_go_down() {
        let store = FakeStore::new();
        let (one, two) = (store.worker(), store.worker());
        let (mut m1, mut m2) = (Metrics::on(one.clone()), Metrics::on(two));
        m1.count("reqs", 2);
        m2.count("reqs", 3);
        m1.gauge_add("state", 2);
        m2.gauge_add("state", -1);
        assert_eq!((store.counter("reqs"), store.gauge("state")), (5, 1));
        let id = one.define_metric(MetricType::Counter, "reqs").unwrap();
        assert_eq!(one.increment_metric(id, -1), Err(HostStatus::BAD_ARGUMENT));
        assert_eq!(one.increment_metric(999, 1), Err(HostStatus::NOT_FOUND));
        let h = one.define_metric(MetricType::Histogram, "latency").unwrap();
        one.record_metric(h, 7).unwrap();
        assert_eq!(store.histogram("latency"), vec![7]);
    }

    #[test]
    fn the_clock_is_the_stores_and_moves_only_when_the_test_says() {
        let store = FakeStore::new();
        let (one, two) = (store.worker(), store.worker());
        assert_eq!(clock::now_ms_on(&one), START_MS);
        store.advance_ms(1_500);
        assert_eq!(clock::now_ms_on(&two), START_MS + 1_500);
    }

    #[test]
    fn a_map_the_test_did_not_set_is_unavailable_and_a_set_one_answers_by_name() {
        let host = FakeHost::new();
        assert_eq!(
            host.get_header_map_value(MapType::HttpResponseHeaders, ":status"),
            Err(HostStatus::BAD_ARGUMENT)
        );
        assert_eq!(request::response_status_on(&host), None);
        host.set_map(MapType::HttpResponseHeaders, &[(":status", "503")]);
        host.set_header_bytes(MapType::HttpResponseHeaders, "X-Bin", b"\xff");
        assert_eq!(request::response_status_on(&host), Some(503));
        assert_eq!(
            request::map_value_on(&host, MapType::HttpResponseHeaders, "x-bin"),
            Some(vec![0xff])
        );
        assert!(request::set_header_on(
            &host,
            MapType::HttpResponseHeaders,
            "x-decision",
            "open"
        ));
        assert_eq!(
            host.header(MapType::HttpResponseHeaders, "x-decision")
                .as_deref(),
            Some("open")
        );
        assert!(!request::set_header_on(
            &host,
            MapType::HttpRequestTrailers,
            "x",
            "y"
        ));
        let pairs = host
            .get_header_map_pairs(MapType::HttpResponseHeaders)
            .unwrap();
        assert_eq!(
            crate::stream::parse_header_map(&pairs.unwrap())
                .unwrap()
                .len(),
            3
        );
    }

    #[test]
    fn properties_read_back_typed_as_envoy_encodes_them() {
        let host = FakeHost::new();
        host.set_property_u64(&["response", "code"], 503);
        host.set_property(&["xds", "cluster_name"], b"orders");
        assert_eq!(props::u64_on(&host, &["response", "code"]), Some(503));
        assert_eq!(props::cluster_name_on(&host).as_deref(), Some("orders"));
        assert_eq!(props::route_name_on(&host), None);
    }

    #[test]
    fn local_replies_are_recorded_and_a_refused_one_is_reported() {
        let host = FakeHost::new();
        let problem = Problem {
            status: 503,
            kind: "circuit-open",
            title: "Circuit breaker open",
            detail: "down".to_owned(),
            extensions: Vec::new(),
        };
        let refusal = resilience_core::grpc::Refusal::new(
            resilience_core::grpc::Code::Unavailable,
            "circuit_breaker",
            "failure_rate",
        );
        assert!(reply::send_problem_on(
            &host,
            &problem,
            &refusal,
            &[("retry-after", "2")]
        ));
        let replies = host.take_replies();
        assert_eq!(replies.len(), 1);
        assert_eq!(replies[0].status, 503);
        assert_eq!(replies[0].header("retry-after"), Some("2"));
        assert!(replies[0].body_text().contains("circuit-open"));
        host.refuse_replies(Some(HostStatus::BAD_ARGUMENT));
        assert!(!reply::send_on(&host, 503, &[], b""));
        assert!(!reply::send_grpc_on(&host, &problem, &refusal, &[]));
        assert!(host.replies().is_empty());
    }

    #[test]
    fn resuming_a_stream_that_is_gone_says_gone() {
        let host = FakeHost::new();
        host.open_stream(7);
        assert_eq!(
            resume_on(&host, 7, StreamType::HttpResponse),
            Resumed::Continued
        );
        host.close_stream(7);
        assert_eq!(resume_on(&host, 7, StreamType::HttpResponse), Resumed::Gone);
        assert_eq!(host.resumed(), vec![(7, StreamType::HttpResponse)]);
    }

    #[test]
    fn callouts_are_recorded_with_their_tokens_or_refused_as_asked() {
        let host = FakeHost::new();
        let headers = [(":method", "GET"), (":path", "/"), (":authority", "a")];
        assert_eq!(
            crate::callout::send_on(&host, "c", &headers, None, 100),
            Ok(1)
        );
        host.refuse_callouts(Some(CalloutError::BadArgument));
        assert_eq!(
            crate::callout::send_on(&host, "c", &headers, None, 100),
            Err(CalloutError::BadArgument)
        );
        assert_eq!(host.callouts().len(), 1);
        assert_eq!(host.callouts()[0].cluster, "c");
    }
}
