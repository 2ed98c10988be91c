//! `cargo pack test`: every check, in the order that fails fastest.
//!
//! The last steps fuzz every target briefly (`cargo pack fuzz --seconds 3`, see `fuzz`) and run
//! the core's tests inside wasm.
//!
//! Each step runs as a child process with inherited output, so cargo's own `test result:` lines
//! reach the terminal and CI. A summary table closes the run; any failed step fails the command.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

use harness::paths::workspace_root;
use harness::prereq::{ensure_node, ensure_rust_targets, WASM_TARGETS};
use harness::wasm::WASM_TARGET;

/// The crates the modules link, compiled to wasm32-wasip1 with them (the modules themselves are
/// [`FILTERS`]).
const WASM_LIBRARIES: &[&str] = &[
    "resilience-core",
    "resilience-host",
    "circuit-breaker-filter",
    "retry-budget-filter",
    "failure-padding-filter",
    "request-validator-filter",
    "slow-start-filter",
];
/// The module crates whose `.wasm` files Envoy loads: each filter alone, and the pack.
pub const FILTERS: &[&str] = harness::wasm::MODULES;

/// Seconds `cargo pack test` fuzzes each target for (the "fuzz every target" step).
const CI_FUZZ_SECONDS: u32 = 3;

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned()));
    c.current_dir(workspace_root());
    c
}

fn step(name: &str, mut cmd: Command, results: &mut Vec<(String, bool, f64)>) -> bool {
    println!("\n==> {name}");
    let started = Instant::now();
    let ok = cmd.status().map(|s| s.success()).unwrap_or(false);
    results.push((name.to_owned(), ok, started.elapsed().as_secs_f64()));
    ok
}

/// `cargo build --release --target wasm32-wasip1` of every filter module.
fn wasm_build_command() -> Command {
    let mut cmd = cargo();
    cmd.args(["build", "--release", "--target", WASM_TARGET]);
    for f in FILTERS {
        cmd.args(["-p", f]);
    }
    cmd
}

/// Build every filter for wasm32-wasip1 in release; returns the output directory.
pub fn build_wasm() -> Result<PathBuf, String> {
    ensure_rust_targets(&[WASM_TARGET])?;
    let status = wasm_build_command()
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !status.success() {
        return Err("the wasm build failed".to_owned());
    }
    harness::wasm::finish_built(FILTERS)?;
    Ok(workspace_root().join("target/wasm32-wasip1/release"))
}

/// The wasm-bindgen version in Cargo.lock (the test runner must match it exactly).
fn locked_wasm_bindgen_version() -> Option<String> {
    let lock = std::fs::read_to_string(workspace_root().join("Cargo.lock")).ok()?;
    let mut lines = lock.lines();
    while let Some(line) = lines.next() {
        if line.trim() == "name = \"wasm-bindgen\"" {
            let v = lines.next()?.trim();
            return v
                .strip_prefix("version = \"")
                .and_then(|v| v.strip_suffix('"'))
                .map(str::to_owned);
        }
    }
    None
}

/// Make sure `wasm-bindgen-test-runner` of the locked version is installed (≈3 min the first time).
fn ensure_wasm_bindgen_runner() -> Result<(), String> {
    let version = locked_wasm_bindgen_version().ok_or("no wasm-bindgen in Cargo.lock")?;
    let installed = Command::new("wasm-bindgen-test-runner")
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    if installed.contains(&version) {
        return Ok(());
    }
    println!(
        "installing wasm-bindgen-cli {version} (the in-wasm test runner; about 3 minutes once)"
    );
    // `--locked` first (reproducible); some releases lock a dependency version the registry no
    // longer serves (0.2.130 locks webpki-roots 1.0.11), so fall back to a fresh resolution.
    for locked in [true, false] {
        let mut cmd = cargo();
        cmd.args(["install", "wasm-bindgen-cli", "--version", &version]);
        if locked {
            cmd.arg("--locked");
        }
        let status = cmd
            .status()
            .map_err(|e| format!("cannot run cargo install: {e}"))?;
        if status.success() {
            return Ok(());
        }
    }
    Err(format!("cargo install wasm-bindgen-cli {version} failed"))
}

/// The tests that measure time and must have the machine to themselves (a nextest filter): the
/// lab's scenarios compare timings between variants, and failure padding's tests measure how
/// precisely held responses are released. Under `cargo test` each binary runs alone and takes a
/// lock per test; nextest runs each test in its own process, where that lock means nothing.
const TIMING_TESTS: &str = "binary(lab) | binary(failure_padding)";

/// Whether `cargo nextest` runs here.
fn has_nextest() -> bool {
    cargo()
        .args(["nextest", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The test runs, in order. With cargo-nextest, every test but the timing tests from one queue
/// (`.config/nextest.toml`), then the timing tests one at a time on a machine nothing else
/// loads. Without it, `cargo test` (one binary at a time), which is
/// slower but asserts the same. Either way the e2e tests use the modules just built.
fn test_commands() -> Vec<(&'static str, Command)> {
    let mut runs = Vec::new();
    if has_nextest() {
        let mut all = cargo();
        all.args(["nextest", "run", "--workspace", "-E"]);
        all.arg(format!("not ({TIMING_TESTS})"));
        runs.push(("tests (unit, property, real Envoy)", all));
        let mut timing = cargo();
        timing.args(["nextest", "run", "--workspace", "-E", TIMING_TESTS]);
        timing.args(["--test-threads", "1"]);
        runs.push(("timing tests (lab, padding), one at a time", timing));
        // nextest does not run doctests; the workspace has none today, and this keeps it honest.
        let mut doc = cargo();
        doc.args(["test", "--workspace", "--doc"]);
        runs.push(("doctests", doc));
    } else {
        println!(
            "cargo pack: cargo-nextest not found; running the tests with cargo test, one binary \
             at a time (slower; `cargo install cargo-nextest --locked` for the fast way)"
        );
        let mut all = cargo();
        // --no-fail-fast: one failing test binary must not hide the results of the others.
        all.args(["test", "--workspace", "--no-fail-fast"]);
        runs.push(("tests (unit, property, real Envoy)", all));
    }
    for (_, cmd) in &mut runs {
        cmd.env(harness::wasm::SKIP_BUILD_ENV, "1");
    }
    runs
}

pub fn test(args: &[String]) -> Result<(), String> {
    let quick = args.iter().any(|a| a == "--quick");
    // Before any step, so a missing target is one line here, not an error deep inside cargo.
    ensure_rust_targets(if quick { &[WASM_TARGET] } else { WASM_TARGETS })?;
    let mut results = Vec::new();
    let mut ok = true;

    if !quick {
        let mut fmt = cargo();
        fmt.args(["fmt", "--all", "--", "--check"]);
        ok &= step("cargo fmt --check", fmt, &mut results);

        let mut clippy = cargo();
        clippy.args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]);
        ok &= step("clippy (native)", clippy, &mut results);

        let mut clippy_wasm = cargo();
        clippy_wasm.args(["clippy", "--target", WASM_TARGET]);
        for c in WASM_LIBRARIES.iter().chain(FILTERS) {
            clippy_wasm.args(["-p", c]);
        }
        clippy_wasm.args(["--", "-D", "warnings"]);
        ok &= step("clippy (wasm32-wasip1)", clippy_wasm, &mut results);
    }

    let mut built = step(
        "build filters (wasm32-wasip1, release)",
        wasm_build_command(),
        &mut results,
    );
    if built {
        if let Err(e) = harness::wasm::finish_built(FILTERS) {
            eprintln!("finishing the modules (unused callbacks out, wasm-opt): {e}");
            results.push(("finish the modules".to_owned(), false, 0.0));
            built = false;
        }
    }
    ok &= built;

    if built {
        ok &= match harness::envoy::ensure_installed() {
            Ok(_) => true,
            Err(e) => {
                eprintln!("{e}");
                results.push(("install the pinned Envoy".to_owned(), false, 0.0));
                false
            }
        };
        for (name, cmd) in test_commands() {
            ok &= step(name, cmd, &mut results);
        }
    }

    if !quick {
        // A short coverage-guided run of every fuzz target: the corpus replay in the tests
        // catches a known input breaking again, this catches a change that makes a new one
        // easy to find. About half a minute once the instrumented build is cached (minutes the
        // first time, in fuzz/target/).
        let fuzz_step = format!("fuzz every target ({CI_FUZZ_SECONDS} s each)");
        match std::env::current_exe() {
            Ok(xtask) => {
                let mut fuzz = Command::new(xtask);
                fuzz.current_dir(workspace_root()).args([
                    "fuzz",
                    "--seconds",
                    &CI_FUZZ_SECONDS.to_string(),
                ]);
                ok &= step(&fuzz_step, fuzz, &mut results);
            }
            Err(e) => {
                eprintln!("cannot find the xtask binary: {e}");
                results.push((fuzz_step, false, 0.0));
                ok = false;
            }
        }

        match ensure_node().and_then(|()| ensure_wasm_bindgen_runner()) {
            Ok(()) => {
                let mut in_wasm = cargo();
                in_wasm.args([
                    "test",
                    "-p",
                    "resilience-core",
                    "--target",
                    "wasm32-unknown-unknown",
                ]);
                ok &= step("core tests inside wasm (node)", in_wasm, &mut results);
            }
            Err(e) => {
                eprintln!("{e}");
                results.push(("core tests inside wasm (node)".to_owned(), false, 0.0));
                ok = false;
            }
        }
    }

    println!("\n{:<44} {:>6} {:>9}", "step", "result", "seconds");
    for (name, passed, secs) in &results {
        println!(
            "{:<44} {:>6} {:>9.1}",
            name,
            if *passed { "ok" } else { "FAILED" },
            secs
        );
    }
    if ok {
        Ok(())
    } else {
        Err("some steps failed (see above)".to_owned())
    }
}
