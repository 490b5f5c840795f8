//! The supervisor's control socket, `NAME.pid.ctl`: how a caller reaches a
//! live supervisor through something a wrong PID in a file cannot fake.
//!
//! The supervisor binds a Unix stream socket (mode 0600) beside the PID file
//! for its whole life. A caller connects and checks the peer's credentials
//! (kernel-stamped: the socket must be served by a process of the caller's
//! own UID or root), writes one JSON [`ControlRequest`] line and reads one
//! JSON [`ControlReply`] line. The supervisor's answer is the truth about the
//! daemon (its PID, its process group, its phase), whatever the PID file or
//! the identity record on disk say: those can be edited, deleted or made
//! unwritable; the socket cannot be faked by another user.
//!
//! For `stop` and `kill` the connection then stays open until the supervisor
//! exits, so the caller wakes on the exit itself (end of file), on every
//! platform.
//!
//! The protocol carries a version ([`PROTOCOL_VERSION`]); a reply of another
//! version is refused with a clear error rather than misread.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::time::Instant;

use super::pidfile::{self, Record};
use crate::error::{DaemonError, Result};

/// Version of the control protocol spoken here.
pub(crate) const PROTOCOL_VERSION: u32 = 1;

/// How long a caller waits for a supervisor's answer to a query. A live
/// supervisor answers in microseconds; a stopped (SIGSTOP) one never does.
pub(crate) const QUERY_TIMEOUT: Duration = Duration::from_secs(3);

/// Longest `sun_path` used directly (macOS allows 104 bytes with the NUL).
const MAX_SOCKET_PATH: usize = 103;

/// What a caller asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Op {
    /// Report the daemon's state.
    Status,
    /// SIGTERM to the daemon's tree, SIGKILL after the shutdown timeout, exit.
    Stop,
    /// SIGKILL to the daemon's tree at once, exit.
    Kill,
    /// The caller's readiness probe succeeded (tcp/http/command readiness).
    Ready,
    /// Reload the daemon (its `reload` signal or command; for a notify
    /// daemon, until `READY=1`): the reply, then one [`ReloadOutcome`] line
    /// once it is over.
    Reload,
}

impl Op {
    /// The name on the wire: `status`, `stop`, `kill`, `ready`.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Op::Status => "status",
            Op::Stop => "stop",
            Op::Kill => "kill",
            Op::Ready => "ready",
            Op::Reload => "reload",
        }
    }
}

/// One request line.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ControlRequest {
    pub v: u32,
    pub op: Op,
}

/// What the supervisor is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Phase {
    /// The daemon runs and is not yet ready (no `READY=1`, or the caller's
    /// probe has not confirmed it).
    Starting,
    /// The daemon runs.
    Running,
    /// A stop was asked for; the daemon's processes are being terminated.
    Stopping,
    /// The daemon ended; what is left of its tree is being terminated.
    Exited,
    /// Waiting out the restart delay.
    Backoff,
}

/// One reply line.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ControlReply {
    pub v: u32,
    /// The supervisor's own PID.
    pub supervisor: u32,
    /// The PID file it serves (a sanity check: it must be the caller's).
    pub pid_file: PathBuf,
    pub phase: Phase,
    /// The supervisor's own copy of the record (what it last wrote, or would
    /// have written where the disk refused).
    pub record: Record,
}

/// The line that ends a `reload`: `error` is `None` when it went well.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ReloadOutcome {
    pub v: u32,
    pub error: Option<String>,
    /// The reload ran out of time (no `READY=1`, or a command that hangs).
    #[serde(default)]
    pub timed_out: bool,
}

/// A connection to a live supervisor.
pub(crate) struct Client {
    stream: BufReader<UnixStream>,
    /// Who errors name: the socket's path (the daemon's name is not known
    /// here).
    who: String,
    /// The peer's PID as the kernel reports it (where it does).
    pub peer_pid: Option<u32>,
}

/// An address for `path` that fits in `sun_path`: the path itself, or on
/// Linux `/proc/self/fd/N/NAME` through a descriptor of its directory, which
/// is returned too and must stay open while the address is used.
fn address(path: &Path) -> io::Result<(PathBuf, Option<std::fs::File>)> {
    if path.as_os_str().len() <= MAX_SOCKET_PATH {
        return Ok((path.to_owned(), None));
    }
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let dir = path.parent().unwrap_or(Path::new("/"));
        let name = path.file_name().unwrap_or_default();
        // The directory itself, not a link planted in its place.
        let dirfd = std::os::unix::fs::OpenOptionsExt::custom_flags(
            std::fs::OpenOptions::new().read(true),
            libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
        .open(dir)?;
        let short = PathBuf::from(format!("/proc/self/fd/{}", dirfd.as_raw_fd())).join(name);
        if short.as_os_str().len() <= MAX_SOCKET_PATH {
            return Ok((short, Some(dirfd)));
        }
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidInput,
        format!(
            "control socket path {} is too long for a Unix socket: use a shorter pid_file",
            path.display()
        ),
    ))
}

/// Calls `f` with [`address`]`(path)`, the directory kept open meanwhile.
fn with_address<T>(path: &Path, f: impl FnOnce(&Path) -> io::Result<T>) -> io::Result<T> {
    let (addr, dirfd) = address(path)?;
    let out = f(&addr);
    drop(dirfd);
    out
}

/// Whether the control socket path can be bound (checked before start).
pub(crate) fn check_path(path: &Path) -> Result<()> {
    with_address(path, |_| Ok(())).map_err(|e| DaemonError::invalid("pid_file", e.to_string()))
}

/// How an error names the supervisor reached at `socket`.
fn supervisor_at(socket: &Path) -> String {
    format!("the supervisor at {}", socket.display())
}

impl Client {
    /// Connects to the supervisor at `path`. `Ok(None)`: no supervisor lives
    /// there (no socket, or nobody listening). The socket file must be ours,
    /// and so must the process serving it.
    pub async fn connect(path: &Path) -> Result<Option<Client>> {
        let meta = match std::fs::symlink_metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(DaemonError::pid_file(path, e)),
        };
        pidfile::check_ours(path, &meta, true)?;
        let (addr, dirfd) = address(path)
            .map_err(|e| DaemonError::io(format!("connect to {}", path.display()), e))?;
        // A non-blocking connect (tokio's), bounded all the same: a full
        // backlog (a stopped or swamped supervisor) fails at once with
        // EAGAIN instead of blocking until the supervisor accepts.
        let connect = tokio::time::timeout(QUERY_TIMEOUT, UnixStream::connect(&addr)).await;
        // The address went through this descriptor: kept open until here.
        drop(dirfd);
        let stream = match connect {
            Err(_) => {
                return Err(DaemonError::Timeout {
                    name: supervisor_at(path),
                    operation: "connection to the supervisor's control socket",
                    after: QUERY_TIMEOUT,
                })
            }
            Ok(Ok(s)) => s,
            Ok(Err(e))
                if matches!(
                    e.raw_os_error(),
                    // ECONNRESET: the supervisor exited while we connected.
                    Some(libc::ECONNREFUSED) | Some(libc::ENOENT) | Some(libc::ECONNRESET)
                ) =>
            {
                return Ok(None)
            }
            Ok(Err(e)) if e.raw_os_error() == Some(libc::EAGAIN) => {
                // Backlog full: a supervisor lives but accepts nobody.
                return Err(DaemonError::io(
                    format!("connect to {}", path.display()),
                    io::Error::new(
                        io::ErrorKind::WouldBlock,
                        "the supervisor is busy: its connection queue is full (is it stopped?)",
                    ),
                ));
            }
            Ok(Err(e)) => return Err(DaemonError::io(format!("connect to {}", path.display()), e)),
        };
        let cred = stream
            .peer_cred()
            .map_err(|e| DaemonError::io(format!("credentials of {}", path.display()), e))?;
        if !pidfile::trusted_uid(cred.uid()) {
            return Err(pidfile::untrusted(
                path,
                Some(cred.uid()),
                format!("is served by a process of UID {}, not ours", cred.uid()),
            ));
        }
        Ok(Some(Client {
            stream: BufReader::new(stream),
            who: supervisor_at(path),
            peer_pid: cred.pid().and_then(|p| u32::try_from(p).ok()),
        }))
    }

    /// Sends `op` and reads the reply, within `timeout`.
    pub async fn call(&mut self, op: Op, timeout: Duration) -> Result<ControlReply> {
        let what = format!("supervisor control request `{}`", op.as_str());
        let exchange = async {
            let mut line = serde_json::to_vec(&ControlRequest {
                v: PROTOCOL_VERSION,
                op,
            })
            .expect("a request serializes");
            line.push(b'\n');
            self.stream.get_mut().write_all(&line).await?;
            let mut reply = String::new();
            (&mut self.stream)
                .take(1 << 20)
                .read_line(&mut reply)
                .await?;
            Ok::<_, io::Error>(reply)
        };
        let reply = match tokio::time::timeout(timeout, exchange).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return Err(DaemonError::io(what, e)),
            Err(_) => {
                return Err(DaemonError::Timeout {
                    name: self.who.clone(),
                    operation: "answer from the supervisor's control socket",
                    after: timeout,
                })
            }
        };
        if reply.is_empty() {
            return Err(DaemonError::io(
                what,
                io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the supervisor closed the connection",
                ),
            ));
        }
        let value: serde_json::Value = serde_json::from_str(reply.trim_end()).map_err(|_| {
            DaemonError::io(
                what.clone(),
                io::Error::new(io::ErrorKind::InvalidData, "not a supervisor reply"),
            )
        })?;
        let v = value.get("v").and_then(|v| v.as_u64());
        if v != Some(PROTOCOL_VERSION as u64) {
            return Err(DaemonError::BackendUnavailable {
                backend: "fork",
                reason: format!(
                    "the running supervisor speaks control protocol version {}, this program version {PROTOCOL_VERSION}: \
                     stop it with the daemon-lifecycle version that started it",
                    v.map(|v| v.to_string()).unwrap_or_else(|| "unknown".into())
                ),
            });
        }
        serde_json::from_value(value).map_err(|e| {
            DaemonError::io(
                what,
                io::Error::new(io::ErrorKind::InvalidData, e.to_string()),
            )
        })
    }

    /// After `reload`: the [`ReloadOutcome`] line, or `None` when none came
    /// by `deadline` (or the supervisor hung up).
    pub async fn reload_outcome(&mut self, deadline: Instant) -> Option<ReloadOutcome> {
        let mut line = String::new();
        let mut limited = (&mut self.stream).take(64 * 1024);
        let read = limited.read_line(&mut line);
        match tokio::time::timeout_at(deadline, read).await {
            Ok(Ok(n)) if n > 0 => serde_json::from_str(line.trim_end()).ok(),
            _ => None,
        }
    }

    /// After `stop`/`kill`: waits until the supervisor has exited (the
    /// connection reaches end of file), or `deadline`. Returns whether it did.
    pub async fn wait_closed(mut self, deadline: Instant) -> bool {
        let mut sink = [0u8; 256];
        loop {
            match tokio::time::timeout_at(deadline, self.stream.read(&mut sink)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => continue,
                Err(_) => return false,
            }
        }
    }
}

/// The supervisor's side: the bound socket, removed on drop if it is still
/// the one we bound.
pub(crate) struct Server {
    listener: UnixListener,
    path: PathBuf,
    ino: (u64, u64),
}

impl Server {
    /// Binds `path` (mode 0600). Whatever was there must have been removed by
    /// the caller (under the lock, after checking it was ours and dead).
    pub fn bind(path: &Path) -> io::Result<Server> {
        use std::os::unix::fs::MetadataExt;
        // The socket is created with the umask applied: closed to others
        // from the start. No chmod afterwards: a chmod goes through the path,
        // and would follow whatever was swapped in there meanwhile.
        let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
        let bound = with_address(path, |a| std::os::unix::net::UnixListener::bind(a));
        nix::sys::stat::umask(old);
        let std_listener = bound?;
        let meta = std::fs::symlink_metadata(path)?;
        check_bound(path, &meta)?;
        std_listener.set_nonblocking(true)?;
        Ok(Server {
            listener: UnixListener::from_std(std_listener)?,
            path: path.to_owned(),
            ino: (meta.dev(), meta.ino()),
        })
    }

    /// The next connection from a trusted peer (others are dropped at once).
    pub async fn accept(&self) -> UnixStream {
        loop {
            let Ok((stream, _)) = self.listener.accept().await else {
                // EMFILE and the like: do not spin.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            match stream.peer_cred() {
                Ok(c) if pidfile::trusted_uid(c.uid()) => return stream,
                _ => continue,
            }
        }
    }

    /// Removes the socket file if it is still ours.
    pub fn remove(&self) {
        use std::os::unix::fs::MetadataExt;
        if let Ok(meta) = std::fs::symlink_metadata(&self.path) {
            if (meta.dev(), meta.ino()) == self.ino {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.remove();
    }
}

/// What `lstat` must say about the socket just bound: a socket of ours with
/// mode 0600 (anything else, say a file swapped in meanwhile, is refused).
fn check_bound(path: &Path, meta: &std::fs::Metadata) -> io::Result<()> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let me = nix::unistd::Uid::effective().as_raw();
    if !meta.file_type().is_socket() || meta.mode() & 0o7777 != 0o600 || meta.uid() != me {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} is not the socket just bound (mode {:o}, owner UID {})",
                path.display(),
                meta.mode() & 0o7777,
                meta.uid()
            ),
        ));
    }
    Ok(())
}

/// Reads one request line from an accepted connection (bounded in size and
/// time: a client that says nothing is dropped).
pub(crate) async fn read_request(stream: &mut BufReader<UnixStream>) -> Option<ControlRequest> {
    let mut line = String::new();
    let mut limited = (&mut *stream).take(4096);
    let read = limited.read_line(&mut line);
    match tokio::time::timeout(QUERY_TIMEOUT, read).await {
        Ok(Ok(n)) if n > 0 => {}
        _ => return None,
    }
    let req: ControlRequest = serde_json::from_str(line.trim_end()).ok()?;
    (req.v == PROTOCOL_VERSION).then_some(req)
}

/// Writes the line that ends a reload.
pub(crate) async fn write_reload_outcome(
    stream: &mut BufReader<UnixStream>,
    outcome: &ReloadOutcome,
) {
    let mut line = serde_json::to_vec(outcome).expect("an outcome serializes");
    line.push(b'\n');
    let _ = tokio::time::timeout(QUERY_TIMEOUT, stream.get_mut().write_all(&line)).await;
}

/// Writes one reply line.
pub(crate) async fn write_reply(stream: &mut BufReader<UnixStream>, reply: &ControlReply) {
    let mut line = serde_json::to_vec(reply).expect("a reply serializes");
    line.push(b'\n');
    let _ = tokio::time::timeout(QUERY_TIMEOUT, stream.get_mut().write_all(&line)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_bound_socket_is_checked_not_chmodded() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.pid.ctl");
        let server = Server::bind(&path).unwrap();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o7777, 0o600);
        check_bound(&path, &meta).unwrap();
        // What a swap could leave there instead: refused, whatever its mode.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert!(check_bound(&path, &meta).is_err());
        let file = dir.path().join("file");
        std::fs::write(&file, "").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let meta = std::fs::symlink_metadata(&file).unwrap();
        let err = check_bound(&file, &meta).unwrap_err().to_string();
        assert!(err.contains("not the socket just bound"), "{err}");
        drop(server);
        assert!(!path.exists());
    }
}
