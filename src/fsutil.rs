//! File access shared by every backend: opens that never follow a symbolic
//! link at the last component nor block on a FIFO planted there, the trust
//! rule for a file we read or replace ([`check_ours`]: a regular file owned by
//! the caller or root), and atomic writes that honour it ([`write_atomic`]).
//!
//! The fork backend keeps its PID files with these, the systemd backend its
//! unit files; neither backend reaches into the other for them.

use std::fs::{self, File, Metadata, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use crate::error::{DaemonError, Result};

/// Opens `path` with `options` plus `O_NOFOLLOW` (a symbolic link fails with
/// `ELOOP`), `O_NONBLOCK` (a FIFO does not block the open) and `O_CLOEXEC`.
pub(crate) fn open_nofollow(path: &Path, options: &mut OpenOptions) -> io::Result<File> {
    options
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
}

/// Reads a regular file, at most `max` bytes, without following a link:
/// `Ok(None)` when nothing is there; an error for a link, another kind of
/// file, or a larger file.
pub(crate) fn read_regular(path: &Path, max: u64) -> io::Result<Option<(Vec<u8>, Metadata)>> {
    let file = match open_nofollow(path, OpenOptions::new().read(true)) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "is a symbolic link; refusing to follow it",
            ))
        }
        Err(e) => return Err(e),
    };
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "is not a regular file",
        ));
    }
    let mut bytes = Vec::new();
    file.take(max + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("is larger than {max} bytes"),
        ));
    }
    Ok(Some((bytes, meta)))
}

/// Whether a file owned by `uid` may be trusted: written by the caller, or by
/// root (whom no attacker can impersonate).
pub(crate) fn trusted_uid(uid: u32) -> bool {
    uid == nix::unistd::Uid::effective().as_raw() || uid == 0
}

/// The refusal for a file that is not ours.
pub(crate) fn untrusted(path: &Path, owner: Option<u32>, reason: impl Into<String>) -> DaemonError {
    DaemonError::UntrustedFile {
        path: path.to_owned(),
        owner,
        reason: reason.into(),
    }
}

/// Checks what `lstat` says about one of our files: a regular file (or,
/// with `socket`, a Unix socket) owned by a trusted user.
pub(crate) fn check_ours(path: &Path, meta: &fs::Metadata, socket: bool) -> Result<()> {
    use std::os::unix::fs::FileTypeExt;
    let ft = meta.file_type();
    if ft.is_symlink() {
        return Err(untrusted(path, Some(meta.uid()), "is a symbolic link"));
    }
    let kind_ok = if socket { ft.is_socket() } else { ft.is_file() };
    if !kind_ok {
        let what = if socket { "a socket" } else { "a regular file" };
        return Err(untrusted(path, Some(meta.uid()), format!("is not {what}")));
    }
    if !trusted_uid(meta.uid()) {
        return Err(untrusted(
            path,
            Some(meta.uid()),
            format!(
                "is owned by UID {}, not by UID {} or root",
                meta.uid(),
                nix::unistd::Uid::effective()
            ),
        ));
    }
    Ok(())
}

/// Temporary file in the same directory (created with `O_EXCL`, so nothing
/// planted is followed), written, synced, renamed over `path`. Readers see
/// the old content or the new, never a part. What is at `path` already must
/// be ours: a symbolic link or another user's file is refused, not replaced.
///
/// Errors: [`DaemonError::UntrustedFile`] for what [`check_ours`] refuses;
/// an I/O failure is [`DaemonError::PidFileError`] (the path and the
/// `io::Error`), which a caller writing another kind of file maps to its own
/// words (the systemd backend's install does).
///
/// The temporary file is `tempfile`'s: `O_CREAT | O_EXCL | O_CLOEXEC`, mode
/// 0644 (less the umask), in `path`'s directory so the `rename(2)` of
/// `persist` stays on one file system; a rename replaces a link at `path`
/// rather than following it.
pub(crate) fn write_atomic(path: &Path, content: &[u8]) -> Result<()> {
    write_atomic_with(path, content, true)
}

/// [`write_atomic`] without the `fsync`: for run-time state (the fork
/// backend's PID file, identity record and registry entry), where readers
/// need the atomic replace and nothing needs the bytes to survive a power
/// loss (after a reboot the record is stale by its boot id anyway, and an
/// empty file left by one is garbage that `cleanup` removes). The `fsync`
/// was most of a fork start's and stop's time on a busy disk (60 ms seen).
pub(crate) fn write_atomic_runtime(path: &Path, content: &[u8]) -> Result<()> {
    write_atomic_with(path, content, false)
}

fn write_atomic_with(path: &Path, content: &[u8], durable: bool) -> Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("/"));
    match fs::symlink_metadata(path) {
        Ok(meta) => check_ours(path, &meta, false)?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(DaemonError::pid_file(path, e)),
    }
    let err = |e: io::Error| DaemonError::pid_file(path, e);
    let mut tmp = tempfile::Builder::new()
        .prefix(".daemon-lifecycle-")
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))
        .tempfile_in(dir)
        .map_err(err)?;
    tmp.write_all(content).map_err(err)?;
    if durable {
        tmp.as_file().sync_all().map_err(err)?;
    }
    tmp.persist(path).map_err(|e| err(e.error))?;
    Ok(())
}

/// Writes `file` into `dir` (the directories created, mode 0755) with
/// [`write_atomic`]; an I/O failure is `Io` saying it wrote `what`: a
/// unit file, a plist, a file of a package tree.
pub(crate) fn write_into_dir(
    dir: &Path,
    file: &str,
    content: &[u8],
    what: &str,
) -> Result<std::path::PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .map_err(|e| DaemonError::io(format!("create {}", dir.display()), e))?;
    let path = dir.join(file);
    write_atomic(&path, content).map_err(|e| match e {
        DaemonError::PidFileError { path, source } => {
            DaemonError::io(format!("write {what} {}", path.display()), source)
        }
        other => other,
    })?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn write_atomic_creates_and_replaces_leaving_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        write_atomic(&path, b"one\n").unwrap();
        write_atomic(&path, b"two\n").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two\n");
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode & !0o644, 0, "mode {mode:o} is at most 0644");
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["f"]);
    }

    #[test]
    fn write_atomic_refuses_a_link_and_leaves_its_target_alone() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("precious");
        fs::write(&target, b"keep").unwrap();
        let link = dir.path().join("f");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        match write_atomic(&link, b"x") {
            Err(DaemonError::UntrustedFile { path, reason, .. }) => {
                assert_eq!(path, link);
                assert!(reason.contains("symbolic link"), "{reason}");
            }
            other => panic!("expected UntrustedFile, got {other:?}"),
        }
        assert_eq!(fs::read(&target).unwrap(), b"keep");
        assert!(fs::symlink_metadata(&link).unwrap().is_symlink());
    }

    #[test]
    fn write_atomic_refuses_what_is_not_a_regular_file() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("d");
        fs::create_dir(&sub).unwrap();
        assert!(matches!(
            write_atomic(&sub, b"x"),
            Err(DaemonError::UntrustedFile { .. })
        ));
    }

    #[test]
    fn write_atomic_io_errors_carry_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing-dir").join("f");
        match write_atomic(&path, b"x") {
            Err(DaemonError::PidFileError { path: p, .. }) => assert_eq!(p, path),
            other => panic!("expected PidFileError, got {other:?}"),
        }
    }

    #[test]
    fn read_regular_does_not_follow_links() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("t");
        fs::write(&target, b"abc").unwrap();
        let link = dir.path().join("l");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(read_regular(&link, 10).is_err());
        assert!(read_regular(&dir.path().join("none"), 10)
            .unwrap()
            .is_none());
        assert_eq!(read_regular(&target, 10).unwrap().unwrap().0, b"abc");
        assert!(read_regular(&target, 2).is_err());
    }
}
