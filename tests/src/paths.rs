//! Where the harness finds the workspace and keeps its downloaded tools.
//!
//! Why: every test binary, the xtask and a developer's shell must agree on one location for the
//! pinned Envoy and the built filters, whatever the current directory is. The harness crate lives
//! at `<root>/tests`, so the root is its manifest directory's parent, fixed at compile time.

use std::path::{Path, PathBuf};

/// The workspace root: the directory holding the root `Cargo.toml`.
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .map_or_else(|| manifest.to_path_buf(), Path::to_path_buf)
}

/// `<root>/.tools`: project-local downloads (git-ignored), e.g. the pinned Envoy.
pub fn tools_dir() -> PathBuf {
    workspace_root().join(".tools")
}

/// The cargo target directory the workspace builds into: `CARGO_TARGET_DIR` when set (relative
/// paths resolved against the root, as cargo does for the workspace), else `<root>/target`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                workspace_root().join(dir)
            }
        }
        _ => workspace_root().join("target"),
    }
}

/// A fresh, empty scratch directory under the system temp dir, unique across threads and
/// processes. The caller owns it (and removes it when done).
pub fn fresh_temp_dir(label: &str) -> Result<PathBuf, String> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    for _ in 0..100 {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!(
            "resilience-{label}-{}-{n}-{nanos}",
            std::process::id()
        ));
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(format!("cannot create temp dir {}: {e}", dir.display())),
        }
    }
    Err("cannot create a unique temp dir".to_string())
}

/// A name no other thread or process uses at the same moment: pid, a counter and the clock.
fn unique_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "{}-{}-{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Installs a pinned tool into `dest` (a directory under [`tools_dir`]) unless
/// `is_complete(dest)` already holds.
///
/// Why: test processes start side by side, and any of them may be the first to need the tool.
/// `fill` installs into a staging directory of its own, which then becomes `dest` in one
/// `rename`: the first rename wins, a loser uses the winner's install, and nobody ever sees a
/// half-written one. A broken install (`dest` there but not complete) is moved away first.
/// `label` names the staging directories (`.<label>.partial-…`).
pub fn install_tool(
    label: &str,
    dest: &Path,
    is_complete: impl Fn(&Path) -> bool,
    fill: impl FnOnce(&Path) -> Result<(), String>,
) -> Result<(), String> {
    if is_complete(dest) {
        return Ok(());
    }
    let tools = tools_dir();
    std::fs::create_dir_all(&tools).map_err(|e| format!("creating {}: {e}", tools.display()))?;
    if dest.exists() {
        let trash = tools.join(format!(".trash-{label}-{}", unique_suffix()));
        if std::fs::rename(dest, &trash).is_ok() {
            let _ = std::fs::remove_dir_all(&trash);
        }
    }
    let staging = tools.join(format!(".{label}.partial-{}", unique_suffix()));
    let result = fill(&staging).and_then(|()| {
        if !is_complete(&staging) {
            return Err(format!(
                "installing {label} into {} left it incomplete",
                staging.display()
            ));
        }
        match std::fs::rename(&staging, dest) {
            Ok(()) => Ok(()),
            // Another process won the race: use its install.
            Err(_) if is_complete(dest) => Ok(()),
            Err(e) => Err(format!(
                "moving {} to {}: {e}",
                staging.display(),
                dest.display()
            )),
        }
    });
    if staging.exists() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn has_marker(dir: &Path) -> bool {
        dir.join("marker").is_file()
    }

    fn write_marker(dir: &Path) -> Result<(), String> {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        std::fs::write(dir.join("marker"), b"1").map_err(|e| e.to_string())
    }

    #[test]
    fn a_tool_is_installed_once_a_broken_install_is_replaced_and_an_incomplete_one_is_refused() {
        let dest = tools_dir().join(format!("test-install-{}", unique_suffix()));
        install_tool("test", &dest, has_marker, write_marker).unwrap();
        assert!(has_marker(&dest));
        install_tool("test", &dest, has_marker, |_| Err("called again".into())).unwrap();

        std::fs::remove_file(dest.join("marker")).unwrap();
        install_tool("test", &dest, has_marker, write_marker).unwrap();
        assert!(has_marker(&dest), "the broken install was replaced");

        let other = tools_dir().join(format!("test-install-{}", unique_suffix()));
        let e = install_tool("test", &other, has_marker, |d| {
            std::fs::create_dir_all(d).map_err(|e| e.to_string())
        })
        .unwrap_err();
        assert!(e.contains("incomplete"), "{e}");
        assert!(!other.exists());
        std::fs::remove_dir_all(&dest).unwrap();
    }
}
