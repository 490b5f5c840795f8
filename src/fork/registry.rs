//! The daemons this user started on the fork backend, for `daemonctl list`
//! with no argument: one small JSON entry per PID file, in a private
//! directory of the caller's (`$XDG_STATE_HOME/daemon-lifecycle/fork`, else
//! `~/.local/state/daemon-lifecycle/fork`; root without `XDG_STATE_HOME`:
//! `/var/lib/daemon-lifecycle/fork`).
//!
//! An entry says where to look (name, binary, PID file), nothing about the
//! state: `list` asks the PID file set, as `status` does, so an entry can
//! never make anything be signalled or removed but itself. The rules of the
//! PID files apply: the directory is created 0700 and must be a directory
//! owned by the caller and closed to others (not a link); an entry is read
//! only when it is a regular file of ours (`O_NOFOLLOW`, owner checked,
//! bounded), written atomically, removed only after the same check. The
//! registry is best effort: a start never fails because of it.
//!
//! An entry is written when a start begins and removed when an operation
//! leaves nothing of the daemon behind (a stop, a cleanup); `list` drops
//! the entries whose daemon left nothing behind in another way.

use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::pidfile;
use crate::error::{DaemonError, Result};
use crate::spec::ServiceSpec;

/// Environment variable naming the registry's base (as in the XDG base
/// directory spec; the registry is `daemon-lifecycle/fork` below it).
const STATE_HOME: &str = "XDG_STATE_HOME";

/// Version of an entry's format.
const ENTRY_VERSION: u32 = 1;

/// Largest entry read.
const MAX_ENTRY: u64 = 16 * 1024;

/// One started daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Entry {
    pub v: u32,
    pub name: String,
    pub binary_path: PathBuf,
    pub pid_file: PathBuf,
    /// The PID file is the default location (checked as such).
    pub pid_file_is_default: bool,
}

impl Entry {
    /// The config to look at this daemon with: enough for `status`.
    pub fn config(&self) -> crate::DaemonConfig {
        let mut config = crate::DaemonConfig::new(&self.binary_path, &self.pid_file)
            .with_name(self.name.clone());
        if self.pid_file_is_default {
            let mut default = config.clone();
            default.pid_file = PathBuf::new();
            if default.effective_pid_file() == self.pid_file {
                config = default;
            }
        }
        config
    }
}

/// The registry's directory for this caller, if one can be named.
pub(crate) fn dir() -> Option<PathBuf> {
    let base = match std::env::var_os(STATE_HOME).map(PathBuf::from) {
        Some(p) if p.is_absolute() => p,
        _ if nix::unistd::Uid::effective().is_root() => PathBuf::from("/var/lib"),
        _ => {
            PathBuf::from(std::env::var_os("HOME").filter(|h| !h.is_empty())?).join(".local/state")
        }
    };
    Some(base.join("daemon-lifecycle").join("fork"))
}

/// The directory, checked: a real directory of ours, closed to others.
/// `create`: make it (0700) when missing.
fn checked_dir(create: bool) -> Result<Option<PathBuf>> {
    let Some(dir) = dir() else {
        return Ok(None);
    };
    let meta = match std::fs::symlink_metadata(&dir) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !create => return Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
                .map_err(|e| DaemonError::io(format!("create {}", dir.display()), e))?;
            std::fs::symlink_metadata(&dir)
                .map_err(|e| DaemonError::io(format!("look at {}", dir.display()), e))?
        }
        Err(e) => return Err(DaemonError::io(format!("look at {}", dir.display()), e)),
    };
    let me = nix::unistd::Uid::effective().as_raw();
    if !meta.is_dir() || meta.uid() != me || meta.mode() & 0o077 != 0 {
        return Err(pidfile::untrusted(
            &dir,
            Some(meta.uid()),
            format!("is not a private directory (mode 0700) of UID {me}"),
        ));
    }
    Ok(Some(dir))
}

/// The entry's file name: a hash of the PID file path, so one daemon (one
/// PID file) has one entry whatever its name.
fn entry_path(dir: &Path, pid_file: &Path) -> PathBuf {
    use std::os::unix::ffi::OsStrExt;
    // FNV-1a, 64 bits: stable across versions and platforms.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in pid_file.as_os_str().as_bytes() {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    dir.join(format!("{hash:016x}.json"))
}

/// Notes that `spec` was started (best effort).
pub(crate) fn register(spec: &ServiceSpec) {
    let entry = Entry {
        v: ENTRY_VERSION,
        name: spec.name.clone(),
        binary_path: spec.program.clone(),
        pid_file: spec.pid_file.clone(),
        pid_file_is_default: spec.pid_file_is_default(),
    };
    let written = checked_dir(true).and_then(|dir| match dir {
        Some(dir) => {
            let path = entry_path(&dir, &spec.pid_file);
            let mut json = serde_json::to_vec(&entry).expect("an entry serializes");
            json.push(b'\n');
            if pidfile::read_ours(&path, MAX_ENTRY)
                .ok()
                .flatten()
                .as_deref()
                == Some(&json[..])
            {
                return Ok(());
            }
            // A list of what runs: no fsync (see write_atomic_runtime).
            crate::fsutil::write_atomic_runtime(&path, &json)
        }
        None => Ok(()),
    });
    if let Err(e) = written {
        tracing::debug!(name = %spec.name, error = %e, "cannot note the daemon in the registry");
    }
}

/// Forgets the daemon of `pid_file` (best effort).
pub(crate) fn unregister(pid_file: &Path) {
    if let Ok(Some(dir)) = checked_dir(false) {
        let _ = pidfile::remove(&entry_path(&dir, pid_file));
    }
}

/// Every entry, sorted by name then PID file; an entry that cannot be read
/// is an error in the list (with its path), not an abort.
pub(crate) fn entries() -> Result<Vec<std::result::Result<Entry, (PathBuf, DaemonError)>>> {
    let Some(dir) = checked_dir(false)? else {
        return Ok(Vec::new());
    };
    let listing = std::fs::read_dir(&dir)
        .map_err(|e| DaemonError::io(format!("read {}", dir.display()), e))?;
    let mut out = Vec::new();
    for item in listing.flatten() {
        let path = item.path();
        if path.extension().is_none_or(|e| e != "json") {
            continue; // a temporary file of a write under way
        }
        let read = pidfile::read_ours(&path, MAX_ENTRY).and_then(|bytes| {
            let bytes = bytes
                .ok_or_else(|| DaemonError::pid_file(&path, std::io::ErrorKind::NotFound.into()))?;
            serde_json::from_slice::<Entry>(&bytes)
                .ok()
                .filter(|e| e.v == ENTRY_VERSION && entry_path(&dir, &e.pid_file) == path)
                .ok_or_else(|| {
                    DaemonError::pid_file(
                        &path,
                        std::io::Error::new(
                            std::io::ErrorKind::InvalidData,
                            "not a registry entry of daemon-lifecycle",
                        ),
                    )
                })
        });
        out.push(read.map_err(|e| (path, e)));
    }
    out.sort_by(|a, b| match (a, b) {
        (Ok(a), Ok(b)) => (&a.name, &a.pid_file).cmp(&(&b.name, &b.pid_file)),
        (Ok(_), Err(_)) => std::cmp::Ordering::Less,
        (Err(_), Ok(_)) => std::cmp::Ordering::Greater,
        (Err((a, _)), Err((b, _))) => a.cmp(b),
    });
    Ok(out)
}
