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
//!   → `Timeout` with the daemon stopped, its PID file removed and its
//!   record saying `failed: not ready within N s`; dead before
//!   ready → `StartFailed` with its exit and the last lines of its stderr log.
//! - `restart`: the supervisor restarts the daemon itself ([`supervise`]).
//! - `logs`: stdout/stderr are pipes the supervisor copies line by line into
//!   the files, rotating between lines ([`logs`]).
//! - `limits`, `user`, `group`: resolved and checked in the caller, applied
//!   between fork and exec ([`limits`]).
//! - `watchdog_secs`, `liveness`, `reload`: the supervisor enforces the
//!   watchdog, runs the liveness probe and performs the reload
//!   ([`supervise`]); none of them needs the caller once it has returned.
//!
//! Trust: every file of the set is ours or refused ([`pidfile`]); a live
//! supervisor is reached through its control socket, never through a PID
//! read from a file ([`control`]); what the files say is turned into a state
//! in [`state`].

mod client;
pub(crate) mod control;
mod dirs;
mod errors;
mod inspect;
mod launch;
pub(crate) mod limits;
pub(crate) mod logs;
pub(crate) mod notify;
pub(crate) mod pidfile;
pub(crate) mod proc;
mod registry;
pub(crate) mod state;
pub(crate) mod supervise;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::time::Instant;

use crate::backend::{Backend, BackendKind, BoxFuture, DaemonStatus, StatusReport};
use crate::config::Readiness;
use crate::error::{DaemonError, Result};
use crate::readiness::{self, ProbeError};
use crate::spec::ServiceSpec;
use pidfile::{Lock, Paths, Record};
use state::Inspection;

use client::{
    ask_supervisor_to_stop, clear_dead_supervisor_files, control_call, retire_supervisor,
    signal_recorded, stop_live, terminate_group,
};
use dirs::{check_dir_writable, check_pid_dir, DirUse};
use errors::{died_before_ready, response_error};
use inspect::{check_record_belongs, inspect_once, read_disk, EXIT_RECORD_WAIT};
use launch::{build_request, run_supervisor, self_exe};
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
    pub async fn run_foreground(&self, spec: &ServiceSpec) -> Result<i32> {
        spec.runnable()?;
        crate::host::check(&crate::host::LocalHost, spec)?;
        let paths = Paths::new(spec.pid_file.clone());
        check_pid_dir(spec, &paths, DirUse::Create)?;
        control::check_path(&paths.control)?;
        if !pidfile::present(&paths.lock) {
            check_dir_writable(&paths)?;
        }
        let mut request = {
            // Held only for the checks: a `stop` from elsewhere needs it later.
            let lock = Lock::acquire(&paths.lock, &spec.name, lock_timeout(spec)).await?;
            registry::register(spec);
            match self
                .prepare_start(spec, &paths, &lock, || build_request(spec, &paths))
                .await?
            {
                Prepared::Running(pid) | Prepared::Starting(pid) => {
                    return Err(DaemonError::StartFailed {
                        name: spec.name.clone(),
                        reason: format!("already running with PID {pid}"),
                        source: None,
                    })
                }
                Prepared::Ready(request) => request,
            }
        };
        // Nothing here probes readiness: no supervisor waits for that news.
        request.await_probe = false;
        let request = *request;
        let (code, first) = supervise::run_foreground(request).await;
        match first {
            Some(Response::Started { .. }) => Ok(code),
            Some(other) => Err(response_error(spec, other)),
            None => Err(DaemonError::StartFailed {
                name: spec.name.clone(),
                reason: "the supervisor ended without starting the daemon".into(),
                source: None,
            }),
        }
    }

    /// Every daemon this user started on the fork backend (the registry
    /// beside the caller's state: see `daemonctl list`), each as `status`
    /// reports it, sorted by name. An entry that cannot be read, or a daemon
    /// whose status cannot be read, is an `Err` in the list with the path
    /// at fault. Entries of daemons that left nothing behind are dropped.
    pub async fn list_registered(
        &self,
    ) -> Result<Vec<std::result::Result<StatusReport, (PathBuf, DaemonError)>>> {
        let mut out = Vec::new();
        for entry in registry::entries()? {
            let entry = match entry {
                Ok(e) => e,
                Err(bad) => {
                    out.push(Err(bad));
                    continue;
                }
            };
            let spec = match ServiceSpec::from_config(&entry.config()) {
                Ok(s) => s,
                Err(e) => {
                    out.push(Err((entry.pid_file.clone(), e)));
                    continue;
                }
            };
            let paths = Paths::new(spec.pid_file.clone());
            match self.status(&spec).await {
                Ok(report)
                    if report.status == DaemonStatus::Stopped
                        && !anything_there(&paths)
                        && !pidfile::present(&paths.lock) =>
                {
                    registry::unregister(&spec.pid_file);
                }
                Ok(report) => out.push(Ok(report)),
                Err(e) => out.push(Err((entry.pid_file.clone(), e))),
            }
        }
        Ok(out)
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

    /// Looks at the daemon. A live supervisor is asked over its control
    /// socket (the truth, whatever the files say; disagreeing files become
    /// the report's `problem`); otherwise the PID file and record decide.
    /// Needs no lock: every file is replaced atomically, and the record is
    /// written before the PID file appears and before it goes.
    ///
    /// One moment is ambiguous on disk: the daemon has just died and its live
    /// supervisor has not yet reaped it and recorded the exit (a few
    /// milliseconds). Then we look again rather than call the PID stale.
    async fn inspect(&self, spec: &ServiceSpec, paths: &Paths) -> Result<Inspection> {
        let deadline = Instant::now() + EXIT_RECORD_WAIT;
        loop {
            let found = inspect_once(paths).await?;
            if !found.exit_in_progress || Instant::now() >= deadline {
                tracing::trace!(name = %spec.name.clone(), status = %found.status, "inspected");
                return Ok(found);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Everything a start does before the supervisor runs: find a running
    /// daemon, run `check` (every refusal comes before any change), then clear
    /// what a previous run left (only files that are provably ours).
    async fn prepare_start(
        &self,
        spec: &ServiceSpec,
        paths: &Paths,
        _held: &Lock,
        check: impl FnOnce() -> Result<Request>,
    ) -> Result<Prepared> {
        let name = spec.name.clone();
        let found = self.inspect(spec, paths).await?;
        match found.status {
            DaemonStatus::Running(pid) => return Ok(Prepared::Running(pid)),
            DaemonStatus::Starting(pid) => return Ok(Prepared::Starting(pid)),
            _ => {}
        }
        let request = check()?;
        check_dir_writable(paths)?;
        if found.foreign_pid_file {
            return Err(pidfile::untrusted(
                &paths.pid_file,
                None,
                "exists but has no identity record beside it, so daemon-lifecycle did not write it \
                 (another program's PID file?): choose another pid_file, or remove it yourself if it is garbage",
            ));
        }
        if let DaemonStatus::Stale(pid) = found.status {
            tracing::warn!(%name, pid, "removing stale PID file before start (PID not signalled)");
        }
        // A supervisor still alive here is waiting out a restart delay (or
        // finishing an exit): retire it, or two supervisors would run the daemon.
        if let Some(live) = &found.live {
            stop_live(&name, paths, live, false, spec.shutdown_timeout).await?;
        } else if let Some(rec) = &found.record {
            retire_supervisor(rec, false, spec.shutdown_timeout).await?;
        }
        pidfile::remove(&paths.pid_file)?;
        pidfile::remove(&paths.identity)?;
        clear_dead_supervisor_files(paths).await?;
        Ok(Prepared::Ready(Box::new(request)))
    }

    async fn start_locked(&self, spec: &ServiceSpec, paths: &Paths, lock: &Lock) -> Result<u32> {
        let name = spec.name.clone();
        let mut program = None;
        let prepared = self
            .prepare_start(spec, paths, lock, || {
                let request = build_request(spec, paths)?;
                program = Some(self.supervisor_program()?);
                Ok(request)
            })
            .await?;
        let request = match prepared {
            Prepared::Running(pid) => {
                tracing::info!(%name, pid, "already running");
                return Ok(pid);
            }
            Prepared::Starting(pid) => {
                // An earlier start was interrupted while it waited for
                // readiness: finish its job (wait, probe) rather than call a
                // daemon ready that never was.
                tracing::info!(%name, pid, "a start is under way: waiting for readiness");
                return self.finish_start(spec, paths, lock).await;
            }
            Prepared::Ready(request) => request,
        };
        let program = program.expect("set by the check");
        // The supervisor enforces the notify start-up timeout and then stops
        // the daemon: give it the time for both.
        let patience = spec.startup_timeout + spec.shutdown_timeout + SUPERVISOR_GRACE;
        let started_at = Instant::now();
        let response = run_supervisor(&program, &name, &request, patience).await?;
        let pid = match response {
            Response::Started { pid } => pid,
            other => return Err(response_error(spec, other)),
        };
        if !request.await_probe {
            return Ok(pid);
        }
        self.probe_until_ready(spec, paths, lock, started_at + spec.startup_timeout)
            .await?;
        Ok(pid)
    }

    /// The caller's half of tcp/http/command readiness: probe until it works,
    /// then tell the supervisor (which otherwise stops the daemon once the
    /// start-up timeout has passed). On a timeout the daemon is stopped here.
    async fn probe_until_ready(
        &self,
        spec: &ServiceSpec,
        paths: &Paths,
        lock: &Lock,
        deadline: Instant,
    ) -> Result<()> {
        let name = spec.name.clone();
        let Some(probe) = spec.probe() else {
            return Ok(());
        };
        let found = self.inspect(spec, paths).await?;
        let record = match (&found.status, found.record) {
            (DaemonStatus::Running(_) | DaemonStatus::Starting(_), Some(rec)) => rec,
            _ => return Err(self.start_gone(spec, paths, lock).await),
        };
        let daemon = record.daemon.clone();
        match readiness::wait_until_ready(probe, deadline, || {
            std::future::ready(daemon.is_same_live_process())
        })
        .await
        {
            Ok(()) => match control_call(paths, control::Op::Ready).await {
                Ok(_) => Ok(()),
                Err(_) => Err(self.start_gone(spec, paths, lock).await),
            },
            Err(ProbeError::Timeout { last }) => {
                tracing::warn!(%name, pid = daemon.pid, last = %last.as_deref().unwrap_or("no attempt finished"), "not ready within the start-up timeout: stopping it");
                self.stop_locked(spec, paths, lock, false).await?;
                record_not_ready(paths, record, spec.startup_timeout);
                Err(DaemonError::Timeout {
                    name,
                    operation: "readiness probe",
                    after: spec.startup_timeout,
                })
            }
            Err(ProbeError::DaemonGone) | Err(ProbeError::NotAProbe) => {
                Err(self.start_gone(spec, paths, lock).await)
            }
        }
    }

    /// A start found the daemon `starting` (the start that launched it was
    /// interrupted): wait for readiness within the start-up timeout, as
    /// that start would have; not ready in time, it is stopped.
    async fn finish_start(&self, spec: &ServiceSpec, paths: &Paths, lock: &Lock) -> Result<u32> {
        let deadline = Instant::now() + spec.startup_timeout;
        match spec.readiness {
            Some(Readiness::Notify) => match self.wait_notify_ready(spec, paths, deadline).await {
                Ok(()) => {}
                Err(e @ DaemonError::Timeout { .. }) => {
                    let record = self.inspect(spec, paths).await?.record;
                    self.stop_locked(spec, paths, lock, false).await?;
                    if let Some(record) = record {
                        record_not_ready(paths, record, spec.startup_timeout);
                    }
                    return Err(e);
                }
                Err(e) => return Err(e),
            },
            _ => self.probe_until_ready(spec, paths, lock, deadline).await?,
        }
        match self.inspect(spec, paths).await?.status {
            DaemonStatus::Running(pid) => Ok(pid),
            other => Err(DaemonError::NotRunning {
                name: spec.name.clone(),
                state: other.to_string(),
            }),
        }
    }

    /// Waits until a notify daemon's supervisor recorded `READY=1` for the
    /// current run, waking on each rewrite of the record.
    async fn wait_notify_ready(
        &self,
        spec: &ServiceSpec,
        paths: &Paths,
        deadline: Instant,
    ) -> Result<()> {
        let watch = pidfile::RecordWatch::new(&paths.identity);
        let started = Instant::now();
        loop {
            let found = self.inspect(spec, paths).await?;
            match (&found.status, &found.record) {
                (DaemonStatus::Running(_), Some(rec)) if rec.ready => return Ok(()),
                (DaemonStatus::Running(_) | DaemonStatus::Starting(_), _) => {}
                _ => {
                    return Err(DaemonError::NotRunning {
                        name: spec.name.clone(),
                        state: found.status.to_string(),
                    })
                }
            }
            if Instant::now() >= deadline {
                return Err(DaemonError::Timeout {
                    name: spec.name.clone(),
                    operation: "readiness (READY=1 over NOTIFY_SOCKET)",
                    after: deadline.saturating_duration_since(started),
                });
            }
            watch.changed(deadline).await;
        }
    }

    /// The daemon died while the caller probed it: collect how it ended,
    /// make sure no restart goes on behind the caller's back, and explain.
    async fn start_gone(&self, spec: &ServiceSpec, paths: &Paths, lock: &Lock) -> DaemonError {
        let found = self.inspect(spec, paths).await;
        let record = found.ok().and_then(|f| f.record);
        // The probe may see the daemon gone before its supervisor reaped it
        // and recorded how it ended: wait for that (bounded), so the error
        // says why.
        let exit = match record.as_ref().and_then(|r| r.last_exit) {
            Some(exit) => Some(exit),
            None if record.is_some() => {
                recorded_exit(paths, Instant::now() + EXIT_RECORD_WAIT).await
            }
            None => None,
        };
        if let Some(rec) = &record {
            if spec.restart.policy == crate::config::RestartPolicy::Never {
                // It exits on its own once it has copied the last log lines.
                if let Some(sup) = &rec.supervisor {
                    let deadline = Instant::now() + spec.shutdown_timeout + SUPERVISOR_GRACE;
                    proc::wait_exit(sup.pid, deadline).await;
                }
            } else if let Err(e) = self.stop_locked(spec, paths, lock, true).await {
                return e;
            }
        }
        match exit {
            Some(exit) => died_before_ready(spec, exit),
            None => DaemonError::StartFailed {
                name: spec.name.clone(),
                reason: "the daemon ended before it was ready".into(),
                source: None,
            },
        }
    }

    /// Stops (or with `force`, kills) the daemon. A live supervisor is told
    /// over its control socket; without one, the recorded process group is
    /// stopped here — never a PID whose identity does not match the record.
    async fn stop_locked(
        &self,
        spec: &ServiceSpec,
        paths: &Paths,
        _held: &Lock, // proof that the caller holds the lock
        force: bool,
    ) -> Result<()> {
        let name = spec.name.clone();
        let grace = if force {
            Duration::ZERO
        } else {
            spec.shutdown_timeout
        };
        let found = self.inspect(spec, paths).await?;
        if let Some(live) = &found.live {
            if stop_live(&name, paths, live, force, grace).await? {
                return Ok(());
            }
            // The supervisor went away between the two calls: look at the
            // disk as it left it.
            return Box::pin(self.stop_locked(spec, paths, _held, force)).await;
        }
        let pid = match found.status {
            DaemonStatus::Running(pid) | DaemonStatus::Starting(pid) => pid,
            DaemonStatus::Stale(pid) if found.foreign_pid_file => {
                tracing::warn!(%name, pid, "PID file was not written by daemon-lifecycle: signalling nothing, removing nothing");
                return Ok(());
            }
            DaemonStatus::Stale(pid) => {
                tracing::warn!(%name, pid, "PID file is stale: removing it, signalling nothing");
                pidfile::remove(&paths.pid_file)?;
                pidfile::remove(&paths.identity)?;
                clear_dead_supervisor_files(paths).await?;
                return Ok(());
            }
            DaemonStatus::Failed(_) => {
                // A supervisor waiting out a restart delay is told to give up
                // (it then removes its files: stopped). Otherwise a failed
                // daemon keeps its record until cleanup or the next start, as
                // a failed systemd unit does.
                if let Some(rec) = &found.record {
                    retire_supervisor(rec, force, spec.shutdown_timeout).await?;
                }
                return Ok(());
            }
            DaemonStatus::Stopped => {
                pidfile::remove(&paths.identity)?;
                clear_dead_supervisor_files(paths).await?;
                return Ok(());
            }
        };
        let record = found.record.expect("running implies a record");
        let pgid_raw = record.pgid();
        let supervisor = record
            .supervisor
            .as_ref()
            .filter(|_| record.supervisor_alive());
        let gone = match supervisor {
            Some(sup) => {
                // A supervisor of ours that did not answer on its socket (the
                // socket was removed): the signal protocol still reaches it.
                let deadline = Instant::now() + grace + SUPERVISOR_GRACE;
                let exited = ask_supervisor_to_stop(sup, force, deadline).await?;
                let done = exited && proc::wait_group_gone(pgid_raw, deadline).await;
                if !done {
                    tracing::warn!(%name, supervisor = sup.pid, "supervisor did not finish the stop in time: killing the group");
                    signal_recorded(&record, Signal::SIGKILL);
                }
                done || proc::wait_group_gone(pgid_raw, Instant::now() + SUPERVISOR_GRACE).await
            }
            None => {
                // No supervisor (it was killed): do the sequence ourselves.
                tracing::warn!(%name, pid, "no live supervisor: stopping the process group directly");
                terminate_group(&record, grace).await
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
        clear_dead_supervisor_files(paths).await?;
        Ok(())
    }
}

/// The exit the supervisor records in the identity record, once it is
/// there (waking on the record's rewrites), or `None` at `deadline`.
async fn recorded_exit(paths: &Paths, deadline: Instant) -> Option<crate::backend::ExitInfo> {
    let watch = pidfile::RecordWatch::new(&paths.identity);
    loop {
        if let Ok(Some(rec)) = pidfile::read_record(&paths.identity) {
            if rec.last_exit.is_some() {
                return rec.last_exit;
            }
        }
        if Instant::now() >= deadline {
            return None;
        }
        watch.changed(deadline).await;
    }
}

/// What [`ForkBackend::prepare_start`] found.
enum Prepared {
    Running(u32),
    Starting(u32),
    Ready(Box<Request>),
}

/// At the very end of an operation, still holding the lock: when nothing of
/// ours is left beside it, the lock file goes too, so a stopped daemon
/// leaves nothing behind (waiters re-check the inode, see [`Lock::acquire`]).
/// Never in the middle of an operation such as a restart: a newcomer would
/// lock a fresh file and run beside us.
/// (A PID file without a record beside it is not ours and does not count:
/// we always write the record first and remove it last.)
fn release(paths: &Paths, lock: Lock) {
    if !pidfile::present(&paths.identity) && !pidfile::present(&paths.control) {
        let _ = lock.remove_file();
        registry::unregister(&paths.pid_file);
    }
    drop(lock);
}

impl Backend for ForkBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Fork
    }

    fn start<'a>(&'a self, spec: &'a ServiceSpec) -> BoxFuture<'a, Result<u32>> {
        Box::pin(async move {
            let paths = Paths::new(spec.pid_file.clone());
            check_pid_dir(spec, &paths, DirUse::Create)?;
            control::check_path(&paths.control)?;
            if !pidfile::present(&paths.lock) {
                check_dir_writable(&paths)?; // say so, rather than fail creating the lock
            }
            let lock = Lock::acquire(&paths.lock, &spec.name, lock_timeout(spec)).await?;
            registry::register(spec);
            let result = self.start_locked(spec, &paths, &lock).await;
            if result.is_err() {
                // Nothing left behind: no record, no PID file, no lock file.
                if matches!(self.inspect(spec, &paths).await, Ok(i) if i.status == DaemonStatus::Stopped && i.live.is_none())
                {
                    let _ = pidfile::remove(&paths.identity);
                }
            }
            release(&paths, lock);
            result
        })
    }

    fn stop<'a>(&'a self, spec: &'a ServiceSpec) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let paths = Paths::new(spec.pid_file.clone());
            if !check_pid_dir(spec, &paths, DirUse::Write)? || !anything_there(&paths) {
                return Ok(()); // nothing to stop; do not create a lock file
            }
            let lock = Lock::acquire(&paths.lock, &spec.name, lock_timeout(spec)).await?;
            let result = self.stop_locked(spec, &paths, &lock, false).await;
            release(&paths, lock);
            result
        })
    }

    fn kill<'a>(&'a self, spec: &'a ServiceSpec) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let paths = Paths::new(spec.pid_file.clone());
            if !check_pid_dir(spec, &paths, DirUse::Write)? || !anything_there(&paths) {
                return Ok(());
            }
            // A kill must not wait behind a slow stop holding the lock: a
            // live supervisor is told at once, without the lock...
            let mut lock = None;
            if let Some(mut client) = control::Client::connect(&paths.control).await? {
                if client
                    .call(control::Op::Kill, control::QUERY_TIMEOUT)
                    .await
                    .is_ok()
                {
                    client.wait_closed(Instant::now() + SUPERVISOR_GRACE).await;
                }
            } else {
                lock = Lock::try_acquire(&paths.lock)?;
                if lock.is_none() {
                    // ... and without one, the recorded group (identity
                    // checked) gets SIGKILL while the lock holder finishes.
                    let found = inspect_once(&paths).await?;
                    if let (DaemonStatus::Running(_), Some(rec)) = (&found.status, &found.record) {
                        signal_recorded(rec, Signal::SIGKILL);
                    }
                }
            }
            let lock = match lock {
                Some(l) => l,
                None => Lock::acquire(&paths.lock, &spec.name, lock_timeout(spec)).await?,
            };
            let result = self.stop_locked(spec, &paths, &lock, true).await;
            release(&paths, lock);
            result
        })
    }

    fn status<'a>(&'a self, spec: &'a ServiceSpec) -> BoxFuture<'a, Result<StatusReport>> {
        Box::pin(async move {
            let paths = Paths::new(spec.pid_file.clone());
            check_pid_dir(spec, &paths, DirUse::Read)?;
            let found = self.inspect(spec, &paths).await?;
            let mut report = StatusReport::new(spec.name.clone(), BackendKind::Fork, found.status);
            report.problem = found.problem;
            if let Some(rec) = found.record {
                report.uptime_secs =
                    crate::backend::uptime_since(&report.status, rec.started_at_ms);
                report.last_exit = rec.last_exit;
                report.status_text = rec.status_text;
                report.restarts = rec.restarts;
                if report.status.pid().is_some() {
                    report.last_watchdog_ping_ms = rec.last_watchdog_ping_ms;
                }
            }
            Ok(report)
        })
    }

    fn restart<'a>(&'a self, spec: &'a ServiceSpec) -> BoxFuture<'a, Result<u32>> {
        Box::pin(async move {
            let paths = Paths::new(spec.pid_file.clone());
            check_pid_dir(spec, &paths, DirUse::Create)?;
            control::check_path(&paths.control)?;
            if !pidfile::present(&paths.lock) {
                check_dir_writable(&paths)?;
            }
            // One lock across stop and start: nobody slips in between.
            let lock = Lock::acquire(&paths.lock, &spec.name, lock_timeout(spec)).await?;
            // The lock file stays in place between the two (see `release`).
            let result = match self.stop_locked(spec, &paths, &lock, false).await {
                Ok(()) => self.start_locked(spec, &paths, &lock).await,
                Err(e) => Err(e),
            };
            release(&paths, lock);
            result
        })
    }

    fn reload<'a>(&'a self, spec: &'a ServiceSpec) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let paths = Paths::new(spec.pid_file.clone());
            check_pid_dir(spec, &paths, DirUse::Read)?;
            let not_running = |state: String| DaemonError::NotRunning {
                name: spec.name.clone(),
                state,
            };
            let found = self.inspect(spec, &paths).await?;
            let live = match (&found.status, found.live) {
                (DaemonStatus::Running(_), Some(live)) => live,
                (DaemonStatus::Running(pid), None) => {
                    return Err(not_running(format!(
                        "PID {pid} runs without its supervisor, which a reload goes through"
                    )))
                }
                (status, _) => return Err(not_running(status.to_string())),
            };
            let Some(mut client) = control::Client::connect(&paths.control).await? else {
                return Err(not_running(DaemonStatus::Stopped.to_string()));
            };
            // The supervisor that answered the look, not one swapped in since.
            if client.peer_pid.is_some_and(|p| p != live.supervisor) {
                return Err(not_running("restarted meanwhile".into()));
            }
            let reply = client
                .call(control::Op::Reload, control::QUERY_TIMEOUT)
                .await?;
            if reply.pid_file != paths.pid_file {
                return Err(pidfile::untrusted(
                    &paths.control,
                    None,
                    "is served by a supervisor of another PID file",
                ));
            }
            // The supervisor bounds the reload by the start-up timeout.
            let deadline = Instant::now() + spec.startup_timeout + SUPERVISOR_GRACE;
            match client.reload_outcome(deadline).await {
                Some(control::ReloadOutcome { error: None, .. }) => Ok(()),
                Some(control::ReloadOutcome {
                    timed_out: true, ..
                }) => Err(DaemonError::Timeout {
                    name: spec.name.clone(),
                    operation: "reload",
                    after: spec.startup_timeout,
                }),
                Some(control::ReloadOutcome {
                    error: Some(why), ..
                }) if why.contains("not running") => Err(not_running(why)),
                Some(control::ReloadOutcome {
                    error: Some(why), ..
                }) => Err(DaemonError::ReloadFailed {
                    name: spec.name.clone(),
                    reason: why,
                }),
                None => Err(DaemonError::ReloadFailed {
                    name: spec.name.clone(),
                    reason: "the supervisor did not say how the reload went (it exited, or \
                             does not know `reload`: a supervisor of an older version)"
                        .into(),
                }),
            }
        })
    }

    fn wait_ready<'a>(
        &'a self,
        spec: &'a ServiceSpec,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let paths = Paths::new(spec.pid_file.clone());
            check_pid_dir(spec, &paths, DirUse::Read)?;
            let deadline = Instant::now() + timeout;
            let not_running = |status: DaemonStatus| DaemonError::NotRunning {
                name: spec.name.clone(),
                state: status.to_string(),
            };
            let found = self.inspect(spec, &paths).await?;
            let starting = match found.status {
                DaemonStatus::Running(_) => false,
                DaemonStatus::Starting(_) => true,
                other => return Err(not_running(other)),
            };
            let daemon = found.record.expect("running implies a record").daemon;
            match &spec.readiness {
                // Without a readiness probe, a running daemon is a ready one.
                None => Ok(()),
                // The supervisor records READY=1; wake on each rewrite of the
                // record until it says so (a restarted daemon must say it again).
                Some(Readiness::Notify) => {
                    match self.wait_notify_ready(spec, &paths, deadline).await {
                        Err(DaemonError::Timeout { operation, .. }) => Err(DaemonError::Timeout {
                            name: spec.name.clone(),
                            operation,
                            after: timeout,
                        }),
                        other => other,
                    }
                }
                Some(probe) => {
                    match readiness::wait_until_ready(probe, deadline, || {
                        std::future::ready(daemon.is_same_live_process())
                    })
                    .await
                    {
                        Ok(()) => {
                            if starting {
                                // The probe worked: the supervisor waiting for
                                // that news must not stop the daemon.
                                control_call(&paths, control::Op::Ready).await?;
                            }
                            Ok(())
                        }
                        Err(ProbeError::Timeout { .. }) => Err(DaemonError::Timeout {
                            name: spec.name.clone(),
                            operation: "readiness probe",
                            after: timeout,
                        }),
                        Err(_) => {
                            let status = self.inspect(spec, &paths).await?.status;
                            Err(not_running(status))
                        }
                    }
                }
            }
        })
    }

    fn cleanup_stale<'a>(&'a self, spec: &'a ServiceSpec) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let paths = Paths::new(spec.pid_file.clone());
            if !check_pid_dir(spec, &paths, DirUse::Write)? || !anything_there(&paths) {
                return Ok(());
            }
            let lock = Lock::acquire(&paths.lock, &spec.name, lock_timeout(spec)).await?;
            let result = self.cleanup_locked(spec, &paths).await;
            release(&paths, lock);
            result
        })
    }
}

impl ForkBackend {
    async fn cleanup_locked(&self, spec: &ServiceSpec, paths: &Paths) -> Result<()> {
        let name = spec.name.clone();
        if let Some(live) = control_call(paths, control::Op::Status).await? {
            if matches!(
                live.phase,
                control::Phase::Starting | control::Phase::Running | control::Phase::Stopping
            ) {
                return Ok(()); // a daemon of ours runs: nothing to clean
            }
            // A supervisor waiting out a restart delay would start the
            // daemon again behind our back: it goes first.
            stop_live(&name, paths, &live, false, spec.shutdown_timeout).await?;
        }
        let disk = read_disk(paths)?;
        // Garbage (content that is not ours, in a file owned by us or root)
        // may go once no daemon of ours runs: judge by what is readable.
        let pid = disk.pid.as_ref().ok().copied().flatten();
        let record = disk.record.as_ref().ok().cloned().flatten();
        check_record_belongs(paths, record.as_ref())?;
        let found = state::from_disk(
            pid,
            record.clone(),
            &|p: &proc::ProcRef| p.is_same_live_process(),
            &proc::is_alive,
        );
        if let Some(rec) = &record {
            retire_supervisor(rec, false, spec.shutdown_timeout).await?;
        }
        match &found.status {
            DaemonStatus::Running(_) | DaemonStatus::Starting(_) => return Ok(()),
            DaemonStatus::Stale(pid) if found.foreign_pid_file => {
                return Err(pidfile::untrusted(
                    &paths.pid_file,
                    None,
                    format!(
                        "names PID {pid} but has no identity record beside it, so daemon-lifecycle did not write it \
                         (another program's PID file?): cleanup never removes a file it cannot prove it wrote"
                    ),
                ));
            }
            DaemonStatus::Stale(pid) => {
                tracing::info!(%name, pid, "removing stale PID file and identity record");
            }
            DaemonStatus::Failed(reason) => {
                tracing::info!(%name, %reason, "clearing failed state");
            }
            _ => {}
        }
        if let Err(why) = &disk.pid {
            // Garbage at the PID file's path is ours to remove only with a
            // record of ours beside it (`pid_file` may name a file of
            // another program, caught empty or half-written).
            if !pidfile::present(&paths.identity) {
                return Err(pidfile::untrusted(
                    &paths.pid_file,
                    None,
                    format!(
                        "is {why} and has no identity record beside it: cleanup never removes a file \
                         it cannot prove it wrote"
                    ),
                ));
            }
            tracing::info!(%name, %why, "removing an unreadable PID file");
        }
        if let Err(why) = &disk.record {
            tracing::info!(%name, %why, "removing an unreadable identity record");
        }
        pidfile::remove(&paths.pid_file)?;
        pidfile::remove(&paths.identity)?;
        clear_dead_supervisor_files(paths).await?;
        Ok(())
    }
}

/// After a start that timed out waiting for readiness and was stopped (its
/// supervisor removed its files): the record of that run again, with the
/// failure, so `status` says `failed: not ready within N s` (as systemd
/// does) until `cleanup` or the next start. Under the lock, with nothing
/// of ours running; best effort (the start's error says it all the same).
fn record_not_ready(paths: &Paths, mut record: Record, after: Duration) {
    if pidfile::present(&paths.identity) {
        return; // a supervisor that had to be killed left its own
    }
    record.failure = Some(crate::backend::not_ready_reason(after));
    record.restart_pending = false;
    record.ready = false;
    if let Err(e) = pidfile::write_record(&paths.identity, &record) {
        tracing::debug!(error = %e, "cannot record the readiness timeout");
    }
}

/// Whether any file of ours may be there (dangling links included).
fn anything_there(paths: &Paths) -> bool {
    [
        &paths.pid_file,
        &paths.identity,
        &paths.control,
        &paths.notify_dir,
    ]
    .iter()
    .any(|p| pidfile::present(p))
}

/// Long enough to outlast another operation holding the lock (a stop waits
/// up to the shutdown timeout, a start up to the start-up timeout).
fn lock_timeout(spec: &ServiceSpec) -> Duration {
    spec.startup_timeout + spec.shutdown_timeout + SUPERVISOR_GRACE
}
