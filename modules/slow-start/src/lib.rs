//! `slow_start.wasm`: slow-start warm-up, alone in its module. The filter is the library `slow-start-filter`; the
//! same code also runs as a stage of `resilience_pack.wasm`.

proxy_wasm::main! {{
    resilience_host::logging::init("slow_start");
    proxy_wasm::set_root_context(|_| -> Box<dyn proxy_wasm::traits::RootContext> {
        Box::new(resilience_host::root::FilterRoot::<filter::root::SlowStartFilter>::new())
    });
}}
