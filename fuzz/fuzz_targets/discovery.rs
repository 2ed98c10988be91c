#![no_main]
// The body, and what it asserts: tests/fuzz-targets/src/discovery.rs.
libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_targets::discovery::discovery(data));
