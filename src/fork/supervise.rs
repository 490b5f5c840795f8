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
//! - a datagram on `NOTIFY_SOCKET`: see [`super::notify`]; with
//!   `watchdog_secs`, `WATCHDOG=1` moves the watchdog deadline (armed once
//!   the daemon is ready), and a missed deadline or `WATCHDOG=trigger`
//!   sends SIGABRT to the group (SIGKILL after the shutdown timeout), after
//!   which the restart rules apply with the reason `watchdog timeout`;
//! - the liveness probe's timer, once ready: tcp/http probes run as tasks,
//!   a command as a child of ours (reaped with the rest); `failures` in a
//!   row send SIGTERM (SIGKILL after the shutdown timeout) and the restart
//!   rules apply as after a failure;
//! - a `reload` on the control socket: the signal to the main PID, or the
//!   reload command as the daemon's user; for a notify daemon the answer
//!   waits for `READY=1`.
//!
//! [`run_foreground`] runs the same loop in the calling process without the
//! fork and `setsid`: `daemonctl run`, the entrypoint of a container, where the
//! supervisor is PID 1 and so also reaps every orphan of the namespace.

mod event_loop;
mod protocol;
mod spawn;

use event_loop::supervise;
use protocol::parse_request;
pub(crate) use protocol::{Request, Response, REQUEST_VERSION};
use spawn::reset_signal_state;

use std::io::{Read, Write};

/// Environment variable that turns a program calling
/// [`crate::supervisor_init`] into a supervisor.
pub const SUPERVISE_ENV: &str = "DAEMON_LIFECYCLE_SUPERVISE";

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

/// Linux: orphaned grandchildren of the daemon are re-parented to us, so we
/// reap them and see the group empty without polling. Elsewhere (and on the
/// forced portable path) they go to init, which reaps them.
fn become_subreaper() {
    #[cfg(target_os = "linux")]
    if super::proc::fast_paths() {
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
        tracing::info!(response = %serde_json::to_string(r).unwrap_or_default(), "supervisor");
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
