#![no_main]
// The body, and what it asserts: tests/fuzz-targets/src/configs.rs.
libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_targets::configs::config_slow_start(data));
