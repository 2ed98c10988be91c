#![no_main]
// The body, and what it asserts: tests/fuzz-targets/src/validator.rs.
libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_targets::validator::validator_request(data));
