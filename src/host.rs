//! Host checks: facts about the machine that will run the daemon, as
//! opposed to the pure well-formedness checks of the config
//! (`config::validate`). [`Host`] is what such a machine answers
//! ([`LocalHost`], this machine, or [`SshHost`], another one over ssh); [`check`] is the one list of questions asked before a
//! start. Rendering a unit asks none of them.
//!
//! Account lookups live here too, so the fork backend's credentials and the
//! systemd backend's `User=`/`Group=` check read names the same way.

use std::fmt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use nix::unistd::{Gid, Group, Uid, User};

use crate::error::{DaemonError, Result};
use crate::spec::ServiceSpec;

pub mod ssh;

pub use ssh::{SshDestination, SshHost, SshOptions};

/// What a host that runs daemons can be asked before a start. Each method
/// answers for one path or name, with the typed error a caller reports.
/// The answers may take a round trip to another machine ([`SshHost`]):
/// async callers ask from a blocking task.
pub trait Host: Send + Sync + fmt::Debug {
    /// `path` is a regular file this caller may execute there:
    /// [`DaemonError::BinaryNotFound`] or
    /// [`DaemonError::BinaryNotExecutable`] otherwise.
    fn check_executable(&self, path: &Path) -> Result<()>;

    /// `path` is an existing directory there; otherwise
    /// [`DaemonError::InvalidConfig`] naming `field`.
    fn check_directory(&self, field: &str, path: &Path) -> Result<()>;

    /// `user` (a name or a numeric UID) exists there; a numeric UID without
    /// an entry is accepted, as systemd accepts it.
    fn check_user(&self, user: &str) -> Result<()>;

    /// `group` (a name or a numeric GID) exists there.
    fn check_group(&self, group: &str) -> Result<()>;
}

/// Runs `checks` against `host` on a blocking thread: on a remote host
/// each question is an ssh round trip, which must not hold an async thread
/// (a fleet's other hosts go on meanwhile).
pub(crate) async fn off_thread<T: Send + 'static>(
    host: std::sync::Arc<dyn Host>,
    checks: impl FnOnce(&dyn Host) -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(move || checks(host.as_ref()))
        .await
        .map_err(|e| DaemonError::io("host checks", std::io::Error::other(e.to_string())))?
}

/// Asks `host` everything a start of `spec` needs: the binary is
/// executable, the working directory and the log files' directories exist,
/// the user and group exist. The first problem is returned.
///
/// For a template (installed as systemd's `NAME@.service`), a path that
/// holds `{instance}` names no directory yet: it is checked per instance.
pub fn check(host: &dyn Host, spec: &ServiceSpec) -> Result<()> {
    let per_instance = |p: &Path| {
        spec.is_template() && p.to_str().is_some_and(crate::config::instance::uses_token)
    };
    host.check_executable(&spec.program)?;
    if let Some(dir) = spec.working_dir.as_deref().filter(|d| !per_instance(d)) {
        host.check_directory("working_dir", dir)?;
    }
    for (field, file) in spec.logs.files() {
        let dir = file.parent().unwrap_or(Path::new("/"));
        if !per_instance(dir) {
            host.check_directory(field, dir)?;
        }
    }
    if let Some(user) = &spec.run_as.user {
        host.check_user(user)?;
    }
    if let Some(group) = &spec.run_as.group {
        host.check_group(group)?;
    }
    Ok(())
}

/// This machine, as the calling process sees it.
#[derive(Debug, Clone, Copy, Default)]
pub struct LocalHost;

impl Host for LocalHost {
    fn check_executable(&self, path: &Path) -> Result<()> {
        let meta = match std::fs::metadata(path) {
            Ok(m) => m,
            // A directory on the way that is not one, or cannot be
            // searched: the binary cannot be run, which is what the caller
            // needs to know.
            Err(e)
                if e.kind() == std::io::ErrorKind::NotFound
                    || e.raw_os_error() == Some(libc::ENOTDIR) =>
            {
                return Err(DaemonError::BinaryNotFound {
                    path: path.to_owned(),
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                return Err(DaemonError::BinaryNotExecutable {
                    path: path.to_owned(),
                })
            }
            Err(e) => return Err(DaemonError::io(format!("stat {}", path.display()), e)),
        };
        // The mode bits say someone may execute it; access(2) says whether we may.
        if !meta.is_file()
            || meta.permissions().mode() & 0o111 == 0
            || nix::unistd::access(path, nix::unistd::AccessFlags::X_OK).is_err()
        {
            return Err(DaemonError::BinaryNotExecutable {
                path: path.to_owned(),
            });
        }
        Ok(())
    }

    fn check_directory(&self, field: &str, path: &Path) -> Result<()> {
        if path.is_dir() {
            return Ok(());
        }
        Err(DaemonError::invalid(
            field,
            format!("{} is not an existing directory", path.display()),
        ))
    }

    fn check_user(&self, user: &str) -> Result<()> {
        self::user(user).map(drop)
    }

    fn check_group(&self, group: &str) -> Result<()> {
        self::group(group).map(drop)
    }
}

fn lookup_err(field: &str, e: nix::Error) -> DaemonError {
    DaemonError::io(format!("look up {field}"), std::io::Error::from(e))
}

/// `user` as a name or a numeric UID: its UID and passwd entry. A numeric
/// UID without an entry is allowed (as systemd allows it); an unknown name
/// is `InvalidConfig { field: "user" }`.
pub(crate) fn user(spec: &str) -> Result<(u32, Option<User>)> {
    let numeric = spec.parse::<u32>().ok();
    let found = match numeric {
        Some(uid) => User::from_uid(Uid::from_raw(uid)),
        None => User::from_name(spec),
    }
    .map_err(|e| lookup_err("user", e))?;
    match (found, numeric) {
        (Some(u), _) => Ok((u.uid.as_raw(), Some(u))),
        (None, Some(uid)) => Ok((uid, None)),
        (None, None) => Err(DaemonError::invalid(
            "user",
            format!("no such user {} on this host", crate::text::quote(spec)),
        )),
    }
}

/// `group` as a name or a numeric GID; an unknown name is
/// `InvalidConfig { field: "group" }`.
pub(crate) fn group(spec: &str) -> Result<Gid> {
    if let Ok(gid) = spec.parse::<u32>() {
        return Ok(Gid::from_raw(gid));
    }
    match Group::from_name(spec).map_err(|e| lookup_err("group", e))? {
        Some(g) => Ok(g.gid),
        None => Err(DaemonError::invalid(
            "group",
            format!("no such group {} on this host", crate::text::quote(spec)),
        )),
    }
}
