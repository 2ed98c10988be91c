//! A filter that does nothing, so the benchmark can separate the cost of crossing into a wasm VM
//! (Envoy's side of every proxy-wasm filter) from the cost of what the pack's filters do.
//!
//! Configured, it does nothing but host calls: `{"calls": "property=10,clock=3"}` makes that many
//! calls of each kind per request (see [`Kind`]), so `cargo pack bench --host-calls` can price one
//! call of each kind in Envoy as (row − no-op) / count. That tells which host calls a filter
//! should stop making; the filters' own count of them is the pack's host-call test.

use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, MetricType};

/// One kind of host call a probe makes.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    /// `proxy_get_current_time_nanoseconds`.
    Clock,
    /// `proxy_get_property` of `xds.route_name`.
    Property,
    /// `proxy_get_header_map_value` of the request's `:path`.
    RequestHeader,
    /// `proxy_get_header_map_pairs` of the request.
    RequestPairs,
    /// `proxy_get_header_map_value` of the response's `:status`, at the response.
    ResponseHeader,
    /// `proxy_get_header_map_value` of a response header that is not there.
    MissingHeader,
    /// `proxy_add_header_map_value` on the response.
    AddResponseHeader,
    /// `proxy_get_shared_data` of a key that is set.
    SharedGet,
    /// `proxy_increment_metric` of one counter.
    Metric,
}

impl Kind {
    fn parse(name: &str) -> Option<Kind> {
        Some(match name {
            "clock" => Kind::Clock,
            "property" => Kind::Property,
            "request_header" => Kind::RequestHeader,
            "request_pairs" => Kind::RequestPairs,
            "response_header" => Kind::ResponseHeader,
            "missing_header" => Kind::MissingHeader,
            "add_response_header" => Kind::AddResponseHeader,
            "shared_get" => Kind::SharedGet,
            "metric" => Kind::Metric,
            _ => return None,
        })
    }

    fn at_response(self) -> bool {
        matches!(
            self,
            Kind::ResponseHeader | Kind::MissingHeader | Kind::AddResponseHeader
        )
    }
}

#[derive(Default)]
struct Probe {
    calls: Vec<(Kind, u32)>,
    metric: u32,
}

/// `"calls": "kind=n,kind=n"` out of the configuration; anything else is no calls.
fn parse_calls(config: &[u8]) -> Vec<(Kind, u32)> {
    let text = String::from_utf8_lossy(config);
    let Some(list) = text
        .split_once("\"calls\"")
        .and_then(|(_, rest)| rest.split('"').nth(1))
    else {
        return Vec::new();
    };
    list.split(',')
        .filter_map(|item| {
            let (kind, n) = item.trim().split_once('=')?;
            Some((Kind::parse(kind)?, n.parse().ok()?))
        })
        .collect()
}

struct NoopRoot {
    probe: Rc<Probe>,
}
struct NoopHttp {
    probe: Rc<Probe>,
}

impl NoopHttp {
    fn run(&self, at_response: bool) {
        for &(kind, n) in &self.probe.calls {
            if kind.at_response() != at_response {
                continue;
            }
            for i in 0..n {
                match kind {
                    Kind::Clock => drop(self.get_current_time()),
                    Kind::Property => drop(self.get_property(vec!["xds", "route_name"])),
                    Kind::RequestHeader => drop(self.get_http_request_header(":path")),
                    Kind::RequestPairs => drop(self.get_http_request_headers()),
                    Kind::ResponseHeader => drop(self.get_http_response_header(":status")),
                    Kind::MissingHeader => drop(self.get_http_response_header("grpc-status")),
                    Kind::AddResponseHeader => {
                        self.add_http_response_header(&format!("x-noop-{i}"), "1")
                    }
                    Kind::SharedGet => drop(self.get_shared_data("noop")),
                    Kind::Metric => drop(proxy_wasm::hostcalls::increment_metric(
                        self.probe.metric,
                        1,
                    )),
                }
            }
        }
    }
}

impl Context for NoopRoot {}
impl RootContext for NoopRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        let config = self.get_plugin_configuration().unwrap_or_default();
        let calls = parse_calls(&config);
        let metric = if calls.iter().any(|(k, _)| *k == Kind::Metric) {
            proxy_wasm::hostcalls::define_metric(MetricType::Counter, "noop_probe_calls")
                .unwrap_or(0)
        } else {
            0
        };
        if calls.iter().any(|(k, _)| *k == Kind::SharedGet) {
            let _ = self.set_shared_data("noop", Some(b"0123456789abcdef"), None);
        }
        self.probe = Rc::new(Probe { calls, metric });
        true
    }
    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(NoopHttp {
            probe: Rc::clone(&self.probe),
        }))
    }
    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
impl Context for NoopHttp {}
impl HttpContext for NoopHttp {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        self.run(false);
        Action::Continue
    }
    fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
        self.run(true);
        Action::Continue
    }
}

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(NoopRoot { probe: Rc::new(Probe::default()) })
    });
}}
