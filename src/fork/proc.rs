//! Looking at other processes: are they alive, are they who we think, which
//! processes are in a group, and waiting for them to go — woken by the exit
//! itself (a pidfd on Linux, kqueue's `NOTE_EXIT` on macOS and the BSDs)
//! rather than a sleep loop where the OS allows it.

use std::sync::OnceLock;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{kill, killpg};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// Set to `1` to make the fork backend take its portable code paths on Linux
/// too (no pidfd, no `/proc`, no child subreaper), so they are tested where
/// CI runs. Read once per process; the supervisor inherits it.
pub const PORTABLE_ENV: &str = "DAEMON_LIFECYCLE_PORTABLE";

/// Whether the Linux fast paths (pidfd, `/proc`, prctl) are in use: true on
/// Linux unless [`PORTABLE_ENV`] is `1`; meaningless elsewhere.
pub(crate) fn fast_paths() -> bool {
    static FAST: OnceLock<bool> = OnceLock::new();
    *FAST.get_or_init(|| {
        cfg!(target_os = "linux") && std::env::var_os(PORTABLE_ENV).is_none_or(|v| v != "1")
    })
}

/// Who a PID was when we recorded it: a PID plus the process's start time (and
/// the boot it belongs to), so a reused PID is never mistaken for our process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ProcRef {
    pub pid: u32,
    /// Start time in clock ticks since boot (Linux `/proc/PID/stat` field 22);
    /// `None` where the platform gives no cheap answer.
    pub start_time: Option<u64>,
    /// `/proc/sys/kernel/random/boot_id` when the record was made.
    pub boot_id: Option<String>,
}

impl ProcRef {
    /// The identity of a live process now, or `None` if it is gone (or a zombie).
    pub fn of(pid: u32) -> Option<ProcRef> {
        if !is_alive(pid) {
            return None;
        }
        Some(ProcRef {
            pid,
            start_time: start_time(pid),
            boot_id: boot_id(),
        })
    }

    /// True when `self.pid` is alive and still the same process.
    pub fn is_same_live_process(&self) -> bool {
        if !is_alive(self.pid) {
            return false;
        }
        if self.boot_id.is_some() && self.boot_id != boot_id() {
            return false;
        }
        match (self.start_time, start_time(self.pid)) {
            (Some(recorded), Some(now)) => recorded == now,
            // Only trust a PID without a start time when neither side could
            // have one (a platform, or the forced portable path, without the lookup).
            (None, None) => !fast_paths() || cfg!(not(target_os = "linux")),
            _ => false,
        }
    }
}

impl ProcRef {
    /// Like [`ProcRef::is_same_live_process`], but a zombie (exited, not yet
    /// reaped) counts: its PID is still taken, so it cannot name another
    /// process. Needs the start time (Linux); elsewhere `false` unless alive.
    pub fn is_same_process_or_zombie(&self) -> bool {
        if self.is_same_live_process() {
            return true;
        }
        match (self.start_time, start_time_any(self.pid)) {
            (Some(recorded), Some(now)) => recorded == now && self.boot_id == boot_id(),
            _ => false,
        }
    }
}

/// `kill(pid, 0)`: success or `EPERM` means a process exists. On Linux a zombie
/// (exited, not yet reaped) counts as gone.
pub(crate) fn is_alive(pid: u32) -> bool {
    let Ok(raw) = i32::try_from(pid) else {
        return false;
    };
    if raw <= 0 {
        return false;
    }
    match kill(Pid::from_raw(raw), None) {
        Ok(()) | Err(Errno::EPERM) => !is_zombie(pid),
        Err(_) => false,
    }
}

#[cfg(target_os = "linux")]
fn is_zombie(pid: u32) -> bool {
    fast_paths()
        && matches!(procfs::process::Process::new(pid as i32).and_then(|p| p.stat()), Ok(s) if s.state == 'Z' || s.state == 'X')
}

#[cfg(not(target_os = "linux"))]
fn is_zombie(_pid: u32) -> bool {
    false
}

/// A live process's start time in clock ticks since boot.
#[cfg(target_os = "linux")]
pub(crate) fn start_time(pid: u32) -> Option<u64> {
    if !fast_paths() {
        return None;
    }
    let stat = procfs::process::Process::new(pid as i32)
        .and_then(|p| p.stat())
        .ok()?;
    (stat.state != 'Z' && stat.state != 'X').then_some(stat.starttime)
}

/// The start time of a process that may be a zombie.
#[cfg(target_os = "linux")]
fn start_time_any(pid: u32) -> Option<u64> {
    if !fast_paths() {
        return None;
    }
    let stat = procfs::process::Process::new(pid as i32)
        .and_then(|p| p.stat())
        .ok()?;
    Some(stat.starttime)
}

#[cfg(not(target_os = "linux"))]
fn start_time_any(_pid: u32) -> Option<u64> {
    None
}

/// macOS: the start time from `proc_pidinfo(PROC_PIDTBSDINFO)` (libproc, no
/// `ps`), in microseconds since the epoch.
#[cfg(target_os = "macos")]
pub(crate) fn start_time(pid: u32) -> Option<u64> {
    // SAFETY: zeroed proc_bsdinfo is valid plain data; proc_pidinfo fills at
    // most `size` bytes of it.
    unsafe {
        let mut info: libc::proc_bsdinfo = std::mem::zeroed();
        let size = std::mem::size_of::<libc::proc_bsdinfo>() as libc::c_int;
        let n = libc::proc_pidinfo(
            pid as libc::c_int,
            libc::PROC_PIDTBSDINFO,
            0,
            (&mut info as *mut libc::proc_bsdinfo).cast(),
            size,
        );
        (n == size).then(|| info.pbi_start_tvsec * 1_000_000 + info.pbi_start_tvusec)
    }
}

/// Other Unix systems: no start time yet (see the README's platform table).
#[cfg(not(any(target_os = "linux", target_os = "macos")))]
pub(crate) fn start_time(_pid: u32) -> Option<u64> {
    None
}

#[cfg(target_os = "linux")]
pub(crate) fn boot_id() -> Option<String> {
    if !fast_paths() {
        return None;
    }
    procfs::sys::kernel::random::boot_id()
        .ok()
        .map(|s| s.trim().to_owned())
}

/// macOS: the boot time (`kern.boottime`) identifies the boot.
#[cfg(target_os = "macos")]
pub(crate) fn boot_id() -> Option<String> {
    // SAFETY: sysctlbyname writes at most `size` bytes into the timeval.
    unsafe {
        let mut tv: libc::timeval = std::mem::zeroed();
        let mut size = std::mem::size_of::<libc::timeval>();
        let r = libc::sysctlbyname(
            c"kern.boottime".as_ptr(),
            (&mut tv as *mut libc::timeval).cast(),
            &mut size,
            std::ptr::null_mut(),
            0,
        );
        (r == 0).then(|| format!("boottime:{}.{:06}", tv.tv_sec, tv.tv_usec))
    }
}

#[cfg(not(any(target_os = "linux", target_os = "macos")))]
pub(crate) fn boot_id() -> Option<String> {
    None
}

/// Whether any process (zombies included) is left in process group `pgid`.
pub(crate) fn group_exists(pgid: u32) -> bool {
    match killpg(Pid::from_raw(pgid as i32), None) {
        Ok(()) | Err(Errno::EPERM) => true,
        Err(_) => false,
    }
}

/// The live (non-zombie) members of process group `pgid`.
#[cfg(target_os = "linux")]
fn group_members(pgid: u32) -> Option<Vec<u32>> {
    if !fast_paths() {
        return None;
    }
    let all = procfs::process::all_processes().ok()?;
    Some(
        all.filter_map(|p| p.ok()?.stat().ok())
            .filter(|s| s.pgrp == pgid as i32 && s.state != 'Z' && s.state != 'X')
            .map(|s| s.pid as u32)
            .collect(),
    )
}

#[cfg(not(target_os = "linux"))]
fn group_members(_pgid: u32) -> Option<Vec<u32>> {
    None
}

/// Whether this process has any child left (running, or exited and not yet
/// reaped). For a supervisor that is a child subreaper this means: any
/// descendant at all, since every orphan of the daemon's tree comes to it.
pub(crate) fn has_children() -> bool {
    // SAFETY: waitid writes into the zeroed siginfo_t; WNOWAIT reaps nothing.
    unsafe {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        let r = libc::waitid(
            libc::P_ALL,
            0,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        );
        !(r == -1 && Errno::last() == Errno::ECHILD)
    }
}

/// The live descendants of `root` (children, their children, …), where the
/// platform lets us see the tree (Linux `/proc`); empty elsewhere. Walks the
/// kernel's per-thread child lists, so the cost grows with the tree, not
/// with the number of processes on the machine.
#[cfg(target_os = "linux")]
pub(crate) fn descendants(root: u32) -> Vec<u32> {
    if !fast_paths() {
        return Vec::new();
    }
    let mut out = Vec::new();
    let mut frontier = children(root);
    while let Some(pid) = frontier.pop() {
        if out.contains(&pid) {
            continue;
        }
        let zombie = procfs::process::Process::new(pid as i32)
            .and_then(|p| p.stat())
            .map(|s| s.state == 'Z' || s.state == 'X')
            .unwrap_or(true);
        if !zombie {
            out.push(pid);
            frontier.extend(children(pid));
        }
    }
    out
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn descendants(_root: u32) -> Vec<u32> {
    Vec::new()
}

/// The children of `parent`, zombies included (Linux `/proc`; empty
/// elsewhere): from `/proc/PID/task/TID/children` of each thread, else (a
/// kernel without that file) by a scan of every process.
#[cfg(target_os = "linux")]
pub(crate) fn children(parent: u32) -> Vec<u32> {
    if let Some(list) = children_from_task_lists(parent) {
        return list;
    }
    let Ok(all) = procfs::process::all_processes() else {
        return Vec::new();
    };
    all.filter_map(|p| p.ok()?.stat().ok())
        .filter(|s| s.ppid as u32 == parent)
        .map(|s| s.pid as u32)
        .collect()
}

/// `None`: the kernel has no `children` files (CONFIG_PROC_CHILDREN off).
#[cfg(target_os = "linux")]
fn children_from_task_lists(parent: u32) -> Option<Vec<u32>> {
    let tasks = std::fs::read_dir(format!("/proc/{parent}/task")).ok()?;
    let mut out = Vec::new();
    for task in tasks.flatten() {
        match std::fs::read_to_string(task.path().join("children")) {
            Ok(text) => out.extend(
                text.split_whitespace()
                    .filter_map(|p| p.parse::<u32>().ok()),
            ),
            // The thread is gone: its children moved to another one.
            Err(_) if !task.path().exists() => {}
            Err(_) => return None,
        }
    }
    Some(out)
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn children(_parent: u32) -> Vec<u32> {
    Vec::new()
}

/// How `pid`, a child of ours, ended, if it has: without reaping it.
pub(crate) fn peek_exit(pid: u32) -> Option<crate::backend::ExitInfo> {
    use crate::backend::ExitInfo;
    // SAFETY: waitid writes into the zeroed siginfo_t; WNOWAIT reaps nothing.
    unsafe {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        let r = libc::waitid(
            libc::P_PID,
            pid as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        );
        if r != 0 || info.si_pid() != pid as libc::pid_t {
            return None;
        }
        match info.si_code {
            libc::CLD_EXITED => Some(ExitInfo::Code(info.si_status())),
            _ => Some(ExitInfo::Signal(info.si_status())),
        }
    }
}

/// Whether this process has live descendants (see [`descendants`]).
pub(crate) fn has_descendants() -> bool {
    !descendants(std::process::id()).is_empty()
}

/// Waits until `pid` has exited, or `deadline`. Returns whether it exited.
pub(crate) async fn wait_exit(pid: u32, deadline: Instant) -> bool {
    loop {
        if !is_alive(pid) {
            return true;
        }
        #[cfg(target_os = "linux")]
        if fast_paths() {
            if let Some(exited) = pidfd::wait(pid, deadline).await {
                // Readable: it terminated (a zombie counts, as in is_alive);
                // not readable: the deadline passed.
                return exited;
            }
            // No pidfd (old kernel, or the PID vanished meanwhile): poll.
        }
        #[cfg(any(
            target_os = "macos",
            target_os = "ios",
            target_os = "freebsd",
            target_os = "dragonfly",
            target_os = "netbsd",
            target_os = "openbsd"
        ))]
        if let Some(exited) = kqueue::wait(pid, deadline).await {
            // The exit event came (a zombie counts, as with a pidfd), or
            // the deadline passed.
            return exited;
        }
        if Instant::now() >= deadline {
            return false;
        }
        portable_tick(deadline).await;
    }
}

/// Waits until process group `pgid` has no live member left, or `deadline`.
/// Returns whether it emptied.
pub(crate) async fn wait_group_gone(pgid: u32, deadline: Instant) -> bool {
    loop {
        match group_members(pgid) {
            Some(members) => {
                let Some(&first) = members.first() else {
                    return true;
                };
                // Wait for one member; then look again (members may have forked).
                if !wait_exit(first, deadline).await {
                    return false;
                }
            }
            None => {
                if !group_exists(pgid) {
                    return true;
                }
                if Instant::now() >= deadline {
                    return false;
                }
                portable_tick(deadline).await;
            }
        }
    }
}

/// The portable path's wait between two looks (10 ms, never past the
/// deadline). Used only where no exit event is available.
async fn portable_tick(deadline: Instant) {
    tokio::time::sleep_until(deadline.min(Instant::now() + Duration::from_millis(10))).await;
}

#[cfg(target_os = "linux")]
mod pidfd {
    //! pidfd_open(2): a file descriptor that becomes readable when the process
    //! exits (Linux 5.3+). `None` from [`wait`] means "not available, use the
    //! portable path".

    use std::os::fd::{FromRawFd, OwnedFd};

    use tokio::io::unix::AsyncFd;
    use tokio::time::Instant;

    fn open(pid: u32) -> Option<OwnedFd> {
        // SAFETY: plain syscall with integer arguments; on success it returns a
        // new file descriptor that we own.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
        if fd < 0 {
            return None;
        }
        // SAFETY: fd is a fresh descriptor returned by the kernel, owned by no one else.
        Some(unsafe { OwnedFd::from_raw_fd(fd as i32) })
    }

    pub(super) async fn wait(pid: u32, deadline: Instant) -> Option<bool> {
        let fd = open(pid)?;
        // SAFETY: `fd` is an OwnedFd, valid and open until the AsyncFd drops it.
        let afd =
            unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }.ok()?;
        match tokio::time::timeout_at(deadline, afd.readable()).await {
            Ok(Ok(_)) => Some(true),
            Ok(Err(_)) => None,
            Err(_) => Some(false),
        }
    }
}

#[cfg(any(
    target_os = "macos",
    target_os = "ios",
    target_os = "freebsd",
    target_os = "dragonfly",
    target_os = "netbsd",
    target_os = "openbsd"
))]
mod kqueue {
    //! kqueue(2) `EVFILT_PROC` with `NOTE_EXIT` (macOS and the BSDs): an
    //! event when the process exits. The kqueue's own descriptor is readable
    //! while an event is pending, so tokio waits on it like on a socket, up
    //! to the deadline; every `kevent` call here has a zero timeout and never
    //! blocks. `None` from [`wait`] means "not available, use the portable
    //! path": kqueue refused the PID (gone, a zombie, or not ours to watch),
    //! or the descriptor could not be registered.

    use std::os::fd::{AsFd, AsRawFd, RawFd};
    use std::time::Duration;

    use nix::sys::event::{EvFlags, EventFilter, FilterFlag, KEvent, Kqueue};
    use tokio::io::unix::AsyncFd;
    use tokio::time::Instant;

    /// How often the event is also looked for without a wake-up. A safety
    /// net: a wake-up that never came costs this, never the whole deadline.
    const RECHECK: Duration = Duration::from_millis(250);

    /// A zero timeout: `kevent` returns at once.
    const NOW: libc::timespec = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };

    /// The kqueue, as a descriptor tokio can watch.
    struct Queue(Kqueue);

    impl AsRawFd for Queue {
        fn as_raw_fd(&self) -> RawFd {
            self.0.as_fd().as_raw_fd()
        }
    }

    fn proc_exit(pid: u32, flags: EvFlags) -> KEvent {
        KEvent::new(
            pid as usize,
            EventFilter::EVFILT_PROC,
            flags,
            FilterFlag::NOTE_EXIT,
            0,
            0,
        )
    }

    /// A kqueue that gets one event when `pid` exits.
    fn watch(pid: u32) -> Option<Kqueue> {
        let kq = Kqueue::new().ok()?;
        // No room for events: a refused PID (ESRCH, EPERM) is the call's error.
        kq.kevent(
            &[proc_exit(pid, EvFlags::EV_ADD | EvFlags::EV_ONESHOT)],
            &mut [],
            Some(NOW),
        )
        .ok()?;
        Some(kq)
    }

    /// Whether the exit event is pending. Only the identity is read: the
    /// event's flags may carry bits nix has no name for.
    fn exited(kq: &Kqueue, pid: u32) -> Option<bool> {
        let mut events = [proc_exit(pid, EvFlags::empty())];
        match kq.kevent(&[], &mut events, Some(NOW)) {
            Ok(0) | Err(nix::errno::Errno::EINTR) => Some(false),
            Ok(_) => Some(events[0].ident() == pid as usize),
            Err(_) => None,
        }
    }

    /// Waits for `pid` to exit, at most until `deadline`: `Some(true)` it
    /// exited, `Some(false)` the deadline passed, `None` see the module.
    pub(super) async fn wait(pid: u32, deadline: Instant) -> Option<bool> {
        let queue = Queue(watch(pid)?);
        // SAFETY: `Queue` owns the kqueue descriptor, open until the AsyncFd
        // drops it.
        let queue =
            unsafe { AsyncFd::register_with_interest(queue, tokio::io::Interest::READABLE) }
                .ok()?;
        let kq = &queue.get_ref().0;
        loop {
            if exited(kq, pid)? {
                return Some(true);
            }
            let now = Instant::now();
            if now >= deadline {
                return Some(false);
            }
            let until = deadline.min(now + RECHECK);
            if let Ok(ready) = tokio::time::timeout_at(until, queue.readable()).await {
                let mut guard = ready.ok()?;
                if exited(kq, pid)? {
                    return Some(true);
                }
                // Readable with nothing pending: wait for the next event
                // (tokio keeps a readiness that came after this guard).
                guard.clear_ready();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_alive_and_identifiable() {
        let me = std::process::id();
        let r = ProcRef::of(me).unwrap();
        assert!(r.is_same_live_process());
        let mut other = r.clone();
        other.start_time = other.start_time.map(|t| t + 1);
        if cfg!(target_os = "linux") {
            assert!(!other.is_same_live_process());
        }
    }

    #[tokio::test]
    async fn wait_exit_wakes_on_exit() {
        let mut child = std::process::Command::new("/bin/sleep")
            .arg("0.2")
            .spawn()
            .unwrap();
        let pid = child.id();
        let reaper = std::thread::spawn(move || child.wait());
        let t = std::time::Instant::now();
        assert!(wait_exit(pid, Instant::now() + Duration::from_secs(10)).await);
        assert!(t.elapsed() < Duration::from_secs(5));
        reaper.join().unwrap().unwrap();
    }

    /// The kqueue path on its own: it wakes on the exit, gives up at the
    /// deadline, and leaves a PID it cannot watch to the portable path.
    #[cfg(any(
        target_os = "macos",
        target_os = "ios",
        target_os = "freebsd",
        target_os = "dragonfly",
        target_os = "netbsd",
        target_os = "openbsd"
    ))]
    #[tokio::test]
    async fn kqueue_wakes_on_exit_and_is_bounded() {
        let mut child = std::process::Command::new("/bin/sleep")
            .arg("0.2")
            .spawn()
            .unwrap();
        let pid = child.id();
        let reaper = std::thread::spawn(move || child.wait());
        let t = std::time::Instant::now();
        let exited = kqueue::wait(pid, Instant::now() + Duration::from_secs(10)).await;
        assert_eq!(exited, Some(true));
        assert!(t.elapsed() < Duration::from_secs(5));
        reaper.join().unwrap().unwrap();

        let mut child = std::process::Command::new("/bin/sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let t = std::time::Instant::now();
        let exited = kqueue::wait(child.id(), Instant::now() + Duration::from_millis(300)).await;
        assert_eq!(exited, Some(false));
        assert!(t.elapsed() < Duration::from_secs(5));
        child.kill().unwrap();
        child.wait().unwrap();
        // Reaped: nothing to watch.
        assert_eq!(
            kqueue::wait(child.id(), Instant::now() + Duration::from_secs(1)).await,
            None
        );
    }
}
