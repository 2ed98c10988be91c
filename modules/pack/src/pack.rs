//! The pack on one worker: the stages' workers, the shared timer, and a new stream's chain.
//!
//! Generic over the host (`H`), like every filter: on the real proxy `H` is [`WasmHost`] and
//! [`crate::root::PackRoot`] drives it; in the tests it is the fake host, several workers on one
//! store. Each stage sees the host through its own [`StageHost`], which shares the timer, the
//! facts of the callback and callout owners with the other stages.
//!
//! [`WasmHost`]: resilience_host::wasm::WasmHost

use std::cell::RefCell;
use std::rc::Rc;

use resilience_core::config::ConfigError;
use resilience_host::host::Host;
use resilience_host::root::Filter;
use resilience_host::stage::{Chain, Hooks, StageHost, StageSet, Stages};

use crate::config;

type Breaker = circuit_breaker::root::BreakerFilter;
type Budget = retry_budget::root::RetryBudgetFilter;
type Padding = failure_padding::root::PaddingFilter;
type Validator = request_validator::root::ValidatorFilter;
type SlowStart = slow_start::root::SlowStartFilter;

/// Each stage's place in the chain (and in [`MEMBERS`]).
pub const VALIDATOR: usize = 0;
pub const BREAKER: usize = 1;
pub const BUDGET: usize = 2;
pub const SLOW_START: usize = 3;
pub const PADDING: usize = 4;

/// One stage's worker, when that stage is on.
struct Slot<F: Filter<StageHost<H>>, H: Host + Clone + 'static> {
    worker: Option<Rc<RefCell<F::Worker>>>,
}

impl<F: Filter<StageHost<H>>, H: Host + Clone + 'static> Slot<F, H> {
    fn off() -> Self {
        Slot { worker: None }
    }

    fn configure(
        host: &StageHost<H>,
        member: Option<&[u8]>,
        plugin: &str,
        now_ms: u64,
    ) -> Result<(Self, Option<u64>), ConfigError> {
        let Some(bytes) = member else {
            return Ok((Slot::off(), None));
        };
        let worker =
            F::configure(host.clone(), bytes, plugin, now_ms).map_err(|e| e.within(F::NAME))?;
        let period = F::tick_period_ms(&worker);
        Ok((
            Slot {
                worker: Some(Rc::new(RefCell::new(worker))),
            },
            Some(period),
        ))
    }

    fn tick(&self, now_ms: u64) {
        if let Some(Ok(mut w)) = self.worker.as_ref().map(|w| w.try_borrow_mut()) {
            F::on_tick(&mut w, now_ms);
        }
    }

    fn on_http_call_response(&self, token_id: u32, body_size: usize) {
        if let Some(Ok(mut w)) = self.worker.as_ref().map(|w| w.try_borrow_mut()) {
            F::on_http_call_response(&mut w, token_id, body_size);
        }
    }

    fn stream(&self, host: &StageHost<H>, context_id: u32) -> Option<F::Stream> {
        let worker = self.worker.as_ref()?;
        Some(F::stream(host.clone(), Some(Rc::clone(worker)), context_id))
    }
}

/// The pack on one worker, on host `H`.
pub struct Pack<H: Host + Clone + 'static> {
    host: H,
    stages: Rc<Stages>,
    hosts: [StageHost<H>; 5],
    validator: Slot<Validator, H>,
    breaker: Slot<Breaker, H>,
    budget: Slot<Budget, H>,
    slow_start: Slot<SlowStart, H>,
    padding: Slot<Padding, H>,
}

impl<H: Host + Clone + 'static> Pack<H> {
    /// The pack configured from `bytes` (see [`crate::config`]) on `host`; the error names the
    /// member and the field. `plugin` names the shared-data namespaces, as for each filter alone.
    pub fn configure(
        host: H,
        bytes: &[u8],
        plugin: &str,
        now_ms: u64,
    ) -> Result<Self, ConfigError> {
        let members = config::split(bytes)?;
        let stages = Stages::new();
        let hosts: [StageHost<H>; 5] =
            std::array::from_fn(|i| StageHost::new(host.clone(), i, Rc::clone(&stages)));
        let member = |i: usize| members.get(i).and_then(|m| m.as_deref());
        let mut periods = [None; 5];
        let (validator, p) = Slot::configure(&hosts[VALIDATOR], member(VALIDATOR), plugin, now_ms)?;
        periods[VALIDATOR] = p;
        let (breaker, p) = Slot::configure(&hosts[BREAKER], member(BREAKER), plugin, now_ms)?;
        periods[BREAKER] = p;
        let (budget, p) = Slot::configure(&hosts[BUDGET], member(BUDGET), plugin, now_ms)?;
        periods[BUDGET] = p;
        let (slow_start, p) =
            Slot::configure(&hosts[SLOW_START], member(SLOW_START), plugin, now_ms)?;
        periods[SLOW_START] = p;
        let (padding, p) = Slot::configure(&hosts[PADDING], member(PADDING), plugin, now_ms)?;
        periods[PADDING] = p;
        for (i, period) in periods.iter().enumerate() {
            if let Some(period) = period {
                stages.start_timer(i, *period, now_ms);
            }
        }
        Ok(Pack {
            host,
            stages,
            hosts,
            validator,
            breaker,
            budget,
            slow_start,
            padding,
        })
    }

    /// Starts the one timer for the first stage due. False if the host refused it.
    pub fn start(&self, now_ms: u64) -> bool {
        self.stages.arm_at_start(&self.host, now_ms)
    }

    /// The timer fired: tick the stages that are due, then arm it for the next one.
    pub fn tick(&self, now_ms: u64) -> bool {
        self.stages.begin();
        let due: Vec<usize> = self.stages.due(now_ms).collect();
        for i in due {
            match i {
                VALIDATOR => self.validator.tick(now_ms),
                BREAKER => self.breaker.tick(now_ms),
                BUDGET => self.budget.tick(now_ms),
                SLOW_START => self.slow_start.tick(now_ms),
                PADDING => self.padding.tick(now_ms),
                _ => {}
            }
        }
        self.stages.end_tick(&self.host, now_ms)
    }

    /// A callout's answer, for the stage that sent it.
    pub fn on_http_call_response(&self, token_id: u32, body_size: usize) {
        self.stages.begin();
        match self.stages.callout_owner(token_id) {
            Some(VALIDATOR) => self.validator.on_http_call_response(token_id, body_size),
            Some(BREAKER) => self.breaker.on_http_call_response(token_id, body_size),
            Some(BUDGET) => self.budget.on_http_call_response(token_id, body_size),
            Some(SLOW_START) => self.slow_start.on_http_call_response(token_id, body_size),
            Some(PADDING) => self.padding.on_http_call_response(token_id, body_size),
            _ => {}
        }
    }

    /// A new stream through the stages that are on.
    pub fn stream(&self, context_id: u32) -> Chain<PackStages<H>> {
        let h = &self.hosts;
        Chain::new(
            PackStages {
                validator: self.validator.stream(&h[VALIDATOR], context_id),
                breaker: self.breaker.stream(&h[BREAKER], context_id),
                budget: self.budget.stream(&h[BUDGET], context_id),
                slow_start: self.slow_start.stream(&h[SLOW_START], context_id),
                padding: self.padding.stream(&h[PADDING], context_id),
            },
            Rc::clone(&self.stages),
        )
    }
}

/// One stream's stages, in chain order.
pub struct PackStages<H: Host + Clone + 'static> {
    pub validator: Option<<Validator as Filter<StageHost<H>>>::Stream>,
    pub breaker: Option<<Breaker as Filter<StageHost<H>>>::Stream>,
    pub budget: Option<<Budget as Filter<StageHost<H>>>::Stream>,
    pub slow_start: Option<<SlowStart as Filter<StageHost<H>>>::Stream>,
    pub padding: Option<<Padding as Filter<StageHost<H>>>::Stream>,
}

impl<H: Host + Clone + 'static> StageSet for PackStages<H> {
    const LEN: usize = 5;

    fn stage(&mut self, index: usize) -> Option<&mut dyn Hooks> {
        match index {
            VALIDATOR => self.validator.as_mut().map(|s| s as &mut dyn Hooks),
            BREAKER => self.breaker.as_mut().map(|s| s as &mut dyn Hooks),
            BUDGET => self.budget.as_mut().map(|s| s as &mut dyn Hooks),
            SLOW_START => self.slow_start.as_mut().map(|s| s as &mut dyn Hooks),
            PADDING => self.padding.as_mut().map(|s| s as &mut dyn Hooks),
            _ => None,
        }
    }
}
