//! `circuit_breaker.wasm`: a circuit breaker, alone in its module. The filter is the library `circuit-breaker-filter`; the
//! same code also runs as a stage of `resilience_pack.wasm`.

proxy_wasm::main! {{
    resilience_host::logging::init("circuit_breaker");
    proxy_wasm::set_root_context(|_| -> Box<dyn proxy_wasm::traits::RootContext> {
        Box::new(resilience_host::root::FilterRoot::<filter::root::BreakerFilter>::new())
    });
}}

// The breaker reads a response's trailers (a gRPC status) and no body.
// Taken out of the exports at build time (resilience_host::callbacks).
resilience_host::unused_callbacks!(
    "proxy_on_request_body",
    "proxy_on_request_trailers",
    "proxy_on_response_body",
);
