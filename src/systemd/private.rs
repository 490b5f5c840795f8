//! The manager's private socket (`/run/systemd/private`,
//! `$XDG_RUNTIME_DIR/systemd/private`), spoken to peer to peer as
//! `systemctl` does: no bus daemon relays the messages, so every call is
//! one hop each way instead of two, and there is no `Hello`, no `AddMatch`.
//!
//! Two things zbus cannot do alone here, done in this file:
//!
//! - The SASL handshake is ours, sent in one write (`AUTH EXTERNAL` and
//!   `BEGIN` together, as sd-bus does): one round trip instead of two.
//! - On its private socket systemd stamps its messages with the sender
//!   `org.freedesktop.systemd1`, which is not a unique name; zbus expects
//!   one there and panics reading the header. [`ManagerReader`] rewrites
//!   that one header field, in place, to [`PRIVATE_SENDER`] (a unique name
//!   of the same length) before zbus sees the message.
//!
//! Trust: the socket must be the manager's (see [`connect`]); there is no
//! other peer on the connection, so nothing but the manager can send us a
//! signal on it.

use std::io;
use std::os::fd::OwnedFd;
use std::path::Path;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use zbus::connection::socket::{ReadHalf, Split, WriteHalf};

use super::bus::BUS_GRACE;

/// What systemd writes as the sender of its messages on the private socket.
const MANAGER_NAME: &[u8] = b"org.freedesktop.systemd1";

/// The unique name [`MANAGER_NAME`] is rewritten to: the same length, so
/// the rewrite changes no offset in the message.
pub(super) const PRIVATE_SENDER: &str = ":systemd.private.manager";

/// Longest message accepted (the D-Bus limit).
const MAX_MESSAGE: usize = 128 << 20;

/// Connects to the private socket at `path`, which must be the manager's:
/// `lstat` says a socket (a link is not followed) owned by `owner` or root,
/// in a directory of theirs that is no link and not writable by others,
/// and the kernel says the process that accepted us runs as `owner` or root
/// (a socket swapped in after the `lstat` is caught there). `Err`: why not;
/// the caller then uses the bus.
pub(super) async fn connect(
    path: &Path,
    owner: u32,
) -> std::result::Result<zbus::Connection, String> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let trusted = |uid: u32| uid == owner || uid == 0;
    let dir = path.parent().unwrap_or(Path::new("/"));
    let dir_meta = std::fs::symlink_metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    if !dir_meta.is_dir() || !trusted(dir_meta.uid()) || dir_meta.mode() & 0o022 != 0 {
        return Err(format!(
            "{} is not a directory of the manager's (a link, owned by UID {}, or writable by others)",
            dir.display(),
            dir_meta.uid()
        ));
    }
    let meta = std::fs::symlink_metadata(path).map_err(|e| e.to_string())?;
    if !meta.file_type().is_socket() || !trusted(meta.uid()) {
        return Err(format!("not a socket of UID {owner} or root"));
    }
    let work = async {
        let mut stream = tokio::net::UnixStream::connect(path)
            .await
            .map_err(|e| e.to_string())?;
        let peer = stream.peer_cred().map_err(|e| e.to_string())?;
        if !trusted(peer.uid()) {
            return Err(format!("served by UID {}, not the manager's", peer.uid()));
        }
        let guid = handshake(&mut stream).await.map_err(|e| e.to_string())?;
        let (read, write) = stream.into_split();
        let split = Split::new(
            Box::new(ManagerReader::new(read)) as Box<dyn ReadHalf>,
            Box::new(write) as Box<dyn WriteHalf>,
        );
        zbus::connection::Builder::authenticated_socket(split, guid.as_str())
            .map_err(|e| e.to_string())?
            .p2p()
            .build()
            .await
            .map_err(|e| e.to_string())
    };
    match tokio::time::timeout(BUS_GRACE, work).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "no answer within {}",
            crate::text::duration(BUS_GRACE)
        )),
    }
}

/// `AUTH EXTERNAL` (our effective UID) and `BEGIN` in one write; the answer
/// is one line, `OK <guid>`, and nothing follows it until we send.
async fn handshake(stream: &mut tokio::net::UnixStream) -> io::Result<String> {
    let uid = nix::unistd::Uid::effective().as_raw().to_string();
    let hex: String = uid.bytes().map(|b| format!("{b:02x}")).collect();
    stream
        .write_all(format!("\0AUTH EXTERNAL {hex}\r\nBEGIN\r\n").as_bytes())
        .await?;
    let mut line = Vec::new();
    while !line.ends_with(b"\r\n") {
        if line.len() > 256 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "overlong handshake line",
            ));
        }
        // Byte by byte: the line is short, and nothing after it is ours to read.
        let b = stream.read_u8().await?;
        line.push(b);
    }
    let line = String::from_utf8_lossy(&line[..line.len() - 2]).into_owned();
    match line.strip_prefix("OK ") {
        Some(guid) => Ok(guid.to_owned()),
        None => Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("the manager refused us: {line}"),
        )),
    }
}

/// The read half of the private socket: whole messages, each with its
/// sender field rewritten by [`rewrite_sender`] before zbus reads it.
#[derive(Debug)]
struct ManagerReader {
    inner: tokio::net::unix::OwnedReadHalf,
    /// The current message, and how much of it zbus has taken.
    message: Vec<u8>,
    taken: usize,
}

impl ManagerReader {
    fn new(inner: tokio::net::unix::OwnedReadHalf) -> Self {
        ManagerReader {
            inner,
            message: Vec::new(),
            taken: 0,
        }
    }

    /// Reads the next whole message; `false` at end of file.
    async fn next_message(&mut self) -> io::Result<bool> {
        let mut fixed = [0u8; 16];
        match self.inner.read_exact(&mut fixed).await {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(false),
            Err(e) => return Err(e),
        }
        let total = message_len(&fixed)?;
        self.message.clear();
        self.message.extend_from_slice(&fixed);
        self.message.resize(total, 0);
        self.inner.read_exact(&mut self.message[16..]).await?;
        rewrite_sender(&mut self.message);
        self.taken = 0;
        Ok(true)
    }
}

#[async_trait::async_trait]
impl ReadHalf for ManagerReader {
    async fn recvmsg(&mut self, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
        if self.taken == self.message.len() && !self.next_message().await? {
            return Ok((0, Vec::new()));
        }
        let n = buf.len().min(self.message.len() - self.taken);
        buf[..n].copy_from_slice(&self.message[self.taken..self.taken + n]);
        self.taken += n;
        Ok((n, Vec::new()))
    }

    // No descriptors are passed: none of our calls carries one, and the
    // handshake does not negotiate them.
    fn can_pass_unix_fd(&self) -> bool {
        false
    }
}

fn u32_at(bytes: &[u8], at: usize, little: bool) -> Option<u32> {
    let b: [u8; 4] = bytes.get(at..at + 4)?.try_into().ok()?;
    Some(if little {
        u32::from_le_bytes(b)
    } else {
        u32::from_be_bytes(b)
    })
}

/// The whole length of the message whose fixed 16-byte header is `fixed`:
/// the header, its fields, the padding to 8, the body.
fn message_len(fixed: &[u8; 16]) -> io::Result<usize> {
    let bad = |why: &str| io::Error::new(io::ErrorKind::InvalidData, why.to_owned());
    let little = match fixed[0] {
        b'l' => true,
        b'B' => false,
        _ => return Err(bad("not a D-Bus message")),
    };
    let body = u32_at(fixed, 4, little).unwrap_or(0) as usize;
    let fields = u32_at(fixed, 12, little).unwrap_or(0) as usize;
    let total = (16 + fields).div_ceil(8) * 8 + body;
    if total > MAX_MESSAGE {
        return Err(bad("message too large"));
    }
    Ok(total)
}

/// Rewrites the sender header field (code 7, a string) of one whole message
/// from [`MANAGER_NAME`] to [`PRIVATE_SENDER`] in place; anything else, or
/// a header it cannot walk, is left as it is (zbus judges it then).
fn rewrite_sender(message: &mut [u8]) {
    let Some(&endian) = message.first() else {
        return;
    };
    let little = endian == b'l';
    let Some(fields_len) = u32_at(message, 12, little) else {
        return;
    };
    let end = (16 + fields_len as usize).min(message.len());
    let mut at = 16;
    while at < end {
        at = at.div_ceil(8) * 8; // each field is a struct: 8-aligned
        let (Some(&code), Some(&sig_len)) = (message.get(at), message.get(at + 1)) else {
            return;
        };
        let sig_start = at + 2;
        let Some(sig) = message.get(sig_start..sig_start + sig_len as usize) else {
            return;
        };
        let value = sig_start + sig_len as usize + 1;
        at = match sig {
            b"s" | b"o" => {
                let start = value.div_ceil(4) * 4;
                let Some(len) = u32_at(message, start, little) else {
                    return;
                };
                let text = start + 4;
                let text_end = text + len as usize;
                if code == 7 && message.get(text..text_end) == Some(MANAGER_NAME) {
                    message[text..text_end].copy_from_slice(PRIVATE_SENDER.as_bytes());
                    return;
                }
                text_end + 1
            }
            b"g" => match message.get(value) {
                Some(&len) => value + 1 + len as usize + 1,
                None => return,
            },
            b"u" => value.div_ceil(4) * 4 + 4,
            _ => return,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A signal as systemd sends it on its private socket: path, interface,
    /// member, signature and the sender `org.freedesktop.systemd1`.
    fn signal_from_manager() -> Vec<u8> {
        let msg = zbus::Message::signal(
            "/org/freedesktop/systemd1",
            "org.freedesktop.systemd1.Manager",
            "JobRemoved",
        )
        .unwrap()
        .sender(":placeholder.sender.nam1")
        .unwrap()
        .build(&(7u32, "t.service"))
        .unwrap();
        let mut bytes = msg.data().to_vec();
        // The same length as systemd's name: put systemd's name in its place.
        let at = bytes
            .windows(24)
            .position(|w| w == b":placeholder.sender.nam1")
            .unwrap();
        bytes[at..at + 24].copy_from_slice(MANAGER_NAME);
        bytes
    }

    #[test]
    fn the_managers_sender_becomes_a_unique_name_of_the_same_length() {
        assert_eq!(PRIVATE_SENDER.len(), MANAGER_NAME.len());
        assert!(zbus::names::UniqueName::try_from(PRIVATE_SENDER).is_ok());
        let mut bytes = signal_from_manager();
        let fixed: [u8; 16] = bytes[..16].try_into().unwrap();
        assert_eq!(message_len(&fixed).unwrap(), bytes.len());
        let before = bytes.clone();
        rewrite_sender(&mut bytes);
        assert_eq!(bytes.len(), before.len());
        let changed: Vec<usize> = (0..bytes.len())
            .filter(|i| bytes[*i] != before[*i])
            .collect();
        assert!(!changed.is_empty());
        let at = bytes
            .windows(24)
            .position(|w| w == PRIVATE_SENDER.as_bytes())
            .unwrap();
        assert!(
            changed.iter().all(|i| (at..at + 24).contains(i)),
            "only the sender changes"
        );
        // The body is untouched: still (7, "t.service").
        assert_eq!(
            &bytes[bytes.len() - 14..bytes.len() - 1],
            &before[before.len() - 14..before.len() - 1]
        );
    }

    /// A socket that is not the manager's is not connected to: a link to
    /// one, another user's, one in a directory others may write to.
    #[tokio::test]
    async fn only_the_managers_socket_is_used() {
        use std::os::unix::fs::PermissionsExt;
        let me = nix::unistd::Uid::effective().as_raw();
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("systemd");
        std::fs::create_dir(&sub).unwrap();
        std::fs::set_permissions(&sub, std::fs::Permissions::from_mode(0o755)).unwrap();
        let sock = sub.join("private");
        let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let link = sub.join("link");
        std::os::unix::fs::symlink(&sock, &link).unwrap();
        let err = connect(&link, me).await.unwrap_err();
        assert!(err.contains("not a socket"), "{err}");
        let file = sub.join("file");
        std::fs::write(&file, "").unwrap();
        assert!(connect(&file, me)
            .await
            .unwrap_err()
            .contains("not a socket"));
        if me == 0 {
            // Another user's socket (only root can make one to test with).
            let other = sub.join("other");
            let _l2 = std::os::unix::net::UnixListener::bind(&other).unwrap();
            nix::unistd::chown(&other, Some(nix::unistd::Uid::from_raw(4242)), None).unwrap();
            let err = connect(&other, 4343).await.unwrap_err();
            assert!(err.contains("not a socket of UID 4343"), "{err}");
        }
        std::fs::set_permissions(&sub, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = connect(&sock, me).await.unwrap_err();
        assert!(err.contains("writable by others"), "{err}");
    }

    #[test]
    fn other_senders_and_broken_headers_are_left_alone() {
        let msg = zbus::Message::method_call("/org/freedesktop/systemd1", "GetUnit")
            .unwrap()
            .sender(":1.42")
            .unwrap()
            .build(&("org.freedesktop.systemd1",))
            .unwrap();
        let mut bytes = msg.data().to_vec();
        let before = bytes.clone();
        // The body holds the manager's name, the sender another: untouched.
        rewrite_sender(&mut bytes);
        assert_eq!(bytes, before);
        // Truncated or garbage headers: nothing happens, no panic.
        for cut in 0..bytes.len() {
            let mut part = before[..cut].to_vec();
            rewrite_sender(&mut part);
        }
        let mut garbage = vec![b'l', 4, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 200, 0, 0, 0, 7, 9];
        rewrite_sender(&mut garbage);
        assert!(message_len(&[b'x'; 16]).is_err());
    }
}
