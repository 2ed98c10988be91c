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

/// The module crates whose `.wasm` files Envoy loads: each filter alone, and the pack.
pub const MODULES: &[&str] = &[
    "circuit-breaker",
    "retry-budget",
    "failure-padding",
    "request-validator",
    "slow-start",
    "resilience-pack",
];

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
/// release mode, once per process, and returns the path of the finished module ([`finish`]): a
/// file no later build rewrites, so an Envoy a test starts reads whole bytes even while another
/// test process builds. Err carries cargo's output.
pub fn filter_wasm(crate_name: &str) -> Result<PathBuf, String> {
    // Held across the build: concurrent tests wait for one build instead of racing.
    let mut built = lock(&BUILT);
    if let Some(path) = built.get(crate_name) {
        return Ok(path.clone());
    }
    let path = wasm_path(crate_name);
    let _builds = BuildLock::take()?;
    if std::env::var(SKIP_BUILD_ENV).is_ok_and(|v| v == "1") {
        if !path.is_file() {
            return Err(format!(
                "{SKIP_BUILD_ENV}=1 but {} does not exist",
                path.display()
            ));
        }
    } else {
        run_cargo_build(&[crate_name])?;
        if !path.is_file() {
            return Err(format!(
                "cargo built {crate_name} but {} does not exist (is it a cdylib?)",
                path.display()
            ));
        }
    }
    // Built here or by `cargo pack` before the tests: either way the finished copy is handed out.
    let finished = finish(&path)?;
    built.insert(crate_name.to_string(), finished.clone());
    Ok(finished)
}

/// Builds every module of [`MODULES`] ([`filter_wasm`]) and returns the directory that holds
/// them all, finished, under their usual names: for configs that name modules by file.
pub fn modules_dir() -> Result<PathBuf, String> {
    let mut dir = None;
    for m in MODULES {
        let path = filter_wasm(m)?;
        let parent = path
            .parent()
            .ok_or_else(|| format!("{} has no parent directory", path.display()))?;
        match &dir {
            None => dir = Some(parent.to_owned()),
            Some(d) if d == parent => {}
            Some(d) => {
                return Err(format!(
                    "{} is not in {} with the other modules",
                    path.display(),
                    d.display()
                ))
            }
        }
    }
    dir.ok_or_else(|| "no modules".to_owned())
}

/// Every test process builds, and cargo re-links each module into place on every build, fresh
/// or not (it removes the file, then links it from `deps/`). A process that looked at a module
/// in that moment found none, and one that read it just after found the unfinished module. So
/// the build and the finishing run under one lock file for all processes.
struct BuildLock(#[allow(dead_code)] std::fs::File);

impl BuildLock {
    fn take() -> Result<Self, String> {
        let dir = paths::target_dir().join(WASM_TARGET);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let path = dir.join("harness-build.lock");
        std::fs::File::create(&path)
            .and_then(|f| f.lock().map(|()| BuildLock(f)))
            .map_err(|e| format!("locking {}: {e}", path.display()))
    }
}

/// Makes each built module of `crates` what ships ([`finish`]).
pub fn finish_built(crates: &[&str]) -> Result<(), String> {
    for name in crates {
        let path = wasm_path(name);
        if path.is_file() {
            finish(&path)?;
        }
    }
    Ok(())
}

/// Turns the module cargo built at `path` into the module that ships, in place: the callbacks it
/// names as unused taken out of its exports ([`crate::exports::trimmed`]), then binaryen's pass
/// ([`crate::binaryen::optimize`]). A module without the exports section (a test's no-op
/// filter, or one already finished) is left alone.
///
/// Returns the path of the module's copy under `finished/<name>.wasm` beside `path`: cargo never
/// writes there, and the copy is replaced (in one rename) only when its bytes change, so an Envoy
/// a test starts reads whole, finished bytes even while another test process builds. The
/// directory holds every finished module under its usual name.
///
/// Cargo puts the unfinished module back on every build, fresh or not (it re-links the file
/// from its `deps/`), and every test process builds; so the finished bytes are kept beside it,
/// under `trimmed/<name>-<hash>.wasm` (the hash covers the unfinished bytes and binaryen's
/// version and arguments), and each module is finished once. Test processes that start
/// together wait for the first one's work on a lock file instead of repeating it. The new file
/// replaces the old in one rename, so a concurrent reader sees one or the other.
pub fn finish(path: &std::path::Path) -> Result<PathBuf, String> {
    use std::hash::{Hash, Hasher};
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if !crate::exports::has_section(&bytes) {
        return publish(path, &bytes);
    }
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    crate::binaryen::BINARYEN_VERSION.hash(&mut h);
    crate::binaryen::WASM_OPT_ARGS.hash(&mut h);
    let stem = path
        .file_stem()
        .map_or("module".into(), |s| s.to_string_lossy());
    let dir = path.with_file_name("trimmed");
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let cached = dir.join(format!("{stem}-{:016x}.wasm", h.finish()));
    let lock_path = dir.join(format!("{stem}.lock"));
    let lock = std::fs::File::create(&lock_path)
        .and_then(|f| f.lock().map(|()| f))
        .map_err(|e| format!("locking {}: {e}", lock_path.display()))?;
    let shipped = match std::fs::read(&cached) {
        Ok(shipped) => shipped,
        Err(_) => {
            let trimmed = crate::exports::trimmed(&bytes)
                .map_err(|e| format!("{}: {e}", path.display()))?
                .unwrap_or(bytes);
            let shipped = crate::binaryen::optimize(&trimmed)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            // One kept per module: the one of an older build goes.
            if let Ok(entries) = std::fs::read_dir(&dir) {
                for e in entries.flatten() {
                    let name = e.file_name().to_string_lossy().into_owned();
                    if name
                        .strip_prefix(&*stem)
                        .and_then(|r| r.strip_prefix('-'))
                        .is_some_and(|r| r.ends_with(".wasm"))
                    {
                        let _ = std::fs::remove_file(e.path());
                    }
                }
            }
            replace(&cached, &shipped)?;
            shipped
        }
    };
    drop(lock);
    replace(path, &shipped)?;
    publish(path, &shipped)
}

/// Puts `bytes` at `finished/<file name of path>` unless they are already there; returns that path.
fn publish(path: &std::path::Path, bytes: &[u8]) -> Result<PathBuf, String> {
    let dir = path.with_file_name("finished");
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let out = dir.join(path.file_name().unwrap_or_default());
    if std::fs::read(&out).ok().as_deref() != Some(bytes) {
        replace(&out, bytes)?;
    }
    Ok(out)
}

/// Writes `bytes` to `path` through a temporary file and one rename.
fn replace(path: &std::path::Path, bytes: &[u8]) -> Result<(), String> {
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    std::fs::write(&tmp, bytes).map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))
}

/// Runs `cargo build --release --target wasm32-wasip1 -p <crate>...` in the workspace root,
/// then [`finish_built`], under the [`BuildLock`].
pub fn build(crates: &[&str]) -> Result<(), String> {
    let _builds = BuildLock::take()?;
    run_cargo_build(crates)?;
    finish_built(crates)
}

fn run_cargo_build(crates: &[&str]) -> Result<(), String> {
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
        Ok(())
    } else {
        Err(format!(
            "cargo build --release --target {WASM_TARGET} -p {} failed ({}):\n{}",
            crates.join(" -p "),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}
