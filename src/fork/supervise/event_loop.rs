//! The supervisor's event loop: one daemon run after another, driven by
//! signals, the control socket, sd_notify datagrams and timers.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::sys::wait::waitpid;
use nix::unistd::Pid;
use tokio::signal::unix::{signal, SignalKind};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::backend::ExitInfo;
use crate::fork::control;
use crate::fork::limits::{self};
use crate::fork::logs::{LogFile, SharedLog};
use crate::fork::notify::{self, NotifySocket};
use crate::fork::pidfile::{self, Paths, Record};
use crate::fork::proc::{self, ProcRef};
use crate::spec::{LogSpec, StartLimit};

use super::protocol::{Request, Response};
use super::spawn::{reap_all, reap_leader, spawn_daemon, spawn_helper, tree_alive};
use crate::config::Readiness;
use crate::spec::{LIVENESS_FAILED, WATCHDOG_TIMEOUT};

/// One run of the daemon.
pub(super) struct Run {
    /// The process we spawned (leads the session and group).
    pub(super) child: u32,
    /// The main process: `child`, or what it named with `MAINPID=`.
    pub(super) main_pid: u32,
    /// Copies of stdout/stderr into the log files.
    pub(super) pumps: Vec<JoinHandle<()>>,
}

impl Run {
    fn pgid(&self) -> u32 {
        self.child
    }
}

#[derive(Clone, Copy)]
pub(super) enum Phase {
    Running,
    /// The daemon ended; what is left of its group is being terminated.
    Exited(ExitInfo),
    /// Waiting out the restart delay.
    Backoff(Instant),
}

pub(super) enum Event {
    Child,
    Stop(Signal),
    Kill,
    Notify(std::io::Result<(notify::Message, Option<u32>)>),
    Control(ControlMsg),
    KillTimer,
    ReadyTimer,
    RestartTimer,
    Recheck,
    /// The watchdog deadline passed without `WATCHDOG=1`.
    WatchdogTimer,
    /// Time for the next liveness probe.
    ProbeTimer,
    /// A tcp/http liveness probe finished.
    ProbeDone(Result<(), String>),
    /// A liveness probe command, or a reload, ran out of time.
    HelperTimer,
}

/// A liveness probe under way.
pub(super) enum Probing {
    /// tcp/http: a task of this runtime.
    Task(JoinHandle<Result<(), String>>),
    /// A command: our child, reaped in `on_child`, with its deadline.
    Command { pid: u32, until: Instant },
}

/// A reload under way: the caller's connection (answered at the end).
pub(super) struct Reloading {
    stream: tokio::io::BufReader<tokio::net::UnixStream>,
    /// The reload command still runs (its PID).
    command: Option<u32>,
    /// A notify daemon: done at its next `READY=1`.
    wait_ready: bool,
    /// That `READY=1` came (perhaps before the reload command exited).
    ready_seen: bool,
    until: Instant,
}

/// Open log files, shared across restarts.
pub(super) struct Logs {
    pub(super) stdout: Option<SharedLog>,
    pub(super) stderr: Option<SharedLog>,
}

pub(super) fn open_logs(cfg: &LogSpec) -> Result<Logs, (PathBuf, std::io::Error)> {
    let open = |p: &PathBuf| {
        LogFile::open(p, cfg.max_bytes, cfg.keep)
            .map(|f| Arc::new(Mutex::new(f)))
            .map_err(|e| (p.clone(), e))
    };
    let stdout = cfg.stdout.as_ref().map(open).transpose()?;
    let stderr = match (&cfg.stderr, &stdout) {
        // The same file: one writer, so lines interleave whole.
        (Some(p), Some(out)) if Some(p) == cfg.stdout.as_ref() => Some(out.clone()),
        (Some(p), _) => Some(open(p)?),
        (None, _) => None,
    };
    Ok(Logs { stdout, stderr })
}

/// Writes the record only while it is this supervisor's generation: a record
/// that another supervisor wrote (a newer start) is never overwritten. A
/// missing or unreadable record (deleted or edited by hand) is written anew.
/// Returns whether it was written.
pub(super) fn save_record(paths: &Paths, record: &Record) -> bool {
    if let Ok(Some(on_disk)) = pidfile::read_record(&paths.identity) {
        if on_disk.supervisor != record.supervisor {
            tracing::warn!(
                path = %paths.identity.display(),
                "identity record belongs to another supervisor: leaving it alone"
            );
            return false;
        }
    }
    pidfile::write_record(&paths.identity, record).is_ok()
}

/// Writes the PID file, under the same rule as [`save_record`].
pub(super) fn save_pid(paths: &Paths, record: &Record, pid: u32) {
    if save_record(paths, record) {
        let _ = pidfile::write_pid(&paths.pid_file, pid);
    }
}

/// Why a daemon's clean exit that leaves processes behind is a failure.
pub(super) const SELF_DAEMONIZED: &str =
    "its main process exited and left processes running (it put itself \
     in the background, like a self-daemonizing program); they were stopped. Run it in the \
     foreground (for nginx: `daemon off;`)";

/// A control request received by the connection task, with its connection
/// (kept open after `stop`/`kill` until this process exits).
pub(super) type ControlMsg = (
    control::ControlRequest,
    tokio::io::BufReader<tokio::net::UnixStream>,
);

/// Everything a daemon run needs that outlives one run: the open log
/// files, the notify socket, and what the child applies before exec
/// (computed before any fork: the child may not allocate).
struct Spawner {
    logs: Logs,
    notify: Option<NotifySocket>,
    rlimits: Vec<limits::Rlimit>,
    groups: Vec<libc::gid_t>,
}

impl Spawner {
    fn spawn(&self, req: &Request) -> std::io::Result<Run> {
        spawn_daemon(
            req,
            &self.logs,
            self.notify.as_ref(),
            &self.rlimits,
            &self.groups,
        )
    }
}

/// The supervisor between two events: one daemon run, its record, and
/// where the start, a stop and the restart rules stand. Each `on_*` method
/// handles one event; `Some(code)` ends the supervisor with that exit code.
struct Supervisor {
    req: Request,
    paths: Paths,
    spawner: Spawner,
    run: Run,
    record: Record,
    phase: Phase,
    shutdown: Duration,
    started: Instant,
    /// The caller has its final answer (`Started`, or an error).
    answered: bool,
    /// The caller probes tcp/http/command readiness and reports success
    /// over the control socket; if it never does (it was interrupted, or
    /// the probe never succeeds), the daemon is stopped here, so no
    /// half-started daemon stays behind a caller that went away.
    awaiting_probe: bool,
    /// When the start must be over: `READY=1`, or the caller's probe report.
    ready_deadline: Option<Instant>,
    /// The start ran out of time before `READY=1`.
    not_ready: bool,
    /// A stop (or kill) was asked for: no restart follows.
    stop_requested: bool,
    /// When set, SIGKILL the tree at this instant (stop escalation).
    kill_at: Option<Instant>,
    /// SIGKILL was sent: anything still alive (forked meanwhile) gets it again.
    killed: bool,
    /// Restarts scheduled within the start-limit window.
    start_limit: StartLimit,
    /// The watchdog interval now (`WATCHDOG_USEC=` changes it; `None`: off).
    watchdog: Option<Duration>,
    /// When the daemon must have pinged by (armed once it is ready).
    watchdog_deadline: Option<Instant>,
    /// Why this supervisor is ending the current run itself (watchdog,
    /// liveness): the exit that follows is a failure with this reason.
    ended_for: Option<String>,
    /// When the next liveness probe starts (armed once the daemon is ready).
    probe_at: Option<Instant>,
    probing: Option<Probing>,
    /// Consecutive liveness failures.
    probe_failures: u32,
    /// A reload under way.
    reloading: Option<Reloading>,
    /// Reloads that ended: their connections get the outcome line.
    reload_done: Vec<(
        tokio::io::BufReader<tokio::net::UnixStream>,
        control::ReloadOutcome,
    )>,
}

/// The first process of a run, identity taken at once.
fn proc_of(pid: u32) -> ProcRef {
    ProcRef::of(pid).unwrap_or(ProcRef {
        pid,
        start_time: None,
        boot_id: proc::boot_id(),
    })
}

/// Sets up (control socket, logs, notify socket), starts the daemon and
/// supervises it until it is gone for good; returns the supervisor's exit
/// code. Every answer to the caller goes through `out`.
pub(super) async fn supervise(req: Request, out: &mut dyn FnMut(&Response)) -> i32 {
    let paths = Paths::new(req.pid_file.clone());
    // Signal streams exist before the daemon does: no SIGCHLD can be missed.
    let (mut chld, mut term, mut int, mut hup, mut usr1) = match (
        signal(SignalKind::child()),
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
        signal(SignalKind::user_defined1()),
    ) {
        (Ok(a), Ok(b), Ok(c), Ok(d), Ok(e)) => (a, b, c, d, e),
        _ => {
            out(&Response::Failed {
                message: "cannot install signal handlers".into(),
            });
            return 1;
        }
    };
    // Connections of callers waiting for this process to exit. Declared
    // before the server, so it is dropped after it: by the time a waiting
    // caller sees end of file, the socket is gone too.
    let mut waiting_for_exit = Vec::new();
    // The control socket comes first: from the moment a daemon exists, a
    // caller can reach the supervisor without trusting any file's content.
    let server = match control::Server::bind(&paths.control) {
        Ok(s) => s,
        Err(e) => {
            out(&Response::SetupFailed {
                path: paths.control.clone(),
                errno: e.raw_os_error(),
                message: format!("control socket: {e}"),
            });
            return 1;
        }
    };
    let (control_tx, mut control_rx) = tokio::sync::mpsc::channel::<ControlMsg>(16);
    let acceptor = {
        let server = &server;
        async move {
            loop {
                let stream = server.accept().await;
                let tx = control_tx.clone();
                tokio::spawn(async move {
                    let mut stream = tokio::io::BufReader::new(stream);
                    if let Some(request) = control::read_request(&mut stream).await {
                        let _ = tx.send((request, stream)).await;
                    }
                });
            }
        }
    };
    tokio::pin!(acceptor);

    let mut sup = match Supervisor::start(req, paths, out) {
        Ok(sup) => sup,
        Err(code) => return code,
    };
    // After the daemon's exit without a subreaper, leftover group members
    // are not our children: look again now and then.
    let mut recheck = tokio::time::interval(Duration::from_millis(50));
    loop {
        if let Phase::Exited(exit) = sup.phase {
            if !tree_alive(sup.run.pgid()) {
                if let Some(code) = sup.after_exit(exit, out).await {
                    return code;
                }
            }
        }
        let restart_at = match sup.phase {
            Phase::Backoff(at) => Some(at),
            _ => None,
        };
        let helper_deadline = sup.helper_deadline();
        let event = tokio::select! {
            _ = chld.recv() => Event::Child,
            _ = term.recv() => Event::Stop(Signal::SIGTERM),
            _ = int.recv() => Event::Stop(Signal::SIGINT),
            _ = hup.recv() => Event::Stop(Signal::SIGTERM),
            _ = usr1.recv() => Event::Kill,
            m = recv_notify(sup.spawner.notify.as_ref()) => Event::Notify(m),
            c = control_rx.recv() => match c {
                Some(c) => Event::Control(c),
                None => continue,
            },
            _ = &mut acceptor => unreachable!("the acceptor never ends"),
            _ = sleep_until_opt(sup.kill_at) => Event::KillTimer,
            _ = sleep_until_opt(sup.ready_deadline) => Event::ReadyTimer,
            _ = sleep_until_opt(restart_at) => Event::RestartTimer,
            _ = recheck.tick(), if matches!(sup.phase, Phase::Exited(_)) => Event::Recheck,
            _ = sleep_until_opt(sup.watchdog_deadline) => Event::WatchdogTimer,
            _ = sleep_until_opt(sup.probe_at) => Event::ProbeTimer,
            r = probe_task(sup.probing.as_mut()) => Event::ProbeDone(r),
            _ = sleep_until_opt(helper_deadline) => Event::HelperTimer,
        };
        let ended = match event {
            // A control request is answered (and, for stop/kill, turned
            // into the same event a signal gives).
            Event::Control((request, mut stream)) => {
                let (reply, then) = sup.on_control(request.op);
                control::write_reply(&mut stream, &reply).await;
                if request.op == control::Op::Reload {
                    sup.on_reload(stream);
                    flush_reloads(&mut sup.reload_done).await;
                    continue;
                }
                match then {
                    Some(Event::Stop(sig)) => {
                        waiting_for_exit.push(stream);
                        sup.on_stop(sig)
                    }
                    Some(Event::Kill) => {
                        waiting_for_exit.push(stream);
                        sup.on_kill()
                    }
                    _ => None,
                }
            }
            Event::Child | Event::Recheck => {
                sup.on_child();
                None
            }
            Event::Stop(sig) => sup.on_stop(sig),
            Event::Kill => sup.on_kill(),
            Event::KillTimer => {
                sup.on_kill_timer();
                None
            }
            Event::ReadyTimer => {
                sup.on_ready_timer();
                None
            }
            Event::RestartTimer => sup.on_restart_timer(),
            Event::Notify(Err(e)) => {
                tracing::warn!(error = %e, "notify socket");
                None
            }
            Event::Notify(Ok((msg, sender))) => {
                sup.on_notify(msg, sender, out);
                None
            }
            Event::WatchdogTimer => {
                sup.on_watchdog_timeout("no WATCHDOG=1 in time");
                None
            }
            Event::ProbeTimer => {
                sup.on_probe_timer();
                None
            }
            Event::ProbeDone(result) => {
                sup.probing = None;
                sup.on_probe_result(result);
                None
            }
            Event::HelperTimer => {
                sup.on_helper_timer();
                None
            }
        };
        flush_reloads(&mut sup.reload_done).await;
        if let Some(code) = ended {
            return code;
        }
    }
}

impl Supervisor {
    /// Opens the logs and the notify socket, spawns the daemon, and writes
    /// its record and PID file; answers `Started` unless readiness is
    /// `notify`. `Err(code)`: it could not, the caller was told why, and
    /// nothing is left behind.
    fn start(req: Request, paths: Paths, out: &mut dyn FnMut(&Response)) -> Result<Self, i32> {
        let logs = open_logs(&req.logs).map_err(|(path, e)| {
            out(&Response::SetupFailed {
                path,
                errno: e.raw_os_error(),
                message: e.to_string(),
            });
            1
        })?;
        let notify = if req.notify || req.watchdog_usec.is_some() {
            let owner = req
                .credentials
                .as_ref()
                .filter(|c| c.switch)
                .map(|c| (c.uid, c.gid));
            let socket = NotifySocket::bind(&paths.notify_dir, owner).map_err(|e| {
                out(&Response::SetupFailed {
                    path: paths.notify_dir.clone(),
                    errno: e.raw_os_error(),
                    message: format!("notify socket: {e}"),
                });
                1
            })?;
            Some(socket)
        } else {
            None
        };
        let spawner = Spawner {
            logs,
            notify,
            rlimits: limits::rlimits(&req.limits),
            groups: req
                .credentials
                .as_ref()
                .map(|c| c.groups.iter().map(|g| *g as libc::gid_t).collect())
                .unwrap_or_default(),
        };
        let run = spawner.spawn(&req).map_err(|e| {
            out(&Response::ExecFailed {
                errno: e.raw_os_error(),
                message: e.to_string(),
            });
            1
        })?;
        let mut record = Record::started(proc_of(run.child), ProcRef::of(std::process::id()));
        record.pgid = Some(run.pgid());
        record.leader = record.daemon.start_time.map(|_| record.daemon.clone());
        record.pid_file = Some(paths.pid_file.clone());
        let written = pidfile::write_record(&paths.identity, &record)
            .and_then(|_| pidfile::write_pid(&paths.pid_file, run.child));
        if let Err(e) = written {
            let _ = killpg(Pid::from_raw(run.pgid() as i32), Signal::SIGKILL);
            let _ = waitpid(Pid::from_raw(run.child as i32), None);
            clean_up(&paths, &record);
            let (path, errno, message) = match e {
                crate::DaemonError::PidFileError { path, source } => {
                    (path, source.raw_os_error(), source.to_string())
                }
                other => (paths.pid_file.clone(), None, other.to_string()),
            };
            out(&Response::PidFileFailed {
                path,
                errno,
                message,
            });
            return Err(1);
        }
        let answered = !req.notify;
        if answered {
            out(&Response::Started { pid: run.child });
        }
        let started = Instant::now();
        let startup = Duration::from_millis(req.startup_timeout_ms.max(1));
        let ready_deadline = if !answered {
            Some(started + startup)
        } else if req.await_probe {
            Some(started + startup + PROBE_GRACE)
        } else {
            None
        };
        Ok(Supervisor {
            shutdown: Duration::from_millis(req.shutdown_timeout_ms),
            awaiting_probe: req.await_probe,
            req,
            paths,
            spawner,
            run,
            record,
            phase: Phase::Running,
            started,
            answered,
            ready_deadline,
            not_ready: false,
            stop_requested: false,
            kill_at: None,
            killed: false,
            start_limit: StartLimit::default(),
            watchdog: None,
            watchdog_deadline: None,
            ended_for: None,
            probe_at: None,
            probing: None,
            probe_failures: 0,
            reloading: None,
            reload_done: Vec::new(),
        })
        .map(|mut sup| {
            if sup.answered && !sup.awaiting_probe {
                sup.became_ready();
            }
            sup
        })
    }

    /// The daemon exited and nothing of its tree is left: answer a caller
    /// still waiting for the start, end after a stop, or apply the restart
    /// rules (restart after the back-off, or give up).
    async fn after_exit(&mut self, exit: ExitInfo, out: &mut dyn FnMut(&Response)) -> Option<i32> {
        reap_leader(self.run.pgid());
        self.kill_at = None;
        drain(&mut self.run.pumps).await;
        if self.not_ready {
            // Not ready in time, so stopped: a failed start (as systemd
            // says for a start timeout), kept in the record until `cleanup`
            // or the next start; the PID file goes.
            self.record.restart_pending = false;
            save_record(&self.paths, &self.record);
            remove_own(&self.paths.pid_file, &self.paths, &self.record);
            if !self.answered {
                out(&Response::NotReady {
                    after_ms: self.started.elapsed().as_millis() as u64,
                });
            }
            return Some(1);
        }
        if !self.answered {
            out(&Response::ExitedBeforeReady { exit });
            return Some(exit_code(exit));
        }
        if self.stop_requested {
            clean_up(&self.paths, &self.record);
            return Some(0);
        }
        if self.record.failure.is_some() || !self.restarts_after(exit) {
            self.record.restart_pending = false;
            save_record(&self.paths, &self.record);
            return Some(exit_code(exit));
        }
        let now = Instant::now();
        let Some(delay) = self.start_limit.next(&self.req.restart, now.into_std()) else {
            tracing::warn!(name = %self.req.name, "start limit hit: not restarting");
            self.record.failure = Some("start limit hit".into());
            self.record.restart_pending = false;
            save_record(&self.paths, &self.record);
            return Some(exit_code(exit));
        };
        self.record.restart_pending = true;
        save_record(&self.paths, &self.record);
        tracing::info!(name = %self.req.name, delay_ms = delay.as_millis() as u64, "restarting after back-off");
        self.phase = Phase::Backoff(now + delay);
        None
    }

    /// A control request: the reply, and for `stop`/`kill` the event it
    /// stands for.
    fn on_control(&mut self, op: control::Op) -> (control::ControlReply, Option<Event>) {
        let then = match op {
            control::Op::Status => None,
            control::Op::Ready => {
                if self.awaiting_probe && matches!(self.phase, Phase::Running) {
                    self.awaiting_probe = false;
                    self.ready_deadline = None;
                    self.record.ready = true;
                    save_record(&self.paths, &self.record);
                    self.became_ready();
                }
                None
            }
            control::Op::Stop => Some(Event::Stop(Signal::SIGTERM)),
            control::Op::Kill => Some(Event::Kill),
            control::Op::Reload => None,
        };
        let reply = control::ControlReply {
            v: control::PROTOCOL_VERSION,
            supervisor: std::process::id(),
            pid_file: self.paths.pid_file.clone(),
            phase: control_phase(
                self.phase,
                self.stop_requested || then.is_some(),
                !self.answered || self.awaiting_probe,
            ),
            record: self.record.clone(),
        };
        (reply, then)
    }

    /// SIGCHLD (or the recheck tick): reap, and when the main process is
    /// gone, record how it ended and terminate what is left of its tree.
    fn on_child(&mut self) {
        if self.killed {
            signal_tree(&self.run, Signal::SIGKILL);
        }
        for (reaped, info) in reap_all(self.run.pgid()) {
            if let Some(Probing::Command { pid, .. }) = self.probing {
                if pid == reaped {
                    self.probing = None;
                    let result = match info {
                        ExitInfo::Code(0) => Ok(()),
                        other => Err(format!("{} {other}", self.probe_program())),
                    };
                    self.on_probe_result(result);
                    continue;
                }
            }
            if self.reloading.as_ref().and_then(|r| r.command) == Some(reaped) {
                self.on_reload_command_exit(info);
                continue;
            }
            if reaped != self.run.main_pid || !matches!(self.phase, Phase::Running) {
                continue;
            }
            tracing::debug!(pid = reaped, %info, "daemon exited");
            self.phase = Phase::Exited(info);
            self.stop_health_checks();
            self.finish_reload(Some("the daemon exited during the reload".into()), false);
            // Record at once (readers wait for this moment), then drop the
            // PID file: a reader that still sees the PID file of a dead
            // daemon finds the exit in the record.
            let restarts = self.restarts_after(info);
            let record = &mut self.record;
            record.last_exit = Some(info);
            record.ready = false;
            record.exit_reason = self.ended_for.take();
            self.ended_for = record.exit_reason.clone();
            if !self.stop_requested
                && record.exit_reason.is_none()
                && crate::spec::is_clean_exit(info)
                && proc::has_descendants()
            {
                tracing::warn!(name = %self.req.name, "daemon exited cleanly and left processes running");
                record.failure = Some(SELF_DAEMONIZED.into());
            }
            // Say now whether a restart follows, in the same write: a reader
            // must never see a bare failure for a daemon that is about to
            // come back.
            record.restart_pending =
                self.answered && !self.stop_requested && record.failure.is_none() && restarts;
            save_record(&self.paths, &self.record);
            remove_own(&self.paths.pid_file, &self.paths, &self.record);
            // What is left of the daemon's tree goes too (as systemd's
            // KillMode=control-group does when the main process exits): its
            // group, and, where we are a subreaper, every descendant that
            // left the group.
            if self.kill_at.is_none() && tree_alive(self.run.pgid()) {
                signal_tree(&self.run, Signal::SIGTERM);
                self.kill_at = Some(Instant::now() + self.shutdown);
            }
        }
    }

    /// A stop request (SIGTERM/SIGINT/SIGHUP or the control socket).
    fn on_stop(&mut self, sig: Signal) -> Option<i32> {
        if let Phase::Backoff(_) = self.phase {
            // Nothing runs: a stop during the back-off is immediate.
            clean_up(&self.paths, &self.record);
            return Some(0);
        }
        if self.stop_requested && self.kill_at.is_some() {
            return None; // already stopping; a second signal must not reset the timer
        }
        self.stop_requested = true;
        self.stop_health_checks();
        signal_tree(&self.run, sig);
        if self.kill_at.is_none() {
            self.kill_at = Some(Instant::now() + self.shutdown);
        }
        None
    }

    /// A kill request (SIGUSR1 or the control socket).
    fn on_kill(&mut self) -> Option<i32> {
        if let Phase::Backoff(_) = self.phase {
            clean_up(&self.paths, &self.record);
            return Some(0);
        }
        self.stop_requested = true;
        self.stop_health_checks();
        self.killed = true;
        signal_tree(&self.run, Signal::SIGKILL);
        None
    }

    /// The shutdown timeout after SIGTERM passed.
    fn on_kill_timer(&mut self) {
        tracing::debug!(pgid = self.run.pgid(), "shutdown timeout: SIGKILL");
        self.killed = true;
        signal_tree(&self.run, Signal::SIGKILL);
        self.kill_at = None;
    }

    /// The start-up timeout passed without `READY=1` or the caller's probe
    /// report: the daemon is stopped.
    fn on_ready_timer(&mut self) {
        if self.answered {
            tracing::warn!(name = %self.req.name, "the readiness probe never reported success: stopping");
        } else {
            tracing::warn!(name = %self.req.name, "no READY=1 within the start-up timeout: stopping");
        }
        self.not_ready = true;
        // Said once stopped (see `after_exit`); the time waited, not the
        // time the stop then took (EXTEND_TIMEOUT_USEC may have added some).
        // (For a probe nobody reported on, the start-up timeout the caller had.)
        let waited = if self.answered {
            Duration::from_millis(self.req.startup_timeout_ms)
        } else {
            Duration::from_secs(self.started.elapsed().as_secs_f64().round() as u64)
        };
        self.record.failure = Some(crate::backend::not_ready_reason(waited));
        self.ready_deadline = None;
        self.awaiting_probe = false;
        self.stop_requested = true;
        signal_tree(&self.run, Signal::SIGTERM);
        self.kill_at.get_or_insert(Instant::now() + self.shutdown);
    }

    /// The back-off is over: the next run.
    fn on_restart_timer(&mut self) -> Option<i32> {
        match self.spawner.spawn(&self.req) {
            Ok(run) => {
                self.run = run;
                self.phase = Phase::Running;
                self.killed = false;
                let record = &mut self.record;
                record.daemon = proc_of(self.run.child);
                record.pgid = Some(self.run.pgid());
                record.leader = record.daemon.start_time.map(|_| record.daemon.clone());
                record.started_at_ms = pidfile::now_ms();
                record.restarts += 1;
                record.restart_pending = false;
                record.ready = false;
                record.last_watchdog_ping_ms = None;
                self.ended_for = None;
                save_pid(&self.paths, &self.record, self.run.child);
                // Without readiness to wait for, ready now (as at the start);
                // otherwise at READY=1. (A restarted probe daemon has no
                // caller probing it: it counts as ready once running.)
                if !self.req.notify {
                    self.became_ready();
                }
                None
            }
            Err(e) => {
                tracing::error!(name = %self.req.name, error = %e, "restart failed");
                self.record.failure = Some(format!("restart failed: {e}"));
                self.record.restart_pending = false;
                save_record(&self.paths, &self.record);
                Some(1)
            }
        }
    }

    /// An sd_notify datagram: `STATUS=`, `MAINPID=`, `EXTEND_TIMEOUT_USEC=`,
    /// `READY=1` from a process of the daemon's group.
    fn on_notify(
        &mut self,
        msg: notify::Message,
        sender: Option<u32>,
        out: &mut dyn FnMut(&Response),
    ) {
        if !matches!(self.phase, Phase::Running) {
            return;
        }
        if sender.is_some_and(|sender| !in_group(sender, &self.run)) {
            tracing::warn!(
                sender,
                "ignoring sd_notify message from outside the daemon's process group"
            );
            return;
        }
        let mut dirty = false;
        if let Some(text) = msg.status {
            self.record.status_text = Some(text);
            dirty = true;
        }
        let mut new_main = None;
        if let Some(main) = msg.main_pid.filter(|p| *p != self.run.main_pid) {
            if accept_main_pid(main, &self.run) {
                self.run.main_pid = main;
                if let Some(r) = ProcRef::of(main) {
                    self.record.daemon = r;
                }
                dirty = true;
                new_main = Some(main);
            } else {
                tracing::warn!(main, "ignoring MAINPID outside the daemon's process group");
            }
        }
        if let (Some(extra), Some(deadline)) = (msg.extend_timeout, self.ready_deadline) {
            let wanted = Instant::now() + extra;
            if wanted > deadline {
                self.ready_deadline = Some(wanted);
                out(&Response::Extended {
                    timeout_ms: extra.as_millis() as u64,
                });
            }
        }
        if msg.stopping {
            tracing::info!(name = %self.req.name, "daemon reports STOPPING=1");
        }
        if let Some(usec) = msg.watchdog_usec {
            // As systemd: a new interval from now on; 0 switches it off.
            self.watchdog = (usec > 0).then(|| Duration::from_micros(usec));
            if self.watchdog_deadline.is_some() || self.record.ready {
                self.watchdog_deadline = self.watchdog.map(|w| Instant::now() + w);
            }
        }
        if msg.watchdog_ping {
            self.record.last_watchdog_ping_ms = Some(pidfile::now_ms());
            if self.watchdog_deadline.is_some() {
                self.watchdog_deadline = self.watchdog.map(|w| Instant::now() + w);
            }
        }
        if msg.reloading {
            tracing::info!(name = %self.req.name, "daemon reports RELOADING=1");
        }
        if msg.ready {
            if let Some(r) = self.reloading.as_mut() {
                r.ready_seen = true;
                if r.wait_ready && r.command.is_none() {
                    self.finish_reload(None, false);
                }
            }
        }
        if msg.ready && !self.record.ready {
            self.record.ready = true;
            dirty = true;
            self.became_ready();
        }
        match new_main {
            Some(main) => save_pid(&self.paths, &self.record, main),
            None if dirty => {
                save_record(&self.paths, &self.record);
            }
            None => {}
        }
        if self.record.ready && !self.answered {
            self.answered = true;
            self.ready_deadline = None;
            out(&Response::Started {
                pid: self.run.main_pid,
            });
        }
        if msg.watchdog_trigger {
            self.on_watchdog_timeout("the daemon sent WATCHDOG=trigger");
        }
    }

    /// Whether the run that ended this way is restarted: the policy's rule,
    /// except that a run this supervisor ended (watchdog, liveness) is a
    /// failure whatever its exit says (a SIGTERM is a clean exit).
    fn restarts_after(&self, exit: ExitInfo) -> bool {
        match &self.ended_for {
            Some(_) => self.req.restart.policy != crate::config::RestartPolicy::Never,
            None => self.req.restart.restarts_after(exit),
        }
    }

    /// The daemon is ready (READY=1, the caller's probe, or running when
    /// nothing is awaited): the watchdog and the liveness probe start, as
    /// systemd starts the watchdog once a start is complete.
    fn became_ready(&mut self) {
        if !matches!(self.phase, Phase::Running) || self.stop_requested {
            return;
        }
        if self.watchdog.is_none() {
            self.watchdog = self.req.watchdog_usec.map(Duration::from_micros);
        }
        self.watchdog_deadline = self.watchdog.map(|w| Instant::now() + w);
        if let Some(l) = &self.req.liveness {
            self.probe_failures = 0;
            self.probe_at = Some(Instant::now() + l.interval);
        }
    }

    /// No watchdog, no probe: the run is ending or ended.
    fn stop_health_checks(&mut self) {
        self.watchdog_deadline = None;
        self.probe_at = None;
        match self.probing.take() {
            Some(Probing::Task(task)) => task.abort(),
            Some(Probing::Command { pid, .. }) => {
                // Our unreaped child: its PID is still its own.
                let _ = nix::sys::signal::kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
                let _ = waitpid(Pid::from_raw(pid as i32), None);
            }
            None => {}
        }
    }

    /// The daemon missed its watchdog deadline (or asked for it): SIGABRT
    /// to its tree, as systemd sends, SIGKILL after the shutdown timeout;
    /// then the restart policy applies.
    fn on_watchdog_timeout(&mut self, why: &str) {
        if !matches!(self.phase, Phase::Running) || self.stop_requested || self.ended_for.is_some()
        {
            return;
        }
        tracing::warn!(name = %self.req.name, why, "watchdog timeout: aborting the daemon");
        self.end_run(WATCHDOG_TIMEOUT.to_owned(), Signal::SIGABRT);
    }

    /// This supervisor ends the run: `sig` to the tree, SIGKILL after the
    /// shutdown timeout, and `reason` for the exit that follows.
    fn end_run(&mut self, reason: String, sig: Signal) {
        self.ended_for = Some(reason);
        self.stop_health_checks();
        signal_tree(&self.run, sig);
        self.kill_at.get_or_insert(Instant::now() + self.shutdown);
    }

    fn probe_program(&self) -> String {
        match self.req.liveness.as_ref().map(|l| &l.probe) {
            Some(Readiness::Command { argv, .. }) => argv[0].clone(),
            _ => String::new(),
        }
    }

    /// Time for a liveness probe: start it (a command as our child, tcp
    /// and http as a task), bounded by the probe's timeout.
    fn on_probe_timer(&mut self) {
        self.probe_at = None;
        let Some(l) = self.req.liveness.clone() else {
            return;
        };
        if self.probing.is_some() || !matches!(self.phase, Phase::Running) {
            return;
        }
        match &l.probe {
            Readiness::Command { argv, .. } => match spawn_helper(argv, &self.req, None) {
                Ok(pid) => {
                    self.probing = Some(Probing::Command {
                        pid,
                        until: Instant::now() + l.timeout,
                    })
                }
                Err(e) => self.on_probe_result(Err(format!("run {}: {e}", argv[0]))),
            },
            probe => {
                let probe = probe.clone();
                let timeout = l.timeout;
                self.probing = Some(Probing::Task(tokio::spawn(
                    crate::readiness::probe_bounded(probe, timeout),
                )));
            }
        }
    }

    /// A liveness probe's result: `failures` in a row stop the daemon
    /// (SIGTERM, then SIGKILL), and the restart policy applies.
    fn on_probe_result(&mut self, result: Result<(), String>) {
        let Some(l) = self.req.liveness.clone() else {
            return;
        };
        if !matches!(self.phase, Phase::Running) || self.stop_requested || self.ended_for.is_some()
        {
            return;
        }
        match result {
            Ok(()) => self.probe_failures = 0,
            Err(why) => {
                self.probe_failures += 1;
                tracing::info!(name = %self.req.name, failures = self.probe_failures, %why, "liveness probe failed");
                if self.probe_failures >= l.failures {
                    tracing::warn!(name = %self.req.name, %why, "liveness probe failed {} times in a row: stopping the daemon", l.failures);
                    let reason =
                        format!("{LIVENESS_FAILED}: {}", crate::text::clip_middle(&why, 200));
                    self.end_run(reason, Signal::SIGTERM);
                    return;
                }
            }
        }
        self.probe_at = Some(Instant::now() + l.interval);
    }

    /// The earliest deadline of a helper: a probe command, a reload.
    fn helper_deadline(&self) -> Option<Instant> {
        let probe = match self.probing {
            Some(Probing::Command { until, .. }) => Some(until),
            _ => None,
        };
        let reload = self.reloading.as_ref().map(|r| r.until);
        match (probe, reload) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn on_helper_timer(&mut self) {
        let now = Instant::now();
        if let Some(Probing::Command { pid, until }) = self.probing {
            if until <= now {
                let _ = nix::sys::signal::kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
                let _ = waitpid(Pid::from_raw(pid as i32), None);
                self.probing = None;
                let program = self.probe_program();
                self.on_probe_result(Err(format!("{program} timed out")));
            }
        }
        if self.reloading.as_ref().is_some_and(|r| r.until <= now) {
            let what = match self.reloading.as_ref().and_then(|r| r.command) {
                Some(_) => "the reload command did not finish in time",
                None => "no READY=1 in time after the reload",
            };
            self.finish_reload(Some(what.into()), true);
        }
    }

    /// A reload request: the signal to the main process, or the command;
    /// for a notify daemon, done at its next `READY=1`.
    fn on_reload(&mut self, stream: tokio::io::BufReader<tokio::net::UnixStream>) {
        let fail = |why: &str| control::ReloadOutcome {
            v: control::PROTOCOL_VERSION,
            error: Some(why.to_owned()),
            timed_out: false,
        };
        if !matches!(self.phase, Phase::Running)
            || self.stop_requested
            || !self.answered
            || self.awaiting_probe
        {
            self.reload_done
                .push((stream, fail("it is not running (or not ready yet)")));
            return;
        }
        if self.reloading.is_some() {
            self.reload_done
                .push((stream, fail("a reload is under way")));
            return;
        }
        let until = Instant::now() + Duration::from_millis(self.req.startup_timeout_ms.max(1));
        let mut reloading = Reloading {
            stream,
            command: None,
            wait_ready: self.req.notify,
            ready_seen: false,
            until,
        };
        match &self.req.reload {
            crate::spec::ReloadSpec::Command(argv) => {
                let as_daemon = (
                    self.run.main_pid,
                    self.spawner.rlimits.as_slice(),
                    self.spawner.groups.as_slice(),
                );
                match spawn_helper(argv, &self.req, Some(as_daemon)) {
                    Ok(pid) => reloading.command = Some(pid),
                    Err(e) => {
                        let why = format!("run {}: {e}", argv[0]);
                        self.reload_done.push((reloading.stream, fail(&why)));
                        return;
                    }
                }
            }
            spec => {
                let sig = spec
                    .signal_number()
                    .and_then(|n| Signal::try_from(n).ok())
                    .unwrap_or(Signal::SIGHUP);
                tracing::info!(name = %self.req.name, pid = self.run.main_pid, signal = sig.as_str(), "reload");
                if let Err(e) = nix::sys::signal::kill(Pid::from_raw(self.run.main_pid as i32), sig)
                {
                    let why = format!("send {} to {}: {e}", sig.as_str(), self.run.main_pid);
                    self.reload_done.push((reloading.stream, fail(&why)));
                    return;
                }
            }
        }
        let done = reloading.command.is_none() && !reloading.wait_ready;
        self.reloading = Some(reloading);
        if done {
            self.finish_reload(None, false);
        }
    }

    fn on_reload_command_exit(&mut self, info: ExitInfo) {
        let Some(r) = self.reloading.as_mut() else {
            return;
        };
        r.command = None;
        match info {
            // The daemon's READY=1 may come before or after the command's end.
            ExitInfo::Code(0) if r.wait_ready && !r.ready_seen => {}
            ExitInfo::Code(0) => self.finish_reload(None, false),
            other => self.finish_reload(Some(format!("the reload command {other}")), false),
        }
    }

    /// Ends the reload under way (if any) with `error` (`None`: done).
    fn finish_reload(&mut self, error: Option<String>, timed_out: bool) {
        let Some(r) = self.reloading.take() else {
            return;
        };
        if let Some(pid) = r.command {
            let _ = nix::sys::signal::kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            let _ = waitpid(Pid::from_raw(pid as i32), None);
        }
        self.reload_done.push((
            r.stream,
            control::ReloadOutcome {
                v: control::PROTOCOL_VERSION,
                error,
                timed_out,
            },
        ));
    }
}

/// The result of a tcp/http liveness probe under way (never, when none is).
async fn probe_task(probing: Option<&mut Probing>) -> Result<(), String> {
    match probing {
        Some(Probing::Task(task)) => task
            .await
            .unwrap_or_else(|e| Err(format!("probe task: {e}"))),
        _ => std::future::pending().await,
    }
}

/// Answers every reload that ended.
async fn flush_reloads(
    done: &mut Vec<(
        tokio::io::BufReader<tokio::net::UnixStream>,
        control::ReloadOutcome,
    )>,
) {
    for (mut stream, outcome) in done.drain(..) {
        control::write_reload_outcome(&mut stream, &outcome).await;
    }
}

/// Extra time the supervisor gives the caller's readiness probe beyond the
/// start-up timeout (the caller gives up at the timeout and stops the daemon
/// itself; this is for a caller that went away).
pub(super) const PROBE_GRACE: Duration = Duration::from_secs(2);

/// The phase a control reply reports.
pub(super) fn control_phase(phase: Phase, stopping: bool, starting: bool) -> control::Phase {
    match phase {
        Phase::Backoff(_) => control::Phase::Backoff,
        Phase::Exited(_) if stopping => control::Phase::Stopping,
        Phase::Exited(_) => control::Phase::Exited,
        Phase::Running if stopping => control::Phase::Stopping,
        Phase::Running if starting => control::Phase::Starting,
        Phase::Running => control::Phase::Running,
    }
}

/// `sig` to the daemon's process group and, where we are a subreaper, to
/// every descendant of ours (those that left the group with `setsid` or
/// `setpgid` included): the daemon's whole tree.
pub(super) fn signal_tree(run: &Run, sig: Signal) {
    let _ = killpg(Pid::from_raw(run.pgid() as i32), sig);
    for pid in proc::descendants(std::process::id()) {
        let _ = nix::sys::signal::kill(Pid::from_raw(pid as i32), sig);
    }
}

/// The exit code `daemonctl run` ends with for a daemon that ended this way.
pub(super) fn exit_code(exit: ExitInfo) -> i32 {
    match exit {
        ExitInfo::Code(c) => c,
        ExitInfo::Signal(s) => 128 + s,
    }
}

/// Removes the PID file and the record: a requested stop ends in a clean
/// "stopped", nothing left on disk. Only while they are this supervisor's
/// generation (see [`save_record`]); the control socket goes with the
/// [`control::Server`].
pub(super) fn clean_up(paths: &Paths, record: &Record) {
    remove_own(&paths.pid_file, paths, record);
    remove_own(&paths.identity, paths, record);
}

/// Removes `path` (the PID file or the record) unless the record on disk
/// belongs to another supervisor.
pub(super) fn remove_own(path: &std::path::Path, paths: &Paths, record: &Record) {
    match pidfile::read_record(&paths.identity) {
        Ok(Some(on_disk)) if on_disk.supervisor != record.supervisor => {}
        _ => {
            let _ = pidfile::remove(path);
        }
    }
}

/// Waits (bounded) for the log pumps to copy what the daemon wrote: the
/// group is gone, so every write end is closed unless a process that left
/// the group still holds one.
pub(super) async fn drain(pumps: &mut Vec<JoinHandle<()>>) {
    let deadline = Instant::now() + Duration::from_secs(2);
    for pump in pumps.drain(..) {
        if tokio::time::timeout_at(deadline, pump).await.is_err() {
            tracing::warn!("a process outside the daemon's group keeps its output pipe open");
        }
    }
}

pub(super) fn in_group(pid: u32, run: &Run) -> bool {
    pid == run.main_pid
        || pid == run.child
        || nix::unistd::getpgid(Some(Pid::from_raw(pid as i32)))
            .is_ok_and(|g| g.as_raw() as u32 == run.pgid())
}

/// `MAINPID=` is only honoured where we can reap that process when it ends:
/// as a subreaper (Linux), every process of the daemon's tree is our child
/// once its parent exits.
pub(super) fn accept_main_pid(pid: u32, run: &Run) -> bool {
    cfg!(target_os = "linux") && proc::fast_paths() && in_group(pid, run)
}

pub(super) async fn recv_notify(
    socket: Option<&NotifySocket>,
) -> std::io::Result<(notify::Message, Option<u32>)> {
    match socket {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}

pub(super) async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
