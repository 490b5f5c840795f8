//! Starting the daemon (fork, the child's set-up, exec) and reaping it and
//! its orphans.

use std::ffi::CString;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use nix::sys::signal::{SigSet, SigmaskHow};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::backend::ExitInfo;
use crate::fork::limits::{self};
use crate::fork::logs::{self};
use crate::fork::notify::NotifySocket;
use crate::fork::proc::{self};

use super::event_loop::{Logs, Run};
use super::protocol::Request;

/// Reaps every exited child without blocking (orphans adopted as subreaper
/// or as PID 1 included) — except `leader`, the daemon's process group
/// leader, on the Linux fast path: its exit is reported but it stays a
/// zombie until the whole tree is gone ([`reap_leader`]), so its PID, which
/// is the group's ID, cannot be reused by another process group while we
/// may still signal the group.
pub(super) fn reap_all(leader: u32) -> Vec<(u32, ExitInfo)> {
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
pub(super) fn tree_alive(leader: u32) -> bool {
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
pub(super) fn reap_leader(leader: u32) {
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
pub(super) fn spawn_daemon(
    req: &Request,
    logs: &Logs,
    notify: Option<&NotifySocket>,
    rlimits: &[limits::Rlimit],
    groups: &[libc::gid_t],
) -> std::io::Result<Run> {
    // argv and envp for our own execve; std's (and its execvp) go unused.
    let mut image = ExecImage::new(req, notify)?;
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
            image.set_watchdog_pid(libc::getpid());
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
pub(super) struct ExecImage {
    path: CString,
    /// Owns the strings `argv` and `envp` point into (their heap buffers
    /// stay put when this struct moves).
    _strings: Vec<CString>,
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
    /// `WATCHDOG_PID=` and room for the digits, which only the child
    /// knows (its own PID, as systemd sets it): filled in between fork and
    /// exec ([`ExecImage::set_watchdog_pid`]); `envp` points at it.
    watchdog_pid: Option<Box<[u8; 32]>>,
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
        if let Some(usec) = req.watchdog_usec {
            env.insert("WATCHDOG_USEC".into(), usec.to_string());
        } else {
            // Never the caller's: a watchdog we do not enforce is none.
            env.remove("WATCHDOG_USEC");
        }
        env.remove("WATCHDOG_PID");
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
        let mut envp = ptrs(&env_strings);
        let mut watchdog_pid = None;
        if req.watchdog_usec.is_some() {
            let mut buf = Box::new([0u8; 32]);
            buf[..WATCHDOG_PID_PREFIX.len()].copy_from_slice(WATCHDOG_PID_PREFIX);
            // Before the terminating null pointer.
            envp.insert(envp.len() - 1, buf.as_ptr().cast());
            watchdog_pid = Some(buf);
        }
        argv_strings.append(&mut env_strings);
        Ok(ExecImage {
            path,
            _strings: argv_strings,
            argv,
            envp,
            watchdog_pid,
        })
    }

    /// Writes `pid` after `WATCHDOG_PID=`, NUL-terminated. Runs in the child
    /// between fork and exec: no allocation, async-signal-safe.
    fn set_watchdog_pid(&mut self, pid: libc::pid_t) {
        let Some(buf) = self.watchdog_pid.as_mut() else {
            return;
        };
        let mut digits = [0u8; 20];
        let mut n = 0;
        let mut v = pid.max(0) as u64;
        loop {
            digits[n] = b'0' + (v % 10) as u8;
            n += 1;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        let start = WATCHDOG_PID_PREFIX.len();
        for i in 0..n {
            buf[start + i] = digits[n - 1 - i];
        }
        buf[start + n] = 0;
    }

    /// `execve`; returns only on failure, with its errno. Async-signal-safe.
    fn exec(&self) -> std::io::Error {
        // SAFETY: NUL-terminated strings and null-terminated pointer arrays,
        // alive as long as `self`.
        unsafe { libc::execve(self.path.as_ptr(), self.argv.as_ptr(), self.envp.as_ptr()) };
        std::io::Error::last_os_error()
    }
}

const WATCHDOG_PID_PREFIX: &[u8] = b"WATCHDOG_PID=";

/// Starts a helper command of the supervisor's (a liveness probe command,
/// a reload command): executed directly, stdio on `/dev/null`, in the
/// supervisor's process group. With `as_daemon`, in the daemon's working
/// directory, environment, user and limits (a reload command, as systemd
/// runs `ExecReload=`), with `MAINPID` set. Reaped by [`reap_all`] like
/// every child (never through `Child`); returns its PID.
pub(super) fn spawn_helper(
    argv: &[String],
    req: &Request,
    as_daemon: Option<(u32, &[limits::Rlimit], &[libc::gid_t])>,
) -> std::io::Result<u32> {
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some((main_pid, rlimits, groups)) = as_daemon {
        cmd.env_clear()
            .envs(&req.env)
            .env("MAINPID", main_pid.to_string())
            .current_dir(&req.working_dir);
        let creds = req.credentials.clone();
        let rlimits = rlimits.to_vec();
        let groups = groups.to_vec();
        // SAFETY: between fork and exec, only async-signal-safe calls on
        // data prepared before the fork (as for the daemon itself).
        unsafe {
            cmd.pre_exec(move || limits::apply_in_child(&rlimits, creds.as_ref(), &groups));
        }
    }
    let child = cmd.spawn()?;
    Ok(child.id())
}

/// The highest signal number.
pub(super) fn max_signal() -> libc::c_int {
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
pub(super) fn raw_sigaction(
    sig: libc::c_int,
    act: Option<&[usize; 8]>,
    old: Option<&mut [usize; 8]>,
) -> bool {
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
pub(super) fn set_default_disposition(sig: libc::c_int) {
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
pub(super) fn is_ignored(sig: libc::c_int) -> bool {
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
pub(super) fn reset_signal_state() {
    for sig in 1..=max_signal() {
        if ![libc::SIGKILL, libc::SIGSTOP, libc::SIGPIPE].contains(&sig) && is_ignored(sig) {
            set_default_disposition(sig);
        }
    }
    let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
}
