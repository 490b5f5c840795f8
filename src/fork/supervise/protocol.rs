//! The caller → supervisor wire types: one versioned JSON [`Request`] on
//! stdin, JSON [`Response`] lines on stdout.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::backend::ExitInfo;
use crate::config::Limits;
use crate::fork::limits::Credentials;
use crate::spec::{LivenessSpec, LogSpec, ReloadSpec, RestartSpec};

/// Version of the caller → supervisor request. A supervisor program built
/// from another version of this crate refuses a request of another version
/// (and unknown fields) instead of silently dropping what it does not know.
pub(crate) const REQUEST_VERSION: u32 = 4;

/// What the caller asks the supervisor to run.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Request {
    /// [`REQUEST_VERSION`] of the caller.
    #[serde(default)]
    pub version: u32,
    pub name: String,
    pub binary_path: PathBuf,
    pub args: Vec<String>,
    /// The complete environment of the daemon (base + config).
    pub env: BTreeMap<String, String>,
    pub working_dir: PathBuf,
    pub pid_file: PathBuf,
    pub shutdown_timeout_ms: u64,
    /// How long `notify` readiness may take.
    #[serde(default)]
    pub startup_timeout_ms: u64,
    /// Hand the daemon a `NOTIFY_SOCKET` and answer only after `READY=1`.
    #[serde(default)]
    pub notify: bool,
    #[serde(default)]
    pub restart: RestartSpec,
    #[serde(default)]
    pub logs: LogSpec,
    #[serde(default)]
    pub limits: Limits,
    /// Resolved by the caller (see [`super::limits`]).
    #[serde(default)]
    pub credentials: Option<Credentials>,
    /// The caller probes readiness (tcp/http/command) and reports success
    /// over the control socket; without that report within the start-up
    /// timeout the supervisor stops the daemon.
    #[serde(default)]
    pub await_probe: bool,
    /// `watchdog_secs` in µs: the daemon gets `WATCHDOG_USEC`/`WATCHDOG_PID`
    /// and must send `WATCHDOG=1` this often once ready, or is aborted.
    #[serde(default)]
    pub watchdog_usec: Option<u64>,
    /// The liveness probe the supervisor runs once the daemon is ready.
    #[serde(default)]
    pub liveness: Option<LivenessSpec>,
    /// How a reload reaches the daemon.
    #[serde(default)]
    pub reload: ReloadSpec,
}

/// The supervisor's answer lines.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Response {
    /// The daemon runs (and, for notify readiness, is ready) with this PID;
    /// PID file and identity are written.
    Started { pid: u32 },
    /// Not final: the daemon asked for more start-up time (`EXTEND_TIMEOUT_USEC`);
    /// the new deadline is this far from now.
    Extended { timeout_ms: u64 },
    /// Notify readiness: no `READY=1` in time; the daemon has been stopped
    /// and its files removed.
    NotReady { after_ms: u64 },
    /// Notify readiness: the daemon ended before `READY=1`.
    ExitedBeforeReady { exit: ExitInfo },
    /// `exec` of the daemon failed (errno, message).
    ExecFailed { errno: Option<i32>, message: String },
    /// The PID file or identity record could not be written.
    PidFileFailed {
        path: PathBuf,
        errno: Option<i32>,
        message: String,
    },
    /// A log file (or the notify socket) could not be opened.
    SetupFailed {
        path: PathBuf,
        errno: Option<i32>,
        message: String,
    },
    /// Anything else (bad request, fork failed).
    Failed { message: String },
}

impl Response {
    /// Whether this line ends the conversation.
    pub fn is_final(&self) -> bool {
        !matches!(self, Response::Extended { .. })
    }
}

/// The request, if it is of our version; else why not, in words the caller
/// shows its user.
pub(super) fn parse_request(input: &[u8]) -> Result<Request, String> {
    let value: serde_json::Value = serde_json::from_slice(input).map_err(|e| e.to_string())?;
    let version = value.get("version").and_then(|v| v.as_u64()).unwrap_or(0);
    if version != REQUEST_VERSION as u64 {
        return Err(format!(
            "the supervisor program speaks request version {REQUEST_VERSION}, the caller sent version {version}: \
             use a supervisor program (daemonctl, or the program calling supervisor_init) \
             built from the same daemon-lifecycle version as the caller"
        ));
    }
    serde_json::from_value(value).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_of_another_version_or_with_unknown_fields_are_refused() {
        let mut v = serde_json::json!({
            "version": REQUEST_VERSION, "name": "d", "binary_path": "/bin/true", "args": [],
            "env": {}, "working_dir": "/", "pid_file": "/tmp/d.pid", "shutdown_timeout_ms": 1000,
        });
        assert!(parse_request(v.to_string().as_bytes()).is_ok());
        v["version"] = 1.into();
        let e = parse_request(v.to_string().as_bytes()).unwrap_err();
        assert!(
            e.contains(&format!(
                "request version {REQUEST_VERSION}, the caller sent version 1"
            )),
            "{e}"
        );
        v["version"] = REQUEST_VERSION.into();
        v["from_the_future"] = true.into();
        let e = parse_request(v.to_string().as_bytes()).unwrap_err();
        assert!(e.contains("unknown field"), "{e}");
    }
}
