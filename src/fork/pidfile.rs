//! The files the fork backend keeps beside each other:
//!
//! - `NAME.pid`: the daemon's PID and a newline (the seed's format), present
//!   while the daemon runs;
//! - `NAME.pid.identity`: a JSON [`Record`] saying who that PID is (start time,
//!   boot id), who supervises it, and how the last run ended;
//! - `NAME.pid.lock`: an `flock` that serialises start/stop/cleanup, so twenty
//!   concurrent starts give one daemon.
//!
//! Writes are atomic (temporary file in the same directory, then rename).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use super::proc::ProcRef;
use crate::backend::ExitInfo;
use crate::error::{DaemonError, Result};

/// The three paths derived from one PID file path.
#[derive(Debug, Clone)]
pub(crate) struct Paths {
    pub pid_file: PathBuf,
    pub identity: PathBuf,
    pub lock: PathBuf,
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
    /// The private directory of the notify socket, for cleanup after a
    /// supervisor that was SIGKILLed.
    #[serde(default)]
    pub notify_dir: Option<PathBuf>,
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
            notify_dir: None,
        }
    }

    /// The process group to signal: the recorded one, else the daemon's PID.
    pub fn pgid(&self) -> u32 {
        self.pgid.unwrap_or(self.daemon.pid)
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

/// Reads the PID file: `Ok(None)` when it does not exist, `PidFileError`
/// (`InvalidData`) when its content is not a positive PID.
pub(crate) fn read_pid(path: &Path) -> Result<Option<u32>> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(DaemonError::pid_file(path, e)),
    };
    match text.trim().parse::<u32>() {
        Ok(pid) if pid > 0 && pid <= i32::MAX as u32 => Ok(Some(pid)),
        _ => Err(DaemonError::pid_file(
            path,
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("content {:?} is not a PID", truncate(&text, 40)),
            ),
        )),
    }
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Writes the PID file atomically.
pub(crate) fn write_pid(path: &Path, pid: u32) -> Result<()> {
    write_atomic(path, format!("{pid}\n").as_bytes())
}

/// Reads the identity record; `Ok(None)` when absent. A record that does not
/// parse is reported, not ignored: it may be another program's file.
pub(crate) fn read_record(path: &Path) -> Result<Option<Record>> {
    let text = match fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(DaemonError::pid_file(path, e)),
    };
    serde_json::from_slice(&text)
        .map(Some)
        .map_err(|e| DaemonError::pid_file(path, io::Error::new(io::ErrorKind::InvalidData, e)))
}

/// Writes the identity record atomically.
pub(crate) fn write_record(path: &Path, record: &Record) -> Result<()> {
    let mut json = serde_json::to_vec(record).expect("a Record always serializes");
    json.push(b'\n');
    write_atomic(path, &json)
}

/// Removes a file; a missing file is fine.
pub(crate) fn remove(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(DaemonError::pid_file(path, e)),
    }
}

/// Temporary file in the same directory, written, synced, renamed over `path`.
/// Readers see the old content or the new, never a part.
pub(crate) fn write_atomic(path: &Path, content: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("/"));
    let err = |e: io::Error| DaemonError::pid_file(path, e);
    let mut tmp = tempfile::Builder::new()
        .prefix(".daemon-lifecycle-")
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))
        .tempfile_in(dir)
        .map_err(err)?;
    tmp.write_all(content).map_err(err)?;
    tmp.as_file().sync_all().map_err(err)?;
    tmp.persist(path).map_err(|e| err(e.error))?;
    Ok(())
}

/// An exclusive `flock` on `NAME.pid.lock`, released on drop.
#[derive(Debug)]
pub(crate) struct Lock {
    _flock: Flock<File>,
    path: PathBuf,
}

impl Lock {
    /// Takes the lock, waiting for other holders at most `timeout`.
    ///
    /// The lock file may be unlinked by a holder that finished a stop (so a
    /// stopped daemon leaves nothing behind); a waiter that then wins the lock
    /// on the unlinked inode notices (its inode no longer matches the path) and
    /// tries again on the new file.
    pub async fn acquire(path: &Path, name: &str, timeout: Duration) -> Result<Lock> {
        let owned = path.to_owned();
        let task = tokio::task::spawn_blocking(move || Lock::acquire_blocking(&owned));
        match tokio::time::timeout(timeout, task).await {
            Ok(joined) => joined.expect("lock task panicked"),
            Err(_) => Err(DaemonError::Timeout {
                name: name.to_owned(),
                operation: "waiting for the lock held by another operation",
                after: timeout,
            }),
        }
    }

    fn acquire_blocking(path: &Path) -> Result<Lock> {
        loop {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o644)
                .custom_flags(libc::O_CLOEXEC)
                .open(path)
                .map_err(|e| DaemonError::pid_file(path, e))?;
            let flock = Flock::lock(file, FlockArg::LockExclusive)
                .map_err(|(_, errno)| DaemonError::pid_file(path, io::Error::from(errno)))?;
            let held = flock
                .metadata()
                .map_err(|e| DaemonError::pid_file(path, e))?;
            match fs::metadata(path) {
                Ok(now) if now.ino() == held.ino() && now.dev() == held.dev() => {
                    return Ok(Lock {
                        _flock: flock,
                        path: path.to_owned(),
                    })
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
/// SIGKILL writes nothing when its daemon then dies.
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
        if let Some(fd) = &self.inotify {
            let until = deadline.min(tokio::time::Instant::now() + WATCH_RECHECK);
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
        assert!(matches!(third, Err(DaemonError::Timeout { .. })));
        drop(second);
    }
}
