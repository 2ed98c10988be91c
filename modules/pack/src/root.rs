//! The pack's root context on the real proxy: reads the configuration, starts the one timer,
//! ticks the stages and hands each new stream its chain.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{BufferType, ContextType};
use resilience_host::abi::{self, HostStatus};
use resilience_host::wasm::WasmHost;
use resilience_host::{clock, props};

use crate::pack::Pack;

/// The root context of `resilience_pack.wasm`.
#[derive(Default)]
pub struct PackRoot {
    pack: Option<Pack<WasmHost>>,
}

impl PackRoot {
    pub fn new() -> Self {
        PackRoot { pack: None }
    }
}

impl Context for PackRoot {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        _num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        if let Some(pack) = &self.pack {
            pack.on_http_call_response(token_id, body_size);
        }
    }
}

impl RootContext for PackRoot {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        // As each filter alone does (resilience_host::root): a refused read refuses the
        // configuration rather than running on defaults the operator did not ask for.
        let bytes = match abi::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX) {
            Ok(bytes) => bytes.unwrap_or_default(),
            Err(HostStatus(code)) => {
                log::error!(
                    "resilience_pack: the proxy refused to hand over the configuration (status {code})"
                );
                return false;
            }
        };
        let plugin = props::plugin_name().unwrap_or_else(|| "default".to_owned());
        let now = clock::now_ms();
        let pack = match Pack::configure(WasmHost, &bytes, &plugin, now) {
            Ok(pack) => pack,
            Err(e) => {
                log::error!("resilience_pack: invalid configuration: {e}");
                return false;
            }
        };
        if !pack.start(now) {
            log::error!("resilience_pack: the proxy refused to start the tick timer");
            return false;
        }
        self.pack = Some(pack);
        true
    }

    fn on_tick(&mut self) {
        if let Some(pack) = &self.pack {
            pack.tick(clock::now_ms());
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        match &self.pack {
            Some(pack) => Some(Box::new(pack.stream(context_id))),
            // A refused configuration: Envoy does not normally create streams then; pass through.
            None => Some(Box::new(PassThrough)),
        }
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// A stream of a pack whose configuration was refused.
struct PassThrough;

impl Context for PassThrough {}
impl HttpContext for PassThrough {}
