//! Building the filters into the `.wasm` modules Envoy loads.
//!
//! Why: an end-to-end test must exercise the filter as it ships, so the harness builds the filter
//! crate for `wasm32-wasip1` in release mode itself instead of trusting a stale artifact; it does
//! so once per test process per crate.
//!
//! How: it runs the same `cargo` that runs the tests (`CARGO`), with the workspace's usual target
//! directory. A nested `cargo build` from inside `cargo test` does not deadlock: cargo releases
//! the build-directory lock before it runs test binaries (checked with cargo 1.95 for both
//! `cargo test` and `cargo test --release`), so sharing `<root>/target` is safe and reuses the
//! artifacts `cargo pack` builds. With `RESILIENCE_SKIP_WASM_BUILD=1` nothing is built and the
//! module must already exist.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard};

use crate::paths;

/// The target the filters are built for.
pub const WASM_TARGET: &str = "wasm32-wasip1";
/// Set to `1` to skip building and only check the module exists.
pub const SKIP_BUILD_ENV: &str = "RESILIENCE_SKIP_WASM_BUILD";

static BUILT: Mutex<BTreeMap<String, PathBuf>> = Mutex::new(BTreeMap::new());

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Where the release module of `crate_name` lands:
/// `<target>/wasm32-wasip1/release/<crate_name with - replaced by _>.wasm`.
pub fn wasm_path(crate_name: &str) -> PathBuf {
    paths::target_dir()
        .join(WASM_TARGET)
        .join("release")
        .join(format!("{}.wasm", crate_name.replace('-', "_")))
}

/// Builds `crate_name` (a workspace package, e.g. `circuit-breaker`) for `wasm32-wasip1` in
/// release mode, once per process, and returns the module's path. Err carries cargo's output.
pub fn filter_wasm(crate_name: &str) -> Result<PathBuf, String> {
    // Held across the build: concurrent tests wait for one build instead of racing.
    let mut built = lock(&BUILT);
    if let Some(path) = built.get(crate_name) {
        return Ok(path.clone());
    }
    let path = wasm_path(crate_name);
    if std::env::var(SKIP_BUILD_ENV).is_ok_and(|v| v == "1") {
        if !path.is_file() {
            return Err(format!(
                "{SKIP_BUILD_ENV}=1 but {} does not exist",
                path.display()
            ));
        }
    } else {
        build(&[crate_name])?;
        if !path.is_file() {
            return Err(format!(
                "cargo built {crate_name} but {} does not exist (is it a cdylib?)",
                path.display()
            ));
        }
    }
    built.insert(crate_name.to_string(), path.clone());
    Ok(path)
}

/// Makes each built module of `crates` what ships: the callbacks it names as unused taken out
/// of its exports ([`crate::exports::trim`]; a module without that section is left alone).
pub fn trim_built(crates: &[&str]) -> Result<(), String> {
    for name in crates {
        let path = wasm_path(name);
        if path.is_file() {
            crate::exports::trim(&path)?;
        }
    }
    Ok(())
}

/// Runs `cargo build --release --target wasm32-wasip1 -p <crate>...` in the workspace root,
/// then [`trim_built`].
pub fn build(crates: &[&str]) -> Result<(), String> {
    crate::prereq::ensure_rust_targets(&[WASM_TARGET])?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(&cargo);
    cmd.current_dir(paths::workspace_root())
        .args(["build", "--release", "--target", WASM_TARGET])
        .arg("--target-dir")
        .arg(paths::target_dir());
    for name in crates {
        cmd.args(["-p", name]);
    }
    let output = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running {}: {e}", cargo.to_string_lossy()))?;
    if output.status.success() {
        trim_built(crates)
    } else {
        Err(format!(
            "cargo build --release --target {WASM_TARGET} -p {} failed ({}):\n{}",
            crates.join(" -p "),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}
