//! `retry_budget.wasm`: a retry budget, alone in its module. The filter is the library `retry-budget-filter`; the
//! same code also runs as a stage of `resilience_pack.wasm`.

proxy_wasm::main! {{
    resilience_host::logging::init("retry_budget");
    proxy_wasm::set_root_context(|_| -> Box<dyn proxy_wasm::traits::RootContext> {
        Box::new(resilience_host::root::FilterRoot::<filter::root::RetryBudgetFilter>::new())
    });
}}

// The budget decides at the headers and settles at the log; bodies and trailers pass.
// Taken out of the exports at build time (resilience_host::callbacks).
resilience_host::unused_callbacks!(
    "proxy_on_request_body",
    "proxy_on_request_trailers",
    "proxy_on_response_body",
    "proxy_on_response_trailers",
);
