//! The daemon's stdout and stderr, appended to files with size rotation.
//!
//! The daemon writes into pipes that the supervisor reads; the supervisor
//! writes whole lines and rotates only between lines. Letting the daemon write
//! to the file itself could not rotate safely: a rename under a writer loses
//! or splits lines, and copy-truncate duplicates or drops them. Here every
//! line the daemon wrote lands exactly once, in order, in `name` or one of
//! `name.1` … `name.keep` (`name.1` the newest of the rotated ones).
//!
//! The price: with `logs` configured the daemon's stdio depends on its
//! supervisor. A supervisor that is SIGKILLed closes the read ends, and the
//! daemon's next write gets `EPIPE` (or `SIGPIPE`), as a systemd service does
//! when journald is gone.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, BufReader};

/// A line longer than this is written in pieces (each piece still whole, and
/// never split by a rotation), so a daemon printing without newlines cannot
/// make the supervisor's memory grow without bound.
const MAX_LINE: usize = 64 * 1024;

/// One log file with its rotation rule. Shared (behind a mutex) when stdout
/// and stderr name the same file, so their lines interleave whole.
#[derive(Debug)]
pub(crate) struct LogFile {
    path: PathBuf,
    file: File,
    size: u64,
    max_bytes: Option<u64>,
    keep: u32,
    /// The last write ended inside a line (a piece of an over-long line):
    /// no rotation until the line is complete.
    mid_line: bool,
    /// The last rotation was refused (said once, not at every line).
    rotation_refused: bool,
}

/// A [`LogFile`] shared between the stdout and stderr pumps.
pub(crate) type SharedLog = Arc<Mutex<LogFile>>;

impl LogFile {
    /// Opens (creating, mode 0640) `path` for appending.
    pub fn open(path: &Path, max_bytes: Option<u64>, keep: u32) -> io::Result<LogFile> {
        let file = open_append(path)?;
        let size = file.metadata()?.len();
        Ok(LogFile {
            path: path.to_owned(),
            file,
            size,
            max_bytes,
            keep,
            mid_line: false,
            rotation_refused: false,
        })
    }

    /// Appends `piece` (a whole line, or a piece of an over-long one),
    /// rotating first when it would push the file past `max_bytes` (where
    /// the rotation is refused, the piece is appended all the same).
    pub fn write_piece(&mut self, piece: &[u8]) -> io::Result<()> {
        if let Some(max) = self.max_bytes {
            if !self.mid_line && self.size > 0 && self.size + piece.len() as u64 > max {
                match self.rotate() {
                    Ok(()) => self.rotation_refused = false,
                    // The line is not lost: it goes on past `max_bytes`,
                    // and the refusal is said once (until a rotation works).
                    Err(e) => {
                        if !self.rotation_refused {
                            tracing::warn!(error = %e, "log rotation refused; writing on");
                        }
                        self.rotation_refused = true;
                    }
                }
            }
        }
        // One write on an O_APPEND file: the piece lands whole.
        self.file.write_all(piece)?;
        self.size += piece.len() as u64;
        self.mid_line = !piece.ends_with(b"\n");
        Ok(())
    }

    /// `name.(keep-1)` → `name.keep`, …, `name` → `name.1`, then a new `name`.
    /// First every one of these names must be free or hold a regular file of
    /// ours: a directory, a link or another user's file planted at `name.N`
    /// is refused (nothing renamed) with an error naming it.
    fn rotate(&mut self) -> io::Result<()> {
        let numbered = |i: u32| {
            let mut s = self.path.clone().into_os_string();
            s.push(format!(".{i}"));
            PathBuf::from(s)
        };
        let names = std::iter::once(self.path.clone()).chain((1..=self.keep.max(1)).map(numbered));
        for p in names {
            match std::fs::symlink_metadata(&p) {
                Ok(meta) => super::pidfile::check_ours(&p, &meta, false).map_err(|e| {
                    io::Error::new(
                        io::ErrorKind::PermissionDenied,
                        format!("cannot rotate {}: {e}", self.path.display()),
                    )
                })?,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        for i in (1..self.keep).rev() {
            match std::fs::rename(numbered(i), numbered(i + 1)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        std::fs::rename(&self.path, numbered(1))?;
        self.file = open_append(&self.path)?;
        self.size = 0;
        Ok(())
    }
}

/// Opens (or creates) a log file for appending: `O_NOFOLLOW` (a symbolic
/// link planted where the log should be is refused, never followed) and
/// `O_NONBLOCK` (nor a FIFO), then it must be a regular file of ours.
fn open_append(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "is a symbolic link; refusing to follow it",
                )
            } else {
                e
            }
        })?;
    let meta = file.metadata()?;
    if !meta.is_file() || !super::pidfile::trusted_uid(meta.uid()) {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("is not a regular file of ours (owner UID {})", meta.uid()),
        ));
    }
    // Writes block as usual; O_NONBLOCK was only for the open.
    let flags = nix::fcntl::fcntl(&file, nix::fcntl::FcntlArg::F_GETFL).map_err(io::Error::from)?;
    let flags = nix::fcntl::OFlag::from_bits_truncate(flags) & !nix::fcntl::OFlag::O_NONBLOCK;
    nix::fcntl::fcntl(&file, nix::fcntl::FcntlArg::F_SETFL(flags)).map_err(io::Error::from)?;
    Ok(file)
}

/// The caller's check of a configured log path before anything starts: what
/// is there already must be a regular file of ours, not a symbolic link.
pub(crate) fn check_log_file(path: &Path) -> crate::error::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) => super::pidfile::check_ours(path, &meta, false),
        Err(_) => Ok(()),
    }
}

/// Copies lines from the read end of a daemon's stdout or stderr pipe into
/// `log` until every writer has closed it.
pub(crate) async fn pump(read_end: OwnedFd, log: SharedLog) {
    let rx = match tokio::net::unix::pipe::Receiver::from_owned_fd(read_end) {
        Ok(rx) => rx,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the daemon's output pipe");
            return;
        }
    };
    let mut reader = BufReader::with_capacity(MAX_LINE, rx);
    let mut piece = Vec::with_capacity(1024);
    loop {
        piece.clear();
        match read_piece(&mut reader, &mut piece).await {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "reading the daemon's output failed");
                return;
            }
        }
        let mut log = log.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = log.write_piece(&piece) {
            // Keep reading (a full disk must not block the daemon on a full
            // pipe); the lines are lost, and we say so once per failure.
            tracing::warn!(path = %log.path.display(), error = %e, "cannot write log line");
        }
    }
}

/// Reads up to and including the next newline, or `MAX_LINE` bytes, or what
/// is left before EOF. Returns the number of bytes read (0 at EOF).
async fn read_piece<R: tokio::io::AsyncRead + Unpin>(
    reader: &mut BufReader<R>,
    out: &mut Vec<u8>,
) -> io::Result<usize> {
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Ok(out.len());
        }
        let room = MAX_LINE - out.len();
        match available.iter().position(|b| *b == b'\n') {
            Some(i) if i < room => {
                out.extend_from_slice(&available[..=i]);
                reader.consume(i + 1);
                return Ok(out.len());
            }
            _ => {
                let take = available.len().min(room);
                out.extend_from_slice(&available[..take]);
                reader.consume(take);
                if out.len() >= MAX_LINE {
                    return Ok(out.len());
                }
            }
        }
    }
}

/// How much of the end of a log file [`tail`] reads.
const TAIL_BYTES: u64 = 64 * 1024;

/// About how many bytes of one line [`tail`] quotes.
const TAIL_LINE_BYTES: usize = 200;

/// The last `n` lines of a log file (for a start-up failure message), each
/// cut to about 200 bytes with its control characters escaped: the daemon
/// wrote them, and they end up on the caller's terminal. Only a regular file
/// of ours is read (opened with `O_NOFOLLOW`, and `O_NONBLOCK` so a FIFO
/// cannot block us); anything else gives no lines.
pub(crate) fn tail(path: &Path, n: usize) -> Vec<String> {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
    else {
        return Vec::new();
    };
    let Ok(meta) = f.metadata() else {
        return Vec::new();
    };
    if !meta.is_file() || !super::pidfile::trusted_uid(meta.uid()) {
        return Vec::new();
    }
    let from = meta.len().saturating_sub(TAIL_BYTES);
    let mut buf = Vec::new();
    if f.seek(SeekFrom::Start(from)).is_err()
        || (&mut f).take(TAIL_BYTES).read_to_end(&mut buf).is_err()
    {
        return Vec::new();
    }
    let text = String::from_utf8_lossy(&buf);
    let mut lines: Vec<&str> = text.lines().collect();
    if from > 0 && !lines.is_empty() {
        lines.remove(0); // probably cut in the middle
    }
    let skip = lines.len().saturating_sub(n);
    lines[skip..]
        .iter()
        .map(|l| crate::text::clip_middle(l, TAIL_LINE_BYTES))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_keeps_every_line_once() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("out.log");
        let mut log = LogFile::open(&p, Some(100), 3).unwrap();
        for i in 0..50 {
            log.write_piece(format!("line {i:04}\n").as_bytes())
                .unwrap();
        }
        // 50 lines of 10 bytes, 10 per file: out.log.3 … out.log hold the last 40.
        let mut all = Vec::new();
        for name in ["out.log.3", "out.log.2", "out.log.1", "out.log"] {
            let text = std::fs::read_to_string(dir.path().join(name)).unwrap();
            assert!(text.len() <= 100, "{name} has {} bytes", text.len());
            all.extend(text.lines().map(str::to_owned));
        }
        let expected: Vec<String> = (10..50).map(|i| format!("line {i:04}")).collect();
        assert_eq!(all, expected);
        assert!(!dir.path().join("out.log.4").exists());
    }

    #[test]
    fn no_rotation_inside_a_long_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("out.log");
        let mut log = LogFile::open(&p, Some(10), 2).unwrap();
        log.write_piece(b"0123456789").unwrap(); // piece without newline
        log.write_piece(b"abcdef\n").unwrap(); // the same line continues
        log.write_piece(b"next\n").unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("out.log.1")).unwrap(),
            "0123456789abcdef\n"
        );
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "next\n");
        assert_eq!(tail(&p, 5), vec!["next".to_owned()]);
    }

    #[test]
    fn tail_escapes_control_characters_and_caps_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("err.log");
        let long = "x".repeat(5_000);
        std::fs::write(&p, format!("one\n\x1b[2J\x1b]0;owned\x07 two\n{long}\n")).unwrap();
        let lines = tail(&p, 5);
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert_eq!(lines[0], "one");
        assert_eq!(lines[1], "\\u{1b}[2J\\u{1b}]0;owned\\u{7} two");
        assert!(lines.iter().all(|l| !l.chars().any(char::is_control)));
        assert!(lines[2].len() < 250, "a line of {} bytes", lines[2].len());
        assert!(lines[2].contains('…'));
    }

    #[test]
    fn tail_reads_only_the_end_of_a_big_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("err.log");
        // 4 MiB in lines of 100 bytes, the first line marked.
        let mut text = String::from("FIRST LINE\n");
        let line = format!("{}\n", "y".repeat(99));
        for _ in 0..(4 << 20) / 100 {
            text.push_str(&line);
        }
        text.push_str("LAST LINE\n");
        std::fs::write(&p, text).unwrap();
        let lines = tail(&p, usize::MAX);
        assert_eq!(lines.last().map(String::as_str), Some("LAST LINE"));
        // At most 64 KiB of 100-byte lines.
        assert!(lines.len() <= 64 * 1024 / 100 + 1, "{} lines", lines.len());
        assert!(!lines.iter().any(|l| l == "FIRST LINE"));
    }

    #[test]
    fn tail_reads_no_link_and_no_fifo() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "TOPSECRET\n").unwrap();
        let link = dir.path().join("link.log");
        std::os::unix::fs::symlink(&secret, &link).unwrap();
        assert_eq!(tail(&link, 10), Vec::<String>::new());
        let fifo = dir.path().join("fifo.log");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        // On a thread: a tail that blocks on the FIFO fails the test, not hangs it.
        let (tx, rx) = std::sync::mpsc::channel();
        let f = fifo.clone();
        std::thread::spawn(move || {
            let _ = tx.send(tail(&f, 10));
        });
        let got = rx
            .recv_timeout(std::time::Duration::from_secs(5))
            .expect("tail blocked on a FIFO");
        assert_eq!(got, Vec::<String>::new());
    }

    #[test]
    fn rotation_refuses_a_planted_directory_and_loses_no_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("out.log");
        std::fs::create_dir(dir.path().join("out.log.2")).unwrap();
        let mut log = LogFile::open(&p, Some(20), 3).unwrap();
        for i in 0..6 {
            log.write_piece(format!("line {i:04}\n").as_bytes())
                .unwrap();
        }
        let err = log.rotate().unwrap_err().to_string();
        assert!(
            err.contains("out.log.2") && err.contains("is not a regular file"),
            "{err}"
        );
        // Nothing was renamed: every line is in out.log, once, in order.
        let expected: String = (0..6).map(|i| format!("line {i:04}\n")).collect();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), expected);
        assert!(!dir.path().join("out.log.1").exists());
        assert!(dir.path().join("out.log.2").is_dir());
    }
}
