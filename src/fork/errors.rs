//! The caller-facing errors for what a supervisor answered.

use super::logs;
use super::supervise::Response;
use crate::backend::ExitInfo;
use crate::error::DaemonError;
use crate::spec::ServiceSpec;

/// The error for a supervisor's answer other than `Started`.
pub(super) fn response_error(spec: &ServiceSpec, response: Response) -> DaemonError {
    let name = spec.name.clone();
    match response {
        Response::NotReady { .. } => DaemonError::Timeout {
            name,
            operation: "readiness (READY=1 over NOTIFY_SOCKET)",
            after: spec.startup_timeout,
        },
        Response::ExitedBeforeReady { exit } => died_before_ready(spec, exit),
        Response::ExecFailed { errno, message } => exec_error(spec, errno, message),
        Response::PidFileFailed {
            path,
            errno,
            message,
        } => DaemonError::pid_file(
            path,
            errno
                .map(std::io::Error::from_raw_os_error)
                .unwrap_or_else(|| std::io::Error::other(message)),
        ),
        Response::SetupFailed {
            path,
            errno,
            message,
        } => DaemonError::io(
            format!("{}: {message}", path.display()),
            errno
                .map(std::io::Error::from_raw_os_error)
                .unwrap_or_else(|| std::io::Error::other(message.clone())),
        ),
        Response::Failed { message } => DaemonError::StartFailed {
            name,
            reason: format!("supervisor: {message}"),
            source: None,
        },
        Response::Started { .. } | Response::Extended { .. } => DaemonError::StartFailed {
            name,
            reason: "unexpected supervisor answer".into(),
            source: None,
        },
    }
}

/// `StartFailed` for a daemon that ended before it was ready, with the last
/// lines of its stderr log when there is one.
pub(super) fn died_before_ready(spec: &ServiceSpec, exit: ExitInfo) -> DaemonError {
    let mut reason = format!("{exit} before it was ready");
    if let Some(path) = spec.logs.stderr.as_ref() {
        let tail = logs::tail(path, STDERR_TAIL_LINES);
        if !tail.is_empty() {
            reason.push_str(&format!(
                "; last lines of {}:\n  {}",
                path.display(),
                tail.join("\n  ")
            ));
        }
    }
    DaemonError::StartFailed {
        name: spec.name.clone(),
        reason,
        source: None,
    }
}

/// How many stderr lines a start-up failure quotes.
pub(super) const STDERR_TAIL_LINES: usize = 10;

pub(super) fn exec_error(spec: &ServiceSpec, errno: Option<i32>, message: String) -> DaemonError {
    match errno {
        Some(libc::ENOENT) => DaemonError::BinaryNotFound {
            path: spec.program.clone(),
        },
        Some(libc::EACCES) | Some(libc::EPERM) => DaemonError::PermissionDenied {
            action: format!("execute {}", spec.program.display()),
            source: errno.map(std::io::Error::from_raw_os_error),
        },
        _ => DaemonError::StartFailed {
            name: spec.name.clone(),
            reason: format!("exec {}: {message}", spec.program.display()),
            source: errno.map(std::io::Error::from_raw_os_error),
        },
    }
}
