//! The supervisor: a small process per daemon that stays its parent.
//!
//! It is always an exec'd program — the host binary re-executed after
//! [`crate::supervisor_init`], `daemonctl`, or a path given to the backend —
//! never a bare fork of the caller (a fork of a multi-threaded tokio process is
//! unsafe, and a long-lived fork would pin all of the caller's memory).
//!
//! Protocol: the caller starts the program with `DAEMON_LIFECYCLE_SUPERVISE=1`
//! in its environment, writes one JSON [`Request`] on its stdin and closes it,
//! and reads one JSON [`Response`] line from its stdout. The program forks once
//! (so the caller, which reaps the short-lived first process, never collects a
//! zombie later), detaches with `setsid`, becomes a child subreaper on Linux,
//! spawns the daemon in its own session and process group with stdio on
//! `/dev/null`, writes the identity record and the PID file, answers, and then
//! waits for events:
//!
//! - `SIGCHLD`: reap; when the daemon has exited, terminate what is left of its
//!   process group, record how it ended and exit;
//! - `SIGTERM`/`SIGINT`/`SIGHUP`: a stop request: SIGTERM to the group, SIGKILL
//!   after the shutdown timeout, then exit and leave a clean "stopped" state;
//! - `SIGUSR1`: a kill request: SIGKILL to the group at once.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{killpg, SigSet, SigmaskHow, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use tokio::signal::unix::{signal, SignalKind};
use tokio::time::Instant;

use super::pidfile::{self, Paths, Record};
use super::proc::{self, ProcRef};
use crate::backend::ExitInfo;

/// Environment variable that turns a program calling
/// [`crate::supervisor_init`] into a supervisor.
pub const SUPERVISE_ENV: &str = "DAEMON_LIFECYCLE_SUPERVISE";

/// What the caller asks the supervisor to run.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Request {
    pub name: String,
    pub binary_path: PathBuf,
    pub args: Vec<String>,
    /// The complete environment of the daemon (base + config).
    pub env: BTreeMap<String, String>,
    pub working_dir: PathBuf,
    pub pid_file: PathBuf,
    pub shutdown_timeout_ms: u64,
}

/// The supervisor's one-line answer.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Response {
    /// The daemon runs with this PID; PID file and identity are written.
    Started { pid: u32 },
    /// `exec` of the daemon failed (errno, message).
    ExecFailed { errno: Option<i32>, message: String },
    /// The PID file or identity record could not be written.
    PidFileFailed {
        path: PathBuf,
        errno: Option<i32>,
        message: String,
    },
    /// Anything else (bad request, fork failed).
    Failed { message: String },
}

/// Runs the supervisor; called by [`crate::supervisor_init`] when
/// [`SUPERVISE_ENV`] is set. Never returns.
pub(crate) fn main() -> ! {
    std::env::remove_var(SUPERVISE_ENV);
    let mut input = Vec::new();
    let request = std::io::stdin()
        .read_to_end(&mut input)
        .map_err(|e| e.to_string())
        .and_then(|_| serde_json::from_slice::<Request>(&input).map_err(|e| e.to_string()));
    let request = match request {
        Ok(r) => r,
        Err(message) => {
            answer(&Response::Failed {
                message: format!("bad supervisor request: {message}"),
            });
            std::process::exit(2);
        }
    };
    // Fork once so the caller's child exits at once and is reaped there. This
    // process is single-threaded here (no runtime yet), so fork is safe.
    // SAFETY: no other thread exists; the child only continues this program.
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Parent { .. }) => std::process::exit(0),
        Ok(nix::unistd::ForkResult::Child) => {}
        Err(e) => {
            answer(&Response::Failed {
                message: format!("fork: {e}"),
            });
            std::process::exit(1);
        }
    }
    // Leave the caller's session: no terminal hang-up, no job-control signals.
    let _ = nix::unistd::setsid();
    #[cfg(target_os = "linux")]
    // Orphaned grandchildren of the daemon are re-parented to us, so we reap
    // them and see the group empty without polling.
    let _ = nix::sys::prctl::set_child_subreaper(true);

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("supervisor runtime");
    let code = runtime.block_on(supervise(request));
    std::process::exit(code);
}

fn answer(response: &Response) {
    let mut line = serde_json::to_vec(response).expect("a Response always serializes");
    line.push(b'\n');
    let mut out = std::io::stdout().lock();
    // The caller may be gone already; the daemon runs on regardless.
    let _ = out.write_all(&line).and_then(|_| out.flush());
}

/// After answering, stdio must not keep the caller's pipes open (it waits for
/// EOF) nor be left closed (a later open would reuse fds 0–2).
fn detach_stdio() {
    if let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        let _ = nix::unistd::dup2_stdin(&null);
        let _ = nix::unistd::dup2_stdout(&null);
        let _ = nix::unistd::dup2_stderr(&null);
    }
}

async fn supervise(req: Request) -> i32 {
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
            answer(&Response::Failed {
                message: "cannot install signal handlers".into(),
            });
            return 1;
        }
    };

    let pid = match spawn_daemon(&req) {
        Ok(pid) => pid,
        Err(e) => {
            answer(&Response::ExecFailed {
                errno: e.raw_os_error(),
                message: e.to_string(),
            });
            return 1;
        }
    };
    let pgid = pid; // the daemon leads its own session and group

    let daemon = ProcRef::of(pid).unwrap_or(ProcRef {
        pid,
        start_time: None,
        boot_id: proc::boot_id(),
    });
    let record = Record::started(daemon, ProcRef::of(std::process::id()));
    let written = pidfile::write_record(&paths.identity, &record)
        .and_then(|_| pidfile::write_pid(&paths.pid_file, pid));
    if let Err(e) = written {
        let _ = killpg(Pid::from_raw(pgid as i32), Signal::SIGKILL);
        let _ = waitpid(Pid::from_raw(pid as i32), None);
        let _ = pidfile::remove(&paths.pid_file);
        let _ = pidfile::remove(&paths.identity);
        let (path, errno, message) = match e {
            crate::DaemonError::PidFileError { path, source } => {
                (path, source.raw_os_error(), source.to_string())
            }
            other => (paths.pid_file.clone(), None, other.to_string()),
        };
        answer(&Response::PidFileFailed {
            path,
            errno,
            message,
        });
        return 1;
    }
    answer(&Response::Started { pid });
    detach_stdio();

    let shutdown = Duration::from_millis(req.shutdown_timeout_ms);
    let mut stop_requested = false;
    let mut daemon_exit: Option<ExitInfo> = None;
    // When set, SIGKILL the group at this instant (stop escalation).
    let mut kill_at: Option<Instant> = None;
    // After the daemon's exit without a subreaper, leftover group members
    // are not our children: look again now and then.
    let mut recheck = tokio::time::interval(Duration::from_millis(50));

    loop {
        if daemon_exit.is_some() && !proc::group_exists(pgid) {
            break;
        }
        tokio::select! {
            _ = chld.recv() => {
                for (reaped, info) in reap_all() {
                    if reaped == pid {
                        tracing::debug!(pid, %info, "daemon exited");
                        daemon_exit = Some(info);
                        // Record at once (readers wait for this moment), then
                        // drop the PID file: a reader that still sees the PID
                        // file of a dead daemon finds the exit in the record.
                        let mut ended = record.clone();
                        ended.last_exit = Some(info);
                        let _ = pidfile::write_record(&paths.identity, &ended);
                        let _ = pidfile::remove(&paths.pid_file);
                        // What is left of the group goes too (as systemd's
                        // KillMode=control-group does when the main process exits).
                        if kill_at.is_none() && proc::group_exists(pgid) {
                            let _ = killpg(Pid::from_raw(pgid as i32), Signal::SIGTERM);
                            kill_at = Some(Instant::now() + shutdown);
                        }
                    }
                }
            }
            _ = term.recv() => request_stop(pgid, shutdown, &mut stop_requested, &mut kill_at),
            _ = int.recv() => request_stop(pgid, shutdown, &mut stop_requested, &mut kill_at),
            _ = hup.recv() => request_stop(pgid, shutdown, &mut stop_requested, &mut kill_at),
            _ = usr1.recv() => {
                stop_requested = true;
                let _ = killpg(Pid::from_raw(pgid as i32), Signal::SIGKILL);
            }
            _ = sleep_until_opt(kill_at) => {
                tracing::debug!(pgid, "shutdown timeout: SIGKILL");
                let _ = killpg(Pid::from_raw(pgid as i32), Signal::SIGKILL);
                kill_at = None;
            }
            _ = recheck.tick(), if daemon_exit.is_some() => {
                reap_all();
            }
        }
    }

    if stop_requested {
        // A requested stop ends in a clean "stopped": nothing stays on disk.
        let _ = pidfile::remove(&paths.pid_file);
        let _ = pidfile::remove(&paths.identity);
    }
    0
}

fn request_stop(
    pgid: u32,
    shutdown: Duration,
    stop_requested: &mut bool,
    kill_at: &mut Option<Instant>,
) {
    if *stop_requested && kill_at.is_some() {
        return; // already stopping; a second SIGTERM must not reset the timer
    }
    *stop_requested = true;
    let _ = killpg(Pid::from_raw(pgid as i32), Signal::SIGTERM);
    if kill_at.is_none() {
        *kill_at = Some(Instant::now() + shutdown);
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Reaps every exited child without blocking.
fn reap_all() -> Vec<(u32, ExitInfo)> {
    let mut out = Vec::new();
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(p, code)) => out.push((p.as_raw() as u32, ExitInfo::Code(code))),
            Ok(WaitStatus::Signaled(p, sig, _)) => {
                out.push((p.as_raw() as u32, ExitInfo::Signal(sig as i32)))
            }
            Ok(WaitStatus::StillAlive) | Err(_) => break,
            Ok(_) => continue,
        }
    }
    out
}

/// Spawns the daemon: exec'd directly, in a new session (so it leads its own
/// process group), with a clean environment and stdio on `/dev/null`.
fn spawn_daemon(req: &Request) -> std::io::Result<u32> {
    let mut cmd = Command::new(&req.binary_path);
    cmd.args(&req.args)
        .env_clear()
        .envs(&req.env)
        .current_dir(&req.working_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: the closure runs between fork and exec and calls only
    // async-signal-safe functions (setsid, sigprocmask).
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)
                .map_err(std::io::Error::from)?;
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    // The child is reaped by `reap_all`, not through `Child`.
    Ok(child.id())
}
