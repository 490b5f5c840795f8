//! The files the fork backend keeps beside each other:
//!
//! - `NAME.pid`: the daemon's PID and a newline (the seed's format), present
//!   while the daemon runs;
//! - `NAME.pid.identity`: a JSON [`Record`] saying who that PID is (start time,
//!   boot id), who supervises it, and how the last run ended;
//! - `NAME.pid.lock`: an `flock` that serialises start/stop/cleanup, so twenty
//!   concurrent starts give one daemon.
//!
//! - `NAME.pid.ctl`: the live supervisor's control socket (see
//!   [`super::control`]).
//!
//! Writes are atomic (temporary file created with `O_EXCL` in the same
//! directory, then rename). Trust: a file is read, replaced or removed only
//! when it is ours — a regular file (a socket for `.ctl`), not a symbolic link
//! (every open uses `O_NOFOLLOW`), owned by the caller or by root. Anything
//! else is refused with [`DaemonError::UntrustedFile`], whose message never
//! quotes the file's bytes. No function here removes a directory.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use super::proc::ProcRef;
use crate::backend::ExitInfo;
use crate::error::{DaemonError, Result};
pub(crate) use crate::fsutil::{check_ours, trusted_uid, untrusted};

/// The paths derived from one PID file path. Every path we create or
/// remove comes from here (that is, from the config), never from a record.
#[derive(Debug, Clone)]
pub(crate) struct Paths {
    pub pid_file: PathBuf,
    pub identity: PathBuf,
    pub lock: PathBuf,
    /// The supervisor's control socket.
    pub control: PathBuf,
    /// The notify socket's private directory.
    pub notify_dir: PathBuf,
}

impl Paths {
    pub fn new(pid_file: PathBuf) -> Self {
        let with = |suffix: &str| {
            let mut s = pid_file.clone().into_os_string();
            s.push(suffix);
            PathBuf::from(s)
        };
        Paths {
            identity: with(".identity"),
            lock: with(".lock"),
            control: with(".ctl"),
            notify_dir: with(".notify"),
            pid_file,
        }
    }
}

/// What the identity record holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Record {
    /// The daemon process (also its process group: it leads its own session).
    pub daemon: ProcRef,
    /// The supervising process, if any.
    pub supervisor: Option<ProcRef>,
    /// When the daemon was started, milliseconds since the Unix epoch.
    pub started_at_ms: u64,
    /// How the daemon's last run ended; `None` before the first exit. After
    /// a restart it keeps the previous run's end while the new one runs.
    pub last_exit: Option<ExitInfo>,
    /// The daemon's process group (the PID of the process the supervisor
    /// spawned, which leads its own session). Differs from `daemon.pid` when
    /// the daemon named another main PID with `MAINPID=`.
    #[serde(default)]
    pub pgid: Option<u32>,
    /// The last `STATUS=` text the daemon sent over `NOTIFY_SOCKET`.
    #[serde(default)]
    pub status_text: Option<String>,
    /// Whether the daemon sent `READY=1` (notify readiness) in this run.
    #[serde(default)]
    pub ready: bool,
    /// How often the supervisor restarted the daemon.
    #[serde(default)]
    pub restarts: u32,
    /// Set when the supervisor gave up (e.g. `start limit hit`): the state
    /// is `Failed` with this reason.
    #[serde(default)]
    pub failure: Option<String>,
    /// A restart is scheduled (the daemon is down, its supervisor waits
    /// out the back-off delay).
    #[serde(default)]
    pub restart_pending: bool,
    /// The PID file this record was written for: a copy of it beside another
    /// PID file is refused.
    #[serde(default)]
    pub pid_file: Option<PathBuf>,
    /// The process group's leader (the process the supervisor spawned), so
    /// the group is signalled only while its ID still names our group.
    #[serde(default)]
    pub leader: Option<ProcRef>,
    /// When the last `WATCHDOG=1` arrived (ms since the Unix epoch); kept
    /// in the live supervisor's copy (pings are not written to disk).
    #[serde(default)]
    pub last_watchdog_ping_ms: Option<u64>,
    /// Why the supervisor ended the last run itself (`watchdog timeout`,
    /// `liveness probe failed: …`): said instead of its exit.
    #[serde(default)]
    pub exit_reason: Option<String>,
}

impl Record {
    /// A record for a daemon that just started.
    pub fn started(daemon: ProcRef, supervisor: Option<ProcRef>) -> Self {
        Record {
            daemon,
            supervisor,
            started_at_ms: now_ms(),
            last_exit: None,
            pgid: None,
            status_text: None,
            ready: false,
            restarts: 0,
            failure: None,
            restart_pending: false,
            pid_file: None,
            leader: None,
            last_watchdog_ping_ms: None,
            exit_reason: None,
        }
    }

    /// The process group to signal: the recorded one, else the daemon's PID.
    pub fn pgid(&self) -> u32 {
        self.pgid.unwrap_or(self.daemon.pid)
    }

    /// Whether the process group may be signalled: its leader is still the
    /// process we spawned (alive, or a zombie its supervisor keeps so that
    /// the group's ID cannot be reused). Without a recorded leader: the
    /// daemon itself, when it leads the group.
    pub fn group_is_ours(&self) -> bool {
        match &self.leader {
            Some(leader) => self.pgid() == leader.pid && leader.is_same_process_or_zombie(),
            None => self.pgid() == self.daemon.pid && self.daemon.is_same_live_process(),
        }
    }

    /// Whether the recorded supervisor is still alive (same process).
    pub fn supervisor_alive(&self) -> bool {
        self.supervisor
            .as_ref()
            .is_some_and(|s| s.is_same_live_process())
    }
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Opens one of our files with `options` plus `O_NOFOLLOW` (a symbolic link
/// is refused, never followed), `O_NONBLOCK` (a FIFO planted in its place does
/// not block us) and `O_CLOEXEC`, then checks what was opened with `fstat`
/// ([`check_ours`]). `Ok(None)` when it does not exist.
fn open_ours(path: &Path, options: &mut OpenOptions) -> Result<Option<(File, fs::Metadata)>> {
    let file = match crate::fsutil::open_nofollow(path, options) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            let owner = fs::symlink_metadata(path).ok().map(|m| m.uid());
            return Err(untrusted(path, owner, "is a symbolic link"));
        }
        Err(e) => return Err(DaemonError::pid_file(path, e)),
    };
    let meta = file
        .metadata()
        .map_err(|e| DaemonError::pid_file(path, e))?;
    check_ours(path, &meta, false)?;
    Ok(Some((file, meta)))
}

/// Opens one of our files for reading: `O_NOFOLLOW` (a symbolic link is
/// refused, never followed), `O_NONBLOCK` (a FIFO planted in its place does
/// not block us), then checked with `fstat`. At most `max` bytes are read.
/// `Ok(None)` when it does not exist.
pub(crate) fn read_ours(path: &Path, max: u64) -> Result<Option<Vec<u8>>> {
    use std::io::Read;
    let Some((file, meta)) = open_ours(path, OpenOptions::new().read(true))? else {
        return Ok(None);
    };
    // Sized from fstat: one read and the one that sees the end, where an
    // empty buffer grows through six (these files are read at every look).
    let mut bytes = Vec::with_capacity(meta.len().min(max) as usize + 1);
    file.take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| DaemonError::pid_file(path, e))?;
    if bytes.len() as u64 > max {
        return Err(not_ours_content(
            path,
            "is too large to be one of our files",
        ));
    }
    Ok(Some(bytes))
}

/// Content that is not what we write. The bytes are never quoted: the file
/// may be a secret someone linked or copied there.
fn not_ours_content(path: &Path, what: &str) -> DaemonError {
    DaemonError::pid_file(
        path,
        io::Error::new(io::ErrorKind::InvalidData, what.to_owned()),
    )
}

/// Reads the PID file: `Ok(None)` when it does not exist, `PidFileError`
/// (`InvalidData`, "not a PID file") when its content is not a positive PID,
/// `UntrustedFile` when it is not ours.
pub(crate) fn read_pid(path: &Path) -> Result<Option<u32>> {
    let Some(bytes) = read_ours(path, 64)? else {
        return Ok(None);
    };
    match std::str::from_utf8(&bytes)
        .ok()
        .and_then(|t| t.trim().parse::<u32>().ok())
    {
        Some(pid) if pid > 0 && pid <= i32::MAX as u32 => Ok(Some(pid)),
        _ => Err(not_ours_content(path, "not a PID file")),
    }
}

/// Writes the PID file atomically.
pub(crate) fn write_pid(path: &Path, pid: u32) -> Result<()> {
    crate::fsutil::write_atomic_runtime(path, format!("{pid}\n").as_bytes())
}

/// Reads the identity record; `Ok(None)` when absent. A record that does not
/// parse is reported, not ignored: it may be another program's file.
pub(crate) fn read_record(path: &Path) -> Result<Option<Record>> {
    let Some(bytes) = read_ours(path, 64 * 1024)? else {
        return Ok(None);
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|_| not_ours_content(path, "not an identity record of daemon-lifecycle"))
}

/// Writes the identity record atomically.
pub(crate) fn write_record(path: &Path, record: &Record) -> Result<()> {
    let mut json = serde_json::to_vec(record).expect("a Record always serializes");
    json.push(b'\n');
    crate::fsutil::write_atomic_runtime(path, &json)
}

/// Removes one of our files; a missing file is fine. A file that is not ours
/// (a symbolic link, another kind of file, another owner) is refused and left.
pub(crate) fn remove(path: &Path) -> Result<()> {
    remove_checked(path, false)
}

/// [`remove`] for our control socket.
pub(crate) fn remove_socket(path: &Path) -> Result<()> {
    remove_checked(path, true)
}

fn remove_checked(path: &Path, socket: bool) -> Result<()> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(DaemonError::pid_file(path, e)),
    };
    check_ours(path, &meta, socket)?;
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(DaemonError::pid_file(path, e)),
    }
}

/// Whether something (anything, a dangling link included) is at `path`.
pub(crate) fn present(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok()
}

/// An exclusive `flock` on `NAME.pid.lock`, released on drop.
#[derive(Debug)]
pub(crate) struct Lock {
    _flock: Flock<File>,
    path: PathBuf,
}

/// How often a waiter tries the lock again (`flock` has no timeout; a
/// blocking `flock` in a thread would keep the process alive past ours).
const LOCK_RETRY: Duration = Duration::from_millis(10);

impl Lock {
    /// Takes the lock, waiting for other holders at most `timeout`; then
    /// `LockTimeout`, naming the holder's PID where the OS says (Linux
    /// `/proc/locks`).
    ///
    /// The lock file is ours or refused: opened with `O_NOFOLLOW`, a regular
    /// file owned by the caller or root, mode 0600 (so no other user can
    /// open it to hold it).
    ///
    /// The lock file may be unlinked by a holder that finished a stop (so a
    /// stopped daemon leaves nothing behind); a waiter that then wins the lock
    /// on the unlinked inode notices (its inode no longer matches the path) and
    /// tries again on the new file.
    pub async fn acquire(path: &Path, name: &str, timeout: Duration) -> Result<Lock> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut wait = LOCK_RETRY;
        loop {
            if let Some(lock) = Lock::try_acquire(path)? {
                return Ok(lock);
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Err(DaemonError::LockTimeout {
                    name: name.to_owned(),
                    path: path.to_owned(),
                    holder: lock_holder(path),
                    after: timeout,
                });
            }
            tokio::time::sleep_until(deadline.min(now + wait)).await;
            wait = (wait * 2).min(Duration::from_millis(50));
        }
    }

    /// One non-blocking try: `Ok(None)` while another process holds it.
    pub fn try_acquire(path: &Path) -> Result<Option<Lock>> {
        use std::os::fd::AsFd;
        loop {
            let (file, meta) = open_ours(
                path,
                OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .mode(0o600),
            )?
            .ok_or_else(|| {
                // O_CREAT gives ENOENT only when the directory is missing.
                DaemonError::pid_file(path, io::Error::from(io::ErrorKind::NotFound))
            })?;
            if meta.mode() & 0o077 != 0 {
                // A lock file of an older version (0644): close it to others.
                nix::sys::stat::fchmod(
                    file.as_fd(),
                    nix::sys::stat::Mode::from_bits_truncate(0o600),
                )
                .map_err(|e| DaemonError::pid_file(path, e.into()))?;
            }
            let flock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(f) => f,
                Err((_, nix::errno::Errno::EWOULDBLOCK)) => return Ok(None),
                Err((_, errno)) => return Err(DaemonError::pid_file(path, io::Error::from(errno))),
            };
            let held = flock
                .metadata()
                .map_err(|e| DaemonError::pid_file(path, e))?;
            match fs::symlink_metadata(path) {
                Ok(now) if now.ino() == held.ino() && now.dev() == held.dev() => {
                    return Ok(Some(Lock {
                        _flock: flock,
                        path: path.to_owned(),
                    }))
                }
                // Unlinked or replaced while we waited: lock the current file.
                _ => continue,
            }
        }
    }

    /// Removes the lock file while still holding the lock (see [`Lock::acquire`]).
    pub fn remove_file(&self) -> Result<()> {
        remove(&self.path)
    }
}

/// The PID holding the `flock` on `path`, where the OS tells (Linux:
/// `/proc/locks` lists each lock with its holder and the file's inode).
pub(crate) fn lock_holder(path: &Path) -> Option<u32> {
    #[cfg(target_os = "linux")]
    {
        let meta = fs::symlink_metadata(path).ok()?;
        let dev = meta.dev();
        // /proc/locks prints the device as MAJOR:MINOR in hex, then the inode.
        let want = format!(
            "{:02x}:{:02x}:{}",
            nix::sys::stat::major(dev),
            nix::sys::stat::minor(dev),
            meta.ino()
        );
        let text = fs::read_to_string("/proc/locks").ok()?;
        text.lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|f| f.get(1) == Some(&"FLOCK") && f.get(5) == Some(&want.as_str()))
            .and_then(|f| f.get(4)?.parse().ok())
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = path;
        None
    }
}

/// Wakes when the record beside a PID file is rewritten (the supervisor
/// replaces it atomically on every change: ready, status, exit, restart), so
/// a waiter needs no sleep loop. Linux: inotify on the directory; elsewhere,
/// and if inotify is unavailable, a short poll.
pub(crate) struct RecordWatch {
    #[cfg(target_os = "linux")]
    inotify: Option<tokio::io::unix::AsyncFd<InotifyFd>>,
}

#[cfg(target_os = "linux")]
struct InotifyFd(nix::sys::inotify::Inotify);

#[cfg(target_os = "linux")]
impl std::os::fd::AsRawFd for InotifyFd {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsFd;
        self.0.as_fd().as_raw_fd()
    }
}

/// The poll interval where no event is available.
const WATCH_POLL: Duration = Duration::from_millis(20);
/// Even with events, look again this often: a supervisor killed with
/// SIGKILL writes nothing when its daemon then dies. (Linux only: the
/// portable path polls every `WATCH_POLL` anyway.)
#[cfg(target_os = "linux")]
const WATCH_RECHECK: Duration = Duration::from_secs(1);

impl RecordWatch {
    /// Starts watching; create it before the first look, so no change
    /// between that look and the wait is missed.
    pub fn new(record: &Path) -> RecordWatch {
        #[cfg(target_os = "linux")]
        {
            use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
            let dir = record.parent().unwrap_or(Path::new("/"));
            let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
                .and_then(|i| {
                    i.add_watch(
                        dir,
                        AddWatchFlags::IN_MOVED_TO
                            | AddWatchFlags::IN_CLOSE_WRITE
                            | AddWatchFlags::IN_DELETE,
                    )?;
                    Ok(i)
                })
                .ok()
                .and_then(|i| {
                    // SAFETY: the Inotify owns its fd for the AsyncFd's lifetime.
                    unsafe {
                        tokio::io::unix::AsyncFd::register_with_interest(
                            InotifyFd(i),
                            tokio::io::Interest::READABLE,
                        )
                    }
                    .ok()
                });
            RecordWatch { inotify }
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = record;
            RecordWatch {}
        }
    }

    /// Returns after a change in the directory (or a recheck interval), or
    /// at `deadline`.
    pub async fn changed(&self, deadline: tokio::time::Instant) {
        #[cfg(target_os = "linux")]
        return self.changed_or_recheck(deadline, WATCH_RECHECK).await;
        #[cfg(not(target_os = "linux"))]
        tokio::time::sleep_until(deadline.min(tokio::time::Instant::now() + WATCH_POLL)).await;
    }

    /// [`Self::changed`] with the recheck interval given.
    #[cfg(target_os = "linux")]
    async fn changed_or_recheck(&self, deadline: tokio::time::Instant, recheck: Duration) {
        if let Some(fd) = &self.inotify {
            let until = deadline.min(tokio::time::Instant::now() + recheck);
            if let Ok(Ok(mut guard)) = tokio::time::timeout_at(until, fd.readable()).await {
                // Drain the queue; which file changed does not matter.
                let _ = fd.get_ref().0.read_events();
                guard.clear_ready();
            }
            return;
        }
        tokio::time::sleep_until(deadline.min(tokio::time::Instant::now() + WATCH_POLL)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `wait_ready` relies on to return at READY=1, not at a timer:
    /// with neither a recheck nor a deadline for an hour, only the
    /// record's write can end this wait (the 60 s bound only keeps a broken
    /// watch from hanging the test).
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn a_record_write_wakes_the_watch_not_its_recheck() {
        let dir = tempfile::tempdir().unwrap();
        let record = dir.path().join("d.pid.identity");
        let watch = RecordWatch::new(&record);
        assert!(watch.inotify.is_some());
        let hour = Duration::from_secs(3600);
        let writer = {
            let record = record.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                crate::fsutil::write_atomic(&record, b"{}").unwrap();
            })
        };
        tokio::time::timeout(
            Duration::from_secs(60),
            watch.changed_or_recheck(tokio::time::Instant::now() + hour, hour),
        )
        .await
        .expect("the write woke the watch");
        writer.join().unwrap();
    }

    #[test]
    fn pid_file_format_is_the_seeds() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.pid");
        write_pid(&p, 12345).unwrap();
        assert_eq!(fs::read_to_string(&p).unwrap(), "12345\n");
        assert_eq!(read_pid(&p).unwrap(), Some(12345));
        fs::write(&p, "  777 \n").unwrap();
        assert_eq!(read_pid(&p).unwrap(), Some(777));
        assert_eq!(read_pid(&dir.path().join("none")).unwrap(), None);
        for bad in ["", "abc", "0", "-5", "99999999999"] {
            fs::write(&p, bad).unwrap();
            assert!(
                matches!(read_pid(&p), Err(DaemonError::PidFileError { .. })),
                "{bad:?}"
            );
        }
        // Only the PID file itself is in the directory: no temp files left.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[tokio::test]
    async fn lock_survives_unlink_by_previous_holder() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.pid.lock");
        let first = Lock::acquire(&p, "d", Duration::from_secs(5))
            .await
            .unwrap();
        let waiter = {
            let p = p.clone();
            tokio::spawn(async move { Lock::acquire(&p, "d", Duration::from_secs(5)).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        first.remove_file().unwrap();
        drop(first);
        let second = waiter.await.unwrap().unwrap();
        // The winner holds the file that is now at the path.
        assert!(p.exists());
        // And a third contender cannot get it while the second holds it.
        let third = Lock::acquire(&p, "d", Duration::from_millis(100)).await;
        match third {
            Err(DaemonError::LockTimeout { holder, path, .. }) => {
                assert_eq!(path, p);
                if cfg!(target_os = "linux") {
                    // /proc/locks names the holder: this very process.
                    assert_eq!(holder, Some(std::process::id()));
                }
            }
            other => panic!("{other:?}"),
        }
        // The lock file is closed to other users.
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        drop(second);
    }
}
