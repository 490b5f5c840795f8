//! [`ForkBackend`]: runs a daemon under our own supervisor process, with a PID
//! file and an identity record beside it. The embedded default wherever no
//! systemd manager answers: macOS, dev machines, containers.
//!
//! How it maps the config: `binary_path` + `args` are exec'd directly (no
//! shell) in a new session and process group; `env` is added to a clean base
//! environment (`PATH`, `HOME`, `USER`, `LOGNAME`, `SHELL`); `working_dir`
//! defaults to `/`; stdio goes to `/dev/null`; `shutdown_timeout_secs` is the
//! SIGTERM → SIGKILL delay for the whole process group.
//!
//! - `readiness`: `notify` — the supervisor owns a `NOTIFY_SOCKET` and answers
//!   the caller only after `READY=1` ([`notify`]); `tcp`/`http`/`command` — the
//!   caller probes ([`crate::readiness`]) after the supervisor answered. Either
//!   way `start` returns once ready; not ready within `startup_timeout_secs`
//!   → `Timeout` with the daemon stopped and its files removed; dead before
//!   ready → `StartFailed` with its exit and the last lines of its stderr log.
//! - `restart`: the supervisor restarts the daemon itself ([`supervise`]).
//! - `logs`: stdout/stderr are pipes the supervisor copies line by line into
//!   the files, rotating between lines ([`logs`]).
//! - `limits`, `user`, `group`: resolved and checked in the caller, applied
//!   between fork and exec ([`limits`]).

pub(crate) mod limits;
pub(crate) mod logs;
pub(crate) mod notify;
pub(crate) mod pidfile;
pub(crate) mod proc;
pub(crate) mod supervise;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::time::Instant;

use crate::backend::{Backend, BackendKind, BoxFuture, DaemonStatus, ExitInfo, StatusReport};
use crate::config::{DaemonConfig, Readiness};
use crate::error::{DaemonError, Result};
use crate::readiness::{self, ProbeError};
use pidfile::{Lock, Paths, Record};
use supervise::{Request, Response};

pub use proc::PORTABLE_ENV;

/// Set by [`crate::supervisor_init`]: the running executable can supervise.
pub(crate) static INIT: AtomicU8 = AtomicU8::new(InitState::NotCalled as u8);

/// What [`crate::supervisor_init`] found.
#[repr(u8)]
pub(crate) enum InitState {
    NotCalled = 0,
    Called = 1,
    /// Called inside a tokio runtime: re-executing this program as the
    /// supervisor would fork a multi-threaded process, so it is not used.
    InsideRuntime = 2,
}

/// Environment variable naming a supervisor program (for example an installed
/// `daemonctl`) for hosts that do not call [`crate::supervisor_init`].
pub const SUPERVISOR_PATH_ENV: &str = "DAEMON_LIFECYCLE_SUPERVISOR";

/// systemd's default `PATH` for services, so a daemon finds the same programs
/// under either backend.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Extra time the caller gives a live supervisor beyond the shutdown timeout
/// before it escalates itself.
const SUPERVISOR_GRACE: Duration = Duration::from_secs(5);

/// Which program acts as the supervisor.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SupervisorProgram {
    /// `$DAEMON_LIFECYCLE_SUPERVISOR` if set, else the running executable if it
    /// called [`crate::supervisor_init`], else an error saying how to fix it.
    Auto,
    /// This program (it must call [`crate::supervisor_init`] first in `main`).
    Path(PathBuf),
}

/// The fork/PID-file backend. See the module docs for how it maps the config.
#[derive(Debug, Clone)]
pub struct ForkBackend {
    supervisor: SupervisorProgram,
}

impl Default for ForkBackend {
    fn default() -> Self {
        ForkBackend::new()
    }
}

impl ForkBackend {
    /// A backend whose supervisor program is found as [`SupervisorProgram::Auto`] says.
    pub fn new() -> Self {
        ForkBackend {
            supervisor: SupervisorProgram::Auto,
        }
    }

    /// A backend using `program` (for example an installed `daemonctl`) as supervisor.
    pub fn with_supervisor(program: impl Into<PathBuf>) -> Self {
        ForkBackend {
            supervisor: SupervisorProgram::Path(program.into()),
        }
    }

    /// Runs the daemon under a supervisor in *this* process, in the
    /// foreground, until it is gone for good (stopped, or ended with no
    /// restart left); returns the exit code to end with: 0 after a requested
    /// stop, else the daemon's exit code (128 + signal number).
    ///
    /// Meant for a container entrypoint (`daemonctl run`): as PID 1 of its
    /// PID namespace the supervisor reaps every orphan and forwards SIGTERM
    /// and SIGINT to the daemon's process group (SIGKILL after
    /// `shutdown_timeout_secs`). The PID file, identity record, restart
    /// policy, logs, limits and notify readiness work as with
    /// [`Backend::start`], so `status` and `stop` from another shell work too.
    /// Probes (tcp/http/command) are not run: nothing waits for readiness
    /// here.
    ///
    /// It reaps every child of this process, so the caller must not run
    /// other child processes meanwhile.
    pub async fn run_foreground(&self, config: &DaemonConfig) -> Result<i32> {
        config.validate()?;
        let paths = Paths::new(config.effective_pid_file());
        ensure_pid_dir(config, &paths)?;
        let request = {
            // Held only for the checks: a `stop` from elsewhere needs it later.
            let _lock = Lock::acquire(&paths.lock, &config.name(), lock_timeout(config)).await?;
            let found = self.inspect(config, &paths).await?;
            match found.status {
                DaemonStatus::Running(pid) => {
                    return Err(DaemonError::StartFailed {
                        name: config.name(),
                        reason: format!("already running with PID {pid}"),
                        source: None,
                    })
                }
                DaemonStatus::Stale(_) => pidfile::remove(&paths.pid_file)?,
                DaemonStatus::Failed(_) | DaemonStatus::Stopped => {
                    if let Some(rec) = &found.record {
                        retire_supervisor(rec, false, config.shutdown_timeout()).await?;
                    }
                }
            }
            pidfile::remove(&paths.identity)?;
            build_request(config, &paths)?
        };
        let (code, first) = supervise::run_foreground(request).await;
        match first {
            Some(Response::Started { .. }) => Ok(code),
            Some(other) => Err(response_error(config, other)),
            None => Err(DaemonError::StartFailed {
                name: config.name(),
                reason: "the supervisor ended without starting the daemon".into(),
                source: None,
            }),
        }
    }

    fn supervisor_program(&self) -> Result<PathBuf> {
        let path = match &self.supervisor {
            SupervisorProgram::Path(p) => p.clone(),
            SupervisorProgram::Auto => match std::env::var_os(SUPERVISOR_PATH_ENV) {
                Some(p) if !p.is_empty() => PathBuf::from(p),
                _ if INIT.load(Ordering::Relaxed) == InitState::Called as u8 => self_exe()?,
                _ if INIT.load(Ordering::Relaxed) == InitState::InsideRuntime as u8 => {
                    return Err(DaemonError::BackendUnavailable {
                        backend: "fork",
                        reason: "daemon_lifecycle::supervisor_init() was called inside a tokio runtime: \
                                 call it first in a plain `fn main()`, before the runtime starts"
                            .into(),
                    })
                }
                _ => {
                    return Err(DaemonError::BackendUnavailable {
                        backend: "fork",
                        reason: format!(
                            "no supervisor program: call daemon_lifecycle::supervisor_init() first in main(), \
                             or set {SUPERVISOR_PATH_ENV}=/path/to/daemonctl"
                        ),
                    })
                }
            },
        };
        if !path.is_absolute() {
            return Err(DaemonError::BackendUnavailable {
                backend: "fork",
                reason: format!(
                    "supervisor program {} is not an absolute path",
                    path.display()
                ),
            });
        }
        Ok(path)
    }

    /// Reads PID file and record and decides the state. Needs no lock: every
    /// file is replaced atomically, and the record is written before the PID
    /// file appears and before it goes.
    ///
    /// One moment is ambiguous on disk: the daemon has just died and its live
    /// supervisor has not yet reaped it and recorded the exit (a few
    /// milliseconds). Then we look again rather than call the PID stale.
    async fn inspect(&self, config: &DaemonConfig, paths: &Paths) -> Result<Inspection> {
        let deadline = Instant::now() + EXIT_RECORD_WAIT;
        loop {
            let found = inspect_once(paths)?;
            if !found.exit_in_progress || Instant::now() >= deadline {
                tracing::trace!(name = %config.name(), status = %found.status, "inspected");
                return Ok(found);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn start_locked(&self, config: &DaemonConfig, paths: &Paths, lock: &Lock) -> Result<u32> {
        let name = config.name();
        let found = self.inspect(config, paths).await?;
        if let DaemonStatus::Running(pid) = found.status {
            tracing::info!(%name, pid, "already running");
            return Ok(pid);
        }
        // Everything that can refuse the config comes before any change: a
        // refused start leaves a failed record (and its reason) as it was.
        let request = build_request(config, paths)?;
        let program = self.supervisor_program()?;
        match found.status {
            DaemonStatus::Running(_) => unreachable!("returned above"),
            DaemonStatus::Stale(pid) => {
                tracing::warn!(%name, pid, "removing stale PID file before start (PID not signalled)");
                pidfile::remove(&paths.pid_file)?;
                pidfile::remove(&paths.identity)?;
            }
            DaemonStatus::Failed(_) | DaemonStatus::Stopped => {
                // A supervisor still alive here is waiting out a restart
                // delay: retire it, or two supervisors would run the daemon.
                if let Some(rec) = &found.record {
                    retire_supervisor(rec, false, config.shutdown_timeout()).await?;
                }
                pidfile::remove(&paths.identity)?;
            }
        }
        // The supervisor enforces the notify start-up timeout and then stops
        // the daemon: give it the time for both.
        let patience = config.startup_timeout() + config.shutdown_timeout() + SUPERVISOR_GRACE;
        let started_at = Instant::now();
        let response = run_supervisor(&program, &name, &request, patience).await?;
        let pid = match response {
            Response::Started { pid } => pid,
            other => return Err(response_error(config, other)),
        };
        let probe = match &config.readiness {
            Some(p) if !matches!(p, Readiness::Notify) => p,
            _ => return Ok(pid),
        };
        // The caller probes tcp/http/command (the supervisor reaps every child
        // it has, so it cannot also run probe commands through tokio).
        let daemon = match pidfile::read_record(&paths.identity)? {
            Some(rec) => rec.daemon,
            None => return Err(self.start_gone(config, paths, lock).await),
        };
        let deadline = started_at + config.startup_timeout();
        match readiness::wait_until_ready(probe, deadline, || {
            std::future::ready(daemon.is_same_live_process())
        })
        .await
        {
            Ok(()) => Ok(pid),
            Err(ProbeError::Timeout { last }) => {
                tracing::warn!(%name, pid, ?last, "not ready within the start-up timeout: stopping it");
                self.stop_locked(config, paths, lock, false).await?;
                Err(DaemonError::Timeout {
                    name,
                    operation: "readiness probe",
                    after: config.startup_timeout(),
                })
            }
            Err(ProbeError::DaemonGone) | Err(ProbeError::NotAProbe) => {
                Err(self.start_gone(config, paths, lock).await)
            }
        }
    }

    /// The daemon died while the caller probed it: collect how it ended,
    /// make sure no restart goes on behind the caller's back, and explain.
    async fn start_gone(&self, config: &DaemonConfig, paths: &Paths, lock: &Lock) -> DaemonError {
        let found = self.inspect(config, paths).await;
        let record = found.ok().and_then(|f| f.record);
        let exit = record.as_ref().and_then(|r| r.last_exit);
        if let Some(rec) = &record {
            if config.restart.policy == crate::config::RestartPolicy::Never {
                // It exits on its own once it has copied the last log lines.
                if let Some(sup) = &rec.supervisor {
                    let deadline = Instant::now() + config.shutdown_timeout() + SUPERVISOR_GRACE;
                    proc::wait_exit(sup.pid, deadline).await;
                }
            } else if let Err(e) = self.stop_locked(config, paths, lock, true).await {
                return e;
            }
        }
        match exit {
            Some(exit) => died_before_ready(config, exit),
            None => DaemonError::StartFailed {
                name: config.name(),
                reason: "the daemon ended before it was ready".into(),
                source: None,
            },
        }
    }

    /// Stops (or with `force`, kills) the daemon. Never signals a PID whose
    /// identity does not match the record.
    async fn stop_locked(
        &self,
        config: &DaemonConfig,
        paths: &Paths,
        _held: &Lock, // proof that the caller holds the lock
        force: bool,
    ) -> Result<()> {
        let name = config.name();
        let found = self.inspect(config, paths).await?;
        let pid = match found.status {
            DaemonStatus::Running(pid) => pid,
            DaemonStatus::Stale(pid) => {
                tracing::warn!(%name, pid, "PID file is stale: removing it, signalling nothing");
                pidfile::remove(&paths.pid_file)?;
                pidfile::remove(&paths.identity)?;
                return Ok(());
            }
            DaemonStatus::Failed(_) => {
                // A supervisor waiting out a restart delay is told to give up
                // (it then removes its files: stopped). Otherwise a failed
                // daemon keeps its record until cleanup or the next start, as
                // a failed systemd unit does.
                if let Some(rec) = &found.record {
                    retire_supervisor(rec, force, config.shutdown_timeout()).await?;
                }
                return Ok(());
            }
            DaemonStatus::Stopped => {
                pidfile::remove(&paths.identity)?;
                return Ok(());
            }
        };
        let record = found.record.expect("running implies a record");
        let pgid_raw = record.pgid();
        let pgid = Pid::from_raw(pgid_raw as i32);
        let grace = if force {
            Duration::ZERO
        } else {
            config.shutdown_timeout()
        };
        let supervisor = record
            .supervisor
            .as_ref()
            .filter(|_| record.supervisor_alive());
        let gone = match supervisor {
            Some(sup) => {
                // The supervisor owns the shutdown sequence (and will not
                // restart what it was told to stop); we wait for it to finish.
                let deadline = Instant::now() + grace + SUPERVISOR_GRACE;
                let exited = ask_supervisor_to_stop(sup, force, deadline).await?;
                let done = exited && proc::wait_group_gone(pgid_raw, deadline).await;
                if !done {
                    tracing::warn!(%name, supervisor = sup.pid, "supervisor did not finish the stop in time: killing the group");
                    let _ = killpg(pgid, Signal::SIGKILL);
                }
                done || proc::wait_group_gone(pgid_raw, Instant::now() + SUPERVISOR_GRACE).await
            }
            None => {
                // No supervisor (it was killed): do the sequence ourselves.
                tracing::warn!(%name, pid, "no live supervisor: stopping the process group directly");
                let gone = terminate_group(pgid_raw, grace).await;
                if let Some(dir) = &record.notify_dir {
                    let _ = std::fs::remove_dir_all(dir);
                }
                gone
            }
        };
        if !gone {
            return Err(DaemonError::StopFailed {
                name,
                pid,
                reason: "processes of its group survived SIGKILL".into(),
            });
        }
        pidfile::remove(&paths.pid_file)?;
        pidfile::remove(&paths.identity)?;
        Ok(())
    }
}

/// At the very end of an operation, still holding the lock: when neither PID
/// file nor record is left, the lock file goes too, so a stopped daemon
/// leaves nothing behind (waiters re-check the inode, see [`Lock::acquire`]).
/// Never in the middle of an operation such as a restart: a newcomer would
/// lock a fresh file and run beside us.
fn release(paths: &Paths, lock: Lock) {
    if !paths.pid_file.exists() && !paths.identity.exists() {
        let _ = lock.remove_file();
    }
    drop(lock);
}

struct Inspection {
    status: DaemonStatus,
    record: Option<Record>,
    /// The daemon is dead but its live supervisor has not recorded the exit yet.
    exit_in_progress: bool,
}

/// How long [`ForkBackend::inspect`] waits for a live supervisor to record a
/// daemon's exit (it does so right after reaping it).
const EXIT_RECORD_WAIT: Duration = Duration::from_secs(2);

fn inspect_once(paths: &Paths) -> Result<Inspection> {
    let pid = pidfile::read_pid(&paths.pid_file)?;
    let record = pidfile::read_record(&paths.identity)?;
    let mut exit_in_progress = false;
    let status = match (pid, &record) {
        (Some(pid), Some(rec)) if rec.daemon.pid == pid => {
            if rec.daemon.is_same_live_process() {
                DaemonStatus::Running(pid)
            } else if rec.last_exit.is_some() && !rec.supervisor_alive() {
                ended(rec)
            } else {
                // Dead, and a live supervisor has not recorded it yet (after a
                // restart `last_exit` is the previous run's, so a live
                // supervisor always gets the moment to record this one).
                exit_in_progress = rec.supervisor_alive();
                match rec.last_exit {
                    Some(_) if !exit_in_progress => ended(rec),
                    _ => DaemonStatus::Stale(pid),
                }
            }
        }
        // A record about another PID while its supervisor lives: the
        // supervisor is between rewriting the record and the PID file (a
        // restart, or MAINPID=); look again.
        (Some(pid), Some(rec)) if rec.supervisor_alive() => {
            exit_in_progress = true;
            DaemonStatus::Stale(pid)
        }
        // A PID file with no record, or a record about another PID: we
        // cannot prove who that PID is, so it is never treated as ours.
        (Some(pid), _) => DaemonStatus::Stale(pid),
        // The record comes before the PID file on start; or the PID file was
        // removed by hand under a live daemon.
        (None, Some(rec)) if rec.daemon.is_same_live_process() => {
            DaemonStatus::Running(rec.daemon.pid)
        }
        (None, Some(rec)) => match rec.last_exit {
            Some(_) => ended(rec),
            None => {
                exit_in_progress = rec.supervisor_alive();
                DaemonStatus::Stopped
            }
        },
        (None, None) => DaemonStatus::Stopped,
    };
    Ok(Inspection {
        status,
        record,
        exit_in_progress,
    })
}

/// The state of a daemon that is not running, from its record.
fn ended(rec: &Record) -> DaemonStatus {
    if let Some(failure) = &rec.failure {
        return DaemonStatus::Failed(failure.clone());
    }
    let exit = rec.last_exit.expect("called with an exit");
    if rec.restart_pending && rec.supervisor_alive() {
        return DaemonStatus::Failed(format!("{exit}; restart pending"));
    }
    failed_or_stopped(exit)
}

fn failed_or_stopped(exit: ExitInfo) -> DaemonStatus {
    if is_clean_exit(exit) {
        DaemonStatus::Stopped
    } else {
        DaemonStatus::Failed(exit.to_string())
    }
}

/// systemd's rule for a service: exit code 0 and the signals HUP, INT, TERM
/// and PIPE are a clean end, anything else is a failure.
pub(crate) fn is_clean_exit(exit: ExitInfo) -> bool {
    match exit {
        ExitInfo::Code(0) => true,
        ExitInfo::Code(_) => false,
        ExitInfo::Signal(sig) => [
            Signal::SIGHUP,
            Signal::SIGINT,
            Signal::SIGTERM,
            Signal::SIGPIPE,
        ]
        .iter()
        .any(|s| *s as i32 == sig),
    }
}

/// Tells a live supervisor whose daemon is down (restart pending, or still
/// recording the exit) to give up, and waits for it. Returns whether there
/// was one.
async fn retire_supervisor(rec: &Record, force: bool, shutdown: Duration) -> Result<bool> {
    let Some(sup) = rec.supervisor.as_ref().filter(|_| rec.supervisor_alive()) else {
        return Ok(false);
    };
    if rec.daemon.is_same_live_process() {
        return Ok(false);
    }
    ask_supervisor_to_stop(sup, force, Instant::now() + shutdown + SUPERVISOR_GRACE).await?;
    Ok(true)
}

/// SIGTERM (stop) or SIGUSR1 (kill) to a live supervisor, then wait for its
/// exit; past `deadline` it is SIGKILLed — after checking that its PID still
/// names it, since the PID may have been reused while we waited. Returns
/// whether it exited on its own.
async fn ask_supervisor_to_stop(
    sup: &proc::ProcRef,
    force: bool,
    deadline: Instant,
) -> Result<bool> {
    send(
        sup.pid,
        if force {
            Signal::SIGUSR1
        } else {
            Signal::SIGTERM
        },
    )?;
    if proc::wait_exit(sup.pid, deadline).await {
        return Ok(true);
    }
    if sup.is_same_live_process() {
        let _ = kill(Pid::from_raw(sup.pid as i32), Signal::SIGKILL);
    }
    Ok(false)
}

/// The error for a supervisor's answer other than `Started`.
fn response_error(config: &DaemonConfig, response: Response) -> DaemonError {
    let name = config.name();
    match response {
        Response::NotReady { .. } => DaemonError::Timeout {
            name,
            operation: "readiness (READY=1 over NOTIFY_SOCKET)",
            after: config.startup_timeout(),
        },
        Response::ExitedBeforeReady { exit } => died_before_ready(config, exit),
        Response::ExecFailed { errno, message } => exec_error(config, errno, message),
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
fn died_before_ready(config: &DaemonConfig, exit: ExitInfo) -> DaemonError {
    let mut reason = format!("{exit} before it was ready");
    if let Some(path) = config.logs.as_ref().and_then(|l| l.stderr.as_ref()) {
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
        name: config.name(),
        reason,
        source: None,
    }
}

/// How many stderr lines a start-up failure quotes.
const STDERR_TAIL_LINES: usize = 10;

/// Everything the supervisor needs, checked and resolved here in the
/// caller, so a refused user or limit changes nothing.
fn build_request(config: &DaemonConfig, paths: &Paths) -> Result<Request> {
    let credentials = limits::resolve(config)?;
    limits::check_limits(config)?;
    if let Some(logs) = &config.logs {
        for (field, path) in [("logs.stdout", &logs.stdout), ("logs.stderr", &logs.stderr)] {
            if let Some(p) = path {
                check_log_dir(field, p)?;
            }
        }
    }
    Ok(Request {
        name: config.name(),
        binary_path: config.binary_path.clone(),
        args: config.args.clone(),
        env: daemon_env(config, credentials.as_ref()),
        working_dir: config
            .working_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("/")),
        pid_file: paths.pid_file.clone(),
        shutdown_timeout_ms: config.shutdown_timeout().as_millis() as u64,
        startup_timeout_ms: config.startup_timeout().as_millis() as u64,
        notify: matches!(config.readiness, Some(Readiness::Notify)),
        restart: config.restart.clone(),
        logs: config.logs.clone(),
        limits: config.limits.clone(),
        credentials,
    })
}

/// A log file's directory must exist (we do not create directories the
/// operator did not ask for) and be writable.
fn check_log_dir(field: &str, path: &Path) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    if !dir.is_dir() {
        return Err(DaemonError::invalid(
            field,
            format!("directory {} does not exist", dir.display()),
        ));
    }
    if nix::unistd::access(
        dir,
        nix::unistd::AccessFlags::W_OK | nix::unistd::AccessFlags::X_OK,
    )
    .is_err()
        && !path.exists()
    {
        return Err(DaemonError::PermissionDenied {
            action: format!("create log file {} ({field})", path.display()),
            source: None,
        });
    }
    Ok(())
}

/// SIGTERM to the group, wait up to `grace`, SIGKILL, wait. True when the
/// group is empty at the end.
async fn terminate_group(pgid: u32, grace: Duration) -> bool {
    let group = Pid::from_raw(pgid as i32);
    if !grace.is_zero() {
        let _ = killpg(group, Signal::SIGTERM);
        if proc::wait_group_gone(pgid, Instant::now() + grace).await {
            return true;
        }
    }
    let _ = killpg(group, Signal::SIGKILL);
    proc::wait_group_gone(pgid, Instant::now() + SUPERVISOR_GRACE).await
}

fn send(pid: u32, signal: Signal) -> Result<()> {
    match kill(Pid::from_raw(pid as i32), signal) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
        Err(nix::errno::Errno::EPERM) => Err(DaemonError::PermissionDenied {
            action: format!("send {} to PID {pid}", signal.as_str()),
            source: Some(std::io::Error::from_raw_os_error(libc::EPERM)),
        }),
        Err(e) => Err(DaemonError::io(
            format!("send {} to PID {pid}", signal.as_str()),
            e.into(),
        )),
    }
}

fn exec_error(config: &DaemonConfig, errno: Option<i32>, message: String) -> DaemonError {
    match errno {
        Some(libc::ENOENT) => DaemonError::BinaryNotFound {
            path: config.binary_path.clone(),
        },
        Some(libc::EACCES) | Some(libc::EPERM) => DaemonError::PermissionDenied {
            action: format!("execute {}", config.binary_path.display()),
            source: errno.map(std::io::Error::from_raw_os_error),
        },
        _ => DaemonError::StartFailed {
            name: config.name(),
            reason: format!("exec {}: {message}", config.binary_path.display()),
            source: errno.map(std::io::Error::from_raw_os_error),
        },
    }
}

/// The daemon's environment: a clean base (as systemd gives a service) plus
/// the config's `env`, which wins.
fn daemon_env(
    config: &DaemonConfig,
    creds: Option<&limits::Credentials>,
) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    env.insert("PATH".to_owned(), DEFAULT_PATH.to_owned());
    if let Some(c) = creds.filter(|c| c.name.is_some()) {
        // The user the daemon runs as, not the caller.
        let name = c.name.clone().unwrap_or_default();
        env.insert("USER".to_owned(), name.clone());
        env.insert("LOGNAME".to_owned(), name);
        env.extend(c.home.clone().map(|h| ("HOME".to_owned(), h)));
        env.extend(c.shell.clone().map(|s| ("SHELL".to_owned(), s)));
    } else if creds.is_some_and(|c| c.switch) {
        // A numeric user with no passwd entry: no HOME/USER to give (the
        // caller's would be wrong), as systemd does.
    } else if let Ok(Some(user)) = nix::unistd::User::from_uid(nix::unistd::Uid::effective()) {
        env.insert("HOME".to_owned(), user.dir.to_string_lossy().into_owned());
        env.insert("USER".to_owned(), user.name.clone());
        env.insert("LOGNAME".to_owned(), user.name);
        env.insert(
            "SHELL".to_owned(),
            user.shell.to_string_lossy().into_owned(),
        );
    }
    env.extend(config.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    env
}

/// The running executable, for re-execution as supervisor. On Linux
/// `/proc/self/exe` still works after the file was replaced by an upgrade.
fn self_exe() -> Result<PathBuf> {
    if cfg!(target_os = "linux") {
        return Ok(PathBuf::from("/proc/self/exe"));
    }
    std::env::current_exe().map_err(|e| DaemonError::io("locate the running executable", e))
}

/// Starts the supervisor program, hands it the request and reads its answer.
async fn run_supervisor(
    program: &Path,
    name: &str,
    request: &Request,
    timeout: Duration,
) -> Result<Response> {
    let mut cmd = tokio::process::Command::new(program);
    cmd.arg0(format!("daemon-lifecycle-supervise: {name}"))
        .env_clear()
        .env(supervise::SUPERVISE_ENV, "1")
        .envs(std::env::var_os(PORTABLE_ENV).map(|v| (PORTABLE_ENV, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(false);
    let start_failed = |reason: String, source: Option<std::io::Error>| DaemonError::StartFailed {
        name: name.to_owned(),
        reason,
        source,
    };
    let mut child = cmd.spawn().map_err(|e| {
        start_failed(
            format!("cannot run supervisor program {}", program.display()),
            Some(e),
        )
    })?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    let json = serde_json::to_vec(request).expect("a Request always serializes");
    // A program that is not a supervisor may not read its stdin: do not let
    // a full pipe block us.
    let write = async move {
        let _ = stdin.write_all(&json).await;
    };
    let stdout = child.stdout.take().expect("piped stdout");
    // Lines until a final one; `Extended` lines (EXTEND_TIMEOUT_USEC from a
    // notify daemon) push the deadline out.
    let read = async move {
        let mut reader = BufReader::new(stdout);
        let mut deadline = Instant::now() + timeout;
        loop {
            let mut line = String::new();
            match tokio::time::timeout_at(deadline, reader.read_line(&mut line)).await {
                Err(_) => return Err(()),
                Ok(Ok(n)) if n > 0 => {
                    if let Ok(Response::Extended { timeout_ms }) =
                        serde_json::from_str::<Response>(line.trim_end())
                    {
                        let wanted = Instant::now() + Duration::from_millis(timeout_ms) + timeout;
                        deadline = deadline.max(wanted);
                        continue;
                    }
                    return Ok((Ok(n), line));
                }
                Ok(other) => return Ok((other, line)),
            }
        }
    };
    let answer = async { tokio::join!(write, read).1 }.await;
    // The first process exits right after forking; reap it so no zombie stays.
    let first_pid = child.id();
    let reaped = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
    let not_a_supervisor = || {
        start_failed(
            format!(
                "{} did not answer as a supervisor (does its main() call daemon_lifecycle::supervisor_init() first?)",
                program.display()
            ),
            None,
        )
    };
    let kill_first = |child: &mut tokio::process::Child| {
        let _ = child.start_kill();
        tracing::debug!(?first_pid, "killed unresponsive supervisor program");
    };
    match answer {
        Ok((Ok(n), line)) if n > 0 => match serde_json::from_str::<Response>(line.trim_end()) {
            Ok(resp) => Ok(resp),
            Err(_) => {
                if reaped.is_err() {
                    kill_first(&mut child);
                }
                Err(not_a_supervisor())
            }
        },
        Ok(_) => Err(not_a_supervisor()),
        Err(_) => {
            kill_first(&mut child);
            Err(DaemonError::Timeout {
                name: name.to_owned(),
                operation: "waiting for the supervisor to start the daemon",
                after: timeout,
            })
        }
    }
}

impl Backend for ForkBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Fork
    }

    fn start<'a>(&'a self, config: &'a DaemonConfig) -> BoxFuture<'a, Result<u32>> {
        Box::pin(async move {
            let paths = Paths::new(config.effective_pid_file());
            ensure_pid_dir(config, &paths)?;
            let lock = Lock::acquire(&paths.lock, &config.name(), lock_timeout(config)).await?;
            let result = self.start_locked(config, &paths, &lock).await;
            if result.is_err() {
                // Nothing left behind: no record, no PID file, no lock file.
                if matches!(self.inspect(config, &paths).await, Ok(i) if i.status == DaemonStatus::Stopped)
                {
                    let _ = pidfile::remove(&paths.identity);
                }
            }
            release(&paths, lock);
            result
        })
    }

    fn stop<'a>(&'a self, config: &'a DaemonConfig) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let paths = Paths::new(config.effective_pid_file());
            if !paths.pid_file.exists() && !paths.identity.exists() {
                return Ok(()); // nothing to stop; do not create a lock file
            }
            let lock = Lock::acquire(&paths.lock, &config.name(), lock_timeout(config)).await?;
            let result = self.stop_locked(config, &paths, &lock, false).await;
            release(&paths, lock);
            result
        })
    }

    fn kill<'a>(&'a self, config: &'a DaemonConfig) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let paths = Paths::new(config.effective_pid_file());
            if !paths.pid_file.exists() && !paths.identity.exists() {
                return Ok(());
            }
            let lock = Lock::acquire(&paths.lock, &config.name(), lock_timeout(config)).await?;
            let result = self.stop_locked(config, &paths, &lock, true).await;
            release(&paths, lock);
            result
        })
    }

    fn status<'a>(&'a self, config: &'a DaemonConfig) -> BoxFuture<'a, Result<StatusReport>> {
        Box::pin(async move {
            let paths = Paths::new(config.effective_pid_file());
            let found = self.inspect(config, &paths).await?;
            let mut report = StatusReport::new(config.name(), BackendKind::Fork, found.status);
            if let Some(rec) = found.record {
                report.last_exit = rec.last_exit;
                report.status_text = rec.status_text;
                report.restarts = rec.restarts;
            }
            Ok(report)
        })
    }

    fn restart<'a>(&'a self, config: &'a DaemonConfig) -> BoxFuture<'a, Result<u32>> {
        Box::pin(async move {
            let paths = Paths::new(config.effective_pid_file());
            ensure_pid_dir(config, &paths)?;
            // One lock across stop and start: nobody slips in between.
            let lock = Lock::acquire(&paths.lock, &config.name(), lock_timeout(config)).await?;
            // The lock file stays in place between the two (see `release`).
            let result = match self.stop_locked(config, &paths, &lock, false).await {
                Ok(()) => self.start_locked(config, &paths, &lock).await,
                Err(e) => Err(e),
            };
            release(&paths, lock);
            result
        })
    }

    fn wait_ready<'a>(
        &'a self,
        config: &'a DaemonConfig,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let paths = Paths::new(config.effective_pid_file());
            let deadline = Instant::now() + timeout;
            let not_running = |status: DaemonStatus| DaemonError::NotRunning {
                name: config.name(),
                state: status.to_string(),
            };
            let timed_out = |operation| DaemonError::Timeout {
                name: config.name(),
                operation,
                after: timeout,
            };
            let found = self.inspect(config, &paths).await?;
            let DaemonStatus::Running(_) = found.status else {
                return Err(not_running(found.status));
            };
            let daemon = found.record.expect("running implies a record").daemon;
            match &config.readiness {
                // Without a readiness probe, a running daemon is a ready one.
                None => Ok(()),
                // The supervisor records READY=1; wake on each rewrite of the
                // record until it says so (a restarted daemon must say it again).
                Some(Readiness::Notify) => {
                    let watch = pidfile::RecordWatch::new(&paths.identity);
                    loop {
                        let found = self.inspect(config, &paths).await?;
                        match (&found.status, &found.record) {
                            (DaemonStatus::Running(_), Some(rec)) if rec.ready => return Ok(()),
                            (DaemonStatus::Running(_), _) => {}
                            _ => return Err(not_running(found.status)),
                        }
                        if Instant::now() >= deadline {
                            return Err(timed_out("readiness (READY=1 over NOTIFY_SOCKET)"));
                        }
                        watch.changed(deadline).await;
                    }
                }
                Some(probe) => {
                    match readiness::wait_until_ready(probe, deadline, || {
                        std::future::ready(daemon.is_same_live_process())
                    })
                    .await
                    {
                        Ok(()) => Ok(()),
                        Err(ProbeError::Timeout { .. }) => Err(timed_out("readiness probe")),
                        Err(_) => {
                            let status = self.inspect(config, &paths).await?.status;
                            Err(not_running(status))
                        }
                    }
                }
            }
        })
    }

    fn cleanup_stale<'a>(&'a self, config: &'a DaemonConfig) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let paths = Paths::new(config.effective_pid_file());
            if !paths.pid_file.exists() && !paths.identity.exists() {
                return Ok(());
            }
            let lock = Lock::acquire(&paths.lock, &config.name(), lock_timeout(config)).await?;
            let found = self.inspect(config, &paths).await?;
            if let Some(rec) = &found.record {
                // A supervisor waiting out a restart delay would start the
                // daemon again behind our back: it goes first.
                retire_supervisor(rec, false, config.shutdown_timeout()).await?;
            }
            match found.status {
                DaemonStatus::Running(_) => {
                    release(&paths, lock);
                    return Ok(());
                }
                DaemonStatus::Stale(pid) => {
                    tracing::info!(name = %config.name(), pid, "removing stale PID file and identity record");
                }
                DaemonStatus::Failed(reason) => {
                    tracing::info!(name = %config.name(), %reason, "clearing failed state");
                }
                DaemonStatus::Stopped => {}
            }
            pidfile::remove(&paths.pid_file)?;
            pidfile::remove(&paths.identity)?;
            release(&paths, lock);
            Ok(())
        })
    }
}

/// Long enough to outlast another operation holding the lock (a stop waits
/// up to the shutdown timeout, a start up to the start-up timeout).
fn lock_timeout(config: &DaemonConfig) -> Duration {
    config.startup_timeout() + config.shutdown_timeout() + SUPERVISOR_GRACE * 2
}

/// The PID file's directory must exist and be writable; the default runtime
/// directory is created (mode 0700 for a user's, 0755 for root's).
fn ensure_pid_dir(config: &DaemonConfig, paths: &Paths) -> Result<()> {
    let dir = paths.pid_file.parent().unwrap_or(Path::new("/"));
    if config.pid_file.as_os_str().is_empty() && !dir.exists() {
        let mode = if nix::unistd::Uid::effective().is_root() {
            0o755
        } else {
            0o700
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(mode)
            .create(dir)
            .map_err(|e| DaemonError::pid_file(&paths.pid_file, e))?;
    }
    if config.pid_file.as_os_str().is_empty() {
        // The default directory may be a predictable name in /tmp: it must be
        // ours, a real directory, and closed to others, or another user could
        // plant a record that makes us signal their choice of process.
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::symlink_metadata(dir)
            .map_err(|e| DaemonError::pid_file(&paths.pid_file, e))?;
        let me = nix::unistd::Uid::effective().as_raw();
        let shared = !me.eq(&0) && meta.mode() & 0o077 != 0;
        if !meta.is_dir() || meta.uid() != me || shared {
            return Err(DaemonError::pid_file(
                &paths.pid_file,
                std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    format!(
                        "default PID directory {} is not a private directory owned by UID {me}",
                        dir.display()
                    ),
                ),
            ));
        }
    }
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(DaemonError::pid_file(
                &paths.pid_file,
                std::io::Error::new(
                    std::io::ErrorKind::NotADirectory,
                    format!("{} is not a directory", dir.display()),
                ),
            ))
        }
        Err(e) => {
            return Err(DaemonError::pid_file(
                &paths.pid_file,
                std::io::Error::new(e.kind(), format!("directory {}: {e}", dir.display())),
            ))
        }
    }
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

use std::os::unix::fs::DirBuilderExt;
