//! The harness builds filter crates into wasm modules from inside `cargo test`.

use std::time::{Duration, Instant};

use harness::wasm;

#[test]
fn filter_wasm_builds_the_circuit_breaker_once_and_returns_its_finished_copy() {
    let path = wasm::filter_wasm("circuit-breaker").unwrap();
    // The finished module's own copy, which later builds leave alone.
    assert!(
        path.ends_with("wasm32-wasip1/release/finished/circuit_breaker.wasm"),
        "{}",
        path.display()
    );
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(&bytes[..4], b"\0asm");
    assert!(
        !harness::exports::has_section(&bytes),
        "finished: the unused callbacks are out"
    );

    let again = Instant::now();
    assert_eq!(wasm::filter_wasm("circuit-breaker").unwrap(), path);
    assert!(
        again.elapsed() < Duration::from_millis(50),
        "cached per process"
    );
}
