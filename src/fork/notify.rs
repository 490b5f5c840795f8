//! The supervisor's `NOTIFY_SOCKET`: a datagram socket in a private directory
//! (mode 0700, owned by the daemon's user), speaking the sd_notify protocol so
//! a daemon written for systemd's `Type=notify` behaves the same here.
//!
//! Understood: `READY=1`, `STATUS=…`, `EXTEND_TIMEOUT_USEC=…`, `STOPPING=1`,
//! `MAINPID=…`; the rest (`WATCHDOG=1`, `FDSTORE=1`, …) is ignored, and file
//! descriptors passed along are closed at once.
//!
//! Who may speak: on Linux the kernel stamps every datagram with the sender's
//! PID (`SCM_CREDENTIALS`), and only a sender in the daemon's process group is
//! heard (systemd checks its cgroup; the process group is our equivalent).
//! Where no credentials exist (macOS, the BSDs) the 0700 directory is the only
//! gate: only the daemon's user and root can reach the socket.

use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::Interest;
use tokio::net::UnixDatagram;

/// One parsed sd_notify datagram.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Message {
    pub ready: bool,
    pub stopping: bool,
    pub status: Option<String>,
    pub main_pid: Option<u32>,
    pub extend_timeout: Option<Duration>,
}

impl Message {
    /// Parses `KEY=VALUE` lines; unknown keys and bad values are ignored (as
    /// systemd does), so one bad line does not drop the datagram.
    pub fn parse(data: &[u8]) -> Message {
        let mut m = Message::default();
        for line in String::from_utf8_lossy(data).lines() {
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            match key {
                "READY" => m.ready |= value == "1",
                "STOPPING" => m.stopping |= value == "1",
                "STATUS" => m.status = Some(value.to_owned()),
                "MAINPID" => m.main_pid = value.parse().ok().filter(|p| *p > 0),
                "EXTEND_TIMEOUT_USEC" => {
                    m.extend_timeout = value.parse().ok().map(Duration::from_micros)
                }
                _ => {}
            }
        }
        m
    }
}

/// The bound socket and its private directory (removed on drop).
#[derive(Debug)]
pub(crate) struct NotifySocket {
    socket: UnixDatagram,
    dir: PathBuf,
    path: PathBuf,
}

/// Longest `sun_path` we use (macOS allows 104 bytes, Linux 108, both with NUL).
const MAX_SOCKET_PATH: usize = 103;

impl NotifySocket {
    /// Creates `dir` (0700, owned by `owner` when given), binds `dir/notify`.
    /// When the path would be too long for a Unix socket, a private directory
    /// under the temp dir is used instead.
    pub fn bind(dir: &Path, owner: Option<(u32, u32)>) -> io::Result<NotifySocket> {
        let dir = if dir.join("notify").as_os_str().len() <= MAX_SOCKET_PATH {
            // A directory left by a supervisor that was SIGKILLed: emptied
            // of our socket and removed, never as a tree (see `remove_dir`).
            remove_dir(dir)?;
            std::fs::DirBuilder::new().mode(0o700).create(dir)?;
            dir.to_owned()
        } else {
            tempfile::Builder::new()
                .prefix("dl-notify-")
                .tempdir()?
                .keep()
        };
        let path = dir.join("notify");
        let bound = (|| {
            let socket = UnixDatagram::bind(&path)?;
            if let Some((uid, gid)) = owner {
                // The daemon connects after dropping privileges: it needs the
                // directory's x bit and the socket's w bit as its own user.
                let uid = Some(nix::unistd::Uid::from_raw(uid));
                let gid = Some(nix::unistd::Gid::from_raw(gid));
                nix::unistd::chown(&dir, uid, gid)?;
                nix::unistd::chown(&path, uid, gid)?;
            }
            pass_credentials(&socket)?;
            Ok::<_, io::Error>(socket)
        })();
        match bound {
            Ok(socket) => Ok(NotifySocket { socket, dir, path }),
            Err(e) => {
                let _ = remove_dir(&dir);
                Err(e)
            }
        }
    }

    /// The value of `NOTIFY_SOCKET` for the daemon.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The private directory (for the identity record, so a caller can remove
    /// it if the supervisor was killed).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The next datagram and its sender's PID (`None` where the platform
    /// gives no credentials).
    pub async fn recv(&self) -> io::Result<(Message, Option<u32>)> {
        let fd = self.socket.as_raw_fd();
        let mut buf = [0u8; 4096];
        let (n, pid) = self
            .socket
            .async_io(Interest::READABLE, || recv_with_sender(fd, &mut buf))
            .await?;
        Ok((Message::parse(&buf[..n]), pid))
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        let _ = remove_dir(&self.dir);
    }
}

use std::os::unix::fs::DirBuilderExt;

#[cfg(target_os = "linux")]
fn pass_credentials(socket: &UnixDatagram) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: valid socket fd, pointer and length of a c_int.
    let r = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PASSCRED,
            &on as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn pass_credentials(_socket: &UnixDatagram) -> io::Result<()> {
    Ok(())
}

/// `recvmsg` with room for `SCM_CREDENTIALS` (the sender's PID) and for file
/// descriptors a daemon may pass (`FDSTORE=1`), which we close.
#[cfg(target_os = "linux")]
fn recv_with_sender(fd: libc::c_int, buf: &mut [u8]) -> io::Result<(usize, Option<u32>)> {
    // u64 elements: cmsg headers need 8-byte alignment.
    let mut control = [0u64; 64];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: zeroed msghdr is a valid "empty" header; we fill the pointers.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    // SAFETY: msg points to live buffers of the stated sizes.
    let n = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut pid = None;
    // SAFETY: the CMSG_* macros walk the control buffer the kernel filled,
    // bounded by msg_controllen; data is read unaligned.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            let data = libc::CMSG_DATA(cmsg);
            let len = (*cmsg).cmsg_len as usize - (data as usize - cmsg as usize);
            if (*cmsg).cmsg_level == libc::SOL_SOCKET {
                if (*cmsg).cmsg_type == libc::SCM_CREDENTIALS
                    && len >= std::mem::size_of::<libc::ucred>()
                {
                    let cred: libc::ucred = std::ptr::read_unaligned(data.cast());
                    pid = u32::try_from(cred.pid).ok();
                } else if (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                    let count = len / std::mem::size_of::<libc::c_int>();
                    for i in 0..count {
                        let passed: libc::c_int =
                            std::ptr::read_unaligned(data.cast::<libc::c_int>().add(i));
                        libc::close(passed);
                    }
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    Ok((n as usize, pid))
}

/// Portable: no credentials on datagram sockets (see the module docs).
#[cfg(not(target_os = "linux"))]
fn recv_with_sender(fd: libc::c_int, buf: &mut [u8]) -> io::Result<(usize, Option<u32>)> {
    // SAFETY: buf is a live buffer of buf.len() bytes.
    let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((n as usize, None))
}

/// Removes a notify directory we made: the `notify` socket in it, then the
/// (then empty) directory. Never a tree: a directory holding anything else,
/// a symbolic link, or one owned by another user is refused and left alone.
pub(crate) fn remove_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let meta = match std::fs::symlink_metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let me = nix::unistd::Uid::effective().as_raw();
    // The directory is handed to the daemon's user when it switches users.
    if !meta.is_dir() || (meta.uid() != me && me != 0) {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{} is not our notify directory", dir.display()),
        ));
    }
    let socket = dir.join("notify");
    if let Ok(m) = std::fs::symlink_metadata(&socket) {
        if m.file_type().is_socket() {
            std::fs::remove_file(&socket)?;
        }
    }
    std::fs::remove_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_keys_we_understand() {
        let m = Message::parse(
            b"READY=1\nSTATUS=serving 3 clients\nMAINPID=42\nEXTEND_TIMEOUT_USEC=2500000\nWATCHDOG=1\nbogus\n",
        );
        assert!(m.ready && !m.stopping);
        assert_eq!(m.status.as_deref(), Some("serving 3 clients"));
        assert_eq!(m.main_pid, Some(42));
        assert_eq!(m.extend_timeout, Some(Duration::from_millis(2500)));
        assert_eq!(Message::parse(b"READY=0\nMAINPID=x"), Message::default());
        assert!(Message::parse(b"STOPPING=1").stopping);
    }

    #[tokio::test]
    async fn receives_with_the_senders_pid() {
        let dir = tempfile::tempdir().unwrap();
        let sock = NotifySocket::bind(&dir.path().join("n"), None).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(sock.dir()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        let client = std::os::unix::net::UnixDatagram::unbound().unwrap();
        client.send_to(b"READY=1\nSTATUS=hi", sock.path()).unwrap();
        let (m, pid) = sock.recv().await.unwrap();
        assert!(m.ready);
        assert_eq!(m.status.as_deref(), Some("hi"));
        if cfg!(target_os = "linux") {
            assert_eq!(pid, Some(std::process::id()));
        }
        let d = sock.dir().to_owned();
        drop(sock);
        assert!(!d.exists());
    }
}
