//! Several filters as stages of one module: one chain of HTTP contexts, one timer, one read of
//! each fact.
//!
//! Why: five filters as five modules cost five VMs per worker and five crossings of the wasm
//! boundary per callback, and each reads the same route name, `:status` and clock through its own
//! host calls. Run as stages of one module, the filters keep their own code (each stage is the
//! filter's own HTTP context and worker, generic over its [`Host`]) and share what can be shared:
//!
//! - **One chain** ([`Chain`]): the request hooks run the stages in order, the response hooks in
//!   reverse order (as Envoy runs a filter chain). A stage that answers locally ends the request
//!   there: later stages never see it, and on the way back only the stages that saw the request
//!   see the reply. A stage that holds the request (the validator waiting for a body) holds the
//!   whole chain; the stages after it see the request headers once it lets go, still before the
//!   request leaves. A stage that holds the response (padding) does not stop the others from
//!   observing it: they see the response when it arrives, and the client sees it when the stage
//!   lets go.
//! - **One timer** ([`Stages`]): each stage keeps asking for "tick every N ms" as it did alone
//!   (through [`StageHost::set_tick_period_ms`]); the module's one timer is armed for whichever
//!   stage is due first, and the root ticks only the stages that are due ([`Stages::due`]).
//! - **One read of each fact**: header values, properties and the clock read through a
//!   [`StageHost`] are kept for the rest of the callback, so the second stage asking for
//!   `:status` or the route name pays no host call. The cache is emptied at every callback
//!   ([`Stages::begin`]), when a header map it holds is changed, and when the effective context
//!   changes.
//! - **Who answered**: a stage's local reply is seen by the chain ([`Stages::take_answered`]), so
//!   the chain knows a paused stage answered rather than held.
//!
//! Callouts keep their owner: a callout's token is remembered with the stage that sent it
//! ([`Stages::callout_owner`]), so its answer goes back to that stage.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, BufferType, MapType, MetricType, StreamType};

use crate::abi::HostStatus;
use crate::callout::CalloutError;
use crate::host::Host;
use crate::stream::HeaderMap;

/// Most stages one module runs (the pack has five).
pub const MAX_STAGES: usize = 8;

/// Most callouts remembered at once; an answer to a forgotten one is dropped (counted by the
/// stage as a callout that never came back, as a timeout would be).
const MAX_CALLOUTS: usize = 1024;

/// One stage's wish for the timer.
#[derive(Clone, Copy, Debug, Default)]
struct Timer {
    period_ms: u64,
    due_ms: u64,
}

/// What the stages of one worker share: the timer, the facts of the current callback, who
/// answered, and callout owners. One per worker (VM), behind an `Rc` every [`StageHost`] holds.
#[derive(Debug, Default)]
pub struct Stages {
    timers: RefCell<[Option<Timer>; MAX_STAGES]>,
    armed_ms: Cell<u32>,
    /// Inside the root's tick: timer changes are applied once, when it ends.
    ticking: Cell<bool>,
    answered: Cell<bool>,
    callouts: RefCell<Vec<(u32, u8)>>,
    facts: RefCell<Facts>,
}

#[derive(Debug, Default)]
struct Facts {
    now_ns: Option<u64>,
    headers: Vec<(MapType, Box<str>, Option<Vec<u8>>)>,
    /// Whole header maps a stage read (the validator reads the request's): later single-header
    /// reads of that map are answered from them, after `headers` (which holds the edits).
    maps: Vec<(MapType, HeaderMap)>,
    /// Keyed by the path's segments joined with NUL (no segment contains one).
    properties: Vec<(Box<str>, Option<Vec<u8>>)>,
}

impl Facts {
    fn clear(&mut self) {
        self.now_ns = None;
        self.headers.clear();
        self.maps.clear();
        self.properties.clear();
    }
}

fn same_path(key: &str, path: &[&str]) -> bool {
    key.split('\0').eq(path.iter().copied())
}

impl Stages {
    pub fn new() -> Rc<Self> {
        Rc::new(Stages::default())
    }

    /// A callback began: what was read in the last one may have changed.
    pub fn begin(&self) {
        self.facts.borrow_mut().clear();
        self.answered.set(false);
    }

    /// Whether a stage sent a local reply since the last call; resets the flag.
    pub fn take_answered(&self) -> bool {
        self.answered.replace(false)
    }

    /// Stage `stage` wants a tick every `period_ms` from `now_ms` on (at configuration).
    pub fn start_timer(&self, stage: usize, period_ms: u64, now_ms: u64) {
        if let Some(t) = self.timers.borrow_mut().get_mut(stage) {
            *t = Some(Timer {
                period_ms: period_ms.max(1),
                due_ms: now_ms.saturating_add(period_ms.max(1)),
            });
        }
    }

    /// The root's tick began at `now_ms`: the stages due now, in order. Call [`Self::end_tick`]
    /// after ticking them.
    pub fn due(&self, now_ms: u64) -> impl Iterator<Item = usize> {
        self.ticking.set(true);
        let timers = *self.timers.borrow();
        (0..MAX_STAGES).filter(move |&i| {
            timers
                .get(i)
                .copied()
                .flatten()
                .is_some_and(|t| t.due_ms <= now_ms)
        })
    }

    /// The tick is over: stages that ticked and did not re-arm themselves are due a period from
    /// now; the timer is armed for the first stage due. False when the host refused the timer.
    pub fn end_tick<H: Host>(&self, host: &H, now_ms: u64) -> bool {
        self.ticking.set(false);
        for t in self.timers.borrow_mut().iter_mut().flatten() {
            if t.due_ms <= now_ms {
                t.due_ms = now_ms.saturating_add(t.period_ms);
            }
        }
        self.arm(host, now_ms).is_ok()
    }

    /// Arms the host's timer for the first stage due (one host call, only when it changes).
    fn arm<H: Host>(&self, host: &H, now_ms: u64) -> Result<(), HostStatus> {
        let next = self
            .timers
            .borrow()
            .iter()
            .flatten()
            .map(|t| t.due_ms)
            .min();
        let Some(next) = next else {
            return Ok(());
        };
        let ms = u32::try_from(next.saturating_sub(now_ms).max(1)).unwrap_or(u32::MAX);
        if ms == self.armed_ms.get() {
            return Ok(());
        }
        host.set_tick_period_ms(ms)?;
        self.armed_ms.set(ms);
        Ok(())
    }

    /// Starts the timer at configuration, once every stage said what it wants.
    pub fn arm_at_start<H: Host>(&self, host: &H, now_ms: u64) -> bool {
        self.armed_ms.set(0);
        self.arm(host, now_ms).is_ok()
    }

    /// Which stage sent the callout `token` (forgetting it: an answer comes once).
    pub fn callout_owner(&self, token: u32) -> Option<usize> {
        let mut callouts = self.callouts.borrow_mut();
        let at = callouts.iter().position(|(t, _)| *t == token)?;
        Some(usize::from(callouts.swap_remove(at).1))
    }

    fn note_callout(&self, token: u32, stage: u8) {
        let mut callouts = self.callouts.borrow_mut();
        if callouts.len() >= MAX_CALLOUTS {
            callouts.remove(0);
        }
        callouts.push((token, stage));
    }
}

/// The host as one stage sees it: the module's host (`H`), plus what the stages share.
#[derive(Clone, Debug)]
pub struct StageHost<H> {
    inner: H,
    stage: u8,
    stages: Rc<Stages>,
}

impl<H: Host> StageHost<H> {
    /// Stage number `stage` (its place in the chain) on `inner`.
    pub fn new(inner: H, stage: usize, stages: Rc<Stages>) -> Self {
        StageHost {
            inner,
            stage: u8::try_from(stage).unwrap_or(u8::MAX),
            stages,
        }
    }

    fn now_ns(&self) -> Result<u64, HostStatus> {
        if let Some(ns) = self.stages.facts.borrow().now_ns {
            return Ok(ns);
        }
        let ns = self.inner.current_time_ns()?;
        self.stages.facts.borrow_mut().now_ns = Some(ns);
        Ok(ns)
    }

    /// A stage set (`Some`) or removed (`None`) header `name` of `map`: what is known of the
    /// header is brought up to date as the host changed it (the first value replaced and the
    /// others dropped, or every value dropped), so the next stage's reads still cost no call.
    /// A whole map read before stays as it was: `headers` is consulted first.
    fn learn_edit(&self, map: MapType, name: &str, value: Option<&[u8]>) {
        let mut facts = self.stages.facts.borrow_mut();
        let known = facts
            .headers
            .iter_mut()
            .find(|(m, n, _)| *m == map && n.eq_ignore_ascii_case(name));
        match known {
            Some((_, _, v)) => *v = value.map(<[u8]>::to_vec),
            None => facts
                .headers
                .push((map, name.into(), value.map(<[u8]>::to_vec))),
        }
    }

    fn forget_map(&self, map: MapType) {
        let mut facts = self.stages.facts.borrow_mut();
        facts.headers.retain(|(m, _, _)| *m != map);
        facts.maps.retain(|(m, _)| *m != map);
    }
}

impl<H: Host> Host for StageHost<H> {
    fn current_time_ns(&self) -> Result<u64, HostStatus> {
        self.now_ns()
    }

    /// A stage's timer wish; the host's timer is armed for the first stage due.
    fn set_tick_period_ms(&self, ms: u32) -> Result<(), HostStatus> {
        let now_ms = self.now_ns()? / 1_000_000;
        self.stages
            .start_timer(usize::from(self.stage), u64::from(ms), now_ms);
        if self.stages.ticking.get() {
            return Ok(());
        }
        self.stages.arm(&self.inner, now_ms)
    }

    fn get_shared_data(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, HostStatus> {
        self.inner.get_shared_data(key)
    }

    fn set_shared_data(&self, key: &str, value: &[u8], cas: u32) -> Result<(), HostStatus> {
        self.inner.set_shared_data(key, value, cas)
    }

    fn get_header_map_value(
        &self,
        map: MapType,
        name: &str,
    ) -> Result<Option<Vec<u8>>, HostStatus> {
        if let Some(known) = self.known_header_map_value(map, name) {
            return Ok(known);
        }
        let value = self.inner.get_header_map_value(map, name)?;
        self.stages
            .facts
            .borrow_mut()
            .headers
            .push((map, name.into(), value.clone()));
        Ok(value)
    }

    /// What a stage read in this callback: the header itself, or the whole map.
    fn known_header_map_value(&self, map: MapType, name: &str) -> Option<Option<Vec<u8>>> {
        let facts = self.stages.facts.borrow();
        // Names compared without case, as the host compares them.
        if let Some((_, _, v)) = facts
            .headers
            .iter()
            .find(|(m, n, _)| *m == map && n.eq_ignore_ascii_case(name))
        {
            return Some(v.clone());
        }
        let (_, pairs) = facts.maps.iter().find(|(m, _)| *m == map)?;
        // As the host answers: the first value of the name.
        Some(
            pairs
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name.as_bytes()))
                .map(|(_, v)| v.to_vec()),
        )
    }

    fn get_header_map_pairs(&self, map: MapType) -> Result<Option<Vec<u8>>, HostStatus> {
        let bytes = self.inner.get_header_map_pairs(map)?;
        if let Some(pairs) = bytes.clone().and_then(HeaderMap::parse) {
            let mut facts = self.stages.facts.borrow_mut();
            facts.maps.retain(|(m, _)| *m != map);
            facts.maps.push((map, pairs));
        }
        Ok(bytes)
    }

    fn replace_header_map_value(
        &self,
        map: MapType,
        name: &str,
        value: &str,
    ) -> Result<(), HostStatus> {
        let done = self.inner.replace_header_map_value(map, name, value);
        match done {
            Ok(()) => self.learn_edit(map, name, Some(value.as_bytes())),
            Err(_) => self.forget_map(map),
        }
        done
    }

    fn remove_header_map_value(&self, map: MapType, name: &str) -> Result<(), HostStatus> {
        let done = self.inner.remove_header_map_value(map, name);
        match done {
            Ok(()) => self.learn_edit(map, name, None),
            Err(_) => self.forget_map(map),
        }
        done
    }

    fn get_buffer(
        &self,
        buffer: BufferType,
        start: usize,
        max_size: usize,
    ) -> Result<Option<Vec<u8>>, HostStatus> {
        self.inner.get_buffer(buffer, start, max_size)
    }

    fn get_property(&self, path: &[&str]) -> Result<Option<Vec<u8>>, HostStatus> {
        if let Some((_, v)) = self
            .stages
            .facts
            .borrow()
            .properties
            .iter()
            .find(|(k, _)| same_path(k, path))
        {
            return Ok(v.clone());
        }
        let value = self.inner.get_property(path)?;
        self.stages
            .facts
            .borrow_mut()
            .properties
            .push((path.join("\0").into(), value.clone()));
        Ok(value)
    }

    fn send_local_response(
        &self,
        status: u16,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<(), HostStatus> {
        self.stages.answered.set(true);
        self.stages.facts.borrow_mut().clear();
        self.inner.send_local_response(status, headers, body)
    }

    fn send_grpc_local_response(
        &self,
        headers: &[(&str, &str)],
        code: u8,
    ) -> Result<(), HostStatus> {
        self.stages.answered.set(true);
        self.stages.facts.borrow_mut().clear();
        self.inner.send_grpc_local_response(headers, code)
    }

    fn define_metric(&self, kind: MetricType, name: &str) -> Result<u32, HostStatus> {
        self.inner.define_metric(kind, name)
    }

    fn increment_metric(&self, id: u32, offset: i64) -> Result<(), HostStatus> {
        self.inner.increment_metric(id, offset)
    }

    fn record_metric(&self, id: u32, value: u64) -> Result<(), HostStatus> {
        self.inner.record_metric(id, value)
    }

    fn set_effective_context(&self, context_id: u32) -> Result<(), HostStatus> {
        // Another stream's headers from now on.
        self.stages.facts.borrow_mut().clear();
        self.inner.set_effective_context(context_id)
    }

    fn continue_stream(&self, stream: StreamType) -> Result<(), HostStatus> {
        self.stages.facts.borrow_mut().clear();
        self.inner.continue_stream(stream)
    }

    fn dispatch_http_call(
        &self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
        timeout_ms: u64,
    ) -> Result<u32, CalloutError> {
        let token = self
            .inner
            .dispatch_http_call(cluster, headers, body, timeout_ms)?;
        self.stages.note_callout(token, self.stage);
        Ok(token)
    }
}

/// One stage's stream as the chain calls it: the HTTP callbacks a filter implements, and only
/// those. (Not `dyn HttpContext`, whose table would also hold the SDK's host-call helpers.)
pub trait Hooks {
    fn request_headers(&mut self, num_headers: usize, end_of_stream: bool) -> Action;
    fn request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action;
    fn request_trailers(&mut self, num_trailers: usize) -> Action;
    fn response_headers(&mut self, num_headers: usize, end_of_stream: bool) -> Action;
    fn response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action;
    fn response_trailers(&mut self, num_trailers: usize) -> Action;
    fn log(&mut self);
    /// See [`Stage::later_stage_answered`].
    fn later_stage_answered(&mut self);
}

/// A filter's HTTP context as a stage: what it learns only because it runs in a chain.
pub trait Stage: HttpContext {
    /// A stage after this one answered the request locally, before it left the module. Its
    /// reply (a shed, an open breaker's 503) is not an outcome of the upstream, so a stage that
    /// classifies outcomes must not count it: as separate filters, the breaker would count slow
    /// start's 503 sheds as the dependency's failures and trip on them. Default: nothing to do.
    fn later_stage_answered(&mut self) {}
}

impl<T: Stage> Hooks for T {
    fn request_headers(&mut self, num_headers: usize, end_of_stream: bool) -> Action {
        self.on_http_request_headers(num_headers, end_of_stream)
    }
    fn request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        self.on_http_request_body(body_size, end_of_stream)
    }
    fn request_trailers(&mut self, num_trailers: usize) -> Action {
        self.on_http_request_trailers(num_trailers)
    }
    fn response_headers(&mut self, num_headers: usize, end_of_stream: bool) -> Action {
        self.on_http_response_headers(num_headers, end_of_stream)
    }
    fn response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        self.on_http_response_body(body_size, end_of_stream)
    }
    fn response_trailers(&mut self, num_trailers: usize) -> Action {
        self.on_http_response_trailers(num_trailers)
    }
    fn log(&mut self) {
        self.on_log();
    }
    fn later_stage_answered(&mut self) {
        Stage::later_stage_answered(self);
    }
}

/// The stages of one stream, in chain order. Implemented by the module that hosts them.
pub trait StageSet {
    /// How many places the chain has (a place may be empty: a stage that is off).
    const LEN: usize;

    /// The stream of stage `index`, if that stage is on.
    fn stage(&mut self, index: usize) -> Option<&mut dyn Hooks>;
}

/// One stream through the stages of `S`: the HTTP context of a module that hosts several filters.
/// See the module docs for the rules.
pub struct Chain<S: StageSet> {
    stages: S,
    shared: Rc<Stages>,
    /// Stages `0..reached` saw the request headers.
    reached: usize,
    /// The stage holding the request at its headers (not answered).
    held_at: Option<usize>,
    num_headers: usize,
}

impl<S: StageSet> Chain<S> {
    pub fn new(stages: S, shared: Rc<Stages>) -> Self {
        Chain {
            stages,
            shared,
            reached: 0,
            held_at: None,
            num_headers: 0,
        }
    }

    /// Request headers through stages `from..`; stops at a stage that answers or holds.
    fn request_headers_from(&mut self, from: usize, end_of_stream: bool) -> Action {
        for i in from..S::LEN {
            let Some(stage) = self.stages.stage(i) else {
                continue;
            };
            let action = stage.request_headers(self.num_headers, end_of_stream);
            self.reached = i + 1;
            if self.shared.take_answered() {
                self.tell_earlier_stages_of_answer(i);
                return Action::Pause;
            }
            if action == Action::Pause {
                self.held_at = Some(i);
                return Action::Pause;
            }
        }
        Action::Continue
    }

    /// A request callback after the headers (body or trailers) through the stages that saw the
    /// headers; when the stage holding the headers lets go, the rest see them.
    fn request_rest(&mut self, mut hook: impl FnMut(&mut dyn Hooks) -> Action) -> Action {
        for i in 0..self.reached {
            let Some(stage) = self.stages.stage(i) else {
                continue;
            };
            let action = hook(stage);
            if self.shared.take_answered() {
                self.held_at = None;
                self.tell_earlier_stages_of_answer(i);
                return Action::Pause;
            }
            if action == Action::Pause {
                return Action::Pause;
            }
        }
        match self.held_at.take() {
            Some(held) => self.request_headers_from(held + 1, false),
            None => Action::Continue,
        }
    }

    /// Stage `answerer` replied locally to the request: the stages before it learn that the
    /// reply is not the upstream's.
    fn tell_earlier_stages_of_answer(&mut self, answerer: usize) {
        for j in 0..answerer {
            if let Some(stage) = self.stages.stage(j) {
                stage.later_stage_answered();
            }
        }
    }

    /// A response callback through the stages that saw the request, last first. Every stage
    /// observes it; it is held if any stage holds it.
    fn response(&mut self, mut hook: impl FnMut(&mut dyn Hooks) -> Action) -> Action {
        let mut held = false;
        for i in (0..self.reached).rev() {
            if let Some(stage) = self.stages.stage(i) {
                held |= hook(stage) == Action::Pause;
            }
        }
        self.shared.take_answered();
        if held {
            Action::Pause
        } else {
            Action::Continue
        }
    }

    /// The stages, for tests.
    pub fn stages_mut(&mut self) -> &mut S {
        &mut self.stages
    }
}

impl<S: StageSet> Context for Chain<S> {}

impl<S: StageSet> HttpContext for Chain<S> {
    fn on_http_request_headers(&mut self, num_headers: usize, end_of_stream: bool) -> Action {
        self.shared.begin();
        self.num_headers = num_headers;
        self.request_headers_from(0, end_of_stream)
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        self.shared.begin();
        self.request_rest(|s| s.request_body(body_size, end_of_stream))
    }

    fn on_http_request_trailers(&mut self, num_trailers: usize) -> Action {
        self.shared.begin();
        self.request_rest(|s| s.request_trailers(num_trailers))
    }

    fn on_http_response_headers(&mut self, num_headers: usize, end_of_stream: bool) -> Action {
        self.shared.begin();
        self.response(|s| s.response_headers(num_headers, end_of_stream))
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        self.shared.begin();
        self.response(|s| s.response_body(body_size, end_of_stream))
    }

    fn on_http_response_trailers(&mut self, num_trailers: usize) -> Action {
        self.shared.begin();
        self.response(|s| s.response_trailers(num_trailers))
    }

    fn on_log(&mut self) {
        self.shared.begin();
        for i in 0..self.reached {
            if let Some(stage) = self.stages.stage(i) {
                stage.log();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::FakeStore;

    #[test]
    fn a_fact_read_by_one_stage_costs_the_next_stage_no_host_call_until_the_next_callback() {
        let store = FakeStore::new();
        let host = store.worker();
        host.set_map(
            MapType::HttpRequestHeaders,
            &[(":path", "/a"), ("x-k", "1")],
        );
        host.set_property(&["xds", "route_name"], b"orders");
        let stages = Stages::new();
        let (a, b) = (
            StageHost::new(host.clone(), 0, Rc::clone(&stages)),
            StageHost::new(host.clone(), 1, Rc::clone(&stages)),
        );
        stages.begin();
        let before = host.calls();
        assert!(a.get_header_map_pairs(MapType::HttpRequestHeaders).is_ok());
        assert!(a.get_property(&["xds", "route_name"]).is_ok());
        assert!(a.current_time_ns().is_ok());
        assert_eq!(host.calls() - before, 3);
        // Stage b reads the same facts, and a header out of the map stage a read whole.
        let x = b.get_header_map_value(MapType::HttpRequestHeaders, "X-K");
        assert_eq!(x, Ok(Some(b"1".to_vec())));
        let route = b.get_property(&["xds", "route_name"]);
        assert_eq!(route, Ok(Some(b"orders".to_vec())));
        assert_eq!(b.current_time_ns(), a.current_time_ns());
        assert_eq!(host.calls() - before, 3, "no further host call");
        // What a stage holds it can tell without a call; the host itself holds nothing.
        let map = MapType::HttpRequestHeaders;
        assert_eq!(
            b.known_header_map_value(map, "x-k"),
            Some(Some(b"1".to_vec()))
        );
        assert_eq!(b.known_header_map_value(map, "x-none"), Some(None));
        assert_eq!(host.known_header_map_value(map, "x-k"), None);
        assert_eq!(host.calls() - before, 3);
        // A write is learned: the next read sees it and costs nothing; a new callback drops
        // everything.
        assert!(b
            .replace_header_map_value(MapType::HttpRequestHeaders, "x-k", "2")
            .is_ok());
        let calls = host.calls();
        let x = a.get_header_map_value(MapType::HttpRequestHeaders, "x-k");
        assert_eq!(x, Ok(Some(b"2".to_vec())));
        assert_eq!(host.calls(), calls);
        stages.begin();
        let calls = host.calls();
        assert!(a.get_property(&["xds", "route_name"]).is_ok());
        assert_eq!(host.calls() - calls, 1);
    }

    #[test]
    fn header_edits_keep_what_was_read_of_the_map_equal_to_what_the_host_now_holds() {
        let store = FakeStore::new();
        let host = store.worker();
        let map = MapType::HttpRequestHeaders;
        host.set_map(
            map,
            &[(":path", "/a"), ("x-r", "1"), ("x-r", "2"), ("x-d", "3")],
        );
        let stages = Stages::new();
        let s = StageHost::new(host.clone(), 0, Rc::clone(&stages));
        stages.begin();
        assert!(s.get_header_map_pairs(map).is_ok());
        assert!(s.get_header_map_value(map, "x-gone").is_ok());
        assert!(s.replace_header_map_value(map, "x-r", "9").is_ok());
        assert!(s.replace_header_map_value(map, "x-new", "4").is_ok());
        assert!(s.remove_header_map_value(map, "x-d").is_ok());
        assert!(s.replace_header_map_value(map, "x-gone", "5").is_ok());
        let calls = host.calls();
        let cached: Vec<_> = ["x-r", "x-new", "x-d", "x-gone", ":path"]
            .iter()
            .map(|n| s.get_header_map_value(map, n))
            .collect();
        assert_eq!(
            host.calls(),
            calls,
            "answered from what was read and written"
        );
        let truth: Vec<_> = ["x-r", "x-new", "x-d", "x-gone", ":path"]
            .iter()
            .map(|n| Ok(host.header(map, n).map(String::into_bytes)))
            .collect();
        assert_eq!(cached, truth);
        assert_eq!(cached[0], Ok(Some(b"9".to_vec())));
    }

    #[test]
    fn a_local_reply_is_seen_once_and_a_callout_answer_finds_its_stage() {
        let store = FakeStore::new();
        let host = store.worker();
        let stages = Stages::new();
        let s = StageHost::new(host.clone(), 3, Rc::clone(&stages));
        assert!(s.send_local_response(503, &[], b"").is_ok());
        assert!(stages.take_answered());
        assert!(!stages.take_answered());
        let token = s
            .dispatch_http_call("c", &[(":path", "/")], None, 100)
            .unwrap();
        assert_eq!(stages.callout_owner(token), Some(3));
        assert_eq!(stages.callout_owner(token), None, "an answer comes once");
    }
}
