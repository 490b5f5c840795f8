//! The supervisor: a small process per daemon that stays its parent.
//!
//! It is always an exec'd program — the host binary re-executed after
//! [`crate::supervisor_init`], `daemonctl`, or a path given to the backend —
//! never a bare fork of the caller (a fork of a multi-threaded tokio process is
//! unsafe, and a long-lived fork would pin all of the caller's memory).
//!
//! Protocol: the caller starts the program with `DAEMON_LIFECYCLE_SUPERVISE=1`
//! in its environment, writes one JSON [`Request`] on its stdin and closes it,
//! and reads JSON [`Response`] lines from its stdout until a final one
//! (`Extended` lines before it move the caller's deadline, as
//! `EXTEND_TIMEOUT_USEC=` does). The program forks once (so the caller, which
//! reaps the short-lived first process, never collects a zombie later),
//! detaches with `setsid`, becomes a child subreaper on Linux, spawns the
//! daemon in its own session and process group (stdio on `/dev/null`, or on
//! pipes it copies into the log files), writes the identity record and the PID
//! file, and answers `Started` — at once, or for `readiness = notify` only
//! after `READY=1` (`NotReady` after the start-up timeout, once the daemon is
//! stopped; `ExitedBeforeReady` if it died first). Then it waits for events:
//!
//! - `SIGCHLD`: reap (every orphan too); when the daemon has exited, terminate
//!   what is left of its process group, record how it ended, and restart it
//!   per the `restart` policy with exponential back-off, or give up ("start
//!   limit hit") or exit;
//! - `SIGTERM`/`SIGINT`/`SIGHUP`: a stop request: the signal (SIGTERM for
//!   SIGHUP) to the group, SIGKILL after the shutdown timeout, then exit and
//!   leave a clean "stopped" state; never a restart;
//! - `SIGUSR1`: a kill request: SIGKILL to the group at once;
//! - a datagram on `NOTIFY_SOCKET`: see [`super::notify`].
//!
//! [`run_foreground`] runs the same loop in the calling process without the
//! fork and `setsid`: `daemonctl run`, the entrypoint of a container, where the
//! supervisor is PID 1 and so also reaps every orphan of the namespace.
use std::collections::BTreeMap;
use std::ffi::CString;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{killpg, SigSet, SigmaskHow, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use tokio::signal::unix::{signal, SignalKind};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::control;
use super::limits::{self, Credentials};
use super::logs::{self, LogFile, SharedLog};
use super::notify::{self, NotifySocket};
use super::pidfile::{self, Paths, Record};
use super::proc::{self, ProcRef};
use crate::backend::ExitInfo;
use crate::config::Limits;
use crate::spec::{LogSpec, RestartSpec, StartLimit};

/// Environment variable that turns a program calling
/// [`crate::supervisor_init`] into a supervisor.
pub const SUPERVISE_ENV: &str = "DAEMON_LIFECYCLE_SUPERVISE";

/// Version of the caller → supervisor request. A supervisor program built
/// from another version of this crate refuses a request of another version
/// (and unknown fields) instead of silently dropping what it does not know.
pub(crate) const REQUEST_VERSION: u32 = 3;

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

/// Runs the supervisor; called by [`crate::supervisor_init`] when
/// [`SUPERVISE_ENV`] is set. Never returns.
pub(crate) fn main() -> ! {
    // Before anything else: a caller's blocked signals would hold back our
    // stop request (SIGTERM) and a caller's ignored ones would reach the
    // daemon. Start as systemd starts a service: empty mask, defaults.
    reset_signal_state();
    std::env::remove_var(SUPERVISE_ENV);
    if let Some(why) = not_single_threaded() {
        answer(&Response::Failed {
            message: format!(
                "the supervisor program is {why}: daemon_lifecycle::supervisor_init() must be the first \
                 call in a plain `fn main()`, before any runtime or thread starts"
            ),
        });
        std::process::exit(2);
    }
    // Nothing of the caller's may leak into the supervisor or the daemon:
    // no inherited descriptors beyond stdio (a CI runner's pipe on fd 3 would
    // otherwise stay open for the daemon's lifetime), no busy working
    // directory, the umask systemd gives services.
    close_inherited_fds();
    let _ = nix::unistd::chdir("/");
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
    let mut input = Vec::new();
    let request = std::io::stdin()
        .read_to_end(&mut input)
        .map_err(|e| e.to_string())
        .and_then(|_| parse_request(&input));
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
    become_subreaper();

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("supervisor runtime");
    let code = runtime.block_on(supervise(request, &mut |r: &Response| {
        answer(r);
        if r.is_final() {
            detach_stdio();
        }
    }));
    std::process::exit(code);
}

/// The request, if it is of our version; else why not, in words the caller
/// shows its user.
fn parse_request(input: &[u8]) -> Result<Request, String> {
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

/// Linux: orphaned grandchildren of the daemon are re-parented to us, so we
/// reap them and see the group empty without polling. Elsewhere (and on the
/// forced portable path) they go to init, which reaps them.
fn become_subreaper() {
    #[cfg(target_os = "linux")]
    if proc::fast_paths() {
        let _ = nix::sys::prctl::set_child_subreaper(true);
    }
}

/// Supervises in the calling process (no fork, no `setsid`) until the daemon
/// is gone for good; returns the exit code a container entrypoint should end
/// with: 0 after a requested stop, else the daemon's code (128 + signal).
/// The caller must not run other child processes through tokio meanwhile:
/// every child is reaped here (as PID 1 must).
pub(crate) async fn run_foreground(req: Request) -> (i32, Option<Response>) {
    become_subreaper();
    let mut first: Option<Response> = None;
    let code = supervise(req, &mut |r: &Response| {
        tracing::info!(response = ?r, "supervisor");
        if r.is_final() && first.is_none() {
            // Keep the first final answer: it tells the caller how start went.
            first = Some(r.clone());
        }
    })
    .await;
    (code, first)
}

/// Why this process must not fork (it is inside a tokio runtime or has
/// other threads), or `None`.
fn not_single_threaded() -> Option<&'static str> {
    if tokio::runtime::Handle::try_current().is_ok() {
        return Some("running inside a tokio runtime");
    }
    #[cfg(target_os = "linux")]
    if std::fs::read_dir("/proc/self/task").is_ok_and(|d| d.count() > 1) {
        return Some("multi-threaded");
    }
    None
}

/// Closes every descriptor above stderr. Single-threaded here, so no other
/// thread can be opening one meanwhile.
fn close_inherited_fds() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: plain syscall on integers; closes fds nobody else uses yet.
        if unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) } == 0 {
            return;
        }
    }
    let max = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map(|(soft, _)| soft.min(65_536) as i32)
        .unwrap_or(1024);
    for fd in 3..max {
        // SAFETY: closing an fd number; EBADF for unused ones is ignored.
        unsafe { libc::close(fd) };
    }
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

/// One run of the daemon.
struct Run {
    /// The process we spawned (leads the session and group).
    child: u32,
    /// The main process: `child`, or what it named with `MAINPID=`.
    main_pid: u32,
    /// Copies of stdout/stderr into the log files.
    pumps: Vec<JoinHandle<()>>,
}

impl Run {
    fn pgid(&self) -> u32 {
        self.child
    }
}

#[derive(Clone, Copy)]
enum Phase {
    Running,
    /// The daemon ended; what is left of its group is being terminated.
    Exited(ExitInfo),
    /// Waiting out the restart delay.
    Backoff(Instant),
}

enum Event {
    Child,
    Stop(Signal),
    Kill,
    Notify(std::io::Result<(notify::Message, Option<u32>)>),
    Control(ControlMsg),
    KillTimer,
    ReadyTimer,
    RestartTimer,
    Recheck,
}

/// Open log files, shared across restarts.
struct Logs {
    stdout: Option<SharedLog>,
    stderr: Option<SharedLog>,
}

fn open_logs(cfg: &LogSpec) -> Result<Logs, (PathBuf, std::io::Error)> {
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
fn save_record(paths: &Paths, record: &Record) -> bool {
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
fn save_pid(paths: &Paths, record: &Record, pid: u32) {
    if save_record(paths, record) {
        let _ = pidfile::write_pid(&paths.pid_file, pid);
    }
}

/// Why a daemon's clean exit that leaves processes behind is a failure.
const SELF_DAEMONIZED: &str = "its main process exited and left processes running (it put itself \
     in the background, like a self-daemonizing program); they were stopped. Run it in the \
     foreground (for nginx: `daemon off;`)";

/// A control request received by the connection task, with its connection
/// (kept open after `stop`/`kill` until this process exits).
type ControlMsg = (
    control::ControlRequest,
    tokio::io::BufReader<tokio::net::UnixStream>,
);

async fn supervise(req: Request, out: &mut dyn FnMut(&Response)) -> i32 {
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

    let logs = match open_logs(&req.logs) {
        Ok(l) => l,
        Err((path, e)) => {
            out(&Response::SetupFailed {
                path,
                errno: e.raw_os_error(),
                message: e.to_string(),
            });
            return 1;
        }
    };
    let notify_socket = if req.notify {
        let owner = req
            .credentials
            .as_ref()
            .filter(|c| c.switch)
            .map(|c| (c.uid, c.gid));
        match NotifySocket::bind(&paths.notify_dir, owner) {
            Ok(s) => Some(s),
            Err(e) => {
                out(&Response::SetupFailed {
                    path: paths.notify_dir.clone(),
                    errno: e.raw_os_error(),
                    message: format!("notify socket: {e}"),
                });
                return 1;
            }
        }
    } else {
        None
    };
    // Computed before any fork: the child may not allocate.
    let rlimits = limits::rlimits(&req.limits);
    let groups: Vec<libc::gid_t> = req
        .credentials
        .as_ref()
        .map(|c| c.groups.iter().map(|g| *g as libc::gid_t).collect())
        .unwrap_or_default();
    let spawn = |req: &Request| spawn_daemon(req, &logs, notify_socket.as_ref(), &rlimits, &groups);

    let mut run = match spawn(&req) {
        Ok(run) => run,
        Err(e) => {
            out(&Response::ExecFailed {
                errno: e.raw_os_error(),
                message: e.to_string(),
            });
            return 1;
        }
    };
    let mut record = Record::started(
        ProcRef::of(run.child).unwrap_or(ProcRef {
            pid: run.child,
            start_time: None,
            boot_id: proc::boot_id(),
        }),
        ProcRef::of(std::process::id()),
    );
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
        return 1;
    }
    let mut answered = !req.notify;
    if answered {
        out(&Response::Started { pid: run.child });
    }

    let shutdown = Duration::from_millis(req.shutdown_timeout_ms);
    let started = Instant::now();
    // The caller probes tcp/http/command readiness and reports success over
    // the control socket; if it never does (it was interrupted, or the probe
    // never succeeds), the daemon is stopped here, so no half-started daemon
    // stays behind a caller that went away.
    let mut awaiting_probe = req.await_probe;
    let mut ready_deadline = if !answered {
        Some(started + Duration::from_millis(req.startup_timeout_ms.max(1)))
    } else if awaiting_probe {
        Some(started + Duration::from_millis(req.startup_timeout_ms.max(1)) + PROBE_GRACE)
    } else {
        None
    };
    let mut not_ready = false;
    let mut stop_requested = false;
    let mut phase = Phase::Running;
    // When set, SIGKILL the tree at this instant (stop escalation).
    let mut kill_at: Option<Instant> = None;
    // SIGKILL was sent: anything still alive (forked meanwhile) gets it again.
    let mut killed = false;
    // Restarts scheduled within the start-limit window.
    let mut start_limit = StartLimit::default();
    // After the daemon's exit without a subreaper, leftover group members
    // are not our children: look again now and then.
    let mut recheck = tokio::time::interval(Duration::from_millis(50));

    loop {
        if let Phase::Exited(exit) = phase {
            if !tree_alive(run.pgid()) {
                reap_leader(run.pgid());
                kill_at = None;
                drain(&mut run.pumps).await;
                if !answered {
                    if not_ready {
                        clean_up(&paths, &record);
                        out(&Response::NotReady {
                            after_ms: started.elapsed().as_millis() as u64,
                        });
                        return 1;
                    }
                    out(&Response::ExitedBeforeReady { exit });
                    return exit_code(exit);
                }
                if stop_requested {
                    clean_up(&paths, &record);
                    return 0;
                }
                if record.failure.is_some() || !req.restart.restarts_after(exit) {
                    record.restart_pending = false;
                    save_record(&paths, &record);
                    return exit_code(exit);
                }
                let now = Instant::now();
                let Some(delay) = start_limit.next(&req.restart, now.into_std()) else {
                    tracing::warn!(name = %req.name, "start limit hit: not restarting");
                    record.failure = Some("start limit hit".into());
                    record.restart_pending = false;
                    save_record(&paths, &record);
                    return exit_code(exit);
                };
                record.restart_pending = true;
                save_record(&paths, &record);
                tracing::info!(name = %req.name, ?delay, "restarting after back-off");
                phase = Phase::Backoff(now + delay);
            }
        }
        let restart_at = match phase {
            Phase::Backoff(at) => Some(at),
            _ => None,
        };
        let event = tokio::select! {
            _ = chld.recv() => Event::Child,
            _ = term.recv() => Event::Stop(Signal::SIGTERM),
            _ = int.recv() => Event::Stop(Signal::SIGINT),
            _ = hup.recv() => Event::Stop(Signal::SIGTERM),
            _ = usr1.recv() => Event::Kill,
            m = recv_notify(notify_socket.as_ref()) => Event::Notify(m),
            c = control_rx.recv() => match c {
                Some(c) => Event::Control(c),
                None => continue,
            },
            _ = &mut acceptor => unreachable!("the acceptor never ends"),
            _ = sleep_until_opt(kill_at) => Event::KillTimer,
            _ = sleep_until_opt(ready_deadline) => Event::ReadyTimer,
            _ = sleep_until_opt(restart_at) => Event::RestartTimer,
            _ = recheck.tick(), if matches!(phase, Phase::Exited(_)) => Event::Recheck,
        };
        // A control request is answered (and, for stop/kill, turned into the
        // same event a signal gives).
        let event = match event {
            Event::Control((request, mut stream)) => {
                let action = match request.op {
                    control::Op::Status => None,
                    control::Op::Ready => {
                        if awaiting_probe && matches!(phase, Phase::Running) {
                            awaiting_probe = false;
                            ready_deadline = None;
                            record.ready = true;
                            save_record(&paths, &record);
                        }
                        None
                    }
                    control::Op::Stop => Some(Event::Stop(Signal::SIGTERM)),
                    control::Op::Kill => Some(Event::Kill),
                };
                let wanted_stop = action.is_some();
                let reply = control::ControlReply {
                    v: control::PROTOCOL_VERSION,
                    supervisor: std::process::id(),
                    pid_file: paths.pid_file.clone(),
                    phase: control_phase(
                        phase,
                        stop_requested || wanted_stop,
                        !answered || awaiting_probe,
                    ),
                    record: record.clone(),
                };
                control::write_reply(&mut stream, &reply).await;
                if wanted_stop {
                    waiting_for_exit.push(stream);
                }
                match action {
                    Some(a) => a,
                    None => continue,
                }
            }
            other => other,
        };
        match event {
            Event::Control(_) => unreachable!("handled above"),
            Event::Child | Event::Recheck => {
                if killed {
                    signal_tree(&run, Signal::SIGKILL);
                }
                for (reaped, info) in reap_all(run.pgid()) {
                    if reaped == run.main_pid && matches!(phase, Phase::Running) {
                        tracing::debug!(pid = reaped, %info, "daemon exited");
                        phase = Phase::Exited(info);
                        // Record at once (readers wait for this moment), then
                        // drop the PID file: a reader that still sees the PID
                        // file of a dead daemon finds the exit in the record.
                        record.last_exit = Some(info);
                        record.ready = false;
                        if !stop_requested && is_clean(info) && proc::has_descendants() {
                            tracing::warn!(name = %req.name, "daemon exited cleanly and left processes running");
                            record.failure = Some(SELF_DAEMONIZED.into());
                        }
                        // Say now whether a restart follows, in the same
                        // write: a reader must never see a bare failure for
                        // a daemon that is about to come back.
                        record.restart_pending = answered
                            && !stop_requested
                            && record.failure.is_none()
                            && req.restart.restarts_after(info);
                        save_record(&paths, &record);
                        remove_own(&paths.pid_file, &paths, &record);
                        // What is left of the daemon's tree goes too (as
                        // systemd's KillMode=control-group does when the main
                        // process exits): its group, and, where we are a
                        // subreaper, every descendant that left the group.
                        if kill_at.is_none() && tree_alive(run.pgid()) {
                            signal_tree(&run, Signal::SIGTERM);
                            kill_at = Some(Instant::now() + shutdown);
                        }
                    }
                }
            }
            Event::Stop(sig) => {
                if let Phase::Backoff(_) = phase {
                    // Nothing runs: a stop during the back-off is immediate.
                    clean_up(&paths, &record);
                    return 0;
                }
                if stop_requested && kill_at.is_some() {
                    continue; // already stopping; a second signal must not reset the timer
                }
                stop_requested = true;
                signal_tree(&run, sig);
                if kill_at.is_none() {
                    kill_at = Some(Instant::now() + shutdown);
                }
            }
            Event::Kill => {
                if let Phase::Backoff(_) = phase {
                    clean_up(&paths, &record);
                    return 0;
                }
                stop_requested = true;
                killed = true;
                signal_tree(&run, Signal::SIGKILL);
            }
            Event::KillTimer => {
                tracing::debug!(pgid = run.pgid(), "shutdown timeout: SIGKILL");
                killed = true;
                signal_tree(&run, Signal::SIGKILL);
                kill_at = None;
            }
            Event::ReadyTimer => {
                if answered {
                    tracing::warn!(name = %req.name, "the readiness probe never reported success: stopping");
                } else {
                    tracing::warn!(name = %req.name, "no READY=1 within the start-up timeout: stopping");
                    not_ready = true;
                }
                ready_deadline = None;
                awaiting_probe = false;
                stop_requested = true;
                signal_tree(&run, Signal::SIGTERM);
                kill_at.get_or_insert(Instant::now() + shutdown);
            }
            Event::RestartTimer => match spawn(&req) {
                Ok(new_run) => {
                    run = new_run;
                    phase = Phase::Running;
                    killed = false;
                    record.daemon = ProcRef::of(run.child).unwrap_or(ProcRef {
                        pid: run.child,
                        start_time: None,
                        boot_id: proc::boot_id(),
                    });
                    record.pgid = Some(run.pgid());
                    record.leader = record.daemon.start_time.map(|_| record.daemon.clone());
                    record.started_at_ms = pidfile::now_ms();
                    record.restarts += 1;
                    record.restart_pending = false;
                    record.ready = false;
                    save_pid(&paths, &record, run.child);
                }
                Err(e) => {
                    tracing::error!(name = %req.name, error = %e, "restart failed");
                    record.failure = Some(format!("restart failed: {e}"));
                    record.restart_pending = false;
                    save_record(&paths, &record);
                    return 1;
                }
            },
            Event::Notify(Err(e)) => {
                tracing::warn!(error = %e, "notify socket");
            }
            Event::Notify(Ok((msg, sender))) => {
                if !matches!(phase, Phase::Running) {
                    continue;
                }
                if let Some(sender) = sender {
                    if !in_group(sender, &run) {
                        tracing::warn!(
                            sender,
                            "ignoring sd_notify message from outside the daemon's process group"
                        );
                        continue;
                    }
                }
                let mut dirty = false;
                if let Some(text) = msg.status {
                    record.status_text = Some(text);
                    dirty = true;
                }
                let mut new_main = None;
                if let Some(main) = msg.main_pid.filter(|p| *p != run.main_pid) {
                    if accept_main_pid(main, &run) {
                        run.main_pid = main;
                        if let Some(r) = ProcRef::of(main) {
                            record.daemon = r;
                        }
                        dirty = true;
                        new_main = Some(main);
                    } else {
                        tracing::warn!(main, "ignoring MAINPID outside the daemon's process group");
                    }
                }
                if let (Some(extra), Some(deadline)) = (msg.extend_timeout, ready_deadline) {
                    let wanted = Instant::now() + extra;
                    if wanted > deadline {
                        ready_deadline = Some(wanted);
                        out(&Response::Extended {
                            timeout_ms: extra.as_millis() as u64,
                        });
                    }
                }
                if msg.stopping {
                    tracing::info!(name = %req.name, "daemon reports STOPPING=1");
                }
                if msg.ready && !record.ready {
                    record.ready = true;
                    dirty = true;
                }
                match new_main {
                    Some(main) => save_pid(&paths, &record, main),
                    None if dirty => {
                        save_record(&paths, &record);
                    }
                    None => {}
                }
                if record.ready && !answered {
                    answered = true;
                    ready_deadline = None;
                    out(&Response::Started { pid: run.main_pid });
                }
            }
        }
    }
}

/// Extra time the supervisor gives the caller's readiness probe beyond the
/// start-up timeout (the caller gives up at the timeout and stops the daemon
/// itself; this is for a caller that went away).
const PROBE_GRACE: Duration = Duration::from_secs(2);

/// The phase a control reply reports.
fn control_phase(phase: Phase, stopping: bool, starting: bool) -> control::Phase {
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
fn signal_tree(run: &Run, sig: Signal) {
    let _ = killpg(Pid::from_raw(run.pgid() as i32), sig);
    for pid in proc::descendants(std::process::id()) {
        let _ = nix::sys::signal::kill(Pid::from_raw(pid as i32), sig);
    }
}

fn is_clean(exit: ExitInfo) -> bool {
    crate::spec::is_clean_exit(exit)
}

/// The exit code `daemonctl run` ends with for a daemon that ended this way.
fn exit_code(exit: ExitInfo) -> i32 {
    match exit {
        ExitInfo::Code(c) => c,
        ExitInfo::Signal(s) => 128 + s,
    }
}

/// Removes the PID file and the record: a requested stop ends in a clean
/// "stopped", nothing left on disk. Only while they are this supervisor's
/// generation (see [`save_record`]); the control socket goes with the
/// [`control::Server`].
fn clean_up(paths: &Paths, record: &Record) {
    remove_own(&paths.pid_file, paths, record);
    remove_own(&paths.identity, paths, record);
}

/// Removes `path` (the PID file or the record) unless the record on disk
/// belongs to another supervisor.
fn remove_own(path: &std::path::Path, paths: &Paths, record: &Record) {
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
async fn drain(pumps: &mut Vec<JoinHandle<()>>) {
    let deadline = Instant::now() + Duration::from_secs(2);
    for pump in pumps.drain(..) {
        if tokio::time::timeout_at(deadline, pump).await.is_err() {
            tracing::warn!("a process outside the daemon's group keeps its output pipe open");
        }
    }
}

fn in_group(pid: u32, run: &Run) -> bool {
    pid == run.main_pid
        || pid == run.child
        || nix::unistd::getpgid(Some(Pid::from_raw(pid as i32)))
            .is_ok_and(|g| g.as_raw() as u32 == run.pgid())
}

/// `MAINPID=` is only honoured where we can reap that process when it ends:
/// as a subreaper (Linux), every process of the daemon's tree is our child
/// once its parent exits.
fn accept_main_pid(pid: u32, run: &Run) -> bool {
    cfg!(target_os = "linux") && proc::fast_paths() && in_group(pid, run)
}

async fn recv_notify(
    socket: Option<&NotifySocket>,
) -> std::io::Result<(notify::Message, Option<u32>)> {
    match socket {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Reaps every exited child without blocking (orphans adopted as subreaper
/// or as PID 1 included) — except `leader`, the daemon's process group
/// leader, on the Linux fast path: its exit is reported but it stays a
/// zombie until the whole tree is gone ([`reap_leader`]), so its PID, which
/// is the group's ID, cannot be reused by another process group while we
/// may still signal the group.
fn reap_all(leader: u32) -> Vec<(u32, ExitInfo)> {
    let mut out = Vec::new();
    if !proc::fast_paths() {
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(p, code)) => {
                    out.push((p.as_raw() as u32, ExitInfo::Code(code)))
                }
                Ok(WaitStatus::Signaled(p, sig, _)) => {
                    out.push((p.as_raw() as u32, ExitInfo::Signal(sig as i32)))
                }
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(_) => continue,
            }
        }
        return out;
    }
    if let Some(info) = proc::peek_exit(leader) {
        out.push((leader, info));
    }
    for child in proc::children(std::process::id()) {
        if child == leader {
            continue;
        }
        match waitpid(Pid::from_raw(child as i32), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(p, code)) => out.push((p.as_raw() as u32, ExitInfo::Code(code))),
            Ok(WaitStatus::Signaled(p, sig, _)) => {
                out.push((p.as_raw() as u32, ExitInfo::Signal(sig as i32)))
            }
            _ => {}
        }
    }
    out
}

/// Whether anything of the daemon's tree is left: a live member of its
/// group, or a child of ours other than the (zombie) group leader.
fn tree_alive(leader: u32) -> bool {
    if !proc::fast_paths() {
        return proc::group_exists(leader) || proc::has_children();
    }
    // As a subreaper every member of the daemon's group (and every process
    // that left it) is a descendant of ours: no scan of the whole machine.
    !proc::descendants(std::process::id()).is_empty()
        || proc::children(std::process::id())
            .iter()
            .any(|c| *c != leader)
}

/// Reaps the group leader once the tree is gone (see [`reap_all`]).
fn reap_leader(leader: u32) {
    if proc::fast_paths() {
        let _ = waitpid(Pid::from_raw(leader as i32), Some(WaitPidFlag::WNOHANG));
    }
}

/// Spawns the daemon: `execve`d directly (never through a shell: a file
/// that is neither a binary nor a `#!` script fails with ENOEXEC, where
/// execvp would hand it to `/bin/sh`), in a new session (so it leads its own
/// process group), with a clean environment, an empty signal mask and every
/// disposition at its default, limits and credentials applied, stdin on
/// `/dev/null` and stdout/stderr on `/dev/null` or on pipes copied into the
/// log files.
fn spawn_daemon(
    req: &Request,
    logs: &Logs,
    notify: Option<&NotifySocket>,
    rlimits: &[limits::Rlimit],
    groups: &[libc::gid_t],
) -> std::io::Result<Run> {
    // argv and envp for our own execve; std's (and its execvp) go unused.
    let image = ExecImage::new(req, notify)?;
    let mut cmd = Command::new(&req.binary_path);
    cmd.current_dir(&req.working_dir)
        .stdin(Stdio::null())
        .stdout(if logs.stdout.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stderr(if logs.stderr.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
    let creds = req.credentials.clone();
    let rlimits = rlimits.to_vec();
    let groups = groups.to_vec();
    let max_signal = max_signal();
    // SAFETY: the closure runs between fork and exec (std has set up stdio
    // and the working directory) and calls only async-signal-safe functions
    // (setsid, setrlimit, setgroups, setgid, setuid, sigaction,
    // sigprocmask, execve) on data prepared before the fork; it allocates
    // nothing. If execve returns, its errno goes back through std's error
    // pipe to `spawn`, and std never tries its own execvp.
    unsafe {
        cmd.pre_exec(move || {
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            limits::apply_in_child(&rlimits, creds.as_ref(), &groups)?;
            for sig in 1..=max_signal {
                if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                    set_default_disposition(sig);
                }
            }
            nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)
                .map_err(std::io::Error::from)?;
            Err(image.exec())
        });
    }
    let mut child = cmd.spawn()?;
    let mut pumps = Vec::new();
    if let (Some(out), Some(log)) = (child.stdout.take(), &logs.stdout) {
        pumps.push(tokio::spawn(logs::pump(OwnedFd::from(out), log.clone())));
    }
    if let (Some(err), Some(log)) = (child.stderr.take(), &logs.stderr) {
        pumps.push(tokio::spawn(logs::pump(OwnedFd::from(err), log.clone())));
    }
    // The child is reaped by `reap_all`, not through `Child`.
    Ok(Run {
        child: child.id(),
        main_pid: child.id(),
        pumps,
    })
}

/// The daemon's path, argv and envp as `execve` takes them, built before the
/// fork (the child may not allocate).
struct ExecImage {
    path: CString,
    /// Owns the strings `argv` and `envp` point into (their heap buffers
    /// stay put when this struct moves).
    _strings: Vec<CString>,
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
}

// SAFETY: the pointers only point into `_strings`, owned by the same value
// and never changed after `new`; the child reads them, nothing writes them.
unsafe impl Send for ExecImage {}
// SAFETY: as for Send: shared access only reads.
unsafe impl Sync for ExecImage {}

impl ExecImage {
    fn new(req: &Request, notify: Option<&NotifySocket>) -> std::io::Result<ExecImage> {
        let c = |bytes: Vec<u8>| {
            CString::new(bytes).map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::InvalidInput, "NUL byte in argv or env")
            })
        };
        let path = c(req.binary_path.as_os_str().as_bytes().to_vec())?;
        let mut env = req.env.clone();
        if let Some(n) = notify {
            env.insert(
                "NOTIFY_SOCKET".into(),
                n.path().to_string_lossy().into_owned(),
            );
        }
        // argv[0] is the path, as std (and systemd) give it.
        let mut argv_strings = vec![path.clone()];
        for a in &req.args {
            argv_strings.push(c(a.clone().into_bytes())?);
        }
        let mut env_strings = Vec::with_capacity(env.len());
        for (k, v) in &env {
            env_strings.push(c(format!("{k}={v}").into_bytes())?);
        }
        let ptrs = |v: &[CString]| {
            v.iter()
                .map(|s| s.as_ptr())
                .chain(std::iter::once(std::ptr::null()))
                .collect::<Vec<_>>()
        };
        let argv = ptrs(&argv_strings);
        let envp = ptrs(&env_strings);
        argv_strings.append(&mut env_strings);
        Ok(ExecImage {
            path,
            _strings: argv_strings,
            argv,
            envp,
        })
    }

    /// `execve`; returns only on failure, with its errno. Async-signal-safe.
    fn exec(&self) -> std::io::Error {
        // SAFETY: NUL-terminated strings and null-terminated pointer arrays,
        // alive as long as `self`.
        unsafe { libc::execve(self.path.as_ptr(), self.argv.as_ptr(), self.envp.as_ptr()) };
        std::io::Error::last_os_error()
    }
}

/// The highest signal number.
fn max_signal() -> libc::c_int {
    #[cfg(target_os = "linux")]
    {
        libc::SIGRTMAX()
    }
    #[cfg(not(target_os = "linux"))]
    {
        31
    }
}

/// Linux's own `sigaction` (the kernel's struct, not libc's), for the
/// real-time signals glibc reserves for itself (32 and 33) and refuses to
/// touch through `sigaction(3)`. glibc's `posix_spawn` leaves them *ignored*
/// in the programs it starts, so a supervisor started that way has them
/// ignored, and so would its daemon. `act`/`old` point at the kernel's
/// `struct sigaction`, whose first word is the handler; 8 words cover it.
#[cfg(all(
    target_os = "linux",
    not(any(target_arch = "mips", target_arch = "mips64"))
))]
fn raw_sigaction(sig: libc::c_int, act: Option<&[usize; 8]>, old: Option<&mut [usize; 8]>) -> bool {
    // SAFETY: a plain syscall on buffers that outlive it; the kernel's
    // sigset is 8 bytes on these architectures. Async-signal-safe.
    unsafe {
        libc::syscall(
            libc::SYS_rt_sigaction,
            sig,
            act.map_or(std::ptr::null(), |a| a.as_ptr()),
            old.map_or(std::ptr::null_mut(), |o| o.as_mut_ptr()),
            8usize,
        ) == 0
    }
}

/// Sets `sig` to `SIG_DFL` (no flags, empty handler mask). Async-signal-safe,
/// allocates nothing; a signal that cannot be changed is left alone.
fn set_default_disposition(sig: libc::c_int) {
    // SAFETY: sigaction with a zeroed (valid) struct on the stack.
    unsafe {
        let mut act: libc::sigaction = std::mem::zeroed();
        act.sa_sigaction = libc::SIG_DFL;
        libc::sigemptyset(&mut act.sa_mask);
        if libc::sigaction(sig, &act, std::ptr::null_mut()) == 0 {
            return;
        }
    }
    #[cfg(all(
        target_os = "linux",
        not(any(target_arch = "mips", target_arch = "mips64"))
    ))]
    // All zero: SIG_DFL, no flags, no restorer, empty mask.
    raw_sigaction(sig, Some(&[0; 8]), None);
}

/// Whether `sig` is set to `SIG_IGN`.
fn is_ignored(sig: libc::c_int) -> bool {
    // SAFETY: sigaction only reads the disposition into a struct on the stack.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        if libc::sigaction(sig, std::ptr::null(), &mut old) == 0 {
            return old.sa_sigaction == libc::SIG_IGN;
        }
    }
    #[cfg(all(
        target_os = "linux",
        not(any(target_arch = "mips", target_arch = "mips64"))
    ))]
    {
        let mut old = [0usize; 8];
        if raw_sigaction(sig, None, Some(&mut old)) {
            return old[0] == libc::SIG_IGN;
        }
    }
    false
}

/// The supervisor's first act: an empty signal mask and every signal the
/// caller left ignored back at its default — except SIGPIPE, which the Rust
/// runtime ignores in every program before `main` (a write to a caller that
/// went away must fail with EPIPE, not kill the supervisor; the daemon gets
/// SIGPIPE at its default like every other signal). Handlers cannot be
/// inherited (exec resets them), so only `SIG_IGN` needs undoing here.
fn reset_signal_state() {
    for sig in 1..=max_signal() {
        if ![libc::SIGKILL, libc::SIGSTOP, libc::SIGPIPE].contains(&sig) && is_ignored(sig) {
            set_default_disposition(sig);
        }
    }
    let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
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
