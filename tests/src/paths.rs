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
