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
    let message = clip_middle(
        &did_you_mean(e.message().trim()).replace('\n', " "),
        QUOTE_BYTES,
    );
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

/// serde's "unknown field `binray_path`, expected one of `name`,
/// `binary_path`, ..." (or "unknown variant ...") with the nearest known
/// name put first: "unknown field `binray_path`, did you mean
/// `binary_path`?". A name too far from every known one keeps the list.
fn did_you_mean(message: &str) -> String {
    let Some((kind, rest)) = ["unknown field `", "unknown variant `"]
        .iter()
        .find_map(|p| {
            message
                .strip_prefix(p)
                .map(|rest| (&p[..p.len() - 1], rest))
        })
    else {
        return message.to_owned();
    };
    let Some((given, expected)) = rest.split_once("`, expected ") else {
        return message.to_owned();
    };
    let known: Vec<&str> = expected
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|k| !k.is_empty())
        .collect();
    let nearest = known
        .iter()
        .map(|k| (strsim::damerau_levenshtein(given, k), *k))
        .min();
    match nearest {
        // Close enough to be a typo: at most a third of the name differs.
        Some((distance, k)) if distance > 0 && distance <= given.chars().count().max(3) / 3 + 1 => {
            format!("{kind}`{given}`, did you mean `{k}`?")
        }
        _ => message.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::did_you_mean;

    #[test]
    fn unknown_names_suggest_the_nearest_known_one() {
        assert_eq!(
            did_you_mean(
                "unknown field `binray_path`, expected one of `name`, `binary_path`, `args`"
            ),
            "unknown field `binray_path`, did you mean `binary_path`?"
        );
        assert_eq!(
            did_you_mean(
                "unknown variant `tpc`, expected one of `notify`, `tcp`, `http`, `command`"
            ),
            "unknown variant `tpc`, did you mean `tcp`?"
        );
        assert_eq!(
            did_you_mean("unknown field `polcy`, expected `policy`"),
            "unknown field `polcy`, did you mean `policy`?"
        );
        // Nothing near: the list stays.
        let far = "unknown field `zzzzzzzz`, expected one of `name`, `args`";
        assert_eq!(did_you_mean(far), far);
        assert_eq!(
            did_you_mean("invalid type: integer `1`"),
            "invalid type: integer `1`"
        );
    }
}
