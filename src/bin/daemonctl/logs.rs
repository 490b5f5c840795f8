//! `daemonctl logs [-f] [-n N] CONFIG`: the daemon's output, wherever the
//! config sent it.
//!
//! - `logs.stdout` / `logs.stderr` set (fork backend, or systemd's
//!   `append:` files): those files, each across its rotations in order
//!   (`name.KEEP` … `name.1`, `name`); `-f` follows the file and, when it
//!   is rotated, finishes the old one and goes on with the new one.
//! - systemd without files: the unit's journal, `journalctl --output=json`
//!   read as structured entries (time, identifier, PID, message).
//! - fork without files: nothing was kept; says so and names the keys.
//!
//! Files are read as the fork backend reads its own: no symbolic link is
//! followed (`O_NOFOLLOW`), no FIFO blocks us (`O_NONBLOCK`), only regular
//! files owned by the caller or root are read.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use daemon_lifecycle::{BackendKind, DaemonError, Scope, ServiceSpec};

/// How often `-f` looks for new lines and rotations.
const FOLLOW_POLL: Duration = Duration::from_millis(100);

/// What `-n` defaults to with `-f` (as `tail -f`, `journalctl -f`).
const FOLLOW_LINES: usize = 10;

/// Shows the logs; returns the exit code.
pub async fn show(
    spec: &ServiceSpec,
    backend: BackendKind,
    scope: Scope,
    follow: bool,
    lines: Option<usize>,
    config: &Path,
) -> Result<u8, DaemonError> {
    let lines = lines.or(follow.then_some(FOLLOW_LINES));
    let mut files: Vec<PathBuf> = spec.logs.files().map(|(_, p)| p.clone()).collect();
    files.dedup();
    if !files.is_empty() {
        return show_files(&files, spec.logs.keep, follow, lines).await;
    }
    if backend == BackendKind::Systemd {
        return journal(spec, scope, follow, lines).await;
    }
    eprintln!(
        "daemonctl: {}: no logs configured: {}'s stdout and stderr went to /dev/null; \
         set `logs.stdout` (and `logs.stderr`) in the config to keep them",
        config.display(),
        spec.name
    );
    Ok(0)
}

/// `path`, then `path.1` … `path.keep`, oldest first: the order the lines
/// were written.
fn rotations(path: &Path, keep: u32) -> Vec<PathBuf> {
    let mut all: Vec<PathBuf> = (1..=keep.max(1))
        .rev()
        .map(|i| {
            let mut s = path.as_os_str().to_owned();
            s.push(format!(".{i}"));
            PathBuf::from(s)
        })
        .collect();
    all.push(path.to_owned());
    all
}

/// Opens a log file of ours for reading: no link followed, no FIFO waited
/// on, a regular file of the caller or root. `Ok(None)`: not there.
fn open_log(path: &Path) -> std::io::Result<Option<File>> {
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(std::io::Error::other("is a symbolic link; not followed"))
        }
        Err(e) => return Err(e),
    };
    let meta = file.metadata()?;
    let me = nix::unistd::Uid::effective().as_raw();
    if !meta.is_file() || (meta.uid() != me && meta.uid() != 0) {
        return Err(std::io::Error::other(format!(
            "is not a regular file of UID {me} or root"
        )));
    }
    Ok(Some(file))
}

fn io_error(path: &Path, e: std::io::Error) -> DaemonError {
    DaemonError::Io {
        context: format!("read log {}", path.display()),
        source: e,
    }
}

/// One followed file: its open handle (kept across a rotation until its
/// end is read) and where we are in it.
struct Tail {
    path: PathBuf,
    file: Option<BufReader<File>>,
    ino: Option<(u64, u64)>,
    partial: Vec<u8>,
}

async fn show_files(
    files: &[PathBuf],
    keep: u32,
    follow: bool,
    lines: Option<usize>,
) -> Result<u8, DaemonError> {
    let headers = files.len() > 1;
    let mut tails = Vec::new();
    for path in files {
        if headers {
            println!("==> {} <==", path.display());
        }
        // Oldest first; with -n, only the last N lines of them all.
        let mut last: VecDeque<String> = VecDeque::new();
        let mut tail = Tail {
            path: path.clone(),
            file: None,
            ino: None,
            partial: Vec::new(),
        };
        for part in rotations(path, keep) {
            let Some(file) = open_log(&part).map_err(|e| io_error(&part, e))? else {
                continue;
            };
            let meta = file.metadata().map_err(|e| io_error(&part, e))?;
            let mut reader = BufReader::new(file);
            let mut line = Vec::new();
            loop {
                line.clear();
                let n = reader
                    .read_until(b'\n', &mut line)
                    .map_err(|e| io_error(&part, e))?;
                if n == 0 {
                    break;
                }
                if !line.ends_with(b"\n") && part == *path {
                    // Being written: the rest comes with -f.
                    tail.partial = line.clone();
                    break;
                }
                last.push_back(
                    String::from_utf8_lossy(&line)
                        .trim_end_matches('\n')
                        .to_owned(),
                );
                if lines.is_some_and(|n| last.len() > n) {
                    last.pop_front();
                }
            }
            if part == *path {
                tail.ino = Some((meta.dev(), meta.ino()));
                tail.file = Some(reader);
            }
        }
        if !follow && !tail.partial.is_empty() {
            last.push_back(String::from_utf8_lossy(&tail.partial).into_owned());
            if lines.is_some_and(|n| last.len() > n) {
                last.pop_front();
            }
        }
        for l in last {
            println!("{}", printable_line(&l));
        }
        tails.push(tail);
    }
    if !follow {
        return Ok(0);
    }
    loop {
        for tail in &mut tails {
            follow_once(tail, headers && files.len() > 1)?;
        }
        tokio::time::sleep(FOLLOW_POLL).await;
    }
}

/// Reads what was added to a followed file; after a rotation, the rest of
/// the old file, then the new file from its start.
fn follow_once(tail: &mut Tail, label: bool) -> Result<(), DaemonError> {
    loop {
        if let Some(reader) = tail.file.as_mut() {
            let mut chunk = Vec::new();
            reader
                .read_to_end(&mut chunk)
                .map_err(|e| io_error(&tail.path, e))?;
            tail.partial.extend_from_slice(&chunk);
            while let Some(i) = tail.partial.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = tail.partial.drain(..=i).collect();
                let text = String::from_utf8_lossy(&line[..line.len() - 1]).into_owned();
                if label {
                    println!("{}: {}", tail.path.display(), printable_line(&text));
                } else {
                    println!("{}", printable_line(&text));
                }
            }
        }
        // Rotated (another file at the path now) or created: go on there.
        let now = std::fs::symlink_metadata(&tail.path)
            .ok()
            .map(|m| (m.dev(), m.ino()));
        if now.is_none() || now == tail.ino {
            return Ok(());
        }
        let Some(file) = open_log(&tail.path).map_err(|e| io_error(&tail.path, e))? else {
            return Ok(());
        };
        let meta = file.metadata().map_err(|e| io_error(&tail.path, e))?;
        tail.ino = Some((meta.dev(), meta.ino()));
        tail.file = Some(BufReader::new(file));
    }
}

/// A line the daemon wrote, safe for a terminal (control characters
/// escaped, tabs kept).
fn printable_line(line: &str) -> String {
    line.split('\t')
        .map(crate::printable)
        .collect::<Vec<_>>()
        .join("\t")
}

/// The unit's journal through `journalctl --output=json`, one entry per
/// line, printed as `TIME IDENTIFIER[PID]: MESSAGE`.
async fn journal(
    spec: &ServiceSpec,
    scope: Scope,
    follow: bool,
    lines: Option<usize>,
) -> Result<u8, DaemonError> {
    use tokio::io::AsyncBufReadExt;
    // An instance's own unit (NAME@INSTANCE.service); a template has none.
    spec.runnable()?;
    let unit = daemon_lifecycle::systemd::spec_unit_name(spec)?;
    let mut cmd = tokio::process::Command::new("journalctl");
    match scope {
        Scope::User => cmd.arg(format!("--user-unit={unit}")),
        Scope::System => cmd.arg(format!("--unit={unit}")),
    };
    cmd.args(["--output=json", "--no-pager"]);
    if let Some(n) = lines {
        cmd.arg(format!("--lines={n}"));
    }
    if follow {
        cmd.arg("--follow");
    }
    cmd.stdout(std::process::Stdio::piped()).kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|e| DaemonError::Io {
        context: format!(
            "run journalctl (the output of {unit} went to the journal; or set `logs.stdout` in the config)"
        ),
        source: e,
    })?;
    let stdout = child.stdout.take().expect("piped");
    let mut reader = tokio::io::BufReader::new(stdout).lines();
    while let Some(line) = reader.next_line().await.map_err(|e| DaemonError::Io {
        context: "read journalctl's output".into(),
        source: e,
    })? {
        if let Some(entry) = journal_entry(&line) {
            println!("{}", printable_line(&entry));
        }
    }
    let status = child.wait().await.map_err(|e| DaemonError::Io {
        context: "wait for journalctl".into(),
        source: e,
    })?;
    Ok(if status.success() { 0 } else { 1 })
}

/// One `journalctl --output=json` line in words: `2024-05-01 12:00:00
/// queen-rbee[4242]: listening`. `MESSAGE` may be a string, an array of
/// bytes (not UTF-8), or null.
pub fn journal_entry(line: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    let message = match &v["MESSAGE"] {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Array(bytes) => {
            let bytes: Vec<u8> = bytes
                .iter()
                .filter_map(|b| b.as_u64().map(|b| b as u8))
                .collect();
            String::from_utf8_lossy(&bytes).into_owned()
        }
        _ => String::new(),
    };
    let time = v["__REALTIME_TIMESTAMP"]
        .as_str()
        .and_then(|t| t.parse::<u64>().ok())
        .map(|us| utc(us / 1_000_000))
        .unwrap_or_default();
    let ident = v["SYSLOG_IDENTIFIER"]
        .as_str()
        .or(v["_COMM"].as_str())
        .unwrap_or("?");
    let pid = v["_PID"]
        .as_str()
        .map(|p| format!("[{p}]"))
        .unwrap_or_default();
    Some(format!(
        "{time} {ident}{pid}: {}",
        message.trim_end_matches('\n')
    ))
}

/// `secs` since the epoch as `YYYY-MM-DD HH:MM:SS` (UTC).
fn utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_entries_read_as_words() {
        let line = r#"{"__REALTIME_TIMESTAMP":"1714564800000000","SYSLOG_IDENTIFIER":"testd","_PID":"42","MESSAGE":"hello"}"#;
        assert_eq!(
            journal_entry(line).unwrap(),
            "2024-05-01 12:00:00 testd[42]: hello"
        );
        let bytes = r#"{"MESSAGE":[104,105,255],"_COMM":"x"}"#;
        assert_eq!(journal_entry(bytes).unwrap(), " x: hi\u{fffd}");
        assert!(journal_entry("not json").is_none());
        assert_eq!(utc(0), "1970-01-01 00:00:00");
    }
}
