//! The modules' last optimization pass: binaryen's `wasm-opt`, pinned, from the npm registry.
//!
//! Why: rustc and LLVM optimize each function well but leave module-level savings on the table
//! (duplicate functions, unused locals, index order, data segments full of zeros). One
//! `wasm-opt` pass takes 5–7 % off every module (the breaker from 317 to 297 KiB, the pack from
//! 2.14 to 2.02 MiB; issue 12). Size matters because every proxy worker compiles the module and
//! V8 keeps data proportional to it. The level is `-O1`: `-O2`, `-Os` and `-Oz` shrink the
//! breaker 1–3 % more but raise Envoy's resident memory by 7–15 MiB per module (measured with
//! `cargo pack bench --quick --baseline`), which costs more than the bytes save.
//!
//! How: the npm package `binaryen` is binaryen compiled to wasm, run by Node.js (already needed
//! for the core's in-wasm tests), so no C++ toolchain and no platform binary is involved. It is
//! installed once into `<root>/.tools/binaryen-<version>`. The features passed are the ones
//! rustc's `wasm32-wasip1` output uses; a module using another one fails wasm-opt's validation,
//! which names it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard};

use crate::paths;

/// The pinned npm package `binaryen`.
pub const BINARYEN_VERSION: &str = "132.0.0";

/// The arguments of the pass: the level; functions and locals reordered by use, so the most
/// used get the shortest indices (2.4 KB off the breaker, no change in Envoy's memory); the
/// `producers` section dropped; then the wasm features the input may use.
pub const WASM_OPT_ARGS: &[&str] = &[
    "-O1",
    "--reorder-functions",
    "--reorder-locals",
    "--strip-producers",
    "--enable-bulk-memory-opt",
    "--enable-sign-ext",
    "--enable-mutable-globals",
    "--enable-nontrapping-float-to-int",
];

static INSTALLED: Mutex<Option<PathBuf>> = Mutex::new(None);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// `<root>/.tools/binaryen-<version>`.
pub fn install_dir() -> PathBuf {
    paths::tools_dir().join(format!("binaryen-{BINARYEN_VERSION}"))
}

fn wasm_opt_in(dir: &Path) -> PathBuf {
    dir.join("node_modules/binaryen/bin/wasm-opt")
}

/// The `wasm-opt` script, installing the pinned package first if needed.
pub fn ensure_installed() -> Result<PathBuf, String> {
    let mut installed = lock(&INSTALLED);
    if let Some(script) = installed.as_ref() {
        return Ok(script.clone());
    }
    let dest = install_dir();
    paths::install_tool(
        &format!("binaryen-{BINARYEN_VERSION}"),
        &dest,
        |d| wasm_opt_in(d).is_file(),
        npm_install,
    )?;
    let script = wasm_opt_in(&dest);
    *installed = Some(script.clone());
    Ok(script)
}

fn npm_install(staging: &Path) -> Result<(), String> {
    crate::prereq::ensure_npm()?;
    println!("installing binaryen {BINARYEN_VERSION} from the npm registry (once)");
    std::fs::create_dir_all(staging).map_err(|e| format!("{}: {e}", staging.display()))?;
    let spec = format!("binaryen@{BINARYEN_VERSION}");
    let output = Command::new("npm")
        .args([
            "install",
            "--no-audit",
            "--no-fund",
            "--no-save",
            "--prefix",
        ])
        .arg(staging)
        .arg(&spec)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running npm: {e}"))?;
    crate::prereq::installed(&output, &format!("npm install {spec}"))
}

/// `module` after `wasm-opt` with [`WASM_OPT_ARGS`].
pub fn optimize(module: &[u8]) -> Result<Vec<u8>, String> {
    crate::prereq::ensure_node()?;
    let script = ensure_installed()?;
    let dir = paths::fresh_temp_dir("wasm-opt")?;
    let (input, output) = (dir.join("in.wasm"), dir.join("out.wasm"));
    let result = std::fs::write(&input, module)
        .map_err(|e| format!("{}: {e}", input.display()))
        .and_then(|()| {
            let run = Command::new("node")
                .arg(&script)
                .args(WASM_OPT_ARGS)
                .arg(&input)
                .arg("-o")
                .arg(&output)
                .stdin(Stdio::null())
                .output()
                .map_err(|e| format!("running node {}: {e}", script.display()))?;
            if !run.status.success() {
                return Err(format!(
                    "wasm-opt {} failed ({}):\n{}",
                    WASM_OPT_ARGS.join(" "),
                    run.status,
                    String::from_utf8_lossy(&run.stderr)
                ));
            }
            std::fs::read(&output).map_err(|e| format!("{}: {e}", output.display()))
        });
    let _ = std::fs::remove_dir_all(&dir);
    result
}
