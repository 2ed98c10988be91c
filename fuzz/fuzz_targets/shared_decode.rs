#![no_main]
// The body, and what it asserts: tests/fuzz-targets/src/shared.rs.
libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_targets::shared::shared_decode(data));
