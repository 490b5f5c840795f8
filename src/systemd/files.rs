//! The unit files the backend reads and writes, wherever the manager is:
//! on this machine (through `fsutil`: no-follow reads, atomic writes), or
//! on the remote host over its ssh connection (the same checks, made there
//! by [`SshHost`]'s scripts). Install, uninstall, drift and the transient
//! file's rewrite go through here, so they work the same on both.

use std::path::{Path, PathBuf};

use super::install;
use super::state::UnitState;
use super::unit::UnitSpec;
use super::SystemdBackend;
use crate::config::Scope;
use crate::error::{DaemonError, Result};
use crate::host::ssh::RemoteFile;
use crate::host::SshHost;
use crate::spec::ServiceSpec;

/// The largest unit file we read.
const MAX_UNIT_FILE: u64 = 1 << 20;

impl SystemdBackend {
    /// The host checks of `spec`, asked of the machine the manager runs on
    /// (a remote host's from a blocking task: each is an ssh round trip).
    pub(super) async fn check_host(&self, spec: &ServiceSpec) -> Result<()> {
        let Some(host) = self.remote.clone() else {
            return crate::host::check(&crate::host::LocalHost, spec);
        };
        let spec = spec.clone();
        crate::host::off_thread(host, move |h| crate::host::check(h, &spec)).await
    }

    /// The liveness probe helper a unit names (`ExecStartPost=`) is an
    /// executable on the machine the manager runs on: a remote host needs
    /// its own `daemonctl` (the local one's path means nothing there), so a
    /// missing one is a clear error before the start instead of a unit that
    /// fails in `ExecStartPost=`.
    pub(super) async fn check_probe_helper(&self, unit_spec: &UnitSpec) -> Result<()> {
        let Some(program) = unit_spec.exec_start_post.as_ref().and_then(|a| a.first()) else {
            return Ok(());
        };
        let program = PathBuf::from(program);
        let found = match self.remote.clone() {
            None => crate::host::Host::check_executable(&crate::host::LocalHost, &program),
            Some(host) => {
                let p = program.clone();
                crate::host::off_thread(host, move |h| h.check_executable(&p)).await
            }
        };
        found.map_err(|e| {
            DaemonError::invalid(
                "liveness",
                format!(
                    "the unit's liveness probe helper {} cannot run{}: {e}; install daemonctl \
                     there and set {}= to its path (or SystemdBackend::with_probe_helper)",
                    program.display(),
                    self.remote
                        .as_ref()
                        .map(|h| format!(" on {}", h.name()))
                        .unwrap_or_default(),
                    crate::fork::SUPERVISOR_PATH_ENV,
                ),
            )
        })
    }

    /// The unit directory: the one given, or the default of the scope on
    /// the manager's machine.
    pub(super) async fn unit_dir_or_default(&self, given: Option<&Path>) -> Result<PathBuf> {
        match (given, &self.remote, self.scope) {
            (Some(d), _, _) => Ok(d.to_owned()),
            (None, None, scope) => Self::default_unit_dir(scope),
            (None, Some(_), Scope::System) => Ok(PathBuf::from("/etc/systemd/system")),
            (None, Some(host), Scope::User) => host.user_unit_dir().await,
        }
    }

    /// An installed unit file as text (`None`: nothing there), never
    /// through a link (a link is an error, as a read that follows none).
    pub(super) async fn read_unit_file(&self, path: &Path) -> Result<Option<String>> {
        let Some(host) = &self.remote else {
            return install::read_unit_file(path);
        };
        match host.read_file(path, MAX_UNIT_FILE).await? {
            RemoteFile::Absent => Ok(None),
            RemoteFile::Regular { bytes, .. } => {
                Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
            }
            RemoteFile::Link(_) | RemoteFile::Other => Err(DaemonError::io(
                format!("read {} on {}", path.display(), host.name()),
                std::io::Error::other("not a regular file"),
            )),
        }
    }

    /// A unit file that is a symlink is an alias of another unit: refused
    /// unless adopted (see `install::refuse_alias_link`).
    pub(super) async fn refuse_alias_link(
        &self,
        spec: &ServiceSpec,
        unit: &str,
        path: &Path,
    ) -> Result<()> {
        let Some(host) = &self.remote else {
            return install::refuse_alias_link(spec, unit, path);
        };
        match host.read_file(path, MAX_UNIT_FILE).await? {
            RemoteFile::Link(target) if !spec.adopt => Err(DaemonError::NotOwned {
                unit: unit.to_owned(),
                reason: format!(
                    "{} on {} is a symlink to {target} (an alias of another unit)",
                    path.display(),
                    host.name()
                ),
            }),
            _ => Ok(()),
        }
    }

    /// Writes `dir/name` atomically (never through a link).
    pub(super) async fn write_unit_file(&self, dir: &Path, name: &str, text: &str) -> Result<()> {
        match &self.remote {
            None => {
                crate::fsutil::write_into_dir(dir, name, text.as_bytes(), "unit file").map(drop)
            }
            Some(host) => host.write_into_dir(dir, name, text.as_bytes(), false).await,
        }
    }

    /// Removes the unit file at `path` (a regular file, never a link).
    pub(super) async fn remove_unit_file(&self, path: &Path) -> Result<()> {
        match &self.remote {
            None => std::fs::remove_file(path)
                .map_err(|e| DaemonError::io(format!("remove {}", path.display()), e)),
            Some(host) => host.remove_file(path).await.map(drop),
        }
    }

    /// Whether the installed unit file (its `FragmentPath`) differs from
    /// what the config renders now (see `install::drift`).
    pub(super) async fn drift_of(&self, unit_spec: &UnitSpec, state: &UnitState) -> Option<bool> {
        let Some(host) = &self.remote else {
            return install::drift(unit_spec, state, &self.unit_file_path(state));
        };
        if !install::may_drift(unit_spec, state) {
            return None;
        }
        match host
            .read_file(Path::new(&state.fragment_path), MAX_UNIT_FILE)
            .await
        {
            Ok(RemoteFile::Regular { bytes, .. }) => {
                install::differs(unit_spec, &String::from_utf8_lossy(&bytes))
            }
            _ => None,
        }
    }

    /// Where the unit's file (the manager's `FragmentPath`) is for our file
    /// operations: on a remote host the manager's path itself, here the
    /// path it has in our mount namespace.
    pub(super) fn unit_file_path(&self, state: &UnitState) -> PathBuf {
        match &self.remote {
            Some(_) => PathBuf::from(&state.fragment_path),
            None => self.local_path(&state.fragment_path),
        }
    }

    /// The remote host, for the transient file's rewrite there.
    pub(super) fn remote_files(&self) -> Option<&SshHost> {
        self.remote.as_deref()
    }
}
