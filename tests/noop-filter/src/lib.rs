//! A filter that does nothing, so the benchmark can separate the cost of crossing into a wasm VM
//! (Envoy's side of every proxy-wasm filter) from the cost of what the pack's filters do.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::ContextType;

struct NoopRoot;
struct NoopHttp;

impl Context for NoopRoot {}
impl RootContext for NoopRoot {
    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(NoopHttp))
    }
    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
impl Context for NoopHttp {}
impl HttpContext for NoopHttp {}

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(NoopRoot) });
}}
