//! What integration tests need from outside the repository: the shared
//! capture corpus (`../shared/pcaps`) and the Python packages of the test
//! set-up (`.venv`, made by `just test`). A fresh clone elsewhere has
//! neither; its tests that need them say so and are skipped, unless
//! `SHADOWCTL_REQUIRE_CORPUS=1` / `SHADOWCTL_REQUIRE_PYTHON=1` (set by
//! `.ci/run`) turn the absence into a failure.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn required(var: &str) -> bool {
    std::env::var(var).is_ok_and(|v| v == "1")
}

/// A file of the shared corpus, or None (skipped, said on stderr) when the
/// corpus is absent and not required.
pub fn corpus_file(name: &str) -> Option<PathBuf> {
    let dir = root().join("../shared/pcaps");
    let path = dir.join(name);
    if path.exists() {
        return Some(path);
    }
    assert!(
        !required("SHADOWCTL_REQUIRE_CORPUS") && !dir.exists(),
        "shared corpus file missing: {} (SHADOWCTL_REQUIRE_CORPUS=1, or the corpus is there but lacks it)",
        path.display()
    );
    eprintln!(
        "skipped: needs the shared capture corpus at {} (absent); set SHADOWCTL_REQUIRE_CORPUS=1 to make this a failure",
        dir.display()
    );
    None
}

/// Several corpus files, all or none.
pub fn corpus_files(names: &[&str]) -> Option<Vec<PathBuf>> {
    names.iter().map(|n| corpus_file(n)).collect()
}

/// The test set-up's Python (`SHADOWCTL_PYTHON`, else `.venv/bin/python`)
/// when it can import every one of `modules`; None (skipped, said on
/// stderr) otherwise, unless `SHADOWCTL_REQUIRE_PYTHON=1`.
pub fn python_with(modules: &[&str]) -> Option<PathBuf> {
    let python = std::env::var_os("SHADOWCTL_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(".venv/bin/python"));
    let imports = format!("import {}", modules.join(", "));
    let ok = Path::new(&python).exists()
        && std::process::Command::new(&python)
            .args(["-c", &imports])
            .output()
            .is_ok_and(|o| o.status.success());
    if ok {
        return Some(python);
    }
    assert!(
        !required("SHADOWCTL_REQUIRE_PYTHON"),
        "{} cannot `{imports}`; `just test` makes the virtual environment (SHADOWCTL_REQUIRE_PYTHON=1)",
        python.display()
    );
    eprintln!(
        "skipped: needs Python with {} ({} has not); `just test` installs them",
        modules.join(", "),
        python.display()
    );
    None
}

/// A tmpfs of `size` (`mount -o size=`, e.g. "16m") mounted on a fresh
/// directory, unmounted when dropped: a small disk that fills up. Mounting
/// needs root, as the live capture tests do; None (said on stderr) when
/// `SHADOWCTL_SKIP_LIVE` is set, a failure otherwise.
pub struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    pub fn mount(size: &str) -> Option<Self> {
        if std::env::var_os("SHADOWCTL_SKIP_LIVE").is_some() {
            eprintln!("SHADOWCTL_SKIP_LIVE set: the full-disk test is skipped");
            return None;
        }
        let disk = Self(tempfile::tempdir().unwrap());
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(disk.0.path())
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            mounted,
            "mounting a tmpfs needs root (or set SHADOWCTL_SKIP_LIVE=1)"
        );
        Some(disk)
    }

    pub fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.0.path())
            .status();
    }
}
