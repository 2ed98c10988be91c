//! # resilience-pack
//!
//! Why: five filters as five modules cost five VMs per worker, five crossings of the wasm
//! boundary per callback and five reads of the same facts; `resilience_pack.wasm` runs any subset
//! of them as stages of one request in one module. Each stage is the filter's own code (the
//! libraries in `filters/`), with the same configuration, errors, shared-data namespace and stat
//! names as the filter alone, so a dashboard does not change when a user moves from five modules
//! to one.
//!
//! How: [`config`] splits the configuration into one member per filter; [`pack`] holds the
//! stages' workers and builds each stream's chain on a generic host; the chain, the shared timer
//! and the facts read once per callback are [`resilience_host::stage`]; [`root`] is the root
//! context on the real proxy. The stages run in the order of [`config::MEMBERS`]: the validator
//! first (garbage never reaches the breaker's counts), the breaker before the retry budget (an
//! open breaker answers before a retry token is reserved), padding last (it sees the response
//! first and holds a fast failure while the others already counted it).

pub mod config;
pub mod pack;
// The root context on the real proxy: in the module only (a native test binary has no proxy to
// import from; the tests drive [`pack::Pack`] on the fake host).
#[cfg(target_family = "wasm")]
pub mod root;

#[cfg(test)]
mod tests;

#[cfg(target_family = "wasm")]
pub use root::PackRoot;

#[cfg(target_family = "wasm")]
proxy_wasm::main! {{
    resilience_host::logging::init("resilience_pack");
    proxy_wasm::set_root_context(|_| -> Box<dyn proxy_wasm::traits::RootContext> {
        Box::new(PackRoot::new())
    });
}}

// Its stages together use every HTTP callback: the validator the request's body and trailers, padding the response's.
// Only the callbacks no filter uses are taken out (resilience_host::callbacks).
resilience_host::unused_callbacks!();
