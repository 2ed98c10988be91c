//! The harness builds filter crates into wasm modules from inside `cargo test`.

use std::time::{Duration, Instant};

use harness::wasm;

#[test]
fn filter_wasm_builds_the_circuit_breaker_once_and_returns_its_module() {
    let path = wasm::filter_wasm("circuit-breaker").unwrap();
    assert_eq!(path, wasm::wasm_path("circuit-breaker"));
    assert!(
        path.ends_with("wasm32-wasip1/release/circuit_breaker.wasm"),
        "{}",
        path.display()
    );
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(&bytes[..4], b"\0asm");

    let again = Instant::now();
    assert_eq!(wasm::filter_wasm("circuit-breaker").unwrap(), path);
    assert!(
        again.elapsed() < Duration::from_millis(50),
        "cached per process"
    );
}
