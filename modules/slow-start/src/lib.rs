//! `slow_start.wasm`: slow-start warm-up, alone in its module. The filter is the library `slow-start-filter`; the
//! same code also runs as a stage of `resilience_pack.wasm`.

proxy_wasm::main! {{
    resilience_host::logging::init("slow_start");
    proxy_wasm::set_root_context(|_| -> Box<dyn proxy_wasm::traits::RootContext> {
        Box::new(resilience_host::root::FilterRoot::<filter::root::SlowStartFilter>::new())
    });
}}

// Slow start picks or sheds at the request headers; bodies and trailers pass.
// Taken out of the exports at build time (resilience_host::callbacks).
resilience_host::unused_callbacks!(
    "proxy_on_request_body",
    "proxy_on_request_trailers",
    "proxy_on_response_body",
    "proxy_on_response_trailers",
);
