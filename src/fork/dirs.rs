//! The PID directory's trust checks, run by every operation: who owns it
//! and every directory above it, and whether others can write there.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use super::pidfile::{self, Paths};
use crate::error::{DaemonError, Result};
use crate::spec::ServiceSpec;

/// What an operation does in the PID directory.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum DirUse {
    /// Looks only.
    Read,
    /// Writes or removes files there.
    Write,
    /// Writes, and creates the default directory if it is missing.
    Create,
}

/// The PID file's directory, checked the same way by every operation:
///
/// - the default directory (which may be a predictable name in `/tmp`) must
///   be a real directory owned by us, closed to others (it is created, mode
///   0700, or 0755 for root's under `/run`, by `start`);
/// - any directory other users can write (mode `o+w`, or `g+w` for a group
///   that is not root's or, for a non-root caller, not the caller's own) must
///   be sticky, so no one can replace our files there;
/// - every file of our set that exists must be ours (see
///   [`pidfile::check_ours`]), and the PID file must not be a directory.
///
/// `Ok(false)`: the directory does not exist (nothing there to act on).
pub(super) fn check_pid_dir(spec: &ServiceSpec, paths: &Paths, usage: DirUse) -> Result<bool> {
    use std::os::unix::fs::MetadataExt;
    let dir = paths.pid_file.parent().unwrap_or(Path::new("/"));
    let default = spec.pid_file_is_default();
    let me = nix::unistd::Uid::effective();
    let dir_error = |kind: std::io::ErrorKind, msg: String| {
        DaemonError::pid_file(&paths.pid_file, std::io::Error::new(kind, msg))
    };
    if default && usage == DirUse::Create && !pidfile::present(dir) {
        let mode = if me.is_root() { 0o755 } else { 0o700 };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(mode)
            .create(dir)
            .map_err(|e| DaemonError::pid_file(&paths.pid_file, e))?;
    }
    let meta = match if default {
        std::fs::symlink_metadata(dir)
    } else {
        std::fs::metadata(dir)
    } {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && usage != DirUse::Create => {
            return Ok(false)
        }
        // The directory of a PID file the config names must exist (we do
        // not create directories the operator did not ask for): a config
        // error, like a missing working_dir.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !default => {
            return Err(DaemonError::invalid(
                "pid_file",
                format!("directory {} does not exist", dir.display()),
            ));
        }
        Err(e) => {
            return Err(dir_error(
                e.kind(),
                format!("directory {}: {e}", dir.display()),
            ));
        }
    };
    if !meta.is_dir() {
        return Err(dir_error(
            std::io::ErrorKind::NotADirectory,
            format!("{} is not a directory", dir.display()),
        ));
    }
    if default && (meta.uid() != me.as_raw() || (!me.is_root() && meta.mode() & 0o077 != 0)) {
        return Err(dir_error(
            std::io::ErrorKind::PermissionDenied,
            format!(
                "default PID directory {} is not a private directory owned by UID {me}",
                dir.display()
            ),
        ));
    }
    check_dir_chain(&paths.pid_file, dir)?;
    // Every file of our set that is there must be ours, before anything is
    // created (the lock file included).
    for (path, socket) in [
        (&paths.pid_file, false),
        (&paths.identity, false),
        (&paths.lock, false),
        (&paths.control, true),
    ] {
        if let Ok(m) = std::fs::symlink_metadata(path) {
            if m.is_dir() && path == &paths.pid_file {
                return Err(DaemonError::invalid(
                    "pid_file",
                    format!("{} is a directory", path.display()),
                ));
            }
            pidfile::check_ours(path, &m, socket)?;
        }
    }
    if let Ok(m) = std::fs::symlink_metadata(&paths.notify_dir) {
        if m.file_type().is_symlink() || !m.is_dir() || !pidfile::trusted_uid(m.uid()) {
            return Err(pidfile::untrusted(
                &paths.notify_dir,
                Some(m.uid()),
                "is not a directory we made",
            ));
        }
    }
    Ok(true)
}

/// The PID directory and every directory above it, as written and as
/// resolved: each must be owned by root or the caller (a directory's owner
/// can rename or remove anything in it, sticky bit or not), and one that
/// others can write (`o+w`, or `g+w` for a group that is not root's or, for
/// a non-root caller, not the caller's own) must be sticky. A symbolic link
/// on the way must be owned by root or the caller too (its owner could
/// re-point it between two operations). The same rule as OpenSSH's
/// `StrictModes`.
pub(super) fn check_dir_chain(pid_file: &Path, dir: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let me = nix::unistd::Uid::effective();
    let refuse = |path: &Path, why: String| {
        DaemonError::pid_file(
            pid_file,
            std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!(
                    "{}: {why}; anyone who can could replace the PID file and make us signal their choice \
                     of process: use a directory only you (or root) can write, e.g. /run for root",
                    path.display()
                ),
            ),
        )
    };
    let judge = |path: &Path, meta: &std::fs::Metadata| -> Result<()> {
        if !pidfile::trusted_uid(meta.uid()) {
            let what = if meta.file_type().is_symlink() {
                "symbolic link"
            } else {
                "directory"
            };
            return Err(refuse(
                path,
                format!(
                    "the {what} is owned by UID {}, not by UID {me} or root",
                    meta.uid()
                ),
            ));
        }
        if meta.file_type().is_symlink() {
            return Ok(());
        }
        let group_ok =
            meta.gid() == 0 || (!me.is_root() && meta.gid() == nix::unistd::getegid().as_raw());
        let others_write = meta.mode() & 0o002 != 0 || (meta.mode() & 0o020 != 0 && !group_ok);
        if others_write && meta.mode() & 0o1000 == 0 {
            return Err(refuse(
                path,
                format!(
                    "the directory can be written by other users (mode {:o}) and is not sticky",
                    meta.mode() & 0o7777
                ),
            ));
        }
        Ok(())
    };
    let mut written = PathBuf::new();
    for part in dir.components() {
        written.push(part);
        if let Ok(meta) = std::fs::symlink_metadata(&written) {
            judge(&written, &meta)?;
        }
    }
    if let Ok(real) = std::fs::canonicalize(dir) {
        for ancestor in real.ancestors() {
            if let Ok(meta) = std::fs::symlink_metadata(ancestor) {
                judge(ancestor, &meta)?;
            }
        }
    }
    Ok(())
}

/// A start writes in the PID directory (checked only once it is known that
/// nothing runs: a stop, or a start that finds the daemon running, must
/// work in a directory that became read-only).
pub(super) fn check_dir_writable(paths: &Paths) -> Result<()> {
    let dir = paths.pid_file.parent().unwrap_or(Path::new("/"));
    if nix::unistd::access(
        dir,
        nix::unistd::AccessFlags::W_OK | nix::unistd::AccessFlags::X_OK,
    )
    .is_err()
    {
        return Err(DaemonError::pid_file(
            &paths.pid_file,
            std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!("directory {} is not writable", dir.display()),
            ),
        ));
    }
    Ok(())
}
