//! What a run may write over. Checked before any work starts, so a mistake
//! in the command line never costs the user a file they already had:
//! an output that is also an input, two outputs on one path, and outputs
//! that are not files (a directory, a socket) are refused.
//!
//! Character devices and FIFOs (`/dev/null`, a named pipe read by another
//! program) are written straight to by the writers; never renamed over.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// Why an output path is refused (exit code 2).
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("{flag} {path}: this is an input too ({input}); writing it would destroy the input: choose another output path")]
    IsInput {
        flag: String,
        path: String,
        input: String,
    },
    #[error("{flag} {path}: also given as {other}; each output needs its own path")]
    Twice {
        flag: String,
        path: String,
        other: String,
    },
    #[error("{flag} {path}: is a {kind}, not a file; give a file path")]
    NotAFile {
        flag: String,
        path: String,
        kind: &'static str,
    },
}

/// How an existing path is to be written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteMode {
    /// Absent or a regular file: write a temporary file beside it and rename
    /// it into place when complete.
    Replace,
    /// A character device or FIFO: open it and write straight to it.
    Direct,
}

/// What kind of thing `path` names, when it is not writable as an output.
fn refused_kind(meta: &std::fs::Metadata) -> Option<&'static str> {
    let t = meta.file_type();
    if t.is_dir() {
        Some("directory")
    } else if t.is_socket() {
        Some("socket")
    } else if t.is_block_device() {
        Some("block device")
    } else {
        None
    }
}

/// How to write `path` (following symlinks), or what it is when it cannot
/// be written as a file.
pub fn write_mode(path: &Path) -> Result<WriteMode, &'static str> {
    match std::fs::metadata(path) {
        Err(_) => Ok(WriteMode::Replace),
        Ok(m) => {
            if let Some(kind) = refused_kind(&m) {
                return Err(kind);
            }
            let t = m.file_type();
            if t.is_char_device() || t.is_fifo() {
                Ok(WriteMode::Direct)
            } else {
                Ok(WriteMode::Replace)
            }
        }
    }
}

/// Where a renamed-into-place file really goes: through a symlink to its
/// target, so the link stays a link and its target gets the new content.
pub fn resolve(path: &Path) -> PathBuf {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => {
            std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
        }
        _ => path.to_path_buf(),
    }
}

/// Write a small output (a JSON summary, a report) whole or not at all:
/// through a temporary file beside it, synced, then renamed into place, so
/// a run killed mid-write leaves the previous file, never half of one. A
/// character device or FIFO is written straight to.
pub fn write_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    if write_mode(path) == Ok(WriteMode::Direct) {
        return std::fs::write(path, bytes);
    }
    let path = resolve(path);
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{}.partial", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let written = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        if let Ok(old) = std::fs::metadata(&path) {
            f.set_permissions(old.permissions())?;
        }
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// One file's identity: its inode when it exists, else its absolute path
/// (parent canonicalized), so `a.json` and `./a.json` are the same.
#[derive(PartialEq, Eq)]
enum Identity {
    Inode(u64, u64),
    Path(PathBuf),
}

fn identity(p: &Path) -> Identity {
    if let Ok(m) = std::fs::metadata(p) {
        return Identity::Inode(m.dev(), m.ino());
    }
    let parent = match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let parent = std::fs::canonicalize(&parent).unwrap_or(parent);
    Identity::Path(parent.join(p.file_name().unwrap_or_default()))
}

/// Check every output (flag, path) before a run: none is an input, none is
/// given twice, none is a directory, socket or block device. Devices that
/// are ordinary to write to (`/dev/null`, a FIFO) are allowed.
pub fn check_outputs(outputs: &[(&str, &Path)], inputs: &[&Path]) -> Result<(), OutputError> {
    let inputs: Vec<(&Path, Identity)> = inputs.iter().map(|p| (*p, identity(p))).collect();
    let mut seen: Vec<(&str, &Path, Identity)> = Vec::new();
    for &(flag, path) in outputs {
        if let Err(kind) = write_mode(path) {
            return Err(OutputError::NotAFile {
                flag: flag.into(),
                path: path.display().to_string(),
                kind,
            });
        }
        // Writing to /dev/null twice destroys nothing.
        if write_mode(path) == Ok(WriteMode::Direct) {
            continue;
        }
        let id = identity(path);
        if let Some((input, _)) = inputs.iter().find(|(_, i)| *i == id) {
            return Err(OutputError::IsInput {
                flag: flag.into(),
                path: path.display().to_string(),
                input: input.display().to_string(),
            });
        }
        if let Some((other, _, _)) = seen.iter().find(|(_, _, i)| *i == id) {
            return Err(OutputError::Twice {
                flag: flag.into(),
                path: path.display().to_string(),
                other: other.to_string(),
            });
        }
        seen.push((flag, path, id));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_output_that_is_an_input_or_twice_or_a_directory_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let a = d.path().join("a.parquet");
        std::fs::write(&a, b"x").unwrap();
        let link = d.path().join("link.parquet");
        std::os::unix::fs::symlink(&a, &link).unwrap();
        let new = d.path().join("new.json");
        let dotted = d.path().join(".").join("new.json");
        assert!(matches!(
            check_outputs(&[("--out", &link)], &[&a]),
            Err(OutputError::IsInput { .. })
        ));
        assert!(matches!(
            check_outputs(&[("--json", &new), ("--html", &dotted)], &[&a]),
            Err(OutputError::Twice { .. })
        ));
        let e = check_outputs(&[("--out", d.path())], &[]).unwrap_err();
        assert!(e.to_string().contains("is a directory"), "{e}");
        check_outputs(&[("--out", &new)], &[&a]).unwrap();
        check_outputs(
            &[
                ("--json", Path::new("/dev/null")),
                ("--html", Path::new("/dev/null")),
            ],
            &[&a],
        )
        .unwrap();
        assert_eq!(resolve(&link), std::fs::canonicalize(&a).unwrap());
    }

    /// A small output replaces the old file whole, keeps its mode and
    /// leaves no temporary file; a FIFO is written straight to.
    #[test]
    fn small_outputs_are_replaced_whole() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.json");
        std::fs::write(&path, b"old").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        write_file(&path, b"{\"new\":1}").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"{\"new\":1}");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "no temporary file left");
        // A directory that cannot be written: an error, the old file kept.
        let ro = dir.path().join("ro");
        std::fs::create_dir(&ro).unwrap();
        let kept = ro.join("k.json");
        std::fs::write(&kept, b"kept").unwrap();
        std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o500)).unwrap();
        let refused = write_file(&kept, b"new");
        std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o700)).unwrap();
        if refused.is_ok() {
            // Running as root: permissions do not bind; nothing to show.
            return;
        }
        assert_eq!(std::fs::read(&kept).unwrap(), b"kept");
    }
}
