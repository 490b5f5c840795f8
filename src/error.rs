//! The crate's one error type, [`DaemonError`], with structured variants callers can match on.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use crate::backend::BackendKind;

/// Result alias used throughout the crate.
pub type Result<T, E = DaemonError> = std::result::Result<T, E>;

/// Everything that can go wrong while managing a daemon.
///
/// The first six variants are the ones of the original design note
/// (`StartFailed`, `StopFailed`, `PidFileError`, `ProcessNotFound`, `Timeout`,
/// `PermissionDenied`); the rest name the other situations a caller may want to
/// tell apart. New variants may be added, hence `#[non_exhaustive]`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DaemonError {
    /// The daemon could not be started (exec failed, it died during start-up, …).
    #[error("cannot start {name}: {reason}")]
    StartFailed {
        /// Daemon name.
        name: String,
        /// What went wrong, in words.
        reason: String,
        /// The underlying OS error, when there is one.
        #[source]
        source: Option<io::Error>,
    },

    /// The daemon could not be stopped.
    #[error("cannot stop {name} (PID {pid}): {reason}")]
    StopFailed {
        /// Daemon name.
        name: String,
        /// The PID that was being stopped.
        pid: u32,
        /// What went wrong, in words.
        reason: String,
    },

    /// The PID file (or its lock or identity record beside it) could not be
    /// read, written or removed, or its content is not a PID.
    #[error("PID file {}: {source}", path.display())]
    PidFileError {
        /// The file at fault.
        path: PathBuf,
        /// The underlying error (`InvalidData` for unparsable content).
        #[source]
        source: io::Error,
    },

    /// A process the operation needed does not exist.
    #[error("no process with PID {pid}")]
    ProcessNotFound {
        /// The missing PID.
        pid: u32,
    },

    /// An operation did not finish in time.
    #[error("{}", timeout_message(name, operation, *after))]
    Timeout {
        /// Daemon name.
        name: String,
        /// What was being waited for (`"start"`, `"stop"`, `"readiness"`, …).
        operation: &'static str,
        /// How long was waited.
        after: Duration,
    },

    /// The OS (or, for systemd, polkit) refused the action.
    #[error("permission denied: {action}")]
    PermissionDenied {
        /// What was attempted, naming the file, PID or unit.
        action: String,
        /// The underlying OS error, when there is one.
        #[source]
        source: Option<io::Error>,
    },

    /// A configuration field holds a value that cannot be used.
    #[error("invalid config field `{field}`: {reason}")]
    InvalidConfig {
        /// The field name as written in TOML (`binary_path`, `env.FOO`, …).
        field: String,
        /// Why the value is refused.
        reason: String,
    },

    /// `binary_path` does not exist.
    #[error("binary {} does not exist", path.display())]
    BinaryNotFound {
        /// The missing path.
        path: PathBuf,
    },

    /// `binary_path` exists but is not an executable regular file.
    #[error("binary {} is not an executable file", path.display())]
    BinaryNotExecutable {
        /// The path at fault.
        path: PathBuf,
    },

    /// A config file could not be read.
    #[error("cannot read config {}: {source}", path.display())]
    ConfigRead {
        /// The config file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },

    /// A config file is not valid TOML or does not match [`crate::DaemonConfig`].
    #[error("config {}: {message}", path.display())]
    ConfigParse {
        /// The config file.
        path: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },

    /// The requested backend cannot be used here.
    #[error("backend {backend} is not available: {reason}")]
    BackendUnavailable {
        /// The backend's name (`fork`, `systemd`).
        backend: &'static str,
        /// Why.
        reason: String,
    },

    /// The backend cannot do this at all: not a passing condition (retrying
    /// will not help) but something only another backend offers, such as
    /// supervising in the foreground (fork only) or installing a persistent
    /// unit (systemd only).
    #[error("the {backend} backend does not support {operation}: {reason}")]
    Unsupported {
        /// The backend that was asked.
        backend: BackendKind,
        /// What was asked (`run`, `install`, `uninstall`, ...).
        operation: &'static str,
        /// Why, and what to use instead.
        reason: String,
    },

    /// A reload was refused or failed: the reload command failed, the
    /// signal could not be sent, or the daemon exited meanwhile.
    #[error("cannot reload {name}: {reason}")]
    ReloadFailed {
        /// Daemon name.
        name: String,
        /// What went wrong, in words.
        reason: String,
    },

    /// The daemon is not running, for an operation that needs it running.
    #[error("{name} is not running ({state})")]
    NotRunning {
        /// Daemon name.
        name: String,
        /// The state it is in instead (`stopped`, `failed: …`, `stale`).
        state: String,
    },

    /// A D-Bus call failed; `error_name` keeps the remote error's name
    /// (`org.freedesktop.systemd1.NoSuchUnit`, …) when there is one.
    #[error("{operation}: {message}")]
    Bus {
        /// What was being done (`StartUnit x.service`, `connect to the system bus`, …).
        operation: String,
        /// The D-Bus error name, if the peer sent one.
        error_name: Option<String>,
        /// The error message.
        message: String,
    },

    /// launchctl refused an operation. `code` is its exit code, launchd's
    /// error number (119 disabled, 122 bad plist ownership, 125 no such
    /// session for the domain, 134 wrong session type, ...; `launchctl
    /// error CODE` explains any); `advice` says what to do.
    #[error("{operation}: launchctl failed with error {code} ({message}): {advice}")]
    Launchctl {
        /// The launchctl command (`launchctl bootstrap gui/501 /path`).
        operation: String,
        /// Its exit code.
        code: i32,
        /// What it printed, on one line.
        message: String,
        /// What to do about it.
        advice: String,
    },

    /// Any other OS error, with what was being done.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },

    /// A file where the fork backend keeps its state (PID file, identity
    /// record, lock, control socket, log file) is not one it wrote: a
    /// symbolic link, another kind of file, or owned by another user. Nothing
    /// was signalled, read out or removed.
    #[error("{}: {reason}; refusing to use it (nothing was signalled or changed){}", path.display(), untrusted_hint(*owner))]
    UntrustedFile {
        /// The file at fault.
        path: PathBuf,
        /// Its owner's UID, when it could be seen.
        owner: Option<u32>,
        /// What is wrong with it.
        reason: String,
    },

    /// Another operation (or another program) held the fork backend's lock
    /// longer than this operation's own timeout.
    #[error("{name}: lock {} is held{} and was not released within {}", path.display(), holder.map(|p| format!(" by PID {p}")).unwrap_or_default(), crate::text::duration(*after))]
    LockTimeout {
        /// Daemon name.
        name: String,
        /// The lock file.
        path: PathBuf,
        /// The PID holding it, where the OS says (Linux).
        holder: Option<u32>,
        /// How long was waited.
        after: Duration,
    },
    /// The systemd unit of that name exists but was not created by
    /// daemon-lifecycle (no ownership marker), or the name is an alias of
    /// another unit. Nothing was done to it; set `adopt = true` in the
    /// config (`daemonctl --adopt`) to act on it anyway, or rename the daemon.
    #[error("{unit} is not ours: {reason}; nothing was done (set `adopt = true` or pass --adopt to take it over, or give the daemon another `name`)")]
    NotOwned {
        /// The unit asked for.
        unit: String,
        /// Why it is not ours (no marker, an alias of another unit, ...).
        reason: String,
    },

    /// A remote host (`host = "user@hostname"`) could not be used: ssh could
    /// not reach it or was refused, it lacks what we need there, or the
    /// connection broke. Always names the host, so a fleet's results say
    /// which one.
    #[error("host {host}: {problem}: {reason}")]
    Remote {
        /// The host as the config or `--host` gave it (`user@hostname:port`).
        host: String,
        /// What kind of failure, to match on.
        problem: RemoteProblem,
        /// Details in words (ssh's own message, the missing program).
        reason: String,
    },
}

/// What went wrong with a remote host ([`DaemonError::Remote`]). New kinds
/// may be added (hence `#[non_exhaustive]`): match with a `_` arm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RemoteProblem {
    /// ssh could not connect (no route, connection refused, bad host name).
    Unreachable,
    /// The host refused our key (or any other authentication).
    AuthRefused,
    /// Nothing answered within the connection timeout (a port that accepts
    /// and never speaks SSH, a host that dropped off).
    ConnectTimeout,
    /// Something the host must offer is not there (`systemd-stdio-bridge`,
    /// the bus socket): the host has no usable systemd.
    Missing,
    /// The connection (or the bus bridge on the host) broke during an
    /// operation.
    ConnectionLost,
    /// A command on the host (a host check, a probe, a file write) did not
    /// finish within its bound.
    CommandTimeout,
}

impl std::fmt::Display for RemoteProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RemoteProblem::Unreachable => "unreachable",
            RemoteProblem::AuthRefused => "authentication refused",
            RemoteProblem::ConnectTimeout => "no answer within the connection timeout",
            RemoteProblem::Missing => "missing on the host",
            RemoteProblem::ConnectionLost => "connection lost",
            RemoteProblem::CommandTimeout => "command on the host timed out",
        })
    }
}

impl DaemonError {
    /// An [`DaemonError::Io`] with context; `EACCES`/`EPERM` become
    /// [`DaemonError::PermissionDenied`] so callers can match on them.
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        let context = context.into();
        if source.kind() == io::ErrorKind::PermissionDenied {
            DaemonError::PermissionDenied {
                action: context,
                source: Some(source),
            }
        } else {
            DaemonError::Io { context, source }
        }
    }

    /// A [`DaemonError::PidFileError`]; `EACCES` on a PID file is still a PID
    /// file problem (the caller needs the path), so it is not turned into
    /// `PermissionDenied`.
    pub(crate) fn pid_file(path: impl Into<PathBuf>, source: io::Error) -> Self {
        DaemonError::PidFileError {
            path: path.into(),
            source,
        }
    }

    /// Whether this is a start that ran out of time waiting for readiness
    /// (`READY=1`, a probe, or systemd's `TimeoutStartSec`): a
    /// [`DaemonError::Timeout`] whose `operation` starts with `readiness`.
    /// `daemonctl` exits with its own code for it (150).
    pub fn is_readiness_timeout(&self) -> bool {
        matches!(self, DaemonError::Timeout { operation, .. } if operation.starts_with("readiness"))
    }

    pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        DaemonError::InvalidConfig {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

fn untrusted_hint(owner: Option<u32>) -> String {
    match owner {
        Some(uid) if uid != nix::unistd::Uid::effective().as_raw() && uid != 0 => {
            format!("; it belongs to UID {uid}: remove it or choose a pid_file in a directory only you can write")
        }
        _ => String::new(),
    }
}

/// `NAME: not ready within 2 s (readiness probe)` for a readiness timeout
/// (the words `status` then shows), else `NAME: OPERATION did not finish
/// within 2 s`.
fn timeout_message(name: &str, operation: &str, after: Duration) -> String {
    let prefix = if name.is_empty() {
        String::new()
    } else {
        format!("{name}: ")
    };
    if let Some(how) = operation.strip_prefix("readiness") {
        // "readiness probe" → (readiness probe); "readiness (READY=1 ...)" → (READY=1 ...)
        let how = how.trim();
        let how = match how.strip_prefix('(').and_then(|h| h.strip_suffix(')')) {
            Some(inner) => inner.to_owned(),
            None if how.is_empty() => String::new(),
            None => operation.to_owned(),
        };
        let how = if how.is_empty() {
            how
        } else {
            format!(" ({how})")
        };
        format!("{prefix}{}{how}", crate::backend::not_ready_reason(after))
    } else {
        format!(
            "{prefix}{operation} did not finish within {}",
            crate::text::duration(after)
        )
    }
}
