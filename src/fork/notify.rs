//! The supervisor's `NOTIFY_SOCKET`: a datagram socket in a private directory
//! (owned by the caller; mode 0700, or 0710 with the daemon's group when it
//! switches users; the socket alone, mode 0600, is the daemon's), speaking
//! the sd_notify protocol so a daemon written for systemd's `Type=notify`
//! behaves the same here.
//!
//! Understood: `READY=1`, `STATUS=…`, `EXTEND_TIMEOUT_USEC=…`, `STOPPING=1`,
//! `MAINPID=…`, `RELOADING=1`, `WATCHDOG=1`, `WATCHDOG=trigger`,
//! `WATCHDOG_USEC=…`; the rest (`FDSTORE=1`, …) is ignored, and file
//! descriptors passed along are closed at once.
//!
//! Who may speak: on Linux the kernel stamps every datagram with the sender's
//! PID (`SCM_CREDENTIALS`), and only a sender in the daemon's process group is
//! heard (systemd checks its cgroup; the process group is our equivalent).
//! Where no credentials exist (macOS, the BSDs) the private directory and the
//! 0600 socket are the only gate: only the daemon's user and root can send.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::fcntl::OFlag;
use nix::sys::stat::{Mode, SFlag};
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
    /// `RELOADING=1`: a reload began; `READY=1` ends it.
    pub reloading: bool,
    /// `WATCHDOG=1`: the keep-alive ping.
    pub watchdog_ping: bool,
    /// `WATCHDOG=trigger`: the daemon asks to be treated as hung.
    pub watchdog_trigger: bool,
    /// `WATCHDOG_USEC=`: a new watchdog interval (0: watchdog off).
    pub watchdog_usec: Option<u64>,
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
                "RELOADING" => m.reloading |= value == "1",
                "WATCHDOG" if value == "1" => m.watchdog_ping = true,
                "WATCHDOG" if value == "trigger" => m.watchdog_trigger = true,
                "WATCHDOG_USEC" => m.watchdog_usec = value.parse().ok(),
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
    /// Creates `dir` and binds `dir/notify`. The directory stays ours (the
    /// caller's): mode 0700, or with `owner` (the daemon's user and group,
    /// when it switches users) group `gid` and mode 0710, so the daemon can
    /// reach the socket but can neither add nor swap anything in it; only the
    /// socket (mode 0600) is handed to `uid`, through a descriptor of the
    /// directory and without following a link. When the path would be too
    /// long for a Unix socket, a private directory under the temp dir is used
    /// instead.
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
            let dirfd = open_new_dir(&dir)?;
            let mode = match owner {
                Some((_, gid)) => {
                    let gid = nix::unistd::Gid::from_raw(gid);
                    nix::unistd::fchown(&dirfd, None, Some(gid))?;
                    0o710
                }
                None => 0o700,
            };
            nix::sys::stat::fchmod(&dirfd, Mode::from_bits_truncate(mode))?;
            let socket = bind_in(&dirfd, &path)?;
            // Nobody else can write in the directory: "notify" is the socket
            // just bound.
            nix::sys::stat::fchmodat(
                &dirfd,
                "notify",
                Mode::from_bits_truncate(0o600),
                nix::sys::stat::FchmodatFlags::FollowSymlink,
            )?;
            if let Some((uid, gid)) = owner {
                // The daemon connects after dropping privileges: it needs
                // the socket's w bit as its own user.
                nix::unistd::fchownat(
                    &dirfd,
                    "notify",
                    Some(nix::unistd::Uid::from_raw(uid)),
                    Some(nix::unistd::Gid::from_raw(gid)),
                    nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
                )?;
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

/// Opens the directory just made at `dir`, without following a link, and
/// checks it is the one `lstat` sees there and is ours.
fn open_new_dir(dir: &Path) -> io::Result<File> {
    use std::os::unix::fs::MetadataExt;
    let before = std::fs::symlink_metadata(dir)?;
    let fd = nix::fcntl::openat(
        nix::fcntl::AT_FDCWD,
        dir,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    let file = File::from(fd);
    let meta = file.metadata()?;
    let me = nix::unistd::Uid::effective().as_raw();
    if !before.is_dir()
        || !meta.is_dir()
        || (meta.dev(), meta.ino()) != (before.dev(), before.ino())
        || meta.uid() != me
    {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{} is not the directory we made", dir.display()),
        ));
    }
    Ok(file)
}

/// Binds the datagram socket `path` (`dir/notify`) through `dirfd`, the
/// descriptor of `dir`: on Linux by `/proc/self/fd/N/notify`, so a directory
/// swapped at `dir` meanwhile is not where it lands; elsewhere by `path`.
fn bind_in(dirfd: &File, path: &Path) -> io::Result<UnixDatagram> {
    #[cfg(target_os = "linux")]
    {
        let via = PathBuf::from(format!("/proc/self/fd/{}/notify", dirfd.as_raw_fd()));
        match UnixDatagram::bind(&via) {
            // No /proc mounted: the path it is.
            Err(e)
                if e.kind() == io::ErrorKind::NotFound && !Path::new("/proc/self/fd").exists() => {}
            other => return other,
        }
    }
    let _ = dirfd;
    UnixDatagram::bind(path)
}

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
/// a symbolic link, or one owned by another user than the caller or root is
/// refused and left alone. Everything is done through descriptors (the
/// directory opened without following a link), so a directory swapped for a
/// link meanwhile cannot make us unlink a socket elsewhere.
pub(crate) fn remove_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let not_ours = |why: String| {
        io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{} is not our notify directory: {why}", dir.display()),
        )
    };
    let (Some(parent), Some(name)) = (dir.parent(), dir.file_name()) else {
        return Err(not_ours("no parent directory".into()));
    };
    let parent = if parent.as_os_str().is_empty() {
        Path::new(".")
    } else {
        parent
    };
    let parentfd = match nix::fcntl::openat(
        nix::fcntl::AT_FDCWD,
        parent,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(nix::errno::Errno::ENOENT) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    let dirfd = match nix::fcntl::openat(
        &parentfd,
        name,
        OFlag::O_RDONLY
            | OFlag::O_DIRECTORY
            | OFlag::O_NOFOLLOW
            | OFlag::O_NONBLOCK
            | OFlag::O_CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => File::from(fd),
        Err(nix::errno::Errno::ENOENT) => return Ok(()),
        Err(nix::errno::Errno::ELOOP) | Err(nix::errno::Errno::ENOTDIR) => {
            return Err(not_ours("not a directory".into()))
        }
        Err(e) => return Err(e.into()),
    };
    let meta = dirfd.metadata()?;
    if !super::pidfile::trusted_uid(meta.uid()) {
        return Err(not_ours(format!("owned by UID {}", meta.uid())));
    }
    match nix::sys::stat::fstatat(&dirfd, "notify", nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => {
            let kind = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT;
            if kind == SFlag::S_IFSOCK {
                nix::unistd::unlinkat(&dirfd, "notify", nix::unistd::UnlinkatFlags::NoRemoveDir)?;
            }
        }
        Err(nix::errno::Errno::ENOENT) => {}
        Err(e) => return Err(e.into()),
    }
    drop(dirfd);
    nix::unistd::unlinkat(&parentfd, name, nix::unistd::UnlinkatFlags::RemoveDir)?;
    Ok(())
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
        let m = Message::parse(b"RELOADING=1\nWATCHDOG=1\nWATCHDOG_USEC=2500000");
        assert!(m.reloading && m.watchdog_ping && !m.watchdog_trigger);
        assert_eq!(m.watchdog_usec, Some(2_500_000));
        let m = Message::parse(b"WATCHDOG=trigger");
        assert!(m.watchdog_trigger && !m.watchdog_ping);
        assert_eq!(
            Message::parse(b"WATCHDOG=0\nWATCHDOG_USEC=x"),
            Message::default()
        );
    }

    #[tokio::test]
    async fn receives_with_the_senders_pid() {
        let dir = tempfile::tempdir().unwrap();
        let sock = NotifySocket::bind(&dir.path().join("n"), None).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(sock.dir.as_path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
        let client = std::os::unix::net::UnixDatagram::unbound().unwrap();
        client.send_to(b"READY=1\nSTATUS=hi", sock.path()).unwrap();
        let (m, pid) = sock.recv().await.unwrap();
        assert!(m.ready);
        assert_eq!(m.status.as_deref(), Some("hi"));
        if cfg!(target_os = "linux") {
            assert_eq!(pid, Some(std::process::id()));
        }
        let d = sock.dir.as_path().to_owned();
        drop(sock);
        assert!(!d.exists());
    }

    /// Root handing the socket to another user keeps the directory: nobody
    /// but root can add, remove or swap anything in it.
    #[tokio::test]
    async fn the_directory_stays_ours_and_only_the_socket_is_handed_over() {
        use std::os::unix::fs::MetadataExt;
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("SKIPPED: needs root (handing the socket to another user)");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let sock = NotifySocket::bind(&dir.path().join("n"), Some((65534, 65534))).unwrap();
        let d = std::fs::symlink_metadata(sock.dir.as_path()).unwrap();
        assert!(d.is_dir());
        assert_eq!((d.uid(), d.gid(), d.mode() & 0o7777), (0, 65534, 0o710));
        let s = std::fs::symlink_metadata(sock.path()).unwrap();
        assert_eq!((s.uid(), s.gid(), s.mode() & 0o7777), (65534, 65534, 0o600));
        let d = sock.dir.as_path().to_owned();
        drop(sock);
        assert!(!d.exists());
    }

    /// A directory of another user is not ours to empty, even for root.
    #[test]
    fn remove_dir_refuses_another_users_directory() {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("SKIPPED: needs root (a directory of another user)");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let planted = dir.path().join("n");
        std::fs::create_dir(&planted).unwrap();
        let socket = planted.join("notify");
        let _s = std::os::unix::net::UnixDatagram::bind(&socket).unwrap();
        let nobody = Some(nix::unistd::Uid::from_raw(65534));
        nix::unistd::chown(&planted, nobody, None).unwrap();
        nix::unistd::chown(&socket, nobody, None).unwrap();
        let err = remove_dir(&planted).unwrap_err().to_string();
        assert!(err.contains("owned by UID 65534"), "{err}");
        assert!(
            std::fs::symlink_metadata(&socket).is_ok(),
            "its socket was removed"
        );
    }

    /// A link to a directory holding a socket is refused: the socket stays.
    #[test]
    fn remove_dir_refuses_a_link() {
        let dir = tempfile::tempdir().unwrap();
        let elsewhere = dir.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        let socket = elsewhere.join("notify");
        let _s = std::os::unix::net::UnixDatagram::bind(&socket).unwrap();
        let link = dir.path().join("n");
        std::os::unix::fs::symlink(&elsewhere, &link).unwrap();
        assert!(remove_dir(&link).is_err());
        assert!(std::fs::symlink_metadata(&socket).is_ok());
        assert!(remove_dir(&dir.path().join("absent")).is_ok());
        // Our own directory with our socket goes, socket first.
        assert!(remove_dir(&elsewhere).is_ok());
        assert!(!elsewhere.exists());
    }
}
