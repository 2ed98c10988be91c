//! The bodies of the pack's fuzz targets: one function per surface an outsider feeds, each taking
//! the fuzzer's bytes and asserting what must hold for every input.
//!
//! Why a workspace crate rather than code inside `fuzz/`: the coverage-guided runs
//! (`cargo pack fuzz`: libFuzzer, on stable Rust without cargo-fuzz) need an instrumented build,
//! minutes long, while a regression should be caught by every `cargo pack test`. So each target's
//! body lives here, `fuzz/fuzz_targets/<name>.rs` is one line calling it, and `tests/corpus.rs`
//! replays every file of `fuzz/corpus/<name>/` through it natively in well under a second.
//!
//! A target panics when a property breaks: that is how libFuzzer learns of a finding, and how the
//! replay test fails. Beyond "no panic, whatever the bytes", each asserts what its surface
//! promises; see [`TARGETS`] and the README's "Fuzzing" section.

// A fuzz target's job is to panic (assert) when a property breaks, and its inputs are the
// fuzzer's: the workspace's no-panic rules are for code that runs inside the proxy.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

pub mod configs;
pub mod discovery;
pub mod headers;
pub mod openapi;
pub mod request;
pub mod seeds;
pub mod shared;
pub mod validator;

/// A target's body: the fuzzer's bytes in, a panic when a property breaks.
pub type Body = fn(&[u8]);

/// Every target: its name (the file under `fuzz/fuzz_targets/` and the folder under
/// `fuzz/corpus/`) and its body.
pub const TARGETS: &[(&str, Body)] = &[
    ("config_breaker", configs::config_breaker),
    ("config_budget", configs::config_budget),
    ("config_padding", configs::config_padding),
    ("config_validator", configs::config_validator),
    ("config_slow_start", configs::config_slow_start),
    ("validator_request", validator::validator_request),
    ("openapi", openapi::openapi),
    ("discovery", discovery::discovery),
    ("shared_decode", shared::shared_decode),
    ("headers", headers::headers),
];

/// The body of the target called `name`.
pub fn target(name: &str) -> Option<Body> {
    TARGETS.iter().find(|(n, _)| *n == name).map(|(_, f)| *f)
}
