//! Loading a config file: bounded, non-blocking reads of a regular file,
//! and parse errors that quote a little of the file, safely.

use std::fs;
use std::path::Path;

use super::MAX_CONFIG_BYTES;
use crate::text::{clip, clip_middle};

/// Reads a config file without ever blocking or reading without bound:
/// `O_NONBLOCK` so that opening a FIFO does not wait for a writer, `fstat`
/// on what was opened (no race with a rename), only a regular file, at most
/// [`MAX_CONFIG_BYTES`] (reading one byte more tells a file that grew).
pub(super) fn read_config(path: &Path) -> std::io::Result<String> {
    use std::io::{Error, ErrorKind, Read};
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)?;
    let kind = file.metadata()?.file_type();
    let what = if kind.is_dir() {
        Some("a directory")
    } else if kind.is_fifo() {
        Some("a FIFO")
    } else if kind.is_socket() {
        Some("a socket")
    } else if kind.is_char_device() {
        Some("a character device")
    } else if kind.is_block_device() {
        Some("a block device")
    } else if !kind.is_file() {
        Some("not a regular file")
    } else {
        None
    };
    if let Some(what) = what {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            format!("not a regular file ({what}); a config must be a regular file"),
        ));
    }
    let too_big = || {
        Error::new(
            ErrorKind::InvalidData,
            format!(
                "larger than {} KiB, the most a config may be",
                MAX_CONFIG_BYTES / 1024
            ),
        )
    };
    let mut bytes = Vec::new();
    file.take(MAX_CONFIG_BYTES + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        return Err(too_big());
    }
    String::from_utf8(bytes).map_err(|e| {
        Error::new(
            ErrorKind::InvalidData,
            format!(
                "not UTF-8 (invalid byte at offset {})",
                e.utf8_error().valid_up_to()
            ),
        )
    })
}

/// About how many bytes of config text an error message quotes.
const QUOTE_BYTES: usize = 200;

/// One line: `line L, column C: MESSAGE (in `SOURCE LINE`)`. Both the
/// parser's message (it may quote a value) and the source line are cut to
/// about [`QUOTE_BYTES`] (the line around the error's column) and have their
/// control characters escaped: a config's bytes must not reach a terminal.
pub(super) fn parse_message(text: &str, e: &toml::de::Error) -> String {
    let message = clip_middle(&e.message().trim().replace('\n', " "), QUOTE_BYTES);
    let Some(span) = e.span() else {
        return message;
    };
    let mut start = span.start.min(text.len());
    while !text.is_char_boundary(start) {
        start -= 1;
    }
    let before = &text[..start];
    let line_no = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    let rest = &text[line_start..];
    let line = &rest[..rest.find('\n').unwrap_or(rest.len())];
    // Where the error is within the line, so a long line is quoted around it.
    let at = start - line_start;
    let quoted = clip(line.trim_end_matches('\r'), at, QUOTE_BYTES);
    format!(
        "line {line_no}, column {column}: {message} (in `{}`)",
        quoted.trim()
    )
}
