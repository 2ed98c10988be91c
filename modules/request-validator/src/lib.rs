//! `request_validator.wasm`: a fast-fail request validator, alone in its module. The filter is the library `request-validator-filter`; the
//! same code also runs as a stage of `resilience_pack.wasm`.

proxy_wasm::main! {{
    resilience_host::logging::init("request_validator");
    proxy_wasm::set_root_context(|_| -> Box<dyn proxy_wasm::traits::RootContext> {
        Box::new(resilience_host::root::FilterRoot::<filter::root::ValidatorFilter>::new())
    });
}}

// The validator checks the request's body and trailers, not the response's.
// Taken out of the exports at build time (resilience_host::callbacks).
resilience_host::unused_callbacks!("proxy_on_response_body", "proxy_on_response_trailers",);
