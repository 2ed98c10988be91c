# Everyday loop. The README's two commands (`cargo pack run`, `cargo pack test`) work without just.

wasm_target := "wasm32-wasip1"

# List recipes
default:
    @just --list

# Build every filter for wasm32-wasip1 (release)
build:
    cargo pack build

# Every check and test, as CI runs it
test:
    cargo pack test

# Unit and property tests only (fast, no Envoy)
unit:
    cargo test -p resilience-core -p circuit-breaker

# The real-Envoy end-to-end tests
e2e:
    cargo pack build
    RESILIENCE_SKIP_WASM_BUILD=1 cargo test -p harness

# fmt + clippy, native and wasm
lint:
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings
    cargo clippy --target {{wasm_target}} -p resilience-core -p resilience-host -p circuit-breaker -- -D warnings

# The core's tests inside wasm under node
test-wasm:
    cargo test -p resilience-core --target wasm32-unknown-unknown

# Run the pack in a local Envoy in front of an example upstream
run:
    cargo pack run
