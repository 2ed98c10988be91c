//! `failure_padding.wasm`: failure-latency padding, alone in its module. The filter is the library `failure-padding-filter`; the
//! same code also runs as a stage of `resilience_pack.wasm`.

proxy_wasm::main! {{
    resilience_host::logging::init("failure_padding");
    proxy_wasm::set_root_context(|_| -> Box<dyn proxy_wasm::traits::RootContext> {
        Box::new(resilience_host::root::FilterRoot::<filter::root::PaddingFilter>::new())
    });
}}

// Padding holds responses (their body and trailers stay held with them) and ignores the request's body.
// Taken out of the exports at build time (resilience_host::callbacks).
resilience_host::unused_callbacks!("proxy_on_request_body", "proxy_on_request_trailers",);
