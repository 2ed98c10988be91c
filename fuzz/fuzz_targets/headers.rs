#![no_main]
// The body, and what it asserts: tests/fuzz-targets/src/headers.rs.
libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_targets::headers::headers(data));
