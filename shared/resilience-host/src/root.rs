//! The root context every filter uses: configuration, the tick, and handing the worker's state
//! to each new HTTP stream.
//!
//! Why one root: Envoy creates a root context per worker per filter instance, and for every
//! filter in the pack it does the same four things: parse the plugin configuration (refusing a
//! bad one with the field named, so the listener does not start with a filter that cannot work),
//! build the worker's state, start the tick timer, and give that state to each HTTP context. Those
//! are written once here; a filter says only what is its own through [`Filter`].
//!
//! The timer is started with [`resume::set_tick_period_ms`], which reports a refusal instead of
//! trapping the VM as the SDK's `set_tick_period` would; a refused timer refuses the
//! configuration, since a filter whose state is never synced or released must not take traffic.

use std::cell::RefCell;
use std::marker::PhantomData;
use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{BufferType, ContextType};
use resilience_core::config::ConfigError;

use crate::abi::{self, HostStatus};
use crate::host::Host;
use crate::wasm::WasmHost;
use crate::{clock, props, resume};

/// What a filter adds to the shared root context, on host `H`. Implemented by a unit type per
/// filter; the filter's root context is then `FilterRoot<ThatType>` (on the real proxy), and the
/// pack module hosts the same type as one stage of its own root (on the pack's host).
///
/// Why generic over the host: the worker and the stream are the filter's own `Worker<H>` and
/// `…Http<H>`, so the same filter runs alone on [`WasmHost`], as a stage of the pack on a host that
/// shares facts and timers between stages, and natively on the fake host in tests.
pub trait Filter<H: Host + Clone + 'static = WasmHost>: 'static {
    /// The filter's name as it appears in log lines and as its member of the pack configuration
    /// (`circuit_breaker`).
    const NAME: &'static str;

    /// One worker's state, shared by the root context and the worker's HTTP contexts.
    type Worker: 'static;

    /// One stream's state: the filter's HTTP context.
    type Stream: HttpContext + 'static;

    /// Parse the plugin configuration and build the worker's state on `host`: `plugin` is the
    /// plugin's name (`"default"` when it has none), `now_ms` the host's time. The error names
    /// the bad field.
    fn configure(
        host: H,
        config: &[u8],
        plugin: &str,
        now_ms: u64,
    ) -> Result<Self::Worker, ConfigError>;

    /// The tick period to start with, in milliseconds.
    fn tick_period_ms(worker: &Self::Worker) -> u64;

    /// The timer fired.
    fn on_tick(worker: &mut Self::Worker, now_ms: u64);

    /// The state of a new stream. `worker` is `None` only if the configuration was refused
    /// (Envoy does not normally create streams then); the stream must pass the request through.
    fn stream(host: H, worker: Option<Rc<RefCell<Self::Worker>>>, context_id: u32) -> Self::Stream;

    /// The answer to a callout this root sent (`dispatch_http_call` belongs to the context that
    /// sent it, so the answer arrives here). `body_size` is as the host reported it; the status
    /// and body are read through [`crate::callout`]. The default ignores it.
    fn on_http_call_response(worker: &mut Self::Worker, token_id: u32, body_size: usize) {
        let _ = (worker, token_id, body_size);
    }
}

/// The root context of filter `F`.
pub struct FilterRoot<F: Filter> {
    worker: Option<Rc<RefCell<F::Worker>>>,
    filter: PhantomData<F>,
}

impl<F: Filter> FilterRoot<F> {
    pub fn new() -> Self {
        Self {
            worker: None,
            filter: PhantomData,
        }
    }

    /// Run `f` on the worker's state, if there is one and nothing else holds it.
    fn with_worker(&self, f: impl FnOnce(&mut F::Worker)) {
        if let Some(w) = &self.worker {
            if let Ok(mut w) = w.try_borrow_mut() {
                f(&mut w);
            }
        }
    }
}

impl<F: Filter> Default for FilterRoot<F> {
    fn default() -> Self {
        Self::new()
    }
}

impl<F: Filter> Context for FilterRoot<F> {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        _num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        self.with_worker(|w| F::on_http_call_response(w, token_id, body_size));
    }
}

impl<F: Filter> RootContext for FilterRoot<F> {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        // Read through `abi`, not the SDK's `get_plugin_configuration` (which panics on a status
        // it does not expect). No configuration is an empty one, as before; a refused read
        // refuses the configuration rather than running on defaults the operator did not ask for.
        let bytes = match abi::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX) {
            Ok(bytes) => bytes.unwrap_or_default(),
            Err(HostStatus(code)) => {
                log::error!(
                    "{}: the proxy refused to hand over the configuration (status {code})",
                    F::NAME
                );
                return false;
            }
        };
        let plugin = props::plugin_name().unwrap_or_else(|| "default".to_owned());
        let worker = match F::configure(WasmHost, &bytes, &plugin, clock::now_ms()) {
            Ok(worker) => worker,
            Err(e) => {
                log::error!("{}: invalid configuration: {e}", F::NAME);
                return false;
            }
        };
        if !resume::set_tick_period_ms(F::tick_period_ms(&worker)) {
            log::error!("{}: the proxy refused to start the tick timer", F::NAME);
            return false;
        }
        self.worker = Some(Rc::new(RefCell::new(worker)));
        true
    }

    fn on_tick(&mut self) {
        self.with_worker(|w| F::on_tick(w, clock::now_ms()));
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(F::stream(
            WasmHost,
            self.worker.as_ref().map(Rc::clone),
            context_id,
        )))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
