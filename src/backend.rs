//! The [`Backend`] trait every way of running a daemon implements, and the
//! status types they report.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::spec::ServiceSpec;

/// A boxed, `Send` future: what [`Backend`] methods return, so the trait can
/// be used as `dyn Backend`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The state of a daemon, as in the original design note, plus `Starting`.
///
/// New states may be added (hence `#[non_exhaustive]`): match with a `_`
/// arm.
///
/// Serialized flat, with the same three keys for every state (as in
/// `daemonctl status --json`): `state` ([`DaemonStatus::state_name`]), `pid`
/// ([`DaemonStatus::pid`]) and `reason` (why it failed, or why the PID is
/// stale; `null` otherwise).
///
/// ```
/// use daemon_lifecycle::DaemonStatus;
///
/// let json = serde_json::to_string(&DaemonStatus::Running(1234)).unwrap();
/// assert_eq!(json, r#"{"state":"running","pid":1234,"reason":null}"#);
/// let failed: DaemonStatus =
///     serde_json::from_str(r#"{"state":"failed","reason":"exited with code 3"}"#).unwrap();
/// assert_eq!(failed, DaemonStatus::Failed("exited with code 3".into()));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "StatusFields", try_from = "StatusFields")]
#[non_exhaustive]
pub enum DaemonStatus {
    /// Daemon is running with this PID.
    Running(u32),
    /// Daemon runs with this PID but is not ready yet: no `READY=1` (notify
    /// readiness), or the readiness probe has not succeeded. A start that
    /// never gets there ends with the daemon stopped and `Failed("not ready
    /// within N s")`.
    Starting(u32),
    /// Daemon is stopped.
    Stopped,
    /// Daemon failed to start or exited on its own; the reason names the exit
    /// code or signal.
    Failed(String),
    /// The PID file names a process that is dead, or alive but not the daemon
    /// (a reused PID). That PID is never signalled.
    Stale(u32),
}

impl DaemonStatus {
    /// The state's one-word name: `running`, `starting`, `stopped`, `failed`
    /// or `stale`.
    pub fn state_name(&self) -> &'static str {
        match self {
            DaemonStatus::Running(_) => "running",
            DaemonStatus::Starting(_) => "starting",
            DaemonStatus::Stopped => "stopped",
            DaemonStatus::Failed(_) => "failed",
            DaemonStatus::Stale(_) => "stale",
        }
    }

    /// The PID, for `Running`, `Starting` and `Stale`.
    pub fn pid(&self) -> Option<u32> {
        match self {
            DaemonStatus::Running(pid) | DaemonStatus::Starting(pid) | DaemonStatus::Stale(pid) => {
                Some(*pid)
            }
            _ => None,
        }
    }
}

/// [`DaemonStatus`] as serialized: one shape for every state.
#[derive(Serialize, Deserialize)]
struct StatusFields {
    state: StateName,
    pid: Option<u32>,
    reason: Option<String>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum StateName {
    Running,
    Starting,
    Stopped,
    Failed,
    Stale,
}

impl From<DaemonStatus> for StatusFields {
    fn from(status: DaemonStatus) -> Self {
        let pid = status.pid();
        let (state, reason) = match status {
            DaemonStatus::Running(_) => (StateName::Running, None),
            DaemonStatus::Starting(_) => (StateName::Starting, None),
            DaemonStatus::Stopped => (StateName::Stopped, None),
            DaemonStatus::Failed(reason) => (StateName::Failed, Some(reason)),
            DaemonStatus::Stale(pid) => (
                StateName::Stale,
                Some(format!("PID {pid} is not the daemon")),
            ),
        };
        StatusFields { state, pid, reason }
    }
}

impl TryFrom<StatusFields> for DaemonStatus {
    type Error = String;
    fn try_from(f: StatusFields) -> std::result::Result<Self, String> {
        let pid = |state: &str| f.pid.ok_or_else(|| format!("state {state} needs a pid"));
        Ok(match f.state {
            StateName::Running => DaemonStatus::Running(pid("running")?),
            StateName::Starting => DaemonStatus::Starting(pid("starting")?),
            StateName::Stale => DaemonStatus::Stale(pid("stale")?),
            StateName::Stopped => DaemonStatus::Stopped,
            StateName::Failed => DaemonStatus::Failed(f.reason.unwrap_or_default()),
        })
    }
}

impl fmt::Display for DaemonStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DaemonStatus::Running(pid) => write!(f, "running (PID {pid})"),
            DaemonStatus::Starting(pid) => write!(f, "starting (PID {pid}, not ready yet)"),
            DaemonStatus::Stopped => f.write_str("stopped"),
            DaemonStatus::Failed(reason) => write!(f, "failed: {reason}"),
            DaemonStatus::Stale(pid) => write!(f, "stale PID file (PID {pid} is not the daemon)"),
        }
    }
}

/// The reason a start that ran out of time waiting for readiness leaves in
/// [`DaemonStatus::Failed`], on every backend: `not ready within 2 s` (as
/// systemd fails a unit whose start timed out).
pub(crate) fn not_ready_reason(after: Duration) -> String {
    format!("not ready within {}", crate::text::duration(after))
}

/// Whole seconds from `started_at_ms` (Unix epoch) to now, for a daemon
/// that runs; `None` when it does not or the clock says it started later.
pub(crate) fn uptime_since(status: &DaemonStatus, started_at_ms: u64) -> Option<u64> {
    if status.pid().is_none() || matches!(status, DaemonStatus::Stale(_)) || started_at_ms == 0 {
        return None;
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_millis() as u64;
    now.checked_sub(started_at_ms).map(|ms| ms / 1000)
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitInfo {
    /// It called `exit` with this code.
    Code(i32),
    /// It was killed by this signal number.
    Signal(i32),
}

impl fmt::Display for ExitInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ExitInfo::Code(code) => write!(f, "exited with code {code}"),
            ExitInfo::Signal(sig) => match nix::sys::signal::Signal::try_from(sig) {
                Ok(s) => write!(f, "killed by signal {sig} ({})", s.as_str()),
                Err(_) => write!(f, "killed by signal {sig}"),
            },
        }
    }
}

/// Which backend runs a daemon.
///
/// More backends may come, hence `#[non_exhaustive]`: match with a `_`
/// arm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum BackendKind {
    /// Our own supervisor process and a PID file.
    Fork,
    /// A systemd unit driven over D-Bus.
    Systemd,
    /// A launchd job driven through `launchctl`.
    Launchd,
}

impl BackendKind {
    /// `fork`, `systemd` or `launchd`.
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Fork => "fork",
            BackendKind::Systemd => "systemd",
            BackendKind::Launchd => "launchd",
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A fuller status than [`DaemonStatus`]. Its [`Serialize`] is what
/// `daemonctl status --json` prints: one flat object, every key always
/// present (`null` when unknown), the state's keys (`state`, `pid`, `reason`:
/// see [`DaemonStatus`]) in place of `status`, and `last_exit` in words:
///
/// ```
/// use daemon_lifecycle::{BackendKind, DaemonStatus, StatusReport};
///
/// let report = StatusReport::new("queen-rbee".into(), BackendKind::Fork, DaemonStatus::Running(1234));
/// assert_eq!(
///     serde_json::to_string(&report).unwrap(),
///     r#"{"name":"queen-rbee","backend":"fork","state":"running","pid":1234,"reason":null,"#.to_owned()
///         + r#""status_text":null,"restarts":0,"uptime_secs":null,"last_exit":null,"problem":null,"drift":null,"#
///         + r#""last_watchdog_ping_ms":null}"#
/// );
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct StatusReport {
    /// The daemon's name.
    pub name: String,
    /// The backend that answered.
    pub backend: BackendKind,
    /// The state.
    #[serde(flatten)]
    pub status: DaemonStatus,
    /// The last `STATUS=` text the daemon sent over sd_notify, if any.
    pub status_text: Option<String>,
    /// How often the daemon was restarted after exiting on its own.
    pub restarts: u32,
    /// How long the current run has been up, in whole seconds (running or
    /// starting; `None` otherwise or when unknown).
    pub uptime_secs: Option<u64>,
    /// How the last run ended, when known. Serialized in words, as its
    /// `Display` (`exited with code 3`, `killed by signal 9 (SIGKILL)`).
    #[serde(serialize_with = "exit_in_words")]
    pub last_exit: Option<ExitInfo>,
    /// Something wrong beside the state, in words: for the fork backend a
    /// PID file or identity record that disagrees with the live supervisor
    /// ("PID file names 1, supervisor 4242 runs daemon 4250").
    pub problem: Option<String>,
    /// systemd: whether the installed unit file differs from what the
    /// config renders now (`None`: not an installed unit, or not known).
    pub drift: Option<bool>,
    /// When the daemon last sent `WATCHDOG=1` (milliseconds since the Unix
    /// epoch; `None`: never in this run, or no watchdog).
    pub last_watchdog_ping_ms: Option<u64>,
}

fn exit_in_words<S: serde::Serializer>(
    exit: &Option<ExitInfo>,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    match exit {
        Some(exit) => s.collect_str(exit),
        None => s.serialize_none(),
    }
}

impl StatusReport {
    /// A report with no exit information.
    pub fn new(name: String, backend: BackendKind, status: DaemonStatus) -> Self {
        StatusReport {
            name,
            backend,
            status,
            last_exit: None,
            status_text: None,
            restarts: 0,
            uptime_secs: None,
            problem: None,
            drift: None,
            last_watchdog_ping_ms: None,
        }
    }
}

/// The operations a way of running daemons offers. [`crate::DaemonManager`]
/// holds one and adds nothing backend-specific.
///
/// Every method takes the [`ServiceSpec`] it acts on (built once from the
/// config by the manager), so one backend value (holding, for example, a bus
/// connection) serves any number of daemons. `start` and `restart` expect a
/// spec that passed the host checks ([`crate::host::check`]); the manager
/// runs them before calling. Stop, kill, status and cleanup need only the
/// spec, so a daemon whose binary an upgrade removed can still be stopped.
pub trait Backend: Send + Sync + fmt::Debug {
    /// Which backend this is.
    fn kind(&self) -> BackendKind;

    /// Starts the daemon, or returns the PID of the running one.
    fn start<'a>(&'a self, spec: &'a ServiceSpec) -> BoxFuture<'a, Result<u32>>;

    /// Stops it: SIGTERM, up to the shutdown timeout, then SIGKILL. Stopping a
    /// stopped daemon is `Ok`.
    fn stop<'a>(&'a self, spec: &'a ServiceSpec) -> BoxFuture<'a, Result<()>>;

    /// Sends SIGKILL to all of its processes at once.
    fn kill<'a>(&'a self, spec: &'a ServiceSpec) -> BoxFuture<'a, Result<()>>;

    /// Reports its state.
    fn status<'a>(&'a self, spec: &'a ServiceSpec) -> BoxFuture<'a, Result<StatusReport>>;

    /// Stops it (if running) and starts it again; returns the new PID.
    fn restart<'a>(&'a self, spec: &'a ServiceSpec) -> BoxFuture<'a, Result<u32>>;

    /// Asks the running daemon to reload its configuration (the spec's
    /// [`crate::ReloadSpec`]); for a notify daemon, waits until it sends
    /// `READY=1` again. Not running: [`crate::DaemonError::NotRunning`].
    /// The default says the backend cannot.
    fn reload<'a>(&'a self, spec: &'a ServiceSpec) -> BoxFuture<'a, Result<()>> {
        let _ = spec;
        let backend = self.kind();
        Box::pin(async move {
            Err(crate::DaemonError::Unsupported {
                backend,
                operation: "reload",
                reason: "this backend has no reload".into(),
            })
        })
    }

    /// Waits until it is ready, at most `timeout`.
    fn wait_ready<'a>(
        &'a self,
        spec: &'a ServiceSpec,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<()>>;

    /// Clears a stale or failed record (PID file and identity record, or a
    /// failed unit); leaves a running or stopped daemon alone.
    fn cleanup_stale<'a>(&'a self, spec: &'a ServiceSpec) -> BoxFuture<'a, Result<()>>;

    /// The machine this backend runs daemons on, when it is not this one
    /// (a systemd backend over ssh): the manager asks it the host checks.
    fn remote_host(&self) -> Option<std::sync::Arc<crate::host::SshHost>> {
        None
    }
}
